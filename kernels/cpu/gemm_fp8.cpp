// Optimised CPU GEMV/GEMM with block-scaled FP8 (e4m3) weights: y[m, n] (+)= sum_k x[m, k] *
// W[n, k] with W[c, kk] = e4m3(w[c, kk]) x scale(c, block of kk) (gemm.hpp). gemm_opt.cpp splits
// the work into tiles and calls gemm_fp8_tile for each.
//
// Canonical order (the same on every path, batch size, thread count and instruction set, so all
// give the same bits). Element kk goes to lane kk % 16 of half (kk / 16) % 2: 32 lanes. Within one
// scale block the unscaled products x * e4m3 (e4m3 converted exactly to f32) are summed with
// fused multiply-adds into 32 block lanes that start at +0, in increasing kk; the last chunk of
// 16 columns is zero-padded (fma(0, 0, a)). When a block ends (or the row does), its lanes are
// folded into 32 running lanes, run = fma(block, scale, run). At the end the two halves are added
// lane by lane, then the 16-lane tree of gemm_tiles.hpp.
//
// Why this order: a one-row GEMV is compute-bound on the conversion and the floating-point work.
// Scaling each weight before its FMA (the dequantized-weight order) costs a multiply per 16
// weights, as much as the FMA itself; folding the scale once per block of 128 columns leaves
// 8 + 2 operations per 128 weights instead of 16. Summing a block before scaling rounds
// differently from summing scaled weights, by rounding only (the tests bound it). Two halves
// (rather than one 16-lane chain) keep two FMA chains per row; the chains of successive blocks
// are independent until their fold, so out-of-order execution overlaps them.
//
// Paths: with AVX512_VBMI, 64 codes at a time go through 128-entry byte tables
// (simd::fp8x64_to_f32, about 2.5 operations per 16 weights), for blocks and phases in whole
// 64-column spans (HF's 128-column blocks, cut at multiples of 64); AVX-512 without it and AVX2
// convert through F16C (exact8 / exact16: exact, but NaN codes read as +-480); the scalar path
// uses to_f32. The vector paths need scale blocks and their phase in multiples of 16 columns (so
// a chunk of 16 never straddles two blocks); other layouts run the scalar path.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.hpp"
#include "kernels/cpu/gemm_tiles.hpp"
#include "kernels/cpu/simd.hpp"

