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

// An output's indices must reach distinct elements: no zero stride across a dimension with more
// than one index, no dimension that steps inside another's reach. Expects a tensor that passed
// check_tensor.
flashmla_status_t check_no_self_overlap(const char* name, const DLTensor& t);

// The tensor `written` (an output, already through check_no_self_overlap) shares no byte with
// `other`. Exact whenever both layouts can be walked cheaply; a layout too large to walk whose
// address range meets the output's is refused as possibly overlapping.
flashmla_status_t check_disjoint(const char* written_name, const DLTensor& written,
                                 const char* other_name, const DLTensor& other);

// As above, for a caller's buffer of `bytes` bytes (the decode workspace) as the output.
flashmla_status_t check_disjoint(const char* written_name, const void* buffer, size_t bytes,
                                 const char* other_name, const DLTensor& other);

}  // namespace flashmla
