// Library information, argument defaults and workspace sizing.
#include <string>

#include "api/errors.h"
#include "api/workspace.h"

extern "C" void flashmla_get_version(int* major, int* minor, int* patch) {
  if (major != nullptr) *major = FLASHMLA_VERSION_MAJOR;
  if (minor != nullptr) *minor = FLASHMLA_VERSION_MINOR;
  if (patch != nullptr) *patch = FLASHMLA_VERSION_PATCH;
}

extern "C" void flashmla_decode_args_init(flashmla_decode_args* args) {
  if (args == nullptr) return;
  *args = flashmla_decode_args{};
  args->head_dim_v = FLASHMLA_HEAD_DIM_V;
  args->softmax_scale = 0.0f;
  args->causal = 0;
  args->workspace = nullptr;
  args->workspace_size = 0;
  args->backend = FLASHMLA_BACKEND_AUTO;
  args->validate = 0;
}

extern "C" flashmla_status_t flashmla_decode_workspace_size(int64_t batch, int64_t s_q, int64_t h_q,
                                                            int64_t num_sm_parts, size_t* bytes) {
  using flashmla::invalid_argument;
  if (bytes == nullptr) return invalid_argument("bytes: is NULL");
  if (batch < 0) return invalid_argument("batch: must be >= 0, got " + std::to_string(batch));
  if (s_q < 1) return invalid_argument("s_q: must be >= 1, got " + std::to_string(s_q));
  if (h_q < 1) return invalid_argument("h_q: must be >= 1, got " + std::to_string(h_q));
  if (num_sm_parts < 1) {
    return invalid_argument("num_sm_parts: must be >= 1, got " + std::to_string(num_sm_parts));
  }
  const flashmla::WorkspaceLayout layout = flashmla::workspace_layout(batch, s_q, h_q, num_sm_parts);
  if (layout.overflow) return invalid_argument("batch, s_q, h_q, num_sm_parts: workspace size overflows");
  *bytes = layout.total;
  return flashmla::succeed();
}
