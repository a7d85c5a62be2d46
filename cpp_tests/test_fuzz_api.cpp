// Fuzzing the C API with seeded random argument sets. Every call must end in a correct result or a
// clean error: a status and a message that starts with the name of an argument at fault.
//
// Host part (runs without a GPU, in CI): random well-formed decode calls on fake device addresses,
// each broken by 1 to 3 mutations from a catalogue in which every mutation is invalid on its own
// and no two mutations touch the same tensor (or the same scalar, or devices at all), so that no
// combination can repair another. Validation must reject each call before it touches memory. The
// fake tensors claim a CUDA device that does not exist (device 0 without a GPU), so a mutation that
// validation missed ends at the device check instead of a launch; that outcome fails the test.
//
// GPU part: random valid problems in random layouts (padded strides, empty requests, junk in
// unused block-table entries, host or device plan, library or caller workspace, three kinds of
// stream, both backends, validating mode on or off) compared with the fp64 CPU model; single
// mutations of the same catalogue on real buffers; and device-value corruptions (block ids,
// lengths, plan words) under validating mode, whose message must be the first fault predicted by
// a host model of the check, with out and lse left untouched. After every call the CUDA context
// must still be healthy.
//
// FLASHMLA_FUZZ_SEED, FLASHMLA_FUZZ_HOST_CASES and FLASHMLA_FUZZ_GPU_CASES override the defaults.
#include <gtest/gtest.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "decode_harness.h"
#include "dl_tensor_utils.h"
#include "flashmla/flashmla.h"

namespace flashmla_test {
namespace {

constexpr uint64_t kDefaultSeed = 0x5eed'f1a5'3a11ULL;
constexpr int kDefaultHostCases = 4000;
constexpr int kDefaultMetadataCases = 1500;
constexpr int kDefaultSizeCases = 1500;
constexpr int kDefaultGpuCases = 1200;
constexpr int kMaxMutations = 3;
constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kMaxSmParts = 1 << 16;
constexpr int64_t kMaxPageBlockSize = 1 << 20;
constexpr size_t kWorkspaceAlignment = 256;

int64_t env_int(const char* name, int64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  return std::strtoll(text, nullptr, 0);
}

uint64_t fuzz_seed() { return static_cast<uint64_t>(env_int("FLASHMLA_FUZZ_SEED", kDefaultSeed)); }

template <typename T>
T pick(std::mt19937_64& rng, std::initializer_list<T> values) {
  return *(values.begin() + rng() % values.size());
}

int64_t uniform(std::mt19937_64& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng);
}

// ---- The call under test -------------------------------------------------------------------------

enum Tensor { kQ, kK, kTable, kSeqlens, kMetadata, kSplits, kOut, kLse, kNumTensors };
const char* const kTensorNames[kNumTensors] = {"q",   "k_cache", "block_table", "cache_seqlens",
                                               "tile_scheduler_metadata", "num_splits", "out", "lse"};

TensorDesc clone(const DLTensor& t) {
  std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
  std::vector<int64_t> strides;
  if (t.strides != nullptr) strides.assign(t.strides, t.strides + t.ndim);
  return TensorDesc(t.data, t.device, t.dtype, shape, strides, t.byte_offset);
}

// Points the tensor fields of `args` at `tensors` (in Tensor order).
void point_args_at(std::vector<TensorDesc>& tensors, flashmla_decode_args* args) {
  args->q = tensors[kQ].get();
  args->k_cache = tensors[kK].get();
  args->block_table = tensors[kTable].get();
  args->cache_seqlens = tensors[kSeqlens].get();
  args->tile_scheduler_metadata = tensors[kMetadata].get();
  args->num_splits = tensors[kSplits].get();
  args->out = tensors[kOut].get();
  args->lse = tensors[kLse].get();
}

// A decode call whose descriptors the test owns and may break.
struct Call {
  std::vector<TensorDesc> tensors;
  flashmla_decode_args args{};
  bool null_args = false;
  int64_t h_q;  // of the unbroken call

  explicit Call(const flashmla_decode_args& from) : args(from), h_q(from.q->shape[2]) {
    for (const DLTensor* t : {from.q, from.k_cache, from.block_table, from.cache_seqlens,
                              from.tile_scheduler_metadata, from.num_splits,
                              static_cast<const DLTensor*>(from.out),
                              static_cast<const DLTensor*>(from.lse)}) {
      tensors.push_back(clone(*t));
    }
    relink();
  }
  Call(const Call&) = delete;
  Call& operator=(const Call&) = delete;

