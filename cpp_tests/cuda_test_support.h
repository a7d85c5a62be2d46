// CUDA basics shared by the GPU tests: whether a device exists, gtest-friendly checks of CUDA and
// flashmla statuses, a context health probe, and owners of device memory and streams.
#pragma once

#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>

#include "flashmla/flashmla.h"

namespace flashmla_test {

bool cuda_device_present();

::testing::AssertionResult cuda_ok(cudaError_t error, const char* what);
::testing::AssertionResult status_ok(flashmla_status_t status, const char* what);

// After a call: the device synchronises without error, no error is pending, and a round trip
// through fresh device memory returns what was written.
::testing::AssertionResult context_healthy();

// Bytes from cudaMalloc, freed when the owner goes.
class DeviceMemory {
 public:
  DeviceMemory() = default;
  explicit DeviceMemory(size_t bytes);
  void* get() const { return ptr_.get(); }
  size_t bytes() const { return bytes_; }
  // False when the allocation failed (a zero-byte request holds nothing and is fine).
  bool ok() const { return bytes_ == 0 || ptr_ != nullptr; }

 private:
  struct Free {
    void operator()(void* p) const { cudaFree(p); }
  };
  std::unique_ptr<void, Free> ptr_;
  size_t bytes_ = 0;
};

// A non-blocking stream created for a test and destroyed with it (get() is NULL if creation failed).
class OwnStream {
 public:
  OwnStream();
  ~OwnStream();
  OwnStream(const OwnStream&) = delete;
  OwnStream& operator=(const OwnStream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

}  // namespace flashmla_test
