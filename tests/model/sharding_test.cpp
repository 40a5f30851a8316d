// Tests for model/sharding: every valid 2-, 4- and 8-worker layout of tiny-llama and tiny-deepseek
// is sharded on all ranks, and the shards must reassemble the full weights exactly (byte for byte)
// and give the full results when the partial products are summed. The o_proj reassembly in rank
// order pins the post-all-to-all head mapping (the wrong-o_proj-shards bug).
#include "model/sharding.hpp"
#include "tests/support/rank_weights.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace helix::model {
namespace {

model_weights seeded(const model_spec& spec, dtype t) {
  auto w = init_seeded_weights(spec, t, 1234);
  HELIX_CHECK(w.has_value(), "{}", w.error().to_string());
  return std::move(w).value();
}

model_weights seeded(const std::string& name, dtype t) {
  auto spec = builtin_model(name);
  HELIX_CHECK(spec.has_value(), "{}", spec.error().to_string());
  return seeded(*spec, t);
}

std::vector<std::int64_t> divisors(std::int64_t n) {
  std::vector<std::int64_t> d;
  for (std::int64_t i = 1; i <= n; ++i) {
    if (n % i == 0) d.push_back(i);
  }
  return d;
}

// Every layout string of every family on n ranks that parse() and validate() accept for spec.
std::vector<layout> valid_layouts(const model_spec& spec, std::int64_t n) {
  std::vector<std::string> texts = {fmt::format("tp:tp={}", n)};
  for (std::int64_t kvp : divisors(n)) {
    texts.push_back(fmt::format("medha:kvp={},tpa={}", kvp, n / kvp));
    for (std::int64_t ep : divisors(n)) {
      texts.push_back(fmt::format("helix:kvp={},tpa={},tpf={},ep={}", kvp, n / kvp, n / ep, ep));
    }
  }
  std::vector<layout> out;
  for (const std::string& t : texts) {
    auto l = layout::parse(t);
    if (l.has_value() && validate(*l, spec).ok()) out.push_back(*l);
  }
  return out;
}

bool contains_layout(const std::vector<layout>& ls, const std::string& text) {
  auto want = layout::parse(text);
  HELIX_CHECK(want.has_value(), "{}", text);
  return std::find(ls.begin(), ls.end(), *want) != ls.end();
}

std::vector<rank_weights> shard_all(const model_weights& w, const layout& l) {
  std::vector<rank_weights> out;
  for (std::int64_t r = 0; r < l.num_ranks; ++r) {
    auto s = shard_weights(w, l, r);
    HELIX_CHECK(s.has_value(), "{} rank {}: {}", l.to_string(), r, s.error().to_string());
    out.push_back(std::move(s).value());
  }
  return out;
}

std::size_t elem_bytes(const tensor& t) {
  return dtype_bytes(t.type());
}

// Row `row` of 2-D `t`, columns [c0, c0 + n), as raw bytes.
std::string row_bytes(const tensor& t, std::int64_t row, std::int64_t c0, std::int64_t n) {
  const std::size_t e = elem_bytes(t);
  const auto* base = static_cast<const char*>(t.data());
  return {base + static_cast<std::size_t>(row * t.dims()[1] + c0) * e,
          static_cast<std::size_t>(n) * e};
}

bool same_bytes(const tensor& a, const tensor& b) {
  return a.type() == b.type() && a.dims() == b.dims() &&
         (a.bytes() == 0 || std::memcmp(a.data(), b.data(), a.bytes()) == 0);
}

// Rows [r0, r0 + n) of `full` equal rows [s0, s0 + n) of `part` (same width).
void expect_rows(const tensor& full, std::int64_t r0, const tensor& part, std::int64_t s0,
                 std::int64_t n, const std::string& what) {
  ASSERT_EQ(full.dims()[1], part.dims()[1]) << what;
  ASSERT_LE(s0 + n, part.dims()[0]) << what;
  for (std::int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(row_bytes(full, r0 + i, 0, full.dims()[1]),
              row_bytes(part, s0 + i, 0, part.dims()[1]))
        << what << " row " << r0 + i;
  }
}

// Columns [c0, c0 + part.cols) of `full` equal `part`.
void expect_cols(const tensor& full, std::int64_t c0, const tensor& part, const std::string& what) {
  ASSERT_EQ(full.dims()[0], part.dims()[0]) << what;
  ASSERT_LE(c0 + part.dims()[1], full.dims()[1]) << what;
  for (std::int64_t i = 0; i < full.dims()[0]; ++i) {
    ASSERT_EQ(row_bytes(full, i, c0, part.dims()[1]), row_bytes(part, i, 0, part.dims()[1]))
        << what << " row " << i;
  }
}

// Slices (in the given order) partition [0, full size) contiguously and reassemble the MLP.
void expect_mlp_reassembles(const mlp_weights& full, const std::vector<const mlp_shard*>& parts,
                            const std::string& what) {
  std::int64_t next = 0;
  for (const mlp_shard* p : parts) {
    ASSERT_EQ(p->ffn.first, next) << what;
    ASSERT_EQ(p->gate_proj.dims()[0], p->ffn.count) << what;
    ASSERT_EQ(p->down_proj.dims()[1], p->ffn.count) << what;
    expect_rows(full.gate_proj, p->ffn.first, p->gate_proj, 0, p->ffn.count, what + " gate");
    expect_rows(full.up_proj, p->ffn.first, p->up_proj, 0, p->ffn.count, what + " up");
    expect_cols(full.down_proj, p->ffn.first, p->down_proj, what + " down");
    next = p->ffn.end();
  }
  EXPECT_EQ(next, full.gate_proj.dims()[0]) << what;
}

// y = W x for W [out, in], accumulated in double.
std::vector<double> matvec(const tensor& w, const std::vector<double>& x) {
  const std::int64_t out = w.dims()[0];
  const std::int64_t in = w.dims()[1];
  HELIX_CHECK(static_cast<std::int64_t>(x.size()) == in, "matvec size");
  std::vector<double> y(static_cast<std::size_t>(out), 0.0);
  for (std::int64_t o = 0; o < out; ++o) {
    double acc = 0.0;
    for (std::int64_t i = 0; i < in; ++i) {
      acc += static_cast<double>(
                 load_as_f32(w.data(), w.type(), static_cast<std::size_t>(o * in + i))) *
             x[static_cast<std::size_t>(i)];
    }
    y[static_cast<std::size_t>(o)] = acc;
  }
  return y;
}

std::vector<double> swiglu(const tensor& gate, const tensor& up, const tensor& down,
                           const std::vector<double>& x) {
  std::vector<double> g = matvec(gate, x);
  const std::vector<double> u = matvec(up, x);
  for (std::size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return matvec(down, g);
}

std::vector<double> test_vector(std::int64_t n, double phase) {
  std::vector<double> x(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) x[static_cast<std::size_t>(i)] = std::sin(0.731 * i + phase);
  return x;
}

// The sum over `parts` of the partial SwiGLU outputs equals the full MLP's output.
void expect_mlp_sums(const mlp_weights& full, const std::vector<const mlp_shard*>& parts,
                     std::int64_t hidden, const std::string& what) {
  const std::vector<double> x = test_vector(hidden, 0.3);
  const std::vector<double> want = swiglu(full.gate_proj, full.up_proj, full.down_proj, x);
  std::vector<double> got(want.size(), 0.0);
  for (const mlp_shard* p : parts) {
    const std::vector<double> y = swiglu(p->gate_proj, p->up_proj, p->down_proj, x);
    for (std::size_t i = 0; i < y.size(); ++i) got[i] += y[i];
  }
  for (std::size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-5) << what << " " << i;
}

// All the reassembly and numeric checks for one layout of one model.
void check_layout(const model_weights& w, const layout& l, bool numbers) {
  const model_spec& spec = w.spec;
  const std::string name = spec.name + " " + l.to_string();
  SCOPED_TRACE(name);
  const std::vector<rank_weights> shards = shard_all(w, l);
  const std::int64_t n = l.num_ranks;
  const std::int64_t dv = spec.attn_out_head_dim();

  // Vocabulary: rank-ordered contiguous shards of nearly equal size reassembling the LM head.
  std::int64_t next_v = 0;
  for (const rank_weights& s : shards) {
    EXPECT_EQ(s.weight_type, w.weight_type);
    EXPECT_TRUE(same_bytes(s.embed, w.embed));
    EXPECT_TRUE(same_bytes(s.final_norm, w.final_norm));
    ASSERT_EQ(s.vocab.first, next_v);
    EXPECT_TRUE(s.vocab.count == spec.vocab / n || s.vocab.count == spec.vocab / n + 1);
    expect_rows(w.lm_head_or_embed(), s.vocab.first, s.lm_head, 0, s.vocab.count, "lm_head");
    next_v = s.vocab.end();
  }
  EXPECT_EQ(next_v, spec.vocab);

  for (std::int64_t li = 0; li < spec.num_layers; ++li) {
    const layer_weights& fl = w.layers[static_cast<std::size_t>(li)];
    const auto layer = [&](std::int64_t r) -> const rank_layer_weights& {
      return shards[static_cast<std::size_t>(r)].layers[static_cast<std::size_t>(li)];
    };
    const std::string ln = fmt::format("layer {}", li);

    // o_proj: column slices in rank order are the whole o_proj; each is the rank's own heads.
    std::int64_t next_col = 0;
    for (std::int64_t r = 0; r < n; ++r) {
      const rank_layer_weights& rl = layer(r);
      EXPECT_TRUE(same_bytes(rl.input_norm, fl.input_norm));
      EXPECT_TRUE(same_bytes(rl.post_attn_norm, fl.post_attn_norm));
      ASSERT_EQ(rl.o_heads.first * dv, next_col) << ln << " rank " << r;
      ASSERT_EQ(rl.o_heads.count, spec.num_q_heads / n);
      expect_cols(fl.o_proj, next_col, rl.o_proj, ln + " o_proj");
      next_col += rl.o_proj.dims()[1];
      // The all-to-all only moves heads inside a KVP group: the heads a rank owns afterwards
      // must be among those its column projected.
      EXPECT_LE(rl.q_heads.first, rl.o_heads.first) << ln << " rank " << r;
      EXPECT_GE(rl.q_heads.end(), rl.o_heads.end()) << ln << " rank " << r;
    }
    EXPECT_EQ(next_col, fl.o_proj.dims()[1]) << ln;

    if (numbers) {
      // sum_r (head outputs of r) x (o_proj slice of r) == full projection.
      const std::vector<double> a = test_vector(spec.num_q_heads * dv, 1.1);
      const std::vector<double> want = matvec(fl.o_proj, a);
      std::vector<double> got(want.size(), 0.0);
      for (std::int64_t r = 0; r < n; ++r) {
        const index_range h = layer(r).o_heads;
        const std::vector<double> part(a.begin() + h.first * dv, a.begin() + h.end() * dv);
        const std::vector<double> y = matvec(layer(r).o_proj, part);
        for (std::size_t i = 0; i < y.size(); ++i) got[i] += y[i];
      }
      for (std::size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << ln;
    }

    if (spec.is_mla()) {
      const std::int64_t nope = spec.mla.qk_nope_head_dim;
      const std::int64_t v = spec.mla.v_head_dim;
      for (std::int64_t r = 0; r < n; ++r) {
        const rank_layer_weights& rl = layer(r);
        EXPECT_EQ(rl.kv_heads, (index_range{.first = 0, .count = 1}));
        // TPA = 1 (helix, medha): the whole query path and W_UK on every rank.
        if (l.family != layout_family::tp) {
          EXPECT_EQ(rl.q_heads, (index_range{.first = 0, .count = spec.num_q_heads}));
        }
        const std::int64_t qk = spec.mla.qk_head_dim();
        if (spec.mla.q_lora_rank > 0) {
          EXPECT_TRUE(same_bytes(rl.q_a_proj, fl.q_a_proj));
          EXPECT_TRUE(same_bytes(rl.q_a_norm, fl.q_a_norm));
          ASSERT_EQ(rl.q_b_proj.dims()[0], rl.q_heads.count * qk);
          expect_rows(fl.q_b_proj, rl.q_heads.first * qk, rl.q_b_proj, 0, rl.q_heads.count * qk,
                      ln + " q_b");
        } else {
          ASSERT_EQ(rl.q_proj.dims()[0], rl.q_heads.count * qk);
          expect_rows(fl.q_proj, rl.q_heads.first * qk, rl.q_proj, 0, rl.q_heads.count * qk,
                      ln + " q");
        }
        EXPECT_TRUE(same_bytes(rl.kv_a_proj, fl.kv_a_proj));
        EXPECT_TRUE(same_bytes(rl.kv_a_norm, fl.kv_a_norm));
        ASSERT_EQ(rl.w_uk.dims()[0], rl.q_heads.count * nope);
        for (std::int64_t j = 0; j < rl.q_heads.count; ++j) {
          const std::int64_t h = rl.q_heads.first + j;
          expect_rows(fl.kv_b_proj, h * (nope + v), rl.w_uk, j * nope, nope, ln + " w_uk");
        }
      }
      // W_UV slices in rank order are every head's W_UV rows, in head order.
      std::int64_t head = 0;
      for (std::int64_t r = 0; r < n; ++r) {
        const rank_layer_weights& rl = layer(r);
        ASSERT_EQ(rl.w_uv.dims()[0], rl.o_heads.count * v);
        for (std::int64_t j = 0; j < rl.o_heads.count; ++j, ++head) {
          expect_rows(fl.kv_b_proj, head * (nope + v) + nope, rl.w_uv, j * v, v, ln + " w_uv");
        }
      }
      EXPECT_EQ(head, spec.num_q_heads);
    } else {
      const std::int64_t d = spec.head_dim;
      const std::int64_t q_per_kv = spec.num_q_heads / spec.num_kv_heads;
      std::vector<int> q_seen(static_cast<std::size_t>(spec.num_q_heads), 0);
      for (std::int64_t r = 0; r < n; ++r) {
        const rank_layer_weights& rl = layer(r);
        expect_rows(fl.q_proj, rl.q_heads.first * d, rl.q_proj, 0, rl.q_heads.count * d, ln + " q");
        expect_rows(fl.k_proj, rl.kv_heads.first * d, rl.k_proj, 0, rl.kv_heads.count * d,
                    ln + " k");
        expect_rows(fl.v_proj, rl.kv_heads.first * d, rl.v_proj, 0, rl.kv_heads.count * d,
                    ln + " v");
        ASSERT_EQ(rl.q_proj.dims()[0], rl.q_heads.count * d);
        ASSERT_EQ(rl.k_proj.dims()[0], rl.kv_heads.count * d);
        // Every query head the rank projects has its GQA KV head on the rank (tp with N > K:
        // the duplicated head).
        for (std::int64_t h = rl.q_heads.first; h < rl.q_heads.end(); ++h) {
          EXPECT_TRUE(rl.kv_heads.contains(h / q_per_kv)) << ln << " rank " << r << " head " << h;
          if (l.attention_coords(r).kvp_idx == 0) ++q_seen[static_cast<std::size_t>(h)];
        }
        // Redundant projection: every KVP member of a column holds the same q/k/v.
        const std::int64_t first = l.kvp_group(l.attention_coords(r).tpa_idx).front();
        EXPECT_TRUE(same_bytes(rl.q_proj, layer(first).q_proj));
        EXPECT_TRUE(same_bytes(rl.k_proj, layer(first).k_proj));
        EXPECT_TRUE(same_bytes(rl.v_proj, layer(first).v_proj));
      }
      // The columns partition the query heads.
      for (int c : q_seen) EXPECT_EQ(c, 1) << ln;
    }

    // FFN: the ranks holding it, in FFN-slot order.
    std::vector<std::int64_t> holders;
    for (std::int64_t r = 0; r < n; ++r) {
      EXPECT_EQ(layer(r).has_ffn, l.in_ffn(r));
      if (layer(r).has_ffn) {
        holders.push_back(r);
      } else {
        EXPECT_EQ(layer(r).mlp.gate_proj.numel(), 0);
        EXPECT_TRUE(layer(r).experts.empty());
        EXPECT_EQ(layer(r).shared.gate_proj.numel(), 0);
      }
    }
    EXPECT_EQ(holders, l.ffn_ranks()) << ln;
    EXPECT_EQ(static_cast<std::int64_t>(holders.size()),
              l.family == layout_family::medha ? l.tpa : n);
    std::vector<const mlp_shard*> dense;
    std::vector<const mlp_shard*> shared;
    for (std::int64_t r : holders) {
      dense.push_back(&layer(r).mlp);
      shared.push_back(&layer(r).shared);
    }
    if (!spec.layer_is_moe(li)) {
      expect_mlp_reassembles(fl.mlp, dense, ln + " dense");
      if (numbers) expect_mlp_sums(fl.mlp, dense, spec.hidden, ln + " dense");
      continue;
    }
    for (std::int64_t r : holders) {
      EXPECT_TRUE(same_bytes(layer(r).router, fl.router));
      EXPECT_TRUE(same_bytes(layer(r).router_bias, fl.router_bias));
    }
    if (spec.moe.num_shared_experts > 0) {
      expect_mlp_reassembles(fl.shared, shared, ln + " shared");
      if (numbers) expect_mlp_sums(fl.shared, shared, spec.hidden, ln + " shared");
    }
    for (std::int64_t e = 0; e < spec.moe.num_experts; ++e) {
      std::vector<std::int64_t> owners;
      std::vector<const mlp_shard*> parts;
      for (std::int64_t r : holders) {
        for (const expert_shard& x : layer(r).experts) {
          if (x.expert_idx != e) continue;
          owners.push_back(r);
          parts.push_back(&x.mlp);
        }
      }
      ASSERT_FALSE(owners.empty()) << ln << " expert " << e;
      // Exactly one EP group holds it: the owners are that group's TPF ranks.
      EXPECT_EQ(owners, l.tpf_group(l.ffn_coords(owners.front()).ep_idx)) << ln << " expert " << e;
      const std::string en = fmt::format("{} expert {}", ln, e);
      expect_mlp_reassembles(fl.experts[static_cast<std::size_t>(e)], parts, en);
      if (numbers && e == spec.moe.num_experts - 1) {
        expect_mlp_sums(fl.experts[static_cast<std::size_t>(e)], parts, spec.hidden, en);
      }
    }
  }
}

TEST(SplitRange, UnevenPartsGiveTheFirstOnesTheExtra) {
  EXPECT_EQ(split_range(10, 4, 0), (index_range{.first = 0, .count = 3}));
  EXPECT_EQ(split_range(10, 4, 1), (index_range{.first = 3, .count = 3}));
  EXPECT_EQ(split_range(10, 4, 2), (index_range{.first = 6, .count = 2}));
  EXPECT_EQ(split_range(10, 4, 3), (index_range{.first = 8, .count = 2}));
  EXPECT_EQ(split_range(3, 4, 3), (index_range{.first = 3, .count = 0}));
}

TEST(Sharding, TinyLlamaEveryLayoutReassembles) {
  const model_weights w = seeded("tiny-llama", dtype::f32);
  const model_weights wb = seeded("tiny-llama", dtype::bf16);
  int checked = 0;
  for (std::int64_t n : {2, 4, 8}) {
    const std::vector<layout> ls = valid_layouts(w.spec, n);
    if (n == 8) {
      for (const char* t : {"helix:kvp=4,tpa=2", "helix:kvp=8,tpa=1", "tp:tp=8",
                            "medha:kvp=4,tpa=2", "medha:kvp=8,tpa=1"}) {
        EXPECT_TRUE(contains_layout(ls, t)) << t;
      }
    }
    for (const layout& l : ls) {
      check_layout(w, l, /*numbers=*/true);
      check_layout(wb, l, /*numbers=*/false);
      ++checked;
    }
  }
  EXPECT_GE(checked, 12);
}

TEST(Sharding, TinyDeepseekEveryLayoutReassembles) {
  const model_weights w = seeded("tiny-deepseek", dtype::f32);
  int checked = 0;
  for (std::int64_t n : {2, 4, 8}) {
    const std::vector<layout> ls = valid_layouts(w.spec, n);
    if (n == 8) {
      for (const char* t : {"helix:kvp=8,tpa=1,tpf=2,ep=4", "helix:kvp=8,tpa=1,tpf=1,ep=8",
                            "helix:kvp=8,tpa=1,tpf=8,ep=1", "medha:kvp=8,tpa=1"}) {
        EXPECT_TRUE(contains_layout(ls, t)) << t;
      }
    }
    for (const layout& l : ls) {
      check_layout(w, l, /*numbers=*/true);
      ++checked;
    }
  }
  EXPECT_GE(checked, 12);
}

// Sizes that do not divide: F, vocab and expert_ffn give the first parts one extra row.
TEST(Sharding, UnevenSplitsReassemble) {
  model_spec llama = *builtin_model("tiny-llama");
  llama.ffn = 100;
  llama.vocab = 251;
  const model_weights w = seeded(llama, dtype::f32);
  for (const char* t : {"helix:kvp=4,tpa=2", "tp:tp=8", "medha:kvp=2,tpa=2"}) {
    check_layout(w, *layout::parse(t), /*numbers=*/true);
  }
  auto s = shard_weights(w, *layout::parse("helix:kvp=4,tpa=2"), 3);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->vocab, (index_range{.first = 3 * 31 + 3, .count = 31}));
  EXPECT_EQ(s->layers[0].mlp.ffn, (index_range{.first = 3 * 13, .count = 13}));

  model_spec ds = *builtin_model("tiny-deepseek");
  ds.moe.expert_ffn = 30;
  ds.ffn = 90;
  ds.vocab = 250;
  const model_weights wd = seeded(ds, dtype::f32);
  for (const char* t : {"helix:kvp=8,tpa=1,tpf=4,ep=2", "helix:kvp=4,tpa=1,tpf=4,ep=1"}) {
    check_layout(wd, *layout::parse(t), /*numbers=*/true);
  }
}

// MLA without q_lora (DeepSeek-V2-Lite style): q_proj straight from hidden.
TEST(Sharding, MlaWithoutQLora) {
  model_spec ds = *builtin_model("tiny-deepseek");
  ds.mla.q_lora_rank = 0;
  const model_weights w = seeded(ds, dtype::f32);
  ASSERT_GT(w.layers[0].q_proj.numel(), 0);
  for (const char* t : {"helix:kvp=4,tpa=1,tpf=2,ep=2", "tp:tp=4", "medha:kvp=2,tpa=1"}) {
    check_layout(w, *layout::parse(t), /*numbers=*/true);
  }
}

// The example of core/layout.hpp: tiny-llama, helix:kvp=4,tpa=2, rank 5.
TEST(Sharding, RankFiveOfTheLayoutExample) {
  const model_weights w = seeded("tiny-llama", dtype::f32);
  auto s = shard_weights(w, *layout::parse("helix:kvp=4,tpa=2"), 5);
  ASSERT_TRUE(s.has_value());
  const rank_layer_weights& l0 = s->layers[0];
  EXPECT_EQ(l0.q_heads, (index_range{.first = 4, .count = 4}));
  EXPECT_EQ(l0.kv_heads, (index_range{.first = 1, .count = 1}));
  EXPECT_EQ(l0.o_heads, (index_range{.first = 5, .count = 1}));
  EXPECT_EQ(l0.q_proj.dims(), (shape{4 * 16, 64}));
  EXPECT_EQ(l0.k_proj.dims(), (shape{16, 64}));
  EXPECT_EQ(l0.o_proj.dims(), (shape{64, 16}));
  EXPECT_EQ(l0.mlp.ffn, (index_range{.first = 5 * 16, .count = 16}));
  EXPECT_EQ(s->vocab, (index_range{.first = 5 * 32, .count = 32}));
}

TEST(Sharding, MedhaRanksOutsideTheFfnHoldNoFfnWeights) {
  const model_weights w = seeded("tiny-llama", dtype::f32);
  const layout l = *layout::parse("medha:kvp=4,tpa=2");
  auto idle = shard_weights(w, l, 1);
  ASSERT_TRUE(idle.has_value());
  EXPECT_FALSE(idle->layers[0].has_ffn);
  EXPECT_EQ(idle->layers[0].mlp.gate_proj.numel(), 0);
  auto busy = shard_weights(w, l, 4);
  ASSERT_TRUE(busy.has_value());
  EXPECT_TRUE(busy->layers[0].has_ffn);
  EXPECT_EQ(busy->layers[0].mlp.ffn, (index_range{.first = 64, .count = 64}));
}

// What a decode step streams per rank, counted by hand for small-llama (hidden 1024, 8 layers,
// 8 query / 2 KV heads of 128, FFN 2816, vocabulary 32000, bf16): per layer q, k, v, o and the
// three FFN matrices, the LM head, the norms in f32 and one embedding row per token.
TEST(WeightsRead, SmallLlamaPerRankCountsEveryProjectionOnce) {
  auto spec = builtin_model("small-llama");
  ASSERT_TRUE(spec.has_value());
  const double h = 1024, kv = 256, f = 2816, v = 32000, bf16 = 2;
  const double attn_in = (h + 2 * kv) * h * bf16;                      // q, k, v
  const double split = 8 * (h * h + 3 * h * f) * bf16 + v * h * bf16;  // o, FFN; LM head
  const double norms = (8 * 2 + 1) * h * 4;
  EXPECT_DOUBLE_EQ(weights_read_per_step(*spec, dtype::bf16, 1, 1, 1),
                   8 * attn_in + split + norms + h * bf16);
  // helix:kvp=4,tpa=2 on 8 ranks, batch 2: a column's half of q/k/v, an eighth of the rest.
  EXPECT_DOUBLE_EQ(weights_read_per_step(*spec, dtype::bf16, 2, 8, 2),
                   8 * attn_in / 2 + split / 8 + norms + 2 * h * bf16);
}

TEST(Sharding, InvalidLayoutIsInvalidArgument) {
  const model_weights llama = seeded("tiny-llama", dtype::f32);
  const model_weights ds = seeded("tiny-deepseek", dtype::f32);
  struct bad_case {
    const model_weights* w;
    const char* text;
    const char* rule;
  };
  for (const bad_case& c : {bad_case{&llama, "helix:kvp=3,tpa=2", "heads_divisible"},
                            bad_case{&llama, "helix:kvp=2,tpa=4", "tpa_divides_k"},
                            bad_case{&ds, "helix:kvp=4,tpa=2", "tpa_divides_k"},
                            bad_case{&llama, "helix:kvp=8,tpa=1,tpf=4,ep=2", "ep_dense"},
                            bad_case{&ds, "helix:kvp=8,tpa=1,tpf=1,ep=3", "ffn_grid"}}) {
    auto l = layout::parse(c.text);
    ASSERT_TRUE(l.has_value()) << c.text;
    auto s = shard_weights(*c.w, *l, 0);
    ASSERT_FALSE(s.has_value()) << c.text;
    EXPECT_EQ(s.error().code(), errc::invalid_argument) << c.text;
    EXPECT_NE(s.error().message().find(std::string("layout rule ") + c.rule), std::string::npos)
        << c.text << ": " << s.error().message();
    EXPECT_NE(s.error().message().find(c.w->spec.name), std::string::npos) << s.error().message();
  }
}

TEST(Sharding, RankOutOfRangeIsInvalidArgument) {
  const model_weights w = seeded("tiny-llama", dtype::f32);
  const layout l = *layout::parse("helix:kvp=4,tpa=2");
  for (std::int64_t r : {-1, 8, 100}) {
    auto s = shard_weights(w, l, r);
    ASSERT_FALSE(s.has_value());
    EXPECT_EQ(s.error().code(), errc::invalid_argument);
    EXPECT_NE(s.error().message().find(fmt::format("rank {} out of range [0, 8)", r)),
              std::string::npos)
        << s.error().message();
  }
}

}  // namespace
}  // namespace helix::model

