// Argument checks on DLTensors at the C boundary. Each check names the argument in its message,
// e.g. "block_table: expected int32, got float16", and returns the status to hand back.
#pragma once

#include <cstdint>
#include <string>

#include <dlpack/dlpack.h>

#include "api/errors.h"

// Returns from the enclosing function when a check fails.
#define FLASHMLA_TRY(expr)                                      \
  do {                                                          \
    const flashmla_status_t flashmla_try_status_ = (expr);      \
    if (flashmla_try_status_ != FLASHMLA_STATUS_SUCCESS) return flashmla_try_status_; \
  } while (0)

namespace flashmla {

namespace dtypes {
constexpr DLDataType kBFloat16{kDLBfloat, 16, 1};
constexpr DLDataType kFloat16{kDLFloat, 16, 1};
constexpr DLDataType kFloat32{kDLFloat, 32, 1};
constexpr DLDataType kInt32{kDLInt, 32, 1};
}  // namespace dtypes

inline bool same_dtype(DLDataType a, DLDataType b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

// "bfloat16", "float32", "int32", "uint8x4", ...
std::string dtype_name(DLDataType dtype);

// Stride of `dim` in elements; compact row-major when the tensor has no strides.
int64_t stride_of(const DLTensor& t, int dim);

// data + byte_offset.
inline const char* base_address(const DLTensor& t) {
  return static_cast<const char*>(t.data) + t.byte_offset;
}

// Structural sanity every tensor argument must have: not NULL, a sane rank, non-negative sizes and
// strides, a contiguous innermost dimension, an element-aligned non-NULL data pointer whenever it
// holds elements, and addressable extents that do not overflow 64 bits.
flashmla_status_t check_tensor(const char* name, const DLTensor* t);

// "q: expected 4 dimensions [b, s_q, h_q, head_dim], got 3"
flashmla_status_t check_ndim(const char* name, const DLTensor& t, int ndim, const char* layout);

flashmla_status_t check_dtype(const char* name, const DLTensor& t, DLDataType expected);

// "k_cache: dimension 3 (head_dim) must be 576, got 512"
flashmla_status_t check_dim(const char* name, const DLTensor& t, int dim, const char* dim_name,
                            int64_t expected);

// Size of `dim` must lie in [lo, hi].
flashmla_status_t check_dim_range(const char* name, const DLTensor& t, int dim,
                                  const char* dim_name, int64_t lo, int64_t hi);

// Rows of a 2-D tensor must be packed back to back (row stride == row length).
flashmla_status_t check_compact_rows(const char* name, const DLTensor& t);

// Every tensor of a call lives on the same device as `ref`.
flashmla_status_t check_same_device(const char* name, const DLTensor& t, const char* ref_name,
                                    const DLTensor& ref);

// `t` is on a CUDA device that exists.
flashmla_status_t check_cuda_device(const char* name, const DLTensor& t);

}  // namespace flashmla
