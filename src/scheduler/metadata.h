// The split-KV plan shared by the scheduler, every decode kernel and the combine kernel.
//
// Work is counted in tiles of FLASHMLA_BLOCK_N (64) KV tokens: request r has
// n_r = ceil(L_r / 64) tiles. The (request, tile) pairs, ordered by request then tile, are cut into
// num_sm_parts contiguous ranges, one per persistent CTA ("part"). Row p of the metadata describes
// part p:
//   begin_req, end_req   requests the part visits, inclusive; begin_req > end_req: nothing to do
//   begin_tile           first tile of begin_req the part processes
//   end_tile             one past the last tile of end_req the part processes
//   begin_split          partial-result slot of the part's visit to begin_req when that request is
//                        split (see below)
//   total_tiles          tiles of all requests together, clamped to INT32_MAX; the same in every
//                        row (a kernel sizes its KV stream against the L2 cache by it)
// A request between begin_req and end_req is visited whole: tiles [0, n_r).
//
// Every request is visited by at least one part, requests with L = 0 included (that visit writes
// out = 0, lse = +inf). Every visit of a request with L > 0 covers at least one tile. The visits
// of request r are its "pieces", in part order; num_splits[r + 1] - num_splits[r] is their count
// (num_splits[0] = 0). With one piece the visiting part writes out and lse itself. With more, piece
// k writes its fp32 partial (o, lse) to slot num_splits[r] + k of the workspace, and the combine
// kernel merges slots in order k = 0, 1, ...: fixed boundaries and order make results bitwise
// reproducible. A part's visit to begin_req is piece (begin_split - num_splits[begin_req]); its
// visits to later requests are their piece 0. Slots are < batch + num_sm_parts.
#pragma once

#include <cstdint>

#include "flashmla/flashmla.h"

namespace flashmla {

enum MetadataWord : int {
  kMetaBeginReq = 0,
  kMetaBeginTile = 1,
  kMetaEndReq = 2,
  kMetaEndTile = 3,
  kMetaBeginSplit = 4,
  kMetaTotalTiles = 5,
  // Words 6..7 are reserved and written as 0.
};
static_assert(FLASHMLA_METADATA_WORDS > kMetaTotalTiles, "metadata row too short");

// Every visit of a request costs the kernel a prologue/epilogue worth about this many tiles of
// main-loop work (q load, output write, a combine slot); the scheduler charges it so that parts
// with many short requests do not end up with far more wall time than parts with one long one.
constexpr int kVisitOverheadTiles = 5;

// Upper bound on the partial-result slots any plan uses.
inline int64_t max_partial_slots(int64_t batch, int64_t num_sm_parts) {
  return batch + num_sm_parts;
}

}  // namespace flashmla
