// Stand-in for the Hopper kernel in builds configured with FLASHMLA_ENABLE_SM90=OFF: the
// dispatcher then always takes the reference kernel, and an explicit SM90 request is refused.
#include "kernels/sm90/sm90_decode.h"

namespace flashmla {

bool sm90_kernel_available() { return false; }

const char* sm90_unsupported_reason(const DecodeParams&) { return "built without the SM90 kernel"; }

cudaError_t run_sm90_decode(const DecodeParams&, cudaStream_t) { return cudaErrorNotSupported; }

}  // namespace flashmla
