// Layout of the decode workspace: the fp32 split-KV partials (decode_params.h), o_accum first, then
// lse_accum, each aligned for vector access.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "flashmla/flashmla.h"
#include "scheduler/metadata.h"

namespace flashmla {

constexpr size_t kWorkspaceAlignment = 256;

struct WorkspaceLayout {
  size_t lse_offset;  // bytes from the start to lse_accum
  size_t total;       // bytes in all
  bool overflow;      // the sizes do not fit in size_t
};

inline size_t align_up(size_t value, size_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

inline WorkspaceLayout workspace_layout(int64_t batch, int64_t s_q, int64_t h_q,
                                        int64_t num_sm_parts) {
  WorkspaceLayout layout{0, 0, false};
  // In long double throughout: batch + num_sm_parts itself may overflow int64.
  const long double rows = (static_cast<long double>(batch) + static_cast<long double>(num_sm_parts)) *
                           static_cast<long double>(s_q) * static_cast<long double>(h_q);
  const long double bytes = rows * (FLASHMLA_HEAD_DIM_V + 1) * sizeof(float) + 2 * kWorkspaceAlignment;
  if (bytes > static_cast<long double>(std::numeric_limits<int64_t>::max() / 2)) {
    layout.overflow = true;
    return layout;
  }
  const size_t row_count = static_cast<size_t>(max_partial_slots(batch, num_sm_parts)) *
                           static_cast<size_t>(s_q) * static_cast<size_t>(h_q);
  layout.lse_offset = align_up(row_count * FLASHMLA_HEAD_DIM_V * sizeof(float), kWorkspaceAlignment);
  layout.total = align_up(layout.lse_offset + row_count * sizeof(float), kWorkspaceAlignment);
  return layout;
}

}  // namespace flashmla
