#include "api/tensor_checks.h"

#include <cuda_runtime_api.h>

#include <limits>

namespace flashmla {
namespace {

// Ranks beyond this are certainly not one of our tensors (and keep loops over dims bounded).
constexpr int kMaxRank = 8;

std::string device_name(const DLDevice& device) {
  switch (device.device_type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda:" + std::to_string(device.device_id);
    case kDLCUDAHost: return "cuda_host";
    case kDLCUDAManaged: return "cuda_managed:" + std::to_string(device.device_id);
    default: return "device type " + std::to_string(static_cast<int>(device.device_type));
  }
}

}  // namespace

std::string dtype_name(DLDataType dtype) {
  std::string base;
  switch (dtype.code) {
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    default: base = "type" + std::to_string(static_cast<int>(dtype.code)) + "_"; break;
  }
  base += std::to_string(static_cast<int>(dtype.bits));
  if (dtype.lanes != 1) base += "x" + std::to_string(static_cast<int>(dtype.lanes));
  return base;
}

int64_t stride_of(const DLTensor& t, int dim) {
  if (t.strides != nullptr) return t.strides[dim];
  int64_t stride = 1;
  for (int d = t.ndim - 1; d > dim; --d) stride *= t.shape[d];
  return stride;
}

flashmla_status_t check_tensor(const char* name, const DLTensor* t) {
  const std::string n(name);
  if (t == nullptr) return invalid_argument(n + ": is NULL");
  if (t->ndim < 1 || t->ndim > kMaxRank) {
    return invalid_argument(n + ": rank " + std::to_string(t->ndim) + " is not supported");
  }
  if (t->shape == nullptr) return invalid_argument(n + ": shape is NULL");
  if (t->dtype.lanes != 1 || t->dtype.bits == 0 || t->dtype.bits % 8 != 0) {
    return invalid_argument(n + ": unsupported dtype " + dtype_name(t->dtype));
  }
  bool empty = false;
  for (int d = 0; d < t->ndim; ++d) {
    if (t->shape[d] < 0) {
      return invalid_argument(n + ": dimension " + std::to_string(d) + " has negative size " +
                              std::to_string(t->shape[d]));
    }
    empty = empty || t->shape[d] == 0;
  }
  // Addressable extent in elements: 1 + sum (size - 1) * stride, checked against overflow.
  const int64_t kLimit = std::numeric_limits<int64_t>::max() / 16;
  // Compact strides are products of the later sizes (stride_of): those products must fit too.
  if (t->strides == nullptr) {
    int64_t product = 1;
    for (int d = t->ndim - 1; d > 0; --d) {
      if (t->shape[d] != 0 && product > kLimit / t->shape[d]) {
        return invalid_argument(n + ": size and strides overflow 64-bit addressing");
      }
      product *= t->shape[d];
    }
  }
  int64_t extent = 1;
  for (int d = 0; d < t->ndim; ++d) {
    const int64_t s = stride_of(*t, d);
    if (s < 0) {
      return invalid_argument(n + ": negative stride " + std::to_string(s) + " in dimension " +
                              std::to_string(d) + " is not supported");
    }
    if (empty) continue;
    const int64_t reach = t->shape[d] - 1;
    if (s != 0 && reach > (kLimit - extent) / s) {
      return invalid_argument(n + ": size and strides overflow 64-bit addressing");
    }
    extent += reach * s;
  }
  // An empty tensor has no layout to check (NumPy 2 reports stride 0 for every dimension of one).
  const int last = t->ndim - 1;
  if (!empty && t->shape[last] > 1 && stride_of(*t, last) != 1) {
    return invalid_argument(n + ": the last dimension must be contiguous (stride 1), got stride " +
                            std::to_string(stride_of(*t, last)));
  }
  if (!empty) {
    if (t->data == nullptr) return invalid_argument(n + ": data pointer is NULL");
    const auto address = reinterpret_cast<uintptr_t>(base_address(*t));
    const unsigned element_bytes = t->dtype.bits / 8;
    if (address % element_bytes != 0) {
      return invalid_argument(n + ": data is not aligned to its " + std::to_string(element_bytes) +
                              "-byte elements");
    }
  }
  return FLASHMLA_STATUS_SUCCESS;
}

flashmla_status_t check_ndim(const char* name, const DLTensor& t, int ndim, const char* layout) {
  if (t.ndim == ndim) return FLASHMLA_STATUS_SUCCESS;
  return invalid_argument(std::string(name) + ": expected " + std::to_string(ndim) +
                          " dimensions " + layout + ", got " + std::to_string(t.ndim));
}

flashmla_status_t check_dtype(const char* name, const DLTensor& t, DLDataType expected) {
  if (same_dtype(t.dtype, expected)) return FLASHMLA_STATUS_SUCCESS;
  return invalid_argument(std::string(name) + ": expected " + dtype_name(expected) + ", got " +
                          dtype_name(t.dtype));
}

flashmla_status_t check_dim(const char* name, const DLTensor& t, int dim, const char* dim_name,
                            int64_t expected) {
  if (t.shape[dim] == expected) return FLASHMLA_STATUS_SUCCESS;
  return invalid_argument(std::string(name) + ": dimension " + std::to_string(dim) + " (" +
                          dim_name + ") must be " + std::to_string(expected) + ", got " +
                          std::to_string(t.shape[dim]));
}

flashmla_status_t check_dim_range(const char* name, const DLTensor& t, int dim,
                                  const char* dim_name, int64_t lo, int64_t hi) {
  if (t.shape[dim] >= lo && t.shape[dim] <= hi) return FLASHMLA_STATUS_SUCCESS;
  return invalid_argument(std::string(name) + ": dimension " + std::to_string(dim) + " (" +
                          dim_name + ") must be in [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "], got " + std::to_string(t.shape[dim]));
}

flashmla_status_t check_compact_rows(const char* name, const DLTensor& t) {
  if (t.shape[0] <= 1 || stride_of(t, 0) == t.shape[1]) return FLASHMLA_STATUS_SUCCESS;
  return invalid_argument(std::string(name) + ": rows must be contiguous (row stride " +
                          std::to_string(t.shape[1]) + "), got row stride " +
                          std::to_string(stride_of(t, 0)));
}

flashmla_status_t check_same_device(const char* name, const DLTensor& t, const char* ref_name,
                                    const DLTensor& ref) {
  if (t.device.device_type == ref.device.device_type && t.device.device_id == ref.device.device_id) {
    return FLASHMLA_STATUS_SUCCESS;
  }
  return invalid_argument(std::string(name) + ": is on " + device_name(t.device) + " but " +
                          ref_name + " is on " + device_name(ref.device));
}

flashmla_status_t check_cuda_device(const char* name, const DLTensor& t) {
  if (t.device.device_type != kDLCUDA) {
    return invalid_argument(std::string(name) + ": expected a CUDA device tensor, got " +
                            device_name(t.device));
  }
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();  // do not leave a sticky-looking error for the caller's next check
    return cuda_failure(error, (std::string(name) + ": no usable CUDA device").c_str());
  }
  if (t.device.device_id < 0 || t.device.device_id >= count) {
    return invalid_argument(std::string(name) + ": device id " + std::to_string(t.device.device_id) +
                            " does not exist (" + std::to_string(count) + " CUDA devices)");
  }
  return FLASHMLA_STATUS_SUCCESS;
}

}  // namespace flashmla
