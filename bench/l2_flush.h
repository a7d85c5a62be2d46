// Clearing L2 between timed runs. `write` (the default) memsets a buffer of twice the L2 size:
// nothing of the previous run survives, but L2 is left full of dirty lines that the timed run
// then writes back. `read` streams through such a buffer instead, so L2 holds only clean lines
// and the timed run pays for its own traffic alone. `none` skips the clearing: a diagnostic that
// shows how much of a short run is spent refetching what the flush evicted.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace flashmla_bench {

enum class FlushMode { kWrite, kRead, kNone };

// Reads every 16-byte chunk of [buffer, buffer + bytes) on `stream`. `sink` is a scratch word of
// device memory, stored to only when the data's checksum hits one arbitrary value.
cudaError_t read_through(const void* buffer, size_t bytes, uint32_t* sink, cudaStream_t stream);

}  // namespace flashmla_bench
