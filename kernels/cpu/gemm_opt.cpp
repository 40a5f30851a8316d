// Optimised CPU GEMV/GEMM: y[m, n] (+)= sum_k x[m, k] * W[n, k], W f32/bf16/f16 or block-scaled
// fp8_e4m3 in [out, in].
//
// One activation row (decode) is memory-bound: the kernel streams each weight row once and
// converts it on the fly (bf16 by a 16-bit shift, f16 by F16C; e4m3 by placing its 7 magnitude
// bits in an f16 (exact: an f16 has every e4m3 value times 2^-8, subnormals included) and F16C,
// then one multiply by 256 x the block's scale, which rounds exactly as e4m3 x scale does; FP8
// sums over 64 lanes, see below), one weight row at a time (one sequential stream for the
// prefetcher). Two or more rows are
// compute-bound: with AVX-512 a block of up to 4 rows x 4 weight rows keeps activations and weights
// in registers; AVX2 uses blocks of up to 4 rows x 1 weight row. With several rows, k is walked in
// blocks of 1024 so the rows' block of x stays in L1 for every column of a tile.
//
// Batch and thread invariance: every output element is reduced in one canonical order that
// depends only on k. Element kk goes to lane kk % 16 of 16 f32 accumulators (fused multiply-add;
// the last partial block is zero-padded, and 0 * 0 adds nothing), then the lanes are summed in a
// fixed tree: t_j = a_j + a_{j+8}, u_j = t_j + t_{j+4}, (u_0 + u_2) + (u_1 + u_3). How rows,
// columns and k are blocked, which instruction set runs (AVX-512, AVX2 or the portable std::fma
// emulation of the same lanes) and how column tiles of fixed size are spread over threads never
// change that order, so all of them give the same bits.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/dtype.hpp"
#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/simd.hpp"

#define HELIX_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define HELIX_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

