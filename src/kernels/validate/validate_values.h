// Validating mode (flashmla_decode_args.validate): the checks of the values that live on the device
// and that the fast path trusts: sequence lengths, the block ids a request uses, and the split-KV
// plan. They run on the GPU before any kernel that reads the cache, and the verdict is read back
// to the host, so the check synchronises the stream.
#pragma once

#include <cstdint>
#include <string>

#include <cuda_runtime_api.h>

#include "api/decode_params.h"

namespace flashmla {

enum class ValueFault : int {
  kNone = 0,
  kNegativeLength,    // cache_seqlens[row] < 0
  kLengthBeyondRow,   // cache_seqlens[row] > max_blocks_per_seq * page_block_size
  kBlockOutOfRange,   // block_table[row][column] outside [0, num_cache_blocks)
  kMetadataMismatch,  // tile_scheduler_metadata[row][column] is not the plan of the lengths
  kNumSplitsMismatch  // num_splits[row] is not the plan of the lengths
};

// The first faulty element in a fixed order: requests in order (for each, its length, then its
// block-table entries left to right), then the metadata row by row, then num_splits.
struct ValueFaultReport {
  ValueFault fault = ValueFault::kNone;
  int64_t row = 0;
  int64_t column = 0;
  int32_t value = 0;     // the element as found
  int32_t expected = 0;  // the plan's value (plan mismatches only)
};

// Enqueues the checks of `params` on `stream` (the current device must be params.device), waits
// for them and fills `report`. Scratch memory is allocated and freed stream-ordered. Must not be
// called while `stream` is being captured.
cudaError_t check_device_values(const DecodeParams& params, cudaStream_t stream,
                                ValueFaultReport* report);

// The message for a fault, naming the element: "block_table[3][17] = 99999 is outside k_cache's
// 4096 blocks".
std::string describe_value_fault(const DecodeParams& params, const ValueFaultReport& report);

}  // namespace flashmla
