// The one description of a decode problem that every kernel consumes. Built (and checked) in
// exactly one place, src/api/decode.cpp; kernels trust it and never re-derive what it holds.
// All strides are in elements and 64-bit, so caches beyond 2^31 elements index correctly.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define FLASHMLA_HOST_DEVICE __host__ __device__
#else
#define FLASHMLA_HOST_DEVICE
#endif

namespace flashmla {

enum class DType : int { kBFloat16, kFloat16 };

// Grid limits every kernel honours, checked in decode.cpp: kv heads and groups of query rows run
// on grid dimensions y and z (at most 65535 blocks), and the smallest group is 16 rows (the
// reference kernel's CTA, the combine's largest batch of rows).
constexpr int64_t kMaxKvHeads = 65535;
constexpr int64_t kMaxQueryRowsPerKvHead = 65535 * 16;

struct DecodeParams {
  DType dtype;

  // Shapes.
  int batch;
  int s_q;
  int h_q;
  int h_kv;
  int q_heads_per_kv_head;     // h_q / h_kv
  int q_rows_per_kv_head;      // s_q * q_heads_per_kv_head; row r = s * q_heads_per_kv_head + j
  int head_dim;                // 576
  int head_dim_v;              // 512
  int page_block_size;         // tokens per cache page, a multiple of 64
  int64_t num_cache_blocks;    // k_cache.shape[0]
  int max_blocks_per_seq;      // block_table.shape[1]

  // Softmax: scores are (q . k) * scale; exp2 arguments use scale * log2(e).
  float scale;
  float scale_log2;
  bool causal;

  // q [b, s_q, h_q, d]
  const void* q;
  int64_t q_batch_stride, q_seq_stride, q_head_stride;
  // k_cache [num_blocks, page_block_size, h_kv, d]; V is its first head_dim_v columns.
  const void* k;
  int64_t k_block_stride, k_token_stride, k_head_stride;
  // block_table [b, max_blocks_per_seq] int32
  const int32_t* block_table;
  int64_t block_table_batch_stride;
  // cache_seqlens [b] int32
  const int32_t* seqlens;

  // out [b, s_q, h_q, dv]
  void* out;
  int64_t o_batch_stride, o_seq_stride, o_head_stride;
  // lse [b, h_q, s_q] float32
  float* lse;
  int64_t lse_batch_stride, lse_head_stride, lse_seq_stride;

  // Split-KV plan (src/scheduler/metadata.h).
  const int32_t* tile_metadata;  // [num_sm_parts, FLASHMLA_METADATA_WORDS]
  const int32_t* num_splits;     // [b + 1]
  int num_sm_parts;

  // Workspace partials, compact: slot s, kv head k, row r (of q_rows_per_kv_head):
  //   o_accum  [slots, h_kv, q_rows_per_kv_head, head_dim_v] fp32
  //   lse_accum[slots, h_kv, q_rows_per_kv_head]             fp32, natural log, -inf = no key
  float* o_accum;
  float* lse_accum;

  int device;
};

// Offset helpers shared by kernels so that every one addresses the partials identically.
inline FLASHMLA_HOST_DEVICE int64_t partial_row_index(const DecodeParams& p, int64_t slot,
                                                     int kv_head, int row) {
  return (slot * p.h_kv + kv_head) * p.q_rows_per_kv_head + row;
}

}  // namespace flashmla
