// The Hopper (sm_90a) decode kernel: TMA + wgmma, persistent CTAs driven by the split-KV plan.
#pragma once

#include <cuda_runtime_api.h>

#include "api/decode_params.h"
#include "kernels/common/phase_trace.cuh"

namespace flashmla {

// Whether the SM90 kernel was compiled into this library.
bool sm90_kernel_available();

// Empty when the SM90 kernel can run `params`; otherwise why not (e.g. TMA alignment).
const char* sm90_unsupported_reason(const DecodeParams& params);

// Enqueues the main kernel; the caller runs the combine kernel afterwards (with PDL).
cudaError_t run_sm90_decode(const DecodeParams& params, cudaStream_t stream);

#ifdef FLASHMLA_PHASE_TRACE
// Copies the main kernel's stamps (trace::kMaxCtas x trace::kMainPhases) to the host and clears
// them; synchronous.
cudaError_t sm90_take_phase_trace(trace::Stamp* host_stamps);
#endif

}  // namespace flashmla
