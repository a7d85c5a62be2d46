// Moving Q and K into shared memory and the two GEMMs that read them there.
//
// Producer side: warp 0 of the producer warpgroup streams 64-token K tiles from the paged cache
// with TMA (4-D tensor map: columns, token in page, kv head, cache block), nine 64-column pieces
// per tile, each completing on its own mbarrier so S = QK^T starts when the first piece lands.
// Q is loaded once per visit: by TMA (warp 1, lane 0) when the visit's 64 packed rows form boxes of
// q, else gathered by warps 1..3 with cp.async.
// Consumer side: wgmma with both operands in shared memory; V is the K tile's first 512 columns,
// read through an MN-major view of the same bytes.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda.h>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>

#include "api/decode_params.h"
#include "kernels/sm90/sm90_kernel_traits.h"

namespace flashmla::sm90 {

template <class Element>
struct MainloopTensorStorage {
  alignas(kSmemAlignment) Element q[kBlockM * kHeadDim];
  alignas(kSmemAlignment) Element k[kStages][kTileElems];
};

struct MainloopBarrierStorage {
  // K pieces landed (1 arrival + kPieceBytes of transactions per use).
  uint64_t k_full[kStages][kNumPieces];
  // Consumer 0 has released its piece group of a stage (the early one) and consumer 1 its own
  // (the late one): kThreadsPerWarpgroup arrivals each.
  uint64_t k_empty_early[kStages];
  uint64_t k_empty_late[kStages];
  // The visit's Q tile is in shared memory: kQLoaderThreads arrivals after the cp.async gather,
  // or 1 arrival + kQTileBytes of transactions when TMA loads it.
  uint64_t q_full;
  // The consumers that read Q issued and retired their last QK^T of the visit.
  uint64_t q_empty;
  // Split schedule: consumer 0 published P and the row factors; consumer 1 finished reading
  // them (kThreadsPerWarpgroup arrivals each).
  uint64_t p_full;
  uint64_t p_empty;
};

// Phase bookkeeping of a ring of `kStages` buffers: every consumer and producer advances its own
// copy in the same order, so the parities agree without communication.
struct PipelineState {
  int stage = 0;
  uint32_t phase = 0;
  __device__ void advance() {
    if (++stage == kStages) {
      stage = 0;
      phase ^= 1;
    }
  }
  // The stage before the current one: the last one used, once a visit with tiles has advanced.
  __device__ int previous_stage() const { return stage == 0 ? kStages - 1 : stage - 1; }
};

using TransactionBarrier = cutlass::arch::ClusterTransactionBarrier;
using ArrivalBarrier = cutlass::arch::ClusterBarrier;

// `q_readers`: the consumer threads that arrive on q_empty once per visit with tiles.
__device__ inline void init_mainloop_barriers(MainloopBarrierStorage& bars, bool q_by_tma, int q_readers) {
  for (int s = 0; s < kStages; ++s) {
    for (int p = 0; p < kNumPieces; ++p) TransactionBarrier::init(&bars.k_full[s][p], 1);
    ArrivalBarrier::init(&bars.k_empty_early[s], kThreadsPerWarpgroup);
    ArrivalBarrier::init(&bars.k_empty_late[s], kThreadsPerWarpgroup);
  }
  ArrivalBarrier::init(&bars.q_full, q_by_tma ? 1 : kQLoaderThreads);
  ArrivalBarrier::init(&bars.q_empty, q_readers);
  ArrivalBarrier::init(&bars.p_full, kThreadsPerWarpgroup);
  ArrivalBarrier::init(&bars.p_empty, kThreadsPerWarpgroup);
}

// Shared memory written by ordinary stores (cp.async included) must be fenced into the async
// proxy by each writing thread before wgmma reads it.
__device__ inline void fence_generic_to_async_proxy() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// ---- Producer ------------------------------------------------------------------------------------

// The L2 policy of the K tile loads, one value per launch. Evict-first, except where one CTA is
// the only reader of each K tile (one query tile per kv head) and the launch's K is several times
// the L2 cache (total_tiles >= stream_tiles, set by the launch from the L2 size): there lines left
// dirty by earlier kernels get written back during the decode either way, and under evict-first
// the decode paid more for that than a plain read of the same bytes (PERFORMANCE.md, v30-v32).
// Smaller K keeps evict-first, which let those lines stay put: the default policy cost small
// decodes 6-10%.
__device__ inline uint64_t k_cache_hint(unsigned query_tiles_per_kv_head, int total_tiles, int stream_tiles) {
  const bool default_policy = query_tiles_per_kv_head == 1 && total_tiles >= stream_tiles;
  return static_cast<uint64_t>(default_policy ? cute::TMA::CacheHintSm90::EVICT_NORMAL
                                              : cute::TMA::CacheHintSm90::EVICT_FIRST);
}

// Issues the TMA of one 64-column piece of a K tile. Called by a single thread.
template <class Element>
__device__ inline void load_k_piece(const CUtensorMap* tma_k, uint64_t (&full)[kNumPieces], Element* stage_smem,
                                    uint64_t cache_hint, int piece, int kv_head, int cache_block,
                                    int token_in_page) {
  TransactionBarrier::arrive_and_expect_tx(&full[piece], kPieceBytes);
  cute::SM90_TMA_LOAD_4D::copy(tma_k, &full[piece], cache_hint, stage_smem + piece * kPieceElems,
                               piece * kPieceCols, token_in_page, kv_head, cache_block);
}

// Loads the visit's 64 packed query rows with nine piece TMAs (called by a single thread). The q
// tensor map is (column, head, query position, request) with a box of (64, min(g, 64),
// max(1, 64 / g), 1), so a box is one piece of the packed rows in order whenever g divides 64 or
// 64 divides g; positions past s_q read as zeros (the padding rows).
template <class Element>
__device__ inline void load_q_tile_tma(const DecodeParams& p, const CUtensorMap* tma_q, uint64_t* full,
                                       Element* q_smem, int m_tile, int kv_head, int request) {
  const int g = p.q_heads_per_kv_head;
  const int first_row = m_tile * kBlockM;
  const int head = kv_head * g + first_row % g;
  const int s = first_row / g;
  TransactionBarrier::arrive_and_expect_tx(full, kQTileBytes);
#pragma unroll
  for (int piece = 0; piece < kNumPieces; ++piece) {
    cute::SM90_TMA_LOAD_4D::copy(tma_q, full, static_cast<uint64_t>(cute::TMA::CacheHintSm90::EVICT_FIRST),
                                 q_smem + piece * kPieceElems, piece * kPieceCols, head, s, request);
  }
}

// Where a tile of a request lives in the paged cache: its block-table column and the first token
// of the tile inside that page (a 64-token tile never straddles a page because page_block_size is
// a multiple of 64).
struct TilePage {
  int column;
  int token_in_page;
};

__device__ inline TilePage tile_page(const DecodeParams& p, int tile) {
  const int token = tile * kBlockN;
  const int column = token / p.page_block_size;
  return {column, token - column * p.page_block_size};
}

__device__ inline int cache_block(const DecodeParams& p, int request, int column) {
  return p.block_table[static_cast<int64_t>(request) * p.block_table_batch_stride + column];
}

__device__ inline void cp_async_16_zfill(void* smem_dst, const void* gmem_src, bool valid) {
  const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes)
               : "memory");
}

