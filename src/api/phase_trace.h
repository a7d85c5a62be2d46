// Reading the per-phase stamps of a trace build (kernels/common/phase_trace.cuh). Not part of the
// public API: the library exports it only when configured with -DFLASHMLA_PHASE_TRACE=ON, for
// flashmla_bench --trace.
#pragma once

#include "flashmla/flashmla.h"
#include "kernels/common/phase_trace.cuh"

// Copies the stamps the main kernel (trace::kMaxCtas x trace::kMainPhases) and the combine
// (trace::kMaxCtas x trace::kCombinePhases) wrote since the last call, then clears both tables.
// Synchronous with respect to the device; run it after the traced decode has finished.
extern "C" FLASHMLA_API flashmla_status_t flashmla_take_phase_trace(flashmla::trace::Stamp* main_stamps,
                                                                    flashmla::trace::Stamp* combine_stamps);
