// SwiGLU activation: out = silu(gate) * up, silu(x) = x / (1 + exp(-x)), in f32.
// Shapes: gate, up, out [rows, dim] each with its own row stride (0 = dim). out may alias gate.
#pragma once

#include <cstdint>

#include "kernels/exec.hpp"

namespace helix::kernels {

struct swiglu_params {
  const float* gate = nullptr;
  std::int64_t gate_stride = 0;
  const float* up = nullptr;
  std::int64_t up_stride = 0;
  float* out = nullptr;
  std::int64_t out_stride = 0;
  std::int64_t rows = 0;
  std::int64_t dim = 0;
};

[[nodiscard]] status swiglu(const swiglu_params& p, const exec_context& ctx);

}  // namespace helix::kernels
