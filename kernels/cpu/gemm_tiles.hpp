// Internal to the optimised CPU GEMV/GEMM (kernels/cpu/gemm_opt.cpp): the pieces it shares with
// the block-scaled FP8 kernels of gemm_fp8.cpp. The fixed 16-lane reduction tree (every path,
// scalar or vector, sums its 16 lanes in this order, so they give the same bits) and the FP8
// entry point that gemm_opt.cpp calls once per tile.
#pragma once

#include <cstdint>

#include "kernels/cpu/isa.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/gemm.hpp"

namespace helix::kernels::cpu {

inline constexpr int gemm_lanes = 16;

/// The tree over 16 lanes: t_j = a_j + a_{j+8}, u_j = t_j + t_{j+4}, (u_0 + u_2) + (u_1 + u_3).
inline float reduce_lanes_scalar(const float* a) {
  float t[8];
  for (int j = 0; j < 8; ++j) t[j] = a[j] + a[j + 8];
  float u[4];
  for (int j = 0; j < 4; ++j) u[j] = t[j] + t[j + 4];
  return (u[0] + u[2]) + (u[1] + u[3]);
}

#if HELIX_SIMD_X86
/// The same tree over lanes 0..7 (`lo`) and 8..15 (`hi`).
HELIX_SIMD_AVX2 inline float reduce_lanes_avx2(__m256 lo, __m256 hi) {
  const __m256 t = _mm256_add_ps(lo, hi);  // t_j = a_j + a_{j+8}
  const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  const __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));  // (u0 + u2, u1 + u3)
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

/// The same tree over one zmm.
HELIX_SIMD_AVX512 inline float reduce_lanes_avx512(__m512 a) {
  const __m256 lo = _mm512_castps512_ps256(a);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  return reduce_lanes_avx2(lo, hi);
}
#endif

/// Where a gemm writes output element y: stored, or added when p.accumulate.
inline void store_result(const gemm_params& p, float* y, float v) {
  *y = p.accumulate ? *y + v : v;
}

/// One tile of an fp8_e4m3 gemm: activation rows [r_begin, r_end) times weight rows
/// [c_begin, c_end); strides resolved (never 0).
struct fp8_tile {
  const gemm_params* p = nullptr;
  std::int64_t x_stride = 0;
  std::int64_t y_stride = 0;
  std::int64_t r_begin = 0;
  std::int64_t r_end = 0;
  std::int64_t c_begin = 0;
  std::int64_t c_end = 0;
};

/// The paths of the FP8 kernels; every one gives the same bits (gemm_fp8.cpp).
enum class fp8_path : std::uint8_t { scalar, avx2, avx512, avx512_vbmi };

/// The path for `p` on `isa` (already clamped to what the CPU has) with the extensions `ext`
/// allows: the vector paths need scale blocks and their phase in multiples of 16 columns.
[[nodiscard]] fp8_path choose_fp8_path(const gemm_params& p, simd::isa isa, simd::isa_ext ext);

/// Computes one tile. Thread-safe for disjoint tiles.
void gemm_fp8_tile(const fp8_tile& t, fp8_path path);

}  // namespace helix::kernels::cpu
