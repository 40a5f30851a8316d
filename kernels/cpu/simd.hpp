// Small vector helpers for the optimised CPU kernels (attention, GEMV, ...): load 8 (AVX2) or 16
// (AVX-512) f32 / bf16 / f16 / fp8_e4m3 elements as f32 lanes, FMA dot products, horizontal sums.
//
// The project is built without -march=native (binaries move between machines), so every function
// that uses intrinsics carries a target attribute (HELIX_SIMD_AVX2 / HELIX_SIMD_AVX512) and callers
// pick a path at run time with cpu_isa(). A function that calls these helpers must carry the same
// (or a wider) target attribute so that GCC/Clang can inline them. Every operation also has a
// portable scalar form (dot_scalar, ...) used on other architectures and older CPUs.
//
// Conversions are exact and match core/dtype.hpp's to_f32() for every finite input. fp8 NaN
// (S.1111.111) loads as NaN on every path; f16 inf/NaN convert as F16C does (the same values).
// Besides the plain loaders (load8 / load16, masked tails) and dot / axpy / hsum, kernels that
// stream a lot of KV use cheaper forms: load32_split (bf16 in even/odd order, one op per 16
// values), load8_div256 / load16_div256 (fp8 through F16C, values / 256), fp8x64_to_f32 and
// fp8x32_to_f32_split (fp8 through AVX512_VBMI byte tables, exact: 64 values in element order,
// or 32 in pair-split order), reduce16x16 (16 horizontal sums at once) and exp8 / exp16 (softmax
// weights). The tests in
// tests/kernels/attention_test.cpp check every bit pattern of every loader.
// Header-only, no allocation, thread-safe (cpu_isa() is initialised once, thread-safely).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/dtype.hpp"
#include "kernels/cpu/isa.hpp"

#if defined(__x86_64__) || defined(__i386__)
#define HELIX_SIMD_X86 1
// GCC 12's intrinsic headers trip -Wuninitialized (`__m512 __Y = __Y;` in _mm512_undefined_ps)
// once inlined into target("avx512f") functions (GCC bug 105593, fixed in GCC 13). The warning is
// attributed to the header's lines, so silencing it around the include covers every caller.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#if !defined(__clang__)  // a GCC-only group: clang -Werror refuses unknown warning options
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#define HELIX_SIMD_X86 0
#endif

#if HELIX_SIMD_X86
#define HELIX_SIMD_AVX2 __attribute__((target("avx2,fma,f16c")))
#define HELIX_SIMD_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
// AVX-512 plus VBMI (byte permutes): callers check cpu_has_avx512_vbmi().
#define HELIX_SIMD_AVX512_VBMI \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx2,fma,f16c")))
#endif

namespace helix::kernels::simd {

// ---------------------------------------------------------------------------------------------
// Scalar forms (the portable fallback, and the tails of the AVX2 loops).

template <class T>
[[nodiscard]] inline float load_f32(const T* p, std::int64_t i) {
  return to_f32(p[i]);
}

/// sum_i a[i] * b[i], accumulated in f32 in index order.
template <class T>
[[nodiscard]] inline float dot_scalar(const float* a, const T* b, std::int64_t n) {
  float acc = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) acc += a[i] * to_f32(b[i]);
  return acc;
}

/// y[i] += alpha * x[i].
template <class T>
inline void axpy_scalar(float alpha, const T* x, float* y, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) y[i] += alpha * to_f32(x[i]);
}

