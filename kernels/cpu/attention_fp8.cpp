// The AVX-512 + AVX512_VBMI engine of the optimised CPU attention for fp8 (e4m3) KV; the driver,
// the other engines and the design are in attention_opt.cpp.
//
// The F16C engine spends 8 operations converting 16 fp8 values (NaN handling included) next to
// the 4 FMAs of a 4-head tile, and converting was a quarter of its time. Here 32 values at a time
// go through the byte tables (simd::fp8x32_to_f32_split: 6 operations per 32, exact, NaN
// included) in pair-split order, the order of the bf16 engine, so q and o are arranged as for
// bf16 (engine.split) and the values are exact (load_scale 1). The functions mirror
// scores_avx512 / values_avx512 (same tiles, prefetches and register blocking); they are copies
// because their target attribute must include VBMI for the conversion to inline.
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/attention_tiles.hpp"
#include "kernels/cpu/simd.hpp"

namespace helix::kernels::cpu::attention_detail {

#if HELIX_SIMD_X86
namespace {

// The last < 32 elements of a row, natural order (as split_pairs leaves them), exact.
HELIX_SIMD_AVX512_VBMI inline __m512 load16_exact(const fp8_e4m3_t* p, __mmask16 m) {
  __m512 v[4];
  simd::fp8x64_to_f32(_mm512_maskz_loadu_epi8(m, p), v);
  return v[0];
}

// As scores_avx512<fp8_e4m3_t, NH>.
template <int NH>
HELIX_SIMD_AVX512_VBMI void scores_vbmi(const tile_args& a, const fp8_e4m3_t* k, std::int64_t nt,
                                        float (&s)[NH][sub_tokens]) {
  constexpr int NT = 16 / NH;
  const std::int64_t kd = a.key_dim;
  for (std::int64_t t0 = 0; t0 < nt; t0 += NT) {
    const fp8_e4m3_t* rows[NT];
#pragma GCC unroll 16
    for (int j = 0; j < NT; ++j) rows[j] = k + std::min<std::int64_t>(t0 + j, nt - 1) * kd;
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
    std::int64_t d = 0;
    for (; d + 32 <= kd; d += 32) {
      __m512 q_lo[NH];
      __m512 q_hi[NH];
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) {
        q_lo[h] = _mm512_loadu_ps(a.q[h] + d);
        q_hi[h] = _mm512_loadu_ps(a.q[h] + d + 16);
      }
#pragma GCC unroll 16
      for (int j = 0; j < NT; ++j) {
        __m512 k_lo;
        __m512 k_hi;
        simd::fp8x32_to_f32_split(rows[j] + d, k_lo, k_hi);
        if (a.next_k != nullptr && d % 64 == 0) prefetch_next(a.next_k + (rows[j] - k) + d);
#pragma GCC unroll 4
        for (int h = 0; h < NH; ++h) {
          acc[j * NH + h] = _mm512_fmadd_ps(q_lo[h], k_lo, acc[j * NH + h]);
          acc[j * NH + h] = _mm512_fmadd_ps(q_hi[h], k_hi, acc[j * NH + h]);
        }
      }
    }
    for (; d < kd; d += 16) {  // the last < 32 elements, natural order
      const __mmask16 m = simd::tail_mask16(std::min<std::int64_t>(16, kd - d));
      __m512 qv[NH];
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) qv[h] = _mm512_maskz_loadu_ps(m, a.q[h] + d);
#pragma GCC unroll 16
      for (int j = 0; j < NT; ++j) {
        const __m512 kv = load16_exact(rows[j] + d, m);
#pragma GCC unroll 4
        for (int h = 0; h < NH; ++h) acc[j * NH + h] = _mm512_fmadd_ps(qv[h], kv, acc[j * NH + h]);
      }
    }
    alignas(64) float r[16];
    _mm512_store_ps(r, simd::reduce16x16(acc));
    for (int j = 0; j < NT && t0 + j < nt; ++j) {
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) s[h][t0 + j] = r[j * NH + h];
    }
  }
}

