// Validating mode (flashmla_decode_args.validate = 1) on the GPU: it changes no bit of a valid
// result; it names the first bad length, block id or plan word, in request order, and runs nothing
// (out and lse keep their NaN poison); it is refused inside a stream capture without breaking the
// capture; and it handles the int32 limits of block ids and lengths. Without a GPU every test skips.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cctype>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "decode_harness.h"
#include "flashmla/flashmla.h"

namespace flashmla_test {
namespace {

constexpr int32_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int32_t kInt32Min = std::numeric_limits<int32_t>::min();
constexpr const char* kStalePlan =
    ": it is not the plan of these cache_seqlens; call flashmla_get_metadata again whenever the "
    "lengths change";
constexpr const char* kCaptureRefusal =
    "validate: validating mode synchronises the stream, so it cannot run while the stream is being "
    "captured into a CUDA graph; validate outside the capture";

const char* backend_name(flashmla_backend_t backend) {
  return backend == FLASHMLA_BACKEND_REFERENCE ? "reference" : "auto";
}

class ValidateGpu : public ::testing::TestWithParam<flashmla_backend_t> {
 protected:
  void SetUp() override {
    if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  }
};

// Four requests (one empty, one ending exactly on a page boundary), h_kv = 2, junk in the unused
// block-table entries, padded table rows.
ProblemSpec standard_spec(uint64_t seed) {
  ProblemSpec spec;
  spec.seed = seed;
  spec.s_q = 2;
  spec.h_q = 32;
  spec.h_kv = 2;
  spec.lengths = {300, 0, 128, 517};
  spec.extra_table_columns = 2;
  spec.junk_in_unused_entries = true;
  spec.causal = true;
  spec.padding.table_row = 3;
  return spec;
}

void write_device(int32_t* device, int32_t value) {
  ASSERT_TRUE(cuda_ok(cudaMemcpy(device, &value, sizeof(value), cudaMemcpyHostToDevice), "write"));
}

int32_t read_device(const int32_t* device) {
  int32_t value = 0;
  EXPECT_TRUE(cuda_ok(cudaMemcpy(&value, device, sizeof(value), cudaMemcpyDeviceToHost), "read"));
  return value;
}

TEST_P(ValidateGpu, ValidInputsGiveTheFastPathsBits) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    ProblemSpec spec = standard_spec(seed);
    spec.dtype = seed == 2 ? HalfType::kFloat16 : HalfType::kBFloat16;
    const HostProblem hp = make_host_problem(spec);
    const DeviceProblem problem(hp);
    ASSERT_TRUE(problem.ok());
    RunOptions options;
    options.backend = GetParam();
    options.host_metadata = seed == 3;  // the host plan is the device plan, bit for bit
    DecodeOutput trusted, checked;
    ASSERT_TRUE(run_decode(problem, options, &trusted));
    options.validate = 1;
    ASSERT_TRUE(run_decode(problem, options, &checked));
    EXPECT_TRUE(bitwise_equal(trusted, checked));
    EXPECT_TRUE(matches_reference(hp, checked));
  }
}

struct Corruption {
  const char* name;
  // Writes the bad value(s) and returns the expected message.
  std::string (*apply)(const DeviceProblem& problem, DecodeRunner& runner);
};

int32_t* table_entry(const DeviceProblem& problem, int request, int column) {
  return problem.block_table_data() + request * problem.table_row_stride() + column;
}

std::string block_message(const DeviceProblem& problem, int request, int column, int32_t id) {
  return "block_table[" + std::to_string(request) + "][" + std::to_string(column) + "] = " +
         std::to_string(id) + " is outside k_cache's " + std::to_string(problem.host().num_blocks) +
         " blocks";
}

std::string set_block(const DeviceProblem& problem, int request, int column, int32_t id) {
  write_device(table_entry(problem, request, column), id);
  return block_message(problem, request, column, id);
}

std::string set_length(const DeviceProblem& problem, int request, int32_t length) {
  write_device(problem.seqlens_data() + request, length);
  const HostProblem& hp = problem.host();
  const std::string at = "cache_seqlens[" + std::to_string(request) + "] = " + std::to_string(length);
  if (length < 0) return at + " is negative";
  const int64_t capacity = int64_t{hp.max_blocks_per_seq} * hp.spec.page;
  return at + " does not fit its block_table row: " + std::to_string(hp.max_blocks_per_seq) +
         " blocks of " + std::to_string(hp.spec.page) + " tokens hold " + std::to_string(capacity);
}

