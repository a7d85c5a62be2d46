// Online softmax of consumer 0 over the S accumulator of a 64 x 64 wgmma, in fp32 with exp2.
//
// Accumulator layout (CuTe CLayout_64xN): thread t of the warpgroup holds rows
// 16 * (t / 32) + (t % 32) / 4 + {0, 8}; value i sits in row half (i >> 1) & 1, and the four lanes
// of a quad share the same two rows. Columns come from an identity-tensor partition.
//
// Masking: a key is kept when token < limit(row), limit = L, or min(L, L - s_q + s + 1) when
// causal. Masked scores become -inf by replacement (never arithmetic: the page tail may hold NaN)
// before the max, so no NaN or garbage reaches m, l or P.
#pragma once

#include <cmath>
#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "kernels/common/compensated_sum.cuh"
#include "kernels/sm90/sm90_kernel_traits.h"

namespace flashmla::sm90 {

constexpr int kRowsPerThread = 2;

__device__ __forceinline__ int accum_row_half(int value_index) { return (value_index >> 1) & 1; }

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Consumer 0 publishes per-row factors here for consumer 1, and P for both P.V GEMMs. P must
// start on a 1024-byte boundary (128-byte swizzle); the kernel's SharedStorage asserts it rather
// than over-aligning this struct, which would pad the shared-memory plan by up to 1 KB.
template <class Element>
struct SoftmaxExchangeStorage {
  Element p[kBlockM * kBlockN];
  // Per tile: exp2 rescale of the running output; at the end of a visit: 1 / row sum.
  float row_factor[kBlockM];
};

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

// Writes this thread's probabilities into the 64 x 64 P tile (a 128-byte-swizzled piece starting
// on a 1024-byte boundary). The thread holds columns 8j + 2q, 8j + 2q + 1 (j = 0..7) of rows r and
// r + 8, value index 2h + 4j for row half h (CLayout_64x64). Byte (row, col) of the piece is
// row * 128 + ((col / 8 ^ row % 8) * 16) + (col % 8) * 2; the terms occupy disjoint bits, so for
// this thread it is (r * 128 + (r % 8) * 16 + 4q) ^ (j * 16), plus 1024 for row r + 8: one XOR per
// pair. With the general formula ptxas kept 16 addresses live across the tile loop or, under
// register pressure, recomputed them at ~6 instructions each per tile.
template <class Element, class TensorS, class TensorC>
__device__ __forceinline__ void store_p(Element* p_smem, const TensorS& tSrS, const TensorC& tScS) {
  using namespace cute;
  constexpr uint32_t kRowBytes = kPieceCols * kElementBytes;
  constexpr uint32_t kChunkBytes = 16;
  constexpr uint32_t kRowHalfBytes = 8 * kRowBytes;
  constexpr int kColGroups = kBlockN / 8;
  static_assert(decltype(size(tSrS))::value == kRowsPerThread * kColGroups * 2, "two values per row half and group");
  const uint32_t row = get<0>(tScS(0));
  const uint32_t col = get<1>(tScS(0));
  const uint32_t base =
      cute::cast_smem_ptr_to_uint(p_smem) + row * kRowBytes + (row % 8) * kChunkBytes + col * kElementBytes;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
#pragma unroll
    for (int j = 0; j < kColGroups; ++j) {
      const int i = 2 * h + 4 * j;
      const uint32_t addr = (base ^ (j * kChunkBytes)) + h * kRowHalfBytes;
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(pack_pair<Element>(tSrS(i), tSrS(i + 1))) : "memory");
    }
  }
}

// The reference max of a row moves only when a tile's max exceeds it by more than 2^8 in exp2
// terms. Until then P = exp2((s - max) * scale_log2) stays below 256, well inside the range of
// 16-bit P and of the fp32 sums, and the tile leaves the output accumulators unscaled: that skips
// 128 multiplies per thread in each consumer on most tiles once a row's max has settled. The
// result is the same softmax; only the common factor that the sums carry changes.
constexpr float kStaleMaxSlackLog2 = 8.f;

// True when some row of the calling warp must rescale its output accumulators this tile. The vote
// keeps the skip warp-uniform (the rows of a warp share its wgmma).
__device__ __forceinline__ bool warp_needs_rescale(const float (&rescale)[kRowsPerThread]) {
  bool needs = false;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) needs |= rescale[h] != 1.f;
  return __any_sync(0xffffffffu, needs);
}

// Multiplies each row of an accumulator fragment (CLayout_64xN) by its factor, unless every row of
// the calling warp keeps factor 1.
template <class TensorO>
__device__ __forceinline__ void rescale_rows(TensorO& tOrO, const float (&rescale)[kRowsPerThread]) {
  if (warp_needs_rescale(rescale)) {
#pragma unroll
    for (int i = 0; i < cute::size(tOrO); ++i) tOrO(i) *= rescale[accum_row_half(i)];
  }
}

// Independent fmaxf chains per row in the tile max (16 values per row and thread).
constexpr int kMaxChains = 4;

struct OnlineSoftmax {
  float row_max[kRowsPerThread];  // raw (unscaled) score max; -inf before any kept key
  CompensatedSum row_sum[kRowsPerThread];  // this thread's share of sum(exp2(...)); quad-reduced at the end
  int key_limit[kRowsPerThread];  // keys [0, key_limit) are visible to the row