namespace helix::kernels::cpu {

namespace {

constexpr int lanes = 16;
// Work is split into tiles of fixed size (never by thread count). 16 columns of a 7168-wide bf16
// weight are 229 KB: they stay in L2 while the row blocks of a larger batch reuse them.
constexpr std::int64_t col_tile = 16;
constexpr std::int64_t row_tile = 32;
// k block (a multiple of 16) for more than one activation row: 4 rows of 1024 f32 are 16 KB.
constexpr std::int64_t k_block = 1024;
// Weight rows per AVX-512 micro-kernel (batches of 2+ rows): R * 4 accumulators, 4 + 1 vectors.
constexpr int avx512_cols = 4;
// Batches of at most this many rows walk one weight row at a time (see tile_avx512).
constexpr std::int64_t small_batch_rows = 3;

bool have_avx2() {
  static const bool yes =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && simd::cpu_has_f16c();
  return yes;
}

bool have_avx512() {
  static const bool yes = have_avx2() && __builtin_cpu_supports("avx512f") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return yes;
}

template <dtype WT>
struct storage;
template <>
struct storage<dtype::f32> {
  using type = float;
};
template <>
struct storage<dtype::bf16> {
  using type = bf16_t;
};
template <>
struct storage<dtype::f16> {
  using type = f16_t;
};
template <>
struct storage<dtype::fp8_e4m3> {
  using type = fp8_e4m3_t;
};

// FP8 weight row c's element kk as f32: dequantized with its block's scale, one rounding.
float fp8_weight_at(const gemm_params& p, const fp8_e4m3_t* row, std::int64_t c, std::int64_t kk) {
  return to_f32(row[kk]) * p.w_scales[c * p.w_scale_stride + (kk + p.w_scale_phase) / p.w_block_k];
}

// The scale block of 16-element chunks walked upwards from k_begin (fp8 only; a chunk never
// straddles two blocks: the vector paths run only when blocks and the phase are multiples of
// 16). scale(c) is 256 x weight row c's scale for the current chunk (see the header comment).
struct scale_walk {
  const gemm_params* p = nullptr;
  std::int64_t idx = 0;   // the current chunk's block
  std::int64_t edge = 0;  // the first column of the next block
  scale_walk(const gemm_params& params, std::int64_t k_begin) : p(&params) {
    if (p->w_block_k > 0) {
      idx = (k_begin + p->w_scale_phase) / p->w_block_k;
      edge = (idx + 1) * p->w_block_k - p->w_scale_phase;
    }
  }
  // Moves to kk's block; the end of the run of chunks in it (at most `end`).
  std::int64_t run_end(std::int64_t kk, std::int64_t end) {
    while (kk >= edge) {
      ++idx;
      edge += p->w_block_k;
    }
    return std::min(end, edge);
  }
  [[nodiscard]] float scale(std::int64_t c) const {
    return 256.0f * p->w_scales[c * p->w_scale_stride + idx];
  }
};

struct gemm_job {
  const gemm_params* p = nullptr;
  std::int64_t x_stride = 0;
  std::int64_t y_stride = 0;
  std::int64_t num_row_tiles = 0;
  simd::isa isa = simd::isa::scalar;  // every path gives the same bits
};

void store_result(const gemm_params& p, float* y, float v) {
  *y = p.accumulate ? *y + v : v;
}

// ---- Portable fallback: the same canonical order with scalar lanes. ----

float reduce_lanes_scalar(const float* a) {
  float t[8];
  for (int j = 0; j < 8; ++j) t[j] = a[j] + a[j + 8];
  float u[4];
  for (int j = 0; j < 4; ++j) u[j] = t[j] + t[j + 4];
  return (u[0] + u[2]) + (u[1] + u[3]);
}

template <dtype WT>
void tile_scalar(const gemm_job& job, std::int64_t r_begin, std::int64_t r_end,
                 std::int64_t c_begin, std::int64_t c_end) {
  using elem = typename storage<WT>::type;
  const gemm_params& p = *job.p;
  const auto* w = static_cast<const elem*>(p.w);
  for (std::int64_t r = r_begin; r < r_end; ++r) {
    const float* x = p.x + r * job.x_stride;
    for (std::int64_t c = c_begin; c < c_end; ++c) {
      const elem* wr = w + c * p.k;
      float acc[lanes] = {};
      for (std::int64_t kk = 0; kk < p.k; ++kk) {
        acc[kk % lanes] = std::fma(x[kk], to_f32(wr[kk]), acc[kk % lanes]);
      }
      store_result(p, p.y + r * job.y_stride + c, reduce_lanes_scalar(acc));
    }
  }
}

// ---- AVX2 + FMA + F16C ----

// `s256`: fp8 only, 256 x the chunk's scale (scale_walk), broadcast once per block: the
// broadcast shares the shuffle port with the conversion, and per chunk it cost a third of the
// rate.
template <dtype WT>
HELIX_TARGET_AVX2 inline __m256 load8(const typename storage<WT>::type* w,
                                      __m256 s256 = _mm256_setzero_ps()) {
  if constexpr (WT == dtype::f32) {
    return _mm256_loadu_ps(w);
  } else if constexpr (WT == dtype::bf16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else if constexpr (WT == dtype::fp8_e4m3) {
    // Sign-extended, shifted by 7: the sign lands on bit 15 and 14, eeee.mmm on 13..7; clearing
    // bit 14 leaves the f16 of value x 2^-8.
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w));
    const __m128i h = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(b), 7),
                                    _mm_set1_epi16(static_cast<short>(0xbfff)));
    return _mm256_mul_ps(_mm256_cvtph_ps(h), s256);
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  }
}

HELIX_TARGET_AVX2 inline float reduce_lanes_avx2(__m256 lo, __m256 hi) {
  const __m256 t = _mm256_add_ps(lo, hi);  // t_j = a_j + a_{j+8}
  const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  const __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));  // (u0 + u2, u1 + u3)
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

