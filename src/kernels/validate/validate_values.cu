// Validating mode's device checks (validate_values.h).
//
// Every element that can be wrong gets a 64-bit key that grows along the report order of
// ValueFaultReport: request r owns keys [r * K, (r + 1) * K) with K = max_blocks_per_seq + 1 (its
// length first, then block-table column c at key r * K + 1 + c), and the plan's words follow all
// requests. Threads that find a fault atomicMin its key into one word, so the host reads back the
// first fault whatever order the threads ran in, and then fetches that one element for the message.
// The plan is checked by recomputing it (the scheduler's own device kernel) from the lengths.
#include "kernels/validate/validate_values.h"

#include <algorithm>
#include <cstdint>
#include <string>

#include "scheduler/metadata.h"
#include "scheduler/scheduler.h"

namespace flashmla {
namespace {

constexpr int kThreads = 256;
// Enough CTAs to cover every SM of any current GPU several times; more requests are walked with a
// grid stride.
constexpr int64_t kMaxCtas = 2048;
constexpr unsigned long long kNoFault = ~0ull;
// Scratch layout: the fault key, then the recomputed metadata and num_splits, each aligned.
constexpr size_t kScratchAlignment = 256;

struct KeyLayout {
  int64_t per_request;     // keys per request: its length, then one per block-table column
  int64_t plan_base;       // the first key of the plan: batch * per_request
  int64_t metadata_words;  // num_sm_parts * FLASHMLA_METADATA_WORDS, then the b + 1 num_splits
};

KeyLayout key_layout(const DecodeParams& p) {
  KeyLayout layout;
  layout.per_request = static_cast<int64_t>(p.max_blocks_per_seq) + 1;
  layout.plan_base = static_cast<int64_t>(p.batch) * layout.per_request;
  layout.metadata_words = static_cast<int64_t>(p.num_sm_parts) * FLASHMLA_METADATA_WORDS;
  return layout;
}

size_t align_scratch(size_t bytes) {
  return (bytes + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment;
}

__device__ __forceinline__ void note_fault(unsigned long long* first_fault, int64_t key) {
  const auto k = static_cast<unsigned long long>(key);
  // The plain read skips the atomic once an earlier fault is known, so that a table full of
  // garbage does not serialise every thread on one address.
  if (k < *static_cast<volatile unsigned long long*>(first_fault)) atomicMin(first_fault, k);
}

__global__ void __launch_bounds__(kThreads)
check_values_kernel(const DecodeParams p, KeyLayout keys, const int32_t* plan_metadata,
                    const int32_t* plan_splits, unsigned long long* first_fault) {
  const int64_t capacity = static_cast<int64_t>(p.max_blocks_per_seq) * p.page_block_size;
  // One CTA per request: its length, then the block ids of the pages its tokens occupy. Entries
  // past those pages are never read by any kernel, so they may hold anything.
  for (int64_t req = blockIdx.x; req < p.batch; req += gridDim.x) {
    const int64_t key = req * keys.per_request;
    const int32_t length = p.seqlens[req];
    if (length < 0 || length > capacity) {
      if (threadIdx.x == 0) note_fault(first_fault, key);
      continue;
    }
    const int64_t used = (static_cast<int64_t>(length) + p.page_block_size - 1) / p.page_block_size;
    const int32_t* row = p.block_table + req * p.block_table_batch_stride;
    for (int64_t col = threadIdx.x; col < used; col += blockDim.x) {
      const int32_t block = row[col];
      if (block < 0 || block >= p.num_cache_blocks) note_fault(first_fault, key + 1 + col);
    }
  }
  // The plan, word by word against the recomputed one (metadata rows are compact, see decode.cpp).
  const int64_t plan_words = keys.metadata_words + p.batch + 1;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < plan_words;
       i += stride) {
    const bool same = i < keys.metadata_words
                          ? p.tile_metadata[i] == plan_metadata[i]
                          : p.num_splits[i - keys.metadata_words] == plan_splits[i - keys.metadata_words];
    if (!same) note_fault(first_fault, keys.plan_base + i);
  }
}

cudaError_t read_word(const int32_t* device_word, int32_t* host_word, cudaStream_t stream) {
  const cudaError_t error =
      cudaMemcpyAsync(host_word, device_word, sizeof(int32_t), cudaMemcpyDeviceToHost, stream);
  return error != cudaSuccess ? error : cudaStreamSynchronize(stream);
}

// Turns the first fault's key into the report, fetching the element (and the plan's value).
cudaError_t read_fault(const DecodeParams& p, const KeyLayout& keys, int64_t key,
                       const int32_t* plan_metadata, const int32_t* plan_splits,
                       cudaStream_t stream, ValueFaultReport* report) {
  if (key < keys.plan_base) {
    report->row = key / keys.per_request;
    const int64_t slot = key % keys.per_request;
    if (slot == 0) {
      const cudaError_t error = read_word(p.seqlens + report->row, &report->value, stream);
      report->fault = report->value < 0 ? ValueFault::kNegativeLength : ValueFault::kLengthBeyondRow;
      return error;
    }
    report->column = slot - 1;
    report->fault = ValueFault::kBlockOutOfRange;
    return read_word(p.block_table + report->row * p.block_table_batch_stride + report->column,
                     &report->value, stream);
  }
  const int64_t word = key - keys.plan_base;
  const int32_t* given = nullptr;
  const int32_t* expected = nullptr;
  if (word < keys.metadata_words) {
    report->fault = ValueFault::kMetadataMismatch;
    report->row = word / FLASHMLA_METADATA_WORDS;
    report->column = word % FLASHMLA_METADATA_WORDS;
    given = p.tile_metadata + word;
    expected = plan_metadata + word;
  } else {
    report->fault = ValueFault::kNumSplitsMismatch;
    report->row = word - keys.metadata_words;
    given = p.num_splits + report->row;
    expected = plan_splits + report->row;
  }
  const cudaError_t error = read_word(given, &report->value, stream);
  return error != cudaSuccess ? error : read_word(expected, &report->expected, stream);
}

}  // namespace

cudaError_t check_device_values(const DecodeParams& p, cudaStream_t stream,
                                 ValueFaultReport* report) {
  *report = ValueFaultReport{};
  const KeyLayout keys = key_layout(p);
  const size_t metadata_offset = align_scratch(sizeof(unsigned long long));
  const size_t splits_offset =
      metadata_offset + align_scratch(static_cast<size_t>(keys.metadata_words) * sizeof(int32_t));
  const size_t total = splits_offset + align_scratch((static_cast<size_t>(p.batch) + 1) * sizeof(int32_t));

  char* scratch = nullptr;
  cudaError_t error = cudaMallocAsync(reinterpret_cast<void**>(&scratch), total, stream);
  if (error != cudaSuccess) return error;
  auto* first_fault = reinterpret_cast<unsigned long long*>(scratch);
  auto* plan_metadata = reinterpret_cast<int32_t*>(scratch + metadata_offset);
  auto* plan_splits = reinterpret_cast<int32_t*>(scratch + splits_offset);

  unsigned long long key = kNoFault;
  error = cudaMemsetAsync(first_fault, 0xff, sizeof(unsigned long long), stream);
  if (error == cudaSuccess) {
    error = compute_metadata_device(p.seqlens, p.batch, p.num_sm_parts, plan_metadata, plan_splits,
                                    stream);
  }
  if (error == cudaSuccess) {
    const int64_t plan_ctas = (keys.metadata_words + p.batch + 1 + kThreads - 1) / kThreads;
    const int64_t ctas = std::clamp<int64_t>(std::max<int64_t>(p.batch, plan_ctas), 1, kMaxCtas);
    check_values_kernel<<<static_cast<unsigned>(ctas), kThreads, 0, stream>>>(
        p, keys, plan_metadata, plan_splits, first_fault);
    error = cudaGetLastError();
  }
  if (error == cudaSuccess) {
    error = cudaMemcpyAsync(&key, first_fault, sizeof(key), cudaMemcpyDeviceToHost, stream);
  }
  if (error == cudaSuccess) error = cudaStreamSynchronize(stream);
  if (error == cudaSuccess && key != kNoFault) {
    error = read_fault(p, keys, static_cast<int64_t>(key), plan_metadata, plan_splits, stream, report);
  }
  const cudaError_t free_error = cudaFreeAsync(scratch, stream);
  return error != cudaSuccess ? error : free_error;
}

std::string describe_value_fault(const DecodeParams& p, const ValueFaultReport& r) {
  const std::string row = std::to_string(r.row);
  const std::string value = std::to_string(r.value);
  const std::string stale_plan =
      ": it is not the plan of these cache_seqlens; call flashmla_get_metadata again whenever "
      "the lengths change";
  switch (r.fault) {
    case ValueFault::kNone:
      return "";
    case ValueFault::kNegativeLength:
      return "cache_seqlens[" + row + "] = " + value + " is negative";
    case ValueFault::kLengthBeyondRow:
      return "cache_seqlens[" + row + "] = " + value + " does not fit its block_table row: " +
             std::to_string(p.max_blocks_per_seq) + " blocks of " +
             std::to_string(p.page_block_size) + " tokens hold " +
             std::to_string(static_cast<int64_t>(p.max_blocks_per_seq) * p.page_block_size);
    case ValueFault::kBlockOutOfRange:
      return "block_table[" + row + "][" + std::to_string(r.column) + "] = " + value +
             " is outside k_cache's " + std::to_string(p.num_cache_blocks) + " blocks";
    case ValueFault::kMetadataMismatch:
      return "tile_scheduler_metadata[" + row + "][" + std::to_string(r.column) + "] = " + value +
             ", expected " + std::to_string(r.expected) + stale_plan;
    case ValueFault::kNumSplitsMismatch:
      return "num_splits[" + row + "] = " + value + ", expected " + std::to_string(r.expected) +
             stale_plan;
  }
  return "unknown fault";
}

}  // namespace flashmla
