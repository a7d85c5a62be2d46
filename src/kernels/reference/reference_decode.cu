// The reference decode kernel: plain CUDA (sm_80+), fp32 accumulation, no architecture-specific
// instructions. It is the oracle the fast kernel is tested against, so every choice below favours
// being evidently right over being fast; it is only kept from being absurdly slow by staging K in
// shared memory and giving each thread a fixed set of (row, token) or (row, column) pairs.
//
// Grid: (SM part, kv head, group of kRowsPerCta query rows). Each CTA walks its part's visits of
// the split-KV plan (src/scheduler/metadata.h) in order. Per visit, per chunk of kChunkTokens:
//   1. load the chunk of K (= V in its first 512 columns) into shared memory,
//   2. warp w computes the scores of rows {w, w + kWarps} against the chunk's tokens (one token per
//      lane) and updates those rows' running max / sum (online softmax),
//   3. thread t accumulates columns {2t, 2t + 1} of o for all rows of the CTA.
// At the end of a visit, a request with a single piece gets out/lse directly; otherwise the visit
// writes its fp32 partial (o / sum, lse) to its slot of the workspace for the combine kernel.
#include "kernels/reference/reference_decode.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdint>

#include "scheduler/metadata.h"
#include "kernels/common/compensated_sum.cuh"
#include "kernels/common/dtype_bits.cuh"

