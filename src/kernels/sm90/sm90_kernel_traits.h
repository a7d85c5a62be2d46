// Compile-time shape of the Hopper decode kernel: tile sizes, thread roles, register split, the
// CuTe shared-memory layouts and the wgmma tilings every other sm90_*.h header builds on.
#pragma once

#include <cstdint>

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include "api/decode_params.h"
#include "flashmla/flashmla.h"

namespace flashmla::sm90 {

// Query rows of one CTA tile: the M of every wgmma (one warpgroup covers 64 rows).
constexpr int kBlockM = 64;
// KV tokens per tile; the scheduler's unit of work.
constexpr int kBlockN = FLASHMLA_BLOCK_N;
constexpr int kHeadDim = FLASHMLA_HEAD_DIM;
constexpr int kHeadDimV = FLASHMLA_HEAD_DIM_V;
// 64 16-bit columns = 128 bytes: one row of the 128-byte swizzle pattern, and the TMA box width.
constexpr int kPieceCols = 64;
constexpr int kNumPieces = kHeadDim / kPieceCols;   // 9: K tile pieces, each on its own mbarrier
constexpr int kNumVPieces = kHeadDimV / kPieceCols;  // 8: the pieces that double as V
constexpr int kElementBytes = 2;
constexpr int kPieceBytes = kBlockN * kPieceCols * kElementBytes;  // 8 KB per TMA
constexpr int kPieceElems = kBlockN * kPieceCols;
constexpr int kTileElems = kBlockN * kHeadDim;
constexpr int kQTileBytes = kBlockM * kHeadDim * kElementBytes;
constexpr int kStages = 2;  // K tiles in flight

// Thread roles: warpgroup 0 produces (warp 0 issues K TMAs, warps 1..3 load Q), warpgroups 1
// and 2 consume. Consumer 0 computes S = QK^T and the softmax; each consumer owns half of the
// 64 x 512 output accumulator (64 x 256 fp32 = 128 registers per thread).
constexpr int kThreadsPerWarpgroup = 128;
constexpr int kNumConsumerWarpgroups = 2;
constexpr int kNumThreads = kThreadsPerWarpgroup * (1 + kNumConsumerWarpgroups);
constexpr int kQLoaderThreads = kThreadsPerWarpgroup - 32;  // producer warps 1..3
constexpr int kHeadDimVPerConsumer = kHeadDimV / kNumConsumerWarpgroups;       // 256
constexpr int kVPiecesPerConsumer = kNumVPieces / kNumConsumerWarpgroups;      // 4
constexpr int kRopePiece = kNumPieces - 1;  // the 64 rope columns: read by QK^T only

// A K stage is released in two piece groups, each by the last warpgroup that reads it, and the
// producer refills the first group before it waits for the second, so the next load of a stage
// starts before the whole stage is free. A group: `kVPieces` V pieces from `kFirstVPiece` on, plus
// the rope piece when `kWithRope`.
template <int kFirstVPiece, int kVPieces, bool kWithRope>
struct PieceGroup {
  static constexpr int kCount = kVPieces + (kWithRope ? 1 : 0);
  __host__ __device__ static constexpr int piece(int i) { return i < kVPieces ? kFirstVPiece + i : kRopePiece; }
};
// Split schedule: the early group (consumer 0's V half and the rope piece) is free when consumer 0's
// P.V retires, the late group (consumer 1's V half) when consumer 1's does, which is later.
using EarlyGroup = PieceGroup<0, kVPiecesPerConsumer, true>;
using LateGroup = PieceGroup<kVPiecesPerConsumer, kVPiecesPerConsumer, false>;
static_assert(EarlyGroup::kCount + LateGroup::kCount == kNumPieces, "the two groups cover the nine pieces");

// How the two consumer warpgroups share a tile's work.
enum class Schedule {
  // Consumer 0 computes every S = QK^T and softmax; each consumer adds P.V to its O half.
  kSplit,
  // Consumer c leads the tiles of K stage c (QK^T, softmax, P into the stage's rope piece) and
  // follows the other's: one consumer's softmax overlaps the other's GEMMs (sm90_seesaw.h).
  kSeesaw,
};

// Seesaw piece groups: consumer c releases its V half of a stage, plus the rope piece of the
// stage it follows (which then holds the leader's P, read only by the follower).
template <int kConsumer, int kStage>
using SeesawGroup = PieceGroup<kConsumer * kVPiecesPerConsumer, kVPiecesPerConsumer, kConsumer != kStage>;
static_assert(kStages == kNumConsumerWarpgroups, "the seesaw gives each consumer one K stage to lead");

// setmaxnreg budget: 128 * 40 + 256 * 232 = 64512 <= 65536 registers of the SM, and the sum
// equals the 168 per thread that __launch_bounds__(384, 1) starts every warp with.
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
static_assert(kThreadsPerWarpgroup * (kProducerRegisters + kNumConsumerWarpgroups * kConsumerRegisters) <=
                  65536,
              "register split exceeds the register file");

// Named barriers (ids above CUTLASS's reserved ones; cutlass::arch::NamedBarrier adds the offset).
// The P exchange between the consumers uses the mbarriers p_full / p_empty instead: a named
// barrier synced by the two consumers from different instructions is flagged by synccheck, and
// racecheck does not order shared-memory accesses across one.
enum NamedBarrierId : uint32_t {
  // Consumer 0's own warps: P and zeroed V rows written by its other warps are visible before its
  // wgmma reads them.
  kBarrierSoftmaxWarpgroup = 0,
  // Consumer 1's own warps: its staged output rows are complete before they are stored.
  kBarrierPvWarpgroup = 1,
};

// The largest dynamic shared memory a Hopper CTA may opt into (227 KB).
constexpr int kMaxSmemBytes = 227 * 1024;
// Dynamic shared memory is only guaranteed 16-byte alignment; the 128-byte swizzle needs 1024.
constexpr int kSmemAlignment = 1024;

template <class Element_>
struct KernelTraits {
  using Element = Element_;
  static_assert(sizeof(Element) == kElementBytes, "16-bit inputs only");

