// The GPU tests' row check, on synthetic outputs: it passes a result that differs from the model by
// bf16 rounding, and fails the two wrong results a batch-wide relative error lets through (one long
// request's rows all zero among many short ones, a row without keys that holds values).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "cpu_reference.h"
#include "row_checks.h"

namespace flashmla_test {
namespace {

constexpr int kBatch = 64, kSQ = 1, kHQ = 16;
constexpr size_t kRows = size_t{kBatch} * kSQ * kHQ;

struct Synthetic {
  std::vector<float> ref_out, ref_lse;
  std::vector<uint16_t> got;
};

// Rows of request 0 average many keys (small values, as a long request's do); the others few.
Synthetic make(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Synthetic s;
  s.ref_out.resize(kRows * kHeadDimV);
  s.ref_lse.assign(kRows, 1.0f);
  s.got.resize(s.ref_out.size());
  for (size_t i = 0; i < s.ref_out.size(); ++i) {
    const bool long_request = i / kHeadDimV / (kSQ * kHQ) == 0;
    s.ref_out[i] = normal(rng) * (long_request ? 0.003f : 0.1f);
    s.got[i] = float_to_half_bits(s.ref_out[i], HalfType::kBFloat16);
  }
  return s;
}

double global_relative_error(const Synthetic& s) {
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < s.ref_out.size(); ++i) {
    const double d = half_bits_to_float(s.got[i], HalfType::kBFloat16) - s.ref_out[i];
    err += d * d;
    ref += double(s.ref_out[i]) * s.ref_out[i];
  }
  return std::sqrt(err / ref);
}

::testing::AssertionResult check(const Synthetic& s) {
  return rows_match(s.ref_out.data(), s.ref_lse.data(), s.got.data(), HalfType::kBFloat16, kBatch, kSQ, kHQ);
}

TEST(RowChecks, RoundingPasses) { EXPECT_TRUE(check(make(1))); }

TEST(RowChecks, AZeroedLongRequestFailsWhereTheBatchNormPasses) {
  Synthetic s = make(2);
  for (size_t i = 0; i < size_t{kSQ} * kHQ * kHeadDimV; ++i) s.got[i] = 0;
  EXPECT_LT(global_relative_error(s), 1e-2);  // the batch-wide check would pass it
  EXPECT_FALSE(check(s));
}

TEST(RowChecks, ARowWithoutKeysMustBeExactlyZero) {
  Synthetic s = make(3);
  const size_t row = 5 * kHQ + 3;
  s.ref_lse[5 * kHQ * kSQ + 3] = INFINITY;
  for (size_t col = 0; col < kHeadDimV; ++col) {
    s.ref_out[row * kHeadDimV + col] = 0.0f;
    s.got[row * kHeadDimV + col] = 0;
  }
  s.got[row * kHeadDimV + 7] = float_to_half_bits(1e-3f, HalfType::kBFloat16);
  EXPECT_FALSE(check(s));
  s.got[row * kHeadDimV + 7] = 0;
  EXPECT_TRUE(check(s));
}

TEST(RowChecks, NaNFails) {
  Synthetic s = make(4);
  s.got[100] = 0x7fc0;  // bf16 NaN
  EXPECT_FALSE(check(s));
}

}  // namespace
}  // namespace flashmla_test