// Request 3 has 517 tokens: pages 0..8 of 64 tokens; request 0 has 300: pages 0..4.
const Corruption kCorruptions[] = {
    {"block id == num_blocks, last used page",
     [](const DeviceProblem& p, DecodeRunner&) {
       return set_block(p, 3, 8, static_cast<int32_t>(p.host().num_blocks));
     }},
    {"block id -1, first page", [](const DeviceProblem& p, DecodeRunner&) { return set_block(p, 0, 0, -1); }},
    {"block id INT32_MAX", [](const DeviceProblem& p, DecodeRunner&) { return set_block(p, 2, 1, kInt32Max); }},
    {"block id INT32_MIN", [](const DeviceProblem& p, DecodeRunner&) { return set_block(p, 3, 4, kInt32Min); }},
    {"negative length", [](const DeviceProblem& p, DecodeRunner&) { return set_length(p, 2, -1); }},
    {"INT32_MIN length", [](const DeviceProblem& p, DecodeRunner&) { return set_length(p, 1, kInt32Min); }},
    {"length one past the row",
     [](const DeviceProblem& p, DecodeRunner&) {
       return set_length(p, 0, p.host().max_blocks_per_seq * p.host().spec.page + 1);
     }},
    {"INT32_MAX length", [](const DeviceProblem& p, DecodeRunner&) { return set_length(p, 3, kInt32Max); }},
    {"first fault wins: request order",
     [](const DeviceProblem& p, DecodeRunner&) {
       set_length(p, 3, -5);
       set_block(p, 2, 1, -9);
       return set_block(p, 0, 3, static_cast<int32_t>(p.host().num_blocks) + 7);
     }},
    {"first fault wins: length before the request's blocks",
     [](const DeviceProblem& p, DecodeRunner&) {
       set_block(p, 0, 0, -1);
       return set_length(p, 0, -2);
     }},
    {"first fault wins: lengths and blocks before the plan",
     [](const DeviceProblem& p, DecodeRunner& r) {
       write_device(r.metadata_data(), 77);
       return set_block(p, 3, 0, -3);
     }},
    {"metadata word",
     [](const DeviceProblem&, DecodeRunner& r) {
       const int64_t word = (r.num_sm_parts() - 1) * FLASHMLA_METADATA_WORDS + 4;  // last begin_split
       const int32_t was = read_device(r.metadata_data() + word);
       write_device(r.metadata_data() + word, was + 1000);
       return "tile_scheduler_metadata[" + std::to_string(r.num_sm_parts() - 1) + "][4] = " +
              std::to_string(was + 1000) + ", expected " + std::to_string(was) + kStalePlan;
     }},
    {"num_splits entry",
     [](const DeviceProblem&, DecodeRunner& r) {
       const int32_t was = read_device(r.num_splits_data() + 4);
       write_device(r.num_splits_data() + 4, was - 1);
       return "num_splits[4] = " + std::to_string(was - 1) + ", expected " + std::to_string(was) +
              kStalePlan;
     }},
};

void PrintTo(const Corruption& c, std::ostream* os) { *os << c.name; }

class ValidateCorruptionGpu
    : public ::testing::TestWithParam<std::tuple<Corruption, flashmla_backend_t>> {};

TEST_P(ValidateCorruptionGpu, FirstBadValueIsNamedAndNothingRuns) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const Corruption& corruption = std::get<0>(GetParam());
  const HostProblem hp = make_host_problem(standard_spec(11));
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  RunOptions options;
  options.backend = std::get<1>(GetParam());
  options.validate = 1;
  DecodeRunner runner(problem, options);
  ASSERT_TRUE(runner.plan());
  ASSERT_TRUE(cuda_ok(cudaDeviceSynchronize(), "plan"));
  const std::string expected = corruption.apply(problem, runner);

  EXPECT_EQ(runner.decode(), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(runner.last_message(), expected);
  DecodeOutput output;
  ASSERT_TRUE(runner.download(&output));
  EXPECT_TRUE(still_poisoned(output)) << "out or lse was written";
  EXPECT_TRUE(context_healthy());

  // The same problem, restored and validated, runs normally: nothing stuck.
  const HostProblem fresh_hp = make_host_problem(standard_spec(11));
  const DeviceProblem fresh(fresh_hp);
  ASSERT_TRUE(fresh.ok());
  DecodeOutput good;
  ASSERT_TRUE(run_decode(fresh, options, &good));
  EXPECT_TRUE(matches_reference(fresh_hp, good));
}

