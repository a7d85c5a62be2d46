// flashmla_cluster_merge: what it costs to merge a split's fp32 partials inside a thread-block
// cluster instead of writing every one of them to global memory.
//
// A small decode (b = 1 or 8 at h_q = 128) splits each request over ~one part per SM, and every part
// ends holding a 64 x 512 fp32 partial O (128 KB) plus 64 row lse values. Today each part writes
// its partial to the workspace from the wgmma accumulator layout, and the combine kernel reads them
// all back: 11-17 MB per call on the latency rows, which the phase trace puts at 5-10 us of a
// 24-52 us call. If C neighbouring parts formed a cluster, they could merge their partials through
// distributed shared memory first and write one 128 KB partial per cluster, so that both the
// workspace writes and the combine's reads shrink C-fold. This tool times that exchange alone, in
// CTAs shaped like the decode's (384 threads, one CTA per SM, every SM busy at once):
//   global      (C = 1) each consumer warpgroup stores its 64 x 256 half and thread 0 of each
//               quad its rows' lse straight from the accumulator layout: what the decode does now
//   cluster C   each consumer writes its half into its own shared memory (padded rows), the
//               cluster syncs, and CTA rank r merges rows [64 r / C, 64 (r + 1) / C) of all C
//               partials (lse-weighted, as the combine does) with 16-byte loads from the peers'
//               shared memory, then stores those rows of the merged partial with 16-byte stores
// Reported per case: the median over replays of the time from a consumer's first store to its
// last global store issued (%globaltimer, the slowest CTA), and the median event time of a launch,
// with L2 left full of dirty lines before each launch (the bench's write flush) and without.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "diagnostic_util.cuh"

namespace cg = cooperative_groups;

namespace {

constexpr int kThreadsPerWarpgroup = 128;
constexpr int kThreads = 3 * kThreadsPerWarpgroup;  // idle producer + two consumers, as the decode
constexpr int kConsumerThreads = 2 * kThreadsPerWarpgroup;
constexpr int kRows = 64;
constexpr int kColsPerConsumer = 256;
constexpr int kCols = 2 * kColsPerConsumer;
constexpr int kPairsPerRowHalf = kColsPerConsumer / 8;  // accumulator pairs per thread and row half
// Shared rows padded to 520 floats: a half-warp's 8-byte fragment stores (4 rows x 4 column pairs)
// then fall in 32 distinct banks.
constexpr int kStagePitchFloats = kCols + 8;
constexpr int kStageFloats = kRows * kStagePitchFloats;
constexpr int kSmemBytes = 200 * 1024;  // one CTA per SM, as the decode's ~225 KB
static_assert((kStageFloats + kRows) * 4 <= kSmemBytes, "stage and lse fit the CTA's shared memory");
constexpr int kFloatsPerChunk = 4;                           // one 16-byte load or store
constexpr int kThreadsPerRow = kCols / kFloatsPerChunk;      // 128
constexpr int kRowsPerPass = kConsumerThreads / kThreadsPerRow;  // 2
constexpr int kReplays = 200;
constexpr int kFlushL2Multiple = 2;  // the write flush memsets twice the L2 size

// A consumer's 64 x 256 fp32 fragment (wgmma 64xN accumulator layout): pair j of row half h sits at
// row 16 * warp + lane / 4 + 8 * h, column 8 * j + 2 * (lane % 4). Stored into rows `pitch`
// floats apart.
__device__ __forceinline__ void store_fragment(float* base, int pitch, const float2 (&values)[2 * kPairsPerRowHalf],
                                               int warp, int lane) {
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = 16 * warp + lane / 4 + 8 * h;
#pragma unroll
    for (int j = 0; j < kPairsPerRowHalf; ++j) {
      *reinterpret_cast<float2*>(base + row * pitch + 8 * j + 2 * (lane % 4)) = values[h * kPairsPerRowHalf + j];
    }
  }
}