namespace flashmla {
namespace {

constexpr int kHeadDim = FLASHMLA_HEAD_DIM;      // q . k runs over these columns
constexpr int kHeadDimV = FLASHMLA_HEAD_DIM_V;   // o = p . V over the first of them
constexpr int kTileTokens = FLASHMLA_BLOCK_N;    // the plan's unit of work
constexpr int kWarpSize = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
// Each thread owns two output columns, so the CTA covers exactly head_dim_v columns.
constexpr int kColsPerThread = 2;
static_assert(kThreads * kColsPerThread == kHeadDimV, "threads must tile the V columns exactly");
// One token per lane in the score phase.
constexpr int kChunkTokens = kWarpSize;
static_assert(kTileTokens % kChunkTokens == 0, "chunks must not straddle plan tiles");
// Rows per warp in the score phase; the CTA holds kWarps * kRowsPerWarp query rows.
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerCta = kWarps * kRowsPerWarp;
// Shared-memory row of K, in elements. Padding by 8 elements (16 bytes) keeps rows 16-byte aligned
// for vector reads and shifts consecutive tokens by 4 banks, so the 8 lanes of a quarter-warp that
// read 16 bytes each from 8 consecutive tokens hit 32 distinct banks.
constexpr int kKSmemStride = kHeadDim + 8;
constexpr int kElemsPerVector = 8;  // 16-byte shared-memory reads of K in the score phase
static_assert(kHeadDim % kElemsPerVector == 0, "head_dim must be a whole number of vectors");
// Two resident CTAs per SM let one CTA's global loads overlap the other's arithmetic; it caps
// registers at 128/thread, above what the kernel needs.
constexpr int kMinCtasPerSm = 2;
// Grid dimensions y and z are limited to this many blocks.
constexpr int kMaxGridYZ = 65535;
static_assert(kMaxGridYZ >= kMaxKvHeads && int64_t{kMaxGridYZ} * kRowsPerCta >= kMaxQueryRowsPerKvHead,
              "every call decode.cpp accepts must fit the grid");

struct SharedStorage {
  float q[kRowsPerCta][kHeadDim];                    // this visit's query rows, as fp32
  alignas(16) uint16_t k[kChunkTokens][kKSmemStride];  // raw dtype bits of the chunk's K
  alignas(16) float p[kChunkTokens][kRowsPerCta];    // softmax numerators, token-major
  float alpha[kRowsPerCta];  // factor rescaling o when a row's running max grows
  float row_max[kRowsPerCta];
  float row_sum[kRowsPerCta];
};

// Low and high element of a 32-bit word holding two consecutive dtype elements.
template <typename T>
__device__ __forceinline__ float low_half(uint32_t word) {
  return to_float<T>(static_cast<uint16_t>(word & 0xffffu));
}
template <typename T>
__device__ __forceinline__ float high_half(uint32_t word) {
  return to_float<T>(static_cast<uint16_t>(word >> 16));
}

__device__ __forceinline__ float warp_max(float x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

__device__ __forceinline__ float warp_sum(float x) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

// One visit of the plan: request `req`, tokens [token_begin, token_end), and where it reports.
struct Visit {
  int req;
  int64_t token_begin;
  int64_t token_end;
  int seqlen;
  bool single_piece;  // write out/lse directly
  int64_t slot;       // partial-result slot when not single_piece
};

// Query position and query head of packed row `row` of kv head `kv_head`.
__device__ __forceinline__ void row_to_query(const DecodeParams& p, int kv_head, int row, int* s,
                                             int* head) {
  *s = row / p.q_heads_per_kv_head;
  *head = kv_head * p.q_heads_per_kv_head + row % p.q_heads_per_kv_head;
}

// Warp w fills rows w, w + kWarps, ...; lanes stride over the columns, so address arithmetic is
// done once per row and the global reads of a warp are contiguous.
template <typename T>
__device__ void load_q_rows(const DecodeParams& p, SharedStorage& smem, int req, int kv_head,
                            int row_begin, int warp, int lane) {
  const uint16_t* q = static_cast<const uint16_t*>(p.q);
  for (int local_row = warp; local_row < kRowsPerCta; local_row += kWarps) {
    const int row = row_begin + local_row;
    if (row < p.q_rows_per_kv_head) {
      int s, head;
      row_to_query(p, kv_head, row, &s, &head);
      const uint16_t* src = q + static_cast<int64_t>(req) * p.q_batch_stride +
                            static_cast<int64_t>(s) * p.q_seq_stride +
                            static_cast<int64_t>(head) * p.q_head_stride;
      for (int col = lane; col < kHeadDim; col += kWarpSize) {
        smem.q[local_row][col] = to_float<T>(src[col]);
      }
    } else {
      // Rows past the end are computed on zeros and never written.
      for (int col = lane; col < kHeadDim; col += kWarpSize) smem.q[local_row][col] = 0.0f;
    }
  }
}

// Copies tokens [chunk_begin, chunk_begin + kChunkTokens) of the request into shared memory. Tokens
// at or past `token_end` (<= the request's length) are never read from global memory, nor is their
// block-table entry: their rows are zero-filled, because their softmax weight is 0 and 0 * NaN
// would still poison o. Warp w copies tokens w, w + kWarps, ...
__device__ void load_k_chunk(const DecodeParams& p, SharedStorage& smem, int req, int kv_head,
                             int64_t chunk_begin, int64_t token_end, int warp, int lane) {
  const uint16_t* k = static_cast<const uint16_t*>(p.k);
  const int32_t* block_row =
      p.block_table + static_cast<int64_t>(req) * p.block_table_batch_stride;
  for (int local_token = warp; local_token < kChunkTokens; local_token += kWarps) {
    const int64_t token = chunk_begin + local_token;
    if (token < token_end) {
      // token < seqlen, an int32.
      const int token32 = static_cast<int>(token);
      const int64_t block = block_row[token32 / p.page_block_size];
      const uint16_t* src = k + block * p.k_block_stride +
                            static_cast<int64_t>(token32 % p.page_block_size) * p.k_token_stride +
                            static_cast<int64_t>(kv_head) * p.k_head_stride;
      for (int col = lane; col < kHeadDim; col += kWarpSize) smem.k[local_token][col] = src[col];
    } else {
      for (int col = lane; col < kHeadDim; col += kWarpSize) smem.k[local_token][col] = 0;
    }
  }
}

// Scores of row `local_row` (of the CTA) against token `lane` of the chunk, unscaled.
template <typename T>
__device__ float dot_q_k(const SharedStorage& smem, int local_row, int lane) {
  float acc = 0.0f;
  for (int col = 0; col < kHeadDim; col += kElemsPerVector) {
    const uint4 kv = *reinterpret_cast<const uint4*>(&smem.k[lane][col]);
    const float4 q_lo = *reinterpret_cast<const float4*>(&smem.q[local_row][col]);
    const float4 q_hi = *reinterpret_cast<const float4*>(&smem.q[local_row][col + 4]);
    acc = fmaf(q_lo.x, low_half<T>(kv.x), acc);
    acc = fmaf(q_lo.y, high_half<T>(kv.x), acc);
    acc = fmaf(q_lo.z, low_half<T>(kv.y), acc);
    acc = fmaf(q_lo.w, high_half<T>(kv.y), acc);
    acc = fmaf(q_hi.x, low_half<T>(kv.z), acc);
    acc = fmaf(q_hi.y, high_half<T>(kv.z), acc);
    acc = fmaf(q_hi.z, low_half<T>(kv.w), acc);
    acc = fmaf(q_hi.w, high_half<T>(kv.w), acc);
  }
  return acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads, kMinCtasPerSm)
    reference_decode_kernel(const DecodeParams p) {
  extern __shared__ __align__(16) unsigned char smem_bytes[];
  SharedStorage& smem = *reinterpret_cast<SharedStorage*>(smem_bytes);

  const int part = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int row_begin = blockIdx.z * kRowsPerCta;
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  const int col0 = threadIdx.x * kColsPerThread;

  const int32_t* meta = p.tile_metadata + static_cast<int64_t>(part) * FLASHMLA_METADATA_WORDS;
  const int begin_req = meta[kMetaBeginReq];
  const int end_req = meta[kMetaEndReq];
  const int begin_tile = meta[kMetaBeginTile];
  const int end_tile = meta[kMetaEndTile];
  const int begin_split = meta[kMetaBeginSplit];

  for (int req = begin_req; req <= end_req; ++req) {
    Visit v;
    v.req = req;
    v.seqlen = p.seqlens[req];
    const int64_t num_tiles = (static_cast<int64_t>(v.seqlen) + kTileTokens - 1) / kTileTokens;
    const int64_t tile_begin = req == begin_req ? begin_tile : 0;
    const int64_t tile_end = req == end_req ? end_tile : num_tiles;
    v.token_begin = tile_begin * kTileTokens;
    v.token_end = min(tile_end * kTileTokens, static_cast<int64_t>(v.seqlen));
    v.single_piece = p.num_splits[req + 1] - p.num_splits[req] == 1;
    v.slot = req == begin_req ? begin_split : p.num_splits[req];

    // The previous visit's epilogue may still read row_max/row_sum; q is rewritten below.
    __syncthreads();
    if (v.token_begin < v.token_end) {
      load_q_rows<T>(p, smem, req, kv_head, row_begin, warp, lane);
    }

    // Online-softmax state of rows (warp + kWarps * i), replicated in every lane of the warp.
    float run_max[kRowsPerWarp];
    CompensatedSum run_sum[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) run_max[i] = -INFINITY;
    float acc[kRowsPerCta][kColsPerThread];
#pragma unroll
    for (int r = 0; r < kRowsPerCta; ++r) {
#pragma unroll
      for (int c = 0; c < kColsPerThread; ++c) acc[r][c] = 0.0f;
    }

    for (int64_t chunk = v.token_begin; chunk < v.token_end; chunk += kChunkTokens) {
      load_k_chunk(p, smem, req, kv_head, chunk, v.token_end, warp, lane);
      __syncthreads();

      // Scores and online softmax: warp owns rows, lane owns a token.
      const int64_t token = chunk + lane;
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        const int local_row = warp + kWarps * i;
        const int s = (row_begin + local_row) / p.q_heads_per_kv_head;
        // Last visible key of this row (inclusive); every token below the visit's end otherwise.
        const int64_t last_key = p.causal ? static_cast<int64_t>(v.seqlen) - p.s_q + s
                                          : static_cast<int64_t>(v.seqlen) - 1;
        const bool visible = token < v.token_end && token <= last_key;
        const float dot = dot_q_k<T>(smem, local_row, lane);
        const float score = visible ? dot * p.scale : -INFINITY;
        const float new_max = fmaxf(run_max[i], warp_max(score));
        // While a row has seen no key its max stays -inf; guard the -inf - -inf = NaN cases.
        const bool any_key = new_max != -INFINITY;
        const float prob = any_key ? expf(score - new_max) : 0.0f;
        const float alpha = any_key ? expf(run_max[i] - new_max) : 1.0f;
        run_sum[i].scale(alpha);
        run_sum[i].add(warp_sum(prob));
        run_max[i] = new_max;
        smem.p[lane][local_row] = prob;
        if (lane == 0) smem.alpha[local_row] = alpha;
      }
      __syncthreads();

      // o = alpha * o + p . V for this thread's columns of every row.
#pragma unroll
      for (int r = 0; r < kRowsPerCta; ++r) {
#pragma unroll
        for (int c = 0; c < kColsPerThread; ++c) acc[r][c] *= smem.alpha[r];
      }
      for (int t = 0; t < kChunkTokens; ++t) {
        const uint32_t vv = *reinterpret_cast<const uint32_t*>(&smem.k[t][col0]);
        const float v_lo = low_half<T>(vv);
        const float v_hi = high_half<T>(vv);
#pragma unroll
        for (int r = 0; r < kRowsPerCta; ++r) {
          const float prob = smem.p[t][r];
          acc[r][0] = fmaf(prob, v_lo, acc[r][0]);
          acc[r][1] = fmaf(prob, v_hi, acc[r][1]);
        }
      }
      // k, p and alpha are rewritten by the next chunk.
      __syncthreads();
    }

    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) {
        smem.row_max[warp + kWarps * i] = run_max[i];
        smem.row_sum[warp + kWarps * i] = run_sum[i].value();
      }
    }
    __syncthreads();