template <int NH>
HELIX_SIMD_AVX512_VBMI void softmax_vbmi(const tile_args& a, const fp8_e4m3_t* k, std::int64_t nt,
                                         tile_state& st, float* p) {
  float(&s)[NH][sub_tokens] = *reinterpret_cast<float(*)[NH][sub_tokens]>(p);
  scores_vbmi<NH>(a, k, nt, s);
  softmax_update512<NH>(a, nt, st, s);
}

// As values_avx512<fp8_e4m3_t, NH>: NH heads x DC 16-wide column chunks of accumulators.
template <int NH>
HELIX_SIMD_AVX512_VBMI void values_vbmi(const tile_args& a, const float* p, const fp8_e4m3_t* v,
                                        std::int64_t nt) {
  constexpr int DC = 8 / NH;  // 2, 4 or 8: even, so whole 32-column groups
  const std::int64_t dv = a.value_dim;
  std::int64_t d = 0;
  for (; d + 16 * DC <= dv; d += 16 * DC) {
    __m512 acc[NH][DC];
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
#pragma GCC unroll 8
      for (int c = 0; c < DC; ++c) acc[h][c] = _mm512_loadu_ps(a.o[h] + d + 16 * c);
    }
    for (std::int64_t t = 0; t < nt; ++t) {
      const fp8_e4m3_t* row = v + t * a.v_stride + d;
      __m512 vv[DC];
#pragma GCC unroll 4
      for (int c = 0; c < DC; c += 2) simd::fp8x32_to_f32_split(row + 16 * c, vv[c], vv[c + 1]);
      if (a.next_v != nullptr) {
        const char* nv = a.next_v + t * a.v_stride + d;
        for (std::int64_t off = 0; off < 16 * DC; off += 64) prefetch_next(nv + off);
      }
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) {
        const __m512 w = _mm512_set1_ps(p[h * sub_tokens + t]);
#pragma GCC unroll 8
        for (int c = 0; c < DC; ++c) acc[h][c] = _mm512_fmadd_ps(w, vv[c], acc[h][c]);
      }
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
#pragma GCC unroll 8
      for (int c = 0; c < DC; ++c) _mm512_storeu_ps(a.o[h] + d + 16 * c, acc[h][c]);
    }
  }
  for (; d + 32 <= dv; d += 32) {
    __m512 acc[NH][2];
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      acc[h][0] = _mm512_loadu_ps(a.o[h] + d);
      acc[h][1] = _mm512_loadu_ps(a.o[h] + d + 16);
    }
    for (std::int64_t t = 0; t < nt; ++t) {
      __m512 lo;
      __m512 hi;
      simd::fp8x32_to_f32_split(v + t * a.v_stride + d, lo, hi);
      if (a.next_v != nullptr) prefetch_next(a.next_v + t * a.v_stride + d);
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h) {
        const __m512 w = _mm512_set1_ps(p[h * sub_tokens + t]);
        acc[h][0] = _mm512_fmadd_ps(w, lo, acc[h][0]);
        acc[h][1] = _mm512_fmadd_ps(w, hi, acc[h][1]);
      }
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) {
      _mm512_storeu_ps(a.o[h] + d, acc[h][0]);
      _mm512_storeu_ps(a.o[h] + d + 16, acc[h][1]);
    }
  }
  for (; d < dv; d += 16) {
    const __mmask16 m = simd::tail_mask16(std::min<std::int64_t>(16, dv - d));
    __m512 acc[NH];
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) acc[h] = _mm512_maskz_loadu_ps(m, a.o[h] + d);
    for (std::int64_t t = 0; t < nt; ++t) {
      const __m512 vv = load16_exact(v + t * a.v_stride + d, m);
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h)
        acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(p[h * sub_tokens + t]), vv, acc[h]);
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) _mm512_mask_storeu_ps(a.o[h] + d, m, acc[h]);
  }
}

}  // namespace

engine<fp8_e4m3_t> make_fp8_vbmi_engine() {
  return {{&softmax_vbmi<1>, &softmax_vbmi<2>, &softmax_vbmi<4>},
          {&values_vbmi<1>, &values_vbmi<2>, &values_vbmi<4>},
          1.0f,
          true};
}
#endif  // HELIX_SIMD_X86

}  // namespace helix::kernels::cpu::attention_detail
