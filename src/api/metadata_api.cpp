// flashmla_get_num_sm_parts and flashmla_get_metadata: validation and host/device dispatch.
#include <cstdint>
#include <limits>
#include <string>

#include "api/device_guard.h"
#include "api/memory_overlap.h"
#include "api/tensor_checks.h"
#include "scheduler/metadata.h"
#include "scheduler/scheduler.h"

namespace flashmla {
namespace {

// The decode kernels tile a KV head's query rows by this many.
constexpr int64_t kRowsPerTile = 64;

// Bound on parts, far above any GPU's SM count, so that a wild tensor shape is caught.
constexpr int64_t kMaxSmParts = 1 << 16;

flashmla_status_t get_num_sm_parts(int device, int64_t rows_per_kv_head, int64_t num_kv_heads,
                                   int64_t* num_sm_parts) {
  if (num_sm_parts == nullptr) return invalid_argument("num_sm_parts: is NULL");
  if (rows_per_kv_head < 1 || rows_per_kv_head > std::numeric_limits<int32_t>::max()) {
    return invalid_argument("num_q_rows_per_kv_head: must be in [1, 2^31), got " +
                            std::to_string(rows_per_kv_head));
  }
  if (num_kv_heads < 1 || num_kv_heads > std::numeric_limits<int32_t>::max()) {
    return invalid_argument("num_kv_heads: must be in [1, 2^31), got " +
                            std::to_string(num_kv_heads));
  }
  int sm_count = 0;
  const cudaError_t error = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device);
  if (error != cudaSuccess) {
    cudaGetLastError();
    if (error == cudaErrorInvalidDevice) {
      return invalid_argument("device: " + std::to_string(device) + " is not a CUDA device");
    }
    return cuda_failure(error, "device: reading the multiprocessor count");
  }
  const int64_t row_tiles = (rows_per_kv_head + kRowsPerTile - 1) / kRowsPerTile;
  const int64_t parts = sm_count / num_kv_heads / row_tiles;
  *num_sm_parts = parts < 1 ? 1 : parts;
  return succeed();
}

flashmla_status_t get_metadata(const DLTensor* seqlens_arg, DLTensor* metadata_arg,
                               DLTensor* num_splits_arg, cudaStream_t stream) {
  FLASHMLA_TRY(check_tensor("cache_seqlens", seqlens_arg));
  FLASHMLA_TRY(check_tensor("tile_scheduler_metadata", metadata_arg));
  FLASHMLA_TRY(check_tensor("num_splits", num_splits_arg));
  const DLTensor& seqlens = *seqlens_arg;
  const DLTensor& metadata = *metadata_arg;
  const DLTensor& num_splits = *num_splits_arg;

  FLASHMLA_TRY(check_ndim("cache_seqlens", seqlens, 1, "[b]"));
  FLASHMLA_TRY(check_dtype("cache_seqlens", seqlens, dtypes::kInt32));
  FLASHMLA_TRY(check_dim_range("cache_seqlens", seqlens, 0, "b", 0,
                               std::numeric_limits<int32_t>::max() - 1));
  const int64_t batch = seqlens.shape[0];

  FLASHMLA_TRY(check_ndim("tile_scheduler_metadata", metadata, 2, "[num_sm_parts, 8]"));
  FLASHMLA_TRY(check_dtype("tile_scheduler_metadata", metadata, dtypes::kInt32));
  FLASHMLA_TRY(check_dim_range("tile_scheduler_metadata", metadata, 0, "num_sm_parts", 1, kMaxSmParts));
  FLASHMLA_TRY(check_dim("tile_scheduler_metadata", metadata, 1, "words", FLASHMLA_METADATA_WORDS));
  FLASHMLA_TRY(check_compact_rows("tile_scheduler_metadata", metadata));
  const int num_sm_parts = static_cast<int>(metadata.shape[0]);

  FLASHMLA_TRY(check_ndim("num_splits", num_splits, 1, "[b + 1]"));
  FLASHMLA_TRY(check_dtype("num_splits", num_splits, dtypes::kInt32));
  FLASHMLA_TRY(check_dim("num_splits", num_splits, 0, "b + 1", batch + 1));

  // num_splits holds prefix sums of partial slots, up to b + num_sm_parts - 1 of them.
  if (batch + num_sm_parts > std::numeric_limits<int32_t>::max()) {
    return invalid_argument("num_splits: b + num_sm_parts (" + std::to_string(batch) + " + " +
                            std::to_string(num_sm_parts) + ") must fit in int32");
  }

  // The planner reads the lengths while it writes both outputs.
  const Footprint lengths_bytes(seqlens), metadata_bytes(metadata), splits_bytes(num_splits);
  FLASHMLA_TRY(check_no_self_overlap("tile_scheduler_metadata", metadata, metadata_bytes));
  FLASHMLA_TRY(check_no_self_overlap("num_splits", num_splits, splits_bytes));
  FLASHMLA_TRY(check_disjoint("tile_scheduler_metadata", metadata_bytes, "cache_seqlens", lengths_bytes));
  FLASHMLA_TRY(check_disjoint("num_splits", splits_bytes, "cache_seqlens", lengths_bytes));
  FLASHMLA_TRY(check_disjoint("num_splits", splits_bytes, "tile_scheduler_metadata", metadata_bytes));

  FLASHMLA_TRY(check_same_device("tile_scheduler_metadata", metadata, "cache_seqlens", seqlens));
  FLASHMLA_TRY(check_same_device("num_splits", num_splits, "cache_seqlens", seqlens));

  const auto* lengths = reinterpret_cast<const int32_t*>(base_address(seqlens));
  auto* metadata_out = reinterpret_cast<int32_t*>(const_cast<char*>(base_address(metadata)));
  auto* splits_out = reinterpret_cast<int32_t*>(const_cast<char*>(base_address(num_splits)));

  if (seqlens.device.device_type == kDLCPU) {
    for (int64_t i = 0; i < batch; ++i) {
      if (lengths[i] < 0) {
        return invalid_argument("cache_seqlens: entry " + std::to_string(i) + " is negative (" +
                                std::to_string(lengths[i]) + ")");
      }
    }
    compute_metadata_host(lengths, static_cast<int>(batch), num_sm_parts, metadata_out, splits_out);
    return succeed();
  }

  FLASHMLA_TRY(check_cuda_device("cache_seqlens", seqlens));
  DeviceGuard guard(seqlens.device.device_id);
  if (guard.status() != cudaSuccess) return cuda_failure(guard.status(), "selecting the device");
  const cudaError_t error = compute_metadata_device(lengths, static_cast<int>(batch), num_sm_parts,
                                                    metadata_out, splits_out, stream);
  if (error != cudaSuccess) return cuda_failure(error, "scheduler metadata kernel launch");
  return succeed();
}

}  // namespace
}  // namespace flashmla

extern "C" flashmla_status_t flashmla_get_num_sm_parts(int device, int64_t num_q_rows_per_kv_head,
                                                       int64_t num_kv_heads,
                                                       int64_t* num_sm_parts) {
  return flashmla::guarded([&] {
    return flashmla::get_num_sm_parts(device, num_q_rows_per_kv_head, num_kv_heads, num_sm_parts);
  });
}

extern "C" flashmla_status_t flashmla_get_metadata(const DLTensor* cache_seqlens,
                                                   DLTensor* tile_scheduler_metadata,
                                                   DLTensor* num_splits, cudaStream_t stream) {
  return flashmla::guarded([&] {
    return flashmla::get_metadata(cache_seqlens, tile_scheduler_metadata, num_splits, stream);
  });
}
