// GEMV/GEMM with f32 activations, f32/bf16/f16 weights and f32 accumulation.
//
//   y[m, n] (+)= sum_k x[m, k] * W[n, k]        (W in HF's [out, in] layout, row-major)
// Shapes: x [m, k] with row stride x_stride (>= k), w [n, k] of dtype w_type, y [m, n] with row
// stride y_stride (>= n). `accumulate` adds into y instead of overwriting it.
// Each output element is one dot product in a fixed order that depends only on k, so results do
// not depend on m (batch invariance) or on the number of threads.
#pragma once

#include <cstdint>

#include "core/dtype.hpp"
#include "kernels/exec.hpp"

namespace helix::kernels {

struct gemm_params {
  const float* x = nullptr;
  std::int64_t x_stride = 0;  // 0 means k
  const void* w = nullptr;
  dtype w_type = dtype::f32;
  float* y = nullptr;
  std::int64_t y_stride = 0;  // 0 means n
  std::int64_t m = 0;
  std::int64_t n = 0;
  std::int64_t k = 0;
  bool accumulate = false;
};

/// invalid_argument on null pointers or non-positive sizes; failed_precondition for fp8 weights.
[[nodiscard]] status gemm(const gemm_params& p, const exec_context& ctx);

}  // namespace helix::kernels
