// flashmla_bench --trace: where the time of one decode goes, from the stamps a trace build of the
// library writes (kernels/common/phase_trace.cuh). Only compiled with -DFLASHMLA_PHASE_TRACE=ON.
#pragma once

#include <functional>

namespace flashmla_bench {

// Calls `replay` (one L2-flushed, event-timed decode; returns its event time in µs) `runs` times,
// reads the library's stamp tables after each, and prints the median over runs of every phase:
// the first and the last CTA to reach it (µs after the first main-kernel CTA started) and the
// median CTA's cycles since its own start.
void report_phase_trace(int runs, const std::function<double()>& replay);

}  // namespace flashmla_bench
