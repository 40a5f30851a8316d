// GEMV/GEMM with f32 activations, f32/bf16/f16 or block-scaled fp8_e4m3 weights and f32
// accumulation.
//
//   y[m, n] (+)= sum_k x[m, k] * W[n, k]        (W in HF's [out, in] layout, row-major)
// Shapes: x [m, k] with row stride x_stride (>= k), w [n, k] of dtype w_type, y [m, n] with row
// stride y_stride (>= n). `accumulate` adds into y instead of overwriting it.
// Each output element is one dot product in a fixed order that depends only on k, so results do
// not depend on m (batch invariance) or on the number of threads.
#pragma once

#include <cstdint>
#include <span>

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
  /// fp8_e4m3 weights only (HF's block-scaled FP8, weight-only dequantization): weight row c's
  /// element kk is e4m3(w[c, kk]) x w_scales[c * w_scale_stride + (kk + w_scale_phase) /
  /// w_block_k]. The optimised CPU kernel sums each block's unscaled products and multiplies the
  /// sum by the block's scale (kernels/cpu/gemm_fp8.cpp), so it agrees with f32 weights
  /// dequantized by a loader within rounding, and keeps batch, thread and instruction-set
  /// invariance. Each weight row has its own scales (rows of one 128-row block repeat them), so
  /// row cuts of a shard need nothing else; a column cut starts `w_scale_phase` columns into its
  /// first block.
  const float* w_scales = nullptr;
  std::int64_t w_scale_stride = 0;  // scales per weight row (>= its column blocks)
  std::int64_t w_block_k = 0;       // columns per scale block
  std::int64_t w_scale_phase = 0;   // in [0, w_block_k)
};

/// invalid_argument on null pointers, non-positive sizes or fp8 weights without valid scales;
/// failed_precondition on a backend without the weight dtype (cuda).
[[nodiscard]] status gemm(const gemm_params& p, const exec_context& ctx);

/// Several independent GEMMs (typically the projections that read one input: q/k/v, gate/up) in
/// one parallel region: their tiles are spread over the pool together, so the threads wait once
/// instead of once per matrix and the small matrices share the threads with the large ones. Each
/// output is bit-identical to its own gemm() (the same tiles, the same order inside each). The
/// outputs must not overlap each other or any input. Errors as gemm(), naming the entry.
[[nodiscard]] status gemm_group(std::span<const gemm_params> ps, const exec_context& ctx);

}  // namespace helix::kernels
