// See phase_trace_report.h.
#include "phase_trace_report.h"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "api/phase_trace.h"

namespace flashmla_bench {
namespace {

namespace trace = flashmla::trace;

constexpr double kNsPerUs = 1000.0;

const char* const kMainNames[trace::kMainPhases] = {
    "entry", "prior_grids_done", "first_k_issued", "q_landed", "first_scores", "loop_done", "softmax_stored",
    "pv_stored"};
const char* const kCombineNames[trace::kCombinePhases] = {"entry", "prior_grids_done", "first_batch_loaded",
                                                          "summed", "exit"};

double median(std::vector<double> v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One phase of one run: first and last CTA (µs after t0), the median CTA's cycles since its entry.
struct PhaseStats {
  double first_us = std::numeric_limits<double>::quiet_NaN();
  double last_us = std::numeric_limits<double>::quiet_NaN();
  double cycles = std::numeric_limits<double>::quiet_NaN();
  int ctas = 0;
};

PhaseStats phase_stats(const std::vector<trace::Stamp>& table, int phases, int phase, unsigned long long t0,
                       int entry_phase) {
  PhaseStats s;
  std::vector<double> cycles;
  unsigned long long lo = std::numeric_limits<unsigned long long>::max(), hi = 0;
  for (int cta = 0; cta < trace::kMaxCtas; ++cta) {
    const trace::Stamp& st = table[static_cast<size_t>(cta) * phases + phase];
    if (st.global_ns == 0) continue;
    ++s.ctas;
    lo = std::min(lo, st.global_ns);
    hi = std::max(hi, st.global_ns);
    const trace::Stamp& entry = table[static_cast<size_t>(cta) * phases + entry_phase];
    if (entry.global_ns != 0) cycles.push_back(static_cast<double>(st.cycles - entry.cycles));
  }
  if (s.ctas == 0) return s;
  s.first_us = (static_cast<double>(lo) - static_cast<double>(t0)) / kNsPerUs;
  s.last_us = (static_cast<double>(hi) - static_cast<double>(t0)) / kNsPerUs;
  s.cycles = median(cycles);
  return s;
}

// The smallest non-zero gap between stamps of one run: the timer's effective resolution.
double timer_step_ns(const std::vector<trace::Stamp>& a, const std::vector<trace::Stamp>& b) {
  std::vector<unsigned long long> ns;
  for (const auto* table : {&a, &b}) {
    for (const trace::Stamp& st : *table) {
      if (st.global_ns != 0) ns.push_back(st.global_ns);
    }
  }
  std::sort(ns.begin(), ns.end());
  unsigned long long step = std::numeric_limits<unsigned long long>::max();
  for (size_t i = 1; i < ns.size(); ++i) {
    if (ns[i] != ns[i - 1]) step = std::min(step, ns[i] - ns[i - 1]);
  }
  return step == std::numeric_limits<unsigned long long>::max() ? std::numeric_limits<double>::quiet_NaN()
                                                                 : static_cast<double>(step);
}

void take(std::vector<trace::Stamp>& main_stamps, std::vector<trace::Stamp>& combine_stamps) {
  if (flashmla_take_phase_trace(main_stamps.data(), combine_stamps.data()) != FLASHMLA_STATUS_SUCCESS) {
    throw std::runtime_error(std::string("flashmla_take_phase_trace failed: ") + flashmla_get_last_error());
  }
}

void print_phase(const char* kernel, const char* name, const std::vector<std::vector<PhaseStats>>& runs,
                 int phase) {
  std::vector<double> first, last, cycles, ctas;
  for (const auto& run : runs) {
    if (run[static_cast<size_t>(phase)].ctas == 0) continue;
    first.push_back(run[static_cast<size_t>(phase)].first_us);
    last.push_back(run[static_cast<size_t>(phase)].last_us);
    cycles.push_back(run[static_cast<size_t>(phase)].cycles);
    ctas.push_back(run[static_cast<size_t>(phase)].ctas);
  }
  std::printf("trace  %-8s %-17s %9.2f %9.2f %9.0f %6.0f\n", kernel, name, median(first), median(last),
              median(cycles), median(ctas));
}

}  // namespace

void report_phase_trace(int runs, const std::function<double()>& replay) {
  const size_t main_size = static_cast<size_t>(trace::kMaxCtas) * trace::kMainPhases;
  const size_t combine_size = static_cast<size_t>(trace::kMaxCtas) * trace::kCombinePhases;
  std::vector<trace::Stamp> main_stamps(main_size), combine_stamps(combine_size);
  take(main_stamps, combine_stamps);  // whatever earlier replays left

  std::vector<std::vector<PhaseStats>> main_runs, combine_runs;
  std::vector<double> event_us, outside_us, steps;
  for (int r = 0; r < runs; ++r) {
    const double us = replay();
    take(main_stamps, combine_stamps);
    unsigned long long t0 = std::numeric_limits<unsigned long long>::max();
    for (int cta = 0; cta < trace::kMaxCtas; ++cta) {
      const unsigned long long ns = main_stamps[static_cast<size_t>(cta) * trace::kMainPhases].global_ns;
      if (ns != 0) t0 = std::min(t0, ns);
    }
    if (t0 == std::numeric_limits<unsigned long long>::max()) throw std::runtime_error("--trace: no main-kernel stamps");
    std::vector<PhaseStats> m, c;
    for (int p = 0; p < trace::kMainPhases; ++p) {
      m.push_back(phase_stats(main_stamps, trace::kMainPhases, p, t0, trace::kMainEntry));
    }
    for (int p = 0; p < trace::kCombinePhases; ++p) {
      c.push_back(phase_stats(combine_stamps, trace::kCombinePhases, p, t0, trace::kCombineEntry));
    }
    event_us.push_back(us);
    if (c[trace::kCombineExit].ctas > 0) outside_us.push_back(us - c[trace::kCombineExit].last_us);
    steps.push_back(timer_step_ns(main_stamps, combine_stamps));
    main_runs.push_back(std::move(m));
    combine_runs.push_back(std::move(c));
  }

  std::printf("trace  median of %d traced replays; first/last: the first and the last CTA to reach the phase, µs "
              "after the first main-kernel CTA started; cycles: the median CTA's cycles since its own entry\n",
              runs);
  std::printf("trace  %-8s %-17s %9s %9s %9s %6s\n", "kernel", "phase", "first_us", "last_us", "cycles", "ctas");
  for (int p = 0; p < trace::kMainPhases; ++p) print_phase("main", kMainNames[p], main_runs, p);
  for (int p = 0; p < trace::kCombinePhases; ++p) print_phase("combine", kCombineNames[p], combine_runs, p);
  std::printf("trace  event-timed replay %.2f us; outside both kernels (event time - last combine exit) %.2f us; "
              "globaltimer step %.0f ns\n",
              median(event_us), median(outside_us), median(steps));
}

}  // namespace flashmla_bench
