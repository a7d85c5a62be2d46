// Split-KV combine: merges the fp32 partials (o_i normalised by its own sum, lse_i) of every
// request with more than one piece into out and lse:
//   lse_max = max_i lse_i,  w_i = exp(lse_i - lse_max),
//   out = sum_i w_i o_i / sum_i w_i,  lse = lse_max + log(sum_i w_i).
// Pieces whose lse is -inf saw no key (their o is loaded but not used); a row whose pieces all saw no key
// gets out = 0, lse = +inf. The slots of a row are dealt to kSlotGroups groups of threads in
// batches of kSlotUnroll; each thread adds its batches in slot order against its group's running
// maximum (rescaling its sums when a batch raises it), and the groups' sums are then referred to the
// row's maximum and added in group order, so the result is bitwise reproducible.
//
// Grid: (request, kv head, group of rows_per_cta packed rows); CTAs of unsplit requests exit at
// once. For a small batch each CTA takes one row, so that a single long request split into ~one
// piece per SM is merged by ~one CTA per row rather than by a few CTAs walking rows in turn; the
// slot loop is unrolled and split across slot groups so that a row's partials are requested in a
// few rounds rather than one dependent round per batch, and no round is spent on the row's maximum
// before its pieces are loaded. For a large batch (one group of threads) whose CTAs take several
// rows each, the CTA's rows, which belong to one request and so have the same pieces, are loaded
// several rows at a time when their pieces fit one batch (combine_rows_batched, in its own
// instantiation: see launch()).
#include "kernels/combine/combine.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "flashmla/flashmla.h"
#include "kernels/common/dtype_bits.cuh"
#include "kernels/common/phase_trace.cuh"

