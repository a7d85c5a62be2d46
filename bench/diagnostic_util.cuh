// Helpers shared by the standalone diagnostics (store_patterns.cu, cluster_merge.cu): stop on a
// CUDA error, read the current device's properties and the global nanosecond timer, take a median,
// time replays of a launch.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define DIAG_CHECK(call)                                                                 \
  do {                                                                                   \
    const cudaError_t err_ = (call);                                                     \
    if (err_ != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d: %s\n", __FILE__, __LINE__, cudaGetErrorString(err_)); \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

namespace diag {

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long ns;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(ns));
  return ns;
}

// The current device's properties.
inline cudaDeviceProp current_device() {
  int device = 0;
  DIAG_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  DIAG_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Medians over replays of one launch: its event time, and the largest of the `stamps` nanosecond
// counts the kernel leaves in device memory.
struct ReplayMedians {
  double stamp_us;
  double event_us;
};

// `before()` enqueues untimed work ahead of each replay (an L2 flush, or nothing); `launch()`
// enqueues the timed launch on `stream`.
template <class Before, class Launch>
ReplayMedians time_replays(int replays, cudaStream_t stream, const unsigned long long* stamps_dev, size_t stamps,
                           Before before, Launch launch) {
  std::vector<unsigned long long> host(stamps);
  std::vector<double> stamp_us, event_us;
  cudaEvent_t begin, end;
  DIAG_CHECK(cudaEventCreate(&begin));
  DIAG_CHECK(cudaEventCreate(&end));
  for (int r = 0; r < replays; ++r) {
    before(r);
    DIAG_CHECK(cudaEventRecord(begin, stream));
    launch();
    DIAG_CHECK(cudaGetLastError());
    DIAG_CHECK(cudaEventRecord(end, stream));
    DIAG_CHECK(cudaEventSynchronize(end));
    float ms = 0.f;
    DIAG_CHECK(cudaEventElapsedTime(&ms, begin, end));
    DIAG_CHECK(cudaMemcpy(host.data(), stamps_dev, stamps * sizeof(host[0]), cudaMemcpyDeviceToHost));
    event_us.push_back(ms * 1e3);
    stamp_us.push_back(*std::max_element(host.begin(), host.end()) * 1e-3);
  }
  DIAG_CHECK(cudaEventDestroy(begin));
  DIAG_CHECK(cudaEventDestroy(end));
  return {median(stamp_us), median(event_us)};
}

}  // namespace diag
