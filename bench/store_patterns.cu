// flashmla_store_patterns: how long a decode CTA's epilogue stores take,
// pattern by pattern.
//
// The decode kernel's two consumer warpgroups each end a visit holding a 64 x
// 256 half of O in the wgmma accumulator layout. The phase trace puts 3-4.6 us
// on writing it out, far more than its 32-64 KB need at any bandwidth of the
// memory system, so this tool times the same bytes written from the same layout
// in other ways, in CTAs shaped like the decode's (384 threads, one CTA per
// SM), on 1 CTA and on every SM at once:
//   fragment    each lane stores its value pairs where the accumulator layout
//   holds them (what
//               the kernel does: a warp store covers 8 rows x 16 B of bf16 or
//               32 B of fp32)
//   staged      the fragment goes to shared memory first (padded rows, no bank
//   conflicts), then
//               each warp stores whole 512-byte row runs with 16-byte stores
//   coalesced   the 16-byte row-run stores alone (no staging): the floor of the
//   staged pattern bulk        staged, then thread r of the warpgroup sends row
//   r with one bulk copy
//               (cp.async.bulk global <- shared) and waits only until shared
//               memory was read, as a TMA store epilogue does; the grid's
//               completion makes the writes visible
// Reported per case: the median over replays of the time from a consumer's
// first store to its last store issued (%globaltimer, thread 0 of each consumer
// warpgroup, the later of the two) and the median event time of one launch.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "diagnostic_util.cuh"

namespace {

constexpr int kThreadsPerWarpgroup = 128;
constexpr int kThreads = 3 * kThreadsPerWarpgroup;  // idle producer + two consumers, as the decode
constexpr int kRows = 64;
constexpr int kColsPerConsumer = 256;
constexpr int kCols = 2 * kColsPerConsumer;
constexpr int kSmemBytes = 200 * 1024;  // one CTA per SM, as the decode's ~225 KB
constexpr int kStageRowPadBytes = 16;   // shifts each staged row by 4 banks
constexpr int kChunkBytes = 16;
constexpr int kSwizzledRowBytes = 512;  // one round of the swizzled pattern: a warp's 32 chunks
constexpr int kReplays = 200;

enum class Pattern : int { kFragment = 0, kStaged, kSwizzled, kCoalesced, kBulk };
const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::kFragment:
      return "fragment";
    case Pattern::kStaged:
      return "staged";
    case Pattern::kSwizzled:
      return "swizzled";
    case Pattern::kCoalesced:
      return "coalesced";
    case Pattern::kBulk:
      return "bulk";
  }
  return "?";
}

// One accumulator pair as stored: two bf16 in 4 bytes or two fp32 in 8 bytes.
template <int kPairBytes>
struct PairType;
template <>
struct PairType<4> {
  using T = uint32_t;
};
template <>
struct PairType<8> {
  using T = uint2;
};

// Values of a consumer's 64 x 256 fragment (wgmma 64xN accumulator layout): for
// value pair j of row half h, row = 16 * warp + lane / 4 + 8 * h, column = 8 *
// j + 2 * (lane % 4).
constexpr int kPairsPerRowHalf = kColsPerConsumer / 8;

// Stores a consumer's fragment where the accumulator layout holds it, into rows kPitch bytes apart
// (out itself, or a padded shared-memory stage).
template <int kPitch, typename Pair>
__device__ __forceinline__ void store_fragment(uint8_t* base, const Pair (&values)[2 * kPairsPerRowHalf], int warp,
                                               int lane) {
  constexpr int kElemBytes = sizeof(Pair) / 2;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = 16 * warp + lane / 4 + 8 * h;
#pragma unroll
    for (int j = 0; j < kPairsPerRowHalf; ++j) {
      *reinterpret_cast<Pair*>(base + row * kPitch + (8 * j + 2 * (lane % 4)) * kElemBytes) =
          values[h * kPairsPerRowHalf + j];
    }
  }
}

