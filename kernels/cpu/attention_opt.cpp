// Optimised CPU partial attention (GQA and MLA in absorbed form).
//
// Decode attention streams the KV cache, so the design is about reading every byte of K and V
// once, in address order, with as little arithmetic per byte as the math allows:
//   - Tasks are (chunk of `chunk_blocks` blocks) x (pass of up to 64 query heads: whole GQA
//     groups, or a slice of one large group such as MLA's 128 heads). The chunk size is a
//     constant, never derived from the thread count, so each chunk's partial is computed by the
//     same instructions whichever thread runs it: results are bit-identical for any pool size
//     and depend only on the request's own inputs.
//   - A pass's query heads are processed in tiles of 4, 2 or 1 heads of one KV head; each key
//     and value row is loaded once per tile and feeds the tile's heads from registers.
//   - Blocks are the outer loop. For each 16-token slice of a block, phase 1 (scores + online
//     softmax) runs for every tile, reading the K of every head, then phase 2 (values) reads
//     every V: a head-major page is read front to back, which the hardware prefetchers follow
//     (per-head tasks, or K0 V0 K1 V1 order, measured ~40% slower on Zen 4 at 1M tokens).
//   - While a block is computed, the same rows of the next block in the chunk are prefetched line
//     by line (blocks sit in arbitrary slots, so the hardware cannot run ahead across them).
//   - Phase 1 computes 16 dot products at once (4 tokens x 4 heads, 8x2 or 16x1) and reduces
//     them together; the softmax keeps a reference point m that scores may exceed by a slack
//     before rescaling, so the common case is one compare.
//   - Chunk partials (o, lse) go to the caller's workspace and are merged in chunk order with the
//     optimised lse_merge; a request with a single chunk writes out/lse directly.
// Causal masking uses each block's global first_pos: a block covers consecutive positions, so the
// keys a query sees in a block are a prefix of it and masking is a token count.
// Engines: AVX-512 (F/BW/VL/DQ), AVX2+FMA+F16C, portable scalar; picked at run time. fp8 KV on
// AVX-512 with VBMI has its own engine (attention_fp8.cpp: byte-table conversion, pair-split
// order as bf16).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "kernels/cpu/attention_tiles.hpp"
#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/simd.hpp"

