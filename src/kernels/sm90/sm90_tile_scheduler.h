// Maps a CTA to its work: blockIdx = (64-row query tile, kv head, sm part), and the part's visits
// from the split-KV plan (src/scheduler/metadata.h). Every role of the CTA walks the same visits
// with its own copy of the scheduler, so they agree without talking.
#pragma once

#include <cstdint>

#include "api/decode_params.h"
#include "kernels/sm90/sm90_kernel_traits.h"
#include "scheduler/metadata.h"

namespace flashmla::sm90 {

// One request as seen by one part: its KV tiles [tile_begin, tile_end) and where the result goes.
struct Visit {
  int request;
  int seqlen;
  int tile_begin;
  int tile_end;
  // Workspace slot of this piece, or kDirectWrite when the request has one piece and the visit
  // writes out/lse itself.
  int slot;

  static constexpr int kDirectWrite = -1;

  __device__ bool has_tiles() const { return tile_end > tile_begin; }
  __device__ bool writes_direct() const { return slot == kDirectWrite; }
};

struct TileScheduler {
  int m_tile;
  int kv_head;
  int begin_req;
  int end_req;
  int begin_tile;
  int end_tile;
  int begin_split;
  int total_tiles;  // of the whole plan, every request's

  __device__ explicit TileScheduler(const DecodeParams& p) {
    m_tile = static_cast<int>(blockIdx.x);
    kv_head = static_cast<int>(blockIdx.y);
    const int32_t* meta = p.tile_metadata + static_cast<int64_t>(blockIdx.z) * FLASHMLA_METADATA_WORDS;
    begin_req = meta[kMetaBeginReq];
    begin_tile = meta[kMetaBeginTile];
    end_req = meta[kMetaEndReq];
    end_tile = meta[kMetaEndTile];
    begin_split = meta[kMetaBeginSplit];
    total_tiles = meta[kMetaTotalTiles];
  }

  // Requests begin_req..end_req inclusive (none when begin_req > end_req).
  __device__ int first_request() const { return begin_req; }
  __device__ int last_request() const { return end_req; }

  __device__ Visit visit(const DecodeParams& p, int request) const {
    Visit v;
    v.request = request;
    v.seqlen = p.seqlens[request];
    const int num_tiles = (v.seqlen + kBlockN - 1) / kBlockN;
    v.tile_begin = request == begin_req ? begin_tile : 0;
    v.tile_end = request == end_req ? end_tile : num_tiles;
    // Defensive: a tile past the request's last one would read an unmapped block-table entry.
    v.tile_end = v.tile_end < num_tiles ? v.tile_end : num_tiles;
    v.tile_begin = v.tile_begin < v.tile_end ? v.tile_begin : v.tile_end;
    const int first_slot = p.num_splits[request];
    const int num_pieces = p.num_splits[request + 1] - first_slot;
    if (num_pieces <= 1) {
      v.slot = Visit::kDirectWrite;
    } else {
      v.slot = request == begin_req ? begin_split : first_slot;
    }
    return v;
  }
};

}  // namespace flashmla::sm90