namespace helix::kernels::cpu {

namespace {

constexpr std::int64_t lanes = gemm_lanes;
constexpr int halves = 2;
constexpr std::int64_t fp8_lanes = halves * lanes;  // lanes of one sum
// Floats of one row's state between k blocks: the running lanes, then the block lanes.
constexpr std::int64_t state_floats = 2 * fp8_lanes;
// k block for the vector paths: state is stored and reloaded between blocks (exact), which
// keeps a batch's rows of x in L1 while a tile's columns read them.
constexpr std::int64_t k_block = 1024;

// The scale blocks of 16-column chunks walked upwards from k_begin. scale(c) is weight row c's
// scale for the current block.
struct scale_walk {
  const gemm_params* p = nullptr;
  std::int64_t idx = 0;   // the current block
  std::int64_t edge = 0;  // the first column of the next block
  scale_walk(const gemm_params& params, std::int64_t k_begin) : p(&params) {
    // A row's first k block starts in block 0 (the phase is below w_block_k): no division.
    idx = k_begin == 0 ? 0 : (k_begin + p->w_scale_phase) / p->w_block_k;
    edge = (idx + 1) * p->w_block_k - p->w_scale_phase;
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
    return p->w_scales[c * p->w_scale_stride + idx];
  }
};

// Whether a k block that starts at k_begin continues a scale block whose lanes are in the state.
bool block_open(const gemm_params& p, std::int64_t k_begin, bool first) {
  return !first && (k_begin + p.w_scale_phase) % p.w_block_k != 0;
}

// ---- Portable path: the definition of the order. ----

void fold_scalar(float* run, float* blk, float scale) {
  for (std::int64_t i = 0; i < fp8_lanes; ++i) {
    run[i] = std::fma(blk[i], scale, run[i]);
    blk[i] = 0.0f;
  }
}

void tile_scalar(const fp8_tile& t) {
  const gemm_params& p = *t.p;
  const auto* w = static_cast<const fp8_e4m3_t*>(p.w);
  const std::int64_t k_pad = (p.k + lanes - 1) / lanes * lanes;
  for (std::int64_t r = t.r_begin; r < t.r_end; ++r) {
    const float* x = p.x + r * t.x_stride;
    for (std::int64_t c = t.c_begin; c < t.c_end; ++c) {
      const fp8_e4m3_t* wr = w + c * p.k;
      const float* scales = p.w_scales + c * p.w_scale_stride;
      float run[fp8_lanes] = {};
      float blk[fp8_lanes] = {};
      std::int64_t block = p.w_scale_phase / p.w_block_k;
      for (std::int64_t kk = 0; kk < k_pad; ++kk) {
        const bool real = kk < p.k;  // the padding belongs to the last block
        if (real && (kk + p.w_scale_phase) / p.w_block_k != block) {
          fold_scalar(run, blk, scales[block]);
          block = (kk + p.w_scale_phase) / p.w_block_k;
        }
        float& a = blk[kk % fp8_lanes];  // = ((kk / 16) % 2) * 16 + kk % 16
        a = std::fma(real ? x[kk] : 0.0f, real ? to_f32(wr[kk]) : 0.0f, a);
      }
      fold_scalar(run, blk, scales[block]);
      float v[lanes];
      for (std::int64_t l = 0; l < lanes; ++l) v[l] = run[l] + run[lanes + l];
      store_result(p, p.y + r * t.y_stride + c, reduce_lanes_scalar(v));
    }
  }
}

#if HELIX_SIMD_X86

// ---- AVX2 + FMA + F16C: one row at a time, a half is two ymm (lanes 0..7, 8..15). ----

// e4m3 -> exact f32 through F16C: sign-extended and shifted by 7, the sign lands on bits 15 and
// 14 and eeee.mmm on 13..7; clearing bit 14 leaves the f16 of value / 256 (subnormals included),
// and x 256 is exact. Three integer operations where simd::load8_div256 spends seven to also
// turn the NaN codes (0x7f, 0xff) into NaN: these paths read them as +-480 (x scale), the
// scalar and VBMI paths as NaN. NaN is not a weight a quantizer writes.
HELIX_SIMD_AVX2 inline __m256 exact8(const fp8_e4m3_t* w) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w));
  const __m128i h = _mm_and_si128(_mm_slli_epi16(_mm_cvtepi8_epi16(b), 7),
                                  _mm_set1_epi16(static_cast<short>(0xbfff)));
  return _mm256_mul_ps(_mm256_cvtph_ps(h), _mm256_set1_ps(256.0f));
}

// acc[0..3]: running lanes (half 0 lo, hi, half 1 lo, hi); acc[4..7]: block lanes.
HELIX_SIMD_AVX2 inline void fold_avx2(__m256 (&acc)[8], float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  for (int i = 0; i < 4; ++i) {
    acc[i] = _mm256_fmadd_ps(acc[4 + i], s, acc[i]);
    acc[4 + i] = _mm256_setzero_ps();
  }
}

// Row r0 times weight row col over the chunks [k_begin, k_end); state [state_floats].
HELIX_SIMD_AVX2 void micro_avx2(const fp8_tile& t, std::int64_t r0, std::int64_t col,
                                std::int64_t k_begin, std::int64_t k_end, bool first, bool last,
                                float* state) {
  const gemm_params& p = *t.p;
  const float* x = p.x + r0 * t.x_stride;
  const auto* w = static_cast<const fp8_e4m3_t*>(p.w) + col * p.k;
  __m256 acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(state + 8 * i);
  scale_walk walk(p, k_begin);
  bool open = block_open(p, k_begin, first);
  for (std::int64_t kk = k_begin; kk < k_end;) {
    const std::int64_t stop = walk.run_end(kk, k_end);
    for (; kk < stop; kk += lanes) {
      const int j = 4 + static_cast<int>((kk / lanes) % halves) * 2;
      acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk), exact8(w + kk), acc[j]);
      acc[j + 1] = _mm256_fmadd_ps(_mm256_loadu_ps(x + kk + 8), exact8(w + kk + 8), acc[j + 1]);
    }
    open = stop != walk.edge;
    if (!open) fold_avx2(acc, walk.scale(col));
  }
  if (!last) {
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(state + 8 * i, acc[i]);
    return;
  }
  const std::int64_t k_full = p.k - p.k % lanes;
  if (k_full < p.k) {  // the zero-padded last chunk
    walk.run_end(k_full, p.k);
    alignas(32) float xt[lanes] = {};
    alignas(32) float wt[lanes] = {};
    for (std::int64_t i = 0; i < p.k - k_full; ++i) {
      xt[i] = x[k_full + i];
      wt[i] = to_f32(w[k_full + i]);
    }
    const int j = 4 + static_cast<int>((k_full / lanes) % halves) * 2;
    acc[j] = _mm256_fmadd_ps(_mm256_load_ps(xt), _mm256_load_ps(wt), acc[j]);
    acc[j + 1] = _mm256_fmadd_ps(_mm256_load_ps(xt + 8), _mm256_load_ps(wt + 8), acc[j + 1]);
    open = true;
  }
  if (open) fold_avx2(acc, walk.scale(col));
  const float v = reduce_lanes_avx2(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
  store_result(p, p.y + r0 * t.y_stride + col, v);
}

