// The plain, obviously-correct decode kernel: the oracle for tests and the path on GPUs without
// the Hopper kernel. Honours the split-KV plan; split pieces go to the workspace partials, and the
// caller runs the combine kernel afterwards.
#pragma once

#include <cuda_runtime_api.h>

#include "api/decode_params.h"

namespace flashmla {

cudaError_t run_reference_decode(const DecodeParams& params, cudaStream_t stream);

}  // namespace flashmla
