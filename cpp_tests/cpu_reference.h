// A CPU model of the whole MLA decode (mla-decode.md §1), computed in fp64 on the same 16-bit
// inputs the GPU sees: the yardstick of the GPU correctness tests.
#pragma once

#include <cstdint>
#include <vector>

namespace flashmla_test {

constexpr int kHeadDim = 576;
constexpr int kHeadDimV = 512;

enum class HalfType { kBFloat16, kFloat16 };

// Bit-exact IEEE conversions (round to nearest even), independent of any CUDA header.
float half_bits_to_float(uint16_t bits, HalfType type);
uint16_t float_to_half_bits(float value, HalfType type);

// All arrays compact row-major, host memory.
struct DecodeProblem {
  HalfType dtype = HalfType::kBFloat16;
  int batch = 0;
  int s_q = 0;
  int h_q = 0;
  int h_kv = 0;
  int page_block_size = 0;
  int max_blocks_per_seq = 0;
  int64_t num_blocks = 0;
  float softmax_scale = 0.0f;  // the scale actually applied (never 0 here)
  bool causal = false;
  const uint16_t* q = nullptr;            // [batch, s_q, h_q, 576]
  const uint16_t* k_cache = nullptr;      // [num_blocks, page_block_size, h_kv, 576]
  const int32_t* block_table = nullptr;   // [batch, max_blocks_per_seq]
  const int32_t* seqlens = nullptr;       // [batch]
};

struct DecodeResult {
  std::vector<float> out;  // [batch, s_q, h_q, 512]
  std::vector<float> lse;  // [batch, h_q, s_q], natural log; +inf where no key is visible
};

// Reads only the cache rows of tokens [0, seqlens[i]) of each request. Uses all hardware threads.
DecodeResult cpu_reference_decode(const DecodeProblem& problem);

}  // namespace flashmla_test
