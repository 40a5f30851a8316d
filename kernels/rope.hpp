// Rotary position embedding, applied in place at explicit global positions.
//
// x holds rows of num_heads heads; for row r and head h the rotated part is the rot_dim values at
// x + r * row_stride + h * head_stride (+ rot_offset). The angle of pair i is
// positions[r] * inv_freq[i], computed in f32 like HF; cos and sin are multiplied by
// attention_factor (YaRN's mscale; 1 otherwise).
// Pairs: rotate-half (x_i, x_{i + rot_dim/2}) as HF Llama, or interleaved (x_{2i}, x_{2i+1}) as
// DeepSeek-V3 with rope_interleave (HF de-interleaves then rotates half; that is the same rotation
// on a permuted vector, and dot products between rotated q and k are identical).
#pragma once

#include <cstdint>
#include <vector>

#include "core/model_spec.hpp"
#include "kernels/exec.hpp"

namespace helix::kernels {

struct rope_params {
  float* x = nullptr;
  std::int64_t rows = 0;
  std::int64_t row_stride = 0;
  std::int64_t num_heads = 1;
  std::int64_t head_stride = 0;
  std::int64_t rot_offset = 0;              // where the rotated part starts inside a head
  std::int64_t rot_dim = 0;                 // even
  const std::int64_t* positions = nullptr;  // [rows]
  const float* inv_freq = nullptr;          // [rot_dim / 2]
  float attention_factor = 1.0f;
  bool interleave = false;
};

[[nodiscard]] status rope(const rope_params& p, const exec_context& ctx);

/// Inverse frequencies and attention factor of a RoPE spec for a rotary dimension, as HF
/// transformers computes them (default, linear, llama3 and yarn scaling).
struct rope_table {
  std::vector<float> inv_freq;  // [rot_dim / 2]
  float attention_factor = 1.0f;
};
[[nodiscard]] rope_table make_rope_table(const rope_spec& spec, std::int64_t rot_dim);

}  // namespace helix::kernels
