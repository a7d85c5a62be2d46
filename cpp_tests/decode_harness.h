// Building, running and checking decode problems on the GPU through the public C API, for the
// reliability tests (fuzzing, validating mode, concurrency, determinism). A problem is generated on
// the host (random data, NaN in every cache row no request owns, a randomly permuted block table),
// uploaded once with an optional padded layout, and then run any number of times by a
// DecodeRunner, which owns the per-run buffers (plan, out, lse, workspace) and poisons the outputs
// with NaN before each run.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cpu_reference.h"
#include "cuda_test_support.h"
#include "dl_tensor_utils.h"
#include "flashmla/flashmla.h"

namespace flashmla_test {

// Padding, in elements, that turns compact layouts into strided ones (inner dims stay contiguous).
struct Padding {
  int q_head = 0;      // after each q head
  int k_token = 0;     // after each cache token row (all heads of the token)
  int table_row = 0;   // after each block-table row
  int out_head = 0;    // after each out head
};

struct ProblemSpec {
  HalfType dtype = HalfType::kBFloat16;
  int s_q = 1;
  int h_q = 16;
  int h_kv = 1;
  int page = 64;
  std::vector<int32_t> lengths;  // one per request
  int extra_table_columns = 1;   // block-table columns beyond the longest request's pages
  int spare_blocks = 3;          // cache blocks no request owns (poisoned with NaN)
  bool junk_in_unused_entries = false;  // unused table entries hold wild ids instead of a spare
  bool causal = false;
  float softmax_scale = 0.0f;  // 0: the library default
  Padding padding;
  uint64_t seed = 1;

  int batch() const { return static_cast<int>(lengths.size()); }
};

// Host copy of a problem: compact arrays, the cache poisoned outside the rows requests own.
struct HostProblem {
  ProblemSpec spec;
  int max_blocks_per_seq = 0;
  int64_t num_blocks = 0;
  std::vector<int32_t> block_table;  // [batch, max_blocks_per_seq]
  std::vector<uint16_t> q;           // [batch, s_q, h_q, 576]
  std::vector<uint16_t> k_cache;     // [num_blocks, page, h_kv, 576]

  DecodeProblem as_reference() const;
};

HostProblem make_host_problem(const ProblemSpec& spec);

// Random lengths in [0, max_length], some of them 0 when `with_empty`.
std::vector<int32_t> random_lengths(std::mt19937_64& rng, int batch, int max_length, bool with_empty);

// A problem's inputs in device memory, in the spec's (possibly padded) layout.
class DeviceProblem {
 public:
  explicit DeviceProblem(const HostProblem& host);
  // False when an allocation or an upload failed (the test should stop).
  bool ok() const { return ok_; }

  const HostProblem& host() const { return host_; }
  DLDataType dtype() const;
  int device() const { return device_; }

  // Descriptors of the inputs (fresh each call, so callers may edit them).
  TensorDesc q() const;
  TensorDesc k_cache() const;
  TensorDesc block_table() const;
  TensorDesc seqlens() const;

  int32_t* block_table_data() const { return static_cast<int32_t*>(table_.get()); }
  int32_t* seqlens_data() const { return static_cast<int32_t*>(seqlens_.get()); }
  int64_t table_row_stride() const { return host_.max_blocks_per_seq + host_.spec.padding.table_row; }

 private:
  const HostProblem& host_;
  int device_ = 0;
  bool ok_ = false;
  DeviceMemory q_, k_, table_, seqlens_;
};

struct RunOptions {
  flashmla_backend_t backend = FLASHMLA_BACKEND_AUTO;
  int32_t validate = 0;
  bool library_workspace = false;  // pass no workspace: the library allocates it stream-ordered
  bool host_metadata = false;      // plan on the host path (kDLCPU tensors), then copied up
  int64_t num_sm_parts = 0;        // 0: flashmla_get_num_sm_parts
  cudaStream_t stream = nullptr;   // the legacy default stream unless set
};

// What a run produced, in compact layouts, as raw bits.
struct DecodeOutput {
  std::vector<uint16_t> out;  // [batch, s_q, h_q, 512]
  std::vector<float> lse;     // [batch, h_q, s_q]
};

// The NaN bit patterns the runner poisons outputs with.
constexpr uint16_t kPoisonHalfBits = 0xffff;
constexpr int kPoisonByte = 0xff;

class DecodeRunner {
 public:
  DecodeRunner(const DeviceProblem& problem, RunOptions options);
  // args() points into the runner: it stays where it was made.
  DecodeRunner(const DecodeRunner&) = delete;
  DecodeRunner& operator=(const DecodeRunner&) = delete;

  // Computes the plan (host or device path) into the runner's buffers, allocating them and
  // building the arguments on the first call.
  ::testing::AssertionResult plan();

  // The arguments of the next decode (built by the first plan()); tests may edit them.
  flashmla_decode_args& args() { return args_; }
  int32_t* metadata_data() const { return static_cast<int32_t*>(metadata_.get()); }
  int32_t* num_splits_data() const { return static_cast<int32_t*>(splits_.get()); }
  int64_t num_sm_parts() const { return num_sm_parts_; }

  // Poisons out, lse and the workspace with NaN on the stream, then calls flashmla_decode. The
  // message of a failure is in last_message().
  flashmla_status_t decode();
  const std::string& last_message() const { return message_; }

  // Waits for the stream and copies out and lse back.
  ::testing::AssertionResult download(DecodeOutput* output);

 private:
  ::testing::AssertionResult allocate();

  const DeviceProblem& problem_;
  RunOptions options_;
  bool allocated_ = false;
  int64_t num_sm_parts_ = 0;
  DeviceMemory metadata_, splits_, out_, lse_, workspace_;
  TensorDesc q_, k_, table_, seqlens_, metadata_t_, splits_t_, out_t_, lse_t_;
  flashmla_decode_args args_{};
  std::string message_;
};

// plan() + decode() + download() with a successful decode expected.
::testing::AssertionResult run_decode(const DeviceProblem& problem, const RunOptions& options,
                                      DecodeOutput* output);

// The output against the fp64 CPU model, with the tolerances of the decode tests.
::testing::AssertionResult matches_reference(const HostProblem& host, const DecodeOutput& output);

// Same bits in out and lse.
::testing::AssertionResult bitwise_equal(const DecodeOutput& a, const DecodeOutput& b);

// Every element still holds the runner's poison: nothing was written.
bool still_poisoned(const DecodeOutput& output);

}  // namespace flashmla_test
