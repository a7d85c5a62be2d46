// Per-phase timestamps of one decode, compiled in only with -DFLASHMLA_PHASE_TRACE=ON.
//
// A small decode (b = 1, a few µs of work) costs ~12 µs more than its tiles, and no profiler
// here can split that: Nsight Compute serialises the main kernel and the combine and flushes
// caches between them. So a trace build has each CTA stamp the moments that bound the suspected
// parts (launch, dependency waits, the plan and Q reads, the first K tile, the stores) with both
// clocks: %globaltimer (ns, one clock for every SM, so stamps of different CTAs and of the two
// kernels compare) and clock64 (cycles of the CTA's own SM, exact within a CTA). The library
// keeps one table per kernel; flashmla_bench --trace reads them after each traced replay.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(FLASHMLA_PHASE_TRACE) && defined(__CUDACC__)
#include <cuda_runtime.h>
#endif

namespace flashmla::trace {

// Stamps of the main kernel, per CTA.
enum MainPhase : int {
  kMainEntry = 0,          // thread 0, first instruction
  kMainPriorGridsDone,     // thread 0, after griddepcontrol.wait
  kMainFirstKIssued,       // producer, after the TMAs of the part's first K tile are issued
  kMainQLanded,            // softmax warpgroup, after the first visit's Q arrived
  kMainFirstScores,        // softmax warpgroup, after the first QK^T (the first K tile arrived)
  kMainLoopDone,           // softmax warpgroup, after the last tile of the last visit
  kMainSoftmaxStored,      // softmax warpgroup, after the last visit's stores were issued
  kMainPvStored,           // P.V warpgroup, after the last visit's stores were issued
  kMainPhases
};

// Stamps of the combine kernel, per CTA.
enum CombinePhase : int {
  kCombineEntry = 0,         // thread 0, first instruction
  kCombinePriorGridsDone,    // thread 0, after cudaGridDependencySynchronize
  kCombineFirstBatchLoaded,  // thread 0, the first row's first batch of pieces loaded (its maximum taken)
  kCombineSummed,            // thread 0, the first row's weighted sum complete (slot groups merged)
  kCombineExit,              // thread 0, on return (early for requests without splits)
  kCombinePhases
};

// CTAs past this linear index are not traced (the latency shapes stay far below it).
constexpr int kMaxCtas = 2048;

struct Stamp {
  unsigned long long global_ns;  // 0: the phase was not reached
  long long cycles;
};

#if defined(FLASHMLA_PHASE_TRACE) && defined(__CUDACC__)
// Copies a kernel's stamp table to the host and clears it (synchronous).
template <size_t N>
inline cudaError_t take_table(const Stamp (&table)[N], Stamp* host_stamps) {
  cudaError_t err = cudaMemcpyFromSymbol(host_stamps, table, sizeof(table));
  if (err != cudaSuccess) return err;
  void* device_table = nullptr;
  err = cudaGetSymbolAddress(&device_table, table);
  return err == cudaSuccess ? cudaMemset(device_table, 0, sizeof(table)) : err;
}

__device__ __forceinline__ void record(Stamp* table, int phases, int phase) {
  const unsigned cta = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  if (cta >= static_cast<unsigned>(kMaxCtas)) return;
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  table[cta * phases + phase] = Stamp{ns, clock64()};
}
#endif

}  // namespace flashmla::trace
