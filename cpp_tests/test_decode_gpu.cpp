// GPU correctness of flashmla_decode through the public C API only, against the fp64 CPU model of
// cpu_reference.h. Every case poisons what a correct kernel must not read (cache rows a request
// does not own, unused block-table entries, the workspace) and what it must write (out, lse) with
// NaN, and scatters each request's pages through a random permutation of the cache.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "cpu_reference.h"
#include "cuda_test_support.h"
#include "dl_tensor_utils.h"
#include "flashmla/flashmla.h"
#include "row_checks.h"

namespace flashmla_test {
namespace {

// Filling a buffer with this byte makes every bf16, fp16 and fp32 element a NaN.
constexpr int kNaNByte = 0xff;
constexpr uint16_t kNaNHalfBits = 0xffff;
// Cache blocks no request owns; unused block-table entries point at one of them.
constexpr int kSpareBlocks = 3;
// Test data: randn / 10, clamped to +-1 (mla-decode.md §5).
constexpr float kDataScale = 0.1f;
constexpr float kDataClamp = 1.0f;

// Accuracy against the fp64 model on the same inputs.
constexpr double kRelL2ToleranceBFloat16 = 1e-2;
constexpr double kRelL2ToleranceFloat16 = 2e-3;
constexpr double kMaxAbsTolerance = 2e-2;
constexpr double kLseTolerance = 1e-3;

#define CUDA_ASSERT(expr)                                                              \
  do {                                                                                 \
    const cudaError_t cuda_assert_error = (expr);                                      \
    ASSERT_EQ(cuda_assert_error, cudaSuccess) << #expr << ": "                         \
                                              << cudaGetErrorString(cuda_assert_error); \
  } while (0)

#define FLASHMLA_ASSERT(expr)                                                                \
  do {                                                                                       \
    const flashmla_status_t flashmla_assert_status = (expr);                                 \
    ASSERT_EQ(flashmla_assert_status, FLASHMLA_STATUS_SUCCESS)                               \
        << #expr << ": " << flashmla_status_string(flashmla_assert_status) << ": "           \
        << flashmla_get_last_error();                                                        \
  } while (0)

struct DecodeCase {
  HalfType dtype;
  int batch;
  int s_q;
  int s_k;  // the longest request
  int h_q;
  int h_kv;
  bool varlen;
  bool causal;
  bool zero_length;  // some requests (all when batch == 1) have no tokens
  int page_block_size;
  float softmax_scale = 0.0f;  // 0: the library default
  int num_sm_parts = 0;        // 0: flashmla_get_num_sm_parts
  bool library_workspace = false;  // pass no workspace: the library allocates it
  bool padded_strides = false;     // q and out with a padded head stride
  bool out_pairs_only = false;     // out's head stride 2 elements longer: rows only 4-byte aligned
};

std::string case_name(const DecodeCase& c);

// gtest prints parameters of failing cases through this.
void PrintTo(const DecodeCase& c, std::ostream* os) { *os << case_name(c); }

std::string case_name(const DecodeCase& c) {
  std::ostringstream name;
  name << (c.dtype == HalfType::kBFloat16 ? "bf16" : "fp16") << "_b" << c.batch << "_sq" << c.s_q
       << "_sk" << c.s_k << "_hq" << c.h_q << "_hkv" << c.h_kv << "_page" << c.page_block_size;
  if (c.varlen) name << "_varlen";
  if (c.causal) name << "_causal";
  if (c.zero_length) name << "_zerolen";
  if (c.softmax_scale != 0.0f) name << "_scale" << static_cast<int>(c.softmax_scale * 100);
  if (c.num_sm_parts != 0) name << "_parts" << c.num_sm_parts;
  if (c.library_workspace) name << "_libws";
  if (c.padded_strides) name << "_padded";
  if (c.out_pairs_only) name << "_outpairs";
  return name.str();
}

// Host copy of a problem, compact, plus the device layout description.
struct HostProblem {
  DecodeCase c;
  int max_blocks_per_seq = 0;
  int64_t num_blocks = 0;
  std::vector<int32_t> seqlens;
  std::vector<int32_t> block_table;
  std::vector<uint16_t> q;        // compact [b, s_q, h_q, 576]
  std::vector<uint16_t> k_cache;  // [num_blocks, page, h_kv, 576], NaN outside owned rows

  float applied_scale() const {
    return c.softmax_scale != 0.0f ? c.softmax_scale : 1.0f / std::sqrt(float(kHeadDim));
  }
  // Extra elements per head in the device layouts of q and out when padded (keeps 16-byte rows).
  int head_padding() const { return c.padded_strides ? 64 : 0; }
  // out's rows 4 bytes off a 16-byte boundary send the SM90 kernel's direct writes down its
  // paired-store path instead of the staged one.
  int out_head_padding() const { return head_padding() + (c.out_pairs_only ? 2 : 0); }