namespace helix::kernels::cpu {
namespace {

using namespace attention_detail;

constexpr std::int64_t chunk_blocks = 32;  // fixed: results must not depend on thread count

// ---------------------------------------------------------------------------------------------
// Portable scalar engine.

// Phase 1 of a 16-token sub-tile: scores, the online-softmax update of (m, l, o) and the weights
// p[h][t] = exp(score - m). Phase 2 adds sum_t p[h][t] * v_t to o. The driver runs phase 1 for
// every tile of a block before phase 2 so that a page is read front to back (all K, then all V).
template <class T, int NH>
void softmax_scalar(const tile_args& a, const T* k, std::int64_t nt, tile_state& st, float* p) {
  for (int h = 0; h < NH; ++h) {
    float* ph = p + h * sub_tokens;
    float mx = neg_inf;
    for (std::int64_t t = 0; t < nt; ++t) {
      ph[t] = simd::dot_scalar(a.q[h], k + t * a.key_dim, a.key_dim) * a.score_scale;
      mx = std::max(mx, ph[t]);
    }
    if (mx > st.m[h]) raise_max(a, st, h, mx);
    for (std::int64_t t = 0; t < nt; ++t) {
      ph[t] = std::exp(ph[t] - st.m[h]);
      st.l[h][t] += ph[t];
    }
  }
}

template <class T, int NH>
void values_scalar(const tile_args& a, const float* p, const T* v, std::int64_t nt) {
  for (int h = 0; h < NH; ++h) {
    for (std::int64_t t = 0; t < nt; ++t) {
      simd::axpy_scalar(p[h * sub_tokens + t], v + t * a.v_stride, a.o[h], a.value_dim);
    }
  }
}

#if HELIX_SIMD_X86

// ---------------------------------------------------------------------------------------------
// AVX-512 engine.

// How the AVX-512 engine loads each KV dtype. Full groups of 32 elements go through load32; a
// `split` type returns them in pair-split order (even elements, then odd: see simd.hpp), so the
// queries are pre-arranged the same way and the outputs accumulate in that order and are put
// back at the end. `scale`: loaded values are stored values / scale (fp8 converts through f16
// at half the cost; the 256 is folded into the score and value scales, exactly).
template <class T>
struct kv512 {
  static constexpr bool split = false;
  static constexpr float scale = 1.0f;
  HELIX_SIMD_AVX512 static void load32(const T* p, __m512& lo, __m512& hi) {
    lo = simd::load16(p);
    hi = simd::load16(p + 16);
  }
  HELIX_SIMD_AVX512 static __m512 load16(const T* p, __mmask16 m) { return simd::load16(p, m); }
};

template <>
struct kv512<bf16_t> {
  static constexpr bool split = true;
  static constexpr float scale = 1.0f;
  HELIX_SIMD_AVX512 static void load32(const bf16_t* p, __m512& lo, __m512& hi) {
    simd::load32_split(p, lo, hi);
  }
  HELIX_SIMD_AVX512 static __m512 load16(const bf16_t* p, __mmask16 m) {
    return simd::load16(p, m);
  }
};

template <>
struct kv512<fp8_e4m3_t> {
  static constexpr bool split = false;
  static constexpr float scale = 256.0f;
  HELIX_SIMD_AVX512 static void load32(const fp8_e4m3_t* p, __m512& lo, __m512& hi) {
    lo = simd::load16_div256(p);
    hi = simd::load16_div256(p + 16);
  }
  HELIX_SIMD_AVX512 static __m512 load16(const fp8_e4m3_t* p, __mmask16 m) {
    return simd::load16_div256(p, m);
  }
};

// Raw dot products s[h][t] = q_h . k_t for t < nt (<= 16): NT tokens x NH heads = 16 accumulators
// per group, reduced together by reduce16x16. Rows past nt repeat the last row (results unused).
template <class T, int NH>
HELIX_SIMD_AVX512 void scores_avx512(const tile_args& a, const T* k, std::int64_t nt,
                                     float (&s)[NH][sub_tokens]) {
  constexpr int NT = 16 / NH;
  const std::int64_t kd = a.key_dim;
  for (std::int64_t t0 = 0; t0 < nt; t0 += NT) {
    const T* rows[NT];
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
        kv512<T>::load32(rows[j] + d, k_lo, k_hi);
        if (a.next_k != nullptr) {
          const char* nk = a.next_k + ((rows[j] - k) + d) * static_cast<std::int64_t>(sizeof(T));
          for (std::size_t off = 0; off < 32 * sizeof(T); off += 64) prefetch_next(nk + off);
        }
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
        const __m512 kv = kv512<T>::load16(rows[j] + d, m);
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

// o_h[d] += sum_t p[h][t] * v_t[d] for t < nt, with 8 accumulator registers: NH heads x DC
// 16-wide column chunks, each V row chunk loaded once for the NH heads. Column groups are
// loaded 32 at a time (load32), the last < 32 columns 16 at a time in natural order.
template <class T, int NH>
HELIX_SIMD_AVX512 void values_avx512(const tile_args& a, const float* p, const T* v,
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
      const T* row = v + t * a.v_stride + d;
      __m512 vv[DC];
#pragma GCC unroll 4
      for (int c = 0; c < DC; c += 2) kv512<T>::load32(row + 16 * c, vv[c], vv[c + 1]);
      if (a.next_v != nullptr) {
        const char* nv = a.next_v + (t * a.v_stride + d) * static_cast<std::int64_t>(sizeof(T));
        for (std::size_t off = 0; off < 16 * DC * sizeof(T); off += 64) prefetch_next(nv + off);
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
      kv512<T>::load32(v + t * a.v_stride + d, lo, hi);
      if (a.next_v != nullptr) {
        const char* nv = a.next_v + (t * a.v_stride + d) * static_cast<std::int64_t>(sizeof(T));
        for (std::size_t off = 0; off < 32 * sizeof(T); off += 64) prefetch_next(nv + off);
      }
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
      const __m512 vv = kv512<T>::load16(v + t * a.v_stride + d, m);
#pragma GCC unroll 4
      for (int h = 0; h < NH; ++h)
        acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(p[h * sub_tokens + t]), vv, acc[h]);
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h) _mm512_mask_storeu_ps(a.o[h] + d, m, acc[h]);
  }
}

template <class T, int NH>
HELIX_SIMD_AVX512 void softmax_avx512(const tile_args& a, const T* k, std::int64_t nt,
                                      tile_state& st, float* p) {
  float(&s)[NH][sub_tokens] = *reinterpret_cast<float(*)[NH][sub_tokens]>(p);
  scores_avx512<T, NH>(a, k, nt, s);
  softmax_update512<NH>(a, nt, st, s);
}

// ---------------------------------------------------------------------------------------------
// AVX2 engine: the same structure with 8 lanes (8 accumulators: NT x NH = 8).

HELIX_SIMD_AVX2 inline __m256 reduce8x8(const __m256 a[8]) {
  const __m256 t0 = _mm256_hadd_ps(a[0], a[1]);
  const __m256 t1 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 t2 = _mm256_hadd_ps(a[4], a[5]);
  const __m256 t3 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 u0 = _mm256_hadd_ps(t0, t1);  // [a0..a3 low halves | a0..a3 high halves]
  const __m256 u1 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

// How the AVX2 engine loads each KV dtype; `scale` as in kv512 (fp8 through F16C, / 256).
template <class T>
struct kv256 {
  static constexpr float scale = 1.0f;
  HELIX_SIMD_AVX2 static __m256 load8(const T* p) { return simd::load8(p); }
};

template <>
struct kv256<fp8_e4m3_t> {
  static constexpr float scale = 256.0f;
  HELIX_SIMD_AVX2 static __m256 load8(const fp8_e4m3_t* p) { return simd::load8_div256(p); }
};

// Loads x[0..n) (n < 8) zero-padded: the AVX2 tail for any element type.
template <class T>
HELIX_SIMD_AVX2 inline __m256 load8_partial(const T* x, std::int64_t n) {
  T tmp[8] = {};
  std::memcpy(tmp, x, static_cast<std::size_t>(n) * sizeof(T));
  return kv256<T>::load8(tmp);
}

// q rows past the key dimension are read only through this (zero-padded, f32).
HELIX_SIMD_AVX2 inline __m256 load8_partial_f32(const float* x, std::int64_t n) {
  float tmp[8] = {};
  std::memcpy(tmp, x, static_cast<std::size_t>(n) * sizeof(float));
  return _mm256_loadu_ps(tmp);
}

template <class T, int NH>
HELIX_SIMD_AVX2 void scores_avx2(const tile_args& a, const T* k, std::int64_t nt,
                                 float (&s)[NH][sub_tokens]) {
  constexpr int NT = 8 / NH;
  const std::int64_t kd = a.key_dim;
  for (std::int64_t t0 = 0; t0 < nt; t0 += NT) {
    const T* rows[NT];
    for (int j = 0; j < NT; ++j) rows[j] = k + std::min<std::int64_t>(t0 + j, nt - 1) * kd;
    __m256 acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_setzero_ps();
    std::int64_t d = 0;
    for (; d + 8 <= kd; d += 8) {
      for (int j = 0; j < NT; ++j) {
        const __m256 kv = kv256<T>::load8(rows[j] + d);
        for (int h = 0; h < NH; ++h) {
          acc[j * NH + h] = _mm256_fmadd_ps(_mm256_loadu_ps(a.q[h] + d), kv, acc[j * NH + h]);
        }
      }
    }
    if (d < kd) {
      for (int j = 0; j < NT; ++j) {
        const __m256 kv = load8_partial(rows[j] + d, kd - d);
        for (int h = 0; h < NH; ++h) {
          acc[j * NH + h] =
              _mm256_fmadd_ps(load8_partial_f32(a.q[h] + d, kd - d), kv, acc[j * NH + h]);
        }
      }
    }
    alignas(32) float r[8];
    _mm256_store_ps(r, reduce8x8(acc));
    for (int j = 0; j < NT && t0 + j < nt; ++j) {
      for (int h = 0; h < NH; ++h) s[h][t0 + j] = r[j * NH + h];
    }
  }
}

template <class T, int NH>
HELIX_SIMD_AVX2 void values_avx2(const tile_args& a, const float* p, const T* v, std::int64_t nt) {
  constexpr int DC = 8 / NH;
  const std::int64_t dv = a.value_dim;
  std::int64_t d = 0;
  for (; d + 8 * DC <= dv; d += 8 * DC) {
    __m256 acc[NH][DC];
    for (int h = 0; h < NH; ++h) {
      for (int c = 0; c < DC; ++c) acc[h][c] = _mm256_loadu_ps(a.o[h] + d + 8 * c);
    }
    for (std::int64_t t = 0; t < nt; ++t) {
      const T* row = v + t * a.v_stride + d;
      __m256 vv[DC];
      for (int c = 0; c < DC; ++c) vv[c] = kv256<T>::load8(row + 8 * c);
      for (int h = 0; h < NH; ++h) {
        const __m256 w = _mm256_set1_ps(p[h * sub_tokens + t]);
        for (int c = 0; c < DC; ++c) acc[h][c] = _mm256_fmadd_ps(w, vv[c], acc[h][c]);
      }
    }
    for (int h = 0; h < NH; ++h) {
      for (int c = 0; c < DC; ++c) _mm256_storeu_ps(a.o[h] + d + 8 * c, acc[h][c]);
    }
  }
  for (; d < dv; d += 8) {  // the last < 8 * DC columns, up to 8 at a time
    const std::int64_t n = std::min<std::int64_t>(8, dv - d);
    for (int h = 0; h < NH; ++h) {
      __m256 acc = load8_partial_f32(a.o[h] + d, n);
      for (std::int64_t t = 0; t < nt; ++t) {
        acc = _mm256_fmadd_ps(_mm256_set1_ps(p[h * sub_tokens + t]),
                              load8_partial(v + t * a.v_stride + d, n), acc);
      }
      alignas(32) float out[8];
      _mm256_store_ps(out, acc);
      std::memcpy(a.o[h] + d, out, static_cast<std::size_t>(n) * sizeof(float));
    }
  }
}

template <class T, int NH>
HELIX_SIMD_AVX2 void softmax_avx2(const tile_args& a, const T* k, std::int64_t nt, tile_state& st,
                                  float* p) {
  float(&s)[NH][sub_tokens] = *reinterpret_cast<float(*)[NH][sub_tokens]>(p);
  scores_avx2<T, NH>(a, k, nt, s);
  for (int h = 0; h < NH; ++h) {
    float mx = neg_inf;
    for (std::int64_t t = 0; t < sub_tokens; ++t) {
      s[h][t] = t < nt ? s[h][t] * a.score_scale : neg_inf;
      mx = std::max(mx, s[h][t]);
    }
    if (mx > st.m[h] + max_slack) raise_max(a, st, h, mx);
    const __m256 m = _mm256_set1_ps(st.m[h]);
    const __m256 e0 = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(s[h]), m));
    const __m256 e1 = simd::exp8(_mm256_sub_ps(_mm256_loadu_ps(s[h] + 8), m));
    _mm256_storeu_ps(st.l[h], _mm256_add_ps(_mm256_loadu_ps(st.l[h]), e0));
    _mm256_storeu_ps(st.l[h] + 8, _mm256_add_ps(_mm256_loadu_ps(st.l[h] + 8), e1));
    _mm256_storeu_ps(s[h], e0);
    _mm256_storeu_ps(s[h] + 8, e1);
  }
}

#endif  // HELIX_SIMD_X86

// ---------------------------------------------------------------------------------------------
// Engine choice and the per-task driver (plain C++, no intrinsics).

constexpr int width_idx(int nh) {
  return nh == 4 ? 2 : nh - 1;
}

template <class T>
engine<T> make_engine(simd::isa isa, simd::isa_ext ext) {
#if HELIX_SIMD_X86
  if constexpr (std::is_same_v<T, fp8_e4m3_t>) {
    if (isa == simd::isa::avx512 && ext == simd::isa_ext::vbmi && simd::cpu_has_avx512_vbmi()) {
      return make_fp8_vbmi_engine();
    }
  }
  switch (isa) {
    case simd::isa::avx512:
      return {{&softmax_avx512<T, 1>, &softmax_avx512<T, 2>, &softmax_avx512<T, 4>},
              {&values_avx512<T, 1>, &values_avx512<T, 2>, &values_avx512<T, 4>},
              kv512<T>::scale,
              kv512<T>::split};
    case simd::isa::avx2:
      return {{&softmax_avx2<T, 1>, &softmax_avx2<T, 2>, &softmax_avx2<T, 4>},
              {&values_avx2<T, 1>, &values_avx2<T, 2>, &values_avx2<T, 4>},
              kv256<T>::scale,
              false};
    case simd::isa::scalar:
      break;
  }
#endif
  (void)isa;
  (void)ext;
  return {{&softmax_scalar<T, 1>, &softmax_scalar<T, 2>, &softmax_scalar<T, 4>},
          {&values_scalar<T, 1>, &values_scalar<T, 2>, &values_scalar<T, 4>},
          1.0f,
          false};
}

struct task_output {
  float* out;  // [num_queries, num_q_heads, value_dim] of this chunk
  float* lse;  // [num_queries, num_q_heads]
};

// Pair-split order (see kv512): within each full group of 32 elements, the even elements first.
void split_pairs(const float* src, float* dst, std::int64_t n) {
  std::int64_t d = 0;
  for (; d + 32 <= n; d += 32) {
    for (int i = 0; i < 16; ++i) {
      dst[d + i] = src[d + 2 * i];
      dst[d + 16 + i] = src[d + 2 * i + 1];
    }
  }
  for (; d < n; ++d) dst[d] = src[d];
}

// Inverse of split_pairs, in place.
void unsplit_pairs(float* x, std::int64_t n) {
  for (std::int64_t d = 0; d + 32 <= n; d += 32) {
    float tmp[32];
    std::copy(x + d, x + d + 32, tmp);
    for (int i = 0; i < 16; ++i) {
      x[d + 2 * i] = tmp[i];
      x[d + 2 * i + 1] = tmp[16 + i];
    }
  }
}

// The query heads of one pass over a chunk: whole GQA groups while they fit in max_pass_heads,
// else a slice of one group (MLA: 128 heads of one latent KV head).
struct head_pass {
  std::int64_t kv_begin = 0;  // first KV head
  std::int64_t kv_end = 0;    // one past the last KV head
  std::int64_t h_begin = 0;   // first query head within each group
  std::int64_t h_end = 0;     // one past the last query head within each group
};

constexpr std::int64_t max_pass_heads = 64;
constexpr std::int64_t max_pass_tiles = max_pass_heads;  // a tile holds at least one head

std::int64_t num_passes(const attention_partial_params& p) {
  const std::int64_t group = p.num_q_heads / p.layout.num_kv_heads;
  if (group > max_pass_heads) {
    return p.layout.num_kv_heads * ((group + max_pass_heads - 1) / max_pass_heads);
  }
  const std::int64_t kv_per_pass = max_pass_heads / group;
  return (p.layout.num_kv_heads + kv_per_pass - 1) / kv_per_pass;
}

head_pass pass_at(const attention_partial_params& p, std::int64_t pass_idx) {
  const std::int64_t group = p.num_q_heads / p.layout.num_kv_heads;
  head_pass hp;
  if (group > max_pass_heads) {
    const std::int64_t slices = (group + max_pass_heads - 1) / max_pass_heads;
    hp.kv_begin = pass_idx / slices;
    hp.kv_end = hp.kv_begin + 1;
    hp.h_begin = (pass_idx % slices) * max_pass_heads;
    hp.h_end = std::min(group, hp.h_begin + max_pass_heads);
    return hp;
  }
  const std::int64_t kv_per_pass = max_pass_heads / group;
  hp.kv_begin = pass_idx * kv_per_pass;
  hp.kv_end = std::min(p.layout.num_kv_heads, hp.kv_begin + kv_per_pass);
  hp.h_begin = 0;
  hp.h_end = group;
  return hp;
}

// One task: one chunk of blocks, one pass of heads. Blocks are the outer loop; within a block the
// softmax phase runs for every tile (reading the K of every head of the pass) before the value
// phase (every V), so a page is read front to back: measured on Zen 4, a forward stream is
// prefetched well while per-head tasks (K0 V0 | K1 V1 strides) or K0 V0 K1 V1 order lose ~40%.
template <class T>
void run_task(const attention_partial_params& p, const engine<T>& eng, const float* q,
              std::int64_t chunk_idx, const head_pass& hp, const task_output& dst) {
  const kv_page_layout& lay = p.layout;
  const std::int64_t group = p.num_q_heads / lay.num_kv_heads;
  const std::int64_t b_begin = chunk_idx * chunk_blocks;
  const std::int64_t b_end = std::min(b_begin + chunk_blocks, p.num_blocks);
  const auto* pool = static_cast<const std::byte*>(p.kv_pool);
  const std::size_t page_bytes = lay.page_bytes();

  tile_args tiles[max_pass_tiles];
  tile_state states[max_pass_tiles];
  alignas(64) float weights[max_pass_tiles][max_tile_heads * sub_tokens];
  std::int64_t tile_kv[max_pass_tiles];
  int tile_heads[max_pass_tiles];
  for (std::int64_t qi = 0; qi < p.num_queries; ++qi) {
    int num_tiles = 0;
    for (std::int64_t kv = hp.kv_begin; kv < hp.kv_end; ++kv) {
      for (std::int64_t h0 = hp.h_begin; h0 < hp.h_end;) {
        const int nh = hp.h_end - h0 >= 4 ? 4 : (hp.h_end - h0 >= 2 ? 2 : 1);
        tile_args& a = tiles[num_tiles];
        a.key_dim = lay.key_dim;
        a.value_dim = lay.value_dim;
        a.v_stride = lay.value_in_key ? lay.key_dim : lay.value_dim;
        a.score_scale = p.softmax_scale * p.k_scale * eng.load_scale;
        for (int j = 0; j < nh; ++j) {
          const std::int64_t row = qi * p.num_q_heads + kv * group + h0 + j;
          a.q[j] = q + row * lay.key_dim;
          a.o[j] = dst.out + row * lay.value_dim;
          std::fill(a.o[j], a.o[j] + lay.value_dim, 0.0f);
          states[num_tiles].m[j] = neg_inf;
          std::fill(std::begin(states[num_tiles].l[j]), std::end(states[num_tiles].l[j]), 0.0f);
        }
        tile_kv[num_tiles] = kv;
        tile_heads[num_tiles] = nh;
        ++num_tiles;
        h0 += nh;
      }
    }
    const std::int64_t qpos = p.causal ? p.query_pos[qi] : 0;
    for (std::int64_t b = b_begin; b < b_end; ++b) {
      const kv_block_ref& blk = p.blocks[b];
      const std::int64_t n =
          p.causal ? std::clamp<std::int64_t>(qpos - blk.first_pos + 1, 0, blk.num_tokens)
                   : blk.num_tokens;
      if (n == 0) continue;
      const T* page =
          reinterpret_cast<const T*>(pool + static_cast<std::size_t>(blk.slot) * page_bytes);
      const T* next_page =
          b + 1 < b_end ? reinterpret_cast<const T*>(
                              pool + static_cast<std::size_t>(p.blocks[b + 1].slot) * page_bytes)
                        : nullptr;
      for (std::int64_t t0 = 0; t0 < n; t0 += sub_tokens) {
        const std::int64_t nt = std::min(sub_tokens, n - t0);
        for (int t = 0; t < num_tiles; ++t) {
          // One tile per KV head prefetches (the first); the others read the same rows.
          const bool first = t == 0 || tile_kv[t - 1] != tile_kv[t];
          tiles[t].next_k =
              next_page != nullptr && first
                  ? reinterpret_cast<const char*>(next_page + lay.key_offset(tile_kv[t], t0))
                  : nullptr;
          tiles[t].next_v =
              next_page != nullptr && first && !lay.value_in_key
                  ? reinterpret_cast<const char*>(next_page + lay.value_offset(tile_kv[t], t0))
                  : nullptr;
        }
        for (int t = 0; t < num_tiles; ++t) {
          eng.softmax[width_idx(tile_heads[t])](tiles[t], page + lay.key_offset(tile_kv[t], t0), nt,
                                                states[t], weights[t]);
        }
        for (int t = 0; t < num_tiles; ++t) {
          eng.values[width_idx(tile_heads[t])](tiles[t], weights[t],
                                               page + lay.value_offset(tile_kv[t], t0), nt);
        }
      }
    }
    for (int t = 0; t < num_tiles; ++t) {
      for (int j = 0; j < tile_heads[t]; ++j) {
        const std::int64_t row = (tiles[t].q[j] - q) / lay.key_dim;
        if (states[t].m[j] == neg_inf) {  // no visible key: merges as a no-op (o is still 0)
          dst.lse[row] = neg_inf;
          continue;
        }
        const float l = states[t].sum(j);
        dst.lse[row] = states[t].m[j] + std::log(l);
        if (eng.split) unsplit_pairs(tiles[t].o[j], lay.value_dim);
        const float inv = p.v_scale * eng.load_scale / l;
        for (std::int64_t d = 0; d < lay.value_dim; ++d) tiles[t].o[j][d] *= inv;
      }
    }
  }
}

std::int64_t num_chunks(const attention_partial_params& p) {
  return std::max<std::int64_t>(1, (p.num_blocks + chunk_blocks - 1) / chunk_blocks);
}

std::size_t partial_floats(const attention_partial_params& p) {
  return static_cast<std::size_t>(p.num_queries * p.num_q_heads * (p.layout.value_dim + 1));
}

// Workspace: [queries in pair-split order: bf16, and fp8 for its VBMI engine] then [chunk
// partials, when > 1 chunk].
std::size_t split_q_floats(const attention_partial_params& p) {
  return p.layout.type == dtype::bf16 || p.layout.type == dtype::fp8_e4m3
             ? static_cast<std::size_t>(p.num_queries * p.num_q_heads * p.layout.key_dim)
             : 0;
}

template <class T>
status run(const attention_partial_params& p, thread_pool* pool, simd::isa isa, simd::isa_ext ext) {
  const engine<T> eng = make_engine<T>(isa, ext);
  const std::int64_t chunks = num_chunks(p);
  const std::int64_t passes = num_passes(p);
  const std::int64_t rows = p.num_queries * p.num_q_heads;
  // The caller's workspace may have any alignment; 64 spare bytes let us start on a cache line.
  float* ws =
      reinterpret_cast<float*>((reinterpret_cast<std::uintptr_t>(p.workspace) + 63) / 64 * 64);
  const float* q = p.q;
  if (eng.split) {
    for (std::int64_t r = 0; r < rows; ++r) {
      split_pairs(p.q + r * p.layout.key_dim, ws + r * p.layout.key_dim, p.layout.key_dim);
    }
    q = ws;
  }
  float* part_out = p.out;
  float* part_lse = p.lse;
  if (chunks > 1) {
    part_out = ws + split_q_floats(p);
    part_lse = part_out + chunks * rows * p.layout.value_dim;
  }
  auto task = [&](std::int64_t t) {
    const std::int64_t chunk_idx = t / passes;
    const task_output dst{part_out + chunk_idx * rows * p.layout.value_dim,
                          part_lse + chunk_idx * rows};
    run_task<T>(p, eng, q, chunk_idx, pass_at(p, t % passes), dst);
  };
  const std::int64_t num_tasks = chunks * passes;
  parallel_for(pool, num_tasks, task);
  if (chunks == 1) return ok_status();
  lse_merge_params mp;
  mp.partial_out = part_out;
  mp.partial_lse = part_lse;
  mp.num_partials = chunks;
  mp.num_rows = rows;
  mp.dim = p.layout.value_dim;
  mp.out = p.out;
  mp.lse = p.lse;
  return lse_merge(mp, pool);
}

}  // namespace