template <int kPairBytes, Pattern kPattern>
__global__ void __launch_bounds__(kThreads, 1) store_kernel(uint8_t* out, unsigned long long* issue_ns) {
  using Pair = typename PairType<kPairBytes>::T;
  constexpr int kElemBytes = kPairBytes / 2;
  constexpr int kRowBytes = kCols * kElemBytes;                 // one row of out
  constexpr int kHalfRowBytes = kColsPerConsumer * kElemBytes;  // a consumer's part of a row
  constexpr int kStagePitch = kHalfRowBytes + kStageRowPadBytes;
  extern __shared__ __align__(16) uint8_t smem[];

  const int warpgroup = threadIdx.x / kThreadsPerWarpgroup;
  if (warpgroup == 0) return;
  const int consumer = warpgroup - 1;
  const int tid = threadIdx.x % kThreadsPerWarpgroup;
  const int warp = tid / 32;
  const int lane = tid % 32;
  uint8_t* cta_out = out + static_cast<size_t>(blockIdx.x) * kRows * kRowBytes + consumer * kHalfRowBytes;
  uint8_t* stage = smem + consumer * kRows * kStagePitch;

  // Values that depend on the thread, so that nothing folds into constants.
  Pair values[2 * kPairsPerRowHalf];
#pragma unroll
  for (int i = 0; i < 2 * kPairsPerRowHalf; ++i) {
    if constexpr (kPairBytes == 4) {
      values[i] = static_cast<uint32_t>(threadIdx.x * 977u + i);
    } else {
      values[i] = make_uint2(threadIdx.x * 977u + i, blockIdx.x);
    }
  }
  asm volatile("bar.sync %0, %1;" ::"r"(1 + consumer), "r"(kThreadsPerWarpgroup));
  const unsigned long long start = diag::global_ns();

  if constexpr (kPattern == Pattern::kSwizzled) {
    constexpr int kRounds = kHalfRowBytes / kSwizzledRowBytes;
    constexpr int kPairsPerRound = kPairsPerRowHalf / kRounds;
    constexpr int kShift = kPairBytes == 8 ? 1 : 0;  // an fp32 quad covers two chunks
#pragma unroll
    for (int round = 0; round < kRounds; ++round) {
      if (round > 0) asm volatile("bar.sync %0, %1;" ::"r"(1 + consumer), "r"(kThreadsPerWarpgroup));
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = 16 * warp + lane / 4 + 8 * h;
#pragma unroll
        for (int jj = 0; jj < kPairsPerRound; ++jj) {
          const int byte = (8 * jj + 2 * (lane % 4)) * kElemBytes;
          const int chunk = (byte / kChunkBytes) ^ ((row << kShift) & 7);
          *reinterpret_cast<Pair*>(stage + row * kSwizzledRowBytes + chunk * kChunkBytes + byte % kChunkBytes) =
              values[h * kPairsPerRowHalf + round * kPairsPerRound + jj];
        }
      }
      asm volatile("bar.sync %0, %1;" ::"r"(1 + consumer), "r"(kThreadsPerWarpgroup));
#pragma unroll 4
      for (int row = warp; row < kRows; row += kThreadsPerWarpgroup / 32) {
        const int chunk = lane ^ ((row << kShift) & 7);
        const uint4 v = *reinterpret_cast<const uint4*>(stage + row * kSwizzledRowBytes + chunk * kChunkBytes);
        *reinterpret_cast<uint4*>(cta_out + row * kRowBytes + round * kSwizzledRowBytes + lane * kChunkBytes) = v;
      }
    }
  } else if constexpr (kPattern == Pattern::kFragment) {
    store_fragment<kRowBytes>(cta_out, values, warp, lane);
  } else {
    if constexpr (kPattern == Pattern::kStaged || kPattern == Pattern::kBulk) {
      store_fragment<kStagePitch>(stage, values, warp, lane);
      if constexpr (kPattern == Pattern::kBulk) asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      asm volatile("bar.sync %0, %1;" ::"r"(1 + consumer), "r"(kThreadsPerWarpgroup));
    }
    if constexpr (kPattern == Pattern::kBulk) {
      if (tid < kRows) {
        const uint32_t src = static_cast<uint32_t>(__cvta_generic_to_shared(stage + tid * kStagePitch));
        asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(cta_out + tid * kRowBytes),
                     "r"(src), "r"(kHalfRowBytes)
                     : "memory");
        asm volatile("cp.async.bulk.commit_group;" ::: "memory");
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      }
    } else {
      constexpr int kChunksPerRow = kHalfRowBytes / kChunkBytes;
      constexpr int kChunks = kRows * kChunksPerRow;
#pragma unroll 4
      for (int c = tid; c < kChunks; c += kThreadsPerWarpgroup) {
        const int row = c / kChunksPerRow;
        const int off = (c % kChunksPerRow) * kChunkBytes;
        uint4 v;
        if constexpr (kPattern == Pattern::kStaged) {
          v = *reinterpret_cast<const uint4*>(stage + row * kStagePitch + off);
        } else {
          v = make_uint4(threadIdx.x, c, row, off);
        }
        *reinterpret_cast<uint4*>(cta_out + row * kRowBytes + off) = v;
      }
    }
  }
  const unsigned long long end = diag::global_ns();
  if (tid == 0) issue_ns[blockIdx.x * 2 + consumer] = end - start;
}

