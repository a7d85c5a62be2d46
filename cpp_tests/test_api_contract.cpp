// The C API's contract that needs no GPU: library information, defaults, workspace sizing, and a
// clear INVALID_ARGUMENT naming the argument for every malformed input. Tensors here point at
// never-dereferenced fake addresses: validation must reject them before touching any memory.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "fake_decode_call.h"
#include "flashmla/flashmla.h"

namespace {

using namespace flashmla_test;

struct BadCase {
  const char* name;
  std::function<void(DecodeCall&)> mutate;
  const char* expected_message;  // substring
};

std::string run_bad(const BadCase& c) {
  DecodeCall call;
  call.build();
  c.mutate(call);
  const flashmla_status_t status = flashmla_decode(&call.args, nullptr);
  EXPECT_EQ(status, FLASHMLA_STATUS_INVALID_ARGUMENT) << c.name << ": " << flashmla_get_last_error();
  return flashmla_get_last_error();
}

TEST(ApiInfo, VersionMatchesHeader) {
  int major = -1, minor = -1, patch = -1;
  flashmla_get_version(&major, &minor, &patch);
  EXPECT_EQ(major, FLASHMLA_VERSION_MAJOR);
  EXPECT_EQ(minor, FLASHMLA_VERSION_MINOR);
  EXPECT_EQ(patch, FLASHMLA_VERSION_PATCH);
  flashmla_get_version(nullptr, nullptr, nullptr);  // tolerated
}

TEST(ApiInfo, StatusStringsAreDistinct) {
  EXPECT_STREQ(flashmla_status_string(FLASHMLA_STATUS_SUCCESS), "FLASHMLA_STATUS_SUCCESS");
  EXPECT_STREQ(flashmla_status_string(FLASHMLA_STATUS_INVALID_ARGUMENT),
               "FLASHMLA_STATUS_INVALID_ARGUMENT");
  EXPECT_STREQ(flashmla_status_string(static_cast<flashmla_status_t>(99)), "FLASHMLA_STATUS_UNKNOWN");
}

TEST(ApiInfo, ArgsInitSetsDefaults) {
  flashmla_decode_args args;
  std::memset(&args, 0x5a, sizeof(args));
  flashmla_decode_args_init(&args);
  EXPECT_EQ(args.q, nullptr);
  EXPECT_EQ(args.out, nullptr);
  EXPECT_EQ(args.head_dim_v, 512);
  EXPECT_EQ(args.softmax_scale, 0.0f);
  EXPECT_EQ(args.causal, 0);
  EXPECT_EQ(args.workspace, nullptr);
  EXPECT_EQ(args.backend, FLASHMLA_BACKEND_AUTO);
  EXPECT_EQ(args.validate, 0);
}

TEST(ApiInfo, WorkspaceSizeCoversAllPartialSlots) {
  size_t bytes = 0;
  ASSERT_EQ(flashmla_decode_workspace_size(128, 1, 128, 132, &bytes), FLASHMLA_STATUS_SUCCESS);
  const size_t rows = size_t{128 + 132} * 128;
  EXPECT_GE(bytes, rows * (512 + 1) * sizeof(float));
  EXPECT_LT(bytes, rows * (512 + 1) * sizeof(float) + 1024);
  EXPECT_EQ(flashmla_decode_workspace_size(-1, 1, 1, 1, &bytes), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(flashmla_get_last_error()).find("batch:"), std::string::npos);
  EXPECT_EQ(flashmla_decode_workspace_size(1, 0, 1, 1, &bytes), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmla_decode_workspace_size(1, 1, 1, 0, &bytes), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmla_decode_workspace_size(1, 1, 1, 1, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmla_decode_workspace_size(INT64_MAX / 2, INT64_MAX / 2, 1, 1, &bytes),
            FLASHMLA_STATUS_INVALID_ARGUMENT);
}

TEST(ApiInfo, LastErrorIsClearedBySuccess) {
  size_t bytes = 0;
  ASSERT_EQ(flashmla_decode_workspace_size(1, 1, 0, 1, &bytes), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STRNE(flashmla_get_last_error(), "");
  ASSERT_EQ(flashmla_decode_workspace_size(1, 1, 1, 1, &bytes), FLASHMLA_STATUS_SUCCESS);
  EXPECT_STREQ(flashmla_get_last_error(), "");
}

TEST(ApiInfo, NumSmPartsRejectsBadArguments) {
  int64_t parts = 0;
  EXPECT_EQ(flashmla_get_num_sm_parts(0, 0, 1, &parts), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(flashmla_get_last_error()).find("num_q_rows_per_kv_head"), std::string::npos);
  EXPECT_EQ(flashmla_get_num_sm_parts(0, 128, 0, &parts), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(flashmla_get_num_sm_parts(0, 128, 1, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(flashmla_get_num_sm_parts(4096, 128, 1, &parts), FLASHMLA_STATUS_SUCCESS);
}

const std::vector<BadCase>& bad_cases() {
  static const std::vector<BadCase> cases = {
      {"null q", [](DecodeCall& c) { c.args.q = nullptr; }, "q: is NULL"},
      {"null lse", [](DecodeCall& c) { c.args.lse = nullptr; }, "lse: is NULL"},
      {"null data", [](DecodeCall& c) { c.k.t.data = nullptr; }, "k_cache: data pointer is NULL"},
      {"q rank", [](DecodeCall& c) { c.q.shape.pop_back(); c.q.refresh(); }, "q: expected 4 dimensions"},
      {"q dtype", [](DecodeCall& c) { c.q.t.dtype = kF32; }, "q: expected bfloat16 or float16, got float32"},
      {"q head dim", [](DecodeCall& c) { c.q.shape[3] = 512; }, "q: dimension 3 (head_dim) must be 576, got 512"},
      {"q s_q zero", [](DecodeCall& c) { c.q.shape[1] = 0; }, "q: dimension 1 (s_q)"},
      {"q negative", [](DecodeCall& c) { c.q.shape[0] = -3; }, "q: dimension 0 has negative size"},
      {"q vectors", [](DecodeCall& c) { c.q.t.dtype.lanes = 4; }, "q: unsupported dtype"},
      {"q inner stride",
       [](DecodeCall& c) { c.q.strides = {2 * 16 * 576, 16 * 576, 576, 2}; c.q.refresh(); },
       "q: the last dimension must be contiguous"},
      {"q negative stride",
       [](DecodeCall& c) { c.q.strides = {-2 * 16 * 576, 16 * 576, 576, 1}; c.q.refresh(); },
       "q: negative stride"},
      {"q misaligned", [](DecodeCall& c) { c.q.t.byte_offset = 1; }, "q: data is not aligned"},
      {"q overflow",
       [](DecodeCall& c) { c.q.strides = {INT64_MAX / 4, 1 << 20, 576, 1}; c.q.refresh(); },
       "q: size and strides overflow"},
      {"k dtype", [](DecodeCall& c) { c.k.t.dtype = kFP16; }, "k_cache: expected bfloat16, got float16"},
      {"k head dim", [](DecodeCall& c) { c.k.shape[3] = 512; }, "k_cache: dimension 3 (head_dim) must be 576"},
      {"page size", [](DecodeCall& c) { c.k.shape[1] = 16; }, "k_cache: dimension 1 (page_block_size)"},
      {"page size odd", [](DecodeCall& c) { c.k.shape[1] = 96; }, "page_block_size"},
      {"h_kv divides", [](DecodeCall& c) { c.k.shape[2] = 3; }, "k_cache: h_kv (3) must divide h_q (16)"},
      {"h_kv zero", [](DecodeCall& c) { c.k.shape[2] = 0; }, "k_cache: dimension 2 (h_kv) must be in [1, 65535], got 0"},
      {"h_kv grid", [](DecodeCall& c) { c.k.shape[2] = 65536; }, "k_cache: dimension 2 (h_kv) must be in [1, 65535]"},
      {"rows per kv head",
       [](DecodeCall& c) { c.q.shape[1] = 131071; },  // 131071 * 16 / 2 rows, past 65535 * 16
       "q: s_q * h_q / h_kv (1048568 query rows per kv head) must be at most 1048560"},
      {"table dtype", [](DecodeCall& c) { c.table.t.dtype = kFP16; }, "block_table: expected int32, got float16"},
      {"table batch", [](DecodeCall& c) { c.table.shape[0] = 3; }, "block_table: dimension 0 (b) must be 2, got 3"},
      {"table rank", [](DecodeCall& c) { c.table.shape = {10}; c.table.refresh(); }, "block_table: expected 2 dimensions"},
      {"seqlens dtype", [](DecodeCall& c) { c.seqlens.t.dtype = {kDLInt, 64, 1}; }, "cache_seqlens: expected int32, got int64"},
      {"seqlens batch", [](DecodeCall& c) { c.seqlens.shape[0] = 1; }, "cache_seqlens: dimension 0 (b) must be 2"},
      {"metadata words", [](DecodeCall& c) { c.metadata.shape[1] = 4; }, "tile_scheduler_metadata: dimension 1 (words) must be 8"},
      {"metadata parts", [](DecodeCall& c) { c.metadata.shape[0] = 0; }, "tile_scheduler_metadata: dimension 0 (num_sm_parts)"},
      {"metadata rows",
       [](DecodeCall& c) { c.metadata.strides = {16, 1}; c.metadata.refresh(); },
       "tile_scheduler_metadata: rows must be contiguous"},
      {"splits size", [](DecodeCall& c) { c.splits.shape[0] = 2; }, "num_splits: dimension 0 (b + 1) must be 3"},
      {"out dtype", [](DecodeCall& c) { c.out.t.dtype = kFP16; }, "out: expected bfloat16 (the dtype of q), got float16"},
      {"out dv", [](DecodeCall& c) { c.out.shape[3] = 576; }, "out: dimension 3 (head_dim_v) must be 512"},
      {"out s_q", [](DecodeCall& c) { c.out.shape[1] = 1; }, "out: dimension 1 (s_q) must be 2"},
      {"lse dtype", [](DecodeCall& c) { c.lse.t.dtype = kBF16; }, "lse: expected float32, got bfloat16"},
      {"lse layout", [](DecodeCall& c) { c.lse.shape = {2, 2, 16}; c.lse.refresh(); }, "lse: dimension 1 (h_q) must be 16, got 2"},
      {"head_dim_v", [](DecodeCall& c) { c.args.head_dim_v = 576; }, "head_dim_v: must be 512, got 576"},
      {"scale nan", [](DecodeCall& c) { c.args.softmax_scale = NAN; }, "softmax_scale: must be finite"},
      {"scale negative", [](DecodeCall& c) { c.args.softmax_scale = -1.0f; }, "softmax_scale"},
      {"scale overflows", [](DecodeCall& c) { c.args.softmax_scale = 3e38f; },  // * log2(e) > FLT_MAX
       "softmax_scale: must be finite and > 0, at most FLT_MAX / log2(e)"},
      {"validate", [](DecodeCall& c) { c.args.validate = 2; },
       "validate: must be 0 (trust the device values) or 1 (check them), got 2"},
      {"backend", [](DecodeCall& c) { c.args.backend = static_cast<flashmla_backend_t>(7); }, "backend: unknown value 7"},
      {"workspace small",
       [](DecodeCall& c) { c.args.workspace = reinterpret_cast<void*>(0x900000); c.args.workspace_size = 64; },
       "workspace: 64 bytes is too small"},
      {"workspace aligned",
       [](DecodeCall& c) { c.args.workspace = reinterpret_cast<void*>(0x900010); c.args.workspace_size = SIZE_MAX; },
       "workspace: must be 256-byte aligned"},
      {"device mismatch", [](DecodeCall& c) { c.out.t.device = {kDLCUDA, 1}; }, "out: is on cuda:1 but q is on cuda:0"},
      {"host tensor", [](DecodeCall& c) { c.lse.t.device = {kDLCPU, 0}; }, "lse: is on cpu but q is on cuda:0"},
      {"all on host",
       [](DecodeCall& c) {
         for (FakeTensor* t : {&c.q, &c.k, &c.table, &c.seqlens, &c.metadata, &c.splits, &c.out, &c.lse}) t->t.device = {kDLCPU, 0};
       },
       "q: expected a CUDA device tensor, got cpu"},
  };
  return cases;
}

TEST(DecodeValidation, EveryMalformedArgumentIsNamed) {
  for (const BadCase& c : bad_cases()) {
    const std::string message = run_bad(c);
    EXPECT_NE(message.find(c.expected_message), std::string::npos)
        << c.name << ": message was \"" << message << "\", expected to contain \""
        << c.expected_message << "\"";
  }
}

TEST(DecodeValidation, NullArgsStruct) {
  EXPECT_EQ(flashmla_decode(nullptr, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(flashmla_get_last_error(), "args: is NULL");
}

TEST(DecodeValidation, ErrorsArePerThread) {
  ASSERT_EQ(flashmla_decode(nullptr, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  std::string other;
  std::thread([&] { other = flashmla_get_last_error(); }).join();
  EXPECT_EQ(other, "");
  EXPECT_STREQ(flashmla_get_last_error(), "args: is NULL");
}

TEST(MetadataValidation, SlotCountMustFitInt32) {
  // num_splits' prefix sums count up to b + num_sm_parts - 1 partial slots.
  constexpr int64_t kBatch = INT32_MAX - 2;
  FakeTensor seqlens{{kBatch}, kI32, 0x100000000};
  FakeTensor metadata{{4, FLASHMLA_METADATA_WORDS}, kI32, 0x900000000};
  FakeTensor splits{{kBatch + 1}, kI32, 0xa00000000};
  // A device no machine has: a call that passes validation stops there, before any launch.
  for (FakeTensor* t : {&seqlens, &metadata, &splits}) t->t.device = {kDLCUDA, 4096};
  EXPECT_EQ(flashmla_get_metadata(&seqlens.t, &metadata.t, &splits.t, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(flashmla_get_last_error(), "num_splits: b + num_sm_parts (2147483645 + 4) must fit in int32");
  metadata.shape[0] = 2;
  EXPECT_NE(flashmla_get_metadata(&seqlens.t, &metadata.t, &splits.t, nullptr), FLASHMLA_STATUS_SUCCESS);
  EXPECT_EQ(std::string(flashmla_get_last_error()).find("num_splits: b + num_sm_parts"), std::string::npos)
      << flashmla_get_last_error();
}

TEST(MetadataValidation, MalformedTensorsAreNamed) {
  std::vector<int32_t> seq(4, 10), md(2 * FLASHMLA_METADATA_WORDS), ns(5);
  int64_t s_shape[1] = {4}, m_shape[2] = {2, FLASHMLA_METADATA_WORDS}, n_shape[1] = {5};
  DLTensor s = host_int32_tensor(seq.data(), 1, s_shape), m = host_int32_tensor(md.data(), 2, m_shape),
           n = host_int32_tensor(ns.data(), 1, n_shape);
  ASSERT_EQ(flashmla_get_metadata(&s, &m, &n, nullptr), FLASHMLA_STATUS_SUCCESS) << flashmla_get_last_error();

  EXPECT_EQ(flashmla_get_metadata(nullptr, &m, &n, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(flashmla_get_last_error(), "cache_seqlens: is NULL");
  s.dtype = kF32;
  EXPECT_EQ(flashmla_get_metadata(&s, &m, &n, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(flashmla_get_last_error(), "cache_seqlens: expected int32, got float32");
  s.dtype = kI32;
  n_shape[0] = 4;
  EXPECT_EQ(flashmla_get_metadata(&s, &m, &n, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(flashmla_get_last_error()).find("num_splits: dimension 0 (b + 1) must be 5"),
            std::string::npos);
  n_shape[0] = 5;
  m.device = {kDLCUDA, 0};
  EXPECT_EQ(flashmla_get_metadata(&s, &m, &n, nullptr), FLASHMLA_STATUS_INVALID_ARGUMENT);
  EXPECT_STREQ(flashmla_get_last_error(), "tile_scheduler_metadata: is on cuda:0 but cache_seqlens is on cpu");
}

}  // namespace