HELIX_SIMD_AVX2 void tile_avx2(const fp8_tile& t) {
  const std::int64_t k_full = t.p->k - t.p->k % lanes;
  alignas(32) float state[state_floats] = {};
  for (std::int64_t r = t.r_begin; r < t.r_end; ++r) {
    for (std::int64_t c = t.c_begin; c < t.c_end; ++c) {
      for (std::int64_t k0 = 0; k0 == 0 || k0 < k_full; k0 += k_block) {
        const std::int64_t k1 = std::min(k_full, k0 + k_block);
        micro_avx2(t, r, c, k0, k1, k0 == 0, k1 == k_full, state);
      }
    }
  }
}

// ---- AVX-512: R rows times one weight row; a half is one zmm. ----
// run[r][h] / blk[r][h]: row r's running / block lanes of half h; state [R][state_floats].

template <int R>
struct rows512 {
  const float* x[R];
  __m512 run[R][halves];
  __m512 blk[R][halves];
};

template <int R>
HELIX_SIMD_AVX512 inline void begin512(rows512<R>& a, const fp8_tile& t, std::int64_t r0,
                                       bool first, const float* state) {
  for (int r = 0; r < R; ++r) {
    a.x[r] = t.p->x + (r0 + r) * t.x_stride;
    for (int h = 0; h < halves; ++h) {
      const float* s = state + r * state_floats + h * lanes;
      a.run[r][h] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(s);
      a.blk[r][h] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(s + fp8_lanes);
    }
  }
}

template <int R>
HELIX_SIMD_AVX512 inline void save512(const rows512<R>& a, float* state) {
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < halves; ++h) {
      float* s = state + r * state_floats + h * lanes;
      _mm512_storeu_ps(s, a.run[r][h]);
      _mm512_storeu_ps(s + fp8_lanes, a.blk[r][h]);
    }
  }
}

template <int R>
HELIX_SIMD_AVX512 inline void fold512(rows512<R>& a, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r) {
    for (int h = 0; h < halves; ++h) {
      a.run[r][h] = _mm512_fmadd_ps(a.blk[r][h], s, a.run[r][h]);
      a.blk[r][h] = _mm512_setzero_ps();
    }
  }
}

// A chunk of weights `wv` (exact values) at column kk into the block lanes of half H (the
// half index is a template argument so that the lanes stay in registers).
template <int H, int R>
HELIX_SIMD_AVX512 inline void chunk512(rows512<R>& a, std::int64_t kk, __m512 wv) {
  for (int r = 0; r < R; ++r) {
    a.blk[r][H] = _mm512_fmadd_ps(_mm512_loadu_ps(a.x[r] + kk), wv, a.blk[r][H]);
  }
}

// The zero-padded last chunk at k_full (rest = k - k_full columns), converted exactly.
template <int R>
HELIX_SIMD_AVX512 inline void tail512(rows512<R>& a, std::int64_t k_full, std::int64_t rest,
                                      __m512 wv) {
  const __mmask16 m = simd::tail_mask16(rest);
  const int h = static_cast<int>((k_full / lanes) % halves);
  for (int r = 0; r < R; ++r) {
    const __m512 xv = _mm512_maskz_loadu_ps(m, a.x[r] + k_full);
    if (h == 0) {
      a.blk[r][0] = _mm512_fmadd_ps(xv, wv, a.blk[r][0]);
    } else {
      a.blk[r][1] = _mm512_fmadd_ps(xv, wv, a.blk[r][1]);
    }
  }
}

