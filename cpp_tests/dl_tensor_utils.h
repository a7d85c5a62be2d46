// Building DLTensors over existing memory in tests. A DLTensor only points at its shape and
// strides, so TensorDesc owns them and hands out a DLTensor whose pointers are refreshed on every
// call: copies and moves of a TensorDesc stay valid.
#pragma once

#include <dlpack/dlpack.h>

#include <cstdint>
#include <utility>
#include <vector>

namespace flashmla_test {

inline DLDataType dl_dtype(DLDataTypeCode code, int bits) {
  DLDataType dtype;
  dtype.code = static_cast<uint8_t>(code);
  dtype.bits = static_cast<uint8_t>(bits);
  dtype.lanes = 1;
  return dtype;
}
inline DLDataType dl_bfloat16() { return dl_dtype(kDLBfloat, 16); }
inline DLDataType dl_float16() { return dl_dtype(kDLFloat, 16); }
inline DLDataType dl_float32() { return dl_dtype(kDLFloat, 32); }
inline DLDataType dl_int32() { return dl_dtype(kDLInt, 32); }
inline DLDataType dl_int64() { return dl_dtype(kDLInt, 64); }

inline DLDevice dl_cuda_device(int id) { return DLDevice{kDLCUDA, id}; }
inline DLDevice dl_cpu_device() { return DLDevice{kDLCPU, 0}; }

// Row-major strides, in elements, of a compact tensor of this shape.
inline std::vector<int64_t> compact_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= shape[i];
  }
  return strides;
}

class TensorDesc {
 public:
  // Empty `strides` describes a compact tensor with DLTensor::strides == NULL.
  TensorDesc(void* data, DLDevice device, DLDataType dtype, std::vector<int64_t> shape,
             std::vector<int64_t> strides = {}, uint64_t byte_offset = 0)
      : shape_(std::move(shape)), strides_(std::move(strides)) {
    tensor_.data = data;
    tensor_.device = device;
    tensor_.ndim = static_cast<int32_t>(shape_.size());
    tensor_.dtype = dtype;
    tensor_.shape = nullptr;
    tensor_.strides = nullptr;
    tensor_.byte_offset = byte_offset;
  }

  DLTensor* get() {
    tensor_.shape = shape_.data();
    tensor_.strides = strides_.empty() ? nullptr : strides_.data();
    return &tensor_;
  }

  // Editable so that tests can break one property at a time. Edit the shape and strides through
  // shape()/strides() (get() re-points the DLTensor at them); ndim is not re-derived from them.
  DLTensor& raw() { return *get(); }
  std::vector<int64_t>& shape() { return shape_; }
  std::vector<int64_t>& strides() { return strides_; }

 private:
  DLTensor tensor_;
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;
};

}  // namespace flashmla_test