// R activation rows times one weight row, over the 16-element blocks in [k_begin, k_end): 2 * R
// accumulators. Each converted weight vector is used for all R rows. One weight row at a time
// keeps the weight reads a single sequential stream: interleaving 2 to 4 weight rows (more
// independent FMA chains) measured 2 to 3x slower from DRAM on the 2-core EPYC VMs, presumably
// because the hardware prefetcher follows one stream best.
// The accumulators live in `acc_state` ([R][16]) between k blocks; storing and reloading them is
// exact, so blocking k does not change the canonical order. The last block also adds the
// zero-padded tail, reduces the lanes and writes y.
template <dtype WT, int R>
HELIX_TARGET_AVX2 void micro_avx2(const gemm_job& job, std::int64_t r0, std::int64_t col,
                                  std::int64_t k_begin, std::int64_t k_end, bool first, bool last,
                                  float* acc_state) {
  using elem = typename storage<WT>::type;
  const gemm_params& p = *job.p;
  const std::int64_t k = p.k;
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = p.x + (r0 + r) * job.x_stride;
  const elem* w = static_cast<const elem*>(p.w) + col * k;

  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc_state + r * lanes);
    acc[r][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc_state + r * lanes + 8);
  }
  for (std::int64_t kk = k_begin; kk < k_end; kk += lanes) {
    const __m256 w0 = load8<WT>(w + kk);
    const __m256 w1 = load8<WT>(w + kk + 8);
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + kk), w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_loadu_ps(x[r] + kk + 8), w1, acc[r][1]);
    }
  }
  if (!last) {
    for (int r = 0; r < R; ++r) {
      _mm256_storeu_ps(acc_state + r * lanes, acc[r][0]);
      _mm256_storeu_ps(acc_state + r * lanes + 8, acc[r][1]);
    }
    return;
  }
  const std::int64_t k_full = k - k % lanes;
  if (k_full < k) {
    // Last partial block, zero-padded in both operands so the padding adds exactly nothing.
    const std::int64_t rest = k - k_full;
    alignas(32) float xt[R][lanes] = {};
    alignas(32) float wt[lanes] = {};
    for (int r = 0; r < R; ++r) std::memcpy(xt[r], x[r] + k_full, sizeof(float) * rest);
    for (std::int64_t j = 0; j < rest; ++j) wt[j] = to_f32(w[k_full + j]);
    const __m256 w0 = _mm256_load_ps(wt);
    const __m256 w1 = _mm256_load_ps(wt + 8);
    for (int r = 0; r < R; ++r) {
      acc[r][0] = _mm256_fmadd_ps(_mm256_load_ps(xt[r]), w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_load_ps(xt[r] + 8), w1, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    store_result(p, p.y + (r0 + r) * job.y_stride + col, reduce_lanes_avx2(acc[r][0], acc[r][1]));
  }
}

// Rows [r0, r0 + R) times columns [c_begin, c_end). With several rows, k is walked in blocks of
// k_block so that the R activation rows of a block stay in L1 while every column of the tile
// reads them (4 rows of 7168 f32 are 112 KB, far more than L1).
template <dtype WT, int R>
HELIX_TARGET_AVX2 void columns_avx2(const gemm_job& job, std::int64_t r0, std::int64_t c_begin,
                                    std::int64_t c_end) {
  const std::int64_t k_full = job.p->k - job.p->k % lanes;
  const std::int64_t step = R == 1 ? std::max<std::int64_t>(k_full, 1) : k_block;
  alignas(32) float acc_state[col_tile][R][lanes];
  for (std::int64_t k0 = 0; k0 == 0 || k0 < k_full; k0 += step) {
    const std::int64_t k1 = std::min(k_full, k0 + step);
    for (std::int64_t c = c_begin; c < c_end; ++c) {
      micro_avx2<WT, R>(job, r0, c, k0, k1, k0 == 0, k1 == k_full, &acc_state[c - c_begin][0][0]);
    }
  }
}

template <dtype WT>
HELIX_TARGET_AVX2 void tile_avx2(const gemm_job& job, std::int64_t r_begin, std::int64_t r_end,
                                 std::int64_t c_begin, std::int64_t c_end) {
  std::int64_t r = r_begin;
  for (; r + 4 <= r_end; r += 4) columns_avx2<WT, 4>(job, r, c_begin, c_end);
  switch (r_end - r) {
    case 3:
      columns_avx2<WT, 3>(job, r, c_begin, c_end);
      break;
    case 2:
      columns_avx2<WT, 2>(job, r, c_begin, c_end);
      break;
    case 1:
      columns_avx2<WT, 1>(job, r, c_begin, c_end);
      break;
    default:
      break;
  }
}

// ---- AVX-512: one zmm holds the 16 canonical lanes. ----
// Batches of 2 or more rows are compute-bound, and AVX2 is limited by loads (10 loads per 8 FMAs
// for 4 rows). With 32 registers an R x C block keeps R activation vectors and C weight vectors in
// registers: R + C loads per R * C FMAs. The reduction tree is the AVX2 one, so the bits match.

template <dtype WT>
HELIX_TARGET_AVX512 inline __m512 load16(const typename storage<WT>::type* w,
                                         __m512 s256 = _mm512_setzero_ps()) {
  if constexpr (WT == dtype::f32) {
    return _mm512_loadu_ps(w);
  } else if constexpr (WT == dtype::bf16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (WT == dtype::fp8_e4m3) {  // as load8
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
                                       _mm256_set1_epi16(static_cast<short>(0xbfff)));
    return _mm512_mul_ps(_mm512_cvtph_ps(h), s256);
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  }
}

HELIX_TARGET_AVX512 inline float reduce_lanes_avx512(__m512 a) {
  const __m256 lo = _mm512_castps512_ps256(a);
  const __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1));
  const __m256 t = _mm256_add_ps(lo, hi);  // t_j = a_j + a_{j+8}
  const __m128 u = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
  const __m128 v = _mm_add_ps(u, _mm_movehl_ps(u, u));
  return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

