// flashmla_bench --floor: what the timing method costs with (almost) no work. Graphs of near-empty
// kernels in the decode's launch shape, timed exactly like a decode (L2 flush, events around one
// replay), bound from below what any small decode can measure, and split that bound into a
// launch, a second programmatically dependent kernel (the combine's place) and dependent reads
// from DRAM (the plan, lengths and block-table reads before the first K load).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace flashmla_bench {

enum class FloorCase : int {
  kEmptyKernel = 0,      // one empty kernel
  kEmptyThenDependent,   // the empty kernel and a second one launched programmatically that waits for it
  kOneRead,              // one kernel whose CTAs each make one read from DRAM
  kThreeReads,           // ... three reads, each address taken from the previous read
  kCount
};

const char* floor_case_name(FloorCase c);

// The chain the read cases follow: `words` 32-bit entries, each the index of the next read.
size_t floor_chain_words();
cudaError_t fill_floor_chain(uint32_t* chain, cudaStream_t stream);

// Enqueues case `c` on `stream` (to be captured into a graph): grids of `sm_count` CTAs shaped
// like the decode kernel's (threads and shared memory), so that each takes an SM of its own.
// `sink` is one scratch word per CTA.
cudaError_t enqueue_floor_case(FloorCase c, int sm_count, const uint32_t* chain, uint32_t* sink,
                               cudaStream_t stream);

}  // namespace flashmla_bench
