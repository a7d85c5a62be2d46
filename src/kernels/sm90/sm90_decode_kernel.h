// The persistent warp-specialised decode kernel: one CTA per (64-row query tile, kv head, sm
// part), 3 warpgroups (producer, consumer 0, consumer 1). See README.md in this directory for the
// shared-memory plan and the synchronisation protocol.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include <cuda.h>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include "api/decode_params.h"
#include "kernels/sm90/sm90_epilogue.h"
#include "kernels/sm90/sm90_kernel_traits.h"
#include "kernels/sm90/sm90_mainloop.h"
#include "kernels/sm90/sm90_phase_stamp.h"
#include "kernels/sm90/sm90_seesaw.h"
#include "kernels/sm90/sm90_softmax.h"
#include "kernels/sm90/sm90_tile_scheduler.h"

namespace flashmla::sm90 {

// The split schedule exchanges P through its own tile; the seesaw puts P in the rope piece of the
// leader's K stage and exchanges only per-row values.
template <class Element, Schedule kSchedule>
struct SharedStorage {
  MainloopTensorStorage<Element> tensors;
  std::conditional_t<kSchedule == Schedule::kSeesaw, SeesawExchangeStorage, SoftmaxExchangeStorage<Element>> exchange;
  MainloopBarrierStorage barriers;
};

template <class Element, Schedule kSchedule>
constexpr int kSharedStorageBytes = static_cast<int>(sizeof(SharedStorage<Element, kSchedule>)) + kSmemAlignment;

using SplitStorageBf16 = SharedStorage<cutlass::bfloat16_t, Schedule::kSplit>;
using SplitStorageFp16 = SharedStorage<cutlass::half_t, Schedule::kSplit>;
static_assert(offsetof(SplitStorageBf16, exchange) % kSmemAlignment == 0 &&
                  offsetof(SplitStorageFp16, exchange) % kSmemAlignment == 0,
              "the P tile needs 1024-byte alignment for the 128-byte swizzle");
static_assert(sizeof(MainloopTensorStorage<cutlass::bfloat16_t>) ==
                  (kBlockM * kHeadDim + kStages * kTileElems) * kElementBytes,
              "Q + K stages are packed without padding");
static_assert(kSharedStorageBytes<cutlass::bfloat16_t, Schedule::kSplit> <= kMaxSmemBytes &&
                  kSharedStorageBytes<cutlass::half_t, Schedule::kSplit> <= kMaxSmemBytes &&
                  kSharedStorageBytes<cutlass::bfloat16_t, Schedule::kSeesaw> <= kMaxSmemBytes &&
                  kSharedStorageBytes<cutlass::half_t, Schedule::kSeesaw> <= kMaxSmemBytes,
              "shared memory plan exceeds 227 KB");

using NamedBarrier = cutlass::arch::NamedBarrier;

__device__ __forceinline__ void wait_for_prior_grids() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void allow_dependent_grids() {
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// ---- Producer warpgroup ----------------------------------------------------------------------------

// Waits until the readers of a piece group of a stage released it, then loads the group.
template <class Group, class Element>
__device__ __forceinline__ void load_k_group(const CUtensorMap* tma_k, uint64_t* empty, uint32_t empty_parity,
                                             uint64_t (&full)[kNumPieces], Element* stage_smem, uint64_t hint,
                                             int kv_head, int block, int token_in_page) {
  ArrivalBarrier::wait(empty, empty_parity);
  for (int i = 0; i < Group::kCount; ++i) {
    load_k_piece(tma_k, full, stage_smem, hint, Group::piece(i), kv_head, block, token_in_page);
  }
}

template <Schedule kSchedule, class Storage>
__device__ void produce(const DecodeParams& p, const CUtensorMap* tma_k, const CUtensorMap* tma_q, bool q_by_tma,
                        int k_stream_tiles, Storage& ss) {
  const int warp = (threadIdx.x / 32) % (kThreadsPerWarpgroup / 32);
  const int lane = threadIdx.x % 32;
  const TileScheduler sched(p);
  if (warp == 0) {
    if (lane != 0) return;
    // The block-table entry of the part's first tile depends only on the plan, so it is read
    // beside the first visit's seqlens instead of after them: one dependent global read less
    // before the first K load, which small decodes wait for.
    const int first_req = sched.first_request();
    const TilePage first_page = tile_page(p, sched.begin_tile);
    const bool first_read = first_req <= sched.last_request() && first_page.column < p.max_blocks_per_seq;
    const int first_block = first_read ? cache_block(p, first_req, first_page.column) : 0;
    const uint64_t k_hint = k_cache_hint(gridDim.x, sched.total_tiles, k_stream_tiles);
    PipelineState k_state;
    for (int req = first_req; req <= sched.last_request(); ++req) {
      const Visit v = sched.visit(p, req);
      for (int t = v.tile_begin; t < v.tile_end; ++t) {
        const TilePage page = tile_page(p, t);
        const int block = first_read && req == first_req && t == sched.begin_tile ? first_block
                                                                                   : cache_block(p, req, page.column);
        const int s = k_state.stage;
        uint64_t(&full)[kNumPieces] = ss.barriers.k_full[s];
        auto* stage_smem = ss.tensors.k[s];
        // A fresh barrier counts as having completed the phase before phase 0, so the first
        // round through the ring passes without consumers.
        const uint32_t parity = k_state.phase ^ 1;
        uint64_t* early = &ss.barriers.k_empty_early[s];
        uint64_t* late = &ss.barriers.k_empty_late[s];
        const int head = sched.kv_head;
        const int token = page.token_in_page;
        if constexpr (kSchedule == Schedule::kSplit) {
          load_k_group<EarlyGroup>(tma_k, early, parity, full, stage_smem, k_hint, head, block, token);
          load_k_group<LateGroup>(tma_k, late, parity, full, stage_smem, k_hint, head, block, token);
        } else if (s == 0) {
          load_k_group<SeesawGroup<0, 0>>(tma_k, early, parity, full, stage_smem, k_hint, head, block, token);
          load_k_group<SeesawGroup<1, 0>>(tma_k, late, parity, full, stage_smem, k_hint, head, block, token);
        } else {
          load_k_group<SeesawGroup<0, 1>>(tma_k, early, parity, full, stage_smem, k_hint, head, block, token);
          load_k_group<SeesawGroup<1, 1>>(tma_k, late, parity, full, stage_smem, k_hint, head, block, token);
        }
        if (req == first_req && t == sched.begin_tile) stamp(trace::kMainFirstKIssued);
        k_state.advance();
      }
    }
  } else {
    // With TMA one thread loads Q; the gather needs all 96 loader threads.
    if (q_by_tma && (warp != 1 || lane != 0)) return;
    const int loader_thread = threadIdx.x % kThreadsPerWarpgroup - 32;
    uint32_t q_phase = 0;
    for (int req = sched.first_request(); req <= sched.last_request(); ++req) {
      const Visit v = sched.visit(p, req);
      if (!v.has_tiles()) continue;
      ArrivalBarrier::wait(&ss.barriers.q_empty, q_phase ^ 1);
      if (q_by_tma) {
        load_q_tile_tma(p, tma_q, &ss.barriers.q_full, ss.tensors.q, sched.m_tile, sched.kv_head, req);
      } else {
        load_q_tile(p, sched.m_tile, sched.kv_head, req, ss.tensors.q, loader_thread);
        cp_async_wait_all();
        fence_generic_to_async_proxy();
        ArrivalBarrier::arrive(&ss.barriers.q_full);
      }
      q_phase ^= 1;
    }
  }
}

// ---- Consumer 0: S = QK^T, softmax, its O half -------------------------------------------------------

template <class Element, class Storage>
__device__ void consume_softmax(const DecodeParams& p, Storage& ss) {
  using namespace cute;
  using Traits = KernelTraits<Element>;
  const int tid = threadIdx.x % kThreadsPerWarpgroup;
  const TileScheduler sched(p);

  typename Traits::TiledMmaS mma_s;
  auto thr_s = mma_s.get_thread_slice(tid);
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor tScS = thr_s.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  static_assert(decltype(size(tSrS))::value == 32, "64x64 accumulator: 32 values per thread");

  typename Traits::TiledMmaO mma_o;
  auto thr_o = mma_o.get_thread_slice(tid);
  Tensor tOrO = partition_fragment_C(mma_o, Shape<Int<kBlockM>, Int<kHeadDimVPerConsumer>>{});
  Tensor tOcO = thr_o.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDimVPerConsumer>>{}));

