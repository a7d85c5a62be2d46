// flashmla._C: the bridge between Python arrays (anything exposing __dlpack__) and the C API.
//
// It only converts: arrays become DLTensors, Python ints become streams, status codes become
// exceptions. Every check of dtypes, shapes, strides and devices is the C API's, so that C and
// Python callers see the same messages. The one exception is the workspace, which the C API takes
// as a bare pointer: turning an array into that pointer is this file's job, and so are the checks
// that the pointer means what the caller thinks.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include "flashmla/flashmla.h"
#include "decode_args.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Inputs are imported read-only (JAX exports read-only buffers); outputs must be writable.
using InputArray = nb::ndarray<nb::ro>;
using OutputArray = nb::ndarray<>;

// A DLTensor describing an imported array. Shape and strides are copied so the view does not
// depend on where nanobind keeps them; nanobind reports strides in elements, as DLPack does.
class TensorView {
 public:
  template <typename Array>
  explicit TensorView(const Array& array) : shape_(array.ndim()), strides_(array.ndim()) {
    for (size_t d = 0; d < array.ndim(); ++d) {
      shape_[d] = static_cast<int64_t>(array.shape(d));
      strides_[d] = array.stride(d);
    }
    const nb::dlpack::dtype dtype = array.dtype();
    // nanobind's data() already includes the producer's byte_offset.
    tensor_.data = const_cast<void*>(static_cast<const void*>(array.data()));
    tensor_.device.device_type = static_cast<DLDeviceType>(array.device_type());
    tensor_.device.device_id = static_cast<int32_t>(array.device_id());
    tensor_.ndim = static_cast<int32_t>(array.ndim());
    tensor_.dtype.code = dtype.code;
    tensor_.dtype.bits = dtype.bits;
    tensor_.dtype.lanes = dtype.lanes;
    tensor_.shape = shape_.data();
    tensor_.strides = strides_.data();
    tensor_.byte_offset = 0;
  }
  TensorView(const TensorView&) = delete;
  TensorView& operator=(const TensorView&) = delete;

  DLTensor* get() { return &tensor_; }

 private:
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;
  DLTensor tensor_{};
};

// Raises the Python exception that corresponds to `status`, carrying the C API's message.
void raise_on_failure(flashmla_status_t status) {
  if (status == FLASHMLA_STATUS_SUCCESS) return;
  const std::string message = flashmla_get_last_error();
  if (status == FLASHMLA_STATUS_INVALID_ARGUMENT) throw nb::value_error(message.c_str());
  throw std::runtime_error(std::string(flashmla_status_string(status)) + ": " + message);
}

