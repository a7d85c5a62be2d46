// Conversions between fp32 and the raw 16-bit storage of bf16/fp16 elements, for the plain CUDA
// kernels that address q, the cache and out as uint16_t.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

namespace flashmla {

template <typename T>
__device__ __forceinline__ float to_float(uint16_t bits);
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(uint16_t bits) {
  return __bfloat162float(__ushort_as_bfloat16(bits));
}
template <>
__device__ __forceinline__ float to_float<__half>(uint16_t bits) {
  return __half2float(__ushort_as_half(bits));
}

template <typename T>
__device__ __forceinline__ uint16_t from_float(float x);
template <>
__device__ __forceinline__ uint16_t from_float<__nv_bfloat16>(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}
template <>
__device__ __forceinline__ uint16_t from_float<__half>(float x) {
  return __half_as_ushort(__float2half_rn(x));
}

}  // namespace flashmla