  DecodeProblem as_problem() const {
    DecodeProblem p;
    p.dtype = c.dtype;
    p.batch = c.batch;
    p.s_q = c.s_q;
    p.h_q = c.h_q;
    p.h_kv = c.h_kv;
    p.page_block_size = c.page_block_size;
    p.max_blocks_per_seq = max_blocks_per_seq;
    p.num_blocks = num_blocks;
    p.softmax_scale = applied_scale();
    p.causal = c.causal;
    p.q = q.data();
    p.k_cache = k_cache.data();
    p.block_table = block_table.data();
    p.seqlens = seqlens.data();
    return p;
  }
};

// Draws test data from a pool of precomputed samples: a normal draw per element would dominate
// the set-up of the large cases.
class RandomHalves {
 public:
  RandomHalves(HalfType dtype, std::mt19937_64& rng) : rng_(rng), pool_(kPoolSize) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (uint16_t& x : pool_) {
      x = float_to_half_bits(std::clamp(normal(rng) * kDataScale, -kDataClamp, kDataClamp), dtype);
    }
  }
  uint16_t next() { return pool_[rng_() % kPoolSize]; }

 private:
  static constexpr size_t kPoolSize = 1 << 16;
  std::mt19937_64& rng_;
  std::vector<uint16_t> pool_;
};

std::vector<int32_t> make_seqlens(const DecodeCase& c, std::mt19937_64& rng) {
  std::vector<int32_t> seqlens(c.batch, c.s_k);
  if (c.varlen) {
    std::uniform_int_distribution<int32_t> length(1, c.s_k);
    for (int i = 0; i + 1 < c.batch; ++i) seqlens[i] = length(rng);  // the last one stays s_k
  }
  // Shorter than s_q: the first causal rows of this request see no key at all.
  if (c.causal && c.s_q > 1 && c.batch > 2) seqlens[1] = c.s_q - 1;
  if (c.zero_length) {
    for (int i = 0; i < c.batch; i += 3) seqlens[i] = 0;
  }
  return seqlens;
}

// `seqlens`, when given, replaces the lengths drawn from the case (c.s_k must be their maximum).
HostProblem make_problem(const DecodeCase& c, uint64_t seed, std::vector<int32_t> seqlens = {}) {
  std::mt19937_64 rng(seed);
  RandomHalves random(c.dtype, rng);
  HostProblem hp;
  hp.c = c;
  hp.seqlens = seqlens.empty() ? make_seqlens(c, rng) : std::move(seqlens);
  const int page = c.page_block_size;
  // One column more than any request needs: that entry must never be read.
  hp.max_blocks_per_seq = (c.s_k + page - 1) / page + 1;

  std::vector<int> blocks_of(c.batch);
  int64_t owned_blocks = 0;
  for (int i = 0; i < c.batch; ++i) {
    blocks_of[i] = (hp.seqlens[i] + page - 1) / page;
    owned_blocks += blocks_of[i];
  }
  hp.num_blocks = owned_blocks + kSpareBlocks;
  std::vector<int32_t> physical(hp.num_blocks);
  std::iota(physical.begin(), physical.end(), 0);
  std::shuffle(physical.begin(), physical.end(), rng);
  const int32_t spare_block = physical[owned_blocks];

  hp.block_table.assign(static_cast<size_t>(c.batch) * hp.max_blocks_per_seq, spare_block);
  const size_t token_elems = static_cast<size_t>(c.h_kv) * kHeadDim;
  hp.k_cache.assign(static_cast<size_t>(hp.num_blocks) * page * token_elems, kNaNHalfBits);
  int64_t next_block = 0;
  for (int i = 0; i < c.batch; ++i) {
    for (int j = 0; j < blocks_of[i]; ++j) {
      hp.block_table[static_cast<size_t>(i) * hp.max_blocks_per_seq + j] = physical[next_block++];
    }
    for (int t = 0; t < hp.seqlens[i]; ++t) {
      const int64_t block =
          hp.block_table[static_cast<size_t>(i) * hp.max_blocks_per_seq + t / page];
      uint16_t* row = &hp.k_cache[(static_cast<size_t>(block) * page + t % page) * token_elems];
      for (size_t e = 0; e < token_elems; ++e) row[e] = random.next();
    }
  }
  hp.q.resize(static_cast<size_t>(c.batch) * c.s_q * c.h_q * kHeadDim);
  for (uint16_t& x : hp.q) x = random.next();
  return hp;
}

// What the GPU produced, in compact layouts.
struct GpuResult {
  std::vector<uint16_t> out;  // [b, s_q, h_q, 512]
  std::vector<float> lse;     // [b, h_q, s_q]
};

// Uploads a problem once and runs flashmla_decode on it as often as asked. With a block offset,
// the device cache has that many extra (NaN) blocks in front of the host cache's blocks, and the
// device block table is shifted to match: large offsets exercise 64-bit cache addressing.
class GpuProblem {
 public:
  explicit GpuProblem(const HostProblem& hp, int64_t block_offset = 0)
      : hp_(hp), block_offset_(block_offset) {}