namespace helix::model {
namespace {

// A worker that never holds the full model builds exactly the shards slicing the full model
// gives: every rank of dense and MoE/MLA layouts, bit for bit.
TEST(SeededRankWeights, EqualShardingTheFullSeededModel) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tiny-llama", "helix:kvp=2,tpa=2"},
      {"tiny-llama", "tp:tp=4"},
      {"tiny-deepseek", "helix:kvp=4,tpa=1,tpf=2,ep=2"}};
  for (const auto& [name, text] : cases) {
    const model_spec spec = *builtin_model(name);
    const layout l = *layout::parse(text);
    for (const dtype t : {dtype::f32, dtype::bf16}) {
      auto made = init_seeded_weights(spec, t, 1234);
      ASSERT_TRUE(made.has_value());
      const model_weights& full = *made;
      for (std::int64_t r = 0; r < l.num_ranks; ++r) {
        auto sharded = shard_weights(full, l, r);
        ASSERT_TRUE(sharded.has_value());
        const rank_weights& want = *sharded;
        auto got = seeded_rank_weights(spec, t, 1234, l, r);
        ASSERT_TRUE(got.has_value()) << got.error().to_string();
        test_support::expect_same_rank_weights(*got, want,
                                               fmt::format("{} {} rank {}", name, text, r));
      }
    }
  }
}