std::size_t attention_workspace_bytes(const attention_partial_params& p) {
  if (p.num_queries <= 0 || p.num_q_heads <= 0) return 0;
  const std::int64_t chunks = num_chunks(p);
  const std::size_t partials =
      chunks > 1 ? static_cast<std::size_t>(chunks) * partial_floats(p) : 0;
  const std::size_t floats = split_q_floats(p) + partials;
  return floats == 0 ? 0 : floats * sizeof(float) + 64;  // + 64: see run()
}

/// Test seam: attention_partial on a given instruction set and extensions (clamped to what the
/// CPU supports), so one machine can check every engine against the reference.
status attention_partial_with_isa(const attention_partial_params& p, thread_pool* pool,
                                  simd::isa isa, simd::isa_ext ext) {
  HELIX_RETURN_IF_ERROR(validate_blocks(p));
  const std::size_t need = attention_workspace_bytes(p);
  if (need > 0 && (p.workspace == nullptr || p.workspace_bytes < need)) {
    return failed_precondition("attention: workspace of {} bytes given, {} needed",
                               p.workspace_bytes, need);
  }
  isa = std::min(isa, simd::cpu_isa());
  switch (p.layout.type) {
    case dtype::f32:
      return run<float>(p, pool, isa, ext);
    case dtype::bf16:
      return run<bf16_t>(p, pool, isa, ext);
    case dtype::f16:
      return run<f16_t>(p, pool, isa, ext);
    case dtype::fp8_e4m3:
      return run<fp8_e4m3_t>(p, pool, isa, ext);
  }
  return invalid_argument("attention: unknown kv dtype");
}

status attention_partial(const attention_partial_params& p, thread_pool* pool) {
  return attention_partial_with_isa(p, pool, simd::cpu_isa(), simd::isa_ext::vbmi);
}

}  // namespace helix::kernels::cpu