  void upload() {
    const DecodeCase& c = hp_.c;
    const int64_t q_head_stride = kHeadDim + hp_.head_padding();
    const int64_t o_head_stride = kHeadDimV + hp_.out_head_padding();
    q_ = DeviceMemory(static_cast<size_t>(c.batch) * c.s_q * c.h_q * q_head_stride * 2);
    const size_t block_elems = static_cast<size_t>(c.page_block_size) * c.h_kv * kHeadDim;
    k_ = DeviceMemory((static_cast<size_t>(block_offset_) * block_elems + hp_.k_cache.size()) * 2);
    table_ = DeviceMemory(hp_.block_table.size() * 4);
    seqlens_ = DeviceMemory(hp_.seqlens.size() * 4);
    out_ = DeviceMemory(static_cast<size_t>(c.batch) * c.s_q * c.h_q * o_head_stride * 2);
    lse_ = DeviceMemory(static_cast<size_t>(c.batch) * c.h_q * c.s_q * 4);
    for (const DeviceMemory* b : {&q_, &k_, &table_, &seqlens_, &out_, &lse_}) {
      ASSERT_NE(b->get(), nullptr) << "cudaMalloc failed";
    }
    // q rows go to their (possibly padded) place; the padding itself is NaN.
    CUDA_ASSERT(cudaMemset(q_.get(), kNaNByte, q_.bytes()));
    CUDA_ASSERT(cudaMemcpy2D(q_.get(), q_head_stride * 2, hp_.q.data(), kHeadDim * 2, kHeadDim * 2,
                             static_cast<size_t>(c.batch) * c.s_q * c.h_q, cudaMemcpyHostToDevice));
    CUDA_ASSERT(cudaMemset(k_.get(), kNaNByte, k_.bytes()));
    CUDA_ASSERT(cudaMemcpy(static_cast<uint16_t*>(k_.get()) + block_offset_ * block_elems,
                           hp_.k_cache.data(), hp_.k_cache.size() * 2, cudaMemcpyHostToDevice));
    std::vector<int32_t> table = hp_.block_table;
    for (int32_t& block : table) block += static_cast<int32_t>(block_offset_);
    CUDA_ASSERT(cudaMemcpy(table_.get(), table.data(), table_.bytes(), cudaMemcpyHostToDevice));
    CUDA_ASSERT(cudaMemcpy(seqlens_.get(), hp_.seqlens.data(), seqlens_.bytes(),
                           cudaMemcpyHostToDevice));
    CUDA_ASSERT(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // The copies above ran on the legacy stream, which a non-blocking stream does not wait for.
    CUDA_ASSERT(cudaDeviceSynchronize());
  }

  ~GpuProblem() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  // Metadata, workspace (poisoned) and decode on a non-default stream; out/lse poisoned first.
  // `decode_ms`, when given, receives the GPU time of flashmla_decode alone.
  void run(flashmla_backend_t backend, GpuResult* result, float* decode_ms = nullptr) {
    const DecodeCase& c = hp_.c;
    const DLDevice device = dl_cuda_device(current_device());
    const int64_t q_head_stride = kHeadDim + hp_.head_padding();
    const int64_t o_head_stride = kHeadDimV + hp_.out_head_padding();

    int64_t num_sm_parts = c.num_sm_parts;
    if (num_sm_parts == 0) {
      FLASHMLA_ASSERT(flashmla_get_num_sm_parts(device.device_id,
                                                int64_t{c.s_q} * (c.h_q / c.h_kv), c.h_kv,
                                                &num_sm_parts));
    }
    DeviceMemory metadata(static_cast<size_t>(num_sm_parts) * FLASHMLA_METADATA_WORDS * 4);
    DeviceMemory splits((static_cast<size_t>(c.batch) + 1) * 4);
    ASSERT_NE(metadata.get(), nullptr);
    ASSERT_NE(splits.get(), nullptr);
    CUDA_ASSERT(cudaMemsetAsync(metadata.get(), kNaNByte, metadata.bytes(), stream_));
    CUDA_ASSERT(cudaMemsetAsync(splits.get(), kNaNByte, splits.bytes(), stream_));

    TensorDesc seqlens(seqlens_.get(), device, dl_int32(), {c.batch});
    TensorDesc metadata_t(metadata.get(), device, dl_int32(),
                          {num_sm_parts, FLASHMLA_METADATA_WORDS});
    TensorDesc splits_t(splits.get(), device, dl_int32(), {c.batch + 1});
    FLASHMLA_ASSERT(
        flashmla_get_metadata(seqlens.get(), metadata_t.get(), splits_t.get(), stream_));

    DeviceMemory workspace;
    if (!c.library_workspace) {
      size_t bytes = 0;
      FLASHMLA_ASSERT(
          flashmla_decode_workspace_size(c.batch, c.s_q, c.h_q, num_sm_parts, &bytes));
      workspace = DeviceMemory(bytes);
      ASSERT_TRUE(bytes == 0 || workspace.get() != nullptr);
      if (bytes > 0) CUDA_ASSERT(cudaMemsetAsync(workspace.get(), kNaNByte, bytes, stream_));
    }
    CUDA_ASSERT(cudaMemsetAsync(out_.get(), kNaNByte, out_.bytes(), stream_));
    CUDA_ASSERT(cudaMemsetAsync(lse_.get(), kNaNByte, lse_.bytes(), stream_));

    const DLDataType dtype = c.dtype == HalfType::kBFloat16 ? dl_bfloat16() : dl_float16();
    const int64_t b = c.batch, s_q = c.s_q, h_q = c.h_q;
    TensorDesc q(q_.get(), device, dtype, {b, s_q, h_q, kHeadDim},
                 {s_q * h_q * q_head_stride, h_q * q_head_stride, q_head_stride, 1});
    TensorDesc k(k_.get(), device, dtype,
                 {block_offset_ + hp_.num_blocks, c.page_block_size, c.h_kv, kHeadDim});
    TensorDesc table(table_.get(), device, dl_int32(), {b, hp_.max_blocks_per_seq});
    TensorDesc out(out_.get(), device, dtype, {b, s_q, h_q, kHeadDimV},
                   {s_q * h_q * o_head_stride, h_q * o_head_stride, o_head_stride, 1});
    TensorDesc lse(lse_.get(), device, dl_float32(), {b, h_q, s_q});

    flashmla_decode_args args;
    flashmla_decode_args_init(&args);
    args.q = q.get();
    args.k_cache = k.get();
    args.block_table = table.get();
    args.cache_seqlens = seqlens.get();
    args.tile_scheduler_metadata = metadata_t.get();
    args.num_splits = splits_t.get();
    args.out = out.get();
    args.lse = lse.get();
    args.softmax_scale = c.softmax_scale;
    args.causal = c.causal ? 1 : 0;
    args.workspace = workspace.get();
    args.workspace_size = workspace.bytes();
    args.backend = backend;
    cudaEvent_t start = nullptr, stop = nullptr;
    CUDA_ASSERT(cudaEventCreate(&start));
    CUDA_ASSERT(cudaEventCreate(&stop));
    CUDA_ASSERT(cudaEventRecord(start, stream_));
    FLASHMLA_ASSERT(flashmla_decode(&args, stream_));
    CUDA_ASSERT(cudaEventRecord(stop, stream_));
    CUDA_ASSERT(cudaStreamSynchronize(stream_));
    if (decode_ms != nullptr) CUDA_ASSERT(cudaEventElapsedTime(decode_ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    CUDA_ASSERT(cudaGetLastError());

    result->out.resize(static_cast<size_t>(b) * s_q * h_q * kHeadDimV);
    result->lse.resize(static_cast<size_t>(b) * h_q * s_q);
    CUDA_ASSERT(cudaMemcpy2D(result->out.data(), kHeadDimV * 2, out_.get(), o_head_stride * 2,
                             kHeadDimV * 2, static_cast<size_t>(b) * s_q * h_q,
                             cudaMemcpyDeviceToHost));
    CUDA_ASSERT(cudaMemcpy(result->lse.data(), lse_.get(), lse_.bytes(), cudaMemcpyDeviceToHost));
    if (o_head_stride > kHeadDimV) {
      // The padding after each row still holds the poison: no store reaches past a row's end.
      std::vector<uint16_t> whole(out_.bytes() / sizeof(uint16_t));
      CUDA_ASSERT(cudaMemcpy(whole.data(), out_.get(), out_.bytes(), cudaMemcpyDeviceToHost));
      constexpr uint16_t kPoison = kNaNByte | kNaNByte << 8;
      size_t written = 0;
      for (size_t row = 0; row < result->out.size() / kHeadDimV; ++row) {
        for (int64_t col = kHeadDimV; col < o_head_stride; ++col) written += whole[row * o_head_stride + col] != kPoison;
      }
      EXPECT_EQ(written, 0u) << "elements of out's row padding were written";
    }
  }

 private:
  static int current_device() {
    int device = 0;
    cudaGetDevice(&device);
    return device;
  }

  const HostProblem& hp_;
  int64_t block_offset_;
  DeviceMemory q_, k_, table_, seqlens_, out_, lse_;
  cudaStream_t stream_ = nullptr;
};

// Compares a GPU result with the CPU model; failures name the worst element. `seqlens` are those
// of the requests in the results, for the messages.
void expect_matches(const DecodeCase& c, const int32_t* seqlens, const DecodeResult& ref,
                    const GpuResult& gpu) {
  const HalfType dtype = c.dtype;
  double err_sq = 0.0, ref_sq = 0.0, max_abs = 0.0;
  size_t worst = 0, first_non_finite = 0, non_finite = 0;
  for (size_t i = 0; i < ref.out.size(); ++i) {
    const double got = half_bits_to_float(gpu.out[i], dtype);
    if (!std::isfinite(got)) {
      if (non_finite++ == 0) first_non_finite = i;
      continue;
    }
    const double diff = got - ref.out[i];
    err_sq += diff * diff;
    ref_sq += static_cast<double>(ref.out[i]) * ref.out[i];
    if (std::fabs(diff) > max_abs) {
      max_abs = std::fabs(diff);
      worst = i;
    }
  }
  const auto where = [&](size_t i) {
    const size_t row = i / kHeadDimV;  // (b, s, h) of the compact out
    std::ostringstream s;
    s << "b=" << row / (static_cast<size_t>(c.s_q) * c.h_q)
      << " s=" << row / c.h_q % c.s_q << " h=" << row % c.h_q << " col=" << i % kHeadDimV
      << " (seqlen " << seqlens[row / (static_cast<size_t>(c.s_q) * c.h_q)] << ")";
    return s.str();
  };
  EXPECT_EQ(non_finite, 0u) << "non-finite outputs, first at " << where(first_non_finite);
  const double rel_l2 = ref_sq > 0.0 ? std::sqrt(err_sq / ref_sq) : std::sqrt(err_sq);
  const double rel_tolerance =
      dtype == HalfType::kBFloat16 ? kRelL2ToleranceBFloat16 : kRelL2ToleranceFloat16;
  EXPECT_LT(rel_l2, rel_tolerance) << "relative L2 error of out";
  EXPECT_LT(max_abs, kMaxAbsTolerance) << "max abs error of out at " << where(worst);
  const size_t batch = ref.out.size() / (static_cast<size_t>(c.s_q) * c.h_q * kHeadDimV);
  EXPECT_TRUE(rows_match(ref.out.data(), ref.lse.data(), gpu.out.data(), dtype, batch, c.s_q, c.h_q));

  size_t lse_failures = 0;
  for (size_t i = 0; i < ref.lse.size(); ++i) {
    const float want = ref.lse[i], got = gpu.lse[i];
    const bool ok = std::isinf(want)
                        ? (std::isinf(got) && got > 0.0f)
                        : (std::isfinite(got) && std::fabs(got - want) < kLseTolerance);
    if (!ok && lse_failures++ < 5) {
      const size_t s = i % c.s_q, h = i / c.s_q % c.h_q;
      const size_t b = i / (static_cast<size_t>(c.s_q) * c.h_q);
      ADD_FAILURE() << "lse[b=" << b << ", h=" << h << ", s=" << s << "] = " << got
                    << ", expected " << want << " (seqlen " << seqlens[b] << ")";
    }
  }
  EXPECT_EQ(lse_failures, 0u) << "lse mismatches";
}

uint64_t seed_of(const std::string& name) { return std::hash<std::string>{}(name); }

constexpr HalfType kBF16 = HalfType::kBFloat16;
constexpr HalfType kFP16 = HalfType::kFloat16;

// dtype, b, s_q, s_k, h_q, h_kv, varlen, causal, zero_length, page [, scale, parts, libws, padded,
// out_pairs_only]
const DecodeCase kCases[] = {
    {kBF16, 1, 1, 20, 1, 1, false, false, false, 64},
    {kBF16, 1, 1, 140, 128, 1, false, false, false, 64},
    {kBF16, 1, 1, 1031, 128, 1, false, false, false, 64},
    {kBF16, 2, 2, 1031, 128, 1, true, true, false, 64},
    {kBF16, 6, 1, 140, 64, 1, true, false, true, 64},
    {kBF16, 6, 4, 20, 64, 2, true, true, true, 64},
    {kBF16, 2, 4, 140, 3, 3, false, true, false, 128},
    {kBF16, 6, 2, 1031, 3, 1, true, false, false, 128},
    {kBF16, 1, 4, 1031, 64, 2, false, true, false, 128},
    {kBF16, 2, 1, 1031, 128, 2, true, false, false, 64, 0.0f, 1},
    {kBF16, 6, 1, 1031, 64, 1, true, true, false, 64, 0.0f, 7},
    {kBF16, 2, 2, 140, 64, 1, false, false, false, 64, 0.0f, 200},
    {kBF16, 1, 1, 1031, 1, 1, false, false, false, 64, 1.0f},
    {kBF16, 6, 2, 140, 128, 1, true, true, true, 128, 8.0f},
    {kBF16, 2, 1, 1031, 64, 1, false, false, false, 64, 0.0f, 0, true},
    {kBF16, 2, 2, 140, 64, 2, true, true, false, 64, 0.0f, 0, false, true},
    {kBF16, 1, 2, 20, 64, 1, false, false, true, 64},
    {kBF16, 6, 4, 1031, 1, 1, true, true, true, 64},
    {kBF16, 2, 2, 1031, 128, 1, true, true, false, 64, 0.0f, 0, false, false, true},
    {kBF16, 2, 3, 1031, 48, 1, true, true, true, 64},
    {kFP16, 1, 1, 20, 1, 1, false, false, false, 64},
    {kFP16, 1, 1, 1031, 128, 1, false, false, false, 64},
    {kFP16, 2, 2, 1031, 128, 1, true, true, false, 64},
    {kFP16, 6, 1, 140, 64, 1, true, false, true, 64},
    {kFP16, 6, 4, 20, 64, 2, true, true, true, 128},
    {kFP16, 2, 4, 140, 3, 3, false, true, false, 64},
    {kFP16, 6, 2, 1031, 3, 1, true, false, false, 128},
    {kFP16, 1, 4, 1031, 64, 2, false, true, false, 64, 0.0f, 5},
    {kFP16, 2, 1, 1031, 128, 2, true, false, false, 128, 8.0f},
    {kFP16, 2, 2, 140, 64, 1, false, false, false, 64, 0.0f, 0, true, true},
    {kFP16, 6, 1, 1031, 3, 3, true, true, true, 64},
    {kFP16, 1, 2, 20, 128, 2, false, false, true, 64},
    {kFP16, 2, 3, 140, 96, 2, true, false, false, 128},
    {kFP16, 6, 1, 140, 64, 1, true, false, true, 64, 0.0f, 7, false, true, true},
    // Scores of spread ~2 (softmax_scale 8 on randn / 10 data), where out depends on every q.k
    // term: grouped odd heads with causal s_q = 4, the seesaw schedule, odd heads in fp16.
    {kBF16, 2, 4, 140, 9, 3, true, true, false, 64, 8.0f},
    {kBF16, 2, 2, 1031, 128, 1, true, true, false, 64, 8.0f},
    {kFP16, 6, 2, 1031, 63, 1, true, false, true, 128, 8.0f},
};

const char* backend_name(flashmla_backend_t backend) {
  return backend == FLASHMLA_BACKEND_REFERENCE ? "reference" : "auto";
}

class DecodeGpuTest
    : public ::testing::TestWithParam<std::tuple<DecodeCase, flashmla_backend_t>> {};

TEST_P(DecodeGpuTest, MatchesCpuReference) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const DecodeCase& c = std::get<0>(GetParam());
  const flashmla_backend_t backend = std::get<1>(GetParam());
  const HostProblem hp = make_problem(c, seed_of(case_name(c)));
  GpuProblem gpu(hp);
  ASSERT_NO_FATAL_FAILURE(gpu.upload());
  GpuResult result;
  ASSERT_NO_FATAL_FAILURE(gpu.run(backend, &result));
  const DecodeResult ref = cpu_reference_decode(hp.as_problem());
  expect_matches(c, hp.seqlens.data(), ref, result);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, DecodeGpuTest,
    ::testing::Combine(::testing::ValuesIn(kCases),
                       ::testing::Values(FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO)),
    [](const ::testing::TestParamInfo<DecodeGpuTest::ParamType>& info) {
      return case_name(std::get<0>(info.param)) + "_" + backend_name(std::get<1>(info.param));
    });

// Fixed split boundaries and merge order: two runs give the same bits, for both backends.
class DecodeDeterminismTest : public ::testing::TestWithParam<flashmla_backend_t> {};

TEST_P(DecodeDeterminismTest, RepeatIsBitwiseIdentical) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  // Long, uneven requests at h_q = 128: many parts, so requests are split and combined.
  const DecodeCase c{kBF16, 3, 2, 1031, 128, 1, true, true, false, 64};
  const HostProblem hp = make_problem(c, seed_of("determinism"));
  GpuProblem gpu(hp);
  ASSERT_NO_FATAL_FAILURE(gpu.upload());
  GpuResult first, second;
  ASSERT_NO_FATAL_FAILURE(gpu.run(GetParam(), &first));
  ASSERT_NO_FATAL_FAILURE(gpu.run(GetParam(), &second));
  EXPECT_TRUE(first.out == second.out) << "out differs between runs";
  EXPECT_EQ(std::memcmp(first.lse.data(), second.lse.data(), first.lse.size() * sizeof(float)), 0)
      << "lse differs between runs";
}

INSTANTIATE_TEST_SUITE_P(Backends, DecodeDeterminismTest,
                         ::testing::Values(FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO),
                         [](const ::testing::TestParamInfo<flashmla_backend_t>& info) {
                           return std::string(backend_name(info.param));
                         });

// Cache offsets beyond 2^32 elements: the requests' blocks sit behind ~8.8 GB of NaN blocks, so
// any 32-bit truncation of a cache offset reads NaN (or faults).
TEST(DecodeGpuLargeCache, SixtyFourBitOffsets) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const DecodeCase c{kBF16, 2, 1, 300, 16, 1, true, false, false, 64};
  const HostProblem hp = make_problem(c, seed_of("large cache"));
  constexpr int64_t kElementsPastInt32 = (int64_t{1} << 32) + (int64_t{1} << 28);
  const int64_t block_elems = int64_t{c.page_block_size} * c.h_kv * kHeadDim;
  const int64_t block_offset = kElementsPastInt32 / block_elems;
  size_t free_bytes = 0, total_bytes = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_bytes, &total_bytes), cudaSuccess);
  // Twice the cache: room for the library's own allocations and other processes.
  if (static_cast<double>(free_bytes) < 2.0 * 2 * kElementsPastInt32) {
    GTEST_SKIP() << "needs about " << 2 * kElementsPastInt32 / (1 << 30)
                 << " GiB of free device memory";
  }
  for (flashmla_backend_t backend : {FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO}) {
    SCOPED_TRACE(backend_name(backend));
    GpuProblem gpu(hp, block_offset);
    ASSERT_NO_FATAL_FAILURE(gpu.upload());
    GpuResult result;
    ASSERT_NO_FATAL_FAILURE(gpu.run(backend, &result));
    expect_matches(c, hp.seqlens.data(), cpu_reference_decode(hp.as_problem()), result);
  }
}

