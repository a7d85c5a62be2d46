// flashmla._jax_ffi: XLA FFI handlers for the metadata and decode calls, so that jax.jit runs them
// on XLA's stream, in buffers XLA owns. Built only when jaxlib's FFI headers are available.
//
// flashmla.jax registers the two capsules below with jax.ffi.register_ffi_target(platform="CUDA")
// and calls them through jax.ffi.ffi_call. Like flashmla._C, this file only converts: XLA buffers
// become DLTensors, attributes become flashmla_decode_args fields, a status becomes an XLA error
// carrying the C API's message. Every check of dtypes and shapes is the C API's.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>

#include "flashmla/flashmla.h"
#include "decode_args.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
namespace nb = nanobind;

namespace {

// flashmla_decode's alignment for a caller's workspace (flashmla.h). The Python side asks XLA for
// this many bytes more than the workspace needs and the handler aligns the start itself, since
// XLA promises a smaller alignment for its buffers.
constexpr size_t kWorkspaceAlignment = 256;

DLDataType dlpack_dtype(ffi::DataType type) {
  constexpr uint8_t kOneLane = 1;
  switch (type) {
    case ffi::DataType::S8: return {kDLInt, 8, kOneLane};
    case ffi::DataType::S16: return {kDLInt, 16, kOneLane};
    case ffi::DataType::S32: return {kDLInt, 32, kOneLane};
    case ffi::DataType::S64: return {kDLInt, 64, kOneLane};
    case ffi::DataType::PRED:
    case ffi::DataType::U8: return {kDLUInt, 8, kOneLane};
    case ffi::DataType::U16: return {kDLUInt, 16, kOneLane};
    case ffi::DataType::U32: return {kDLUInt, 32, kOneLane};
    case ffi::DataType::U64: return {kDLUInt, 64, kOneLane};
    case ffi::DataType::F16: return {kDLFloat, 16, kOneLane};
    case ffi::DataType::F32: return {kDLFloat, 32, kOneLane};
    case ffi::DataType::F64: return {kDLFloat, 64, kOneLane};
    case ffi::DataType::BF16: return {kDLBfloat, 16, kOneLane};
    case ffi::DataType::C64: return {kDLComplex, 64, kOneLane};
    case ffi::DataType::C128: return {kDLComplex, 128, kOneLane};
    default:
      // Anything else (fp8, sub-byte types) is no dtype flashmla takes; an opaque type of the
      // right width lets the C API name the argument and reject it.
      return {kDLOpaqueHandle, static_cast<uint8_t>(8 * ffi::ByteWidth(type)), kOneLane};
  }
}

// A DLTensor over an XLA buffer on `device`. ffi_call hands buffers over in XLA's default layout,
// dense row-major, hence no strides.
class BufferView {
 public:
  BufferView(const ffi::AnyBuffer& buffer, int32_t device) {
    const ffi::AnyBuffer::Dimensions dims = buffer.dimensions();
    shape_.assign(dims.begin(), dims.end());
    tensor_.data = buffer.untyped_data();
    tensor_.device.device_type = kDLCUDA;
    tensor_.device.device_id = device;
    tensor_.ndim = static_cast<int32_t>(shape_.size());
    tensor_.dtype = dlpack_dtype(buffer.element_type());
    tensor_.shape = shape_.data();
    tensor_.strides = nullptr;
    tensor_.byte_offset = 0;
  }
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;

  DLTensor* get() { return &tensor_; }