namespace flashmla {
namespace {

constexpr int kHeadDimV = FLASHMLA_HEAD_DIM_V;
constexpr int kColsPerThread = 4;  // one float4 of a partial row
constexpr int kColumnThreads = kHeadDimV / kColsPerThread;
static_assert(kColumnThreads * kColsPerThread == kHeadDimV, "threads must tile the V columns exactly");
// Partial rows each thread loads before using any of them.
constexpr int kSlotUnroll = 8;
// Groups of kColumnThreads threads that take turns over a row's slot batches: a request split
// into ~one piece per SM has ~66 slots, which one group would fetch in 9 dependent rounds. The
// launch takes the most groups that keep the grid in one wave: at 60-64 registers a 1024-thread
// (8-group) CTA fits once per SM and a 512-thread one twice; larger grids (large batches, few
// slots per row, where the groups would idle) keep one group per CTA.
constexpr int kMostSlotGroups = 8;
constexpr int kManySlotGroups = 4;
constexpr int kCtasPerSmWithMostGroups = 1;
constexpr int kCtasPerSmWithManyGroups = 2;
// CTAs per SM the lean one-group kernel (one row per CTA, no row batching) is built for: left to
// itself ptxas gives its running-maximum loop 84 registers (six CTAs per SM), and b=8, h_q=128's
// 1024 CTAs then take two waves on 132 SMs; at eight it fits 64 registers without spilling.
constexpr int kLeanCtasPerSm = 8;
// Rows per CTA grow with the problem until about this many CTAs remain: enough to cover the SMs
// several times, without paying a CTA launch per row on large batches.
constexpr int64_t kTargetCtas = 1024;
constexpr int kMaxRowsPerCta = 16;
// Grid dimensions y and z are limited to this many blocks.
constexpr int kMaxGridYZ = 65535;
// Row groups per kv head: below kTargetCtas rows per CTA grow with the rows, so there are fewer
// than 2 * kTargetCtas groups; at kMaxRowsPerCta the rows decode.cpp accepts still fit.
static_assert(kMaxGridYZ >= kMaxKvHeads && 2 * kTargetCtas <= kMaxGridYZ &&
                  int64_t{kMaxGridYZ} * kMaxRowsPerCta >= kMaxQueryRowsPerKvHead,
              "every call decode.cpp accepts must fit the grid");
// cudaGridDependencySynchronize() (programmatic dependent launch) exists from sm_90 on.
constexpr int kMinArchWithDependencyWait = 90;

#ifdef FLASHMLA_PHASE_TRACE
// The combine's stamps (phase_trace.cuh).
__device__ trace::Stamp g_combine_stamps[trace::kMaxCtas * trace::kCombinePhases];
#endif

// Thread 0 of each CTA stamps; a no-op unless tracing.
__device__ __forceinline__ void stamp(trace::CombinePhase phase) {
#ifdef FLASHMLA_PHASE_TRACE
  if (threadIdx.x == 0) trace::record(g_combine_stamps, trace::kCombinePhases, phase);
#else
  (void)phase;
#endif
}

// Refers a row's running sums from the maximum `from` to `to` (>= from). Sums that are still empty
// (from = -inf) stay zero; -inf - -inf would be NaN, so that case is selected, not computed.
__device__ __forceinline__ void rescale_sums(float4& o, float& weight_sum, float from, float to) {
  const float factor = from == -INFINITY ? 0.0f : expf(from - to);
  o.x *= factor;
  o.y *= factor;
  o.z *= factor;
  o.w *= factor;
  weight_sum *= factor;
}

// Adds one piece to a row's running sums. A piece that saw no key has lse -inf and an o that may
// be NaN: it must not reach the sums at all (selects, not branches, keep a batch together).
__device__ __forceinline__ void add_piece(float4& o, float& weight_sum, float piece_lse, const float4& piece,
                                          float lse_max) {
  const bool saw_keys = piece_lse != -INFINITY;
  const float w = saw_keys ? expf(piece_lse - lse_max) : 0.0f;
  o.x = saw_keys ? fmaf(w, piece.x, o.x) : o.x;
  o.y = saw_keys ? fmaf(w, piece.y, o.y) : o.y;
  o.z = saw_keys ? fmaf(w, piece.z, o.z) : o.z;
  o.w = saw_keys ? fmaf(w, piece.w, o.w) : o.w;
  weight_sum += w;
}

// Normalises a row's sums and stores this thread's four columns of out, and (thread 0) the lse.
template <typename T>
__device__ __forceinline__ void store_row(const DecodeParams& p, int req, int kv_head, int row, int col0, float4 o,
                                          float weight_sum, float lse_max) {
  float lse = INFINITY;
  if (lse_max != -INFINITY) {
    // The largest piece has weight 1, so weight_sum >= 1.
    const float inv = 1.0f / weight_sum;
    o.x *= inv;
    o.y *= inv;
    o.z *= inv;
    o.w *= inv;
    lse = lse_max + logf(weight_sum);
  }
  const int s = row / p.q_heads_per_kv_head;
  const int head = kv_head * p.q_heads_per_kv_head + row % p.q_heads_per_kv_head;
  // Scalar stores: out's strides need not keep 4 elements aligned.
  uint16_t* out = static_cast<uint16_t*>(p.out) + static_cast<int64_t>(req) * p.o_batch_stride +
                  static_cast<int64_t>(s) * p.o_seq_stride + static_cast<int64_t>(head) * p.o_head_stride + col0;
  out[0] = from_float<T>(o.x);
  out[1] = from_float<T>(o.y);
  out[2] = from_float<T>(o.z);
  out[3] = from_float<T>(o.w);
  if (threadIdx.x == 0) {
    p.lse[static_cast<int64_t>(req) * p.lse_batch_stride + static_cast<int64_t>(head) * p.lse_head_stride +
          static_cast<int64_t>(s) * p.lse_seq_stride] = lse;
  }
}

// The rows of a request split into at most kSlotUnroll pieces, with one group of threads: the
// pieces of as many whole rows as fit kSlotUnroll are loaded together, and each thread takes a
// row's lse maximum from the values it loaded itself. A batch of rows then costs one dependent
// round of loads, where the per-row path pays one per row; large batches, whose CTAs walk up to
// kMaxRowsPerCta rows of 2-3 pieces each, were bound by those rounds. Pieces are summed in slot
// order with the same operations as the one-group per-row path on a single batch, so the bits are
// the same.
template <typename T>
__device__ void combine_rows_batched(const DecodeParams& p, int req, int kv_head, int64_t slot_begin, int num_pieces,
                                     int row_begin, int row_end, int col0) {
  const int rows_per_batch = kSlotUnroll / num_pieces;
  for (int row0 = row_begin; row0 < row_end; row0 += rows_per_batch) {
    const int rows_here = min(rows_per_batch, row_end - row0);
    float piece_lse[kSlotUnroll];
    float4 piece[kSlotUnroll];
    int piece_row[kSlotUnroll];  // row within the batch; rows_here for an unused entry
    int row = 0;
    int slot = 0;
#pragma unroll
    for (int j = 0; j < kSlotUnroll; ++j) {
      piece_row[j] = row;
      piece_lse[j] = -INFINITY;
      piece[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (row < rows_here) {
        const int64_t partial_row = partial_row_index(p, slot_begin + slot, kv_head, row0 + row);
        piece_lse[j] = p.lse_accum[partial_row];
        piece[j] = *reinterpret_cast<const float4*>(&p.o_accum[partial_row * kHeadDimV + col0]);
      }
      if (++slot == num_pieces) {
        slot = 0;
        ++row;
      }
    }
    for (int r = 0; r < rows_here; ++r) {
      float lse_max = -INFINITY;
#pragma unroll
      for (int j = 0; j < kSlotUnroll; ++j) lse_max = piece_row[j] == r ? fmaxf(lse_max, piece_lse[j]) : lse_max;
      float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      float weight_sum = 0.0f;
      if (lse_max != -INFINITY) {
#pragma unroll
        for (int j = 0; j < kSlotUnroll; ++j) {
          if (piece_row[j] == r) add_piece(o, weight_sum, piece_lse[j], piece[j], lse_max);
        }
      }
      store_row<T>(p, req, kv_head, row0 + r, col0, o, weight_sum, lse_max);
    }
  }
}

template <typename T, int kSlotGroups, bool kBatchRows>
__global__ void __launch_bounds__(kColumnThreads* kSlotGroups,
                                  kSlotGroups == 1 && !kBatchRows ? kLeanCtasPerSm : 1)
    combine_kernel(const DecodeParams p, int rows_per_cta) {
  static_assert(!kBatchRows || kSlotGroups == 1, "rows are batched only by a one-group CTA");
  const int req = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int row_begin = blockIdx.z * rows_per_cta;
  stamp(trace::kCombineEntry);
  // The plan is read before the wait below: it was complete before the main kernel read it, so
  // its fetch overlaps the main kernel's tail instead of following it.
  const int64_t slot_begin = p.num_splits[req];
  const int64_t slot_end = p.num_splits[req + 1];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // kMinArchWithDependencyWait
  // Launched programmatically: wait until the main kernel's partials (and everything before it)
  // are visible. Without the launch attribute this returns at once.
  cudaGridDependencySynchronize();
#endif
  stamp(trace::kCombinePriorGridsDone);
  if (slot_end - slot_begin <= 1) {  // its only visit wrote out/lse itself
    stamp(trace::kCombineExit);
    return;
  }
  // Per-group sums of a row and the maximum they are referred to (unused with one group).
  __shared__ float4 group_o[kSlotGroups][kColumnThreads];
  __shared__ float group_weight[kSlotGroups];
  __shared__ float group_lse_max[kSlotGroups];

  const int column_thread = threadIdx.x % kColumnThreads;
  const int group = threadIdx.x / kColumnThreads;
  const int col0 = column_thread * kColsPerThread;
  const int row_end = min(row_begin + rows_per_cta, p.q_rows_per_kv_head);
  if constexpr (kBatchRows) {
    const int64_t num_pieces = slot_end - slot_begin;
    if (num_pieces <= kSlotUnroll) {
      combine_rows_batched<T>(p, req, kv_head, slot_begin, static_cast<int>(num_pieces), row_begin, row_end, col0);
      stamp(trace::kCombineExit);
      return;
    }
  }
  for (int row = row_begin; row < row_end; ++row) {
    // Each group sums its batches against its own running maximum, rescaling when a batch raises
    // it, so a row costs one dependent round of loads per batch and no CTA-wide maximum first.
    float group_max = -INFINITY;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float weight_sum = 0.0f;
    for (int64_t base = slot_begin + group * kSlotUnroll; base < slot_end; base += kSlotGroups * kSlotUnroll) {
      // All loads of a batch first, then the sums: kSlotUnroll partial rows in flight per
      // thread. Slots past the end read as pieces that saw no key.
      float piece_lse[kSlotUnroll];
      float4 piece[kSlotUnroll];
#pragma unroll
      for (int j = 0; j < kSlotUnroll; ++j) {
        piece_lse[j] = -INFINITY;
        piece[j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (base + j < slot_end) {
          const int64_t partial_row = partial_row_index(p, base + j, kv_head, row);
          piece_lse[j] = p.lse_accum[partial_row];
          piece[j] = *reinterpret_cast<const float4*>(&p.o_accum[partial_row * kHeadDimV + col0]);
        }
      }
      float batch_max = group_max;
#pragma unroll
      for (int j = 0; j < kSlotUnroll; ++j) batch_max = fmaxf(batch_max, piece_lse[j]);
      if (row == row_begin && base == slot_begin) stamp(trace::kCombineFirstBatchLoaded);
      rescale_sums(o, weight_sum, group_max, batch_max);
      group_max = batch_max;
#pragma unroll
      for (int j = 0; j < kSlotUnroll; ++j) add_piece(o, weight_sum, piece_lse[j], piece[j], group_max);
    }
    float lse_max = group_max;
    if constexpr (kSlotGroups > 1) {
      group_o[group][column_thread] = o;
      if (column_thread == 0) {
        group_weight[group] = weight_sum;
        group_lse_max[group] = group_max;
      }
      __syncthreads();
      lse_max = group_lse_max[0];
#pragma unroll
      for (int g = 1; g < kSlotGroups; ++g) lse_max = fmaxf(lse_max, group_lse_max[g]);
      o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      weight_sum = 0.0f;
      if (lse_max != -INFINITY) {
        // Groups in order; a group that saw no key has zero sums and factor 0.
#pragma unroll
        for (int g = 0; g < kSlotGroups; ++g) {
          const float factor = expf(group_lse_max[g] - lse_max);
          const float4 other = group_o[g][column_thread];
          o.x = fmaf(factor, other.x, o.x);
          o.y = fmaf(factor, other.y, o.y);
          o.z = fmaf(factor, other.z, o.z);
          o.w = fmaf(factor, other.w, o.w);
          weight_sum = fmaf(factor, group_weight[g], weight_sum);
        }
      }
      // The group sums are rewritten for the next row only after every group has read them.
      __syncthreads();
      if (row == row_begin) stamp(trace::kCombineSummed);
      if (group != 0) continue;
    } else if (row == row_begin) {
      stamp(trace::kCombineSummed);
    }
    store_row<T>(p, req, kv_head, row, col0, o, weight_sum, lse_max);
  }
  stamp(trace::kCombineExit);
}

int rows_per_cta_for(const DecodeParams& params) {
  const int64_t rows = static_cast<int64_t>(params.batch) * params.h_kv * params.q_rows_per_kv_head;
  return static_cast<int>(std::clamp<int64_t>(rows / kTargetCtas, 1, kMaxRowsPerCta));
}

template <typename T, int kSlotGroups, bool kBatchRows = false>
cudaError_t launch_with(const DecodeParams& params, cudaStream_t stream, bool programmatic_dependent_launch,
                        dim3 grid, int rows_per_cta) {
  const auto kernel = combine_kernel<T, kSlotGroups, kBatchRows>;
  // The dependency wait exists only in code built for sm_90+; code JIT-compiled from older PTX
  // would read the partials unsynchronised, so it is launched in plain stream order instead.
  if (programmatic_dependent_launch) {
    cudaFuncAttributes attributes;
    const cudaError_t err = cudaFuncGetAttributes(&attributes, kernel);
    if (err != cudaSuccess) return err;
    if (attributes.ptxVersion < kMinArchWithDependencyWait) programmatic_dependent_launch = false;
  }

  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(kColumnThreads * kSlotGroups);
  config.dynamicSmemBytes = 0;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = programmatic_dependent_launch ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, params, rows_per_cta);
}

template <typename T>
cudaError_t launch(const DecodeParams& params, cudaStream_t stream, bool programmatic_dependent_launch) {
  const int rows_per_cta = rows_per_cta_for(params);
  const int row_groups = (params.q_rows_per_kv_head + rows_per_cta - 1) / rows_per_cta;
  if (params.h_kv > kMaxGridYZ || row_groups > kMaxGridYZ) return cudaErrorInvalidConfiguration;
  const dim3 grid(params.batch, params.h_kv, row_groups);
  int sm_count = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, params.device);
  if (err != cudaSuccess) return err;
  const int64_t ctas = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  if (ctas <= int64_t{kCtasPerSmWithMostGroups} * sm_count) {
    return launch_with<T, kMostSlotGroups>(params, stream, programmatic_dependent_launch, grid, rows_per_cta);
  }
  if (ctas <= int64_t{kCtasPerSmWithManyGroups} * sm_count) {
    return launch_with<T, kManySlotGroups>(params, stream, programmatic_dependent_launch, grid, rows_per_cta);
  }
  // Batching rows pays only where a CTA walks several rows, and its code takes the kernel to 99
  // registers (four CTAs per SM); a grid of one row per CTA (b=8, h_q=128: 1024 CTAs) keeps the
  // lean kernel, which stays resident in one wave at eight CTAs per SM.
  if (rows_per_cta > 1) {
    return launch_with<T, 1, true>(params, stream, programmatic_dependent_launch, grid, rows_per_cta);
  }
  return launch_with<T, 1>(params, stream, programmatic_dependent_launch, grid, rows_per_cta);
}

}  // namespace

#ifdef FLASHMLA_PHASE_TRACE
cudaError_t combine_take_phase_trace(trace::Stamp* host_stamps) {
  return trace::take_table(g_combine_stamps, host_stamps);
}
#endif

cudaError_t run_combine(const DecodeParams& params, cudaStream_t stream,
                        bool programmatic_dependent_launch) {
  if (params.head_dim_v != kHeadDimV) return cudaErrorInvalidValue;
  // float4 loads of partial rows.
  if (reinterpret_cast<uintptr_t>(params.o_accum) % sizeof(float4) != 0) {
    return cudaErrorInvalidValue;
  }
  if (params.batch == 0 || params.h_kv == 0 || params.q_rows_per_kv_head == 0) return cudaSuccess;
  switch (params.dtype) {
    case DType::kBFloat16:
      return launch<__nv_bfloat16>(params, stream, programmatic_dependent_launch);
    case DType::kFloat16:
      return launch<__half>(params, stream, programmatic_dependent_launch);
  }
  return cudaErrorInvalidValue;
}

}  // namespace flashmla
