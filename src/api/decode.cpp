// flashmla_decode: validates every argument, builds the one DecodeParams, picks the kernel, and
// enqueues main kernel + combine.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "api/decode_params.h"
#include "api/device_guard.h"
#include "api/memory_overlap.h"
#include "api/tensor_checks.h"
#include "api/workspace.h"
#include "kernels/combine/combine.h"
#include "kernels/reference/reference_decode.h"
#include "kernels/sm90/sm90_decode.h"
#include "kernels/validate/validate_values.h"
#include "scheduler/metadata.h"

namespace flashmla {
namespace {

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr double kLog2E = 1.4426950408889634;
constexpr int kMinComputeCapability = 80;
constexpr int kHopperComputeCapability = 90;
// Page sizes beyond this are not a paged cache any more; the bound keeps tile arithmetic in int32.
constexpr int64_t kMaxPageBlockSize = 1 << 20;
constexpr const char* kBackendEnv = "FLASHMLA_BACKEND";

struct Plan {
  DecodeParams params;
  WorkspaceLayout workspace;
};

flashmla_status_t check_all_present(const flashmla_decode_args& a) {
  FLASHMLA_TRY(check_tensor("q", a.q));
  FLASHMLA_TRY(check_tensor("k_cache", a.k_cache));
  FLASHMLA_TRY(check_tensor("block_table", a.block_table));
  FLASHMLA_TRY(check_tensor("cache_seqlens", a.cache_seqlens));
  FLASHMLA_TRY(check_tensor("tile_scheduler_metadata", a.tile_scheduler_metadata));
  FLASHMLA_TRY(check_tensor("num_splits", a.num_splits));
  FLASHMLA_TRY(check_tensor("out", a.out));
  FLASHMLA_TRY(check_tensor("lse", a.lse));
  return FLASHMLA_STATUS_SUCCESS;
}

// Agreement between tensors first (needs no GPU), then that the shared device exists.
flashmla_status_t check_devices(const flashmla_decode_args& a) {
  FLASHMLA_TRY(check_same_device("k_cache", *a.k_cache, "q", *a.q));
  FLASHMLA_TRY(check_same_device("block_table", *a.block_table, "q", *a.q));
  FLASHMLA_TRY(check_same_device("cache_seqlens", *a.cache_seqlens, "q", *a.q));
  FLASHMLA_TRY(check_same_device("tile_scheduler_metadata", *a.tile_scheduler_metadata, "q", *a.q));
  FLASHMLA_TRY(check_same_device("num_splits", *a.num_splits, "q", *a.q));
  FLASHMLA_TRY(check_same_device("out", *a.out, "q", *a.q));
  FLASHMLA_TRY(check_same_device("lse", *a.lse, "q", *a.q));
  return check_cuda_device("q", *a.q);
}

flashmla_status_t check_scalars(const flashmla_decode_args& a) {
  if (a.head_dim_v != FLASHMLA_HEAD_DIM_V) {
    return invalid_argument("head_dim_v: must be " + std::to_string(FLASHMLA_HEAD_DIM_V) + ", got " +
                            std::to_string(a.head_dim_v));
  }
  // The kernels scale by softmax_scale * log2(e) in fp32, which must stay finite.
  const bool scale_ok = std::isfinite(a.softmax_scale) && a.softmax_scale > 0.0f &&
                        a.softmax_scale * kLog2E <= std::numeric_limits<float>::max();
  if (a.softmax_scale != 0.0f && !scale_ok) {
    return invalid_argument("softmax_scale: must be finite and > 0, at most FLT_MAX / log2(e) (or 0 "
                            "for 1/sqrt(576)), got " + std::to_string(a.softmax_scale));
  }
  if (a.validate != 0 && a.validate != 1) {
    return invalid_argument("validate: must be 0 (trust the device values) or 1 (check them), got " +
                            std::to_string(a.validate));
  }
  // A C caller may store any int in the enum; reading it as the enum would be undefined in C++.
  int backend = 0;
  static_assert(sizeof(backend) == sizeof(a.backend), "flashmla_backend_t is int-sized");
  std::memcpy(&backend, &a.backend, sizeof(backend));
  if (backend != FLASHMLA_BACKEND_AUTO && backend != FLASHMLA_BACKEND_REFERENCE &&
      backend != FLASHMLA_BACKEND_SM90) {
    return invalid_argument("backend: unknown value " + std::to_string(backend));
  }
  return FLASHMLA_STATUS_SUCCESS;
}

// Shapes, dtypes and layouts of every tensor, then the DecodeParams they describe.
flashmla_status_t build_params(const flashmla_decode_args& a, Plan* plan) {
  const DLTensor& q = *a.q;
  const DLTensor& k = *a.k_cache;
  const DLTensor& table = *a.block_table;
  const DLTensor& seqlens = *a.cache_seqlens;
  const DLTensor& metadata = *a.tile_scheduler_metadata;
  const DLTensor& splits = *a.num_splits;
  const DLTensor& out = *a.out;
  const DLTensor& lse = *a.lse;

  FLASHMLA_TRY(check_ndim("q", q, 4, "[b, s_q, h_q, head_dim]"));
  DType dtype;
  if (same_dtype(q.dtype, dtypes::kBFloat16)) {
    dtype = DType::kBFloat16;
  } else if (same_dtype(q.dtype, dtypes::kFloat16)) {
    dtype = DType::kFloat16;
  } else {
    return invalid_argument("q: expected bfloat16 or float16, got " + dtype_name(q.dtype));
  }
  FLASHMLA_TRY(check_dim_range("q", q, 0, "b", 0, kInt32Max - 1));
  FLASHMLA_TRY(check_dim_range("q", q, 1, "s_q", 1, kInt32Max));
  FLASHMLA_TRY(check_dim_range("q", q, 2, "h_q", 1, kInt32Max));
  FLASHMLA_TRY(check_dim("q", q, 3, "head_dim", FLASHMLA_HEAD_DIM));
  const int64_t b = q.shape[0], s_q = q.shape[1], h_q = q.shape[2];

  FLASHMLA_TRY(check_ndim("k_cache", k, 4, "[num_blocks, page_block_size, h_kv, head_dim]"));
  FLASHMLA_TRY(check_dtype("k_cache", k, q.dtype));
  FLASHMLA_TRY(check_dim("k_cache", k, 3, "head_dim", FLASHMLA_HEAD_DIM));
  const int64_t page = k.shape[1], h_kv = k.shape[2];
  if (page < FLASHMLA_BLOCK_N || page % FLASHMLA_BLOCK_N != 0 || page > kMaxPageBlockSize) {
    return invalid_argument("k_cache: dimension 1 (page_block_size) must be a positive multiple of " +
                            std::to_string(FLASHMLA_BLOCK_N) + " up to " +
                            std::to_string(kMaxPageBlockSize) + ", got " + std::to_string(page));
  }
  FLASHMLA_TRY(check_dim_range("k_cache", k, 2, "h_kv", 1, kMaxKvHeads));
  if (h_q % h_kv != 0) {
    return invalid_argument("k_cache: h_kv (" + std::to_string(h_kv) + ") must divide h_q (" +
                            std::to_string(h_q) + ")");
  }
  if (s_q * h_q > kInt32Max) {
    return invalid_argument("q: s_q * h_q (" + std::to_string(s_q) + " * " + std::to_string(h_q) +
                            ") must fit in int32");
  }
  const int64_t rows_per_kv_head = s_q * (h_q / h_kv);
  if (rows_per_kv_head > kMaxQueryRowsPerKvHead) {
    return invalid_argument("q: s_q * h_q / h_kv (" + std::to_string(rows_per_kv_head) +
                            " query rows per kv head) must be at most " +
                            std::to_string(kMaxQueryRowsPerKvHead));
  }

  FLASHMLA_TRY(check_ndim("block_table", table, 2, "[b, max_blocks_per_seq]"));
  FLASHMLA_TRY(check_dtype("block_table", table, dtypes::kInt32));
  FLASHMLA_TRY(check_dim("block_table", table, 0, "b", b));
  FLASHMLA_TRY(check_dim_range("block_table", table, 1, "max_blocks_per_seq", 0, kInt32Max / page));

  FLASHMLA_TRY(check_ndim("cache_seqlens", seqlens, 1, "[b]"));
  FLASHMLA_TRY(check_dtype("cache_seqlens", seqlens, dtypes::kInt32));
  FLASHMLA_TRY(check_dim("cache_seqlens", seqlens, 0, "b", b));

  FLASHMLA_TRY(check_ndim("tile_scheduler_metadata", metadata, 2, "[num_sm_parts, 8]"));
  FLASHMLA_TRY(check_dtype("tile_scheduler_metadata", metadata, dtypes::kInt32));
  FLASHMLA_TRY(check_dim_range("tile_scheduler_metadata", metadata, 0, "num_sm_parts", 1, 1 << 16));
  FLASHMLA_TRY(check_dim("tile_scheduler_metadata", metadata, 1, "words", FLASHMLA_METADATA_WORDS));
  FLASHMLA_TRY(check_compact_rows("tile_scheduler_metadata", metadata));

  FLASHMLA_TRY(check_ndim("num_splits", splits, 1, "[b + 1]"));
  FLASHMLA_TRY(check_dtype("num_splits", splits, dtypes::kInt32));
  FLASHMLA_TRY(check_dim("num_splits", splits, 0, "b + 1", b + 1));

  FLASHMLA_TRY(check_ndim("out", out, 4, "[b, s_q, h_q, head_dim_v]"));
  if (!same_dtype(out.dtype, q.dtype)) {
    return invalid_argument("out: expected " + dtype_name(q.dtype) + " (the dtype of q), got " +
                            dtype_name(out.dtype));
  }
  FLASHMLA_TRY(check_dim("out", out, 0, "b", b));
  FLASHMLA_TRY(check_dim("out", out, 1, "s_q", s_q));
  FLASHMLA_TRY(check_dim("out", out, 2, "h_q", h_q));
  FLASHMLA_TRY(check_dim("out", out, 3, "head_dim_v", a.head_dim_v));

  FLASHMLA_TRY(check_ndim("lse", lse, 3, "[b, h_q, s_q]"));
  FLASHMLA_TRY(check_dtype("lse", lse, dtypes::kFloat32));
  FLASHMLA_TRY(check_dim("lse", lse, 0, "b", b));
  FLASHMLA_TRY(check_dim("lse", lse, 1, "h_q", h_q));
  FLASHMLA_TRY(check_dim("lse", lse, 2, "s_q", s_q));

  const int64_t num_sm_parts = metadata.shape[0];
  // Partial slots are numbered up to b + num_sm_parts - 1 in int32 (num_splits' prefix sums).
  if (b + num_sm_parts > kInt32Max) {
    return invalid_argument("tile_scheduler_metadata: b + num_sm_parts (" + std::to_string(b) + " + " +
                            std::to_string(num_sm_parts) + ") must fit in int32");
  }
  plan->workspace = workspace_layout(b, s_q, h_q, num_sm_parts);
  if (plan->workspace.overflow) return invalid_argument("q: problem too large for a workspace");
  if (a.workspace != nullptr) {
    if (a.workspace_size < plan->workspace.total) {
      return invalid_argument("workspace: " + std::to_string(a.workspace_size) +
                              " bytes is too small, need " +
                              std::to_string(plan->workspace.total) +
                              " (flashmla_decode_workspace_size)");
    }
    if (reinterpret_cast<uintptr_t>(a.workspace) % kWorkspaceAlignment != 0) {
      return invalid_argument("workspace: must be " + std::to_string(kWorkspaceAlignment) +
                              "-byte aligned");
    }
  }

  DecodeParams& p = plan->params;
  p = DecodeParams{};
  p.dtype = dtype;
  p.batch = static_cast<int>(b);
  p.s_q = static_cast<int>(s_q);
  p.h_q = static_cast<int>(h_q);
  p.h_kv = static_cast<int>(h_kv);
  p.q_heads_per_kv_head = static_cast<int>(h_q / h_kv);
  p.q_rows_per_kv_head = static_cast<int>(rows_per_kv_head);
  p.head_dim = FLASHMLA_HEAD_DIM;
  p.head_dim_v = a.head_dim_v;
  p.page_block_size = static_cast<int>(page);
  p.num_cache_blocks = k.shape[0];
  p.max_blocks_per_seq = static_cast<int>(table.shape[1]);
  p.scale = a.softmax_scale != 0.0f ? a.softmax_scale
                                    : static_cast<float>(1.0 / std::sqrt(double(FLASHMLA_HEAD_DIM)));
  p.scale_log2 = static_cast<float>(p.scale * kLog2E);
  p.causal = a.causal != 0;
  p.q = base_address(q);
  p.q_batch_stride = stride_of(q, 0);
  p.q_seq_stride = stride_of(q, 1);
  p.q_head_stride = stride_of(q, 2);
  p.k = base_address(k);
  p.k_block_stride = stride_of(k, 0);
  p.k_token_stride = stride_of(k, 1);
  p.k_head_stride = stride_of(k, 2);
  p.block_table = reinterpret_cast<const int32_t*>(base_address(table));
  p.block_table_batch_stride = stride_of(table, 0);
  p.seqlens = reinterpret_cast<const int32_t*>(base_address(seqlens));
  p.out = const_cast<char*>(base_address(out));
  p.o_batch_stride = stride_of(out, 0);
  p.o_seq_stride = stride_of(out, 1);
  p.o_head_stride = stride_of(out, 2);
  p.lse = reinterpret_cast<float*>(const_cast<char*>(base_address(lse)));
  p.lse_batch_stride = stride_of(lse, 0);
  p.lse_head_stride = stride_of(lse, 1);
  p.lse_seq_stride = stride_of(lse, 2);
  p.tile_metadata = reinterpret_cast<const int32_t*>(base_address(metadata));
  p.num_splits = reinterpret_cast<const int32_t*>(base_address(splits));
  p.num_sm_parts = static_cast<int>(num_sm_parts);
  p.device = q.device.device_id;
  return FLASHMLA_STATUS_SUCCESS;
}

// Each output has its own memory, apart from every other argument: the kernels read the inputs
// (block ids, lengths, the plan) while they write, and the combine reads the workspace while it
// writes out and lse. Each footprint is worked out once: the checks run on every call.
flashmla_status_t check_outputs_alone(const flashmla_decode_args& a, const Plan& plan) {
  const Footprint out(*a.out), lse(*a.lse);
  FLASHMLA_TRY(check_no_self_overlap("out", *a.out, out));
  FLASHMLA_TRY(check_no_self_overlap("lse", *a.lse, lse));
  FLASHMLA_TRY(check_disjoint("out", out, "lse", lse));
  const struct {
    const char* name;
    Footprint footprint;
  } inputs[] = {{"q", Footprint(*a.q)},
                {"k_cache", Footprint(*a.k_cache)},
                {"block_table", Footprint(*a.block_table)},
                {"cache_seqlens", Footprint(*a.cache_seqlens)},
                {"tile_scheduler_metadata", Footprint(*a.tile_scheduler_metadata)},
                {"num_splits", Footprint(*a.num_splits)}};
  for (const auto& input : inputs) {
    FLASHMLA_TRY(check_disjoint("out", out, input.name, input.footprint));
    FLASHMLA_TRY(check_disjoint("lse", lse, input.name, input.footprint));
  }
  if (a.workspace == nullptr) return FLASHMLA_STATUS_SUCCESS;
  const Footprint workspace(a.workspace, plan.workspace.total);
  for (const auto& input : inputs) FLASHMLA_TRY(check_disjoint("workspace", workspace, input.name, input.footprint));
  FLASHMLA_TRY(check_disjoint("workspace", workspace, "out", out));
  return check_disjoint("workspace", workspace, "lse", lse);
}

flashmla_status_t requested_backend(flashmla_backend_t from_args, flashmla_backend_t* backend) {
  *backend = from_args;
  if (from_args != FLASHMLA_BACKEND_AUTO) return FLASHMLA_STATUS_SUCCESS;
  const char* env = std::getenv(kBackendEnv);
  if (env == nullptr || env[0] == '\0' || std::strcmp(env, "auto") == 0) return FLASHMLA_STATUS_SUCCESS;
  if (std::strcmp(env, "reference") == 0) {
    *backend = FLASHMLA_BACKEND_REFERENCE;
  } else if (std::strcmp(env, "sm90") == 0) {
    *backend = FLASHMLA_BACKEND_SM90;
  } else {
    return invalid_argument(std::string(kBackendEnv) + ": expected auto, reference or sm90, got '" +
                            env + "'");
  }
  return FLASHMLA_STATUS_SUCCESS;
}

// Decides between the Hopper and the reference kernel; true in *use_sm90 for the former.
flashmla_status_t choose_kernel(flashmla_backend_t requested, const DecodeParams& p, bool* use_sm90) {
  int major = 0, minor = 0;
  cudaError_t error = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, p.device);
  if (error == cudaSuccess) {
    error = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, p.device);
  }
  if (error != cudaSuccess) return cuda_failure(error, "reading the compute capability");
  const int capability = major * 10 + minor;
  const std::string device_text =
      "device " + std::to_string(p.device) + " has compute capability " + std::to_string(major) +
      "." + std::to_string(minor);
  if (capability < kMinComputeCapability) {
    return fail(FLASHMLA_STATUS_NOT_SUPPORTED, "flashmla needs compute capability 8.0 or newer; " +
                                                   device_text);
  }
  const bool hopper = capability == kHopperComputeCapability;
  const char* reason = sm90_kernel_available() ? sm90_unsupported_reason(p) : "built without the SM90 kernel";
  const bool sm90_fits = hopper && reason[0] == '\0';
  switch (requested) {
    case FLASHMLA_BACKEND_REFERENCE:
      *use_sm90 = false;
      return FLASHMLA_STATUS_SUCCESS;
    case FLASHMLA_BACKEND_SM90:
      if (!hopper) {
        return fail(FLASHMLA_STATUS_NOT_SUPPORTED, "backend: the SM90 kernel needs an sm_90 GPU; " +
                                                       device_text);
      }
      if (!sm90_fits) {
        return fail(FLASHMLA_STATUS_NOT_SUPPORTED, std::string("backend: the SM90 kernel cannot run this call: ") + reason);
      }
      *use_sm90 = true;
      return FLASHMLA_STATUS_SUCCESS;
    default:
      *use_sm90 = sm90_fits;
      return FLASHMLA_STATUS_SUCCESS;
  }
}

