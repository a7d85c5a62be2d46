// Whether the tensors of a call share memory. A kernel that writes a buffer another argument also
// names reads back its own writes (a block id rewritten mid-launch can send the TMA out of bounds),
// and an output with two indices on one element is written by two threads at once. Both are
// refused at the boundary, naming the tensors.
#pragma once

#include <cstddef>
#include <cstdint>

#include <dlpack/dlpack.h>

#include "api/errors.h"

namespace flashmla {

// check_tensor's bound on ranks.
constexpr int kMaxOverlapRank = 8;

// The bytes one argument covers, worked out once per call: element 0 at `base`, then the
// dimensions that have more than one index, with strides in bytes, finest stride first. Addresses
// are unsigned 64-bit: a validated tensor's reach in bytes fits (check_tensor bounds it by 2^63 / 16
// elements, and elements here are at most 4 bytes).
struct Footprint {
  uint64_t base = 0;
  uint64_t end = 0;  // one past the last byte reached
  uint64_t element_bytes = 1;
  bool empty = false;
  int ndim = 0;
  uint64_t size[kMaxOverlapRank];
  uint64_t stride[kMaxOverlapRank];

  // Of a tensor that passed check_tensor.
  explicit Footprint(const DLTensor& t);
  // Of a caller's buffer (the decode workspace).
  Footprint(const void* buffer, size_t bytes);
};

// An output's indices must reach distinct elements: no zero stride across a dimension with more
// than one index, no dimension that steps inside another's reach.
flashmla_status_t check_no_self_overlap(const char* name, const DLTensor& t, const Footprint& f);

// The output `written` (through check_no_self_overlap, or a plain buffer) shares no byte with
// `other`. Exact whenever both layouts can be walked cheaply; a layout too large to walk whose
// address range meets the output's is refused as possibly overlapping.
flashmla_status_t check_disjoint(const char* written_name, const Footprint& written, const char* other_name,
                                 const Footprint& other);

}  // namespace flashmla
