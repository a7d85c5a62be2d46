// The seesaw consumer schedule (Schedule::kSeesaw): both consumer warpgroups compute S = QK^T and
// the softmax, consumer c for the tiles that land in K stage c (it "leads" them), and each adds
// every tile's P.V to its own 64 x 256 half of O. While one consumer runs a softmax, the tensor
// pipe has the other's GEMMs to run, which the split schedule's single softmax warpgroup leaves
// idle.
//
// Per tile the leader:
//   issues QK^T (consumer 0 first follows the previous tile, consumer 1 issues the QK^T of its tile
//   first and follows the previous tile while it runs; see below), runs the softmax against the
//   reference max the previous tile's leader published, writes P into the stage's rope piece (dead
//   once its QK^T retired) and its row factors and max into its exchange slot, arrives on p_full,
//   and adds its own P.V from registers.
// The follower waits for p_full, takes the max and factors, rescales its half of O and adds P.V
// with P from the rope piece.
//
// Order within a pair of tiles (stage 0's, then stage 1's): consumer 1 issues its QK^T while
// consumer 0 runs the first softmax, then its follow-up P.V of stage 0's tile, then its own softmax;
// consumer 0 meanwhile adds its own P.V and follows stage 1's tile before it issues its next
// QK^T, so that it frees its group of stage 1 (and stage 1's next load starts) early.
//
// Release of a stage (piece groups, SeesawGroup): each consumer frees its V half after its P.V of
// the tile, the follower also the rope piece (its P). Only the follower reads P from shared memory.
//
// End of a visit: the two consumers swap their shares of the row sums (sum_full / sum_empty);
// both know the final reference max, since each took part in every tile.
#pragma once

#include <cmath>
#include <cstdint>

#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "api/decode_params.h"
#include "kernels/sm90/sm90_epilogue.h"
#include "kernels/sm90/sm90_kernel_traits.h"
#include "kernels/sm90/sm90_mainloop.h"
#include "kernels/sm90/sm90_phase_stamp.h"
#include "kernels/sm90/sm90_softmax.h"
#include "kernels/sm90/sm90_tile_scheduler.h"