// Validating mode: the values that live on the device (lengths, block ids, the plan) are checked on
// the GPU before any kernel reads the cache. The verdict is read back, which synchronises the
// stream, so a stream being captured into a graph is refused rather than having its capture broken.
flashmla_status_t check_values_on_device(const DecodeParams& p, cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  cudaError_t error = cudaStreamIsCapturing(stream, &capture);
  // The legacy stream reports this while another stream of the process is capturing.
  const bool capturing = error == cudaErrorStreamCaptureImplicit ||
                         (error == cudaSuccess && capture != cudaStreamCaptureStatusNone);
  if (capturing) {
    cudaGetLastError();
    return invalid_argument(
        "validate: validating mode synchronises the stream, so it cannot run while the stream is "
        "being captured into a CUDA graph; validate outside the capture");
  }
  if (error != cudaSuccess) return cuda_failure(error, "validate: querying stream capture");
  ValueFaultReport report;
  error = check_device_values(p, stream, &report);
  if (error != cudaSuccess) return cuda_failure(error, "validate: device value check");
  if (report.fault != ValueFault::kNone) return invalid_argument(describe_value_fault(p, report));
  return FLASHMLA_STATUS_SUCCESS;
}

flashmla_status_t enqueue(const flashmla_decode_args& a, Plan& plan, bool use_sm90,
                          cudaStream_t stream) {
  DecodeParams& p = plan.params;
  char* workspace = static_cast<char*>(a.workspace);
  const bool owned = workspace == nullptr;
  if (owned) {
    const cudaError_t error =
        cudaMallocAsync(reinterpret_cast<void**>(&workspace), plan.workspace.total, stream);
    if (error != cudaSuccess) return cuda_failure(error, "workspace: stream-ordered allocation");
  }
  p.o_accum = reinterpret_cast<float*>(workspace);
  p.lse_accum = reinterpret_cast<float*>(workspace + plan.workspace.lse_offset);

  cudaError_t error = use_sm90 ? run_sm90_decode(p, stream) : run_reference_decode(p, stream);
  const char* stage = use_sm90 ? "SM90 decode kernel" : "reference decode kernel";
  if (error == cudaSuccess) {
    error = run_combine(p, stream, /*programmatic_dependent_launch=*/use_sm90);
    stage = "combine kernel";
  }
  if (owned) {
    const cudaError_t free_error = cudaFreeAsync(workspace, stream);
    if (error == cudaSuccess && free_error != cudaSuccess) {
      error = free_error;
      stage = "workspace: stream-ordered free";
    }
  }
  if (error != cudaSuccess) return cuda_failure(error, stage);
  return succeed();
}