__device__ inline void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// Gathers rows [m_tile * 64, m_tile * 64 + 64) of kv head `kv_head` of `request` into the
// swizzled Q tile; packed row r = s * g + j is q[request, s, kv_head * g + j, :]. Rows past
// q_rows_per_kv_head are zero-filled (finite, never stored). Called by the kQLoaderThreads.
template <class Element>
__device__ inline void load_q_tile(const DecodeParams& p, int m_tile, int kv_head, int request, Element* q_smem,
                                   int loader_thread) {
  constexpr int kChunkElems = 16 / kElementBytes;
  constexpr int kChunksPerRow = kHeadDim / kChunkElems;
  constexpr int kChunksPerPiece = kPieceCols / kChunkElems;
  constexpr int kChunks = kBlockM * kChunksPerRow;
  static_assert(kChunks % kQLoaderThreads == 0, "Q chunks split evenly across loader threads");
  const Element* q = static_cast<const Element*>(p.q) + static_cast<int64_t>(request) * p.q_batch_stride;
  const int g = p.q_heads_per_kv_head;
#pragma unroll 4
  for (int idx = loader_thread; idx < kChunks; idx += kQLoaderThreads) {
    const int row = idx / kChunksPerRow;
    const int chunk = idx - row * kChunksPerRow;
    const int packed_row = m_tile * kBlockM + row;
    const bool valid = packed_row < p.q_rows_per_kv_head;
    const int s = packed_row / g;
    const int head = kv_head * g + (packed_row - s * g);
    const Element* src = valid ? q + s * p.q_seq_stride + head * p.q_head_stride + chunk * kChunkElems : q;
    Element* dst = q_smem + (chunk / kChunksPerPiece) * kPieceElems +
                   swizzled_piece_offset(row, (chunk % kChunksPerPiece) * kChunkElems);
    cp_async_16_zfill(dst, src, valid);
  }
}

// ---- Consumers -----------------------------------------------------------------------------------