template <int kCluster>
__global__ void __launch_bounds__(kThreads, 1)
    merge_kernel(float* partials, float* partial_lse, unsigned long long* issue_ns) {
  extern __shared__ __align__(16) float smem[];
  float* stage = smem;
  float* stage_lse = smem + kStageFloats;
  const int warpgroup = threadIdx.x / kThreadsPerWarpgroup;
  const int tid = threadIdx.x % kThreadsPerWarpgroup;
  const int consumer = warpgroup - 1;
  const int warp = tid / 32;
  const int lane = tid % 32;

  // Values that depend on the thread and CTA, so that nothing folds into constants.
  float2 values[2 * kPairsPerRowHalf];
#pragma unroll
  for (int i = 0; i < 2 * kPairsPerRowHalf; ++i) {
    values[i] = make_float2(1e-3f * static_cast<float>(threadIdx.x * 977u + i), static_cast<float>(blockIdx.x));
  }
  const float row_lse[2] = {0.37f * static_cast<float>(16 * warp + lane / 4) + 0.11f * static_cast<float>(blockIdx.x),
                            0.37f * static_cast<float>(16 * warp + lane / 4 + 8) + 0.11f * static_cast<float>(blockIdx.x)};
  __syncthreads();
  const unsigned long long start = diag::global_ns();

  if constexpr (kCluster == 1) {
    if (warpgroup == 0) return;
    float* cta_out = partials + static_cast<size_t>(blockIdx.x) * kRows * kCols + consumer * kColsPerConsumer;
    store_fragment(cta_out, kCols, values, warp, lane);
    if (consumer == 0 && lane % 4 == 0) {
      for (int h = 0; h < 2; ++h) partial_lse[blockIdx.x * kRows + 16 * warp + lane / 4 + 8 * h] = row_lse[h];
    }
  } else {
    cg::cluster_group cluster = cg::this_cluster();
    if (warpgroup > 0) {
      store_fragment(stage + consumer * kColsPerConsumer, kStagePitchFloats, values, warp, lane);
      if (consumer == 0 && lane % 4 == 0) {
        for (int h = 0; h < 2; ++h) stage_lse[16 * warp + lane / 4 + 8 * h] = row_lse[h];
      }
    }
    cluster.sync();  // every partial of the cluster is in shared memory
    if (warpgroup > 0) {
      constexpr int kRowsPerCta = kRows / kCluster;
      const int rank = static_cast<int>(cluster.block_rank());
      const int t = threadIdx.x - kThreadsPerWarpgroup;
      const int col = (t % kThreadsPerRow) * kFloatsPerChunk;
      const size_t cluster_index = blockIdx.x / kCluster;
      for (int pass = 0; pass < kRowsPerCta; pass += kRowsPerPass) {
        const int row = rank * kRowsPerCta + pass + t / kThreadsPerRow;
        if (row >= (rank + 1) * kRowsPerCta) break;
        float4 piece[kCluster];
        float lse[kCluster];
#pragma unroll
        for (int k = 0; k < kCluster; ++k) {
          const float* peer_stage = cluster.map_shared_rank(stage, k);
          const float* peer_lse = cluster.map_shared_rank(stage_lse, k);
          piece[k] = *reinterpret_cast<const float4*>(peer_stage + row * kStagePitchFloats + col);
          lse[k] = peer_lse[row];
        }
        float lse_max = lse[0];
#pragma unroll
        for (int k = 1; k < kCluster; ++k) lse_max = fmaxf(lse_max, lse[k]);
        float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
        float weight_sum = 0.f;
#pragma unroll
        for (int k = 0; k < kCluster; ++k) {
          const float w = expf(lse[k] - lse_max);
          sum.x = fmaf(w, piece[k].x, sum.x);
          sum.y = fmaf(w, piece[k].y, sum.y);
          sum.z = fmaf(w, piece[k].z, sum.z);
          sum.w = fmaf(w, piece[k].w, sum.w);
          weight_sum += w;
        }
        const float inv = 1.f / weight_sum;
        sum.x *= inv;
        sum.y *= inv;
        sum.z *= inv;
        sum.w *= inv;
        *reinterpret_cast<float4*>(partials + (cluster_index * kRows + row) * kCols + col) = sum;
        if (col == 0) partial_lse[cluster_index * kRows + row] = lse_max + logf(weight_sum);
      }
    }
  }
  const unsigned long long end = diag::global_ns();
  if (warpgroup > 0 && tid == 0) issue_ns[blockIdx.x * 2 + consumer] = end - start;
  // The peers may still be reading this CTA's shared memory.
  if constexpr (kCluster > 1) cg::this_cluster().sync();
}

