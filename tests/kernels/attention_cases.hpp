// Test-only attention case machinery shared by tests/kernels/attention_test.cpp (CPU kernel vs
// reference) and tests/kernels/cuda/attention_cuda_test.cpp (CUDA kernel vs reference): a case's
// knobs, a paged KV fixture filled from core/rng.hpp, NaN-prefilled results, and the comparison
// (relative error on out and lse, -inf exactly where the reference has it). Each test keeps its
// own tolerances, sweeps and scatter pattern; this header only builds and compares.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "kernels/attention.hpp"

namespace helix::kernels::testing {

inline const exec_context reference_ctx{backend::reference, nullptr, nullptr};

// Uniform in [-1, 1), from the counter-based test rng.
inline float urand(std::uint64_t seed, std::uint64_t stream, std::uint64_t idx) {
  return 2.0f * random_uniform(seed, stream, 0, rng_purpose::test_data, idx) - 1.0f;
}

// Fisher-Yates with the counter-based rng; `idx` counts the draws.
template <class T>
void shuffle(std::vector<T>& v, std::uint64_t seed, std::uint64_t stream, std::uint64_t& idx) {
  for (std::size_t i = v.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(
        random_uniform(seed, stream, 0, rng_purpose::test_data, idx++) * static_cast<float>(i));
    std::swap(v[i - 1], v[std::min(j, i - 1)]);
  }
}

struct attn_case {
  std::int64_t key_dim = 64;
  std::int64_t value_dim = 64;
  bool mla = false;
  std::int64_t num_kv_heads = 1;
  std::int64_t num_q_heads = 1;
  dtype type = dtype::f32;
  std::int64_t block_tokens = 16;
  std::int64_t num_blocks = 5;
  std::int64_t num_queries = 1;
  bool causal = true;
  bool scattered = true;  // shuffled slots and order, gaps between positions, partial blocks
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  float q_amp = 3.0f;
  std::uint64_t seed = 1;
};

// How a scattered fixture lays out its blocks, and where its queries sit. Each test pins its own,
// so its cases keep the data they were tuned on.
struct scatter_pattern {
  std::int64_t spare_slot_divisor;  // num_blocks / divisor + 1 slots stay unused
  std::int64_t first_pos;           // position of the first key
  std::int64_t partial_every;       // block b is partly filled when b % every == at (and the last)
  std::int64_t partial_at;
  std::int64_t gap_parity;  // a gap (blocks other ranks hold) follows b when b % 2 == parity
  // Position of query i of n; `end` is the position after the last block and its gap.
  std::int64_t (*query_pos)(std::int64_t end, std::int64_t i, std::int64_t n);
};

// One request's KV on one rank, on the host: a page pool whose unused slots and unfilled token
// rows are NaN (0xff bytes in every dtype), blocks in arbitrary order, queries and positions.
struct paged_fixture {
  attn_case c;
  kv_page_layout layout;
  std::vector<std::byte> pool;
  std::vector<kv_block_ref> blocks;
  std::vector<float> q;
  std::vector<std::int64_t> query_pos;

  paged_fixture(const attn_case& cs, const scatter_pattern& sp) : c(cs) {
    layout.num_kv_heads = c.num_kv_heads;
    layout.key_dim = c.key_dim;
    layout.value_dim = c.value_dim;
    layout.block_tokens = c.block_tokens;
    layout.type = c.type;
    layout.value_in_key = c.mla;
    const std::int64_t num_slots =
        c.num_blocks + (c.scattered ? c.num_blocks / sp.spare_slot_divisor + 1 : 0);
    pool.assign(static_cast<std::size_t>(num_slots) * layout.page_bytes(), std::byte{0xff});
    std::vector<std::int32_t> slots(static_cast<std::size_t>(num_slots));
    std::iota(slots.begin(), slots.end(), 0);
    std::uint64_t idx = 0;
    if (c.scattered) shuffle(slots, c.seed, 7, idx);
    std::int64_t pos = c.scattered ? sp.first_pos : 0;
    for (std::int64_t b = 0; b < c.num_blocks; ++b) {
      kv_block_ref ref;
      ref.slot = slots[static_cast<std::size_t>(b)];
      ref.first_pos = pos;
      ref.num_tokens = static_cast<std::int32_t>(c.block_tokens);
      if (c.scattered && (b % sp.partial_every == sp.partial_at || b == c.num_blocks - 1)) {
        ref.num_tokens = 1 + static_cast<std::int32_t>(
                                 random_uniform(c.seed, 8, 0, rng_purpose::test_data, idx++) *
                                 static_cast<float>(c.block_tokens - 1));
      }
      pos += ref.num_tokens +
             (c.scattered && b % 2 == sp.gap_parity ? c.block_tokens * (1 + b % 3) : 0);
      blocks.push_back(ref);
      std::byte* page = pool.data() + static_cast<std::size_t>(ref.slot) * layout.page_bytes();
      for (std::int64_t h = 0; h < c.num_kv_heads; ++h) {
        for (std::int64_t t = 0; t < ref.num_tokens; ++t) {
          for (std::int64_t d = 0; d < c.key_dim; ++d) {
            store_from_f32(page, c.type, static_cast<std::size_t>(layout.key_offset(h, t) + d),
                           2.0f * urand(c.seed, 1, idx++));
          }
          if (c.mla) continue;
          for (std::int64_t d = 0; d < c.value_dim; ++d) {
            store_from_f32(page, c.type, static_cast<std::size_t>(layout.value_offset(h, t) + d),
                           2.0f * urand(c.seed, 2, idx++));
          }
        }
      }
    }
    if (c.scattered) shuffle(blocks, c.seed, 9, idx);
    q.resize(static_cast<std::size_t>(c.num_queries * c.num_q_heads * c.key_dim));
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = c.q_amp * urand(c.seed, 3, i);
    for (std::int64_t i = 0; i < c.num_queries; ++i) {
      query_pos.push_back(sp.query_pos(pos, i, c.num_queries));
    }
  }