// The last tile of a request ends inside a page whose remaining rows hold anything (NaN in the
// tests). Scores of those tokens are masked, but wgmma computes 0 * NaN = NaN in P.V, so the V
// columns of rows [first_invalid_row, 64) are zeroed before any GEMM reads the stage. The rope
// piece is left alone: it only feeds QK^T, whose affected columns are masked by index.
template <class Element>
__device__ inline void zero_v_tail(Element* stage_smem, int first_invalid_row, int thread_in_warpgroup) {
  constexpr int kChunkElems = 16 / kElementBytes;
  constexpr int kChunksPerRow = kPieceCols / kChunkElems;  // a swizzle permutes chunks within a row
  constexpr int kChunksPerTokenRow = kNumVPieces * kChunksPerRow;
  const int n = (kBlockN - first_invalid_row) * kChunksPerTokenRow;
  // The trip count is the same for every warp of the warpgroup, so all of them reach the barriers
  // that follow from the same loop exit.
  for (int base = 0; base < n; base += kThreadsPerWarpgroup) {
    const int idx = base + thread_in_warpgroup;
    if (idx < n) {
      const int row = first_invalid_row + idx / kChunksPerTokenRow;
      const int rem = idx % kChunksPerTokenRow;
      const int piece = rem / kChunksPerRow;
      const int chunk = rem % kChunksPerRow;
      *reinterpret_cast<uint4*>(stage_smem + piece * kPieceElems + row * kPieceCols + chunk * kChunkElems) =
          make_uint4(0, 0, 0, 0);
    }
  }
}

// The warpgroup that computes S of a request's last, partial tile zeroes the V rows past the request's
// end once the V pieces have landed, and syncs its warpgroup (named barrier `barrier_id`) so that
// its own P.V sees them; the other consumer sees them through the P exchange.
template <class Element>
__device__ inline void zero_v_tail_of_stage(Element* stage_smem, uint64_t (&full)[kNumPieces], uint32_t phase,
                                            int valid_rows, int thread_in_warpgroup, uint32_t barrier_id) {
  for (int piece = 0; piece < kNumVPieces; ++piece) ArrivalBarrier::wait(&full[piece], phase);
  zero_v_tail(stage_smem, valid_rows, thread_in_warpgroup);
  fence_generic_to_async_proxy();
  __syncwarp();
  cutlass::arch::NamedBarrier::sync(kThreadsPerWarpgroup, barrier_id);
}

// Issues S = Q K^T over the nine pieces of a K stage as two commit groups, First's pieces before
// Second's (PieceGroup types): the group the producer refills first is consumed first, so the
// second group's wait overlaps the first group's wgmmas. Each group waits for all its pieces, then
// issues its wgmmas: a barrier wait between single wgmmas makes ptxas insert a wgmma.fence after it
// (advisory C7519). Returns with the two groups in flight.
template <class Traits, class First, class Second, class TensorS>
__device__ inline void issue_qk(typename Traits::Element* q_smem, typename Traits::Element* stage_smem,
                                uint64_t (&full)[kNumPieces], uint32_t phase, TensorS& tSrS, int thread_in_warpgroup) {
  using namespace cute;
  static_assert(First::kCount + Second::kCount == kNumPieces, "the two groups cover the stage");
  typename Traits::TiledMmaS mma;
  auto thr = mma.get_thread_slice(thread_in_warpgroup);
  Tensor sQ = make_tensor(make_smem_ptr(q_smem), typename Traits::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(stage_smem), typename Traits::SmemLayoutK{});
  Tensor tSrQ = thr.partition_fragment_A(sQ);
  Tensor tSrK = thr.partition_fragment_B(sK);
  constexpr int kKBlocksPerPiece = kPieceCols / 16;
  static_assert(decltype(size<2>(tSrQ))::value == kNumPieces * kKBlocksPerPiece, "k-blocks per piece");

  auto issue_group = [&](auto group) {
    using Group = decltype(group);
#pragma unroll
    for (int i = 0; i < Group::kCount; ++i) ArrivalBarrier::wait(&full[Group::piece(i)], phase);
    warpgroup_arrive();
#pragma unroll
    for (int i = 0; i < Group::kCount; ++i) {
      const int p = Group::piece(i);
#pragma unroll
      for (int kb = 0; kb < kKBlocksPerPiece; ++kb) {
        cute::gemm(mma, tSrQ(_, _, p * kKBlocksPerPiece + kb), tSrK(_, _, p * kKBlocksPerPiece + kb), tSrS);
        mma.accumulate_ = GMMA::ScaleOut::One;
      }
    }
    warpgroup_commit_batch();
  };
  mma.accumulate_ = GMMA::ScaleOut::Zero;
  warpgroup_fence_operand(tSrS);
  issue_group(First{});
  issue_group(Second{});
}

