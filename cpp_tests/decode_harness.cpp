#include "decode_harness.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <numeric>
#include <sstream>

#include "row_checks.h"

namespace flashmla_test {
namespace {

// Test data: randn / 10, clamped to +-1 (mla-decode.md section 5), drawn from a precomputed pool
// because a normal draw per element would dominate the set-up of larger problems.
constexpr float kDataScale = 0.1f;
constexpr float kDataClamp = 1.0f;
constexpr size_t kSamplePool = 1 << 14;

// Accuracy against the fp64 model on the same inputs (as in test_decode_gpu.cpp).
constexpr double kRelL2BFloat16 = 1e-2;
constexpr double kRelL2Float16 = 2e-3;
constexpr double kMaxAbsError = 2e-2;
constexpr double kLseAbsError = 1e-3;

// Block ids that no cache has: what "junk" unused block-table entries hold.
constexpr int32_t kJunkIds[] = {-1, std::numeric_limits<int32_t>::min(),
                                std::numeric_limits<int32_t>::max(), 1 << 30};

class SamplePool {
 public:
  SamplePool(HalfType dtype, std::mt19937_64& rng) : rng_(rng), samples_(kSamplePool) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (uint16_t& s : samples_) {
      s = float_to_half_bits(std::clamp(normal(rng) * kDataScale, -kDataClamp, kDataClamp), dtype);
    }
  }
  uint16_t draw() { return samples_[rng_() % kSamplePool]; }

 private:
  std::mt19937_64& rng_;
  std::vector<uint16_t> samples_;
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int current_device() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) cudaGetLastError();
  return device;
}

// Strides of a [d0, d1, d2, inner] tensor whose inner rows are `row` elements apart.
std::vector<int64_t> padded_strides(int64_t d1, int64_t d2, int64_t row) {
  return {d1 * d2 * row, d2 * row, row, 1};
}

}  // namespace

std::vector<int32_t> random_lengths(std::mt19937_64& rng, int batch, int max_length,
                                    bool with_empty) {
  constexpr int kEmptyOneIn = 4;
  std::uniform_int_distribution<int32_t> length(0, max_length);
  std::vector<int32_t> lengths(batch);
  for (int32_t& l : lengths) l = with_empty && rng() % kEmptyOneIn == 0 ? 0 : length(rng);
  return lengths;
}

