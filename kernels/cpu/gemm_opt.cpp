// Optimised CPU GEMV/GEMM: y[m, n] (+)= sum_k x[m, k] * W[n, k], W f32/bf16/f16 or block-scaled
// fp8_e4m3 in [out, in]. FP8 weights have their own kernels and summation order (gemm_fp8.cpp);
// this file splits their work into the same tiles.
//
// Decode batches are memory-bound: the kernel streams each weight row once and converts it on
// the fly (bf16 by a 16-bit shift, f16 by F16C). With AVX-512 a block of up to 4 rows x 4 weight
// rows keeps activations and weights in registers and prefetches the next 4 weight rows (4 rows
// read side by side are short streams the hardware prefetchers follow poorly). AVX2 uses blocks
// of up to 4 rows x 1 weight row (one sequential stream). k is walked in blocks of 1024 so the
// rows' block of x stays in L1 for every column of a tile.
//
// Batch and thread invariance: every output element is reduced in one canonical order that
// depends only on k. Element kk goes to lane kk % 16 of 16 f32 accumulators (fused multiply-add;
// the last partial block is zero-padded, and 0 * 0 adds nothing), then the lanes are summed in a
// fixed tree (gemm_tiles.hpp): t_j = a_j + a_{j+8}, u_j = t_j + t_{j+4}, (u_0 + u_2) + (u_1 + u_3).
// How rows, columns and k are blocked, which instruction set runs (AVX-512, AVX2 or the portable
// std::fma emulation of the same lanes) and how column tiles of fixed size are spread over threads
// never change that order, so all of them give the same bits.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/dtype.hpp"
#include "kernels/cpu/gemm_tiles.hpp"
#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/simd.hpp"

#define HELIX_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define HELIX_TARGET_AVX512 \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

namespace helix::kernels::cpu {

namespace {

constexpr int lanes = gemm_lanes;
// Work is split into tiles of fixed size (never by thread count). 16 columns of a 7168-wide bf16
// weight are 229 KB: they stay in L2 while the row blocks of a larger batch reuse them.
constexpr std::int64_t col_tile = 16;
constexpr std::int64_t row_tile = 32;
// k block (a multiple of 16) for more than one activation row: 4 rows of 1024 f32 are 16 KB.
constexpr std::int64_t k_block = 1024;
// Weight rows per AVX-512 micro-kernel: R * 4 accumulators, 4 + 1 vectors.
constexpr int avx512_cols = 4;

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

struct gemm_job {
  const gemm_params* p = nullptr;
  std::int64_t x_stride = 0;
  std::int64_t y_stride = 0;
  std::int64_t num_row_tiles = 0;
  simd::isa isa = simd::isa::scalar;  // every path gives the same bits
  fp8_path fp8 = fp8_path::scalar;    // fp8_e4m3 weights: their path (gemm_fp8.cpp)
};

// ---- Portable fallback: the same canonical order with scalar lanes. ----

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

template <dtype WT>
HELIX_TARGET_AVX2 inline __m256 load8(const typename storage<WT>::type* w) {
  if constexpr (WT == dtype::f32) {
    return _mm256_loadu_ps(w);
  } else if constexpr (WT == dtype::bf16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
  }
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
HELIX_TARGET_AVX512 inline __m512 load16(const typename storage<WT>::type* w) {
  if constexpr (WT == dtype::f32) {
    return _mm512_loadu_ps(w);
  } else if constexpr (WT == dtype::bf16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w)));
  }
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
  // C rows read side by side are C short streams, which the hardware prefetchers follow poorly:
  // the next C rows (the next call's, or the next tile's) are prefetched at the same offsets.
  const bool ahead = C > 1 && c0 + 2 * C <= p.n;
  const elem* next[C];
  for (int c = 0; c < C; ++c) next[c] = ahead ? w[c] + C * k : w[c];
  constexpr std::int64_t per_line = 64 / static_cast<std::int64_t>(sizeof(elem));