INSTANTIATE_TEST_SUITE_P(
    Corruptions, ValidateCorruptionGpu,
    ::testing::Combine(::testing::ValuesIn(kCorruptions),
                       ::testing::Values(FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO)),
    [](const ::testing::TestParamInfo<ValidateCorruptionGpu::ParamType>& info) {
      std::string name = std::get<0>(info.param).name;
      for (char& c : name) {
        if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
      }
      return std::to_string(info.index) + "_" + name + "_" + backend_name(std::get<1>(info.param));
    });

// The edges that are still valid: a length that fills its row exactly, block ids 0 and
// num_blocks - 1, a stale plan that happens to equal the fresh one (lengths changed within a tile).
TEST_P(ValidateGpu, EdgesThatAreValidPass) {
  ProblemSpec spec = standard_spec(21);
  spec.extra_table_columns = 0;  // request 3's 517 tokens: its row holds 9 pages = 576 tokens
  const HostProblem hp = make_host_problem(spec);
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  RunOptions options;
  options.backend = GetParam();
  options.validate = 1;
  DecodeRunner runner(problem, options);
  ASSERT_TRUE(runner.plan());
  ASSERT_TRUE(cuda_ok(cudaDeviceSynchronize(), "plan"));
  // The plan counts 64-token tiles: 517 -> 576 tokens keeps 9 tiles and so the same plan. Tokens
  // 517..575 are NaN in the cache, so only validation (not the result) is checked.
  write_device(problem.seqlens_data() + 3, 576);
  write_device(table_entry(problem, 0, 0), 0);
  write_device(table_entry(problem, 2, 1), static_cast<int32_t>(hp.num_blocks - 1));
  EXPECT_EQ(runner.decode(), FLASHMLA_STATUS_SUCCESS) << runner.last_message();
  DecodeOutput output;
  ASSERT_TRUE(runner.download(&output));
  EXPECT_TRUE(context_healthy());
}

// Junk (negative, INT32_MAX, beyond the cache) in every block-table entry past a request's pages
// is never read, validating or not.
TEST_P(ValidateGpu, UnusedEntriesMayHoldAnything) {
  ProblemSpec spec = standard_spec(31);
  spec.extra_table_columns = 4;
  spec.lengths = {1, 0, 64, 65, 0, 200};
  const HostProblem hp = make_host_problem(spec);
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  for (int32_t validate : {0, 1}) {
    SCOPED_TRACE("validate " + std::to_string(validate));
    RunOptions options;
    options.backend = GetParam();
    options.validate = validate;
    DecodeOutput output;
    ASSERT_TRUE(run_decode(problem, options, &output));
    EXPECT_TRUE(matches_reference(hp, output));
  }
}