    // Epilogue: out/lse for a whole request, or this piece's normalised partial.
#pragma unroll
    for (int r = 0; r < kRowsPerCta; ++r) {
      const int row = row_begin + r;
      if (row >= p.q_rows_per_kv_head) continue;
      const float sum = smem.row_sum[r];
      const bool any_key = sum > 0.0f;
      const float inv_sum = any_key ? 1.0f / sum : 0.0f;
      const float lse = any_key ? smem.row_max[r] + logf(sum)
                                : (v.single_piece ? INFINITY : -INFINITY);
      const float o0 = acc[r][0] * inv_sum;
      const float o1 = acc[r][1] * inv_sum;
      if (v.single_piece) {
        int s, head;
        row_to_query(p, kv_head, row, &s, &head);
        uint16_t* out = static_cast<uint16_t*>(p.out);
        const int64_t o_offset = static_cast<int64_t>(req) * p.o_batch_stride +
                                 static_cast<int64_t>(s) * p.o_seq_stride +
                                 static_cast<int64_t>(head) * p.o_head_stride + col0;
        out[o_offset] = from_float<T>(o0);
        out[o_offset + 1] = from_float<T>(o1);
        if (threadIdx.x == 0) {
          p.lse[static_cast<int64_t>(req) * p.lse_batch_stride +
                static_cast<int64_t>(head) * p.lse_head_stride +
                static_cast<int64_t>(s) * p.lse_seq_stride] = lse;
        }
      } else {
        const int64_t partial_row = partial_row_index(p, v.slot, kv_head, row);
        *reinterpret_cast<float2*>(&p.o_accum[partial_row * kHeadDimV + col0]) =
            make_float2(o0, o1);
        if (threadIdx.x == 0) p.lse_accum[partial_row] = lse;
      }
    }
  }
}