  void relink() { point_args_at(tensors, &args); }
  void set(Tensor which, const DLTensor* t) {
    switch (which) {
      case kQ: args.q = t; break;
      case kK: args.k_cache = t; break;
      case kTable: args.block_table = t; break;
      case kSeqlens: args.cache_seqlens = t; break;
      case kMetadata: args.tile_scheduler_metadata = t; break;
      case kSplits: args.num_splits = t; break;
      case kOut: args.out = const_cast<DLTensor*>(t); break;
      case kLse: args.lse = const_cast<DLTensor*>(t); break;
      default: break;
    }
  }
  flashmla_status_t run(cudaStream_t stream) {
    return flashmla_decode(null_args ? nullptr : &args, stream);
  }
};

bool is_empty(const DLTensor& t) {
  for (int d = 0; d < t.ndim; ++d) {
    if (t.shape[d] == 0) return true;
  }
  return false;
}

int64_t stride_at(const DLTensor& t, int d) {
  if (t.strides != nullptr) return t.strides[d];
  int64_t s = 1;
  for (int e = t.ndim - 1; e > d; --e) s *= t.shape[e];
  return s;
}

// ---- Mutations -------------------------------------------------------------------------------------
//
// Each mutation breaks the call on its own. A mutation returns false when it cannot apply to this
// call (e.g. a layout change on an empty tensor, whose layout is never checked) and leaves the call
// as it was; the generator then draws another.

struct Mutation {
  std::string slot;                 // at most one mutation per slot
  std::string label;                // for failure messages
  std::set<std::string> may_name;   // arguments the error may name
};

// Dimension values that make a tensor's dimension `d` invalid whatever else the call holds.
int64_t invalid_size(Tensor which, int d, const DLTensor& t, int64_t h_q, std::mt19937_64& rng) {
  const int64_t huge = pick<int64_t>(rng, {int64_t{1} << 31, int64_t{1} << 40, int64_t{1} << 62,
                                           kInt64Max - 1, kInt64Max});
  const int64_t negative = pick<int64_t>(rng, {-1, -2, -64, std::numeric_limits<int64_t>::min()});
  if (rng() % 3 == 0) return negative;
  switch (which) {
    case kQ:
      // q defines b, s_q and h_q for everyone else; only values outside every range are safe.
      if (d == 1 || d == 2) return pick<int64_t>(rng, {0, huge});
      if (d == 3) return pick<int64_t>(rng, {0, 512, 575, 577, 1152, huge});
      return huge;
    case kK:
      if (d == 0) return pick<int64_t>(rng, {int64_t{1} << 62, kInt64Max});  // 64-bit extent overflow
      if (d == 1) return pick<int64_t>(rng, {0, 1, 32, 63, 65, 96, kMaxPageBlockSize + 64, huge});
      if (d == 2) return h_q + uniform(rng, 1, 7);  // cannot divide h_q
      return pick<int64_t>(rng, {0, 512, 575, 577, huge});
    case kTable:
      if (d == 1) return kInt32Max / FLASHMLA_BLOCK_N + uniform(rng, 1, 1000);
      return t.shape[d] + uniform(rng, 1, 3);
    case kMetadata:
      if (d == 0) return pick<int64_t>(rng, {0, kMaxSmParts + 1, huge});
      return pick<int64_t>(rng, {0, 1, 7, 9, 16, huge});
    default:
      // The remaining dimensions must equal what q (or head_dim_v) says: anything else is wrong.
      return pick<int64_t>(rng, {t.shape[d] + uniform(rng, 1, 5), huge});
  }
}

DLDataType invalid_dtype(Tensor which, std::mt19937_64& rng) {
  const DLDataType structural = pick<DLDataType>(
      rng, {DLDataType{kDLFloat, 16, 0}, DLDataType{kDLFloat, 16, 2}, DLDataType{kDLInt, 32, 4},
            DLDataType{kDLFloat, 0, 1}, DLDataType{kDLInt, 12, 1}, DLDataType{kDLBfloat, 1, 1}});
  if (rng() % 4 == 0) return structural;
  switch (which) {
    case kQ:
    case kK:
    case kOut:  // q, k_cache and out share bf16 or fp16; both are left out
      return pick<DLDataType>(rng, {dl_float32(), dl_dtype(kDLFloat, 64), dl_int32(), dl_dtype(kDLInt, 16),
                                    dl_dtype(kDLUInt, 16), dl_dtype(kDLInt, 8), dl_dtype(kDLBfloat, 32),
                                    dl_dtype(kDLComplex, 64), dl_dtype(static_cast<DLDataTypeCode>(6), 8)});
    case kLse:
      return pick<DLDataType>(rng, {dl_float16(), dl_bfloat16(), dl_dtype(kDLFloat, 64), dl_int32()});
    default:
      return pick<DLDataType>(rng, {dl_int64(), dl_dtype(kDLUInt, 32), dl_float32(), dl_dtype(kDLInt, 16),
                                    dl_dtype(kDLInt, 8)});
  }
}

// Resizes shape (and explicit strides) to `ndim` entries of plausible values.
void set_rank(TensorDesc& desc, int ndim, std::mt19937_64& rng) {
  const size_t n = static_cast<size_t>(std::max(ndim, 0));
  std::vector<int64_t>& shape = desc.shape();
  while (shape.size() < n) shape.push_back(uniform(rng, 1, 8));
  shape.resize(n);
  if (!desc.strides().empty()) {
    desc.strides() = compact_strides(shape);
  }
  desc.get();
}

// Applies one mutation of tensor `which`; false if none of the drawn kind applies.
bool mutate_tensor(Call& call, Tensor which, std::mt19937_64& rng, std::string* label) {
  TensorDesc& desc = call.tensors[which];
  DLTensor& t = desc.raw();  // refreshes only this tensor, which no other mutation touches
  const std::string name = kTensorNames[which];
  switch (rng() % 9) {
    case 0:
      call.set(which, nullptr);
      *label = name + " NULL";
      return true;
    case 1: {
      const int ndim = pick<int>(rng, {0, -1, -100, 9, 64, std::numeric_limits<int32_t>::max(),
                                       t.ndim - 1, t.ndim + 1});
      // Ranks outside [1, 8] are rejected before the shape is read, so it keeps its old length.
      if (ndim >= 1 && ndim <= 8) set_rank(desc, ndim, rng);
      desc.raw().ndim = ndim;
      *label = name + " rank " + std::to_string(ndim);
      return true;
    }
    case 2:
      t.shape = nullptr;
      *label = name + " shape NULL";
      return true;
    case 3: {
      const int d = static_cast<int>(rng() % t.ndim);
      desc.shape()[d] = invalid_size(which, d, t, call.h_q, rng);
      desc.get();
      *label = name + " shape[" + std::to_string(d) + "] = " + std::to_string(desc.shape()[d]);
      return true;
    }
    case 4: {
      if (is_empty(t)) return false;
      std::vector<int64_t> strides(t.ndim);
      for (int d = 0; d < t.ndim; ++d) strides[d] = stride_at(t, d);
      const int kind = static_cast<int>(rng() % 3);
      const int d = static_cast<int>(rng() % t.ndim);
      if (kind == 0) {
        strides[d] = -pick<int64_t>(rng, {1, 8, 576, kInt64Max});
      } else if (kind == 1) {
        if (t.shape[t.ndim - 1] <= 1) return false;
        strides[t.ndim - 1] = pick<int64_t>(rng, {0, 2, 3, 576});
      } else {
        if (t.shape[d] < 2) return false;
        strides[d] = kInt64Max / pick<int64_t>(rng, {1, 2, 4, 15});
      }
      desc.strides() = strides;
      desc.get();
      *label = name + " strides[" + std::to_string(d) + "] kind " + std::to_string(kind);
      return true;
    }
    case 5:
      t.dtype = invalid_dtype(which, rng);
      *label = name + " dtype";
      return true;
    case 6:
      if (is_empty(t)) return false;
      t.data = nullptr;
      t.byte_offset = 0;
      *label = name + " data NULL";
      return true;
    case 7: {
      if (is_empty(t) || t.dtype.bits / 8 < 2) return false;
      t.byte_offset += static_cast<uint64_t>(uniform(rng, 1, t.dtype.bits / 8 - 1));
      *label = name + " misaligned";
      return true;
    }
    default:
      if (which == kMetadata && t.shape[0] > 1) {
        desc.strides() = {FLASHMLA_METADATA_WORDS * uniform(rng, 2, 4), 1};
        desc.get();
        *label = name + " rows not compact";
        return true;
      }
      if (which == kOut || which == kLse) {
        // An output on an input's first element. Read through the call's pointer, which other
        // mutations of that input act on; an input without elements has no memory to share.
        const DLTensor* input = pick<const DLTensor*>(rng, {call.args.q, call.args.k_cache, call.args.block_table});
        if (input == nullptr || input->data == nullptr || is_empty(*input) || is_empty(t)) return false;
        t.data = input->data;
        t.byte_offset = input->byte_offset;
        *label = name + " on an input";
        return true;
      }
      return false;
  }
}

bool mutate_device(Call& call, std::mt19937_64& rng, Mutation* m) {
  const Tensor which = static_cast<Tensor>(rng() % kNumTensors);
  // Through the call's own pointer: refreshing the descriptor could undo another mutation of it.
  const DLTensor* current = nullptr;
  switch (which) {
    case kQ: current = call.args.q; break;
    case kK: current = call.args.k_cache; break;
    case kTable: current = call.args.block_table; break;
    case kSeqlens: current = call.args.cache_seqlens; break;
    case kMetadata: current = call.args.tile_scheduler_metadata; break;
    case kSplits: current = call.args.num_splits; break;
    case kOut: current = call.args.out; break;
    default: current = call.args.lse; break;
  }
  if (current == nullptr) return false;
  DLTensor& t = *const_cast<DLTensor*>(current);
  if (rng() % 2 == 0) {
    // Values the enum can hold (C++ forbids loading others; DLDeviceType's range ends at 15).
    t.device.device_type = pick<DLDeviceType>(rng, {kDLCPU, kDLCUDAHost, kDLCUDAManaged, kDLROCM,
                                                    kDLVulkan, kDLOpenCL, static_cast<DLDeviceType>(15)});
  } else {
    t.device.device_id = t.device.device_id + pick<int32_t>(rng, {1, -1, 7, -1000});
  }
  m->label = std::string(kTensorNames[which]) + " device";
  // A moved q makes every other tensor disagree with it; the first of those is named.
  if (which == kQ) {
    for (const char* n : kTensorNames) m->may_name.insert(n);
  } else {
    m->may_name.insert(kTensorNames[which]);
  }
  return true;
}

// Scalars of the args struct; `needed_workspace` is what the unbroken call needs.
bool mutate_scalar(Call& call, int which, size_t needed_workspace, std::mt19937_64& rng, Mutation* m) {
  flashmla_decode_args& a = call.args;
  switch (which) {
    case 0:
      a.head_dim_v = pick<int32_t>(rng, {0, 576, -512, 511, 513, std::numeric_limits<int32_t>::max(),
                                         std::numeric_limits<int32_t>::min()});
      m->slot = m->label = "head_dim_v";
      break;
    case 1:
      a.softmax_scale = pick<float>(rng, {std::nanf(""), INFINITY, -INFINITY, -1.0f, -1e-30f,
                                          -std::numeric_limits<float>::max(), std::numeric_limits<float>::max()});
      m->slot = m->label = "softmax_scale";
      break;
    case 2: {
      // As a C caller would: any int in the enum's storage (a C++ cast to the enum could not).
      const int value = pick<int>(rng, {3, 4, -1, 1000, std::numeric_limits<int>::min()});
      static_assert(sizeof(value) == sizeof(a.backend), "flashmla_backend_t is int-sized");
      std::memcpy(&a.backend, &value, sizeof(value));
      m->slot = m->label = "backend";
      break;
    }
    case 3:
      a.validate = pick<int32_t>(rng, {2, -1, 3, std::numeric_limits<int32_t>::max()});
      m->slot = m->label = "validate";
      break;
    default:
      if (rng() % 2 == 0) {
        if (needed_workspace == 0) return false;
        a.workspace = reinterpret_cast<void*>(uintptr_t{0x7f0000000000});
        a.workspace_size = static_cast<size_t>(uniform(rng, 0, static_cast<int64_t>(needed_workspace) - 1));
        m->label = "workspace too small";
      } else {
        a.workspace = reinterpret_cast<void*>(uintptr_t{0x7f0000000000} + uniform(rng, 1, kWorkspaceAlignment - 1));
        a.workspace_size = std::numeric_limits<size_t>::max();
        m->label = "workspace misaligned";
      }
      m->slot = "workspace";
      break;
  }
  m->may_name.insert(m->slot);
  return true;
}

// Applies 1..kMaxMutations mutations on distinct slots; returns what was done.
std::vector<Mutation> mutate(Call& call, size_t needed_workspace, std::mt19937_64& rng,
                             int max_mutations) {
  std::vector<Mutation> done;
  std::set<std::string> used;
  const int wanted = static_cast<int>(uniform(rng, 1, max_mutations));
  for (int attempt = 0; static_cast<int>(done.size()) < wanted && attempt < 50; ++attempt) {
    Mutation m;
    const int kind = static_cast<int>(rng() % 12);
    bool applied = false;
    if (kind < kNumTensors) {
      const Tensor which = static_cast<Tensor>(kind);
      m.slot = kTensorNames[which];
      if (used.count(m.slot) != 0) continue;
      applied = mutate_tensor(call, which, rng, &m.label);
      m.may_name.insert(m.slot);
    } else if (kind < kNumTensors + 1) {
      m.slot = "device";
      if (used.count(m.slot) != 0) continue;
      applied = mutate_device(call, rng, &m);
    } else {
      const int scalar = static_cast<int>(rng() % 5);
      // Draw the slot first so that a used one is not overwritten.
      const char* const slots[] = {"head_dim_v", "softmax_scale", "backend", "validate", "workspace"};
      if (used.count(slots[scalar]) != 0) continue;
      applied = mutate_scalar(call, scalar, needed_workspace, rng, &m);
    }
    if (!applied) continue;
    used.insert(m.slot);
    done.push_back(m);
  }
  return done;
}

std::string describe(const std::vector<Mutation>& mutations) {
  std::string text;
  for (const Mutation& m : mutations) text += (text.empty() ? "" : ", ") + m.label;
  return text;
}

// The argument a message names: the text before the first ':' or '['.
std::string named_argument(const std::string& message) {
  return message.substr(0, message.find_first_of(":["));
}

// ---- Host part ---------------------------------------------------------------------------------

// The device id fake tensors claim: one that does not exist, so nothing can ever launch on them.
int absent_device_id() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

// A random well-formed decode call on fake, never-dereferenced addresses.
struct FakeCall {
  std::vector<TensorDesc> tensors;
  flashmla_decode_args args{};
  size_t needed_workspace = 0;