// Sharding from an rvalue moves whole pieces instead of copying them and gives the same weights:
// every piece of a one-rank layout, and the whole-tensor pieces of larger ones.
TEST(Sharding, FromAnRvalueEqualsFromACopy) {
  for (const auto& [name, text] : std::vector<std::pair<std::string, std::string>>{
           {"tiny-llama", "helix:kvp=1,tpa=1"},
           {"tiny-deepseek", "helix:kvp=1,tpa=1"},
           {"tiny-llama", "helix:kvp=2,tpa=2"},
           {"tiny-deepseek", "helix:kvp=4,tpa=1,tpf=2,ep=2"}}) {
    const model_spec spec = *builtin_model(name);
    const layout l = *layout::parse(text);
    for (std::int64_t r = 0; r < l.num_ranks; ++r) {
      auto full = init_seeded_weights(spec, dtype::bf16, 1234);
      ASSERT_TRUE(full.has_value());
      auto copied = shard_weights(*full, l, r);
      ASSERT_TRUE(copied.has_value());
      const void* embed_before = full->embed.data();
      auto moved = shard_weights(std::move(*full), l, r);
      ASSERT_TRUE(moved.has_value()) << moved.error().to_string();
      test_support::expect_same_rank_weights(*moved, *copied,
                                             fmt::format("{} {} rank {}", name, text, r));
      if (l.num_ranks == 1) {
        EXPECT_EQ(moved->embed.data(), embed_before) << "embed was copied";
      }
    }
  }
}

}  // namespace
}  // namespace helix::model