/// The bf16 bits of the e4m3 value with magnitude bits `mag` (0..127, sign clear): exact (an e4m3
/// has 4 significant bits and its exponents fit bf16's, subnormals included); 0x7f is NaN (0x7fc0,
/// as to_f32). The upper 16 bits of the f32 value, whose lower 16 bits are zero.
[[nodiscard]] constexpr std::uint16_t e4m3_magnitude_bf16(unsigned mag) noexcept {
  if (mag == 0x7f) return 0x7fc0;
  const unsigned exp = mag >> 3;
  const unsigned man = mag & 7u;
  std::uint32_t bits = 0;
  if (exp != 0) {
    bits = ((exp + 120u) << 23) | (man << 20);
  } else if (man != 0) {  // man x 2^-9: normalise on its top bit h
    const unsigned h = man >= 4 ? 2 : (man >= 2 ? 1 : 0);
    bits = ((h + 118u) << 23) | ((man - (1u << h)) << (23 - h));
  }
  return static_cast<std::uint16_t>(bits >> 16);
}

/// Byte tables for fp8x64_to_f32: the high and low bytes of e4m3_magnitude_bf16 for the 128
/// magnitudes, and the byte order that makes unpacking come out in element order.
struct fp8_lut {
  alignas(64) std::uint8_t hi[128];
  alignas(64) std::uint8_t lo[128];
  alignas(64) std::uint8_t order[64];
  alignas(64) std::uint8_t interleave[64];
};

[[nodiscard]] constexpr fp8_lut make_fp8_lut() noexcept {
  fp8_lut t{};
  for (unsigned m = 0; m < 128; ++m) {
    t.hi[m] = static_cast<std::uint8_t>(e4m3_magnitude_bf16(m) >> 8);
    t.lo[m] = static_cast<std::uint8_t>(e4m3_magnitude_bf16(m) & 0xffu);
  }
  // After the lookups, unpacklo/hi_epi8 make bf16 words from bytes 0..7 / 8..15 of each 128-bit
  // lane L, and the even / odd words of those become f32 vectors 0, 1 / 2, 3: vector q's lane
  // 4 L + i comes from byte 16 L + 2 i (q = 0), 16 L + 2 i + 1 (1), 16 L + 8 + 2 i (2),
  // 16 L + 9 + 2 i (3). Byte p of the permuted codes is code order[p], so that lane 4 L + i of
  // vector q is element 16 q + 4 L + i.
  for (unsigned lane = 0; lane < 4; ++lane) {
    for (unsigned i = 0; i < 4; ++i) {
      t.order[16 * lane + 2 * i] = static_cast<std::uint8_t>(4 * lane + i);
      t.order[16 * lane + 2 * i + 1] = static_cast<std::uint8_t>(16 + 4 * lane + i);
      t.order[16 * lane + 8 + 2 * i] = static_cast<std::uint8_t>(32 + 4 * lane + i);
      t.order[16 * lane + 9 + 2 * i] = static_cast<std::uint8_t>(48 + 4 * lane + i);
    }
  }
  // fp8x32_to_f32_split: word i = (lo[i], hi[i]), the bf16 of element i.
  for (unsigned i = 0; i < 32; ++i) {
    t.interleave[2 * i] = static_cast<std::uint8_t>(i);
    t.interleave[2 * i + 1] = static_cast<std::uint8_t>(64 + i);
  }
  return t;
}

inline constexpr fp8_lut fp8_tables = make_fp8_lut();

#if HELIX_SIMD_X86

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA + F16C: 8 lanes.

HELIX_SIMD_AVX2 inline __m256 load8(const float* p) {
  return _mm256_loadu_ps(p);
}