  FakeCall(std::mt19937_64& rng, int device_id) {
    const DLDevice device = dl_cuda_device(device_id);
    const int64_t b = uniform(rng, 1, 8), s_q = uniform(rng, 1, 4);
    const int64_t h_kv = pick<int64_t>(rng, {1, 2, 4}), h_q = h_kv * uniform(rng, 1, 16);
    const int64_t page = pick<int64_t>(rng, {64, 128, 256});
    const int64_t max_blocks = uniform(rng, 2, 50), num_blocks = uniform(rng, 1, 1000);
    const int64_t parts = uniform(rng, 2, 200);
    const DLDataType half = rng() % 2 == 0 ? dl_bfloat16() : dl_float16();
    const bool padded = rng() % 2 == 0;
    const int64_t pad = padded ? 8 * uniform(rng, 1, 8) : 0;
    uintptr_t address = uintptr_t{0x100000000};
    const auto next = [&address] {
      address += uintptr_t{1} << 32;
      return reinterpret_cast<void*>(address);
    };
    const auto strides4 = [&](int64_t d1, int64_t d2, int64_t inner) {
      return padded ? std::vector<int64_t>{d1 * d2 * (inner + pad), d2 * (inner + pad), inner + pad, 1}
                    : std::vector<int64_t>{};
    };
    tensors.emplace_back(next(), device, half, std::vector<int64_t>{b, s_q, h_q, 576}, strides4(s_q, h_q, 576));
    tensors.emplace_back(next(), device, half, std::vector<int64_t>{num_blocks, page, h_kv, 576},
                         strides4(page, h_kv, 576));
    tensors.emplace_back(next(), device, dl_int32(), std::vector<int64_t>{b, max_blocks},
                         padded ? std::vector<int64_t>{max_blocks + pad, 1} : std::vector<int64_t>{});
    tensors.emplace_back(next(), device, dl_int32(), std::vector<int64_t>{b});
    tensors.emplace_back(next(), device, dl_int32(), std::vector<int64_t>{parts, FLASHMLA_METADATA_WORDS});
    tensors.emplace_back(next(), device, dl_int32(), std::vector<int64_t>{b + 1});
    tensors.emplace_back(next(), device, half, std::vector<int64_t>{b, s_q, h_q, 512}, strides4(s_q, h_q, 512));
    tensors.emplace_back(next(), device, dl_float32(), std::vector<int64_t>{b, h_q, s_q});
    flashmla_decode_args_init(&args);
    point_args_at(tensors, &args);
    args.causal = static_cast<int32_t>(rng() % 2);
    args.softmax_scale = rng() % 2 == 0 ? 0.0f : 0.01f * static_cast<float>(uniform(rng, 1, 100));
    args.backend = pick<flashmla_backend_t>(rng, {FLASHMLA_BACKEND_AUTO, FLASHMLA_BACKEND_REFERENCE,
                                                  FLASHMLA_BACKEND_SM90});
    args.validate = static_cast<int32_t>(rng() % 2);
    flashmla_decode_workspace_size(b, s_q, h_q, parts, &needed_workspace);
    if (rng() % 2 == 0) {
      args.workspace = reinterpret_cast<void*>(uintptr_t{0x7f0000000000});
      args.workspace_size = needed_workspace + static_cast<size_t>(uniform(rng, 0, 4096));
    }
  }
};

TEST(ApiFuzzHost, EveryBrokenDecodeCallIsRejectedByName) {
  const uint64_t seed = fuzz_seed();
  const int64_t cases = env_int("FLASHMLA_FUZZ_HOST_CASES", kDefaultHostCases);
  std::mt19937_64 rng(seed);
  const int device_id = absent_device_id();
  std::cout << "[ INFO     ] seed " << seed << ", " << cases << " cases\n";

  // What an unbroken fake call ends in: the device check (the claimed device does not exist). A
  // broken call must be stopped before it gets there.
  std::string unbroken_message;
  {
    FakeCall baseline(rng, device_id);
    EXPECT_NE(flashmla_decode(&baseline.args, nullptr), FLASHMLA_STATUS_SUCCESS);
    unbroken_message = flashmla_get_last_error();
    EXPECT_EQ(named_argument(unbroken_message), "q") << unbroken_message;
  }
  std::map<std::string, int> named_counts;  // how often each argument was named: coverage
  int failures = 0;
  for (int64_t n = 0; n < cases && failures < 10; ++n) {
    FakeCall fake(rng, device_id);
    Call call(fake.args);
    std::vector<Mutation> mutations;
    if (rng() % 100 == 0) {
      call.null_args = true;
      mutations.push_back({"args", "args NULL", {"args"}});
    } else {
      mutations = mutate(call, fake.needed_workspace, rng, kMaxMutations);
    }
    const flashmla_status_t status = call.run(nullptr);
    const std::string message = flashmla_get_last_error();
    std::set<std::string> allowed;
    for (const Mutation& m : mutations) allowed.insert(m.may_name.begin(), m.may_name.end());
    const std::string named = named_argument(message);
    ++named_counts[named];
    const bool ok = status == FLASHMLA_STATUS_INVALID_ARGUMENT && allowed.count(named) != 0 &&
                    message.size() > named.size() + 2 && message != unbroken_message;
    if (!ok) {
      ++failures;
      ADD_FAILURE() << "case " << n << " (seed " << seed << "): mutations [" << describe(mutations)
                    << "] gave " << flashmla_status_string(status) << ": \"" << message << "\"";
    }
  }
  std::cout << "[ INFO     ] errors named:";
  for (const auto& [name, count] : named_counts) std::cout << " " << name << " " << count;
  std::cout << "\n";
}

// flashmla_get_metadata on the host path with random lengths (valid plans are checked against the
// invariants the kernels rely on, and must repeat bit for bit) and with broken tensors.
TEST(ApiFuzzHost, MetadataCallsGiveAPlanOrANamedError) {
  const uint64_t seed = fuzz_seed() + 1;
  const int64_t cases = env_int("FLASHMLA_FUZZ_HOST_CASES", kDefaultMetadataCases);
  std::mt19937_64 rng(seed);
  int failures = 0;
  for (int64_t n = 0; n < cases && failures < 10; ++n) {
    const int64_t batch = uniform(rng, 0, 64), parts = uniform(rng, 1, 300);
    std::vector<int32_t> lengths(batch);
    for (int32_t& l : lengths) {
      l = static_cast<int32_t>(pick<int64_t>(rng, {0, uniform(rng, 1, 4096), uniform(rng, 1, kInt32Max)}));
    }
    std::vector<int32_t> metadata(static_cast<size_t>(parts) * FLASHMLA_METADATA_WORDS, -7);
    std::vector<int32_t> splits(batch + 1, -7);
    TensorDesc s(lengths.data(), dl_cpu_device(), dl_int32(), {batch});
    TensorDesc m(metadata.data(), dl_cpu_device(), dl_int32(), {parts, FLASHMLA_METADATA_WORDS});
    TensorDesc k(splits.data(), dl_cpu_device(), dl_int32(), {batch + 1});
    std::string expected_name;  // empty: a valid call
    switch (rng() % 6) {
      case 0:
        if (batch > 0) {
          const int64_t i = uniform(rng, 0, batch - 1);
          lengths[i] = static_cast<int32_t>(-uniform(rng, 1, kInt32Max));
          expected_name = "cache_seqlens";
        }
        break;
      case 1:
        s.raw().dtype = invalid_dtype(kSeqlens, rng);
        expected_name = "cache_seqlens";
        break;
      case 2:
        m.shape()[1] = pick<int64_t>(rng, {0, 4, 16});
        expected_name = "tile_scheduler_metadata";
        break;
      case 3:
        k.shape()[0] = batch + 1 + pick<int64_t>(rng, {-1, 1, 5});
        expected_name = "num_splits";
        break;
      default:
        break;
    }
    const flashmla_status_t status = flashmla_get_metadata(s.get(), m.get(), k.get(), nullptr);
    const std::string message = flashmla_get_last_error();
    if (!expected_name.empty()) {
      if (status != FLASHMLA_STATUS_INVALID_ARGUMENT || named_argument(message) != expected_name) {
        ++failures;
        ADD_FAILURE() << "case " << n << ": expected an error naming " << expected_name << ", got "
                      << flashmla_status_string(status) << ": " << message;
      }
      continue;
    }
    if (status != FLASHMLA_STATUS_SUCCESS) {
      ++failures;
      ADD_FAILURE() << "case " << n << ": valid host plan failed: " << message;
      continue;
    }
    // Invariants: prefix sums from 0, at least one piece per request, slots within bounds.
    bool fine = splits[0] == 0 && splits[batch] <= batch + parts;
    for (int64_t i = 0; i < batch; ++i) fine = fine && splits[i + 1] > splits[i];
    for (int64_t p = 0; p < parts; ++p) {
      const int32_t* row = &metadata[static_cast<size_t>(p) * FLASHMLA_METADATA_WORDS];
      fine = fine && row[0] >= 0 && row[2] < batch && row[0] <= batch;
    }
    std::vector<int32_t> again_metadata(metadata.size(), -9), again_splits(splits.size(), -9);
    TensorDesc m2(again_metadata.data(), dl_cpu_device(), dl_int32(), {parts, FLASHMLA_METADATA_WORDS});
    TensorDesc k2(again_splits.data(), dl_cpu_device(), dl_int32(), {batch + 1});
    fine = fine && flashmla_get_metadata(s.get(), m2.get(), k2.get(), nullptr) == FLASHMLA_STATUS_SUCCESS &&
           again_metadata == metadata && again_splits == splits;
    if (!fine) {
      ++failures;
      ADD_FAILURE() << "case " << n << ": host plan of " << batch << " lengths over " << parts
                    << " parts breaks an invariant or does not repeat";
    }
  }
}

// The scalar entry points with random and extreme integers: a value or a named error.
TEST(ApiFuzzHost, SizeQueriesGiveAValueOrANamedError) {
  std::mt19937_64 rng(fuzz_seed() + 2);
  const auto draw = [&rng] {
    return pick<int64_t>(rng, {uniform(rng, -3, 3), uniform(rng, 1, 1 << 20), kInt64Max, kInt64Max / 2,
                               std::numeric_limits<int64_t>::min(), int64_t{1} << 31, -(int64_t{1} << 40)});
  };
  const std::set<std::string> workspace_names = {"batch", "s_q", "h_q", "num_sm_parts", "bytes",
                                                 "batch, s_q, h_q, num_sm_parts"};
  const std::set<std::string> parts_names = {"num_q_rows_per_kv_head", "num_kv_heads", "num_sm_parts",
                                             "device"};
  int failures = 0;
  for (int n = 0; n < kDefaultSizeCases && failures < 10; ++n) {
    const int64_t batch = draw(), s_q = draw(), h_q = draw(), parts = draw();
    size_t bytes = 0;
    flashmla_status_t status = flashmla_decode_workspace_size(batch, s_q, h_q, parts, &bytes);
    std::string message = flashmla_get_last_error();
    const bool sane_inputs = batch >= 0 && s_q >= 1 && h_q >= 1 && parts >= 1;
    bool ok = status == FLASHMLA_STATUS_SUCCESS
                  ? sane_inputs && bytes > 0
                  : status == FLASHMLA_STATUS_INVALID_ARGUMENT && workspace_names.count(named_argument(message));
    if (!ok) {
      ++failures;
      ADD_FAILURE() << "workspace_size(" << batch << ", " << s_q << ", " << h_q << ", " << parts
                    << "): " << flashmla_status_string(status) << ": " << message;
    }
    const int device = static_cast<int>(pick<int64_t>(rng, {0, -1, 4096, uniform(rng, 0, 3)}));
    int64_t num_parts = 0;
    status = flashmla_get_num_sm_parts(device, draw(), draw(), rng() % 50 == 0 ? nullptr : &num_parts);
    message = flashmla_get_last_error();
    // Without a GPU a valid query ends in a CUDA error that names the device it asked about.
    ok = status == FLASHMLA_STATUS_SUCCESS ? num_parts >= 1
         : status == FLASHMLA_STATUS_INVALID_ARGUMENT || status == FLASHMLA_STATUS_CUDA_ERROR
             ? parts_names.count(named_argument(message)) != 0
             : false;
    if (!ok) {
      ++failures;
      ADD_FAILURE() << "get_num_sm_parts: " << flashmla_status_string(status) << ": " << message;
    }
  }
}

// ---- GPU part ------------------------------------------------------------------------------------

ProblemSpec random_spec(std::mt19937_64& rng) {
  ProblemSpec spec;
  spec.seed = rng();
  spec.dtype = rng() % 2 == 0 ? HalfType::kBFloat16 : HalfType::kFloat16;
  spec.s_q = static_cast<int>(uniform(rng, 1, 4));
  spec.h_kv = static_cast<int>(pick<int64_t>(rng, {1, 1, 2, 3}));
  spec.h_q = spec.h_kv * static_cast<int>(pick<int64_t>(rng, {1, 2, 3, 8, 16, 32}));
  spec.page = static_cast<int>(pick<int64_t>(rng, {64, 64, 128}));
  const int batch = rng() % 20 == 0 ? 0 : static_cast<int>(uniform(rng, 1, 5));
  spec.lengths = random_lengths(rng, batch, static_cast<int>(pick<int64_t>(rng, {70, 200, 400})), true);
  spec.extra_table_columns = static_cast<int>(uniform(rng, 0, 3));
  spec.spare_blocks = static_cast<int>(uniform(rng, 0, 3));
  spec.junk_in_unused_entries = rng() % 2 == 0;
  spec.causal = rng() % 2 == 0;
  spec.softmax_scale = rng() % 2 == 0 ? 0.0f : 0.02f * static_cast<float>(uniform(rng, 1, 15));
  // 8-element paddings keep the SM90 kernel's 16-byte rule; 2 makes it fall back to the reference.
  spec.padding.q_head = static_cast<int>(pick<int64_t>(rng, {0, 0, 8, 64, 2}));
  spec.padding.k_token = static_cast<int>(pick<int64_t>(rng, {0, 0, 8, 64, 2}));
  spec.padding.table_row = static_cast<int>(pick<int64_t>(rng, {0, 1, 7}));
  spec.padding.out_head = static_cast<int>(pick<int64_t>(rng, {0, 2, 64}));
  return spec;
}

struct StreamChoice {
  cudaStream_t stream;
  const char* name;
};

RunOptions random_options(std::mt19937_64& rng, cudaStream_t own_stream, std::string* label) {
  RunOptions o;
  o.backend = rng() % 2 == 0 ? FLASHMLA_BACKEND_REFERENCE : FLASHMLA_BACKEND_AUTO;
  o.validate = static_cast<int32_t>(rng() % 2);
  o.library_workspace = rng() % 3 == 0;
  o.host_metadata = rng() % 3 == 0;
  o.num_sm_parts = rng() % 2 == 0 ? 0 : uniform(rng, 1, 300);
  const StreamChoice streams[] = {{nullptr, "legacy"}, {cudaStreamPerThread, "per-thread"}, {own_stream, "own"}};
  const StreamChoice& s = streams[rng() % 3];
  o.stream = s.stream;
  *label = std::string(o.backend == FLASHMLA_BACKEND_REFERENCE ? "reference" : "auto") +
           (o.validate ? " validate" : "") + (o.library_workspace ? " libws" : "") +
           (o.host_metadata ? " host-plan" : "") + " parts=" + std::to_string(o.num_sm_parts) +
           " stream=" + s.name;
  return o;
}

std::string spec_label(const ProblemSpec& s) {
  std::string text = "b=" + std::to_string(s.batch()) + " s_q=" + std::to_string(s.s_q) +
                     " h_q=" + std::to_string(s.h_q) + " h_kv=" + std::to_string(s.h_kv) +
                     " page=" + std::to_string(s.page) + (s.causal ? " causal" : "") +
                     (s.dtype == HalfType::kFloat16 ? " fp16" : " bf16") + " lengths=";
  for (int32_t l : s.lengths) text += std::to_string(l) + ",";
  return text;
}

// The message validating mode must give for the current device values, from a host model of
// the check order (validate_values.h). Empty when every value is fine.
std::string predicted_fault(const HostProblem& hp, const std::vector<int32_t>& lengths,
                            const std::vector<int32_t>& table, const std::vector<int32_t>& metadata,
                            const std::vector<int32_t>& splits, int64_t parts) {
  const ProblemSpec& s = hp.spec;
  const int64_t capacity = int64_t{hp.max_blocks_per_seq} * s.page;
  for (int r = 0; r < s.batch(); ++r) {
    const std::string at = "[" + std::to_string(r) + "] = " + std::to_string(lengths[r]);
    if (lengths[r] < 0) return "cache_seqlens" + at + " is negative";
    if (lengths[r] > capacity) {
      return "cache_seqlens" + at + " does not fit its block_table row: " +
             std::to_string(hp.max_blocks_per_seq) + " blocks of " + std::to_string(s.page) +
             " tokens hold " + std::to_string(capacity);
    }
    for (int64_t c = 0; c < (lengths[r] + s.page - 1) / s.page; ++c) {
      const int32_t id = table[static_cast<size_t>(r) * hp.max_blocks_per_seq + c];
      if (id < 0 || id >= hp.num_blocks) {
        return "block_table[" + std::to_string(r) + "][" + std::to_string(c) + "] = " +
               std::to_string(id) + " is outside k_cache's " + std::to_string(hp.num_blocks) + " blocks";
      }
    }
  }
  std::vector<int32_t> plan(metadata.size()), plan_splits(splits.size());
  std::vector<int32_t> lengths_copy = lengths;
  TensorDesc l(lengths_copy.data(), dl_cpu_device(), dl_int32(), {s.batch()});
  TensorDesc m(plan.data(), dl_cpu_device(), dl_int32(), {parts, FLASHMLA_METADATA_WORDS});
  TensorDesc k(plan_splits.data(), dl_cpu_device(), dl_int32(), {s.batch() + 1});
  if (flashmla_get_metadata(l.get(), m.get(), k.get(), nullptr) != FLASHMLA_STATUS_SUCCESS) {
    return std::string("host plan failed: ") + flashmla_get_last_error();
  }
  const std::string stale =
      ": it is not the plan of these cache_seqlens; call flashmla_get_metadata again whenever the "
      "lengths change";
  for (size_t i = 0; i < plan.size(); ++i) {
    if (plan[i] != metadata[i]) {
      return "tile_scheduler_metadata[" + std::to_string(i / FLASHMLA_METADATA_WORDS) + "][" +
             std::to_string(i % FLASHMLA_METADATA_WORDS) + "] = " + std::to_string(metadata[i]) +
             ", expected " + std::to_string(plan[i]) + stale;
    }
  }
  for (size_t i = 0; i < splits.size(); ++i) {
    if (plan_splits[i] != splits[i]) {
      return "num_splits[" + std::to_string(i) + "] = " + std::to_string(splits[i]) + ", expected " +
             std::to_string(plan_splits[i]) + stale;
    }
  }
  return "";
}

template <typename T>
std::vector<T> download_vector(const T* device, size_t count) {
  std::vector<T> host(count);
  if (count > 0) cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost);
  return host;
}

