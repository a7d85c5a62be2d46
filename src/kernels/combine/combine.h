// Split-KV merge: for every request with more than one piece, merges the fp32 partials in slot
// order into out and lse. Requests with one piece are left alone (their visit wrote out/lse).
#pragma once

#include <cuda_runtime_api.h>

#include "api/decode_params.h"
#include "kernels/common/phase_trace.cuh"

namespace flashmla {

// `programmatic_dependent_launch`: launch with the PDL attribute so the combine's prologue
// overlaps the tail of a main kernel that triggers it (sm_90 only).
cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream,
                        bool programmatic_dependent_launch);

#ifdef FLASHMLA_PHASE_TRACE
// Copies the combine's stamps (trace::kMaxCtas x trace::kCombinePhases) to the host and clears
// them; synchronous.
cudaError_t combine_take_phase_trace(trace::Stamp* host_stamps);
#endif

}  // namespace flashmla
