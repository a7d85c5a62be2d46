#include "api/memory_overlap.h"

#include <algorithm>
#include <limits>
#include <string>
#include <utility>

#include "api/tensor_checks.h"

namespace flashmla {
namespace {

// Walking a layout visits one contiguous run per step; past this many runs the check would cost
// more host time than a decode call should, so a larger layout is judged by its address range.
constexpr int64_t kMaxRunsToWalk = int64_t{1} << 22;

uint64_t saturating_add(uint64_t a, uint64_t b) {
  return a > std::numeric_limits<uint64_t>::max() - b ? std::numeric_limits<uint64_t>::max() : a + b;
}

// One past the last byte the layout reaches.
uint64_t end_of(const Footprint& l) {
  uint64_t reach = l.element_bytes;
  for (int d = 0; d < l.ndim; ++d) reach = saturating_add(reach, (l.size[d] - 1) * l.stride[d]);
  return saturating_add(l.base, reach);
}

// Each dimension steps past all the finer ones reach, so distinct indices hold distinct bytes and
// the element starts increase with the index read most-significant-stride first.
bool is_nested(const Footprint& l) {
  uint64_t reach = l.element_bytes;
  for (int d = 0; d < l.ndim; ++d) {
    if (l.stride[d] < reach) return false;
    reach = saturating_add(reach, (l.size[d] - 1) * l.stride[d]);
  }
  return true;
}

// Whether a nested layout holds a byte of [lo, hi): its last element starting at or below hi - 1,
// found one dimension at a time from the coarsest (each step as large as it can be, which nesting
// makes the largest start overall), must end above lo.
bool nested_meets(const Footprint& l, uint64_t lo, uint64_t hi) {
  if (hi <= lo || hi - 1 < l.base) return false;
  uint64_t start = l.base;
  for (int d = l.ndim - 1; d >= 0; --d) {
    start += std::min(l.size[d] - 1, (hi - 1 - start) / l.stride[d]) * l.stride[d];
  }
  return start + l.element_bytes > lo;
}

// The contiguous runs a walk of `l` visits: the finest dimension whose stride is one element is
// read as a whole; dimensions of stride 0 repeat runs already visited and are skipped.
struct Runs {
  uint64_t bytes;            // length of each run
  int ndim = 0;              // dimensions stepped between runs, finest first
  uint64_t size[kMaxOverlapRank] = {};
  uint64_t stride[kMaxOverlapRank] = {};
  int64_t count = 1;         // kMaxRunsToWalk + 1 when there are more
};

Runs runs_of(const Footprint& l) {
  Runs runs;
  runs.bytes = l.element_bytes;
  bool finest = true;  // the first dimension that steps
  for (int d = 0; d < l.ndim; ++d) {
    if (l.stride[d] == 0) continue;
    const bool contiguous = finest && l.stride[d] == l.element_bytes;
    finest = false;
    if (contiguous) {
      runs.bytes = l.size[d] * l.element_bytes;
      continue;
    }
    runs.size[runs.ndim] = l.size[d];
    runs.stride[runs.ndim] = l.stride[d];
    ++runs.ndim;
    const int64_t size = static_cast<int64_t>(std::min<uint64_t>(l.size[d], kMaxRunsToWalk + 1));
    runs.count = runs.count > kMaxRunsToWalk / size ? kMaxRunsToWalk + 1 : runs.count * size;
  }
  return runs;
}

// Whether any run of `walked` holds a byte of the nested layout `probed`.
bool walk_meets(const Footprint& walked, const Runs& runs, const Footprint& probed) {
  uint64_t index[kMaxOverlapRank] = {};
  uint64_t at = walked.base;
  for (int64_t r = 0; r < runs.count; ++r) {
    if (nested_meets(probed, at, saturating_add(at, runs.bytes))) return true;
    for (int i = 0; i < runs.ndim; ++i) {  // the next index, finest dimension first
      if (++index[i] < runs.size[i]) {
        at += runs.stride[i];
        break;
      }
      at -= (runs.size[i] - 1) * runs.stride[i];
      index[i] = 0;
    }
  }
  return false;
}

std::string shape_and_strides(const DLTensor& t) {
  std::string shape = "[", strides = "[";
  for (int d = 0; d < t.ndim; ++d) {
    const char* sep = d + 1 < t.ndim ? ", " : "]";
    shape += std::to_string(t.shape[d]) + sep;
    strides += std::to_string(stride_of(t, d)) + sep;
  }
  return "shape " + shape + ", strides " + strides;
}

}  // namespace

Footprint::Footprint(const DLTensor& t) {
  base = reinterpret_cast<uintptr_t>(base_address(t));
  element_bytes = t.dtype.bits / 8;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] == 0) empty = true;
    if (t.shape[d] <= 1) continue;
    size[ndim] = static_cast<uint64_t>(t.shape[d]);
    stride[ndim] = static_cast<uint64_t>(stride_of(t, d)) * element_bytes;
    ++ndim;
  }
  for (int i = 1; i < ndim; ++i) {  // insertion sort by stride: at most kMaxOverlapRank entries
    for (int j = i; j > 0 && stride[j] < stride[j - 1]; --j) {
      std::swap(stride[j], stride[j - 1]);
      std::swap(size[j], size[j - 1]);
    }
  }
  end = end_of(*this);
}

Footprint::Footprint(const void* buffer, size_t bytes) {
  base = reinterpret_cast<uintptr_t>(buffer);
  empty = bytes == 0;
  if (bytes > 1) {
    ndim = 1;
    size[0] = bytes;
    stride[0] = 1;
  }
  end = end_of(*this);
}

flashmla_status_t check_no_self_overlap(const char* name, const DLTensor& t, const Footprint& f) {
  if (f.empty || is_nested(f)) return FLASHMLA_STATUS_SUCCESS;
  return invalid_argument(std::string(name) + ": its strides give two indices the same memory (" +
                          shape_and_strides(t) + "); an output needs its own memory for every element");
}

flashmla_status_t check_disjoint(const char* written_name, const Footprint& written, const char* other_name,
                                 const Footprint& other) {
  if (written.empty || other.empty) return FLASHMLA_STATUS_SUCCESS;
  if (written.end <= other.base || other.end <= written.base) return FLASHMLA_STATUS_SUCCESS;
  // The address ranges meet: walk the layout with fewer runs against the other, which must be
  // nested to be probed.
  const Runs written_runs = runs_of(written), other_runs = runs_of(other);
  const bool walk_written = is_nested(other) && written_runs.count < other_runs.count;
  const Runs& runs = walk_written ? written_runs : other_runs;
  const std::string names = std::string(written_name) + ": shares memory with " + other_name;
  if (runs.count > kMaxRunsToWalk) {
    return invalid_argument(names + " (possibly: their address ranges meet, and the layouts are too "
                                    "large to compare); an output must not overlap any other argument");
  }
  const bool meets = walk_written ? walk_meets(written, runs, other) : walk_meets(other, runs, written);
  if (meets) return invalid_argument(names + "; an output must not overlap any other argument");
  return FLASHMLA_STATUS_SUCCESS;
}

}  // namespace flashmla