// Corrupts 1..3 device values of a planned runner (lengths, used or unused block-table entries,
// plan words) and returns a description.
std::string corrupt_values(const DeviceProblem& problem, DecodeRunner& runner, std::mt19937_64& rng) {
  const HostProblem& hp = problem.host();
  const int batch = hp.spec.batch();
  const int64_t capacity = int64_t{hp.max_blocks_per_seq} * hp.spec.page;
  std::string label;
  const int count = static_cast<int>(uniform(rng, 1, 3));
  for (int n = 0; n < count; ++n) {
    const int kind = static_cast<int>(rng() % 4);
    if (kind == 0 && batch > 0) {
      const int r = static_cast<int>(uniform(rng, 0, batch - 1));
      const int32_t value = static_cast<int32_t>(
          pick<int64_t>(rng, {-1, std::numeric_limits<int32_t>::min(), capacity + 1,
                              kInt32Max, uniform(rng, 0, capacity)}));
      cudaMemcpy(problem.seqlens_data() + r, &value, 4, cudaMemcpyHostToDevice);
      label += " seqlens[" + std::to_string(r) + "]=" + std::to_string(value);
    } else if (kind == 1 && batch > 0 && hp.max_blocks_per_seq > 0) {
      const int r = static_cast<int>(uniform(rng, 0, batch - 1));
      const int c = static_cast<int>(uniform(rng, 0, hp.max_blocks_per_seq - 1));
      const int32_t value = static_cast<int32_t>(pick<int64_t>(
          rng, {-1, hp.num_blocks, hp.num_blocks + 1000, kInt32Max, kInt32Max - 1,
                std::numeric_limits<int32_t>::min(), uniform(rng, 0, std::max<int64_t>(hp.num_blocks - 1, 0))}));
      cudaMemcpy(problem.block_table_data() + r * problem.table_row_stride() + c, &value, 4,
                 cudaMemcpyHostToDevice);
      label += " table[" + std::to_string(r) + "][" + std::to_string(c) + "]=" + std::to_string(value);
    } else if (kind == 2) {
      const int64_t word = uniform(rng, 0, runner.num_sm_parts() * FLASHMLA_METADATA_WORDS - 1);
      const int32_t value = static_cast<int32_t>(uniform(rng, -5, 2 * batch + 5));
      cudaMemcpy(runner.metadata_data() + word, &value, 4, cudaMemcpyHostToDevice);
      label += " metadata word " + std::to_string(word) + "=" + std::to_string(value);
    } else {
      const int64_t i = uniform(rng, 0, batch);
      const int32_t value = static_cast<int32_t>(uniform(rng, -3, batch + 200));
      cudaMemcpy(runner.num_splits_data() + i, &value, 4, cudaMemcpyHostToDevice);
      label += " num_splits[" + std::to_string(i) + "]=" + std::to_string(value);
    }
  }
  return label;
}