template <int R>
HELIX_SIMD_AVX512 inline void finish512(const rows512<R>& a, const fp8_tile& t, std::int64_t r0,
                                        std::int64_t col) {
  for (int r = 0; r < R; ++r) {
    const float v = reduce_lanes_avx512(_mm512_add_ps(a.run[r][0], a.run[r][1]));
    store_result(*t.p, t.p->y + (r0 + r) * t.y_stride + col, v);
  }
}

// As exact8 (NaN codes read as +-480).
HELIX_SIMD_AVX512 inline __m512 exact16(__m128i b) {
  const __m256i h = _mm256_and_si256(_mm256_slli_epi16(_mm256_cvtepi8_epi16(b), 7),
                                     _mm256_set1_epi16(static_cast<short>(0xbfff)));
  return _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.0f));
}
HELIX_SIMD_AVX512 inline __m512 exact16(const fp8_e4m3_t* w) {
  return exact16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
}

// AVX-512 F/BW/VL/DQ only: a chunk of 16 at a time through F16C.
template <int R>
HELIX_SIMD_AVX512 void micro512(const fp8_tile& t, std::int64_t r0, std::int64_t col,
                                std::int64_t k_begin, std::int64_t k_end, bool first, bool last,
                                float* state) {
  const gemm_params& p = *t.p;
  const auto* w = static_cast<const fp8_e4m3_t*>(p.w) + col * p.k;
  rows512<R> a;
  begin512(a, t, r0, first, state);
  scale_walk walk(p, k_begin);
  bool open = block_open(p, k_begin, first);
  for (std::int64_t kk = k_begin; kk < k_end;) {
    const std::int64_t stop = walk.run_end(kk, k_end);
    if ((kk / lanes) % halves != 0) {
      chunk512<1>(a, kk, exact16(w + kk));
      kk += lanes;
    }
    for (; kk + 2 * lanes <= stop; kk += 2 * lanes) {
      chunk512<0>(a, kk, exact16(w + kk));
      chunk512<1>(a, kk + lanes, exact16(w + kk + lanes));
    }
    if (kk < stop) {
      chunk512<0>(a, kk, exact16(w + kk));
      kk += lanes;
    }
    open = stop != walk.edge;
    if (!open) fold512(a, walk.scale(col));
  }
  if (!last) {
    save512(a, state);
    return;
  }
  const std::int64_t k_full = p.k - p.k % lanes;
  if (k_full < p.k) {
    walk.run_end(k_full, p.k);
    const std::int64_t rest = p.k - k_full;
    tail512(a, k_full, rest, exact16(_mm_maskz_loadu_epi8(simd::tail_mask16(rest), w + k_full)));
    open = true;
  }
  if (open) fold512(a, walk.scale(col));
  finish512(a, t, r0, col);
}

// N chunks (1..4) from kk (kk / 16 even: the first goes to half 0) through the byte tables.
template <int R, int N>
HELIX_SIMD_AVX512_VBMI inline void chunks_vbmi(rows512<R>& a, const fp8_e4m3_t* w,
                                               std::int64_t kk) {
  const __m512i codes = N == 4 ? _mm512_loadu_si512(w + kk)
                               : _mm512_maskz_loadu_epi8((__mmask64{1} << (16 * N)) - 1, w + kk);
  __m512 wv[4];
  simd::fp8x64_to_f32(codes, wv);
  chunk512<0>(a, kk, wv[0]);
  if constexpr (N >= 2) chunk512<1>(a, kk + lanes, wv[1]);
  if constexpr (N >= 3) chunk512<0>(a, kk + 2 * lanes, wv[2]);
  if constexpr (N >= 4) chunk512<1>(a, kk + 3 * lanes, wv[3]);
}