  // K-major 128-byte-swizzled tiles: 8 rows x 64 columns atoms, stacked down the rows first, so
  // each 64-column piece is a contiguous 64 x 64 block (8 KB), exactly what one TMA box writes.
  using SmemLayoutAtomK = cute::GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ =
      decltype(cute::tile_to_shape(SmemLayoutAtomK{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDim>>{}));
  static_assert(kBlockM == kBlockN, "Q and K tiles share one layout");
  // One K stage; stages are kTileElems apart (the consumers offset the base pointer).
  using SmemLayoutK = SmemLayoutQ;
  using SmemLayoutP =
      decltype(cute::tile_to_shape(SmemLayoutAtomK{}, cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>>{}));
  // V^T for P.V: (dv columns, tokens) over the same bytes as the K tile, dv contiguous within a
  // piece (MN-major for wgmma's B). Tokens vary fastest across atoms (stride 8 rows = 512
  // elements), pieces slowest (4096 elements), matching the K-major layout above. One consumer's
  // 256-column half starts kVPiecesPerConsumer pieces in.
  using SmemLayoutVtHalf = decltype(cute::tile_to_shape(
      cute::GMMA::Layout_MN_SW128_Atom<Element>{},
      cute::Shape<cute::Int<kHeadDimVPerConsumer>, cute::Int<kBlockN>>{}, cute::Step<cute::_2, cute::_1>{}));

  using TiledMmaS = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kBlockM>, cute::Int<kBlockN>, cute::Int<kHeadDim>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::K>()));
  using TiledMmaO = decltype(cute::make_tiled_mma(
      cute::GMMA::ss_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDimVPerConsumer>,
                                             cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>()));
  // P.V with P from registers (the seesaw leader's own tile).
  using TiledMmaORs = decltype(cute::make_tiled_mma(
      cute::GMMA::rs_op_selector<Element, Element, float,
                                 cute::Shape<cute::Int<kBlockM>, cute::Int<kHeadDimVPerConsumer>,
                                             cute::Int<kBlockN>>,
                                 cute::GMMA::Major::K, cute::GMMA::Major::MN>()));
};

// Element offset of (row, col) inside one 64 x 64 K-major 128-byte-swizzled piece: the 16-byte
// chunk index is XORed with the row's position in its 8-row (1024-byte) group. This is the
// pattern TMA's CU_TENSOR_MAP_SWIZZLE_128B writes and SmemLayoutAtomK describes.
__host__ __device__ constexpr int swizzled_piece_offset(int row, int col) {
  return row * kPieceCols + ((((col >> 3) ^ (row & 7)) << 3) | (col & 7));
}

}  // namespace flashmla::sm90
