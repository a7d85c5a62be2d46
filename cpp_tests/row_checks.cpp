#include "row_checks.h"

#include <cmath>

namespace flashmla_test {

::testing::AssertionResult rows_match(const float* ref_out, const float* ref_lse, const uint16_t* got_out,
                                      HalfType dtype, size_t batch, int s_q, int h_q) {
  const size_t rows = batch * s_q * h_q;
  for (size_t row = 0; row < rows; ++row) {
    const size_t b = row / (static_cast<size_t>(s_q) * h_q), s = row / h_q % s_q, h = row % h_q;
    const bool sees_a_key = !std::isinf(ref_lse[(b * h_q + h) * s_q + s]);
    double err_sq = 0.0, ref_sq = 0.0;
    for (size_t col = 0; col < kHeadDimV; ++col) {
      const size_t i = row * kHeadDimV + col;
      const double got = half_bits_to_float(got_out[i], dtype);
      if (!sees_a_key && got != 0.0) {
        return ::testing::AssertionFailure() << "out row b=" << b << " s=" << s << " h=" << h
                                             << " sees no key but holds " << got << " at column " << col;
      }
      err_sq += (got - ref_out[i]) * (got - ref_out[i]);
      ref_sq += static_cast<double>(ref_out[i]) * ref_out[i];
    }
    // NaN compares false, so a non-finite row fails here too.
    if (sees_a_key && ref_sq > 0.0 && !(std::sqrt(err_sq / ref_sq) < kRowRelL2Error)) {
      return ::testing::AssertionFailure() << "out row b=" << b << " s=" << s << " h=" << h
                                           << ": relative L2 error " << std::sqrt(err_sq / ref_sq);
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace flashmla_test
