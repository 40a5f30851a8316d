// Shared by the sharding and checkpoint tests: two ranks' weights compared field by field,
// tensors byte for byte (dtype, shape and FP8 block scales included).
#pragma once

#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "model/sharding.hpp"

namespace helix::test_support {

using model::mlp_shard;
using model::rank_layer_weights;
using model::rank_weights;

inline bool same_scales(const block_scales* a, const block_scales* b) {
  if (a == nullptr || b == nullptr) return a == b;
  return a->block_k == b->block_k && a->phase == b->phase && a->per_row == b->per_row &&
         a->row_scales == b->row_scales;
}

inline bool same_tensor(const tensor& a, const tensor& b) {
  return a.type() == b.type() && a.dims() == b.dims() && a.bytes() == b.bytes() &&
         (a.bytes() == 0 || std::memcmp(a.data(), b.data(), a.bytes()) == 0) &&
         same_scales(a.scales(), b.scales());
}

#define HELIX_EXPECT_SAME(a, b, what) EXPECT_TRUE(same_tensor(a, b)) << what

inline void expect_same_mlp(const mlp_shard& a, const mlp_shard& b, const std::string& what) {
  EXPECT_EQ(a.ffn, b.ffn) << what;
  HELIX_EXPECT_SAME(a.gate_proj, b.gate_proj, what + " gate_proj");
  HELIX_EXPECT_SAME(a.up_proj, b.up_proj, what + " up_proj");
  HELIX_EXPECT_SAME(a.down_proj, b.down_proj, what + " down_proj");
}

// Every field of two ranks' weights, tensors byte for byte (dtype and shape included).
inline void expect_same_rank_weights(const rank_weights& got, const rank_weights& want,
                                     const std::string& what) {
  EXPECT_EQ(got.rank, want.rank) << what;
  EXPECT_EQ(got.layout, want.layout) << what;
  EXPECT_EQ(got.spec.name, want.spec.name) << what;
  EXPECT_EQ(got.weight_type, want.weight_type) << what;
  EXPECT_EQ(got.vocab, want.vocab) << what;
  HELIX_EXPECT_SAME(got.embed, want.embed, what + " embed");
  HELIX_EXPECT_SAME(got.final_norm, want.final_norm, what + " final_norm");
  HELIX_EXPECT_SAME(got.lm_head, want.lm_head, what + " lm_head");
  ASSERT_EQ(got.layers.size(), want.layers.size()) << what;
  for (std::size_t i = 0; i < want.layers.size(); ++i) {
    const rank_layer_weights& g = got.layers[i];
    const rank_layer_weights& w = want.layers[i];
    const std::string at = fmt::format("{} layer {}", what, i);
    EXPECT_EQ(g.q_heads, w.q_heads) << at;
    EXPECT_EQ(g.kv_heads, w.kv_heads) << at;
    EXPECT_EQ(g.o_heads, w.o_heads) << at;
    EXPECT_EQ(g.has_ffn, w.has_ffn) << at;
    EXPECT_EQ(g.is_moe, w.is_moe) << at;
    for (const auto& [member, name] :
         std::vector<std::pair<tensor rank_layer_weights::*, const char*>>{
             {&rank_layer_weights::input_norm, "input_norm"},
             {&rank_layer_weights::post_attn_norm, "post_attn_norm"},
             {&rank_layer_weights::q_proj, "q_proj"},
             {&rank_layer_weights::k_proj, "k_proj"},
             {&rank_layer_weights::v_proj, "v_proj"},
             {&rank_layer_weights::o_proj, "o_proj"},
             {&rank_layer_weights::q_a_proj, "q_a_proj"},
             {&rank_layer_weights::q_a_norm, "q_a_norm"},
             {&rank_layer_weights::q_b_proj, "q_b_proj"},
             {&rank_layer_weights::kv_a_proj, "kv_a_proj"},
             {&rank_layer_weights::kv_a_norm, "kv_a_norm"},
             {&rank_layer_weights::w_uk, "w_uk"},
             {&rank_layer_weights::w_uv, "w_uv"},
             {&rank_layer_weights::router, "router"},
             {&rank_layer_weights::router_bias, "router_bias"}}) {
      HELIX_EXPECT_SAME(g.*member, w.*member, at + " " + name);
    }
    expect_same_mlp(g.mlp, w.mlp, at + " mlp");
    expect_same_mlp(g.shared, w.shared, at + " shared");
    ASSERT_EQ(g.experts.size(), w.experts.size()) << at;
    for (std::size_t x = 0; x < w.experts.size(); ++x) {
      EXPECT_EQ(g.experts[x].expert_idx, w.experts[x].expert_idx) << at;
      expect_same_mlp(g.experts[x].mlp, w.experts[x].mlp, fmt::format("{} expert {}", at, x));
    }
  }
}

#undef HELIX_EXPECT_SAME

}  // namespace helix::test_support