// Capture on a stream: validating mode refuses (it would synchronise the capturing stream), and
// the capture survives: the decode captured next to it replays correctly.
TEST_P(ValidateGpu, RefusedDuringStreamCapture) {
  const HostProblem hp = make_host_problem(standard_spec(41));
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  const OwnStream own;
  ASSERT_NE(own.get(), nullptr);
  const cudaStream_t stream = own.get();
  RunOptions options;
  options.backend = GetParam();
  options.stream = stream;
  options.library_workspace = true;  // stream-ordered allocation inside the graph
  DecodeRunner runner(problem, options);
  ASSERT_TRUE(runner.plan());
  ASSERT_TRUE(cuda_ok(cudaStreamSynchronize(stream), "plan"));

  for (cudaStreamCaptureMode mode : {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeRelaxed}) {
    SCOPED_TRACE(mode == cudaStreamCaptureModeGlobal ? "global capture" : "relaxed capture");
    ASSERT_TRUE(cuda_ok(cudaStreamBeginCapture(stream, mode), "begin capture"));
    runner.args().validate = 1;
    const flashmla_status_t refused = runner.decode();
    const std::string message = runner.last_message();
    runner.args().validate = 0;
    const flashmla_status_t captured = runner.decode();
    cudaGraph_t graph = nullptr;
    ASSERT_TRUE(cuda_ok(cudaStreamEndCapture(stream, &graph), "end capture"));
    EXPECT_EQ(refused, FLASHMLA_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(message, kCaptureRefusal);
    EXPECT_EQ(captured, FLASHMLA_STATUS_SUCCESS) << runner.last_message();

    cudaGraphExec_t exec = nullptr;
    ASSERT_TRUE(cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "instantiate"));
    ASSERT_TRUE(cuda_ok(cudaGraphLaunch(exec, stream), "launch"));
    DecodeOutput output;
    ASSERT_TRUE(runner.download(&output));
    EXPECT_TRUE(matches_reference(hp, output));
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    EXPECT_TRUE(context_healthy());
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, ValidateGpu,
                         ::testing::Values(FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO),
                         [](const ::testing::TestParamInfo<flashmla_backend_t>& info) {
                           return std::string(backend_name(info.param));
                         });

// Many requests, faults in many of them: whatever order the GPU's threads run in, the report is
// the first fault, every time.
TEST(ValidateGpuScale, FirstFaultOfManyIsDeterministic) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  constexpr int kBatch = 4096;
  constexpr int kFaultEvery = 97;
  constexpr int kFirstFault = 123;
  constexpr int kRepeats = 5;
  ProblemSpec spec;
  spec.seed = 51;
  spec.h_q = 16;
  std::mt19937_64 rng(spec.seed);
  spec.lengths = random_lengths(rng, kBatch, 64, true);
  for (int r = kFirstFault; r < kBatch; r += kFaultEvery) spec.lengths[r] = 200;  // 4 pages
  const HostProblem hp = make_host_problem(spec);
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  RunOptions options;
  options.validate = 1;
  DecodeRunner runner(problem, options);
  ASSERT_TRUE(runner.plan());
  ASSERT_TRUE(cuda_ok(cudaDeviceSynchronize(), "plan"));
  for (int r = kBatch - 1 - (kBatch - 1 - kFirstFault) % kFaultEvery; r >= kFirstFault; r -= kFaultEvery) {
    set_block(problem, r, 3, -1 - r);
    set_block(problem, r, 1, -1 - r);
  }
  const std::string expected = block_message(problem, kFirstFault, 1, -1 - kFirstFault);
  for (int n = 0; n < kRepeats; ++n) {
    EXPECT_EQ(runner.decode(), FLASHMLA_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(runner.last_message(), expected);
  }
  EXPECT_TRUE(context_healthy());
}

// A block-table row as wide as the API allows (INT32_MAX / 64 pages): a fault in its last column,
// and a length of INT32_MAX, which no row can hold. Needs about 140 MB.
TEST(ValidateGpuScale, WidestRowAndLongestLength) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  constexpr int64_t kPage = 64;
  constexpr int64_t kColumns = kInt32Max / kPage;
  constexpr int32_t kLongest = static_cast<int32_t>(kColumns * kPage);  // 2147483584
  ProblemSpec spec;
  spec.seed = 61;
  spec.lengths = {100};
  const HostProblem hp = make_host_problem(spec);
  const DeviceProblem problem(hp);
  ASSERT_TRUE(problem.ok());
  DeviceMemory wide(static_cast<size_t>(kColumns) * sizeof(int32_t));
  ASSERT_TRUE(wide.ok());
  ASSERT_TRUE(cuda_ok(cudaMemset(wide.get(), 0, wide.bytes()), "memset"));  // block 0 everywhere
  RunOptions options;
  options.validate = 1;
  DecodeRunner runner(problem, options);
  ASSERT_TRUE(runner.plan());
  TensorDesc table(wide.get(), dl_cuda_device(problem.device()), dl_int32(), {1, kColumns});
  runner.args().block_table = table.get();

  write_device(problem.seqlens_data(), kInt32Max);
  EXPECT_EQ(runner.decode(), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(runner.last_message(), "cache_seqlens[0] = 2147483647 does not fit its block_table row: " +
                                       std::to_string(kColumns) + " blocks of 64 tokens hold " +
                                       std::to_string(kLongest));
  write_device(problem.seqlens_data(), kLongest);
  write_device(static_cast<int32_t*>(wide.get()) + kColumns - 1, -1);
  EXPECT_EQ(runner.decode(), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(runner.last_message(), "block_table[0][" + std::to_string(kColumns - 1) +
                                       "] = -1 is outside k_cache's " + std::to_string(hp.num_blocks) +
                                       " blocks");
  EXPECT_TRUE(context_healthy());
}

}  // namespace
}  // namespace flashmla_test
