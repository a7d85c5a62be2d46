#include "scheduler/scheduler.h"

#include <cstdint>

#include "api/decode_params.h"
#include "scheduler/metadata.h"

namespace flashmla {
namespace {

FLASHMLA_HOST_DEVICE inline int64_t tiles_of(int32_t seqlen) {
  return (static_cast<int64_t>(seqlen) + FLASHMLA_BLOCK_N - 1) / FLASHMLA_BLOCK_N;
}

// The greedy plan of metadata.h. Each part gets a budget of `payload` tile-equivalents; a visit
// costs its tiles plus kVisitOverheadTiles. A part that cannot finish the current request takes
// what its budget allows and the next part continues it (a split). The budget exceeds the total
// charge, so the greedy pass ends with every request planned; the last part's budget is unbounded
// anyway so that coverage never depends on that arithmetic.
FLASHMLA_HOST_DEVICE void plan_splits(const int32_t* seqlens, int batch, int num_sm_parts,
                                      int32_t* metadata, int32_t* num_splits) {
  int64_t total_tiles = 0;
  for (int r = 0; r < batch; ++r) total_tiles += tiles_of(seqlens[r]);
  const int64_t total = total_tiles + int64_t{batch} * kVisitOverheadTiles;
  const int32_t total_tiles_word = static_cast<int32_t>(total_tiles < INT32_MAX ? total_tiles : INT32_MAX);
  const int64_t payload = (total + num_sm_parts - 1) / num_sm_parts + kVisitOverheadTiles;

  int req = 0;        // next request to plan
  int64_t tile = 0;   // its first unplanned tile
  int64_t piece = 0;  // its pieces planned so far
  int64_t slots = 0;  // pieces of all requests before `req`
  num_splits[0] = 0;

  for (int part = 0; part < num_sm_parts; ++part) {
    int32_t* row = metadata + static_cast<int64_t>(part) * FLASHMLA_METADATA_WORDS;
    for (int w = 0; w < FLASHMLA_METADATA_WORDS; ++w) row[w] = 0;
    row[kMetaBeginReq] = req;
    row[kMetaBeginTile] = static_cast<int32_t>(tile);
    row[kMetaBeginSplit] = static_cast<int32_t>(slots + piece);
    row[kMetaTotalTiles] = total_tiles_word;
    row[kMetaEndReq] = req - 1;  // empty until a visit is planned
    row[kMetaEndTile] = 0;

    const bool last_part = part == num_sm_parts - 1;
    int64_t budget = payload;
    while (req < batch) {
      const int64_t n = tiles_of(seqlens[req]);
      const int64_t remaining = n - tile;
      if (last_part || budget >= remaining + kVisitOverheadTiles) {
        budget -= remaining + kVisitOverheadTiles;
        row[kMetaEndReq] = req;
        row[kMetaEndTile] = static_cast<int32_t>(n);
        slots += piece + 1;
        num_splits[req + 1] = static_cast<int32_t>(slots);
        ++req;
        tile = 0;
        piece = 0;
        continue;
      }
      const int64_t take = budget - kVisitOverheadTiles;
      if (take > 0) {
        row[kMetaEndReq] = req;
        row[kMetaEndTile] = static_cast<int32_t>(tile + take);
        tile += take;
        ++piece;
      }
      break;
    }
  }
}

// Lengths are staged in shared memory when they fit, so that the serial planning pass reads
// on-chip memory instead of walking global memory one load at a time.
constexpr int kPlanThreads = 256;
constexpr int kMaxStagedSeqlens = 12 * 1024;

__global__ void __launch_bounds__(kPlanThreads)
plan_splits_kernel(const int32_t* seqlens, int batch, int num_sm_parts, int32_t* metadata,
                   int32_t* num_splits) {
  __shared__ int32_t staged[kMaxStagedSeqlens];
  const bool stage = batch <= kMaxStagedSeqlens;
  if (stage) {
    for (int i = threadIdx.x; i < batch; i += blockDim.x) staged[i] = seqlens[i];
    __syncthreads();
  }
  if (threadIdx.x == 0) plan_splits(stage ? staged : seqlens, batch, num_sm_parts, metadata, num_splits);
}

}  // namespace

void compute_metadata_host(const int32_t* seqlens, int batch, int num_sm_parts, int32_t* metadata,
                           int32_t* num_splits) {
  plan_splits(seqlens, batch, num_sm_parts, metadata, num_splits);
}

cudaError_t compute_metadata_device(const int32_t* seqlens, int batch, int num_sm_parts,
                                    int32_t* metadata, int32_t* num_splits, cudaStream_t stream) {
  plan_splits_kernel<<<1, kPlanThreads, 0, stream>>>(seqlens, batch, num_sm_parts, metadata,
                                                     num_splits);
  return cudaGetLastError();
}

}  // namespace flashmla