HostProblem make_host_problem(const ProblemSpec& spec) {
  std::mt19937_64 rng(spec.seed);
  SamplePool pool(spec.dtype, rng);
  HostProblem hp;
  hp.spec = spec;
  const int batch = spec.batch();
  std::vector<int64_t> used(batch);
  int64_t owned = 0, widest = 0;
  for (int i = 0; i < batch; ++i) {
    used[i] = ceil_div(spec.lengths[i], spec.page);
    owned += used[i];
    widest = std::max(widest, used[i]);
  }
  hp.max_blocks_per_seq = static_cast<int>(widest + spec.extra_table_columns);
  hp.num_blocks = owned + spec.spare_blocks;

  std::vector<int32_t> physical(hp.num_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  const int32_t spare = spec.spare_blocks > 0 ? physical[owned] : 0;
  hp.block_table.assign(static_cast<size_t>(batch) * hp.max_blocks_per_seq, spare);
  if (spec.junk_in_unused_entries) {
    for (int32_t& id : hp.block_table) id = kJunkIds[rng() % std::size(kJunkIds)];
  }
  const size_t token_elems = static_cast<size_t>(spec.h_kv) * kHeadDim;
  hp.k_cache.assign(static_cast<size_t>(hp.num_blocks) * spec.page * token_elems, kPoisonHalfBits);
  int64_t next = 0;
  for (int i = 0; i < batch; ++i) {
    int32_t* row = &hp.block_table[static_cast<size_t>(i) * hp.max_blocks_per_seq];
    for (int64_t j = 0; j < used[i]; ++j) row[j] = physical[next++];
    for (int32_t t = 0; t < spec.lengths[i]; ++t) {
      uint16_t* token = &hp.k_cache[(static_cast<size_t>(row[t / spec.page]) * spec.page +
                                     t % spec.page) * token_elems];
      for (size_t e = 0; e < token_elems; ++e) token[e] = pool.draw();
    }
  }
  hp.q.resize(static_cast<size_t>(batch) * spec.s_q * spec.h_q * kHeadDim);
  for (uint16_t& x : hp.q) x = pool.draw();
  return hp;
}

DecodeProblem HostProblem::as_reference() const {
  DecodeProblem p;
  p.dtype = spec.dtype;
  p.batch = spec.batch();
  p.s_q = spec.s_q;
  p.h_q = spec.h_q;
  p.h_kv = spec.h_kv;
  p.page_block_size = spec.page;
  p.max_blocks_per_seq = max_blocks_per_seq;
  p.num_blocks = num_blocks;
  p.softmax_scale =
      spec.softmax_scale != 0.0f ? spec.softmax_scale : 1.0f / std::sqrt(float(kHeadDim));
  p.causal = spec.causal;
  p.q = q.data();
  p.k_cache = k_cache.data();
  p.block_table = block_table.data();
  p.seqlens = spec.lengths.data();
  return p;
}

// ---- DeviceProblem -----------------------------------------------------------------------------

DeviceProblem::DeviceProblem(const HostProblem& host) : host_(host), device_(current_device()) {
  const ProblemSpec& s = host.spec;
  const size_t rows = static_cast<size_t>(s.batch()) * s.s_q * s.h_q;
  const size_t q_row = kHeadDim + s.padding.q_head;
  const size_t token_row = static_cast<size_t>(s.h_kv) * kHeadDim + s.padding.k_token;
  const size_t cache_tokens = static_cast<size_t>(host.num_blocks) * s.page;
  const size_t table_rows = static_cast<size_t>(s.batch());
  q_ = DeviceMemory(rows * q_row * 2);
  k_ = DeviceMemory(cache_tokens * token_row * 2);
  table_ = DeviceMemory(table_rows * table_row_stride() * 4);
  seqlens_ = DeviceMemory(table_rows * 4);
  if (!q_.ok() || !k_.ok() || !table_.ok() || !seqlens_.ok()) return;
  // Padding is NaN (q, cache) or -1 (table): never to be read.
  bool fine = true;
  const auto step = [&fine](cudaError_t e) { fine = fine && e == cudaSuccess; };
  if (q_.bytes() > 0) {
    step(cudaMemset(q_.get(), kPoisonByte, q_.bytes()));
    step(cudaMemcpy2D(q_.get(), q_row * 2, host.q.data(), kHeadDim * 2, kHeadDim * 2, rows,
                      cudaMemcpyHostToDevice));
  }
  if (k_.bytes() > 0) {
    step(cudaMemset(k_.get(), kPoisonByte, k_.bytes()));
    step(cudaMemcpy2D(k_.get(), token_row * 2, host.k_cache.data(),
                      static_cast<size_t>(s.h_kv) * kHeadDim * 2,
                      static_cast<size_t>(s.h_kv) * kHeadDim * 2, cache_tokens,
                      cudaMemcpyHostToDevice));
  }
  if (table_.bytes() > 0) {
    step(cudaMemset(table_.get(), kPoisonByte, table_.bytes()));
    if (host.max_blocks_per_seq > 0) {
      step(cudaMemcpy2D(table_.get(), table_row_stride() * 4, host.block_table.data(),
                        static_cast<size_t>(host.max_blocks_per_seq) * 4,
                        static_cast<size_t>(host.max_blocks_per_seq) * 4, table_rows,
                        cudaMemcpyHostToDevice));
    }
  }
  if (seqlens_.bytes() > 0) {
    step(cudaMemcpy(seqlens_.get(), s.lengths.data(), seqlens_.bytes(), cudaMemcpyHostToDevice));
  }
  if (!fine) cudaGetLastError();
  // The uploads ran on the legacy stream from pageable memory; tests go on to use non-blocking
  // streams, which are not ordered after it.
  if (fine) fine = cudaDeviceSynchronize() == cudaSuccess;
  ok_ = fine;
}

DLDataType DeviceProblem::dtype() const {
  return host_.spec.dtype == HalfType::kBFloat16 ? dl_bfloat16() : dl_float16();
}

TensorDesc DeviceProblem::q() const {
  const ProblemSpec& s = host_.spec;
  return TensorDesc(q_.get(), dl_cuda_device(device_), dtype(), {s.batch(), s.s_q, s.h_q, kHeadDim},
                    padded_strides(s.s_q, s.h_q, kHeadDim + s.padding.q_head));
}

TensorDesc DeviceProblem::k_cache() const {
  const ProblemSpec& s = host_.spec;
  const int64_t token_row = int64_t{s.h_kv} * kHeadDim + s.padding.k_token;
  return TensorDesc(k_.get(), dl_cuda_device(device_), dtype(),
                    {host_.num_blocks, s.page, s.h_kv, kHeadDim},
                    {s.page * token_row, token_row, kHeadDim, 1});
}

TensorDesc DeviceProblem::block_table() const {
  return TensorDesc(table_.get(), dl_cuda_device(device_), dl_int32(),
                    {host_.spec.batch(), host_.max_blocks_per_seq}, {table_row_stride(), 1});
}

TensorDesc DeviceProblem::seqlens() const {
  return TensorDesc(seqlens_.get(), dl_cuda_device(device_), dl_int32(), {host_.spec.batch()});
}

// ---- DecodeRunner ------------------------------------------------------------------------------

DecodeRunner::DecodeRunner(const DeviceProblem& problem, RunOptions options)
    : problem_(problem),
      options_(options),
      q_(problem.q()),
      k_(problem.k_cache()),
      table_(problem.block_table()),
      seqlens_(problem.seqlens()),
      metadata_t_(nullptr, dl_cuda_device(0), dl_int32(), {1, FLASHMLA_METADATA_WORDS}),
      splits_t_(nullptr, dl_cuda_device(0), dl_int32(), {1}),
      out_t_(nullptr, dl_cuda_device(0), problem.dtype(), {0, 1, 1, kHeadDimV}),
      lse_t_(nullptr, dl_cuda_device(0), dl_float32(), {0, 1, 1}) {
  flashmla_decode_args_init(&args_);
}

::testing::AssertionResult DecodeRunner::allocate() {
  const ProblemSpec& s = problem_.host().spec;
  const int64_t b = s.batch();
  const DLDevice device = dl_cuda_device(problem_.device());
  num_sm_parts_ = options_.num_sm_parts;
  if (num_sm_parts_ == 0) {
    auto r = status_ok(flashmla_get_num_sm_parts(problem_.device(), int64_t{s.s_q} * (s.h_q / s.h_kv),
                                                 s.h_kv, &num_sm_parts_),
                       "flashmla_get_num_sm_parts");
    if (!r) return r;
  }
  metadata_ = DeviceMemory(static_cast<size_t>(num_sm_parts_) * FLASHMLA_METADATA_WORDS * 4);
  splits_ = DeviceMemory(static_cast<size_t>(b + 1) * 4);
  const size_t out_row = kHeadDimV + s.padding.out_head;
  out_ = DeviceMemory(static_cast<size_t>(b) * s.s_q * s.h_q * out_row * 2);
  lse_ = DeviceMemory(static_cast<size_t>(b) * s.h_q * s.s_q * 4);
  if (!options_.library_workspace) {
    size_t bytes = 0;
    auto r = status_ok(flashmla_decode_workspace_size(b, s.s_q, s.h_q, num_sm_parts_, &bytes),
                       "flashmla_decode_workspace_size");
    if (!r) return r;
    workspace_ = DeviceMemory(bytes);
  }
  for (const DeviceMemory* m : {&metadata_, &splits_, &out_, &lse_, &workspace_}) {
    if (!m->ok()) return ::testing::AssertionFailure() << "cudaMalloc failed";
  }
  metadata_t_ = TensorDesc(metadata_.get(), device, dl_int32(), {num_sm_parts_, FLASHMLA_METADATA_WORDS});
  splits_t_ = TensorDesc(splits_.get(), device, dl_int32(), {b + 1});
  out_t_ = TensorDesc(out_.get(), device, problem_.dtype(), {b, s.s_q, s.h_q, kHeadDimV},
                      padded_strides(s.s_q, s.h_q, static_cast<int64_t>(out_row)));
  lse_t_ = TensorDesc(lse_.get(), device, dl_float32(), {b, s.h_q, s.s_q});

  flashmla_decode_args_init(&args_);
  args_.q = q_.get();
  args_.k_cache = k_.get();
  args_.block_table = table_.get();
  args_.cache_seqlens = seqlens_.get();
  args_.tile_scheduler_metadata = metadata_t_.get();
  args_.num_splits = splits_t_.get();
  args_.out = out_t_.get();
  args_.lse = lse_t_.get();
  args_.softmax_scale = s.softmax_scale;
  args_.causal = s.causal ? 1 : 0;
  args_.workspace = workspace_.get();
  args_.workspace_size = workspace_.bytes();
  args_.backend = options_.backend;
  args_.validate = options_.validate;
  allocated_ = true;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult DecodeRunner::plan() {
  if (!allocated_) {
    auto r = allocate();
    if (!r) return r;
  }
  const ProblemSpec& s = problem_.host().spec;
  const int64_t b = s.batch();
  if (options_.host_metadata) {
    std::vector<int32_t> lengths = s.lengths;
    std::vector<int32_t> metadata(metadata_.bytes() / 4), splits(b + 1);
    TensorDesc host_lengths(lengths.data(), dl_cpu_device(), dl_int32(), {b});
    TensorDesc host_metadata(metadata.data(), dl_cpu_device(), dl_int32(),
                             {num_sm_parts_, FLASHMLA_METADATA_WORDS});
    TensorDesc host_splits(splits.data(), dl_cpu_device(), dl_int32(), {b + 1});
    auto r = status_ok(flashmla_get_metadata(host_lengths.get(), host_metadata.get(),
                                             host_splits.get(), nullptr),
                       "flashmla_get_metadata (host)");
    if (!r) return r;
    r = cuda_ok(cudaMemcpyAsync(metadata_.get(), metadata.data(), metadata_.bytes(),
                                cudaMemcpyHostToDevice, options_.stream),
                "metadata upload");
    if (!r) return r;
    r = cuda_ok(cudaMemcpyAsync(splits_.get(), splits.data(), splits_.bytes(),
                                cudaMemcpyHostToDevice, options_.stream),
                "num_splits upload");
    if (!r) return r;
    // The host vectors go out of scope: the copies must have finished.
    r = cuda_ok(cudaStreamSynchronize(options_.stream), "cudaStreamSynchronize");
    if (!r) return r;
  } else {
    auto r = cuda_ok(cudaMemsetAsync(metadata_.get(), kPoisonByte, metadata_.bytes(), options_.stream),
                     "cudaMemsetAsync");
    if (!r) return r;
    r = status_ok(flashmla_get_metadata(seqlens_.get(), metadata_t_.get(), splits_t_.get(),
                                        options_.stream),
                  "flashmla_get_metadata (device)");
    if (!r) return r;
  }
  return ::testing::AssertionSuccess();
}

flashmla_status_t DecodeRunner::decode() {
  for (const DeviceMemory* m : {&out_, &lse_, &workspace_}) {
    if (m->bytes() > 0 && cudaMemsetAsync(m->get(), kPoisonByte, m->bytes(), options_.stream) != cudaSuccess) {
      message_ = "poisoning the outputs failed";
      return FLASHMLA_STATUS_CUDA_ERROR;
    }
  }
  const flashmla_status_t status = flashmla_decode(&args_, options_.stream);
  message_ = flashmla_get_last_error();
  return status;
}

::testing::AssertionResult DecodeRunner::download(DecodeOutput* output) {
  const ProblemSpec& s = problem_.host().spec;
  const size_t rows = static_cast<size_t>(s.batch()) * s.s_q * s.h_q;
  auto r = cuda_ok(cudaStreamSynchronize(options_.stream), "cudaStreamSynchronize");
  if (!r) return r;
  output->out.assign(rows * kHeadDimV, 0);
  output->lse.assign(rows, 0.0f);
  if (rows == 0) return ::testing::AssertionSuccess();
  r = cuda_ok(cudaMemcpy2D(output->out.data(), kHeadDimV * 2, out_.get(),
                           (kHeadDimV + s.padding.out_head) * 2, kHeadDimV * 2, rows,
                           cudaMemcpyDeviceToHost),
              "out download");
  if (!r) return r;
  return cuda_ok(cudaMemcpy(output->lse.data(), lse_.get(), lse_.bytes(), cudaMemcpyDeviceToHost),
                 "lse download");
}

::testing::AssertionResult run_decode(const DeviceProblem& problem, const RunOptions& options,
                                      DecodeOutput* output) {
  DecodeRunner runner(problem, options);
  auto r = runner.plan();
  if (!r) return r;
  const flashmla_status_t status = runner.decode();
  if (status != FLASHMLA_STATUS_SUCCESS) {
    return ::testing::AssertionFailure() << "flashmla_decode: " << flashmla_status_string(status)
                                         << ": " << runner.last_message();
  }
  return runner.download(output);
}

// ---- Checks --------------------------------------------------------------------------------------

::testing::AssertionResult matches_reference(const HostProblem& host, const DecodeOutput& output) {
  const ProblemSpec& s = host.spec;
  const DecodeResult ref = cpu_reference_decode(host.as_reference());
  if (ref.out.size() != output.out.size() || ref.lse.size() != output.lse.size()) {
    return ::testing::AssertionFailure() << "output sizes differ from the reference";
  }
  const size_t per_request = static_cast<size_t>(s.s_q) * s.h_q;
  const auto where = [&](size_t request) {
    std::ostringstream text;
    text << "request " << request << " (length " << s.lengths[request] << ")";
    return text.str();
  };
  double err_sq = 0.0, ref_sq = 0.0, max_abs = 0.0;
  for (size_t i = 0; i < ref.out.size(); ++i) {
    const double got = half_bits_to_float(output.out[i], s.dtype);
    if (!std::isfinite(got)) {
      return ::testing::AssertionFailure() << "non-finite out at " << where(i / kHeadDimV / per_request)
                                           << ", column " << i % kHeadDimV;
    }
    const double diff = got - ref.out[i];
    err_sq += diff * diff;
    ref_sq += static_cast<double>(ref.out[i]) * ref.out[i];
    max_abs = std::max(max_abs, std::fabs(diff));
  }
  const double rel = ref_sq > 0.0 ? std::sqrt(err_sq / ref_sq) : std::sqrt(err_sq);
  const double tolerance = s.dtype == HalfType::kBFloat16 ? kRelL2BFloat16 : kRelL2Float16;
  if (!(rel < tolerance)) return ::testing::AssertionFailure() << "out relative L2 error " << rel;
  if (!(max_abs < kMaxAbsError)) return ::testing::AssertionFailure() << "out max abs error " << max_abs;
  const auto rows = rows_match(ref.out.data(), ref.lse.data(), output.out.data(), s.dtype, s.lengths.size(),
                               s.s_q, s.h_q);
  if (!rows) return rows;
  for (size_t i = 0; i < ref.lse.size(); ++i) {
    const float want = ref.lse[i], got = output.lse[i];
    const bool fine = std::isinf(want) ? (std::isinf(got) && got > 0.0f)
                                       : std::fabs(double(got) - want) < kLseAbsError;
    if (!fine) {
      return ::testing::AssertionFailure() << "lse " << got << ", expected " << want << " at "
                                           << where(i / per_request);
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult bitwise_equal(const DecodeOutput& a, const DecodeOutput& b) {
  if (a.out.size() != b.out.size() || a.lse.size() != b.lse.size()) {
    return ::testing::AssertionFailure() << "sizes differ";
  }
  for (size_t i = 0; i < a.out.size(); ++i) {
    if (a.out[i] != b.out[i]) {
      return ::testing::AssertionFailure() << "out differs at element " << i << ": 0x" << std::hex
                                           << a.out[i] << " vs 0x" << b.out[i];
    }
  }
  if (!a.lse.empty() && std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)) != 0) {
    return ::testing::AssertionFailure() << "lse differs";
  }
  return ::testing::AssertionSuccess();
}

bool still_poisoned(const DecodeOutput& output) {
  uint32_t poison_word;
  std::memset(&poison_word, kPoisonByte, sizeof(poison_word));
  const bool out_poisoned = std::all_of(output.out.begin(), output.out.end(),
                                        [](uint16_t x) { return x == kPoisonHalfBits; });
  const bool lse_poisoned = std::all_of(output.lse.begin(), output.lse.end(), [&](float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    return bits == poison_word;
  });
  return out_poisoned && lse_poisoned;
}

}  // namespace flashmla_test