  __m512 acc[R][C];
  for (int c = 0; c < C; ++c) {
    for (int r = 0; r < R; ++r) {
      acc[r][c] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc_state + (c * R + r) * lanes);
    }
  }
  for (std::int64_t kk = k_begin; kk < k_end; kk += lanes) {
    if (ahead && (kk - k_begin) % per_line == 0) {
      for (int c = 0; c < C; ++c) {
        _mm_prefetch(reinterpret_cast<const char*>(next[c] + kk), _MM_HINT_T0);
      }
    }
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

// Any number of rows: blocks of up to 4 rows times 4 weight rows, the next 4 weight rows
// prefetched as they go (see micro_avx512). Measured with bench/gemv_bench on the LM head (32000
// x 1024 bf16, from DRAM) on one thread here: 1 to 4 rows now take about the time of one weight
// read; before, 4 rows without the prefetch took 2 to 3x as long, and 1 row walking one weight
// row at a time (one stream, as the AVX2 path does) about 1.2x as long. 8 rows (two blocks of 4
// over a tile in cache) take about 1.7x; blocks of 8 x 2, 8 x 3 or 6 x 4 measured slower.
template <dtype WT>
HELIX_TARGET_AVX512 void tile_avx512(const gemm_job& job, std::int64_t r_begin, std::int64_t r_end,
                                     std::int64_t c_begin, std::int64_t c_end) {
  std::int64_t r = r_begin;
  for (; r + 4 <= r_end; r += 4) columns_avx512<WT, 4, avx512_cols>(job, r, c_begin, c_end);
  switch (r_end - r) {
    case 3:
      columns_avx512<WT, 3, avx512_cols>(job, r, c_begin, c_end);
      break;
    case 2:
      columns_avx512<WT, 2, avx512_cols>(job, r, c_begin, c_end);
      break;
    case 1:
      columns_avx512<WT, 1, avx512_cols>(job, r, c_begin, c_end);
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
  if constexpr (WT == dtype::fp8_e4m3) {  // its own kernels and order (gemm_fp8.cpp)
    gemm_fp8_tile({&p, job.x_stride, job.y_stride, r_begin, r_end, c_begin, c_end}, job.fp8);
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

}  // namespace

namespace {

// One gemm's job and the function that runs one of its tiles.
struct planned_gemm {
  gemm_job job;
  void (*run)(const gemm_job&, std::int64_t) = nullptr;
  std::int64_t num_tasks = 0;
};

expected<planned_gemm> plan(const gemm_params& p, simd::isa isa, simd::isa_ext ext) {
  planned_gemm g;
  gemm_job& job = g.job;
  job.p = &p;
  job.x_stride = p.x_stride == 0 ? p.k : p.x_stride;
  job.y_stride = p.y_stride == 0 ? p.n : p.y_stride;
  job.num_row_tiles = (p.m + row_tile - 1) / row_tile;
  if (isa == simd::isa::avx512 && have_avx512()) {
    job.isa = simd::isa::avx512;
  } else if (isa != simd::isa::scalar && have_avx2()) {
    job.isa = simd::isa::avx2;
  }
  g.num_tasks = (p.n + col_tile - 1) / col_tile * job.num_row_tiles;
  switch (p.w_type) {
    case dtype::f32:
      g.run = &run_tile<dtype::f32>;
      return g;
    case dtype::bf16:
      g.run = &run_tile<dtype::bf16>;
      return g;
    case dtype::f16:
      g.run = &run_tile<dtype::f16>;
      return g;
    case dtype::fp8_e4m3:
      job.fp8 = choose_fp8_path(p, job.isa, ext);
      g.run = &run_tile<dtype::fp8_e4m3>;
      return g;
  }
  return failed_precondition("gemm: weight dtype {} is not supported by the cpu backend",
                             dtype_name(p.w_type));
}

}  // namespace

/// Test seam: gemm on a given instruction set and extensions (clamped to what the CPU supports).
/// Every path must give the same bits.
status gemm_with_isa(const gemm_params& p, thread_pool* pool, simd::isa isa, simd::isa_ext ext) {
  HELIX_ASSIGN_OR_RETURN(const planned_gemm g, plan(p, isa, ext));
  parallel_for(pool, g.num_tasks, [&g](std::int64_t t) { g.run(g.job, t); });
  return ok_status();
}

status gemm(const gemm_params& p, thread_pool* pool) {
  return gemm_with_isa(p, pool, simd::isa::avx512, simd::isa_ext::vbmi);
}

status gemm_group(std::span<const gemm_params> ps, thread_pool* pool) {
  constexpr std::size_t max_group = 8;
  if (ps.size() > max_group) {
    return invalid_argument("gemm_group: {} gemms; at most {} in one group", ps.size(), max_group);
  }
  std::array<planned_gemm, max_group> gs;
  std::array<std::int64_t, max_group + 1> first{};  // first task of each gemm
  for (std::size_t i = 0; i < ps.size(); ++i) {
    HELIX_ASSIGN_OR_RETURN(gs[i], plan(ps[i], simd::isa::avx512, simd::isa_ext::vbmi));
    first[i + 1] = first[i] + gs[i].num_tasks;
  }
  const std::size_t n = ps.size();
  parallel_for(pool, first[n], [&gs, &first, n](std::int64_t t) {
    std::size_t i = 0;
    while (i + 1 < n && t >= first[i + 1]) ++i;
    gs[i].run(gs[i].job, t - first[i]);
  });
  return ok_status();
}

}  // namespace helix::kernels::cpu
