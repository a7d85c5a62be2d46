#include "cpu_reference.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <thread>

namespace flashmla_test {
namespace {

constexpr int kFloat16ExponentBias = 15;
constexpr int kFloat16MantissaBits = 10;
constexpr int kFloat16MinNormalExponent = -14;
constexpr int kFloat16MaxExponent = 15;
// Smallest magnitude that rounds to +inf: halfway between the largest finite half (65504) and 2^16.
constexpr float kFloat16OverflowThreshold = 65520.0f;
constexpr uint16_t kFloat16Infinity = 0x7c00;
constexpr uint16_t kFloat16QuietNaN = 0x7e00;
constexpr uint16_t kBFloat16QuietNaN = 0x7fc0;

uint32_t float_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

float bits_float(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

float float16_to_float(uint16_t bits) {
  const bool negative = (bits & 0x8000) != 0;
  const int exponent = (bits >> kFloat16MantissaBits) & 0x1f;
  const int mantissa = bits & ((1 << kFloat16MantissaBits) - 1);
  double magnitude;
  if (exponent == 0) {  // zero or subnormal
    magnitude = std::ldexp(static_cast<double>(mantissa),
                           kFloat16MinNormalExponent - kFloat16MantissaBits);
  } else if (exponent == 0x1f) {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  } else {
    magnitude = std::ldexp(1.0 + std::ldexp(static_cast<double>(mantissa), -kFloat16MantissaBits),
                           exponent - kFloat16ExponentBias);
  }
  return static_cast<float>(negative ? -magnitude : magnitude);
}

uint16_t float_to_float16(float value) {
  const uint16_t sign = (float_bits(value) >> 16) & 0x8000;
  if (std::isnan(value)) return sign | kFloat16QuietNaN;
  const double magnitude = std::fabs(static_cast<double>(value));
  if (magnitude >= kFloat16OverflowThreshold) return sign | kFloat16Infinity;
  if (magnitude < std::ldexp(1.0, kFloat16MinNormalExponent)) {
    // Subnormal: a multiple of 2^-24; a result of 2^10 units is the smallest normal, whose
    // encoding is exactly that integer.
    const double units =
        std::nearbyint(std::ldexp(magnitude, kFloat16MantissaBits - kFloat16MinNormalExponent));
    return sign | static_cast<uint16_t>(units);
  }
  int exponent;
  std::frexp(magnitude, &exponent);  // magnitude = m * 2^exponent, m in [0.5, 1)
  --exponent;                        // magnitude = 1.f * 2^exponent
  double fraction = std::nearbyint(
      (std::ldexp(magnitude, -exponent) - 1.0) * (1 << kFloat16MantissaBits));
  if (fraction == (1 << kFloat16MantissaBits)) {  // rounded up to the next power of two
    fraction = 0;
    ++exponent;
  }
  if (exponent > kFloat16MaxExponent) return sign | kFloat16Infinity;
  return sign | static_cast<uint16_t>((exponent + kFloat16ExponentBias) << kFloat16MantissaBits) |
         static_cast<uint16_t>(fraction);
}

uint16_t float_to_bfloat16(float value) {
  const uint32_t bits = float_bits(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) & 0x8000) | kBFloat16QuietNaN;
  // Round to nearest even on the 16 dropped bits.
  const uint32_t rounding_bias = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding_bias) >> 16);
}

// One query row: the scores of all visible keys, then softmax and p . V, in fp64.
void decode_row(const DecodeProblem& p, const std::vector<float>& keys, int seqlen,
                const uint16_t* q_row, int s, float* out_row, float* lse) {
  const int64_t visible =
      p.causal ? std::clamp<int64_t>(static_cast<int64_t>(seqlen) - p.s_q + s + 1, 0, seqlen)
               : seqlen;
  if (visible == 0) {
    std::fill(out_row, out_row + kHeadDimV, 0.0f);
    *lse = std::numeric_limits<float>::infinity();
    return;
  }
  float q[kHeadDim];
  for (int c = 0; c < kHeadDim; ++c) q[c] = half_bits_to_float(q_row[c], p.dtype);

  std::vector<double> scores(visible);
  double max_score = -std::numeric_limits<double>::infinity();
  for (int64_t t = 0; t < visible; ++t) {
    const float* key = &keys[t * kHeadDim];
    double dot = 0.0;
    for (int c = 0; c < kHeadDim; ++c) dot += static_cast<double>(q[c]) * key[c];
    scores[t] = dot * p.softmax_scale;
    max_score = std::max(max_score, scores[t]);
  }
  double sum = 0.0;
  std::vector<double> acc(kHeadDimV, 0.0);
  for (int64_t t = 0; t < visible; ++t) {
    const double weight = std::exp(scores[t] - max_score);
    sum += weight;
    const float* value = &keys[t * kHeadDim];
    for (int c = 0; c < kHeadDimV; ++c) acc[c] += weight * value[c];
  }
  for (int c = 0; c < kHeadDimV; ++c) out_row[c] = static_cast<float>(acc[c] / sum);
  *lse = static_cast<float>(max_score + std::log(sum));
}