  [[nodiscard]] attention_partial_params params(float* out = nullptr, float* lse = nullptr) const {
    attention_partial_params p;
    p.q = q.data();
    p.query_pos = query_pos.data();
    p.num_queries = c.num_queries;
    p.num_q_heads = c.num_q_heads;
    p.layout = layout;
    p.kv_pool = pool.data();
    p.blocks = blocks.empty() ? nullptr : blocks.data();
    p.num_blocks = static_cast<std::int64_t>(blocks.size());
    p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
    p.k_scale = c.k_scale;
    p.v_scale = c.v_scale;
    p.causal = c.causal;
    p.out = out;
    p.lse = lse;
    return p;
  }
  [[nodiscard]] std::size_t out_size() const {
    return static_cast<std::size_t>(c.num_queries * c.num_q_heads * c.value_dim);
  }
  [[nodiscard]] std::size_t lse_size() const {
    return static_cast<std::size_t>(c.num_queries * c.num_q_heads);
  }
};

struct attn_result {
  std::vector<float> out;
  std::vector<float> lse;
};

// Outputs sized for the fixture and filled with NaN, so a row a kernel skips shows.
inline attn_result nan_result(const paged_fixture& f) {
  attn_result r;
  r.out.assign(f.out_size(), std::numeric_limits<float>::quiet_NaN());
  r.lse.assign(f.lse_size(), std::numeric_limits<float>::quiet_NaN());
  return r;
}

struct diff {
  double out_rel = 0.0;
  double lse_rel = 0.0;
  bool inf_mismatch = false;
};

// out: max |got - ref| / max |ref| (out is a convex combination of values, so this is a relative
// error); lse: max |got - ref| / max(1, |ref|) over finite entries; any infinite lse must match
// exactly. NaN counts as a huge error.
inline diff compare(const attn_result& got, const attn_result& ref) {
  diff d;
  double max_ref = 0.0;
  for (float x : ref.out) max_ref = std::max(max_ref, std::fabs(static_cast<double>(x)));
  max_ref = std::max(max_ref, 1e-30);
  for (std::size_t i = 0; i < ref.out.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got.out[i]) - ref.out[i]);
    d.out_rel = std::max(d.out_rel, std::isnan(e) ? 1e30 : e / max_ref);
  }
  for (std::size_t i = 0; i < ref.lse.size(); ++i) {
    if (std::isinf(ref.lse[i]) || std::isinf(got.lse[i])) {
      d.inf_mismatch |= got.lse[i] != ref.lse[i];
      continue;
    }
    const double e = std::fabs(static_cast<double>(got.lse[i]) - ref.lse[i]) /
                     std::max(1.0, std::fabs(static_cast<double>(ref.lse[i])));
    d.lse_rel = std::max(d.lse_rel, std::isnan(e) ? 1e30 : e);
  }
  return d;
}

inline void expect_close(const attn_result& got, const attn_result& ref, double out_rel,
                         double lse_rel, const std::string& what) {
  const diff d = compare(got, ref);
  EXPECT_LE(d.out_rel, out_rel) << what;
  EXPECT_LE(d.lse_rel, lse_rel) << what;
  EXPECT_FALSE(d.inf_mismatch) << what << ": -inf lse in one result only";
}

}  // namespace helix::kernels::testing