  const int rows[kRowsPerThread] = {sched.m_tile * kBlockM + get<0>(tScS(0)),
                                    sched.m_tile * kBlockM + get<0>(tScS(2))};
  Element* const p_smem = ss.exchange.p;
  PipelineState k_state;
  uint32_t q_phase = 0;
  uint32_t p_phase = 0;  // parity of the P exchanges so far
  OnlineSoftmax softmax;

  for (int req = sched.first_request(); req <= sched.last_request(); ++req) {
    // bar.sync and wgmma need converged warps; the previous visit's stores diverge on padding rows.
    __syncwarp();
    const Visit v = sched.visit(p, req);
    clear(tOrO);
    softmax.reset(v.seqlen, p.s_q, p.q_heads_per_kv_head, p.causal, rows);
    if (v.has_tiles()) ArrivalBarrier::wait(&ss.barriers.q_full, q_phase);
    if (tid == 0 && req == sched.first_request()) stamp(trace::kMainQLanded);

    for (int t = v.tile_begin; t < v.tile_end; ++t) {
      Element* stage_smem = ss.tensors.k[k_state.stage];
      uint64_t(&full)[kNumPieces] = ss.barriers.k_full[k_state.stage];
      const int valid_rows = v.seqlen - t * kBlockN;
      if (valid_rows < kBlockN) {
        zero_v_tail_of_stage(stage_smem, full, k_state.phase, valid_rows, tid, kBarrierSoftmaxWarpgroup);
      }

      gemm_qk<Traits>(ss.tensors.q, stage_smem, full, k_state.phase, tSrS, tid);
      if (tid == 0 && req == sched.first_request() && t == v.tile_begin) stamp(trace::kMainFirstScores);
      if (t + 1 == v.tile_end) ArrivalBarrier::arrive(&ss.barriers.q_empty);

      float rescale[kRowsPerThread];
      softmax.update(tSrS, tScS, t * kBlockN, p.scale_log2, rescale);

      // Consumer 1 is done with the previous P and factors (a fresh barrier passes parity 1).
      ArrivalBarrier::wait(&ss.barriers.p_empty, p_phase ^ 1);
      store_p<Element>(p_smem, tSrS, tScS);
      if (tid % 4 == 0) {
#pragma unroll
        for (int h = 0; h < kRowsPerThread; ++h) ss.exchange.row_factor[get<0>(tScS(2 * h))] = rescale[h];
      }
      fence_generic_to_async_proxy();
      ArrivalBarrier::arrive(&ss.barriers.p_full);
      p_phase ^= 1;
      // This warpgroup's own P.V reads P rows written by its other warps.
      __syncwarp();
      NamedBarrier::sync(kThreadsPerWarpgroup, kBarrierSoftmaxWarpgroup);

      rescale_rows(tOrO, rescale);
      gemm_pv<Traits>(p_smem, stage_smem, tOrO, tid);
      // QK^T and this P.V were the last readers of the early group (consumer 1 reads only the
      // late one). A staged epilogue keeps the visit's last stage until its stores have read it.
      if (t + 1 != v.tile_end || !stages_output(p, v))
        ArrivalBarrier::arrive(&ss.barriers.k_empty_early[k_state.stage]);
      k_state.advance();
    }
    if (v.has_tiles()) q_phase ^= 1;
    if (tid == 0 && req == sched.last_request()) stamp(trace::kMainLoopDone);

    float inv_sum[kRowsPerThread];
    float lse[kRowsPerThread];
    constexpr float kNoOtherSum[kRowsPerThread] = {0.f, 0.f};
    softmax.finalize(p.scale_log2, v.writes_direct() ? INFINITY : -INFINITY, kNoOtherSum, inv_sum, lse);
    ArrivalBarrier::wait(&ss.barriers.p_empty, p_phase ^ 1);
    if (tid % 4 == 0) {
#pragma unroll
      for (int h = 0; h < kRowsPerThread; ++h) ss.exchange.row_factor[get<0>(tScS(2 * h))] = inv_sum[h];
    }
    ArrivalBarrier::arrive(&ss.barriers.p_full);
    p_phase ^= 1;
    if (stages_output(p, v)) {
      const int last_stage = k_state.previous_stage();
      store_o_half_staged<Element>(p, v, sched.m_tile, sched.kv_head, 0, tOrO, tOcO, inv_sum, ss.tensors.k[last_stage],
                                   kBarrierSoftmaxWarpgroup, tid);
      ArrivalBarrier::arrive(&ss.barriers.k_empty_early[last_stage]);
    } else {
      store_o_half<Element>(p, v, sched.m_tile, sched.kv_head, 0, tOrO, tOcO, inv_sum);
    }
    store_lse(p, v, sched.m_tile, sched.kv_head, tOcO, lse, tid);
    if (tid == 0 && req == sched.last_request()) stamp(trace::kMainSoftmaxStored);
  }
}

