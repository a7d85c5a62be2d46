#include "launch_floor.h"

namespace flashmla_bench {
namespace {

// The decode kernel's launch shape: 3 warpgroups, and enough dynamic shared memory that a CTA
// holds an SM alone, as the decode kernel's ~225 KB do.
constexpr int kDecodeThreads = 384;
constexpr int kDecodeLikeSmemBytes = 200 * 1024;
// The combine's launch shape at b = 1, h_q = 128: one CTA per row.
constexpr int kDependentCtas = 128;
constexpr int kDependentThreads = 128;
// The chain spans 256 MB with hops 32 MB + 4 bytes apart, so every read lands on another DRAM
// page and, after the flush, misses L2.
constexpr size_t kChainWords = size_t{64} << 20;
constexpr size_t kHopWords = (size_t{8} << 20) + 1;
// Where CTA i starts in the chain: apart from every other CTA's lines.
constexpr size_t kCtaStartWords = 4099;
constexpr int kFillThreads = 256;
constexpr int kFillBlocks = 1024;

// Programmatic dependent launch exists from sm_90 (__CUDA_ARCH__ 900) on; older code runs in
// plain stream order.

__global__ void __launch_bounds__(kDecodeThreads) empty_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

__global__ void __launch_bounds__(kDependentThreads) dependent_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

__global__ void __launch_bounds__(kDecodeThreads) chase_kernel(const uint32_t* chain, int hops, uint32_t* sink) {
  if (threadIdx.x != 0) return;
  uint32_t i = static_cast<uint32_t>((blockIdx.x * kCtaStartWords) % kChainWords);
  for (int h = 0; h < hops; ++h) i = chain[i];
  sink[blockIdx.x] = i;
}

__global__ void fill_chain_kernel(uint32_t* chain) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < kChainWords;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    chain[i] = static_cast<uint32_t>((i + kHopWords) % kChainWords);
  }
}

template <typename Kernel, typename... Args>
cudaError_t launch_decode_shaped(Kernel kernel, int ctas, cudaStream_t stream, Args... args) {
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kDecodeLikeSmemBytes);
  if (err != cudaSuccess) return err;
  kernel<<<ctas, kDecodeThreads, kDecodeLikeSmemBytes, stream>>>(args...);
  return cudaGetLastError();
}

cudaError_t launch_dependent(cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kDependentCtas);
  config.blockDim = dim3(kDependentThreads);
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = 1;
  return cudaLaunchKernelEx(&config, dependent_kernel);
}

}  // namespace

const char* floor_case_name(FloorCase c) {
  switch (c) {
    case FloorCase::kEmptyKernel:
      return "empty_kernel";
    case FloorCase::kEmptyThenDependent:
      return "empty_then_dependent";
    case FloorCase::kOneRead:
      return "one_dram_read";
    case FloorCase::kThreeReads:
      return "three_dependent_reads";
    default:
      return "?";
  }
}

size_t floor_chain_words() { return kChainWords; }

cudaError_t fill_floor_chain(uint32_t* chain, cudaStream_t stream) {
  fill_chain_kernel<<<kFillBlocks, kFillThreads, 0, stream>>>(chain);
  return cudaGetLastError();
}

cudaError_t enqueue_floor_case(FloorCase c, int sm_count, const uint32_t* chain, uint32_t* sink,
                               cudaStream_t stream) {
  constexpr int kThreeHops = 3;
  switch (c) {
    case FloorCase::kEmptyKernel:
      return launch_decode_shaped(empty_kernel, sm_count, stream);
    case FloorCase::kEmptyThenDependent: {
      const cudaError_t err = launch_decode_shaped(empty_kernel, sm_count, stream);
      return err == cudaSuccess ? launch_dependent(stream) : err;
    }
    case FloorCase::kOneRead:
      return launch_decode_shaped(chase_kernel, sm_count, stream, chain, 1, sink);
    case FloorCase::kThreeReads:
      return launch_decode_shaped(chase_kernel, sm_count, stream, chain, kThreeHops, sink);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace flashmla_bench