// R rows times C consecutive weight rows from c0, k blocks as in micro_avx2; acc_state is
// [C][R][16] (the tile's state for column c0 onwards).
template <dtype WT, int R, int C>
HELIX_TARGET_AVX512 void micro_avx512(const gemm_job& job, std::int64_t r0, std::int64_t c0,
                                      std::int64_t k_begin, std::int64_t k_end, bool first,
                                      bool last, float* acc_state) {
  using elem = typename storage<WT>::type;
  const gemm_params& p = *job.p;
  const std::int64_t k = p.k;
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = p.x + (r0 + r) * job.x_stride;
  const elem* w[C];
  for (int c = 0; c < C; ++c) w[c] = static_cast<const elem*>(p.w) + (c0 + c) * k;

  __m512 acc[R][C];
  for (int c = 0; c < C; ++c) {
    for (int r = 0; r < R; ++r) {
      acc[r][c] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc_state + (c * R + r) * lanes);
    }
  }
  for (std::int64_t kk = k_begin; kk < k_end; kk += lanes) {
    __m512 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = load16<WT>(w[c] + kk);
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x[r] + kk);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  if (!last) {
    for (int c = 0; c < C; ++c) {
      for (int r = 0; r < R; ++r) _mm512_storeu_ps(acc_state + (c * R + r) * lanes, acc[r][c]);
    }
    return;
  }
  const std::int64_t k_full = k - k % lanes;
  if (k_full < k) {
    const std::int64_t rest = k - k_full;
    alignas(64) float xt[R][lanes] = {};
    alignas(64) float wt[C][lanes] = {};
    for (int r = 0; r < R; ++r) std::memcpy(xt[r], x[r] + k_full, sizeof(float) * rest);
    for (int c = 0; c < C; ++c) {
      for (std::int64_t j = 0; j < rest; ++j) wt[c][j] = to_f32(w[c][k_full + j]);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_load_ps(xt[r]);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(xv, _mm512_load_ps(wt[c]), acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      store_result(p, p.y + (r0 + r) * job.y_stride + c0 + c, reduce_lanes_avx512(acc[r][c]));
    }
  }
}

template <dtype WT, int R, int C>
HELIX_TARGET_AVX512 void columns_avx512(const gemm_job& job, std::int64_t r0, std::int64_t c_begin,
                                        std::int64_t c_end) {
  const std::int64_t k_full = job.p->k - job.p->k % lanes;
  alignas(64) float acc_state[col_tile][R][lanes];
  for (std::int64_t k0 = 0; k0 == 0 || k0 < k_full; k0 += k_block) {
    const std::int64_t k1 = std::min(k_full, k0 + k_block);
    const bool first = k0 == 0;
    const bool last = k1 == k_full;
    std::int64_t c = c_begin;
    for (; c + C <= c_end; c += C) {
      micro_avx512<WT, R, C>(job, r0, c, k0, k1, first, last, &acc_state[c - c_begin][0][0]);
    }
    for (; c < c_end; ++c) {
      micro_avx512<WT, R, 1>(job, r0, c, k0, k1, first, last, &acc_state[c - c_begin][0][0]);
    }
  }
}