// Checks requests of a GPU result against the CPU model one at a time: the model of a whole
// large batch would take minutes.
void expect_requests_match_cpu(const HostProblem& hp, const GpuResult& result,
                               std::initializer_list<int> requests) {
  const DecodeCase& c = hp.c;
  const size_t out_per_request = static_cast<size_t>(c.s_q) * c.h_q * kHeadDimV;
  const size_t lse_per_request = static_cast<size_t>(c.h_q) * c.s_q;
  for (int request : requests) {
    SCOPED_TRACE("request " + std::to_string(request));
    DecodeProblem one = hp.as_problem();
    one.batch = 1;
    one.q += static_cast<size_t>(request) * c.s_q * c.h_q * kHeadDim;
    one.block_table += static_cast<size_t>(request) * hp.max_blocks_per_seq;
    one.seqlens += request;
    GpuResult slice;
    slice.out.assign(result.out.begin() + request * out_per_request,
                     result.out.begin() + (request + 1) * out_per_request);
    slice.lse.assign(result.lse.begin() + request * lse_per_request,
                     result.lse.begin() + (request + 1) * lse_per_request);
    expect_matches(c, one.seqlens, cpu_reference_decode(one), slice);
  }
}

// DeepSeek-V3's shape at a realistic batch: the reference kernel must stay usable as an oracle
// (well under a second). Checked against the CPU model on the first and last request.
TEST(DecodeGpuLargeBatch, ReferenceIsAccurateAndFast) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const DecodeCase c{kBF16, 64, 1, 4096, 128, 1, false, false, false, 64};
  constexpr float kMaxMilliseconds = 1000.0f;
  const HostProblem hp = make_problem(c, seed_of("large batch"));
  GpuProblem gpu(hp);
  ASSERT_NO_FATAL_FAILURE(gpu.upload());
  GpuResult result;
  ASSERT_NO_FATAL_FAILURE(gpu.run(FLASHMLA_BACKEND_REFERENCE, &result));  // warm-up
  float decode_ms = 0.0f;
  ASSERT_NO_FATAL_FAILURE(gpu.run(FLASHMLA_BACKEND_REFERENCE, &result, &decode_ms));
  EXPECT_LT(decode_ms, kMaxMilliseconds) << "reference decode of b=64, s_k=4096, h_q=128";
  std::cout << "[ INFO     ] reference decode, b=64 s_k=4096 h_q=128: " << decode_ms << " ms\n";
  expect_requests_match_cpu(hp, result, {0, c.batch - 1});
}

