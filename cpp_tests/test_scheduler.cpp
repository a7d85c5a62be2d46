// The split-KV plan through the public API: the invariants of src/scheduler/metadata.h on the host
// path, and host == device bit for bit (GPU part skips without a device).
#include <gtest/gtest.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "flashmla/flashmla.h"

namespace {

constexpr int kBlockN = FLASHMLA_BLOCK_N;
constexpr int kWords = FLASHMLA_METADATA_WORDS;
// Word positions of a metadata row (src/scheduler/metadata.h).
constexpr int kBeginReq = 0, kBeginTile = 1, kEndReq = 2, kEndTile = 3, kBeginSplit = 4, kTotalTiles = 5;

struct Plan {
  std::vector<int32_t> metadata;
  std::vector<int32_t> num_splits;
};

DLTensor host_tensor(int32_t* data, int ndim, int64_t* shape) {
  DLTensor t{};
  t.data = data;
  t.device = {kDLCPU, 0};
  t.ndim = ndim;
  t.dtype = {kDLInt, 32, 1};
  t.shape = shape;
  return t;
}

Plan plan_on_host(std::vector<int32_t> seqlens, int num_sm_parts) {
  Plan plan;
  plan.metadata.assign(static_cast<size_t>(num_sm_parts) * kWords, -7);
  plan.num_splits.assign(seqlens.size() + 1, -7);
  int64_t seq_shape[1] = {static_cast<int64_t>(seqlens.size())};
  int64_t md_shape[2] = {num_sm_parts, kWords};
  int64_t ns_shape[1] = {static_cast<int64_t>(seqlens.size()) + 1};
  DLTensor s = host_tensor(seqlens.data(), 1, seq_shape);
  DLTensor m = host_tensor(plan.metadata.data(), 2, md_shape);
  DLTensor n = host_tensor(plan.num_splits.data(), 1, ns_shape);
  EXPECT_EQ(flashmla_get_metadata(&s, &m, &n, nullptr), FLASHMLA_STATUS_SUCCESS)
      << flashmla_get_last_error();
  return plan;
}

int64_t tiles_of(int32_t len) { return (int64_t{len} + kBlockN - 1) / kBlockN; }

// Walks the plan the way a kernel does and checks every invariant the kernels rely on.
void expect_valid_plan(const std::vector<int32_t>& seqlens, int num_sm_parts, const Plan& plan) {
  const int batch = static_cast<int>(seqlens.size());
  std::vector<int64_t> next_tile(batch, 0);     // tiles of each request covered so far, in order
  std::vector<int> pieces(batch, 0);            // visits seen so far
  std::vector<char> slot_used;
  ASSERT_EQ(plan.num_splits[0], 0);
  for (int r = 0; r < batch; ++r) ASSERT_GE(plan.num_splits[r + 1], plan.num_splits[r] + 1) << r;
  int64_t total_tiles = 0;
  for (int32_t len : seqlens) total_tiles += tiles_of(len);
  const int64_t total_slots = plan.num_splits[batch];
  ASSERT_LE(total_slots, int64_t{batch} + num_sm_parts);
  slot_used.assign(static_cast<size_t>(total_slots), 0);

  for (int p = 0; p < num_sm_parts; ++p) {
    const int32_t* row = &plan.metadata[static_cast<size_t>(p) * kWords];
    EXPECT_EQ(row[kTotalTiles], std::min<int64_t>(total_tiles, INT32_MAX)) << "part " << p;
    for (int w = kTotalTiles + 1; w < kWords; ++w) EXPECT_EQ(row[w], 0) << "reserved word";
    if (row[kBeginReq] > row[kEndReq]) continue;  // empty part
    ASSERT_GE(row[kBeginReq], 0);
    ASSERT_LT(row[kEndReq], batch);
    for (int r = row[kBeginReq]; r <= row[kEndReq]; ++r) {
      const int64_t n = tiles_of(seqlens[r]);
      const int64_t begin = r == row[kBeginReq] ? row[kBeginTile] : 0;
      const int64_t end = r == row[kEndReq] ? row[kEndTile] : n;
      ASSERT_EQ(begin, next_tile[r]) << "part " << p << " request " << r << ": gap or overlap";
      ASSERT_LE(end, n);
      if (n > 0) {
        ASSERT_LT(begin, end) << "empty visit of a non-empty request";
      }
      next_tile[r] = end;
      const int64_t slot = r == row[kBeginReq] ? row[kBeginSplit] : plan.num_splits[r];
      ASSERT_EQ(slot, plan.num_splits[r] + pieces[r]) << "part " << p << " request " << r;
      ASSERT_LT(slot, total_slots);
      EXPECT_FALSE(slot_used[static_cast<size_t>(slot)]) << "slot used twice";
      slot_used[static_cast<size_t>(slot)] = 1;
      ++pieces[r];
    }
  }
  for (int r = 0; r < batch; ++r) {
    EXPECT_EQ(next_tile[r], tiles_of(seqlens[r])) << "request " << r << " not fully covered";
    EXPECT_EQ(pieces[r], plan.num_splits[r + 1] - plan.num_splits[r]) << "request " << r;
  }
}

std::vector<int32_t> random_lengths(std::mt19937& rng, int batch, int max_len, double zero_rate) {
  std::uniform_int_distribution<int32_t> len(1, max_len);
  std::bernoulli_distribution zero(zero_rate);
  std::vector<int32_t> out(batch);
  for (auto& l : out) l = zero(rng) ? 0 : len(rng);
  return out;
}

TEST(SchedulerHost, UniformBatchIsBalancedAndValid) {
  const std::vector<int32_t> seqlens(128, 4096);
  const Plan plan = plan_on_host(seqlens, 132);
  expect_valid_plan(seqlens, 132, plan);
}

TEST(SchedulerHost, SingleLongRequestIsSplitAcrossParts) {
  const std::vector<int32_t> seqlens = {65536};
  const int parts = 66;
  const Plan plan = plan_on_host(seqlens, parts);
  expect_valid_plan(seqlens, parts, plan);
  EXPECT_GT(plan.num_splits[1], 32) << "one long request should use most parts";
}

// The premise of tests/test_decode.py's large-batch special case (b=32, one 16384-token request):
// on an H100's 66 parts it is split into more pieces than the combine loads in one batch (8).
TEST(SchedulerHost, LongRequestInLargeBatchIsSplitBeyondOneCombineBatch) {
  std::vector<int32_t> seqlens(20, 64);
  seqlens.push_back(16384);
  seqlens.insert(seqlens.end(), 11, 200);
  const int parts = 66;
  const Plan plan = plan_on_host(seqlens, parts);
  expect_valid_plan(seqlens, parts, plan);
  constexpr int kLongRequest = 20;
  EXPECT_GT(plan.num_splits[kLongRequest + 1] - plan.num_splits[kLongRequest], 8);
}

TEST(SchedulerHost, ZeroLengthRequestsAreVisitedOnce) {
  const std::vector<int32_t> seqlens = {0, 0, 100, 0, 5000, 0};
  for (int parts : {1, 2, 7, 132}) {
    const Plan plan = plan_on_host(seqlens, parts);
    expect_valid_plan(seqlens, parts, plan);
  }
  const std::vector<int32_t> all_zero(17, 0);
  expect_valid_plan(all_zero, 5, plan_on_host(all_zero, 5));
}

TEST(SchedulerHost, EmptyBatch) {
  const Plan plan = plan_on_host({}, 4);
  EXPECT_EQ(plan.num_splits[0], 0);
  for (int p = 0; p < 4; ++p) EXPECT_GT(plan.metadata[p * kWords + kBeginReq], plan.metadata[p * kWords + kEndReq]);
}

TEST(SchedulerHost, TotalTilesSaturatesAtInt32Max) {
  // 70 requests of the longest length hold about 2^31.1 tiles together.
  const std::vector<int32_t> seqlens(70, INT32_MAX);
  const Plan plan = plan_on_host(seqlens, 132);
  expect_valid_plan(seqlens, 132, plan);
  EXPECT_EQ(plan.metadata[kTotalTiles], INT32_MAX);
}

TEST(SchedulerHost, RandomBatchesSatisfyInvariants) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 300; ++trial) {
    const int batch = std::uniform_int_distribution<int>(1, 300)(rng);
    const int parts = std::uniform_int_distribution<int>(1, 140)(rng);
    const int max_len = std::uniform_int_distribution<int>(1, 70000)(rng);
    std::vector<int32_t> seqlens = random_lengths(rng, batch, max_len, 0.1);
    if (trial % 5 == 0) seqlens[rng() % batch] = 1 << 24;  // one huge request
    expect_valid_plan(seqlens, parts, plan_on_host(seqlens, parts));
    if (HasFatalFailure()) return;
  }
}

