// Optimised CPU element-wise ops: rmsnorm, rope, swiglu, embedding.
//
// Each has an AVX2 path chosen at run time and a portable path that computes the same bits
// (same operations in the same order), so results do not depend on the CPU either. Work is split
// into tasks of a fixed number of rows (or elements), never by thread count.
//   rmsnorm:   sum of squares in 16 f32 lanes (element i in lane i % 16, zero-padded tail, fixed
//              lane tree), then x * rsqrt(mean + eps) * weight as in HF.
//   rope:      cos/sin are computed with the C library exactly as the reference does (once per
//              row, shared by all heads); the rotation is the reference's mul/mul/sub, so rope
//              matches the reference bit for bit.
//   swiglu:    silu through a Cephes-style exp polynomial (about 2 ulp), identical in both paths.
//   embedding: exact conversions, so it matches the reference bit for bit.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.hpp"
#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/simd.hpp"

#define HELIX_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
// Without FMA, so that the compiler cannot contract a * c - b * s into a fused multiply-add: the
// rotation must round like the reference's separate multiplies.
#define HELIX_TARGET_AVX2_NO_FMA __attribute__((target("avx2")))

namespace helix::kernels::cpu {

namespace {

bool have_avx2() {
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && simd::cpu_has_f16c();
  return yes;
}

/// Converts `count` elements of a bf16/f16/f32 array starting at element `begin` to f32.
HELIX_TARGET_AVX2 void convert_avx2(const void* src, dtype t, std::int64_t begin,
                                    std::int64_t count, float* out) {
  std::int64_t i = 0;
  if (t == dtype::bf16) {
    const auto* s = static_cast<const std::uint16_t*>(src) + begin;
    for (; i + 8 <= count; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      _mm256_storeu_ps(out + i,
                       _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
  } else if (t == dtype::f16) {
    const auto* s = static_cast<const std::uint16_t*>(src) + begin;
    for (; i + 8 <= count; i += 8) {
      _mm256_storeu_ps(out + i,
                       _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
    }
  } else if (t == dtype::f32) {
    std::memcpy(out, static_cast<const float*>(src) + begin, sizeof(float) * count);
    return;
  }
  for (; i < count; ++i) out[i] = load_as_f32(src, t, static_cast<std::size_t>(begin + i));
}

void convert_scalar(const void* src, dtype t, std::int64_t begin, std::int64_t count, float* out) {
  for (std::int64_t i = 0; i < count; ++i) {
    out[i] = load_as_f32(src, t, static_cast<std::size_t>(begin + i));
  }
}

// ---------------------------------------------------------------------------------------------
// rmsnorm

constexpr std::int64_t norm_rows_per_task = 4;
constexpr std::int64_t chunk = 256;  // weights converted to f32 this many at a time (stack)

float sum_squares_scalar(const float* x, std::int64_t dim) {
  float acc[16] = {};
  for (std::int64_t i = 0; i < dim; ++i) acc[i % 16] = std::fma(x[i], x[i], acc[i % 16]);
  float t[8];
  for (int j = 0; j < 8; ++j) t[j] = acc[j] + acc[j + 8];
  float u[4];
  for (int j = 0; j < 4; ++j) u[j] = t[j] + t[j + 4];
  return (u[0] + u[2]) + (u[1] + u[3]);
}

HELIX_TARGET_AVX2 float sum_squares_avx2(const float* x, std::int64_t dim) {
  __m256 a0 = _mm256_setzero_ps();
  __m256 a1 = _mm256_setzero_ps();
  const std::int64_t full = dim - dim % 16;
  for (std::int64_t i = 0; i < full; i += 16) {
    const __m256 v0 = _mm256_loadu_ps(x + i);
    const __m256 v1 = _mm256_loadu_ps(x + i + 8);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
  }
  if (full < dim) {
    alignas(32) float tail[16] = {};
    std::memcpy(tail, x + full, sizeof(float) * (dim - full));
    const __m256 v0 = _mm256_load_ps(tail);
    const __m256 v1 = _mm256_load_ps(tail + 8);
    a0 = _mm256_fmadd_ps(v0, v0, a0);
    a1 = _mm256_fmadd_ps(v1, v1, a1);
  }
  const __m256 t = _mm256_add_ps(a0, a1);
  const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  const __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

HELIX_TARGET_AVX2 void scale_row_avx2(const float* x, const float* w, float inv_rms,
                                      std::int64_t count, float* out) {
  const __m256 s = _mm256_set1_ps(inv_rms);
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 xs = _mm256_mul_ps(_mm256_loadu_ps(x + i), s);
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(w + i), xs));
  }
  for (; i < count; ++i) out[i] = w[i] * (x[i] * inv_rms);
}

void rmsnorm_row(const rmsnorm_params& p, const float* x, float* out, bool use_simd) {
  const float sum_sq = use_simd ? sum_squares_avx2(x, p.dim) : sum_squares_scalar(x, p.dim);
  const float variance = sum_sq / static_cast<float>(p.dim);
  const float inv_rms = 1.0f / std::sqrt(variance + p.eps);
  alignas(32) float w[chunk];
  for (std::int64_t begin = 0; begin < p.dim; begin += chunk) {
    const std::int64_t count = std::min(chunk, p.dim - begin);
    if (use_simd) {
      convert_avx2(p.weight, p.w_type, begin, count, w);
      scale_row_avx2(x + begin, w, inv_rms, count, out + begin);
    } else {
      convert_scalar(p.weight, p.w_type, begin, count, w);
      for (std::int64_t i = 0; i < count; ++i) {
        out[begin + i] = w[i] * (x[begin + i] * inv_rms);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// rope

constexpr std::int64_t rope_rows_per_task = 2;
constexpr std::int64_t rope_pairs = 64;  // cos/sin computed this many pairs at a time (stack)

HELIX_TARGET_AVX2_NO_FMA void rotate_half_avx2(float* a, float* b, const float* c, const float* s,
                                               std::int64_t count) {
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 a0 = _mm256_loadu_ps(a + i);
    const __m256 b0 = _mm256_loadu_ps(b + i);
    const __m256 cv = _mm256_loadu_ps(c + i);
    const __m256 sv = _mm256_loadu_ps(s + i);
    _mm256_storeu_ps(a + i, _mm256_sub_ps(_mm256_mul_ps(a0, cv), _mm256_mul_ps(b0, sv)));
    _mm256_storeu_ps(b + i, _mm256_add_ps(_mm256_mul_ps(b0, cv), _mm256_mul_ps(a0, sv)));
  }
  for (; i < count; ++i) {
    const float a0 = a[i];
    const float b0 = b[i];
    a[i] = a0 * c[i] - b0 * s[i];
    b[i] = b0 * c[i] + a0 * s[i];
  }
}

// v holds `count` interleaved pairs (a_i, b_i); c2/s2 hold each pair's cos/sin twice.
HELIX_TARGET_AVX2_NO_FMA void rotate_pairs_avx2(float* v, const float* c2, const float* s2,
                                                std::int64_t count) {
  std::int64_t i = 0;
  for (; i + 4 <= count; i += 4) {
    const __m256 x = _mm256_loadu_ps(v + 2 * i);
    const __m256 swapped = _mm256_permute_ps(x, 0xB1);  // (b, a) in each pair
    const __m256 t1 = _mm256_mul_ps(x, _mm256_loadu_ps(c2 + 2 * i));
    const __m256 t2 = _mm256_mul_ps(swapped, _mm256_loadu_ps(s2 + 2 * i));
    // Even lanes a*c - b*s, odd lanes b*c + a*s.
    _mm256_storeu_ps(v + 2 * i, _mm256_addsub_ps(t1, t2));
  }
  for (; i < count; ++i) {
    const float a0 = v[2 * i];
    const float b0 = v[2 * i + 1];
    v[2 * i] = a0 * c2[2 * i] - b0 * s2[2 * i];
    v[2 * i + 1] = b0 * c2[2 * i] + a0 * s2[2 * i];
  }
}

void rope_row(const rope_params& p, std::int64_t r, bool use_simd) {
  const std::int64_t half = p.rot_dim / 2;
  const float pos = static_cast<float>(p.positions[r]);
  // Room for the duplicated (interleaved) layout too.
  alignas(32) float c[2 * rope_pairs];
  alignas(32) float s[2 * rope_pairs];
  for (std::int64_t begin = 0; begin < half; begin += rope_pairs) {
    const std::int64_t count = std::min(rope_pairs, half - begin);
    for (std::int64_t i = 0; i < count; ++i) {
      // As HF: one f32 product pos * inv_freq, then cos and sin, then the attention factor.
      const float angle = pos * p.inv_freq[begin + i];
      const float cv = std::cos(angle) * p.attention_factor;
      const float sv = std::sin(angle) * p.attention_factor;
      if (p.interleave) {
        c[2 * i] = c[2 * i + 1] = cv;
        s[2 * i] = s[2 * i + 1] = sv;
      } else {
        c[i] = cv;
        s[i] = sv;
      }
    }
    for (std::int64_t h = 0; h < p.num_heads; ++h) {
      float* v = p.x + r * p.row_stride + h * p.head_stride + p.rot_offset;
      if (p.interleave) {
        float* pairs = v + 2 * begin;
        if (use_simd) {
          rotate_pairs_avx2(pairs, c, s, count);
        } else {
          for (std::int64_t i = 0; i < count; ++i) {
            const float a0 = pairs[2 * i];
            const float b0 = pairs[2 * i + 1];
            pairs[2 * i] = a0 * c[2 * i] - b0 * s[2 * i];
            pairs[2 * i + 1] = b0 * c[2 * i] + a0 * s[2 * i];
          }
        }
      } else {
        float* a = v + begin;
        float* b = v + half + begin;
        if (use_simd) {
          rotate_half_avx2(a, b, c, s, count);
        } else {
          for (std::int64_t i = 0; i < count; ++i) {
            const float a0 = a[i];
            const float b0 = b[i];
            a[i] = a0 * c[i] - b0 * s[i];
            b[i] = b0 * c[i] + a0 * s[i];
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// swiglu

constexpr std::int64_t swiglu_elems_per_task = 8192;

// exp(x) = 2^n * e^r, n = round(x / ln 2), r = x - n ln 2 (two-part ln 2), e^r by the Cephes
// degree-6 polynomial. The input is clamped to [-87.3, 88]: below, exp would be subnormal (silu
// is then -0 to within 1e-37); above, 2^n would overflow the exponent trick.
constexpr float exp_lo = -87.3f;
constexpr float exp_hi = 88.0f;
constexpr float log2e = 1.44269504088896341f;
constexpr float ln2_hi = 0.693359375f;
constexpr float ln2_lo = -2.12194440e-4f;
constexpr float exp_c[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                            4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};

float exp_scalar(float x) {
  x = std::min(std::max(x, exp_lo), exp_hi);
  const float n = std::nearbyint(x * log2e);
  float r = std::fma(n, -ln2_hi, x);
  r = std::fma(n, -ln2_lo, r);
  float y = exp_c[0];
  for (int j = 1; j < 6; ++j) y = std::fma(y, r, exp_c[j]);
  y = std::fma(y, r * r, r + 1.0f);
  const auto bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
  return y * f32_from_bits(bits);
}

HELIX_TARGET_AVX2 __m256 exp_avx2(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(exp_lo)), _mm256_set1_ps(exp_hi));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(log2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(n, _mm256_set1_ps(-ln2_hi), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(-ln2_lo), r);
  __m256 y = _mm256_set1_ps(exp_c[0]);
  for (int j = 1; j < 6; ++j) y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(exp_c[j]));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

HELIX_TARGET_AVX2 void swiglu_avx2(const float* gate, const float* up, float* out,
                                   std::int64_t count) {
  const __m256 one = _mm256_set1_ps(1.0f);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  std::int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 g = _mm256_loadu_ps(gate + i);
    const __m256 e = exp_avx2(_mm256_xor_ps(g, sign));
    const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, e));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
  }
  for (; i < count; ++i) out[i] = gate[i] / (1.0f + exp_scalar(-gate[i])) * up[i];
}

// ---------------------------------------------------------------------------------------------
// embedding

constexpr std::int64_t embedding_rows_per_task = 8;

}  // namespace

// Test seams: each op on a given instruction set (AVX-512 runs the AVX2 path; clamped to what the
// CPU supports). Tests declare them, to check that the portable path gives the same bits.

status rmsnorm_with_isa(const rmsnorm_params& p, thread_pool* pool, simd::isa isa) {
  const std::int64_t x_stride = p.x_stride == 0 ? p.dim : p.x_stride;
  const std::int64_t out_stride = p.out_stride == 0 ? p.dim : p.out_stride;
  const bool use_simd = isa != simd::isa::scalar && have_avx2();
  const std::int64_t num_tasks = (p.rows + norm_rows_per_task - 1) / norm_rows_per_task;
  parallel_for(pool, num_tasks, [&](std::int64_t t) {
    const std::int64_t end = std::min(p.rows, (t + 1) * norm_rows_per_task);
    for (std::int64_t r = t * norm_rows_per_task; r < end; ++r) {
      rmsnorm_row(p, p.x + r * x_stride, p.out + r * out_stride, use_simd);
    }
  });
  return ok_status();
}

status rope_with_isa(const rope_params& p, thread_pool* pool, simd::isa isa) {
  const bool use_simd = isa != simd::isa::scalar && have_avx2();
  const std::int64_t num_tasks = (p.rows + rope_rows_per_task - 1) / rope_rows_per_task;
  parallel_for(pool, num_tasks, [&](std::int64_t t) {
    const std::int64_t end = std::min(p.rows, (t + 1) * rope_rows_per_task);
    for (std::int64_t r = t * rope_rows_per_task; r < end; ++r) rope_row(p, r, use_simd);
  });
  return ok_status();
}

status swiglu_with_isa(const swiglu_params& p, thread_pool* pool, simd::isa isa) {
  const std::int64_t gate_stride = p.gate_stride == 0 ? p.dim : p.gate_stride;
  const std::int64_t up_stride = p.up_stride == 0 ? p.dim : p.up_stride;
  const std::int64_t out_stride = p.out_stride == 0 ? p.dim : p.out_stride;
  const bool use_simd = isa != simd::isa::scalar && have_avx2();
  const std::int64_t tasks_per_row = (p.dim + swiglu_elems_per_task - 1) / swiglu_elems_per_task;
  parallel_for(pool, p.rows * tasks_per_row, [&](std::int64_t t) {
    const std::int64_t r = t / tasks_per_row;
    const std::int64_t begin = (t % tasks_per_row) * swiglu_elems_per_task;
    const std::int64_t count = std::min(swiglu_elems_per_task, p.dim - begin);
    const float* gate = p.gate + r * gate_stride + begin;
    const float* up = p.up + r * up_stride + begin;
    float* out = p.out + r * out_stride + begin;
    if (use_simd) {
      swiglu_avx2(gate, up, out, count);
    } else {
      for (std::int64_t i = 0; i < count; ++i) {
        out[i] = gate[i] / (1.0f + exp_scalar(-gate[i])) * up[i];
      }
    }
  });
  return ok_status();
}

status embedding_with_isa(const embedding_params& p, thread_pool* pool, simd::isa isa) {
  const bool use_simd = isa != simd::isa::scalar && have_avx2();
  const std::int64_t num_tasks = (p.rows + embedding_rows_per_task - 1) / embedding_rows_per_task;
  parallel_for(pool, num_tasks, [&](std::int64_t t) {
    const std::int64_t end = std::min(p.rows, (t + 1) * embedding_rows_per_task);
    for (std::int64_t r = t * embedding_rows_per_task; r < end; ++r) {
      const std::int64_t id = p.ids[r];
      float* out = p.out + r * p.dim;
      if (id < p.vocab_begin || id >= p.vocab_end) {
        std::fill(out, out + p.dim, 0.0f);  // another shard owns this token
        continue;
      }
      const std::int64_t begin = (id - p.vocab_begin) * p.dim;
      if (use_simd) {
        convert_avx2(p.table, p.table_type, begin, p.dim, out);
      } else {
        convert_scalar(p.table, p.table_type, begin, p.dim, out);
      }
    }
  });
  return ok_status();
}

status rmsnorm(const rmsnorm_params& p, thread_pool* pool) {
  return rmsnorm_with_isa(p, pool, simd::isa::avx2);
}

status rope(const rope_params& p, thread_pool* pool) {
  return rope_with_isa(p, pool, simd::isa::avx2);
}

status swiglu(const swiglu_params& p, thread_pool* pool) {
  return swiglu_with_isa(p, pool, simd::isa::avx2);
}

status embedding(const embedding_params& p, thread_pool* pool) {
  return embedding_with_isa(p, pool, simd::isa::avx2);
}

}  // namespace helix::kernels::cpu