// The extremes the kernel must handle: the longest requests, the largest batches, 512 query rows
// per KV head, s_q = 8 with the causal mask, and length mixes where one request dominates. The
// default backend is compared with the reference kernel on every element (the reference kernel
// itself is checked against the CPU model above) and with the CPU model on chosen requests.
struct ScaleCase {
  const char* name;
  DecodeCase c;
  std::vector<int32_t> (*lengths)(const DecodeCase& c, std::mt19937_64& rng);
  std::vector<int> cpu_checked;  // requests also compared with the CPU model
};

constexpr int32_t kLongestLength = 131072;

std::vector<int32_t> all_longest(const DecodeCase& c, std::mt19937_64&) {
  return std::vector<int32_t>(c.batch, c.s_k);
}

// Mostly short requests, some empty, a few of the longest length: the plan splits the long ones
// over many parts while hundreds of short ones share the rest.
std::vector<int32_t> few_long_many_short(const DecodeCase& c, std::mt19937_64& rng) {
  constexpr int kLongEvery = 256, kEmptyEvery = 97, kShortMax = 1024;
  std::uniform_int_distribution<int32_t> short_length(1, kShortMax);
  std::vector<int32_t> lengths(c.batch);
  for (int i = 0; i < c.batch; ++i) {
    lengths[i] = i % kLongEvery == 5 ? c.s_k : i % kEmptyEvery == 0 ? 0 : short_length(rng);
  }
  return lengths;
}