namespace flashmla::sm90 {

struct SeesawExchangeStorage {
  // Per K stage (= per leader): the row factors and reference max after the tile it led last.
  float row_factor[kStages][kBlockM];
  float row_max[kStages][kBlockM];
  // Per consumer: its quad-reduced share of the row sums at the end of a visit.
  float row_sum[kNumConsumerWarpgroups][kBlockM];
  // The leader of a stage's tile published P, the factors and the max (kThreadsPerWarpgroup
  // arrivals); the follower has read the factors and the max (kThreadsPerWarpgroup).
  uint64_t p_full[kStages];
  uint64_t p_empty[kStages];
  // A consumer's share of the sums is written; the other consumer has read it.
  uint64_t sum_full[kNumConsumerWarpgroups];
  uint64_t sum_empty[kNumConsumerWarpgroups];
};

__device__ inline void init_seesaw_barriers(SeesawExchangeStorage& ex) {
  for (int s = 0; s < kStages; ++s) {
    ArrivalBarrier::init(&ex.p_full[s], kThreadsPerWarpgroup);
    ArrivalBarrier::init(&ex.p_empty[s], kThreadsPerWarpgroup);
  }
  for (int c = 0; c < kNumConsumerWarpgroups; ++c) {
    ArrivalBarrier::init(&ex.sum_full[c], kThreadsPerWarpgroup);
    ArrivalBarrier::init(&ex.sum_empty[c], kThreadsPerWarpgroup);
  }
}

// The barrier on which consumer c releases its piece group of a stage (the producer waits for
// consumer 0's group first).
template <int kConsumer>
__device__ __forceinline__ uint64_t* seesaw_release_barrier(MainloopBarrierStorage& bars, int stage) {
  return kConsumer == 0 ? &bars.k_empty_early[stage] : &bars.k_empty_late[stage];
}

// The 64 x 64 P tile of the tile led in `stage`: its rope piece.
template <class Element>
__device__ __forceinline__ Element* seesaw_p_tile(Element* stage_smem) {
  return stage_smem + kRopePiece * kPieceElems;
}

// Whether `pred` holds for any thread of the calling warpgroup: a reduction on its own named
// barrier (`barrier_id`, numbered as for cutlass::arch::NamedBarrier), uniform across the warpgroup.
__device__ __forceinline__ bool warpgroup_any(bool pred, uint32_t barrier_id) {
  const uint32_t id = barrier_id + cutlass::arch::NamedBarrier::ReservedNamedBarrierCount;
  uint32_t any;
  asm volatile(
      "{\n .reg .pred p, q;\n setp.ne.u32 p, %1, 0;\n barrier.cta.red.or.pred q, %2, %3, p;\n"
      " selp.u32 %0, 1, 0, q;\n}\n"
      : "=r"(any)
      : "r"(static_cast<uint32_t>(pred)), "r"(id), "n"(kThreadsPerWarpgroup)
      : "memory");
  return any != 0;
}

template <int kConsumer, class Element, class Storage>
__device__ void consume_seesaw(const DecodeParams& p, Storage& ss) {
  using namespace cute;
  using Traits = KernelTraits<Element>;
  constexpr int kOther = 1 - kConsumer;
  // Consumer 0 finishes its part of a pair first and follows the pair's second tile before its
  // next QK^T; consumer 1 issues its QK^T before it follows the pair's first tile.
  constexpr bool kFollowBeforeQk = kConsumer == 0;
  constexpr uint32_t kOwnBarrier = kConsumer == 0 ? kBarrierSoftmaxWarpgroup : kBarrierPvWarpgroup;
  constexpr int kVHalfOffset = kConsumer * kVPiecesPerConsumer * kPieceElems;
  const int tid = threadIdx.x % kThreadsPerWarpgroup;
  const TileScheduler sched(p);
  SeesawExchangeStorage& ex = ss.exchange;

  typename Traits::TiledMmaS mma_s;
  auto thr_s = mma_s.get_thread_slice(tid);
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<kBlockM>, Int<kBlockN>>{});
  Tensor tScS = thr_s.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  static_assert(decltype(size(tSrS))::value == 32, "64x64 accumulator: 32 values per thread");
  Tensor tOrP = make_tensor<Element>(PRegsLayout{});
  static_assert(decltype(size(tOrP))::value == decltype(size(tSrS))::value, "P holds S's values");