HELIX_SIMD_AVX2 inline __m256 load8(const bf16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

HELIX_SIMD_AVX2 inline __m256 load8(const f16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

/// fp8 e4m3 bits -> f32 (as in to_f32(fp8_e4m3_t)): the 7 magnitude bits go to f32 bits 26..20,
/// times 2^120 rebiases the exponent (subnormals included); then the sign; 0x7f/0xff become NaN.
HELIX_SIMD_AVX2 inline __m256 fp8x8_to_f32(__m128i bytes8) {
  const __m256i x = _mm256_cvtepu8_epi32(bytes8);
  const __m256i mag = _mm256_and_si256(x, _mm256_set1_epi32(0x7f));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(x, _mm256_set1_epi32(0x80)), 24);
  const __m256 v = _mm256_mul_ps(_mm256_castsi256_ps(_mm256_slli_epi32(mag, 20)),
                                 _mm256_set1_ps(1.329227995784916e36f));  // 2^120
  const __m256i nan = _mm256_cmpeq_epi32(mag, _mm256_set1_epi32(0x7f));   // all-ones is a NaN
  return _mm256_or_ps(_mm256_or_ps(v, _mm256_castsi256_ps(sign)), _mm256_castsi256_ps(nan));
}

HELIX_SIMD_AVX2 inline __m256 load8(const fp8_e4m3_t* p) {
  return fp8x8_to_f32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

/// fp8 e4m3 -> f32 divided by 256 (exact), through F16C: e4m3's 7 magnitude bits placed at f16
/// bits 13..7 make an f16 worth value / 256 (the exponent biases differ by 8), subnormals
/// included; the sign moves to bit 15 (x << 7 puts it at bit 14; adding bit 14 to itself carries
/// it up). About half the work of fp8x8_to_f32, for kernels that fold the 256 into a scale.
/// 0x7f / 0xff load as NaN.
HELIX_SIMD_AVX2 inline __m128i fp8x8_to_f16_div256(__m128i bytes8) {
  const __m128i x = _mm_cvtepu8_epi16(bytes8);
  __m128i h = _mm_slli_epi16(x, 7);
  h = _mm_add_epi16(h, _mm_and_si128(h, _mm_set1_epi16(0x4000)));
  const __m128i nan = _mm_cmpeq_epi16(_mm_and_si128(x, _mm_set1_epi16(0x7f)), _mm_set1_epi16(0x7f));
  return _mm_or_si128(h, nan);  // 0xffff is an f16 NaN
}
HELIX_SIMD_AVX2 inline __m256 load8_div256(const fp8_e4m3_t* p) {
  return _mm256_cvtph_ps(fp8x8_to_f16_div256(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

HELIX_SIMD_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

/// e^x for x <= 80 (and -inf -> 0), about 2 ulp: range reduction by ln 2 and a degree-6
/// polynomial. Meant for softmax weights (x = score - running max, at most a few units above 0);
/// NaN propagates. Results below 2^-126 flush to 0 (a weight that small cannot change an f32 sum).
HELIX_SIMD_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);  // NaN in x stays NaN
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 y = _mm256_set1_ps(1.0f / 720.0f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 120.0f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 24.0f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f / 6.0f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(0.5f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.0f));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
  // Below -87 the true value is under 2^-125: 0.
  return _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ), y);
}

/// sum_i a[i] * b[i] with two independent 8-lane accumulators; scalar tail.
template <class T>
HELIX_SIMD_AVX2 inline float dot_avx2(const float* a, const T* b, std::int64_t n) {
  __m256 acc0 = _mm256_setzero_ps();
  __m256 acc1 = _mm256_setzero_ps();
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b + i), acc0);
  float acc = hsum8(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) acc += a[i] * to_f32(b[i]);
  return acc;
}

/// y[i] += alpha * x[i]; scalar tail.
template <class T>
HELIX_SIMD_AVX2 inline void axpy_avx2(float alpha, const T* x, float* y, std::int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load8(x + i), _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += alpha * to_f32(x[i]);
}

// ---------------------------------------------------------------------------------------------
// AVX-512 (F, BW, VL, DQ): 16 lanes. Masked forms load only the first `n` (< 16) elements and
// never touch memory past them, so tails need no scalar loop.

HELIX_SIMD_AVX512 inline __mmask16 tail_mask16(std::int64_t n) {
  return static_cast<__mmask16>((1u << n) - 1u);
}

HELIX_SIMD_AVX512 inline __m512 load16(const float* p) {
  return _mm512_loadu_ps(p);
}
HELIX_SIMD_AVX512 inline __m512 load16(const float* p, __mmask16 m) {
  return _mm512_maskz_loadu_ps(m, p);
}