template <dtype WT, int C>
HELIX_TARGET_AVX512 void tile_avx512_c(const gemm_job& job, std::int64_t r_begin,
                                       std::int64_t r_end, std::int64_t c_begin,
                                       std::int64_t c_end) {
  std::int64_t r = r_begin;
  for (; r + 4 <= r_end; r += 4) columns_avx512<WT, 4, C>(job, r, c_begin, c_end);
  switch (r_end - r) {
    case 3:
      columns_avx512<WT, 3, C>(job, r, c_begin, c_end);
      break;
    case 2:
      columns_avx512<WT, 2, C>(job, r, c_begin, c_end);
      break;
    case 1:
      // A single row is memory-bound: one weight stream (see micro_avx2).
      columns_avx2<WT, 1>(job, r, c_begin, c_end);
      break;
    default:
      break;
  }
}

// A decode batch of up to small_batch_rows rows reads its weights once from memory: C weight rows
// at a time are C streams 2 KB apart, which DRAM serves at a fraction of one stream's rate (the LM
// head at 2 rows: 9.0 GB/s with C = 4, 15.0 with C = 1, on one thread here), so it walks one
// weight row at a time. At 4 rows and more the activation loads of that walk cost as much as the
// streams (small-llama's weights at 4 rows on 2 threads: 0.41 of a streaming read either way), so
// larger batches keep the register blocking.
template <dtype WT>
HELIX_TARGET_AVX512 void tile_avx512(const gemm_job& job, std::int64_t r_begin, std::int64_t r_end,
                                     std::int64_t c_begin, std::int64_t c_end) {
  if (job.p->m <= small_batch_rows) {
    tile_avx512_c<WT, 1>(job, r_begin, r_end, c_begin, c_end);
  } else {
    tile_avx512_c<WT, avx512_cols>(job, r_begin, r_end, c_begin, c_end);
  }
}

// ---- FP8 weights: 64 canonical lanes ----
// A one-row GEMV over 16 lanes is one chain of dependent FMAs (about 4 cycles per 16 weights),
// which caps it near 14 G weights/s per thread whatever the dtype. FP8 moves half of bf16's bytes
// per weight, so it sums over 64 lanes: chunk i of 16 elements goes to accumulator i % 4 (lane
// kk % 16), and the four are added lane by lane, (a0 + a1) + (a2 + a3), before the 16-lane tree.
// Every FP8 path keeps that order (batch, thread and instruction-set invariant); it differs from
// the f32 order by rounding only.
constexpr int fp8_accs = 4;
constexpr std::int64_t fp8_span = fp8_accs * lanes;  // elements per round of the accumulators

float reduce_fp8_scalar(const float* a) {  // a[fp8_accs][lanes]
  float v[lanes];
  for (int l = 0; l < lanes; ++l) {
    v[l] = (a[l] + a[lanes + l]) + (a[2 * lanes + l] + a[3 * lanes + l]);
  }
  return reduce_lanes_scalar(v);
}

void tile_fp8_scalar(const gemm_job& job, std::int64_t r_begin, std::int64_t r_end,
                     std::int64_t c_begin, std::int64_t c_end) {
  const gemm_params& p = *job.p;
  const auto* w = static_cast<const fp8_e4m3_t*>(p.w);
  for (std::int64_t r = r_begin; r < r_end; ++r) {
    const float* x = p.x + r * job.x_stride;
    for (std::int64_t c = c_begin; c < c_end; ++c) {
      const fp8_e4m3_t* wr = w + c * p.k;
      float acc[fp8_span] = {};
      for (std::int64_t kk = 0; kk < p.k; ++kk) {
        float& a = acc[kk % fp8_span];  // = ((kk / 16) % 4) * 16 + kk % 16
        a = std::fma(x[kk], fp8_weight_at(p, wr, c, kk), a);
      }
      store_result(p, p.y + r * job.y_stride + c, reduce_fp8_scalar(acc));
    }
  }
}