// The device copies of the values after corruption, in the compact layout of the host model.
std::string predicted_after_corruption(const DeviceProblem& problem, DecodeRunner& runner) {
  const HostProblem& hp = problem.host();
  const int batch = hp.spec.batch();
  const std::vector<int32_t> lengths = download_vector(problem.seqlens_data(), batch);
  std::vector<int32_t> table(static_cast<size_t>(batch) * hp.max_blocks_per_seq);
  if (!table.empty()) {
    cudaMemcpy2D(table.data(), hp.max_blocks_per_seq * 4, problem.block_table_data(),
                 problem.table_row_stride() * 4, hp.max_blocks_per_seq * 4, batch,
                 cudaMemcpyDeviceToHost);
  }
  const std::vector<int32_t> metadata =
      download_vector(runner.metadata_data(), static_cast<size_t>(runner.num_sm_parts()) * FLASHMLA_METADATA_WORDS);
  const std::vector<int32_t> splits = download_vector(runner.num_splits_data(), batch + 1);
  return predicted_fault(hp, lengths, table, metadata, splits, runner.num_sm_parts());
}

// Whether the lengths and the block ids the requests use are still those of the host problem.
bool inputs_unchanged(const DeviceProblem& problem) {
  const HostProblem& hp = problem.host();
  const int batch = hp.spec.batch();
  if (download_vector(problem.seqlens_data(), batch) != hp.spec.lengths) return false;
  for (int r = 0; r < batch; ++r) {
    const int64_t used = (hp.spec.lengths[r] + hp.spec.page - 1) / hp.spec.page;
    const std::vector<int32_t> row = download_vector(problem.block_table_data() + r * problem.table_row_stride(),
                                                     static_cast<size_t>(used));
    if (!std::equal(row.begin(), row.end(), hp.block_table.begin() + static_cast<size_t>(r) * hp.max_blocks_per_seq)) {
      return false;
    }
  }
  return true;
}