HELIX_SIMD_AVX512 inline __m512 bf16x16_to_f32(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
HELIX_SIMD_AVX512 inline __m512 load16(const bf16_t* p) {
  return bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
HELIX_SIMD_AVX512 inline __m512 load16(const bf16_t* p, __mmask16 m) {
  return bf16x16_to_f32(_mm256_maskz_loadu_epi16(m, p));
}

HELIX_SIMD_AVX512 inline __m512 load16(const f16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
HELIX_SIMD_AVX512 inline __m512 load16(const f16_t* p, __mmask16 m) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

/// Same trick as fp8x8_to_f32, 16 lanes.
HELIX_SIMD_AVX512 inline __m512 fp8x16_to_f32(__m128i bytes16) {
  const __m512i x = _mm512_cvtepu8_epi32(bytes16);
  const __m512i mag = _mm512_and_si512(x, _mm512_set1_epi32(0x7f));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
  const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)),
                                 _mm512_set1_ps(1.329227995784916e36f));  // 2^120
  const __m512i bits = _mm512_or_si512(_mm512_castps_si512(v), sign);
  const __mmask16 nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f));
  return _mm512_castsi512_ps(_mm512_mask_mov_epi32(bits, nan, _mm512_set1_epi32(-1)));
}
HELIX_SIMD_AVX512 inline __m512 load16(const fp8_e4m3_t* p) {
  return fp8x16_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
HELIX_SIMD_AVX512 inline __m512 load16(const fp8_e4m3_t* p, __mmask16 m) {
  return fp8x16_to_f32(_mm_maskz_loadu_epi8(m, p));
}

/// As fp8x8_to_f16_div256, 16 lanes: f32 values divided by 256 (exact).
HELIX_SIMD_AVX512 inline __m512 fp8x16_to_f32_div256(__m128i bytes16) {
  const __m256i x = _mm256_cvtepu8_epi16(bytes16);
  __m256i h = _mm256_slli_epi16(x, 7);
  h = _mm256_add_epi16(h, _mm256_and_si256(h, _mm256_set1_epi16(0x4000)));
  const __m256i nan =
      _mm256_cmpeq_epi16(_mm256_and_si256(x, _mm256_set1_epi16(0x7f)), _mm256_set1_epi16(0x7f));
  return _mm512_cvtph_ps(_mm256_or_si256(h, nan));
}
HELIX_SIMD_AVX512 inline __m512 load16_div256(const fp8_e4m3_t* p) {
  return fp8x16_to_f32_div256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
HELIX_SIMD_AVX512 inline __m512 load16_div256(const fp8_e4m3_t* p, __mmask16 m) {
  return fp8x16_to_f32_div256(_mm_maskz_loadu_epi8(m, p));
}

/// 64 fp8 e4m3 codes -> their 64 exact f32 values (as to_f32, NaN included), in element order:
/// out[q] holds elements 16 q .. 16 q + 15. AVX512_VBMI: one byte permute puts the codes in the
/// order that unpacking undoes, two vpermi2b look up the high and low bytes of each value's bf16
/// in 128-entry tables (bit 7, the sign, is ignored by the lookup and ORed back in), two unpacks
/// make bf16 words and a shift / a mask widen the even / odd words to f32: 10 operations per 64
/// values, about 2.5 per 16 where F16C needs 4 and a multiply.
HELIX_SIMD_AVX512_VBMI inline void fp8x64_to_f32(__m512i codes, __m512 (&out)[4]) {
  const __m512i order = _mm512_load_si512(fp8_tables.order);
  const __m512i p = _mm512_permutexvar_epi8(order, codes);
  __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(fp8_tables.hi), p,
                                        _mm512_load_si512(fp8_tables.hi + 64));
  const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(fp8_tables.lo), p,
                                              _mm512_load_si512(fp8_tables.lo + 64));
  hi = _mm512_ternarylogic_epi32(hi, p, _mm512_set1_epi8(static_cast<char>(0x80)),
                                 0xf8);  // hi | (p & 0x80)
  const __m512i w0 = _mm512_unpacklo_epi8(lo, hi);
  const __m512i w1 = _mm512_unpackhi_epi8(lo, hi);
  const __m512i upper = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  out[0] = _mm512_castsi512_ps(_mm512_slli_epi32(w0, 16));
  out[1] = _mm512_castsi512_ps(_mm512_and_si512(w0, upper));
  out[2] = _mm512_castsi512_ps(_mm512_slli_epi32(w1, 16));
  out[3] = _mm512_castsi512_ps(_mm512_and_si512(w1, upper));
}