flashmla_status_t decode(const flashmla_decode_args* args, cudaStream_t stream) {
  if (args == nullptr) return invalid_argument("args: is NULL");
  const flashmla_decode_args& a = *args;
  FLASHMLA_TRY(check_all_present(a));
  FLASHMLA_TRY(check_scalars(a));
  Plan plan;
  FLASHMLA_TRY(build_params(a, &plan));
  FLASHMLA_TRY(check_outputs_alone(a, plan));
  FLASHMLA_TRY(check_devices(a));
  flashmla_backend_t requested;
  FLASHMLA_TRY(requested_backend(a.backend, &requested));

  DeviceGuard guard(plan.params.device);
  if (guard.status() != cudaSuccess) return cuda_failure(guard.status(), "selecting the device");
  bool use_sm90 = false;
  FLASHMLA_TRY(choose_kernel(requested, plan.params, &use_sm90));
  if (plan.params.batch == 0) return succeed();
  if (a.validate != 0) FLASHMLA_TRY(check_values_on_device(plan.params, stream));
  return enqueue(a, plan, use_sm90, stream);
}

}  // namespace
}  // namespace flashmla

extern "C" flashmla_status_t flashmla_decode(const flashmla_decode_args* args, cudaStream_t stream) {
  return flashmla::guarded([&] { return flashmla::decode(args, stream); });
}