TEST(ApiFuzzGpu, ResultsMatchTheModelOrErrorsAreClean) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  const uint64_t seed = fuzz_seed() + 3;
  const int64_t cases = env_int("FLASHMLA_FUZZ_GPU_CASES", kDefaultGpuCases);
  std::mt19937_64 rng(seed);
  OwnStream own;
  ASSERT_NE(own.get(), nullptr);
  int counts[3] = {0, 0, 0};
  int failures = 0;
  for (int64_t n = 0; n < cases && failures < 10; ++n) {
    const ProblemSpec spec = random_spec(rng);
    std::string options_label;
    const RunOptions options = random_options(rng, own.get(), &options_label);
    const int kind = static_cast<int>(rng() % 10);  // 0-3 valid, 4-6 broken arguments, 7-9 bad values
    const HostProblem hp = make_host_problem(spec);
    const DeviceProblem problem(hp);
    ASSERT_TRUE(problem.ok()) << "upload failed";
    const std::string where = "case " + std::to_string(n) + " (seed " + std::to_string(seed) + ", " +
                              spec_label(spec) + ", " + options_label + ")";
    DecodeRunner runner(problem, options);
    ASSERT_TRUE(runner.plan()) << where;

    if (kind <= 3 || spec.batch() == 0) {
      ++counts[0];
      const flashmla_status_t status = runner.decode();
      DecodeOutput output;
      const bool ran = status == FLASHMLA_STATUS_SUCCESS && runner.download(&output);
      const auto matched = ran ? matches_reference(hp, output) : ::testing::AssertionFailure();
      if (!matched) {
        ++failures;
        ADD_FAILURE() << where << ": " << flashmla_status_string(status) << " " << runner.last_message()
                      << " " << matched.message();
      }
    } else if (kind <= 6) {
      ++counts[1];
      Call call(runner.args());
      size_t needed = 0;
      flashmla_decode_workspace_size(spec.batch(), spec.s_q, spec.h_q, runner.num_sm_parts(), &needed);
      const std::vector<Mutation> mutations = mutate(call, needed, rng, /*max_mutations=*/1);
      const flashmla_status_t status = call.run(options.stream);
      const std::string message = flashmla_get_last_error();
      std::set<std::string> allowed;
      for (const Mutation& m : mutations) allowed.insert(m.may_name.begin(), m.may_name.end());
      if (status != FLASHMLA_STATUS_INVALID_ARGUMENT || allowed.count(named_argument(message)) == 0) {
        ++failures;
        ADD_FAILURE() << where << ": [" << describe(mutations) << "] gave "
                      << flashmla_status_string(status) << ": " << message;
      }
    } else {
      ++counts[2];
      runner.args().validate = 1;
      ASSERT_TRUE(cuda_ok(cudaStreamSynchronize(options.stream), "plan"));
      const std::string label = corrupt_values(problem, runner, rng);
      const std::string expected = predicted_after_corruption(problem, runner);
      const bool same_inputs = inputs_unchanged(problem);
      const flashmla_status_t status = runner.decode();
      DecodeOutput output;
      const bool downloaded = runner.download(&output);
      bool fine = downloaded;
      if (expected.empty()) {
        // Every value passed: the call runs. The result is only known when the lengths and the
        // used block ids are still the original ones (unused entries may have changed).
        fine = fine && status == FLASHMLA_STATUS_SUCCESS && (!same_inputs || matches_reference(hp, output));
      } else {
        fine = fine && status == FLASHMLA_STATUS_INVALID_ARGUMENT && runner.last_message() == expected &&
               still_poisoned(output);
      }
      if (!fine) {
        ++failures;
        ADD_FAILURE() << where << ": corrupted" << label << ": expected \""
                      << (expected.empty() ? "success" : expected) << "\", got "
                      << flashmla_status_string(status) << ": \"" << runner.last_message() << "\""
                      << (still_poisoned(output) ? "" : " (outputs were written)");
      }
    }
    const auto healthy = context_healthy();
    ASSERT_TRUE(healthy) << where << ": " << healthy.message();
  }
  std::cout << "[ INFO     ] seed " << seed << ": " << counts[0] << " valid, " << counts[1]
            << " broken arguments, " << counts[2] << " corrupted device values\n";
}