/// 32 fp8 e4m3 values -> their exact f32 values (NaN included) in pair-split order, as
/// load32_split does for bf16: `even` holds elements 0, 2, .., 30 and `odd` 1, 3, .., 31. The
/// byte lookups of fp8x64_to_f32, then one two-source byte permute interleaves the low and high
/// bytes into bf16 words in element order: 6 operations per 32 values.
HELIX_SIMD_AVX512_VBMI inline void fp8x32_to_f32_split(const fp8_e4m3_t* p, __m512& even,
                                                       __m512& odd) {
  const __m512i codes =
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  __m512i hi = _mm512_permutex2var_epi8(_mm512_load_si512(fp8_tables.hi), codes,
                                        _mm512_load_si512(fp8_tables.hi + 64));
  const __m512i lo = _mm512_permutex2var_epi8(_mm512_load_si512(fp8_tables.lo), codes,
                                              _mm512_load_si512(fp8_tables.lo + 64));
  hi = _mm512_ternarylogic_epi32(hi, codes, _mm512_set1_epi8(static_cast<char>(0x80)), 0xf8);
  const __m512i w = _mm512_permutex2var_epi8(lo, _mm512_load_si512(fp8_tables.interleave), hi);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

/// 32 bf16 values as two f32 vectors in "pair-split" order: `even` holds elements 0, 2, .., 30 and
/// `odd` elements 1, 3, .., 31. One load and one operation per 16 values (shift the low half of
/// each 32-bit word up, or mask the high half) instead of a widening shuffle plus a shift; dot
/// products and axpys are order-free, so kernels keep their other operand in the same order.
HELIX_SIMD_AVX512 inline void load32_split(const bf16_t* p, __m512& even, __m512& odd) {
  const __m512i w = _mm512_loadu_si512(p);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

HELIX_SIMD_AVX512 inline float hsum16(__m512 v) {
  return _mm512_reduce_add_ps(v);
}

/// Horizontal sums of 16 vectors at once: lane i of the result is the sum of a[i]'s 16 lanes.
/// About 3 instructions per sum instead of ~8 for 16 separate hsum16 calls; the attention kernel
/// uses it to reduce a 4-token x 4-head tile of dot products.
HELIX_SIMD_AVX512 inline __m512 reduce16x16(const __m512 a[16]) {
  // Each step halves the lanes that hold partial sums of a vector and doubles the vectors per
  // register; the shuffle constants keep the output in lane order (checked by the tests).
  __m512 b[8];
  for (int i = 0; i < 8; ++i) {
    // 256-bit halves: [a_i.lo | a_{i+8}.lo] + [a_i.hi | a_{i+8}.hi]
    const __m512 x = _mm512_shuffle_f32x4(a[i], a[i + 8], 0x44);
    const __m512 y = _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE);
    b[i] = _mm512_add_ps(x, y);  // 128-bit quarters: a_i, a_i, a_{i+8}, a_{i+8}
  }
  __m512 c[4];
  for (int i = 0; i < 4; ++i) {
    const __m512 x = _mm512_shuffle_f32x4(b[i], b[i + 4], 0x88);
    const __m512 y = _mm512_shuffle_f32x4(b[i], b[i + 4], 0xDD);
    c[i] = _mm512_add_ps(x, y);  // quarters: a_i, a_{i+8}, a_{i+4}, a_{i+12}
  }
  __m512 d[2];
  for (int i = 0; i < 2; ++i) {
    const __m512 x = _mm512_shuffle_ps(c[i], c[i + 2], 0x44);
    const __m512 y = _mm512_shuffle_ps(c[i], c[i + 2], 0xEE);
    d[i] = _mm512_add_ps(x, y);  // per quarter q (vector v_q): [v, v, v+2, v+2]
  }
  const __m512 x = _mm512_shuffle_ps(d[0], d[1], 0x88);
  const __m512 y = _mm512_shuffle_ps(d[0], d[1], 0xDD);
  // Quarter q holds sums of [v_q, v_q + 2, v_q + 1, v_q + 3] where v_q = 0, 8, 4, 12: permute to
  // lane order.
  const __m512 r = _mm512_add_ps(x, y);
  const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
  return _mm512_permutexvar_ps(order, r);
}

/// e^x for x <= 80 (and -inf -> 0), about 2 ulp; as exp8. scalef handles the 2^n scaling
/// including underflow, so no special cases are needed.
HELIX_SIMD_AVX512 inline __m512 exp16(__m512 x) {
  const __m512 xc = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // NaN in x stays NaN
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xc);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 y = _mm512_set1_ps(1.0f / 720.0f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 120.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 24.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f / 6.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(0.5f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

/// sum_i a[i] * b[i] with two independent 16-lane accumulators; masked tail.
template <class T>
HELIX_SIMD_AVX512 inline float dot_avx512(const float* a, const T* b, std::int64_t n) {
  __m512 acc0 = _mm512_setzero_ps();
  __m512 acc1 = _mm512_setzero_ps();
  std::int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load16(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), load16(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), load16(b + i), acc0);
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), load16(b + i, m), acc1);
  }
  return hsum16(_mm512_add_ps(acc0, acc1));
}

