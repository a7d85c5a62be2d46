// A running fp32 sum with Neumaier compensation, for the softmax denominators.
//
// A split of one request can span up to 2^31 / num_sm_parts keys. Adding each tile's weights to a
// plain fp32 running sum then rounds every addition at a fixed fraction of an ulp (the tile sums
// are similar in size and the running sum grows steadily), which biases the sum instead of
// averaging out: 2.5% (lse off by 0.025) at L = 2^31 on an H100. The carry keeps the rounding
// error of each addition, so the result is accurate to a few ulps regardless of the count.
#pragma once

#include <cmath>

namespace flashmla {

struct CompensatedSum {
  float sum = 0.f;
  float carry = 0.f;  // what the additions into `sum` have lost so far

  __device__ __forceinline__ void add(float x) {
    const float t = sum + x;
    // Neumaier: the smaller operand is the one whose low bits were rounded away.
    carry += fabsf(sum) >= fabsf(x) ? (sum - t) + x : (x - t) + sum;
    sum = t;
  }

  // Online softmax rescale when the running max grows; both parts scale exactly alike.
  __device__ __forceinline__ void scale(float factor) {
    sum *= factor;
    carry *= factor;
  }

  __device__ __forceinline__ float value() const { return sum + carry; }
};

}  // namespace flashmla
