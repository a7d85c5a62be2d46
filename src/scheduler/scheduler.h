// Tile-scheduler metadata (the split-KV plan of metadata.h): one algorithm, run on the host or by
// a single-CTA kernel, so that both produce identical plans by construction.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace flashmla {

// Host version. `seqlens` [batch], `metadata` [num_sm_parts * FLASHMLA_METADATA_WORDS],
// `num_splits` [batch + 1], all host memory. Lengths must be >= 0.
void compute_metadata_host(const int32_t* seqlens, int batch, int num_sm_parts,
                           int32_t* metadata, int32_t* num_splits);

// Device version: same result, enqueued on `stream`, all pointers device memory.
cudaError_t compute_metadata_device(const int32_t* seqlens, int batch, int num_sm_parts,
                                    int32_t* metadata, int32_t* num_splits, cudaStream_t stream);

}  // namespace flashmla