/// y[i] += alpha * x[i]; masked tail.
template <class T>
HELIX_SIMD_AVX512 inline void axpy_avx512(float alpha, const T* x, float* y, std::int64_t n) {
  const __m512 va = _mm512_set1_ps(alpha);
  std::int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, load16(x + i), _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    const __mmask16 m = tail_mask16(n - i);
    _mm512_mask_storeu_ps(y + i, m,
                          _mm512_fmadd_ps(va, load16(x + i, m), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

#endif  // HELIX_SIMD_X86

// ---------------------------------------------------------------------------------------------
// Run-time dispatched conveniences: fine for coarse calls (one per row); inner loops should
// switch once outside and call the *_avx512 / *_avx2 forms from a function with the same target.

/// sum_i a[i] * b[i] on the best available path. The summation order differs between paths, so
/// results may differ in the last bits between machines (never between runs on one machine).
template <class T>
[[nodiscard]] inline float dot(const float* a, const T* b, std::int64_t n) {
#if HELIX_SIMD_X86
  switch (cpu_isa()) {
    case isa::avx512:
      return dot_avx512(a, b, n);
    case isa::avx2:
      return dot_avx2(a, b, n);
    case isa::scalar:
      break;
  }
#endif
  return dot_scalar(a, b, n);
}

/// y[i] += alpha * x[i] on the best available path.
template <class T>
inline void axpy(float alpha, const T* x, float* y, std::int64_t n) {
#if HELIX_SIMD_X86
  switch (cpu_isa()) {
    case isa::avx512:
      axpy_avx512(alpha, x, y, n);
      return;
    case isa::avx2:
      axpy_avx2(alpha, x, y, n);
      return;
    case isa::scalar:
      break;
  }
#endif
  axpy_scalar(alpha, x, y, n);
}

}  // namespace helix::kernels::simd