// ---- Consumer 1: the other O half ------------------------------------------------------------------

template <class Element, class Storage>
__device__ void consume_pv(const DecodeParams& p, Storage& ss) {
  using namespace cute;
  using Traits = KernelTraits<Element>;
  const int tid = threadIdx.x % kThreadsPerWarpgroup;
  const TileScheduler sched(p);

  typename Traits::TiledMmaO mma_o;
  auto thr_o = mma_o.get_thread_slice(tid);
  Tensor tOrO = partition_fragment_C(mma_o, Shape<Int<kBlockM>, Int<kHeadDimVPerConsumer>>{});
  Tensor tOcO = thr_o.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDimVPerConsumer>>{}));
  const int rows_in_tile[kRowsPerThread] = {get<0>(tOcO(0)), get<0>(tOcO(2))};
  constexpr int kVHalfOffset = kVPiecesPerConsumer * kPieceElems;

  PipelineState k_state;
  uint32_t p_phase = 0;  // parity of the P exchanges so far

  for (int req = sched.first_request(); req <= sched.last_request(); ++req) {
    // bar.sync and wgmma need converged warps; the previous visit's stores diverge on padding rows.
    __syncwarp();
    const Visit v = sched.visit(p, req);
    clear(tOrO);
    for (int t = v.tile_begin; t < v.tile_end; ++t) {
      ArrivalBarrier::wait(&ss.barriers.p_full, p_phase);
      float rescale[kRowsPerThread];
#pragma unroll
      for (int h = 0; h < kRowsPerThread; ++h) rescale[h] = ss.exchange.row_factor[rows_in_tile[h]];
      // Consumer 0 saw every piece land before publishing P; waiting here as well gives this
      // warpgroup its own acquire of the TMA writes (the phases cannot have moved on: the stage
      // is not released until this warpgroup arrives on k_empty_late).
      for (int piece = kVPiecesPerConsumer; piece < kNumVPieces; ++piece) {
        ArrivalBarrier::wait(&ss.barriers.k_full[k_state.stage][piece], k_state.phase);
      }
      rescale_rows(tOrO, rescale);
      gemm_pv<Traits>(ss.exchange.p, ss.tensors.k[k_state.stage] + kVHalfOffset, tOrO, tid);
      // Consumer 0's QK^T of this stage retired before it published P, so this P.V is the late
      // group's last reader (or, for a staged epilogue's last tile, its stores are).
      if (t + 1 != v.tile_end || !stages_output(p, v)) ArrivalBarrier::arrive(&ss.barriers.k_empty_late[k_state.stage]);
      ArrivalBarrier::arrive(&ss.barriers.p_empty);
      p_phase ^= 1;
      k_state.advance();
    }
    ArrivalBarrier::wait(&ss.barriers.p_full, p_phase);
    float inv_sum[kRowsPerThread];
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) inv_sum[h] = ss.exchange.row_factor[rows_in_tile[h]];
    ArrivalBarrier::arrive(&ss.barriers.p_empty);
    p_phase ^= 1;
    if (stages_output(p, v)) {
      const int last_stage = k_state.previous_stage();
      store_o_half_staged<Element>(p, v, sched.m_tile, sched.kv_head, kHeadDimVPerConsumer, tOrO, tOcO, inv_sum,
                                   ss.tensors.k[last_stage] + kVHalfOffset, kBarrierPvWarpgroup, tid);
      ArrivalBarrier::arrive(&ss.barriers.k_empty_late[last_stage]);
    } else {
      store_o_half<Element>(p, v, sched.m_tile, sched.kv_head, kHeadDimVPerConsumer, tOrO, tOcO, inv_sum);
    }
    if (tid == 0 && req == sched.last_request()) stamp(trace::kMainPvStored);
  }
}

