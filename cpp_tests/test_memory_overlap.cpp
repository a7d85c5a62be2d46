// Outputs that share memory with another argument, or whose own indices collide, are refused by
// name; tensors that only interleave (column slices of one buffer) are not. Decode calls use fake
// addresses on a device id no machine has, so a call that passes validation stops at the device
// check and nothing is dereferenced, with or without a GPU. The randomised cases compare the
// library's verdict with a plain intersection of every contiguous run of both tensors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "dl_tensor_utils.h"
#include "fake_decode_call.h"
#include "flashmla/flashmla.h"

namespace {

using namespace flashmla_test;

constexpr int kNoSuchDevice = 4096;
// Addresses near which the randomised tensors are placed, far from DecodeCall's other tensors.
constexpr uintptr_t kNearBase = 0x40000000;
constexpr int kRandomCases = 400;

struct Verdict {
  flashmla_status_t status;
  std::string message;
};

// `call` is built; its tensors move to a device that does not exist, and it runs.
Verdict run_on_missing_device(DecodeCall& call) {
  for (FakeTensor* t : {&call.q, &call.k, &call.table, &call.seqlens, &call.metadata, &call.splits,
                        &call.out, &call.lse}) {
    t->t.device = {kDLCUDA, kNoSuchDevice};
  }
  const flashmla_status_t status = flashmla_decode(&call.args, nullptr);
  return {status, flashmla_get_last_error()};
}

bool names_overlap(const Verdict& v) {
  return v.message.find("shares memory with") != std::string::npos ||
         v.message.find("give two indices the same memory") != std::string::npos;
}

// Validation passed: the call failed at the device check on q, not before.
void expect_reached_device_check(const Verdict& v) {
  EXPECT_NE(v.status, FLASHMLA_STATUS_SUCCESS);
  EXPECT_EQ(v.message.rfind("q: ", 0), 0u) << v.message;
  EXPECT_FALSE(names_overlap(v)) << v.message;
}

void expect_refused(const Verdict& v, const std::string& expected) {
  EXPECT_EQ(v.status, FLASHMLA_STATUS_INVALID_ARGUMENT) << v.message;
  EXPECT_NE(v.message.find(expected), std::string::npos) << "message: " << v.message;
}

TEST(MemoryOverlap, WellFormedCallPassesToTheDeviceCheck) {
  DecodeCall call;
  call.build();
  expect_reached_device_check(run_on_missing_device(call));
}

TEST(MemoryOverlap, OutputOnAnInputIsRefusedByName) {
  struct Case {
    const char* name;
    void (*place)(DecodeCall&);
    const char* expected;
  };
  const Case cases[] = {
      {"out on q", [](DecodeCall& c) { c.out.t.data = c.q.t.data; }, "out: shares memory with q"},
      {"lse inside block_table",
       [](DecodeCall& c) { c.lse.t.data = static_cast<char*>(c.table.t.data) + 8; },
       "lse: shares memory with block_table"},
      {"lse on the plan", [](DecodeCall& c) { c.lse.t.data = c.metadata.t.data; },
       "lse: shares memory with tile_scheduler_metadata"},
      {"out ends in lse",
       [](DecodeCall& c) { c.lse.t.data = static_cast<char*>(c.out.t.data) + 65536 - 4; },
       "out: shares memory with lse"},
      {"workspace over k_cache",
       [](DecodeCall& c) {
         c.args.workspace = c.k.t.data;
         c.args.workspace_size = SIZE_MAX;
       },
       "workspace: shares memory with k_cache"},
      {"workspace under out",
       [](DecodeCall& c) {
         c.args.workspace = static_cast<char*>(c.out.t.data) - 256;
         c.args.workspace_size = SIZE_MAX;
       },
       "workspace: shares memory with"},
      {"out broadcast over heads",
       [](DecodeCall& c) {
         c.out.strides = {2 * 512, 512, 0, 1};
         c.out.refresh();
       },
       "out: its strides give two indices the same memory (shape [2, 2, 16, 512], strides [1024, 512, 0, 1])"},
      {"lse rows overlapping",
       [](DecodeCall& c) {
         c.lse.strides = {16, 1, 1};
         c.lse.refresh();
       },
       "lse: its strides give two indices the same memory"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    DecodeCall call;
    call.build();
    c.place(call);
    expect_refused(run_on_missing_device(call), c.expected);
  }
}

TEST(MemoryOverlap, ColumnSlicesOfOneBufferAreAccepted) {
  // q and out as the two column ranges of one [b, s_q, h_q, 576 + 512] buffer: their address
  // ranges meet, their elements do not.
  DecodeCall call;
  constexpr int64_t kRow = 576 + 512;
  const std::vector<int64_t> strides = {DecodeCall::s_q * DecodeCall::h_q * kRow, DecodeCall::h_q * kRow, kRow, 1};
  call.q.strides = strides;
  call.out.strides = strides;
  call.q.t.data = reinterpret_cast<void*>(kNearBase);
  call.out.t.data = reinterpret_cast<void*>(kNearBase + 576 * 2);
  call.build();
  expect_reached_device_check(run_on_missing_device(call));
  // One element further and they share one.
  call.out.t.data = reinterpret_cast<void*>(kNearBase + 575 * 2);
  expect_refused(run_on_missing_device(call), "out: shares memory with q");
}

// ---- Randomised: the verdict against every pair of contiguous runs --------------------------------

struct Interval {
  uintptr_t begin, end;
};

// Every contiguous run of a tensor whose last dimension is contiguous (or of size 1), enumerated
// index by index.
std::vector<Interval> runs_of(const FakeTensor& f, size_t element_bytes) {
  std::vector<int64_t> strides = f.strides;
  if (strides.empty()) strides = compact_strides(f.shape);
  const size_t rank = f.shape.size();
  const uintptr_t base = reinterpret_cast<uintptr_t>(f.t.data);
  std::vector<Interval> runs;
  std::vector<int64_t> index(rank - 1, 0);
  for (;;) {
    uintptr_t at = base;
    for (size_t d = 0; d + 1 < rank; ++d) at += index[d] * strides[d] * element_bytes;
    runs.push_back({at, at + f.shape[rank - 1] * element_bytes});
    size_t d = rank - 1;
    while (d-- > 0) {
      if (++index[d] < f.shape[d]) break;
      index[d] = 0;
    }
    if (d == static_cast<size_t>(-1)) return runs;
  }
}

bool any_run_meets(const std::vector<Interval>& a, const std::vector<Interval>& b) {
  for (const Interval& x : a) {
    for (const Interval& y : b) {
      if (x.begin < y.end && y.begin < x.end) return true;
    }
  }
  return false;
}

// The address range from a tensor's first byte to its last.
Interval span_of(const std::vector<Interval>& runs) {
  Interval span = runs.front();
  for (const Interval& r : runs) {
    span.begin = std::min(span.begin, r.begin);
    span.end = std::max(span.end, r.end);
  }
  return span;
}

// Strides for `shape` with a contiguous last dimension and the other dimensions in a random order
// of nesting, each past the reach of the finer ones by a random gap, small or as large as a row:
// distinct indices, distinct elements, and room between rows for another tensor's.
std::vector<int64_t> nested_strides(const std::vector<int64_t>& shape, std::mt19937& rng) {
  const size_t rank = shape.size();
  std::vector<size_t> order;
  for (size_t d = 0; d + 1 < rank; ++d) order.push_back(d);
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int64_t> strides(rank, 1);
  int64_t reach = shape[rank - 1];
  std::uniform_int_distribution<int64_t> small_gap(0, 3), row_gap(0, shape[rank - 1]);
  for (size_t d : order) {
    strides[d] = reach + (rng() % 2 ? small_gap(rng) : row_gap(rng));
    reach = strides[d] * shape[d];
  }
  return strides;
}

// Strides for `shape` with a contiguous last dimension and each other dimension's stride drawn
// from small values, zero included: broadcast and overlapping layouts of a read-only input.
std::vector<int64_t> loose_strides(const std::vector<int64_t>& shape, std::mt19937& rng) {
  std::vector<int64_t> strides(shape.size(), 1);
  std::uniform_int_distribution<int64_t> pick(0, 2 * shape.back());
  for (size_t d = 0; d + 1 < shape.size(); ++d) strides[d] = pick(rng);
  return strides;
}

uintptr_t near_address(int64_t spread_elements, size_t element_bytes, std::mt19937& rng) {
  std::uniform_int_distribution<int64_t> offset(0, spread_elements);
  return kNearBase + offset(rng) * element_bytes;
}

// `other` (a DecodeCall input) and out are laid out at random near each other; the library must
// refuse the call exactly when some run of one meets a run of the other.
struct RandomPlacement {
  const char* other_name;
  FakeTensor DecodeCall::*other;
  size_t other_element_bytes;
  bool out_moves;          // out lands at random past the other's start, or the other past out's
  int64_t spread_elements;  // how far, in elements of the tensor that moves
  bool other_may_be_loose;  // every second case gives the other overlapping strides
  bool expect_interleaved;  // whether the other's runs are small enough to fall between out's
  uint64_t seed;
};

void check_random_placements(const RandomPlacement& rp) {
  std::mt19937 rng(static_cast<std::mt19937::result_type>(rp.seed));
  int refused = 0, interleaved = 0;
  for (int i = 0; i < kRandomCases; ++i) {
    DecodeCall call;
    FakeTensor& other = call.*rp.other;
    call.out.strides = nested_strides(call.out.shape, rng);
    other.strides = rp.other_may_be_loose && i % 2 ? loose_strides(other.shape, rng) : nested_strides(other.shape, rng);
    other.t.data = reinterpret_cast<void*>(near_address(rp.out_moves ? 0 : rp.spread_elements, rp.other_element_bytes, rng));
    call.out.t.data = reinterpret_cast<void*>(near_address(rp.out_moves ? rp.spread_elements : 0, 2, rng));
    call.build();
    const std::vector<Interval> out_runs = runs_of(call.out, 2), other_runs = runs_of(other, rp.other_element_bytes);
    const bool meets = any_run_meets(out_runs, other_runs);
    const Interval a = span_of(out_runs), b = span_of(other_runs);
    interleaved += !meets && a.begin < b.end && b.begin < a.end;
    const Verdict v = run_on_missing_device(call);
    SCOPED_TRACE("case " + std::to_string(i) + ": " + v.message);
    if (meets) {
      ++refused;
      expect_refused(v, std::string("out: shares memory with ") + rp.other_name);
    } else {
      expect_reached_device_check(v);
    }
  }
  // Both verdicts were exercised, and (for small tensors) so were layouts whose address ranges
  // meet while their elements do not, which a comparison of ranges alone would refuse.
  EXPECT_GT(refused, kRandomCases / 10);
  EXPECT_LT(refused, kRandomCases - kRandomCases / 10);
  if (rp.expect_interleaved) {
    EXPECT_GT(interleaved, kRandomCases / 20);
  }
}

TEST(MemoryOverlap, RandomLayoutsAgainstBlockTable) {
  // block_table has fewer runs than out, or is not nested: it is walked and out probed.
  check_random_placements({"block_table", &DecodeCall::table, 4, false, 4 * 16 * 1100, true, true, 20261208});
}

TEST(MemoryOverlap, RandomLayoutsAgainstKCache) {
  // k_cache has more runs than out: out is walked and k_cache probed.
  check_random_placements({"k_cache", &DecodeCall::k, 2, true, int64_t{10} * 64 * 2 * 576 * 2, false, false, 8122026});
}

// ---- get_metadata, host path, real buffers -------------------------------------------------------

TEST(MemoryOverlap, MetadataOutputsMustNotAliasTheLengths) {
  constexpr int64_t kBatch = 8, kParts = 4;
  std::vector<int32_t> buffer(1024, 100);
  int64_t s_shape[1] = {kBatch}, m_shape[2] = {kParts, FLASHMLA_METADATA_WORDS}, n_shape[1] = {kBatch + 1};
  DLTensor seqlens = host_int32_tensor(buffer.data(), 1, s_shape);
  DLTensor metadata = host_int32_tensor(buffer.data() + 64, 2, m_shape);
  DLTensor splits = host_int32_tensor(buffer.data() + 128, 1, n_shape);
  ASSERT_EQ(flashmla_get_metadata(&seqlens, &metadata, &splits, nullptr), FLASHMLA_STATUS_SUCCESS)
      << flashmla_get_last_error();

  // num_splits one entry into the lengths: the planner would read what it had just written.
  splits.data = buffer.data() + kBatch - 1;
  EXPECT_EQ(flashmla_get_metadata(&seqlens, &metadata, &splits, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(flashmla_get_last_error(),
               "num_splits: shares memory with cache_seqlens; an output must not overlap any other argument");
  splits.data = buffer.data() + kBatch;  // right after them
  EXPECT_EQ(flashmla_get_metadata(&seqlens, &metadata, &splits, nullptr), FLASHMLA_STATUS_SUCCESS)
      << flashmla_get_last_error();

  metadata.data = buffer.data() + kBatch + 4;  // over num_splits
  EXPECT_EQ(flashmla_get_metadata(&seqlens, &metadata, &splits, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(flashmla_get_last_error(),
               "num_splits: shares memory with tile_scheduler_metadata; an output must not overlap any other "
               "argument");
}

}  // namespace