// One row (AVX2: 8 ymm accumulators, chunk i's halves in 2 (i % 4) and 2 (i % 4) + 1) times one
// weight row over [k_begin, k_end), state [fp8_accs][lanes] between k blocks; as micro_avx2.
HELIX_TARGET_AVX2 void micro_fp8_avx2(const gemm_job& job, std::int64_t r0, std::int64_t col,
                                      std::int64_t k_begin, std::int64_t k_end, bool first,
                                      bool last, float* state) {
  const gemm_params& p = *job.p;
  const float* x = p.x + r0 * job.x_stride;
  const auto* w = static_cast<const fp8_e4m3_t*>(p.w) + col * p.k;
  __m256 acc[2 * fp8_accs];
  for (int j = 0; j < 2 * fp8_accs; ++j) {
    acc[j] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(state + j * 8);
  }
  scale_walk walk(p, k_begin);
  for (std::int64_t kk = k_begin; kk < k_end;) {
    const std::int64_t stop = walk.run_end(kk, k_end);
    const __m256 s = _mm256_set1_ps(walk.scale(col));
    for (; kk < stop; kk += lanes) {
      const int j = static_cast<int>((kk / lanes) % fp8_accs) * 2;
      acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk), load8<dtype::fp8_e4m3>(w + kk, s), acc[j]);
      acc[j + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk + 8),
                                   load8<dtype::fp8_e4m3>(w + kk + 8, s), acc[j + 1]);
    }
  }
  if (!last) {
    for (int j = 0; j < 2 * fp8_accs; ++j) _mm256_storeu_ps(state + j * 8, acc[j]);
    return;
  }
  const std::int64_t k_full = p.k - p.k % lanes;
  if (k_full < p.k) {
    alignas(32) float xt[lanes] = {};
    alignas(32) float wt[lanes] = {};
    for (std::int64_t i = 0; i < p.k - k_full; ++i) {
      xt[i] = x[k_full + i];
      wt[i] = fp8_weight_at(p, w, col, k_full + i);
    }
    const int j = static_cast<int>((k_full / lanes) % fp8_accs) * 2;
    acc[j] = _mm256_fmadd_ps(_mm256_load_ps(xt), _mm256_load_ps(wt), acc[j]);
    acc[j + 1] = _mm256_fmadd_ps(_mm256_load_ps(xt + 8), _mm256_load_ps(wt + 8), acc[j + 1]);
  }
  const __m256 lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[4], acc[6]));
  const __m256 hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[3]), _mm256_add_ps(acc[5], acc[7]));
  store_result(p, p.y + r0 * job.y_stride + col, reduce_lanes_avx2(lo, hi));
}

HELIX_TARGET_AVX2 void tile_fp8_avx2(const gemm_job& job, std::int64_t r_begin, std::int64_t r_end,
                                     std::int64_t c_begin, std::int64_t c_end) {
  const std::int64_t k_full = job.p->k - job.p->k % lanes;
  alignas(32) float state[fp8_span] = {};
  for (std::int64_t r = r_begin; r < r_end; ++r) {
    for (std::int64_t c = c_begin; c < c_end; ++c) {
      for (std::int64_t k0 = 0; k0 == 0 || k0 < k_full; k0 += k_block) {
        const std::int64_t k1 = std::min(k_full, k0 + k_block);
        micro_fp8_avx2(job, r, c, k0, k1, k0 == 0, k1 == k_full, state);
      }
    }
  }
}

// Chunk kk (its accumulator J = (kk / 16) % 4) of R rows against one weight row.
template <int R, int J>
HELIX_TARGET_AVX512 inline void fp8_chunk(__m512 (&acc)[R][fp8_accs], const float* const (&x)[R],
                                          const fp8_e4m3_t* w, std::int64_t kk, __m512 s) {
  const __m512 wv = load16<dtype::fp8_e4m3>(w + kk, s);
  for (int r = 0; r < R; ++r)
    acc[r][J] = _mm512_fmadd_ps(_mm512_loadu_ps(x[r] + kk), wv, acc[r][J]);
}

template <int R>
HELIX_TARGET_AVX512 inline void fp8_chunk_at(__m512 (&acc)[R][fp8_accs], const float* const (&x)[R],
                                             const fp8_e4m3_t* w, std::int64_t kk, __m512 s) {
  switch ((kk / lanes) % fp8_accs) {
    case 0:
      fp8_chunk<R, 0>(acc, x, w, kk, s);
      break;
    case 1:
      fp8_chunk<R, 1>(acc, x, w, kk, s);
      break;
    case 2:
      fp8_chunk<R, 2>(acc, x, w, kk, s);
      break;
    default:
      fp8_chunk<R, 3>(acc, x, w, kk, s);
      break;
  }
}

