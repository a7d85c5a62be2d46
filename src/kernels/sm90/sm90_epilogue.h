// End of a visit: each consumer normalises its 64 x 256 half of O and writes it, straight to
// out (bf16/fp16, any strides) when the request has one piece, else as an fp32 partial to the
// visit's workspace slot; consumer 0 also writes the rows' lse. Padding rows of the last query
// tile (packed row >= q_rows_per_kv_head) are never stored.
//
// Written from the accumulator layout, a warp's store covers 16 bytes of 16-bit out in each of 8
// rows; one SM issues 64 KB of such stores in ~3.6 us, against ~1.2 us staged through shared
// memory and stored as whole 512-byte row runs (bench/store_patterns.cu, PERFORMANCE.md v24). So
// a visit that writes out directly stages its half in a K stage. Fragment stores remain for fp32
// partials, visits without tiles and out rows that are not 16-byte aligned.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include "api/decode_params.h"
#include "kernels/sm90/sm90_kernel_traits.h"
#include "kernels/sm90/sm90_mainloop.h"
#include "kernels/sm90/sm90_softmax.h"
#include "kernels/sm90/sm90_tile_scheduler.h"

namespace flashmla::sm90 {

// Where a packed query row of the kv head lives in q/out/lse.
struct QueryRow {
  int s;     // query position
  int head;  // query head
};

__device__ __forceinline__ QueryRow query_row(const DecodeParams& p, int kv_head, int packed_row) {
  const int s = packed_row / p.q_heads_per_kv_head;
  return {s, kv_head * p.q_heads_per_kv_head + (packed_row - s * p.q_heads_per_kv_head)};
}

// Where a row of a consumer's O half goes: out (16-bit) or the visit's partial slot (fp32).
template <class Element>
__device__ __forceinline__ uint8_t* o_half_row(const DecodeParams& p, const Visit& v, int kv_head, int packed_row,
                                               int col_base) {
  if (v.writes_direct()) {
    const QueryRow qr = query_row(p, kv_head, packed_row);
    return reinterpret_cast<uint8_t*>(static_cast<Element*>(p.out) +
                                      static_cast<int64_t>(v.request) * p.o_batch_stride + qr.s * p.o_seq_stride +
                                      qr.head * p.o_head_stride + col_base);
  }
  return reinterpret_cast<uint8_t*>(p.o_accum + partial_row_index(p, v.slot, kv_head, packed_row) * kHeadDimV +
                                    col_base);
}

// Stores this thread's values of a consumer's O half (columns [col_base, col_base + 256)) where
// the accumulator layout holds them. Values 2k and 2k + 1 are adjacent columns of one row
// (CLayout_64xN), stored as one pair.
template <class Element, class TensorO, class TensorC>
__device__ void store_o_half(const DecodeParams& p, const Visit& v, int m_tile, int kv_head, int col_base,
                             const TensorO& tOrO, const TensorC& tOcO, const float (&inv_sum)[kRowsPerThread]) {
  using namespace cute;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
    const int packed_row = m_tile * kBlockM + get<0>(tOcO(2 * h));
    if (packed_row >= p.q_rows_per_kv_head) continue;
    uint8_t* row = o_half_row<Element>(p, v, kv_head, packed_row, col_base);
#pragma unroll
    for (int i = 2 * h; i < size(tOrO); i += 4) {
      if (v.writes_direct()) {
        *reinterpret_cast<uint32_t*>(row + get<1>(tOcO(i)) * sizeof(Element)) =
            pack_pair<Element>(tOrO(i) * inv_sum[h], tOrO(i + 1) * inv_sum[h]);
      } else {
        *reinterpret_cast<float2*>(row + get<1>(tOcO(i)) * sizeof(float)) =
            make_float2(tOrO(i) * inv_sum[h], tOrO(i + 1) * inv_sum[h]);
      }
    }
  }
}

// The staging buffer of one consumer: 64 rows x 512 bytes (a 16-bit O half), its own V half of
// the visit's last K stage (consumer 0: pieces 0-3, consumer 1: pieces 4-7), free once its last
// P.V has retired. Row r's 16-byte chunk c sits at chunk position c ^ (r % 8): a warp's fragment
// store (the same chunk of 8 rows) then covers all 32 banks, and a warp reading one row's 32
// chunks reads a permutation of them, also without conflicts.
constexpr int kStageRowBytes = 512;
constexpr int kStageChunkBytes = 16;
constexpr int kStageSwizzleMask = 7 * kStageChunkBytes;  // the chunk bits XORed with the row
constexpr int kWarpsPerWarpgroup = kThreadsPerWarpgroup / 32;
static_assert(kBlockM * kStageRowBytes == kVPiecesPerConsumer * kPieceBytes, "a V half holds the staging buffer");
static_assert(kStageRowBytes / kStageChunkBytes == 32, "a warp stores one staged row per instruction");
static_assert(kHeadDimVPerConsumer * kElementBytes == kStageRowBytes, "a 16-bit O half row fills a staged row");

