// Output rows checked one by one against the model. A batch's global relative error is dominated by
// its short requests, so a long request whose rows are all wrong can hide in it; each row here must
// be close on its own, and a row that sees no key must be exactly zero.
#pragma once

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>

#include "cpu_reference.h"

namespace flashmla_test {

// Relative L2 error a single row may have against the model (bf16 rows measure ~1e-3).
constexpr double kRowRelL2Error = 5e-2;

// `ref_out` / `got_out`: rows (b, s, h) of kHeadDimV values in the compact out layout; `ref_lse`:
// [b, h_q, s_q], +inf where the row sees no key. Fails naming the first bad row.
::testing::AssertionResult rows_match(const float* ref_out, const float* ref_lse, const uint16_t* got_out,
                                      HalfType dtype, size_t batch, int s_q, int h_q);

}  // namespace flashmla_test