// R rows times one weight row (AVX-512: R x 4 accumulators), state [R][fp8_accs][lanes].
// Chunks go to their accumulator by index; the runs are unrolled by four from a multiple of 64.
template <int R>
HELIX_TARGET_AVX512 void micro_fp8_avx512(const gemm_job& job, std::int64_t r0, std::int64_t col,
                                          std::int64_t k_begin, std::int64_t k_end, bool first,
                                          bool last, float* state) {
  const gemm_params& p = *job.p;
  const float* x[R];
  for (int r = 0; r < R; ++r) x[r] = p.x + (r0 + r) * job.x_stride;
  const auto* w = static_cast<const fp8_e4m3_t*>(p.w) + col * p.k;
  __m512 acc[R][fp8_accs];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < fp8_accs; ++j) {
      acc[r][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(state + (r * fp8_accs + j) * lanes);
    }
  }
  scale_walk walk(p, k_begin);
  __m512 s = _mm512_setzero_ps();
  for (std::int64_t kk = k_begin; kk < k_end;) {
    const std::int64_t stop = walk.run_end(kk, k_end);
    s = _mm512_set1_ps(walk.scale(col));
    for (; kk < stop && kk % fp8_span != 0; kk += lanes) fp8_chunk_at<R>(acc, x, w, kk, s);
    for (; kk + fp8_span <= stop; kk += fp8_span) {
      fp8_chunk<R, 0>(acc, x, w, kk, s);
      fp8_chunk<R, 1>(acc, x, w, kk + lanes, s);
      fp8_chunk<R, 2>(acc, x, w, kk + 2 * lanes, s);
      fp8_chunk<R, 3>(acc, x, w, kk + 3 * lanes, s);
    }
    for (; kk < stop; kk += lanes) fp8_chunk_at<R>(acc, x, w, kk, s);
  }
  if (!last) {
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < fp8_accs; ++j) {
        _mm512_storeu_ps(state + (r * fp8_accs + j) * lanes, acc[r][j]);
      }
    }
    return;
  }
  const std::int64_t k_full = p.k - p.k % lanes;
  float out[R];
  for (int r = 0; r < R; ++r) {
    alignas(64) float a[fp8_span];
    for (int j = 0; j < fp8_accs; ++j) _mm512_store_ps(a + j * lanes, acc[r][j]);
    if (k_full < p.k) {  // the zero-padded tail, into its accumulator as the scalar path does
      float* t = a + ((k_full / lanes) % fp8_accs) * lanes;
      for (std::int64_t i = 0; i < p.k - k_full; ++i) {
        t[i] = std::fma(x[r][k_full + i], fp8_weight_at(p, w, col, k_full + i), t[i]);
      }
    }
    const __m512 v =
        _mm512_add_ps(_mm512_add_ps(_mm512_load_ps(a), _mm512_load_ps(a + lanes)),
                      _mm512_add_ps(_mm512_load_ps(a + 2 * lanes), _mm512_load_ps(a + 3 * lanes)));
    out[r] = reduce_lanes_avx512(v);
  }
  for (int r = 0; r < R; ++r) store_result(p, p.y + (r0 + r) * job.y_stride + col, out[r]);
}

template <int R>
HELIX_TARGET_AVX512 void columns_fp8_avx512(const gemm_job& job, std::int64_t r0,
                                            std::int64_t c_begin, std::int64_t c_end) {
  const std::int64_t k_full = job.p->k - job.p->k % lanes;
  alignas(64) float state[R * fp8_span] = {};
  for (std::int64_t c = c_begin; c < c_end; ++c) {
    for (std::int64_t k0 = 0; k0 == 0 || k0 < k_full; k0 += k_block) {
      const std::int64_t k1 = std::min(k_full, k0 + k_block);
      micro_fp8_avx512<R>(job, r0, c, k0, k1, k0 == 0, k1 == k_full, state);
    }
  }
}