  typename Traits::TiledMmaO mma_o;
  auto thr_o = mma_o.get_thread_slice(tid);
  Tensor tOrO = partition_fragment_C(mma_o, Shape<Int<kBlockM>, Int<kHeadDimVPerConsumer>>{});
  Tensor tOcO = thr_o.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kHeadDimVPerConsumer>>{}));

  const int rows_in_tile[kRowsPerThread] = {get<0>(tScS(0)), get<0>(tScS(2))};
  const int rows[kRowsPerThread] = {sched.m_tile * kBlockM + rows_in_tile[0], sched.m_tile * kBlockM + rows_in_tile[1]};
  PipelineState k_state;
  uint32_t q_phase = 0;
  uint32_t sum_phase = 0;
  OnlineSoftmax softmax;

  // Follow-up of a tile the other consumer led (stage kOther, phase `phase`): takes its max and
  // factors.
  float follow_rescale[kRowsPerThread];
  auto take_follow = [&](uint32_t phase) {
    ArrivalBarrier::wait(&ex.p_full[kOther], phase);
    float max[kRowsPerThread];
#pragma unroll
    for (int h = 0; h < kRowsPerThread; ++h) {
      follow_rescale[h] = ex.row_factor[kOther][rows_in_tile[h]];
      max[h] = ex.row_max[kOther][rows_in_tile[h]];
    }
    ArrivalBarrier::arrive(&ex.p_empty[kOther]);
    // The leader saw these pieces land; waiting as well gives this warpgroup its own acquire of
    // the TMA writes (the stage cannot move on before this warpgroup releases its group).
#pragma unroll
    for (int i = 0; i < kVPiecesPerConsumer; ++i) {
      ArrivalBarrier::wait(&ss.barriers.k_full[kOther][kConsumer * kVPiecesPerConsumer + i], phase);
    }
    softmax.follow(max, follow_rescale);
  };
  auto issue_follow_pv = [&] {
    Element* stage_smem = ss.tensors.k[kOther];
    issue_pv<Traits>(seesaw_p_tile(stage_smem), stage_smem + kVHalfOffset, tOrO, tid);
  };
  // The whole follow-up, waited for.
  auto follow = [&](uint32_t phase) {
    take_follow(phase);
    rescale_rows(tOrO, follow_rescale);
    issue_follow_pv();
    warpgroup_wait<0>();
    warpgroup_fence_operand(tOrO);
  };

  for (int req = sched.first_request(); req <= sched.last_request(); ++req) {
    // bar.sync and wgmma need converged warps; the previous visit's stores diverge on padding rows.
    __syncwarp();
    const Visit v = sched.visit(p, req);
    clear(tOrO);
    softmax.reset(v.seqlen, p.s_q, p.q_heads_per_kv_head, p.causal, rows);
    const bool staged = stages_output(p, v);
    // Tile i of the visit lands in stage (first stage + i) % 2; this consumer's last QK^T of the
    // visit is that of the last such tile in its stage.
    const int num_tiles = v.tile_end - v.tile_begin;
    const int last_lead = num_tiles - 1 - ((k_state.stage + num_tiles - 1) % kStages != kConsumer ? 1 : 0);
    if (v.has_tiles()) {
      if (last_lead >= 0) {
        ArrivalBarrier::wait(&ss.barriers.q_full, q_phase);
      } else {
        ArrivalBarrier::arrive(&ss.barriers.q_empty);  // no QK^T of this consumer reads this Q
      }
    }

    bool pending = false;  // a tile of the other consumer waits for this half's P.V
    uint32_t pending_phase = 0;
    for (int t = v.tile_begin; t < v.tile_end; ++t) {
      if (k_state.stage != kConsumer) {
        pending = true;
        pending_phase = k_state.phase;
        k_state.advance();
        continue;
      }
      Element* stage_smem = ss.tensors.k[kConsumer];
      uint64_t(&full)[kNumPieces] = ss.barriers.k_full[kConsumer];
      if (kFollowBeforeQk && pending) {
        follow(pending_phase);
        ArrivalBarrier::arrive(seesaw_release_barrier<kConsumer>(ss.barriers, kOther));
        pending = false;
      }
      const int valid_rows = v.seqlen - t * kBlockN;
      if (valid_rows < kBlockN) {
        zero_v_tail_of_stage(stage_smem, full, k_state.phase, valid_rows, tid, kOwnBarrier);
      }
      issue_qk<Traits, SeesawGroup<0, kConsumer>, SeesawGroup<1, kConsumer>>(ss.tensors.q, stage_smem, full,
                                                                          k_state.phase, tSrS, tid);
      float rescale[kRowsPerThread];
      // The softmax and P's publication, with a follow-up P.V in flight or not. Two straight paths:
      // with the follow-up's issue and its waits under one runtime branch, ptxas serialises every
      // wgmma (advisory C7514).
      auto softmax_and_publish = [&](auto follows_now) {
        if constexpr (decltype(follows_now)::value) {
          // Touching O while QK^T is in flight makes ptxas wait for it (advisory C7517), so the
          // rare tile that moves a row's max retires QK^T before the rescale.
          take_follow(pending_phase);
          if (warpgroup_any(warp_needs_rescale(follow_rescale), kOwnBarrier)) {
            warpgroup_wait<0>();
            warpgroup_fence_operand(tOrO);
            rescale_rows(tOrO, follow_rescale);
          }
          issue_follow_pv();
          warpgroup_wait<1>();
        } else {
          warpgroup_wait<0>();
        }
        warpgroup_fence_operand(tSrS);
        if (t - v.tile_begin == last_lead) ArrivalBarrier::arrive(&ss.barriers.q_empty);
        softmax.update(tSrS, tScS, t * kBlockN, p.scale_log2, rescale);
        // The follower has read this slot's previous factors (a fresh barrier passes parity 1).
        ArrivalBarrier::wait(&ex.p_empty[kConsumer], k_state.phase ^ 1);
        store_p<Element>(seesaw_p_tile(stage_smem), tSrS, tScS);
        if (tid % 4 == 0) {
#pragma unroll
          for (int h = 0; h < kRowsPerThread; ++h) {
            ex.row_factor[kConsumer][rows_in_tile[h]] = rescale[h];
            ex.row_max[kConsumer][rows_in_tile[h]] = softmax.row_max[h];
          }
        }
        fence_generic_to_async_proxy();
        ArrivalBarrier::arrive(&ex.p_full[kConsumer]);
#pragma unroll
        for (int i = 0; i < size(tSrS); ++i) tOrP(i) = static_cast<Element>(tSrS(i));
        if constexpr (decltype(follows_now)::value) {
          warpgroup_wait<0>();
          warpgroup_fence_operand(tOrO);
          ArrivalBarrier::arrive(seesaw_release_barrier<kConsumer>(ss.barriers, kOther));
        }
      };
      if (!kFollowBeforeQk && pending) {
        softmax_and_publish(cute::true_type{});
        pending = false;
      } else {
        softmax_and_publish(cute::false_type{});
      }
      rescale_rows(tOrO, rescale);
      issue_pv_rs<Traits>(tOrP, stage_smem + kVHalfOffset, tOrO, tid);
      warpgroup_wait<0>();
      warpgroup_fence_operand(tOrO);
      warpgroup_fence_operand(tOrP);
      // A staged epilogue keeps the visit's last stage until its stores have read it.
      if (t + 1 != v.tile_end || !staged) {
        ArrivalBarrier::arrive(seesaw_release_barrier<kConsumer>(ss.barriers, kConsumer));
      }
      k_state.advance();
    }
    if (pending) {  // the visit's last tile was the other consumer's
      follow(pending_phase);
      if (!staged) ArrivalBarrier::arrive(seesaw_release_barrier<kConsumer>(ss.barriers, kOther));
    }
    if (v.has_tiles()) q_phase ^= 1;
    if (tid == 0 && req == sched.last_request()) stamp(trace::kMainLoopDone);

    float other_sum[kRowsPerThread] = {0.f, 0.f};
    if (v.has_tiles()) {
      float own_sum[kRowsPerThread];
#pragma unroll
      for (int h = 0; h < kRowsPerThread; ++h) own_sum[h] = softmax.quad_row_sum(h);
      ArrivalBarrier::wait(&ex.sum_empty[kConsumer], sum_phase ^ 1);
      if (tid % 4 == 0) {
#pragma unroll
        for (int h = 0; h < kRowsPerThread; ++h) ex.row_sum[kConsumer][rows_in_tile[h]] = own_sum[h];
      }
      ArrivalBarrier::arrive(&ex.sum_full[kConsumer]);
      ArrivalBarrier::wait(&ex.sum_full[kOther], sum_phase);
#pragma unroll
      for (int h = 0; h < kRowsPerThread; ++h) other_sum[h] = ex.row_sum[kOther][rows_in_tile[h]];
      ArrivalBarrier::arrive(&ex.sum_empty[kOther]);
      sum_phase ^= 1;
    }
    float inv_sum[kRowsPerThread];
    float lse[kRowsPerThread];
    softmax.finalize(p.scale_log2, v.writes_direct() ? INFINITY : -INFINITY, other_sum, inv_sum, lse);
    if (staged) {
      const int last_stage = k_state.previous_stage();
      store_o_half_staged<Element>(p, v, sched.m_tile, sched.kv_head, kConsumer * kHeadDimVPerConsumer, tOrO, tOcO,
                                   inv_sum, ss.tensors.k[last_stage] + kVHalfOffset, kOwnBarrier, tid);
      ArrivalBarrier::arrive(seesaw_release_barrier<kConsumer>(ss.barriers, last_stage));
    } else {
      store_o_half<Element>(p, v, sched.m_tile, sched.kv_head, kConsumer * kHeadDimVPerConsumer, tOrO, tOcO, inv_sum);
    }
    if (kConsumer == 0) store_lse(p, v, sched.m_tile, sched.kv_head, tOcO, lse, tid);
    if (tid == 0 && req == sched.last_request()) {
      stamp(kConsumer == 0 ? trace::kMainSoftmaxStored : trace::kMainPvStored);
    }
  }
}

}  // namespace flashmla::sm90