// One request of the longest length among requests of at most a page.
std::vector<int32_t> one_long_rest_tiny(const DecodeCase& c, std::mt19937_64& rng) {
  constexpr int kTinyMax = 64, kEmptyEvery = 5;
  std::uniform_int_distribution<int32_t> tiny_length(1, kTinyMax);
  std::vector<int32_t> lengths(c.batch);
  for (int i = 0; i < c.batch; ++i) lengths[i] = i % kEmptyEvery == 0 ? 0 : tiny_length(rng);
  lengths[c.batch / 2] = c.s_k;
  return lengths;
}

// Uniform lengths with some shorter than s_q (causal rows that see no key) and some empty.
std::vector<int32_t> causal_mix(const DecodeCase& c, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> length(1, c.s_k);
  std::vector<int32_t> lengths(c.batch);
  for (int i = 0; i < c.batch; ++i) lengths[i] = length(rng);
  lengths[0] = c.s_k;
  if (c.batch > 1) lengths[1] = c.s_q - 1;
  if (c.batch > 2) lengths[2] = 0;
  return lengths;
}

void PrintTo(const ScaleCase& sc, std::ostream* os) { *os << sc.name; }

const ScaleCase kScaleCases[] = {
    {"longest_single", {kBF16, 1, 1, kLongestLength, 128, 1, false, false, false, 64}, all_longest, {0}},
    {"longest_sq2_causal", {kBF16, 2, 2, kLongestLength, 128, 1, false, true, false, 64}, all_longest, {1}},
    {"batch1024_skewed", {kBF16, 1024, 1, kLongestLength, 128, 1, true, false, true, 64}, few_long_many_short,
     {0, 5, 517, 1023}},
    {"batch1024_hq16_fp16", {kFP16, 1024, 1, 2048, 16, 1, true, false, true, 64}, few_long_many_short,
     {0, 5, 261, 517, 773, 777}},
    {"one_long_rest_tiny", {kBF16, 256, 1, kLongestLength, 64, 1, true, false, true, 64}, one_long_rest_tiny,
     {128, 1, 255}},
    {"rows512_sq4_causal", {kBF16, 4, 4, 4096, 128, 1, true, true, false, 64}, causal_mix, {0, 1, 2, 3}},
    {"rows512_sq8_causal_hkv2", {kBF16, 3, 8, 2000, 128, 2, true, true, false, 64}, causal_mix, {0, 1, 2}},
    {"rows512_sq8_causal_fp16", {kFP16, 3, 8, 1500, 64, 1, true, true, false, 128}, causal_mix, {0, 1, 2}},
    {"sq8_causal_hq16_batch64", {kBF16, 64, 8, 700, 16, 1, true, true, true, 64}, causal_mix, {0, 1, 2, 63}},
};