// AVX512_VBMI: 64 weights per conversion. Only for blocks and a phase in whole 64-column spans
// (choose_fp8_path; other layouts take micro512, which gives the same bits), so a k block is
// whole blocks of spans, then at most one block's first spans and 1 to 3 chunks. The loop is
// kept that simple on purpose: with a per-run loop as in micro512 GCC kept the lanes of 4 rows
// in memory (a third slower), and the bookkeeping cost a third of the rate at one row.
template <int R>
HELIX_SIMD_AVX512_VBMI void micro_vbmi(const fp8_tile& t, std::int64_t r0, std::int64_t col,
                                       std::int64_t k_begin, std::int64_t k_end, bool first,
                                       bool last, float* state) {
  const gemm_params& p = *t.p;
  const auto* w = static_cast<const fp8_e4m3_t*>(p.w) + col * p.k;
  rows512<R> a;
  begin512(a, t, r0, first, state);
  scale_walk walk(p, k_begin);
  bool open = block_open(p, k_begin, first);
  std::int64_t kk = k_begin;
  const std::int64_t spans_end = k_begin + (k_end - k_begin) / (4 * lanes) * (4 * lanes);
  while (walk.edge <= spans_end) {
    for (; kk < walk.edge; kk += 4 * lanes) chunks_vbmi<R, 4>(a, w, kk);
    fold512(a, walk.scale(col));
    ++walk.idx;
    walk.edge += p.w_block_k;
    open = false;
  }
  if (kk < k_end) {  // the first spans and chunks of a block that goes on past k_end
    for (; kk < spans_end; kk += 4 * lanes) chunks_vbmi<R, 4>(a, w, kk);
    switch ((k_end - kk) / lanes) {
      case 3:
        chunks_vbmi<R, 3>(a, w, kk);
        break;
      case 2:
        chunks_vbmi<R, 2>(a, w, kk);
        break;
      case 1:
        chunks_vbmi<R, 1>(a, w, kk);
        break;
      default:
        break;
    }
    open = true;
  }
  if (!last) {
    save512(a, state);
    return;
  }
  const std::int64_t k_full = p.k - p.k % lanes;
  if (k_full < p.k) {
    walk.run_end(k_full, p.k);
    const std::int64_t rest = p.k - k_full;
    __m512 wv[4];
    simd::fp8x64_to_f32(_mm512_maskz_loadu_epi8((__mmask64{1} << rest) - 1, w + k_full), wv);
    tail512(a, k_full, rest, wv[0]);
    open = true;
  }
  if (open) fold512(a, walk.scale(col));
  finish512(a, t, r0, col);
}

template <int R, bool Vbmi>
void columns512(const fp8_tile& t, std::int64_t r0) {
  const std::int64_t k_full = t.p->k - t.p->k % lanes;
  alignas(64) float state[R * state_floats] = {};
  for (std::int64_t c = t.c_begin; c < t.c_end; ++c) {
    for (std::int64_t k0 = 0; k0 == 0 || k0 < k_full; k0 += k_block) {
      const std::int64_t k1 = std::min(k_full, k0 + k_block);
      if constexpr (Vbmi) {
        micro_vbmi<R>(t, r0, c, k0, k1, k0 == 0, k1 == k_full, state);
      } else {
        micro512<R>(t, r0, c, k0, k1, k0 == 0, k1 == k_full, state);
      }
    }
  }
}

template <bool Vbmi>
void tile512(const fp8_tile& t) {
  std::int64_t r = t.r_begin;
  for (; r + 4 <= t.r_end; r += 4) columns512<4, Vbmi>(t, r);
  switch (t.r_end - r) {
    case 3:
      columns512<3, Vbmi>(t, r);
      break;
    case 2:
      columns512<2, Vbmi>(t, r);
      break;
    case 1:
      columns512<1, Vbmi>(t, r);
      break;
    default:
      break;
  }
}

#endif  // HELIX_SIMD_X86

}  // namespace

fp8_path choose_fp8_path(const gemm_params& p, simd::isa isa, simd::isa_ext ext) {
  if (p.w_block_k % lanes != 0 || p.w_scale_phase % lanes != 0) return fp8_path::scalar;
  switch (isa) {
    case simd::isa::avx512:
      // The VBMI kernel walks whole 64-column spans of a block (micro_vbmi).
      return ext == simd::isa_ext::vbmi && simd::cpu_has_avx512_vbmi() &&
                     p.w_block_k % (4 * lanes) == 0 && p.w_scale_phase % (4 * lanes) == 0
                 ? fp8_path::avx512_vbmi
                 : fp8_path::avx512;
    case simd::isa::avx2:
      return fp8_path::avx2;
    case simd::isa::scalar:
      break;
  }
  return fp8_path::scalar;
}

void gemm_fp8_tile(const fp8_tile& t, fp8_path path) {
  switch (path) {
#if HELIX_SIMD_X86
    case fp8_path::avx512_vbmi:
      tile512<true>(t);
      return;
    case fp8_path::avx512:
      tile512<false>(t);
      return;
    case fp8_path::avx2:
      tile_avx2(t);
      return;
#else
    case fp8_path::avx512_vbmi:
    case fp8_path::avx512:
    case fp8_path::avx2:
#endif
    case fp8_path::scalar:
      break;
  }
  tile_scalar(t);
}

}  // namespace helix::kernels::cpu
