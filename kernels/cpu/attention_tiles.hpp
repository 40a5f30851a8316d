// Internal to the optimised CPU attention (kernels/cpu/attention_opt.cpp): the tile arguments,
// the online-softmax state and the engine table it shares with the FP8 engine of
// attention_fp8.cpp (AVX512_VBMI byte tables). See attention_opt.cpp for the design.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cpu/simd.hpp"

// A namespace of its own: these names are shared by two files only.
namespace helix::kernels::cpu::attention_detail {

constexpr std::int64_t sub_tokens = 16;  // tokens whose scores are computed together
constexpr int max_tile_heads = 4;
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

struct tile_args {
  const float* q[max_tile_heads];  // query rows of the tile's heads [key_dim]
  float* o[max_tile_heads];        // output accumulators [value_dim]
  std::int64_t key_dim = 0;
  std::int64_t value_dim = 0;
  std::int64_t v_stride = 0;  // elements between consecutive tokens' values
  float score_scale = 1.0f;   // softmax_scale * k_scale * engine load_scale
  // The same rows of the next block (null: none): prefetched line by line as the current rows
  // are consumed, so the next block arrives while this one is computed.
  const char* next_k = nullptr;
  const char* next_v = nullptr;
};

// Software prefetch of the next block, into L2 (prefetcht1): the block ahead is ~16 KiB, too far
// for L1 without evicting the current one. Each line the kernel will read is requested once, as
// the same line of the current block is consumed. Measured on Zen 4 at 256K tokens, one thread:
// +30% over hardware prefetch alone; whole-block bursts or prefetcht0 were slower than none.
inline void prefetch_next(const char* p) {
  __builtin_prefetch(p, 0, 2);
}

// Online softmax state of a tile's heads. `m` is a reference point, not necessarily the exact
// running max: scores may exceed it by up to max_slack before the accumulator is rescaled, so a
// block needs one compare instead of a horizontal max (e^8 ~ 3e3: no overflow of weights or
// sums). lse = m + log(l) is exact for any reference point. `l` is kept as 16 partial sums (one
// per score lane, summed in a fixed order at the end) so that no block needs a horizontal add.
constexpr float max_slack = 8.0f;

struct tile_state {
  float m[max_tile_heads];              // reference point (-inf: no key yet)
  float l[max_tile_heads][sub_tokens];  // partial sums of exp(score - m)

  [[nodiscard]] float sum(int h) const {
    float total = 0.0f;
    for (float x : l[h]) total += x;
    return total;
  }
};

// Moves head h's reference point up to `m_new`, rescaling its sums and accumulator.
inline void raise_max(const tile_args& a, tile_state& st, int h, float m_new) {
  if (st.m[h] != neg_inf) {
    const float alpha = std::exp(st.m[h] - m_new);
    for (float& x : st.l[h]) x *= alpha;
    for (std::int64_t d = 0; d < a.value_dim; ++d) a.o[h][d] *= alpha;
  }
  st.m[h] = m_new;
}

#if HELIX_SIMD_X86
// The softmax step after the raw dot products s[h][t] (t < nt) of an AVX-512 engine: scale,
// raise the reference point when a score passes it by max_slack, add exp(score - m) to l and
// leave the weights in s.
template <int NH>
HELIX_SIMD_AVX512 inline void softmax_update512(const tile_args& a, std::int64_t nt, tile_state& st,
                                                float (&s)[NH][sub_tokens]) {
  const __mmask16 valid = simd::tail_mask16(nt);
  const __m512 scale = _mm512_set1_ps(a.score_scale);
#pragma GCC unroll 4
  for (int h = 0; h < NH; ++h) {
    const __m512 sv =
        _mm512_mask_mul_ps(_mm512_set1_ps(neg_inf), valid, _mm512_loadu_ps(s[h]), scale);
    // -inf + slack stays -inf, so the first visible key always takes this branch.
    if (_mm512_cmp_ps_mask(sv, _mm512_set1_ps(st.m[h] + max_slack), _CMP_GT_OQ) != 0) {
      raise_max(a, st, h, _mm512_reduce_max_ps(sv));
    }
    const __m512 e = simd::exp16(_mm512_sub_ps(sv, _mm512_set1_ps(st.m[h])));
    _mm512_storeu_ps(st.l[h], _mm512_add_ps(_mm512_loadu_ps(st.l[h]), e));
    _mm512_storeu_ps(s[h], e);
  }
}
#endif

template <class T>
using softmax_fn = void (*)(const tile_args&, const T*, std::int64_t, tile_state&, float*);
template <class T>
using values_fn = void (*)(const tile_args&, const float*, const T*, std::int64_t);

template <class T>
struct engine {
  softmax_fn<T> softmax[3];  // by tile width: 1, 2, 4 heads
  values_fn<T> values[3];
  float load_scale;  // the engine reads stored values / load_scale
  bool split;        // q and o in pair-split order within full 32-element groups
};

#if HELIX_SIMD_X86
/// The AVX-512 + AVX512_VBMI engine for fp8 KV (attention_fp8.cpp): exact values through the byte
/// tables (load_scale 1), natural order. Callers check cpu_has_avx512_vbmi().
[[nodiscard]] engine<fp8_e4m3_t> make_fp8_vbmi_engine();
#endif

}  // namespace helix::kernels::cpu::attention_detail