// The zero-size corner the fuzzer reaches only now and then, on its own: requests that are all
// empty, a block table with no columns and a cache with no blocks are a valid call (out = 0,
// lse = +inf) for every backend.
class ApiEdgesGpu : public ::testing::TestWithParam<flashmla_backend_t> {};

TEST_P(ApiEdgesGpu, EmptyRequestsEmptyTableEmptyCache) {
  if (!cuda_device_present()) GTEST_SKIP() << "no CUDA device";
  for (int spare_blocks : {0, 1}) {
    for (int extra_columns : {0, 2}) {
      SCOPED_TRACE("spare blocks " + std::to_string(spare_blocks) + ", extra columns " +
                   std::to_string(extra_columns));
      ProblemSpec spec;
      spec.seed = 7;
      spec.lengths = {0, 0, 0};
      spec.spare_blocks = spare_blocks;
      spec.extra_table_columns = extra_columns;
      const HostProblem hp = make_host_problem(spec);
      const DeviceProblem problem(hp);
      ASSERT_TRUE(problem.ok());
      for (int32_t validate : {0, 1}) {
        RunOptions options;
        options.backend = GetParam();
        options.validate = validate;
        DecodeOutput output;
        ASSERT_TRUE(run_decode(problem, options, &output)) << "validate " << validate;
        EXPECT_TRUE(matches_reference(hp, output));
      }
      EXPECT_TRUE(context_healthy());
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, ApiEdgesGpu,
                         ::testing::Values(FLASHMLA_BACKEND_REFERENCE, FLASHMLA_BACKEND_AUTO),
                         [](const ::testing::TestParamInfo<flashmla_backend_t>& info) {
                           return std::string(info.param == FLASHMLA_BACKEND_REFERENCE ? "reference" : "auto");
                         });

}  // namespace
}  // namespace flashmla_test