// The keys of request b, kv head kv_head, gathered through the block table and converted once.
std::vector<float> gather_keys(const DecodeProblem& p, int b, int kv_head) {
  const int seqlen = p.seqlens[b];
  std::vector<float> keys(static_cast<size_t>(seqlen) * kHeadDim);
  for (int t = 0; t < seqlen; ++t) {
    const int64_t block =
        p.block_table[static_cast<int64_t>(b) * p.max_blocks_per_seq + t / p.page_block_size];
    const int64_t row = t % p.page_block_size;
    const uint16_t* src =
        p.k_cache + ((block * p.page_block_size + row) * p.h_kv + kv_head) * kHeadDim;
    for (int c = 0; c < kHeadDim; ++c) {
      keys[static_cast<size_t>(t) * kHeadDim + c] = half_bits_to_float(src[c], p.dtype);
    }
  }
  return keys;
}

// Runs fn(i) for i in [0, n) on all hardware threads; the calls must be independent.
template <typename Fn>
void parallel_for(int64_t n, const Fn& fn) {
  std::atomic<int64_t> next{0};
  auto worker = [&]() {
    for (int64_t i = next++; i < n; i = next++) fn(i);
  };
  const int64_t hardware = std::max(1u, std::thread::hardware_concurrency());
  const int64_t num_threads = std::max<int64_t>(1, std::min(n, hardware));
  std::vector<std::thread> threads;
  for (int64_t i = 1; i < num_threads; ++i) threads.emplace_back(worker);
  worker();
  for (std::thread& thread : threads) thread.join();
}

}  // namespace

float half_bits_to_float(uint16_t bits, HalfType type) {
  return type == HalfType::kBFloat16 ? bits_float(static_cast<uint32_t>(bits) << 16)
                                     : float16_to_float(bits);
}

uint16_t float_to_half_bits(float value, HalfType type) {
  return type == HalfType::kBFloat16 ? float_to_bfloat16(value) : float_to_float16(value);
}

DecodeResult cpu_reference_decode(const DecodeProblem& problem) {
  DecodeResult result;
  result.out.assign(static_cast<size_t>(problem.batch) * problem.s_q * problem.h_q * kHeadDimV,
                    0.0f);
  result.lse.assign(static_cast<size_t>(problem.batch) * problem.h_q * problem.s_q, 0.0f);

  std::vector<std::vector<float>> keys(static_cast<size_t>(problem.batch) * problem.h_kv);
  parallel_for(static_cast<int64_t>(keys.size()), [&](int64_t item) {
    keys[item] = gather_keys(problem, static_cast<int>(item / problem.h_kv),
                             static_cast<int>(item % problem.h_kv));
  });
  // Every query row (b, s, h) writes its own output row and lse entry.
  const int heads_per_kv = problem.h_q / problem.h_kv;
  parallel_for(static_cast<int64_t>(problem.batch) * problem.s_q * problem.h_q, [&](int64_t row) {
    const int h = static_cast<int>(row % problem.h_q);
    const int s = static_cast<int>(row / problem.h_q % problem.s_q);
    const int b = static_cast<int>(row / (static_cast<int64_t>(problem.h_q) * problem.s_q));
    decode_row(problem, keys[static_cast<size_t>(b) * problem.h_kv + h / heads_per_kv],
               problem.seqlens[b], problem.q + row * kHeadDim, s,
               &result.out[static_cast<size_t>(row) * kHeadDimV],
               &result.lse[(static_cast<size_t>(b) * problem.h_q + h) * problem.s_q + s]);
  });
  return result;
}

}  // namespace flashmla_test