template <int kPairBytes, Pattern kPattern>
void run_case(int ctas, uint8_t* out, unsigned long long* issue_dev, cudaStream_t stream) {
  auto kernel = store_kernel<kPairBytes, kPattern>;
  DIAG_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes));
  const diag::ReplayMedians t = diag::time_replays(
      kReplays, stream, issue_dev, 2 * ctas, [](int) {},
      [&] { kernel<<<ctas, kThreads, kSmemBytes, stream>>>(out, issue_dev); });
  std::printf("| %s | %s | %d | %.2f | %.2f |\n", kPairBytes == 4 ? "bf16" : "fp32", pattern_name(kPattern), ctas,
              t.stamp_us, t.event_us);
}

template <int kPairBytes>
void run_dtype(int ctas, uint8_t* out, unsigned long long* issue_dev, cudaStream_t stream) {
  run_case<kPairBytes, Pattern::kFragment>(ctas, out, issue_dev, stream);
  run_case<kPairBytes, Pattern::kStaged>(ctas, out, issue_dev, stream);
  run_case<kPairBytes, Pattern::kSwizzled>(ctas, out, issue_dev, stream);
  run_case<kPairBytes, Pattern::kCoalesced>(ctas, out, issue_dev, stream);
  run_case<kPairBytes, Pattern::kBulk>(ctas, out, issue_dev, stream);
}

}  // namespace

int main() {
  const cudaDeviceProp prop = diag::current_device();
  const int sms = prop.multiProcessorCount;
  constexpr size_t kMaxCtaBytes = size_t{kRows} * kCols * 4;
  uint8_t* out = nullptr;
  unsigned long long* issue_dev = nullptr;
  DIAG_CHECK(cudaMalloc(&out, kMaxCtaBytes * sms));
  DIAG_CHECK(cudaMalloc(&issue_dev, 2 * sms * sizeof(unsigned long long)));
  cudaStream_t stream;
  DIAG_CHECK(cudaStreamCreate(&stream));
  std::printf("%s, %d SMs; %d replays per case, medians\n\n", prop.name, sms, kReplays);
  std::printf(
      "| dtype | pattern | CTAs | stores issued, us | launch (event), "
      "us |\n|---|---|---|---|---|\n");
  for (const int ctas : {1, sms}) {
    run_dtype<4>(ctas, out, issue_dev, stream);
    run_dtype<8>(ctas, out, issue_dev, stream);
  }
  DIAG_CHECK(cudaStreamDestroy(stream));
  DIAG_CHECK(cudaFree(issue_dev));
  DIAG_CHECK(cudaFree(out));
  return 0;
}