TEST(SchedulerHost, IsDeterministic) {
  std::mt19937 rng(7);
  const std::vector<int32_t> seqlens = random_lengths(rng, 77, 9000, 0.2);
  const Plan a = plan_on_host(seqlens, 33), b = plan_on_host(seqlens, 33);
  EXPECT_EQ(a.metadata, b.metadata);
  EXPECT_EQ(a.num_splits, b.num_splits);
}

TEST(SchedulerHost, RejectsNegativeLengths) {
  std::vector<int32_t> seqlens = {5, -1};
  std::vector<int32_t> md(kWords), ns(3);
  int64_t s_shape[1] = {2}, m_shape[2] = {1, kWords}, n_shape[1] = {3};
  DLTensor s = host_tensor(seqlens.data(), 1, s_shape);
  DLTensor m = host_tensor(md.data(), 2, m_shape);
  DLTensor n = host_tensor(ns.data(), 1, n_shape);
  EXPECT_EQ(flashmla_get_metadata(&s, &m, &n, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(flashmla_get_last_error()).find("cache_seqlens: entry 1 is negative"),
            std::string::npos)
      << flashmla_get_last_error();
}

bool have_gpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// Runs the device path on `seqlens` and returns its plan.
void plan_on_device(const std::vector<int32_t>& seqlens, int parts, Plan* plan) {
  const size_t batch = seqlens.size();
  int32_t *d_seq = nullptr, *d_md = nullptr, *d_ns = nullptr;
  CUDA_OK(cudaMalloc(&d_seq, std::max<size_t>(batch, 1) * sizeof(int32_t)));
  CUDA_OK(cudaMalloc(&d_md, static_cast<size_t>(parts) * kWords * sizeof(int32_t)));
  CUDA_OK(cudaMalloc(&d_ns, (batch + 1) * sizeof(int32_t)));
  CUDA_OK(cudaMemcpy(d_seq, seqlens.data(), batch * sizeof(int32_t), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(d_md, 0xff, static_cast<size_t>(parts) * kWords * sizeof(int32_t)));
  int64_t s_shape[1] = {static_cast<int64_t>(batch)}, m_shape[2] = {parts, kWords},
          n_shape[1] = {static_cast<int64_t>(batch) + 1};
  DLTensor s = host_tensor(d_seq, 1, s_shape), m = host_tensor(d_md, 2, m_shape),
           n = host_tensor(d_ns, 1, n_shape);
  s.device = m.device = n.device = {kDLCUDA, 0};
  ASSERT_EQ(flashmla_get_metadata(&s, &m, &n, nullptr), FLASHMLA_STATUS_SUCCESS)
      << flashmla_get_last_error();
  CUDA_OK(cudaDeviceSynchronize());
  plan->metadata.resize(static_cast<size_t>(parts) * kWords);
  plan->num_splits.resize(batch + 1);
  CUDA_OK(cudaMemcpy(plan->metadata.data(), d_md, plan->metadata.size() * sizeof(int32_t),
                     cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(plan->num_splits.data(), d_ns, plan->num_splits.size() * sizeof(int32_t),
                     cudaMemcpyDeviceToHost));
  cudaFree(d_seq);
  cudaFree(d_md);
  cudaFree(d_ns);
}

TEST(SchedulerDevice, MatchesHostBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(99);
  for (int trial = 0; trial < 60; ++trial) {
    // Batches beyond the kernel's shared-memory staging size take its global-memory path.
    const int batch = trial == 0 ? 20000 : std::uniform_int_distribution<int>(0, 1100)(rng);
    const int parts = std::uniform_int_distribution<int>(1, 140)(rng);
    std::vector<int32_t> seqlens = random_lengths(rng, batch, 40000, 0.15);
    if (batch > 0 && trial % 4 == 0) seqlens[rng() % batch] = 1 << 26;
    Plan device;
    plan_on_device(seqlens, parts, &device);
    if (HasFatalFailure()) return;
    const Plan host = plan_on_host(seqlens, parts);
    ASSERT_EQ(device.metadata, host.metadata) << "trial " << trial;
    ASSERT_EQ(device.num_splits, host.num_splits) << "trial " << trial;
  }
}

}  // namespace
