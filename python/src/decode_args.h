// The flashmla_decode_args that both Python entry points (the nanobind module and the XLA FFI
// handlers) pass to the C API, filled in one place; each adds its own workspace.
#pragma once

#include <dlpack/dlpack.h>

#include "flashmla/flashmla.h"

namespace flashmla_python {

struct DecodeTensors {
  DLTensor* q;
  DLTensor* k_cache;
  DLTensor* block_table;
  DLTensor* cache_seqlens;
  DLTensor* tile_scheduler_metadata;
  DLTensor* num_splits;
  DLTensor* out;
  DLTensor* lse;
};

inline flashmla_decode_args make_decode_args(const DecodeTensors& t, int head_dim_v, float softmax_scale,
                                             bool causal, int backend, bool validate) {
  flashmla_decode_args args;
  flashmla_decode_args_init(&args);
  args.q = t.q;
  args.k_cache = t.k_cache;
  args.block_table = t.block_table;
  args.cache_seqlens = t.cache_seqlens;
  args.tile_scheduler_metadata = t.tile_scheduler_metadata;
  args.num_splits = t.num_splits;
  args.out = t.out;
  args.lse = t.lse;
  args.head_dim_v = head_dim_v;
  args.softmax_scale = softmax_scale;
  args.causal = causal ? 1 : 0;
  args.backend = static_cast<flashmla_backend_t>(backend);
  args.validate = validate ? 1 : 0;
  return args;
}

}  // namespace flashmla_python