struct Buffers {
  float* partials;
  float* partial_lse;
  unsigned long long* issue_ns;
  void* flush;
  size_t flush_bytes;
};

template <int kCluster>
void run_case(int sms, bool flush, const Buffers& b, cudaStream_t stream) {
  auto kernel = merge_kernel<kCluster>;
  DIAG_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  if (kCluster > 8) DIAG_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));

  cudaLaunchConfig_t config = {};
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = kSmemBytes;
  config.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = kCluster;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  config.attrs = attr;
  // C = 1 is the decode's launch as it is: no cluster.
  config.numAttrs = kCluster > 1 ? 1 : 0;
  // As many whole clusters as are resident at once, at most one CTA per SM.
  config.gridDim = dim3(sms / kCluster * kCluster);
  int clusters = sms;
  if (kCluster > 1 && (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess || clusters < 1)) {
    (void)cudaGetLastError();
    std::printf("| %d | %s | not resident with %d KB of shared memory per CTA | | | |\n", kCluster,
                flush ? "write" : "none", kSmemBytes / 1024);
    return;
  }
  const int ctas = std::min(clusters * kCluster, sms / kCluster * kCluster);
  config.gridDim = dim3(ctas);

  const diag::ReplayMedians t = diag::time_replays(
      kReplays, stream, b.issue_ns, 2 * ctas,
      [&](int r) {
        if (flush) DIAG_CHECK(cudaMemsetAsync(b.flush, r & 0xff, b.flush_bytes, stream));
      },
      [&] { DIAG_CHECK(cudaLaunchKernelEx(&config, kernel, b.partials, b.partial_lse, b.issue_ns)); });
  const double written_mb = static_cast<double>(ctas / kCluster) * kRows * (kCols + 1) * 4 / 1e6;
  std::printf("| %d | %s | %d | %.1f | %.2f | %.2f |\n", kCluster, flush ? "write" : "none", ctas, written_mb,
              t.stamp_us, t.event_us);
}

void run_all(int sms, bool flush, const Buffers& b, cudaStream_t stream) {
  run_case<1>(sms, flush, b, stream);
  run_case<2>(sms, flush, b, stream);
  run_case<4>(sms, flush, b, stream);
  run_case<8>(sms, flush, b, stream);
  run_case<16>(sms, flush, b, stream);
}

}  // namespace

int main() {
  const cudaDeviceProp prop = diag::current_device();
  const int sms = prop.multiProcessorCount;
  Buffers b{};
  DIAG_CHECK(cudaMalloc(&b.partials, size_t{kRows} * kCols * 4 * sms));
  DIAG_CHECK(cudaMalloc(&b.partial_lse, size_t{kRows} * 4 * sms));
  DIAG_CHECK(cudaMalloc(&b.issue_ns, 2 * sms * sizeof(unsigned long long)));
  b.flush_bytes = static_cast<size_t>(kFlushL2Multiple) * prop.l2CacheSize;
  DIAG_CHECK(cudaMalloc(&b.flush, b.flush_bytes));
  cudaStream_t stream;
  DIAG_CHECK(cudaStreamCreate(&stream));
  std::printf("%s, %d SMs, L2 %d MB; %d replays per case, medians\n\n", prop.name, sms, prop.l2CacheSize >> 20,
              kReplays);
  std::printf(
      "| cluster | L2 flush | CTAs | partials written, MB | exchange + stores issued, us | launch (event), us |\n"
      "|---|---|---|---|---|---|\n");
  run_all(sms, true, b, stream);
  run_all(sms, false, b, stream);
  DIAG_CHECK(cudaStreamDestroy(stream));
  DIAG_CHECK(cudaFree(b.flush));
  DIAG_CHECK(cudaFree(b.issue_ns));
  DIAG_CHECK(cudaFree(b.partial_lse));
  DIAG_CHECK(cudaFree(b.partials));
  return 0;
}