// ---- The kernel ------------------------------------------------------------------------------------

template <class Element, Schedule kSchedule>
__global__ void __launch_bounds__(kNumThreads, 1)
    sm90_decode_kernel(const __grid_constant__ DecodeParams params, const __grid_constant__ CUtensorMap tma_k,
                       const __grid_constant__ CUtensorMap tma_q, bool q_by_tma, int k_stream_tiles) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ uint8_t smem_raw[];
  // Offset smem_raw itself rather than rounding an integer address: a pointer derived from the
  // __shared__ array keeps its address space, so P, the row factors and the V-tail zeroing compile
  // to shared-memory stores and loads instead of generic ones with 64-bit addresses.
  const uint32_t misalignment = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) % kSmemAlignment;
  const uint32_t padding = (kSmemAlignment - misalignment) % kSmemAlignment;
  using Storage = SharedStorage<Element, kSchedule>;
  Storage& ss = *reinterpret_cast<Storage*>(smem_raw + padding);

  const int warpgroup = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x) / kThreadsPerWarpgroup, 0);
  if (threadIdx.x == 0) {
    stamp(trace::kMainEntry);
    // Under the seesaw both consumers read Q, and each arrives on q_empty.
    constexpr int kQReaders = kSchedule == Schedule::kSeesaw ? kNumConsumerWarpgroups : 1;
    init_mainloop_barriers(ss.barriers, q_by_tma, kQReaders * kThreadsPerWarpgroup);
    if constexpr (kSchedule == Schedule::kSeesaw) init_seesaw_barriers(ss.exchange);
    cutlass::arch::fence_barrier_init();
    cute::prefetch_tma_descriptor(&tma_k);
    if (q_by_tma) cute::prefetch_tma_descriptor(&tma_q);
  }
  __syncthreads();
  // Everything above overlaps the previous kernel's tail; nothing it wrote was read yet.
  wait_for_prior_grids();
  if (threadIdx.x == 0) stamp(trace::kMainPriorGridsDone);

  if (warpgroup == 0) {
    cutlass::arch::warpgroup_reg_dealloc<kProducerRegisters>();
    produce<kSchedule>(params, &tma_k, &tma_q, q_by_tma, k_stream_tiles, ss);
  } else {
    cutlass::arch::warpgroup_reg_alloc<kConsumerRegisters>();
    if constexpr (kSchedule == Schedule::kSeesaw) {
      if (warpgroup == 1) {
        consume_seesaw<0, Element>(params, ss);
      } else {
        consume_seesaw<1, Element>(params, ss);
      }
    } else if (warpgroup == 1) {
      consume_softmax<Element>(params, ss);
    } else {
      consume_pv<Element>(params, ss);
    }
  }
  // Lets the combine kernel get scheduled; it still waits (griddepcontrol.wait) for this grid's
  // writes to be complete and visible.
  allow_dependent_grids();
#endif
}

}  // namespace flashmla::sm90
