// A well-formed decode call over fake device addresses, for tests of the validation that runs
// before any memory is touched: each tensor owns its shape and strides, and `build` points the
// argument struct at them.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "flashmla/flashmla.h"

namespace flashmla_test {

constexpr DLDataType kBF16{kDLBfloat, 16, 1};
constexpr DLDataType kFP16{kDLFloat, 16, 1};
constexpr DLDataType kF32{kDLFloat, 32, 1};
constexpr DLDataType kI32{kDLInt, 32, 1};

// A tensor description that owns its shape/stride arrays.
struct FakeTensor {
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;  // empty = compact
  DLTensor t{};

  FakeTensor(std::vector<int64_t> s, DLDataType dtype, uintptr_t address)
      : shape(std::move(s)) {
    t.data = reinterpret_cast<void*>(address);
    t.device = {kDLCUDA, 0};
    t.dtype = dtype;
    refresh();
  }
  void refresh() {
    t.ndim = static_cast<int32_t>(shape.size());
    t.shape = shape.data();
    t.strides = strides.empty() ? nullptr : strides.data();
  }
};

// A well-formed decode call: b=2, s_q=2, h_q=16, h_kv=2, page 64, 10 cache blocks, 4 parts.
struct DecodeCall {
  static constexpr int64_t b = 2, s_q = 2, h_q = 16, h_kv = 2, page = 64, blocks = 10, parts = 4;
  FakeTensor q{{b, s_q, h_q, 576}, kBF16, 0x100000};
  FakeTensor k{{blocks, page, h_kv, 576}, kBF16, 0x1000000};  // 1.4 MB, past the rest
  FakeTensor table{{b, 5}, kI32, 0x300000};
  FakeTensor seqlens{{b}, kI32, 0x400000};
  FakeTensor metadata{{parts, FLASHMLA_METADATA_WORDS}, kI32, 0x500000};
  FakeTensor splits{{b + 1}, kI32, 0x600000};
  FakeTensor out{{b, s_q, h_q, 512}, kBF16, 0x700000};
  FakeTensor lse{{b, h_q, s_q}, kF32, 0x800000};
  flashmla_decode_args args{};

  flashmla_decode_args& build() {
    for (FakeTensor* t : {&q, &k, &table, &seqlens, &metadata, &splits, &out, &lse}) t->refresh();
    flashmla_decode_args_init(&args);
    args.q = &q.t;
    args.k_cache = &k.t;
    args.block_table = &table.t;
    args.cache_seqlens = &seqlens.t;
    args.tile_scheduler_metadata = &metadata.t;
    args.num_splits = &splits.t;
    args.out = &out.t;
    args.lse = &lse.t;
    return args;
  }
};

// A compact int32 tensor in host memory over `data`, with `shape` owned by the caller: the
// metadata calls' host path.
inline DLTensor host_int32_tensor(void* data, int ndim, int64_t* shape) {
  DLTensor t{};
  t.data = data;
  t.device = {kDLCPU, 0};
  t.ndim = ndim;
  t.shape = shape;
  t.dtype = kI32;
  return t;
}

}  // namespace flashmla_test