// Whether every row of out starts 16-byte aligned, as the staged stores need.
__device__ __forceinline__ bool out_rows_16b_aligned(const DecodeParams& p) {
  constexpr int64_t kElemsPer16B = kStageChunkBytes / kElementBytes;
  return reinterpret_cast<uintptr_t>(p.out) % kStageChunkBytes == 0 && p.o_batch_stride % kElemsPer16B == 0 &&
         p.o_seq_stride % kElemsPer16B == 0 && p.o_head_stride % kElemsPer16B == 0;
}

// Whether a visit's consumers write O through their staging buffers (and so keep the visit's
// last K stage until they have). Only direct writes of out: an fp32 partial's fragment stores are
// whole 32-byte sectors already, and staging them measured no faster at the grid's split counts.
// A visit without tiles holds no stage.
__device__ __forceinline__ bool stages_output(const DecodeParams& p, const Visit& v) {
  return v.has_tiles() && v.writes_direct() && out_rows_16b_aligned(p);
}

// Writes a consumer's 16-bit O half through its staging buffer: this thread's normalised pairs
// into it, a sync of the consumer's warpgroup (`barrier_id`), then each warp stores whole 512-byte
// rows with 16-byte stores. On return this thread's accesses to the buffer are complete and
// fenced for the producer's next TMA into it.
template <class Element, class TensorO, class TensorC>
__device__ void store_o_half_staged(const DecodeParams& p, const Visit& v, int m_tile, int kv_head, int col_base,
                                    const TensorO& tOrO, const TensorC& tOcO, const float (&inv_sum)[kRowsPerThread],
                                    Element* stage, uint32_t barrier_id, int thread_in_warpgroup) {
  using namespace cute;
  // Value index 2h + 4j holds columns 8j + 2q, 8j + 2q + 1 of row r + 8h (CLayout_64xN), i.e.
  // byte 16j + 4q of the row. With the row's swizzle in the chunk bits, the address of pair
  // (h, j) is (base ^ ((j % 8) * 16)) + (j / 8) * 128 + h * 8 * 512: one XOR per pair.
  constexpr int kColGroups = kHeadDimVPerConsumer / 8;
  const uint32_t row = get<0>(tOcO(0));
  const uint32_t base = cute::cast_smem_ptr_to_uint(stage) + row * kStageRowBytes + (row % 8) * kStageChunkBytes +
                        get<1>(tOcO(0)) * kElementBytes;
#pragma unroll
  for (int h = 0; h < kRowsPerThread; ++h) {
#pragma unroll
    for (int j = 0; j < kColGroups; ++j) {
      const int i = 2 * h + 4 * j;
      const uint32_t byte = j * 8 * kElementBytes;
      const uint32_t addr = (base ^ (byte & kStageSwizzleMask)) + (byte & ~kStageSwizzleMask) + h * 8 * kStageRowBytes;
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr),
                   "r"(pack_pair<Element>(tOrO(i) * inv_sum[h], tOrO(i + 1) * inv_sum[h]))
                   : "memory");
    }
  }
  __syncwarp();
  cutlass::arch::NamedBarrier::sync(kThreadsPerWarpgroup, barrier_id);
  const int warp = thread_in_warpgroup / 32;
  const int lane = thread_in_warpgroup % 32;
  const uint8_t* stage_bytes = reinterpret_cast<const uint8_t*>(stage);
#pragma unroll 4
  for (int r = warp; r < kBlockM; r += kWarpsPerWarpgroup) {
    const int packed_row = m_tile * kBlockM + r;
    if (packed_row >= p.q_rows_per_kv_head) break;  // padding rows are the tile's last ones
    const uint4 chunk =
        *reinterpret_cast<const uint4*>(stage_bytes + r * kStageRowBytes + (lane ^ (r % 8)) * kStageChunkBytes);
    *reinterpret_cast<uint4*>(o_half_row<Element>(p, v, kv_head, packed_row, col_base) + lane * kStageChunkBytes) =
        chunk;
  }
  fence_generic_to_async_proxy();
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