HELIX_TARGET_AVX512 void tile_fp8_avx512(const gemm_job& job, std::int64_t r_begin,
                                         std::int64_t r_end, std::int64_t c_begin,
                                         std::int64_t c_end) {
  std::int64_t r = r_begin;
  for (; r + 4 <= r_end; r += 4) columns_fp8_avx512<4>(job, r, c_begin, c_end);
  switch (r_end - r) {
    case 3:
      columns_fp8_avx512<3>(job, r, c_begin, c_end);
      break;
    case 2:
      columns_fp8_avx512<2>(job, r, c_begin, c_end);
      break;
    case 1:
      columns_fp8_avx512<1>(job, r, c_begin, c_end);
      break;
    default:
      break;
  }
}

template <dtype WT>
void run_tile(const gemm_job& job, std::int64_t task) {
  const gemm_params& p = *job.p;
  const std::int64_t col_idx = task / job.num_row_tiles;
  const std::int64_t row_idx = task % job.num_row_tiles;
  const std::int64_t c_begin = col_idx * col_tile;
  const std::int64_t c_end = std::min(p.n, c_begin + col_tile);
  const std::int64_t r_begin = row_idx * row_tile;
  const std::int64_t r_end = std::min(p.m, r_begin + row_tile);
  if constexpr (WT == dtype::fp8_e4m3) {  // its own canonical order (see above)
    switch (job.isa) {
      case simd::isa::avx512:
        tile_fp8_avx512(job, r_begin, r_end, c_begin, c_end);
        return;
      case simd::isa::avx2:
        tile_fp8_avx2(job, r_begin, r_end, c_begin, c_end);
        return;
      case simd::isa::scalar:
        tile_fp8_scalar(job, r_begin, r_end, c_begin, c_end);
        return;
    }
  } else {
    switch (job.isa) {
      case simd::isa::avx512:
        tile_avx512<WT>(job, r_begin, r_end, c_begin, c_end);
        break;
      case simd::isa::avx2:
        tile_avx2<WT>(job, r_begin, r_end, c_begin, c_end);
        break;
      case simd::isa::scalar:
        tile_scalar<WT>(job, r_begin, r_end, c_begin, c_end);
        break;
    }
  }
}

template <dtype WT>
void run_all(const gemm_job& job, thread_pool* pool) {
  const std::int64_t num_col_tiles = (job.p->n + col_tile - 1) / col_tile;
  const std::int64_t num_tasks = num_col_tiles * job.num_row_tiles;
  parallel_for(pool, num_tasks, [&job](std::int64_t t) { run_tile<WT>(job, t); });
}

}  // namespace

/// Test seam: gemm on a given instruction set (clamped to what the CPU supports). Tests declare
/// it; every path must give the same bits.
status gemm_with_isa(const gemm_params& p, thread_pool* pool, simd::isa isa) {
  gemm_job job;
  job.p = &p;
  job.x_stride = p.x_stride == 0 ? p.k : p.x_stride;
  job.y_stride = p.y_stride == 0 ? p.n : p.y_stride;
  job.num_row_tiles = (p.m + row_tile - 1) / row_tile;
  if (isa == simd::isa::avx512 && have_avx512()) {
    job.isa = simd::isa::avx512;
  } else if (isa != simd::isa::scalar && have_avx2()) {
    job.isa = simd::isa::avx2;
  }
  switch (p.w_type) {
    case dtype::f32:
      run_all<dtype::f32>(job, pool);
      return ok_status();
    case dtype::bf16:
      run_all<dtype::bf16>(job, pool);
      return ok_status();
    case dtype::f16:
      run_all<dtype::f16>(job, pool);
      return ok_status();
    case dtype::fp8_e4m3:
      // Chunks of 16 must not straddle scale blocks on the vector paths.
      if (p.w_block_k % lanes != 0 || p.w_scale_phase % lanes != 0) job.isa = simd::isa::scalar;
      run_all<dtype::fp8_e4m3>(job, pool);
      return ok_status();
  }
  return failed_precondition("gemm: weight dtype {} is not supported by the cpu backend",
                             dtype_name(p.w_type));
}

status gemm(const gemm_params& p, thread_pool* pool) {
  return gemm_with_isa(p, pool, simd::isa::avx512);
}

}  // namespace helix::kernels::cpu
