// The main kernel's phase stamps (kernels/common/phase_trace.cuh): compiled in only for a build
// with FLASHMLA_PHASE_TRACE; this header belongs to the one translation unit of the kernel.
#pragma once

#include "kernels/common/phase_trace.cuh"

namespace flashmla::sm90 {

#ifdef FLASHMLA_PHASE_TRACE
__device__ trace::Stamp g_main_stamps[trace::kMaxCtas * trace::kMainPhases];
#endif

__device__ __forceinline__ void stamp(trace::MainPhase phase) {
#ifdef FLASHMLA_PHASE_TRACE
  trace::record(g_main_stamps, trace::kMainPhases, phase);
#else
  (void)phase;
#endif
}

}  // namespace flashmla::sm90