  // `rows` are the thread's two packed query rows of the tile (absolute within the kv head).
  __device__ void reset(int seqlen, int s_q, int q_heads_per_kv_head, bool causal, const int (&rows)[kRowsPerThread]) {
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) {
      row_max[h] = -INFINITY;
      row_sum[h] = CompensatedSum{};
      int limit = seqlen;
      if (causal) {
        const int causal_limit = seqlen - s_q + rows[h] / q_heads_per_kv_head + 1;
        limit = causal_limit < limit ? causal_limit : limit;
      }
      key_limit[h] = limit;
    }
  }

  // Masks and exponentiates the tile's scores in place (S becomes P, unnormalised) and returns
  // in `rescale` the factor the running output must be multiplied by before adding P.V.
  template <class TensorS, class TensorC>
  __device__ void update(TensorS& tSrS, const TensorC& tScS, int first_key, float scale_log2,
                         float (&rescale)[kRowsPerThread]) {
    using namespace cute;
    // Only a tile that reaches past some row's last visible key needs the mask: on the others
    // every score is kept, and the per-value compare and select are skipped.
    const int visible = key_limit[0] < key_limit[1] ? key_limit[0] : key_limit[1];
    if (first_key + kBlockN > visible) {
#pragma unroll
      for (int i = 0; i < size(tSrS); ++i) {
        const int key = first_key + get<1>(tScS(i));
        if (key >= key_limit[accum_row_half(i)]) tSrS(i) = -INFINITY;
      }
    }
    // Several partial maxima per row keep the dependent chain of fmaxf short.
    float part_max[kRowsPerThread][kMaxChains];
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) {
#pragma unroll
      for (int c = 0; c < kMaxChains; ++c) part_max[h][c] = row_max[h];
    }
#pragma unroll
    for (int i = 0; i < size(tSrS); ++i) {
      float& m = part_max[accum_row_half(i)][(i / 4) % kMaxChains];
      m = fmaxf(m, tSrS(i));
    }
    float tile_max[kRowsPerThread];
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) {
      tile_max[h] = part_max[h][0];
#pragma unroll
      for (int c = 1; c < kMaxChains; ++c) tile_max[h] = fmaxf(tile_max[h], part_max[h][c]);
    }
    float neg_max_scaled[kRowsPerThread];
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) {
      const float new_max = quad_max(tile_max[h]);
      // -inf - -inf is NaN, so a row that still has no key compares false and stays at -inf;
      // the first finite max always moves (inf > slack).
      const bool moves = (new_max - row_max[h]) * scale_log2 > kStaleMaxSlackLog2;
      rescale[h] = moves ? exp2f((row_max[h] - new_max) * scale_log2) : 1.f;
      if (moves) {
        row_max[h] = new_max;
        row_sum[h].scale(rescale[h]);
      }
      // A row with no kept key so far keeps max -inf; subtract 0 instead so that exp2 sees -inf
      // (giving 0) rather than -inf - -inf = NaN.
      const float safe_max = row_max[h] == -INFINITY ? 0.f : row_max[h];
      neg_max_scaled[h] = -safe_max * scale_log2;
    }
    // The tile's weights are summed apart, then added to the running sum once per tile.
    float tile_sum[kRowsPerThread] = {0.f, 0.f};
#pragma unroll
    for (int i = 0; i < size(tSrS); ++i) {
      const int h = accum_row_half(i);
      const float p = exp2f(fmaf(tSrS(i), scale_log2, neg_max_scaled[h]));
      tSrS(i) = p;
      tile_sum[h] += p;
    }
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) row_sum[h].add(tile_sum[h]);
  }

  // Seesaw follower: the leader of a tile moved the reference max to `max` with factor `rescale`;
  // this warpgroup's share of the sums, taken against the old max, follows.
  __device__ void follow(const float (&max)[kRowsPerThread], const float (&rescale)[kRowsPerThread]) {
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) {
      row_max[h] = max[h];
      if (rescale[h] != 1.f) row_sum[h].scale(rescale[h]);
    }
  }

  // This thread's row sum, reduced over its quad (the four lanes that share its rows).
  __device__ float quad_row_sum(int h) const { return quad_sum(row_sum[h].value()); }

  // 1 / row sum (0 for a row that saw no key) and the natural-log lse of each row; a row with no
  // key gets `empty_lse` (+inf for the final output, -inf for a split-KV partial). `other_sum` is
  // what another warpgroup summed for the same rows (the seesaw's other leader), else 0.
  __device__ void finalize(float scale_log2, float empty_lse, const float (&other_sum)[kRowsPerThread],
                           float (&inv_sum)[kRowsPerThread], float (&lse)[kRowsPerThread]) const {
    constexpr float kLn2 = 0.6931471805599453f;
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) {
      const float sum = quad_row_sum(h) + other_sum[h];
      const bool empty = !(sum > 0.f);
      inv_sum[h] = empty ? 0.f : 1.f / sum;
      lse[h] = empty ? empty_lse : (row_max[h] * scale_log2 + log2f(sum)) * kLn2;
    }
  }
};

}  // namespace flashmla::sm90