cudaStream_t as_stream(uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

bool is_row_major_compact(const OutputArray& array) {
  int64_t expected = 1;
  for (size_t d = array.ndim(); d-- > 0;) {
    if (array.shape(d) != 1 && array.stride(d) != expected) return false;
    expected *= static_cast<int64_t>(array.shape(d));
  }
  return true;
}

// The workspace crosses the C boundary as pointer + size, so the facts a DLTensor would have
// carried (device, layout) are checked here.
void check_workspace(const OutputArray& workspace, const InputArray& q) {
  if (workspace.device_type() != kDLCUDA) {
    throw nb::value_error("workspace: expected a CUDA device array");
  }
  if (q.device_type() == kDLCUDA && workspace.device_id() != q.device_id()) {
    throw nb::value_error(("workspace: is on cuda:" + std::to_string(workspace.device_id()) +
                           " but q is on cuda:" + std::to_string(q.device_id()))
                              .c_str());
  }
  if (!is_row_major_compact(workspace)) {
    throw nb::value_error("workspace: expected a contiguous array");
  }
}

int64_t get_num_sm_parts(int device, int64_t rows_per_kv_head, int64_t num_kv_heads) {
  int64_t parts = 0;
  raise_on_failure(flashmla_get_num_sm_parts(device, rows_per_kv_head, num_kv_heads, &parts));
  return parts;
}

void get_metadata(const InputArray& cache_seqlens, const OutputArray& tile_scheduler_metadata,
                  const OutputArray& num_splits, uintptr_t stream) {
  TensorView seqlens(cache_seqlens), metadata(tile_scheduler_metadata), splits(num_splits);
  flashmla_status_t status;
  {
    nb::gil_scoped_release release;
    status = flashmla_get_metadata(seqlens.get(), metadata.get(), splits.get(), as_stream(stream));
  }
  raise_on_failure(status);
}

size_t decode_workspace_size(int64_t batch, int64_t s_q, int64_t h_q, int64_t num_sm_parts) {
  size_t bytes = 0;
  raise_on_failure(flashmla_decode_workspace_size(batch, s_q, h_q, num_sm_parts, &bytes));
  return bytes;
}

void decode(const InputArray& q, const InputArray& k_cache, const InputArray& block_table,
            const InputArray& cache_seqlens, const InputArray& tile_scheduler_metadata,
            const InputArray& num_splits, const OutputArray& out, const OutputArray& lse,
            int32_t head_dim_v, float softmax_scale, bool causal,
            const std::optional<OutputArray>& workspace, int backend, uintptr_t stream,
            bool validate) {
  TensorView q_view(q), k_view(k_cache), table_view(block_table), seqlens_view(cache_seqlens),
      metadata_view(tile_scheduler_metadata), splits_view(num_splits), out_view(out),
      lse_view(lse);

  flashmla_decode_args args = flashmla_python::make_decode_args(
      {q_view.get(), k_view.get(), table_view.get(), seqlens_view.get(), metadata_view.get(), splits_view.get(),
       out_view.get(), lse_view.get()},
      head_dim_v, softmax_scale, causal, backend, validate);
  if (workspace.has_value() && workspace->nbytes() > 0) {
    check_workspace(*workspace, q);
    // nanobind 2.x returns const data from a const array; the memory itself is writable.
    args.workspace = const_cast<void*>(static_cast<const void*>(workspace->data()));
    args.workspace_size = workspace->nbytes();
  }

  flashmla_status_t status;
  {
    nb::gil_scoped_release release;
    status = flashmla_decode(&args, as_stream(stream));
  }
  raise_on_failure(status);
}

std::string version() {
  int major = 0, minor = 0, patch = 0;
  flashmla_get_version(&major, &minor, &patch);
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() =
      "Raw bindings of the flashmla C API. Arrays are anything exposing __dlpack__; streams are "
      "cudaStream_t handles as ints (0: the legacy default stream). Invalid arguments raise "
      "ValueError with the C API's message, other failures RuntimeError.";

  m.attr("HEAD_DIM") = FLASHMLA_HEAD_DIM;
  m.attr("HEAD_DIM_V") = FLASHMLA_HEAD_DIM_V;
  m.attr("BLOCK_N") = FLASHMLA_BLOCK_N;
  m.attr("METADATA_WORDS") = FLASHMLA_METADATA_WORDS;
  m.attr("BACKEND_AUTO") = static_cast<int>(FLASHMLA_BACKEND_AUTO);
  m.attr("BACKEND_REFERENCE") = static_cast<int>(FLASHMLA_BACKEND_REFERENCE);
  m.attr("BACKEND_SM90") = static_cast<int>(FLASHMLA_BACKEND_SM90);

  m.def("version", &version, "Version of the loaded libflashmla, 'major.minor.patch'.");

  m.def("get_num_sm_parts", &get_num_sm_parts, "device"_a, "rows_per_kv_head"_a, "h_kv"_a,
        "Rows of the tile-scheduler metadata for a decode with rows_per_kv_head = s_q * h_q / h_kv "
        "query rows per KV head and h_kv KV heads on CUDA device `device`.");

  m.def("get_metadata", &get_metadata, "cache_seqlens"_a, "tile_scheduler_metadata"_a,
        "num_splits"_a, "stream"_a = 0,
        "Fills tile_scheduler_metadata [num_sm_parts, 8] and num_splits [b + 1] (int32) from "
        "cache_seqlens [b] (int32). All on one CUDA device (enqueued on `stream`) or all in host "
        "memory (computed on the host).");

  m.def("decode_workspace_size", &decode_workspace_size, "batch"_a, "s_q"_a, "h_q"_a,
        "num_sm_parts"_a, "Bytes of workspace flashmla_decode needs.");

  m.def("decode", &decode, "q"_a, "k_cache"_a, "block_table"_a, "cache_seqlens"_a,
        "tile_scheduler_metadata"_a, "num_splits"_a, "out"_a, "lse"_a, "head_dim_v"_a,
        "softmax_scale"_a, "causal"_a, "workspace"_a.none(), "backend"_a, "stream"_a,
        "validate"_a = false,
        "Paged MLA decode into the caller's out [b, s_q, h_q, 512] and lse [b, h_q, s_q]. "
        "softmax_scale 0 selects 1/sqrt(576). workspace None: allocated stream-ordered by the "
        "library. validate: flashmla_decode_args.validate (block ids and lengths checked on the "
        "GPU).");
}
