// End of a visit: each consumer normalises its 64 x 256 half of O and writes it, straight to
// out (bf16/fp16, any strides) when the request has one piece, else as an fp32 partial to the
// visit's workspace slot; consumer 0 also writes the rows' lse. Padding rows of the last query
// tile (packed row >= q_rows_per_kv_head) are never stored.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "api/decode_params.h"
#include "kernels/sm90/sm90_kernel_traits.h"
#include "kernels/sm90/sm90_softmax.h"
#include "kernels/sm90/sm90_tile_scheduler.h"

namespace flashmla::sm90 {

template <class Element>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi);

template <>
__device__ __forceinline__ uint32_t pack_pair<cutlass::bfloat16_t>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

template <>
__device__ __forceinline__ uint32_t pack_pair<cutlass::half_t>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// Where a packed query row of the kv head lives in q/out/lse.
struct QueryRow {
  int s;     // query position
  int head;  // query head
};

__device__ __forceinline__ QueryRow query_row(const DecodeParams& p, int kv_head, int packed_row) {
  const int s = packed_row / p.q_heads_per_kv_head;
  return {s, kv_head * p.q_heads_per_kv_head + (packed_row - s * p.q_heads_per_kv_head)};
}

// Stores this thread's values of a consumer's O half (columns [col_base, col_base + 256)).
// Values 2k and 2k + 1 are adjacent columns of one row (CLayout_64xN), stored as one pair.
template <class Element, class TensorO, class TensorC>
__device__ void store_o_half(const DecodeParams& p, const Visit& v, int m_tile, int kv_head, int col_base,
                             const TensorO& tOrO, const TensorC& tOcO, const float (&inv_sum)[kRowsPerThread]) {
  using namespace cute;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const int packed_row = m_tile * kBlockM + get<0>(tOcO(2 * h));
    if (packed_row >= p.q_rows_per_kv_head) continue;
    if (v.writes_direct()) {
      const QueryRow qr = query_row(p, kv_head, packed_row);
      Element* out = static_cast<Element*>(p.out) + static_cast<int64_t>(v.request) * p.o_batch_stride +
                     qr.s * p.o_seq_stride + qr.head * p.o_head_stride + col_base;
#pragma unroll
      for (int i = 2 * h; i < size(tOrO); i += 4) {
        *reinterpret_cast<uint32_t*>(out + get<1>(tOcO(i))) =
            pack_pair<Element>(tOrO(i) * inv_sum[h], tOrO(i + 1) * inv_sum[h]);
      }
    } else {
      float* out = p.o_accum + partial_row_index(p, v.slot, kv_head, packed_row) * kHeadDimV + col_base;
#pragma unroll
      for (int i = 2 * h; i < size(tOrO); i += 4) {
        *reinterpret_cast<float2*>(out + get<1>(tOcO(i))) =
            make_float2(tOrO(i) * inv_sum[h], tOrO(i + 1) * inv_sum[h]);
      }
    }
  }
}

// One lane per quad writes each of its two rows' lse.
template <class TensorC>
__device__ void store_lse(const DecodeParams& p, const Visit& v, int m_tile, int kv_head, const TensorC& tOcO,
                          const float (&lse)[kRowsPerThread], int thread_in_warpgroup) {
  using namespace cute;
  constexpr int kLanesPerRow = 4;
  if (thread_in_warpgroup % kLanesPerRow != 0) return;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const int packed_row = m_tile * kBlockM + get<0>(tOcO(2 * h));
    if (packed_row >= p.q_rows_per_kv_head) continue;
    if (v.writes_direct()) {
      const QueryRow qr = query_row(p, kv_head, packed_row);
      p.lse[static_cast<int64_t>(v.request) * p.lse_batch_stride + qr.head * p.lse_head_stride +
            qr.s * p.lse_seq_stride] = lse[h];
    } else {
      p.lse_accum[partial_row_index(p, v.slot, kv_head, packed_row)] = lse[h];
    }
  }
}

}  // namespace flashmla::sm90
