// RMSNorm as in HF Llama / DeepSeek-V3: out = x * rsqrt(mean(x^2) + eps) * weight, in f32.
// Shapes: x [rows, dim] (row stride x_stride, 0 = dim), weight [dim] of dtype w_type,
// out [rows, dim] (row stride out_stride, 0 = dim). out may alias x.
#pragma once

#include <cstdint>

#include "core/dtype.hpp"
#include "kernels/exec.hpp"

namespace helix::kernels {

struct rmsnorm_params {
  const float* x = nullptr;
  std::int64_t x_stride = 0;
  const void* weight = nullptr;
  dtype w_type = dtype::f32;
  float* out = nullptr;
  std::int64_t out_stride = 0;
  std::int64_t rows = 0;
  std::int64_t dim = 0;
  float eps = 1e-6f;
};

[[nodiscard]] status rmsnorm(const rmsnorm_params& p, const exec_context& ctx);

}  // namespace helix::kernels