template <typename T>
cudaError_t launch(const DecodeParams& params, cudaStream_t stream) {
  const int row_groups = (params.q_rows_per_kv_head + kRowsPerCta - 1) / kRowsPerCta;
  if (params.h_kv > kMaxGridYZ || row_groups > kMaxGridYZ) return cudaErrorInvalidConfiguration;
  const dim3 grid(params.num_sm_parts, params.h_kv, row_groups);
  constexpr size_t smem_bytes = sizeof(SharedStorage);
  // Above the 48 KB default; every sm_80+ GPU allows at least 99 KB per block on opt-in.
  cudaError_t err = cudaFuncSetAttribute(reference_decode_kernel<T>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
  if (err != cudaSuccess) return err;
  reference_decode_kernel<T><<<grid, kThreads, smem_bytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace

cudaError_t run_reference_decode(const DecodeParams& params, cudaStream_t stream) {
  if (params.head_dim != kHeadDim || params.head_dim_v != kHeadDimV ||
      params.page_block_size % kTileTokens != 0) {
    return cudaErrorInvalidValue;
  }
  // float2 stores of partial rows.
  if (reinterpret_cast<uintptr_t>(params.o_accum) % sizeof(float2) != 0) {
    return cudaErrorInvalidValue;
  }
  if (params.num_sm_parts == 0 || params.h_kv == 0 || params.q_rows_per_kv_head == 0) {
    return cudaSuccess;
  }
  switch (params.dtype) {
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(params, stream);
    case DType::kFloat16:
      return launch<__half>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace flashmla