// S = Q K^T over the nine pieces of a K stage, early group first (the split schedule).
template <class Traits, class TensorS>
__device__ inline void gemm_qk(typename Traits::Element* q_smem, typename Traits::Element* stage_smem,
                               uint64_t (&full)[kNumPieces], uint32_t phase, TensorS& tSrS,
                               int thread_in_warpgroup) {
  issue_qk<Traits, EarlyGroup, LateGroup>(q_smem, stage_smem, full, phase, tSrS, thread_in_warpgroup);
  cute::warpgroup_wait<0>();
  cute::warpgroup_fence_operand(tSrS);
}

// Issues O_half += P V_half (P in shared memory), where V_half is this consumer's 256 dv columns of
// the K stage, as one commit group. Returns with it in flight.
template <class Traits, class TensorO>
__device__ inline void issue_pv(typename Traits::Element* p_smem, typename Traits::Element* v_half_smem,
                                TensorO& tOrO, int thread_in_warpgroup) {
  using namespace cute;
  typename Traits::TiledMmaO mma;
  auto thr = mma.get_thread_slice(thread_in_warpgroup);
  Tensor sP = make_tensor(make_smem_ptr(p_smem), typename Traits::SmemLayoutP{});
  Tensor sVt = make_tensor(make_smem_ptr(v_half_smem), typename Traits::SmemLayoutVtHalf{});
  Tensor tOrP = thr.partition_fragment_A(sP);
  Tensor tOrV = thr.partition_fragment_B(sVt);

  mma.accumulate_ = GMMA::ScaleOut::One;
  warpgroup_fence_operand(tOrO);
  warpgroup_arrive();
#pragma unroll
  for (int kb = 0; kb < decltype(size<2>(tOrP))::value; ++kb) {
    cute::gemm(mma, tOrP(_, _, kb), tOrV(_, _, kb), tOrO);
  }
  warpgroup_commit_batch();
}

// O_half += P V_half with P in shared memory, waited for.
template <class Traits, class TensorO>
__device__ inline void gemm_pv(typename Traits::Element* p_smem, typename Traits::Element* v_half_smem,
                               TensorO& tOrO, int thread_in_warpgroup) {
  issue_pv<Traits>(p_smem, v_half_smem, tOrO, thread_in_warpgroup);
  cute::warpgroup_wait<0>();
  cute::warpgroup_fence_operand(tOrO);
}

// The register fragment of P as the A operand of TiledMmaORs. For 16-bit A, the wgmma A fragment
// of a 64 x 16 k-block holds the same (row, column) pairs, in the same order, as the 64 x 64 fp32
// accumulator holds for columns 16 kb .. 16 kb + 15, so value i of S becomes value i of P.
using PRegsLayout = cute::Layout<cute::Shape<cute::Shape<cute::_2, cute::_2, cute::_2>, cute::_1, cute::_4>,
                                 cute::Stride<cute::Stride<cute::_1, cute::_2, cute::_4>, cute::_0, cute::_8>>;

// Issues O_half += P V_half with P in registers (`tOrP`, PRegsLayout), as one commit group. The
// registers of tOrP must stay untouched until it retires.
template <class Traits, class TensorP, class TensorO>
__device__ inline void issue_pv_rs(TensorP& tOrP, typename Traits::Element* v_half_smem, TensorO& tOrO,
                                   int thread_in_warpgroup) {
  using namespace cute;
  typename Traits::TiledMmaORs mma;
  auto thr = mma.get_thread_slice(thread_in_warpgroup);
  Tensor sVt = make_tensor(make_smem_ptr(v_half_smem), typename Traits::SmemLayoutVtHalf{});
  Tensor tOrV = thr.partition_fragment_B(sVt);
  static_assert(std::is_same_v<decltype(thr.partition_fragment_A(
                                            make_tensor(make_smem_ptr(v_half_smem), typename Traits::SmemLayoutP{}))
                                            .layout()),
                               PRegsLayout>,
                "P's register layout is the one the S accumulator converts to");

  mma.accumulate_ = GMMA::ScaleOut::One;
  warpgroup_fence_operand(tOrP);
  warpgroup_fence_operand(tOrO);
  warpgroup_arrive();
#pragma unroll
  for (int kb = 0; kb < decltype(size<2>(tOrP))::value; ++kb) {
    cute::gemm(mma, tOrP(_, _, kb), tOrV(_, _, kb), tOrO);
  }
  warpgroup_commit_batch();
}

}  // namespace flashmla::sm90