 private:
  std::vector<int64_t> shape_;
  DLTensor tensor_{};
};

ffi::Error to_error(flashmla_status_t status) {
  if (status == FLASHMLA_STATUS_SUCCESS) return ffi::Error::Success();
  std::string message = flashmla_get_last_error();
  switch (status) {
    case FLASHMLA_STATUS_INVALID_ARGUMENT:
      return ffi::Error(ffi::ErrorCode::kInvalidArgument, std::move(message));
    case FLASHMLA_STATUS_NOT_SUPPORTED:
      return ffi::Error(ffi::ErrorCode::kUnimplemented, std::move(message));
    default:
      return ffi::Error(ffi::ErrorCode::kInternal,
                        std::string(flashmla_status_string(status)) + ": " + message);
  }
}

ffi::Error get_metadata(cudaStream_t stream, int32_t device, ffi::AnyBuffer cache_seqlens,
                        ffi::Result<ffi::AnyBuffer> tile_scheduler_metadata,
                        ffi::Result<ffi::AnyBuffer> num_splits) {
  BufferView seqlens(cache_seqlens, device), metadata(*tile_scheduler_metadata, device),
      splits(*num_splits, device);
  return to_error(flashmla_get_metadata(seqlens.get(), metadata.get(), splits.get(), stream));
}

ffi::Error decode(cudaStream_t stream, int32_t device, ffi::AnyBuffer q, ffi::AnyBuffer k_cache,
                  ffi::AnyBuffer block_table, ffi::AnyBuffer cache_seqlens,
                  ffi::AnyBuffer tile_scheduler_metadata, ffi::AnyBuffer num_splits,
                  ffi::Result<ffi::AnyBuffer> out, ffi::Result<ffi::AnyBuffer> lse,
                  ffi::Result<ffi::AnyBuffer> workspace, int32_t head_dim_v, float softmax_scale,
                  int32_t causal, int32_t backend, int32_t validate) {
  BufferView q_view(q, device), k_view(k_cache, device), table_view(block_table, device),
      seqlens_view(cache_seqlens, device), metadata_view(tile_scheduler_metadata, device),
      splits_view(num_splits, device), out_view(*out, device), lse_view(*lse, device);

  flashmla_decode_args args = flashmla_python::make_decode_args(
      {q_view.get(), k_view.get(), table_view.get(), seqlens_view.get(), metadata_view.get(), splits_view.get(),
       out_view.get(), lse_view.get()},
      head_dim_v, softmax_scale, causal != 0, backend, validate != 0);

  const auto start = reinterpret_cast<uintptr_t>(workspace->untyped_data());
  const size_t size = workspace->size_bytes();
  const size_t padding = (kWorkspaceAlignment - start % kWorkspaceAlignment) % kWorkspaceAlignment;
  if (start != 0 && size > padding) {
    args.workspace = reinterpret_cast<void*>(start + padding);
    args.workspace_size = size - padding;
  }
  return to_error(flashmla_decode(&args, stream));
}

XLA_FFI_DEFINE_HANDLER(kGetMetadataHandler, get_metadata,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Ctx<ffi::DeviceOrdinal>()
                           .Arg<ffi::AnyBuffer>()   // cache_seqlens
                           .Ret<ffi::AnyBuffer>()   // tile_scheduler_metadata
                           .Ret<ffi::AnyBuffer>()); // num_splits

XLA_FFI_DEFINE_HANDLER(kDecodeHandler, decode,
                       ffi::Ffi::Bind()
                           .Ctx<ffi::PlatformStream<cudaStream_t>>()
                           .Ctx<ffi::DeviceOrdinal>()
                           .Arg<ffi::AnyBuffer>()  // q
                           .Arg<ffi::AnyBuffer>()  // k_cache
                           .Arg<ffi::AnyBuffer>()  // block_table
                           .Arg<ffi::AnyBuffer>()  // cache_seqlens
                           .Arg<ffi::AnyBuffer>()  // tile_scheduler_metadata
                           .Arg<ffi::AnyBuffer>()  // num_splits
                           .Ret<ffi::AnyBuffer>()  // out
                           .Ret<ffi::AnyBuffer>()  // lse
                           .Ret<ffi::AnyBuffer>()  // workspace
                           .Attr<int32_t>("head_dim_v")
                           .Attr<float>("softmax_scale")
                           .Attr<int32_t>("causal")
                           .Attr<int32_t>("backend")
                           .Attr<int32_t>("validate"));

nb::capsule handler_capsule(XLA_FFI_Handler* handler) {
  // jax.ffi.register_ffi_target reads the pointer of an unnamed capsule.
  return nb::capsule(reinterpret_cast<void*>(handler));
}

}  // namespace

NB_MODULE(_jax_ffi, m) {
  m.doc() =
      "XLA FFI handlers of flashmla (typed FFI, api_version 1), for "
      "jax.ffi.register_ffi_target(..., platform='CUDA'). flashmla.jax uses them.";
  m.attr("WORKSPACE_ALIGNMENT") = kWorkspaceAlignment;
  m.def("get_metadata_handler", [] { return handler_capsule(kGetMetadataHandler); },
        "Capsule of the handler: cache_seqlens -> (tile_scheduler_metadata, num_splits).");
  m.def("decode_handler", [] { return handler_capsule(kDecodeHandler); },
        "Capsule of the handler: (q, k_cache, block_table, cache_seqlens, tile_scheduler_metadata, "
        "num_splits) -> (out, lse, workspace); attributes head_dim_v (i32), softmax_scale (f32, "
        "0 = 1/sqrt(576)), causal, backend, validate (i32).");
}