class DecodeGpuScaleTest : public ::testing::TestWithParam<ScaleCase> {};

TEST_P(DecodeGpuScaleTest, DefaultBackendMatchesReference) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const ScaleCase& sc = GetParam();
  std::mt19937_64 rng(seed_of(sc.name));
  const HostProblem hp = make_problem(sc.c, seed_of(sc.name), sc.lengths(sc.c, rng));
  GpuProblem gpu(hp);
  ASSERT_NO_FATAL_FAILURE(gpu.upload());
  GpuResult oracle, result;
  ASSERT_NO_FATAL_FAILURE(gpu.run(FLASHMLA_BACKEND_REFERENCE, &oracle));
  ASSERT_NO_FATAL_FAILURE(gpu.run(FLASHMLA_BACKEND_AUTO, &result));

  DecodeResult oracle_as_float;
  oracle_as_float.out.resize(oracle.out.size());
  for (size_t i = 0; i < oracle.out.size(); ++i) {
    oracle_as_float.out[i] = half_bits_to_float(oracle.out[i], sc.c.dtype);
  }
  oracle_as_float.lse = oracle.lse;
  {
    SCOPED_TRACE("default backend vs reference kernel");
    expect_matches(sc.c, hp.seqlens.data(), oracle_as_float, result);
  }
  for (int request : sc.cpu_checked) {
    SCOPED_TRACE("default backend vs CPU model");
    expect_requests_match_cpu(hp, result, {request});
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DecodeGpuScaleTest, ::testing::ValuesIn(kScaleCases),
                         [](const ::testing::TestParamInfo<ScaleCase>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace flashmla_test
