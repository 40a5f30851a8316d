// Layout parsing, validation rules, default layouts and the rank math (core/layout.hpp).
#include "core/layout.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace helix {
namespace {

model_spec spec_named(const char* name) {
  auto s = builtin_model(name);
  EXPECT_TRUE(s.has_value()) << name;
  return *s;
}

layout parsed(const std::string& text) {
  auto l = layout::parse(text);
  EXPECT_TRUE(l.has_value()) << text << ": " << l.error().to_string();
  return l.has_value() ? *l : layout{};
}

// Every layout string of every family on n ranks (whether or not a model accepts it).
std::vector<std::string> all_layout_strings(std::int64_t n) {
  std::vector<std::string> out;
  out.push_back("tp:tp=" + std::to_string(n));
  for (std::int64_t tpa = 1; tpa <= n; ++tpa) {
    if (n % tpa != 0) continue;
    const std::int64_t kvp = n / tpa;
    out.push_back("medha:kvp=" + std::to_string(kvp) + ",tpa=" + std::to_string(tpa));
    for (std::int64_t ep = 1; ep <= n; ++ep) {
      if (n % ep != 0) continue;
      out.push_back("helix:kvp=" + std::to_string(kvp) + ",tpa=" + std::to_string(tpa) +
                    ",tpf=" + std::to_string(n / ep) + ",ep=" + std::to_string(ep));
    }
  }
  return out;
}

TEST(LayoutParse, RoundTripsEveryFamily) {
  for (const char* text : {"helix:kvp=4,tpa=2,tpf=8,ep=1", "helix:kvp=8,tpa=1,tpf=2,ep=4",
                           "tp:tp=8", "tp:tp=1", "medha:kvp=4,tpa=2", "medha:kvp=1,tpa=1"}) {
    const layout l = parsed(text);
    EXPECT_EQ(l.to_string(), text);
    auto again = layout::parse(l.to_string());
    ASSERT_TRUE(again.has_value());
    EXPECT_EQ(*again, l);
  }
  for (std::int64_t n : {1, 2, 4, 6, 8, 16}) {
    for (const std::string& s : all_layout_strings(n)) {
      const layout l = parsed(s);
      EXPECT_EQ(l.num_ranks, n) << s;
      EXPECT_EQ(*layout::parse(l.to_string()), l) << s;
    }
  }
}

TEST(LayoutParse, DefaultsAndShortForms) {
  const layout h = parsed("helix:kvp=4,tpa=2");
  EXPECT_EQ(h.num_ranks, 8);
  EXPECT_EQ(h.tpf, 8);  // dense TPF = N
  EXPECT_EQ(h.ep, 1);
  EXPECT_EQ(h.to_string(), "helix:kvp=4,tpa=2,tpf=8,ep=1");
  const layout e = parsed("helix:kvp=8,tpa=1,ep=4");
  EXPECT_EQ(e.tpf, 2);  // N / ep
  const layout t = parsed("tp:tp=8");
  EXPECT_EQ(t.kvp, 1);
  EXPECT_EQ(t.tpa, 8);
  EXPECT_EQ(t.tpf, 8);
  EXPECT_EQ(t.ep, 1);
  const layout m = parsed(" medha : kvp = 4 , tpa = 2 ");
  EXPECT_EQ(m.tpf, 2);  // FFN on the TPA ranks
  EXPECT_EQ(m.ep, 1);
  EXPECT_EQ(m.num_ranks, 8);
}

void expect_parse_error(const std::string& text, const std::string& needle) {
  auto l = layout::parse(text);
  ASSERT_FALSE(l.has_value()) << text;
  EXPECT_EQ(l.error().code(), errc::invalid_argument) << text;
  EXPECT_NE(l.error().message().find(needle), std::string::npos)
      << text << " -> " << l.error().message() << " (wanted '" << needle << "')";
}

TEST(LayoutParse, RejectsMalformedStrings) {
  expect_parse_error("pipeline:pp=8", "unknown family");
  expect_parse_error("helix:kvp=4,tpa=2,foo=1", "unknown key 'foo'");
  expect_parse_error("tp:kvp=2", "unknown key 'kvp'");
  expect_parse_error("medha:kvp=4,tpa=2,ep=2", "unknown key 'ep'");
  expect_parse_error("helix:kvp=4", "missing key 'tpa'");
  expect_parse_error("tp:", "missing key 'tp'");
  expect_parse_error("helix:kvp=,tpa=2", "missing value");
  expect_parse_error("helix:kvp,tpa=2", "missing value");
  expect_parse_error("helix:kvp=0,tpa=2", "must be positive");
  expect_parse_error("helix:kvp=4,tpa=-2", "must be positive");
  expect_parse_error("tp:tp=0", "must be positive");
  expect_parse_error("helix:kvp=4x,tpa=2", "not an integer");
  expect_parse_error("helix:kvp=4,kvp=2,tpa=2", "duplicate key");
  expect_parse_error("helix", "expected '<family>");
  expect_parse_error("helix:kvp=99999999999,tpa=1", "out of range");
}

// Regression: "helix:kvp=2,tpa=2," parsed as "helix:kvp=2,tpa=2" (the loop stopped at the empty
// rest after the last comma), so a truncated or mistyped layout string was silently accepted.
TEST(LayoutParse, TrailingCommaIsRefused) {
  expect_parse_error("helix:kvp=2,tpa=2,", "empty item (a trailing comma)");
  expect_parse_error("helix:kvp=2,tpa=2, ", "empty item (a trailing comma)");
  expect_parse_error("tp:tp=8,", "trailing comma");
  expect_parse_error("medha:kvp=4,tpa=2 ,", "trailing comma");
}

TEST(LayoutParse, EmptyItemsAndKeysAreRefused) {
  expect_parse_error("helix:,kvp=2,tpa=2", "empty item (a leading or doubled comma)");
  expect_parse_error("helix:kvp=2,,tpa=2", "empty item (a leading or doubled comma)");
  expect_parse_error("helix:kvp=2,=2,tpa=2", "empty key in '=2'");
  expect_parse_error("helix:kvp=2, =2", "empty key");
  expect_parse_error("helix:,", "empty item");
  expect_parse_error("helix: ", "missing key 'kvp'");
  // Duplicates are found whatever the spacing.
  expect_parse_error("helix:kvp=2, kvp =4,tpa=2", "duplicate key 'kvp'");
  expect_parse_error("tp:tp=2,tp=2", "duplicate key 'tp'");
  // Spaces around the separators stay accepted (see DefaultsAndShortForms).
  EXPECT_EQ(parsed("  helix :kvp= 2 ,tpa =2  ").num_ranks, 4);
}

// Found by fuzz_layout: each key was bounded but their product was not, so
// "helix:kvp=4,tpa=5036409" parsed with the derived tpf = N = 20145636, above the per-key bound,
// and its to_string() did not parse back.
TEST(LayoutParse, RankCountAboveTheBoundIsRefused) {
  expect_parse_error("helix:kvp=4,tpa=5036409", "kvp x tpa = 20145636 ranks is out of range");
  expect_parse_error("medha:kvp=16777216,tpa=2", "out of range");
  const layout max = parsed("helix:kvp=4096,tpa=4096");
  EXPECT_EQ(max.num_ranks, 16777216);
  EXPECT_EQ(*layout::parse(max.to_string()), max);
}

void expect_rule(const layout& l, const model_spec& spec, std::string_view rule,
                 const std::string& needle) {
  const status st = validate(l, spec);
  ASSERT_FALSE(st.ok()) << l.to_string();
  EXPECT_EQ(st.code(), errc::invalid_argument);
  const std::string prefix = "layout rule " + std::string(rule) + ":";
  EXPECT_EQ(st.message().rfind(prefix, 0), 0u) << st.message() << " (wanted " << prefix << ")";
  EXPECT_NE(st.message().find(needle), std::string::npos) << st.message() << " / " << needle;
}

TEST(LayoutValidate, EachRuleHasItsOwnMessage) {
  const model_spec llama = spec_named("tiny-llama");        // Q = 8, K = 2, dense
  const model_spec deepseek = spec_named("tiny-deepseek");  // Q = 8, MLA, 8 experts

  // TPA must divide K (GQA K = 2; MLA K = 1 whatever num_kv_heads says).
  expect_rule(parsed("helix:kvp=2,tpa=4"), llama, layout_rule::tpa_divides_k, "TPA = 4");
  expect_rule(parsed("helix:kvp=4,tpa=2,tpf=8,ep=1"), deepseek, layout_rule::tpa_divides_k,
              "MLA: K = 1");
  expect_rule(parsed("medha:kvp=2,tpa=4"), llama, layout_rule::tpa_divides_k, "does not divide");

  // N = KVP * TPA.
  layout bad_n = parsed("helix:kvp=4,tpa=2");
  bad_n.num_ranks = 6;
  bad_n.tpf = 6;
  expect_rule(bad_n, llama, layout_rule::ranks, "KVP*TPA");

  // TPF * EP = N.
  expect_rule(parsed("helix:kvp=4,tpa=2,tpf=4,ep=1"), llama, layout_rule::ffn_grid, "TPF*EP");
  expect_rule(parsed("helix:kvp=8,tpa=1,ep=3"), deepseek, layout_rule::ffn_grid, "TPF*EP");
  layout bad_medha = parsed("medha:kvp=4,tpa=2");
  bad_medha.tpf = 8;
  expect_rule(bad_medha, llama, layout_rule::ffn_grid, "medha runs the FFN on the TPA ranks");

  // Experts divisible by EP.
  model_spec six_experts = deepseek;
  six_experts.moe.num_experts = 6;
  expect_rule(parsed("helix:kvp=8,tpa=1,tpf=2,ep=4"), six_experts, layout_rule::experts_divisible,
              "E = 6");

  // Query heads divisible by N (every family).
  expect_rule(parsed("helix:kvp=3,tpa=2,tpf=6,ep=1"), llama, layout_rule::heads_divisible,
              "not divisible by N = 6");
  expect_rule(parsed("tp:tp=16"), llama, layout_rule::heads_divisible, "Q = 8");
  expect_rule(parsed("medha:kvp=16,tpa=1"), deepseek, layout_rule::heads_divisible, "N = 16");

  // EP > 1 on a dense model.
  expect_rule(parsed("helix:kvp=4,tpa=2,tpf=4,ep=2"), llama, layout_rule::ep_dense, "dense");

  // tp: KV heads split or duplicated whole.
  model_spec three_kv = llama;
  three_kv.num_q_heads = 12;
  three_kv.num_kv_heads = 3;
  expect_rule(parsed("tp:tp=4"), three_kv, layout_rule::tp_kv_heads, "K = 3");

  // tp's fixed shape.
  layout bad_tp = parsed("tp:tp=8");
  bad_tp.kvp = 2;
  expect_rule(bad_tp, llama, layout_rule::family_shape, "kvp = 1");

  // Unknown family and non-positive values in hand-built layouts.
  layout bad_family = parsed("tp:tp=2");
  bad_family.family = static_cast<layout_family>(7);
  expect_rule(bad_family, llama, layout_rule::family, "unknown family");
  layout zero = parsed("helix:kvp=4,tpa=2");
  zero.ep = 0;
  expect_rule(zero, llama, layout_rule::positive, "ep must be positive");
  layout negative = parsed("helix:kvp=4,tpa=2");
  negative.kvp = -4;
  expect_rule(negative, llama, layout_rule::positive, "kvp must be positive");

  auto fam = parse_layout_family("dp");
  ASSERT_FALSE(fam.has_value());
  EXPECT_NE(fam.error().message().find("unknown family 'dp'"), std::string::npos);
}

TEST(LayoutValidate, EightWorkerLayoutsOfEveryFamily) {
  const model_spec llama = spec_named("tiny-llama");
  const model_spec deepseek = spec_named("tiny-deepseek");
  for (const char* ok : {"helix:kvp=4,tpa=2", "helix:kvp=8,tpa=1", "tp:tp=8", "medha:kvp=4,tpa=2",
                         "medha:kvp=8,tpa=1"}) {
    EXPECT_TRUE(validate(parsed(ok), llama).ok())
        << ok << ": " << validate(parsed(ok), llama).to_string();
  }
  for (const char* ok :
       {"helix:kvp=8,tpa=1", "helix:kvp=8,tpa=1,tpf=2,ep=4", "helix:kvp=8,tpa=1,tpf=1,ep=8",
        "helix:kvp=8,tpa=1,tpf=4,ep=2", "tp:tp=8", "medha:kvp=8,tpa=1"}) {
    EXPECT_TRUE(validate(parsed(ok), deepseek).ok())
        << ok << ": " << validate(parsed(ok), deepseek).to_string();
  }
  // Exactly the rule-abiding ones among all 8-rank strings pass: count them.
  int llama_ok = 0;
  int deepseek_ok = 0;
  for (const std::string& s : all_layout_strings(8)) {
    const layout l = parsed(s);
    llama_ok += validate(l, llama).ok() ? 1 : 0;
    deepseek_ok += validate(l, deepseek).ok() ? 1 : 0;
  }
  // tiny-llama: tp, medha tpa in {1,2}, helix tpa in {1,2} with ep = 1.
  EXPECT_EQ(llama_ok, 1 + 2 + 2);
  // tiny-deepseek: tp, medha tpa = 1, helix tpa = 1 with ep in {1,2,4,8}.
  EXPECT_EQ(deepseek_ok, 1 + 1 + 4);
}

TEST(LayoutDefault, FollowsTheStatedRules) {
  const model_spec llama = spec_named("tiny-llama");
  const model_spec deepseek = spec_named("tiny-deepseek");
  EXPECT_EQ(default_layout(layout_family::helix, 8, llama)->to_string(),
            "helix:kvp=4,tpa=2,tpf=8,ep=1");
  EXPECT_EQ(default_layout(layout_family::helix, 1, llama)->to_string(),
            "helix:kvp=1,tpa=1,tpf=1,ep=1");
  EXPECT_EQ(default_layout(layout_family::helix, 8, deepseek)->to_string(),
            "helix:kvp=8,tpa=1,tpf=1,ep=8");
  EXPECT_EQ(default_layout(layout_family::helix, 4, deepseek)->to_string(),
            "helix:kvp=4,tpa=1,tpf=1,ep=4");
  EXPECT_EQ(default_layout(layout_family::tp, 8, llama)->to_string(), "tp:tp=8");
  EXPECT_EQ(default_layout(layout_family::medha, 8, llama)->to_string(), "medha:kvp=4,tpa=2");
  EXPECT_EQ(default_layout(layout_family::medha, 8, deepseek)->to_string(), "medha:kvp=8,tpa=1");

  auto r405 = spec_named("llama-3.1-405b");  // K = 8
  EXPECT_EQ(default_layout(layout_family::helix, 32, r405)->tpa, 8);
  EXPECT_EQ(default_layout(layout_family::helix, 32, r405)->kvp, 4);
  auto r1 = spec_named("deepseek-r1");  // 256 experts, MLA
  auto d = default_layout(layout_family::helix, 64, r1);
  ASSERT_TRUE(d.has_value()) << d.error().to_string();
  EXPECT_EQ(d->to_string(), "helix:kvp=64,tpa=1,tpf=1,ep=64");

  auto too_many = default_layout(layout_family::helix, 16, llama);  // Q = 8 < N
  ASSERT_FALSE(too_many.has_value());
  EXPECT_NE(too_many.error().message().find("heads_divisible"), std::string::npos);
  auto zero = default_layout(layout_family::tp, 0, llama);
  ASSERT_FALSE(zero.has_value());
  EXPECT_NE(zero.error().message().find("positive"), std::string::npos);
}

// Every valid layout of every family on up to 8 ranks for both tiny models.
std::vector<std::pair<layout, model_spec>> valid_layouts() {
  std::vector<std::pair<layout, model_spec>> out;
  for (const char* name : {"tiny-llama", "tiny-deepseek"}) {
    const model_spec spec = spec_named(name);
    for (std::int64_t n : {1, 2, 4, 8}) {
      for (const std::string& s : all_layout_strings(n)) {
        const layout l = parsed(s);
        if (validate(l, spec).ok()) out.emplace_back(l, spec);
      }
    }
  }
  return out;
}

TEST(LayoutRankMath, CoordsAndRanksAreBijections) {
  const auto layouts = valid_layouts();
  ASSERT_GT(layouts.size(), 20u);
  for (const auto& [l, spec] : layouts) {
    SCOPED_TRACE(l.to_string() + " " + spec.name);
    std::set<std::int64_t> seen;
    for (std::int64_t c = 0; c < l.tpa; ++c) {
      for (std::int64_t j = 0; j < l.kvp; ++j) {
        const std::int64_t r = l.attention_rank(c, j);
        EXPECT_EQ(r, c * l.kvp + j);
        EXPECT_EQ(l.attention_coords(r), (attention_coord{c, j}));
        seen.insert(r);
      }
    }
    EXPECT_EQ(static_cast<std::int64_t>(seen.size()), l.num_ranks);
    EXPECT_EQ(*seen.begin(), 0);
    EXPECT_EQ(*seen.rbegin(), l.num_ranks - 1);

    std::set<std::int64_t> ffn_seen;
    for (std::int64_t e = 0; e < l.ep; ++e) {
      for (std::int64_t t = 0; t < l.tpf; ++t) {
        const std::int64_t r = l.ffn_rank(e, t);
        ASSERT_TRUE(l.in_ffn(r));
        EXPECT_EQ(l.ffn_coords(r), (ffn_coord{e, t}));
        ffn_seen.insert(r);
      }
    }
    const auto ffn = l.ffn_ranks();
    EXPECT_EQ(std::set<std::int64_t>(ffn.begin(), ffn.end()), ffn_seen);
    EXPECT_EQ(static_cast<std::int64_t>(ffn_seen.size()), l.tpf * l.ep);
    std::int64_t in_ffn = 0;
    for (std::int64_t r = 0; r < l.num_ranks; ++r) in_ffn += l.in_ffn(r) ? 1 : 0;
    EXPECT_EQ(in_ffn, l.tpf * l.ep);
    if (l.family == layout_family::medha) {
      EXPECT_EQ(in_ffn, l.tpa);
      for (std::int64_t r : ffn) EXPECT_EQ(l.attention_coords(r).kvp_idx, 0);
    } else {
      EXPECT_EQ(in_ffn, l.num_ranks);
      for (std::int64_t r = 0; r < l.num_ranks; ++r) {
        EXPECT_EQ(l.ffn_rank(l.ffn_coords(r).ep_idx, l.ffn_coords(r).tpf_idx), r);
      }
    }
  }
}

TEST(LayoutRankMath, GroupsPartitionTheRanks) {
  for (const auto& [l, spec] : valid_layouts()) {
    SCOPED_TRACE(l.to_string() + " " + spec.name);
    std::vector<int> hits(static_cast<std::size_t>(l.num_ranks), 0);
    for (std::int64_t c = 0; c < l.tpa; ++c) {
      const auto group = l.kvp_group(c);
      ASSERT_EQ(static_cast<std::int64_t>(group.size()), l.kvp);
      for (std::size_t j = 0; j < group.size(); ++j) {
        EXPECT_EQ(group[j], c * l.kvp + static_cast<std::int64_t>(j));  // [c*KVP, (c+1)*KVP)
        ++hits[static_cast<std::size_t>(group[j])];
      }
    }
    for (int h : hits) EXPECT_EQ(h, 1);

    // tpf groups partition the FFN ranks; ep groups too; they cross in exactly one rank.
    std::set<std::int64_t> by_tpf;
    std::set<std::int64_t> by_ep;
    for (std::int64_t e = 0; e < l.ep; ++e) {
      for (std::int64_t r : l.tpf_group(e)) EXPECT_TRUE(by_tpf.insert(r).second);
    }
    for (std::int64_t t = 0; t < l.tpf; ++t) {
      const auto eg = l.ep_group(t);
      for (std::size_t e = 0; e < eg.size(); ++e) {
        EXPECT_TRUE(by_ep.insert(eg[e]).second);
        EXPECT_EQ(l.tpf_group(static_cast<std::int64_t>(e))[static_cast<std::size_t>(t)], eg[e]);
      }
    }
    EXPECT_EQ(by_tpf, by_ep);
    EXPECT_EQ(static_cast<std::int64_t>(by_tpf.size()), l.tpf * l.ep);
  }
}

TEST(LayoutRankMath, HeadAndExpertSlicesPartition) {
  for (const auto& [l, spec] : valid_layouts()) {
    SCOPED_TRACE(l.to_string() + " " + spec.name);
    const std::int64_t q = spec.num_q_heads;
    const std::int64_t k = spec.layout_kv_heads();
    // Rank query slices partition [0, Q) in rank order.
    std::int64_t next = 0;
    for (std::int64_t r = 0; r < l.num_ranks; ++r) {
      const index_range h = l.rank_q_heads(r, spec);
      EXPECT_EQ(h.first, next);
      EXPECT_EQ(h.count, q / l.num_ranks);
      next = h.end();
    }
    EXPECT_EQ(next, q);
    // Column query slices partition [0, Q); each column's KV heads serve exactly its queries.
    next = 0;
    for (std::int64_t c = 0; c < l.tpa; ++c) {
      const index_range cq = l.column_q_heads(c, spec);
      EXPECT_EQ(cq.first, next);
      next = cq.end();
      const index_range kv = l.column_kv_heads(c, spec);
      ASSERT_GE(kv.count, 1);
      const std::int64_t group = q / k;  // query heads per KV head
      for (std::int64_t h = cq.first; h < cq.end(); ++h) {
        EXPECT_TRUE(kv.contains(h / group)) << "q head " << h << " column " << c;
      }
      for (std::int64_t r : l.kvp_group(c)) EXPECT_EQ(l.rank_kv_heads(r, spec), kv);
    }
    EXPECT_EQ(next, q);
    if (l.family != layout_family::tp) {
      std::int64_t kv_next = 0;
      for (std::int64_t c = 0; c < l.tpa; ++c) {
        EXPECT_EQ(l.column_kv_heads(c, spec).first, kv_next);
        kv_next = l.column_kv_heads(c, spec).end();
      }
      EXPECT_EQ(kv_next, k);
    }
    // Experts of the EP groups partition [0, E) (empty for dense).
    std::int64_t e_next = 0;
    for (std::int64_t e = 0; e < l.ep; ++e) {
      const index_range ex = l.group_experts(e, spec);
      EXPECT_EQ(ex.first, e_next);
      e_next = ex.end();
    }
    EXPECT_EQ(e_next, spec.moe.num_experts);
  }
}

TEST(LayoutRankMath, TpDuplicatesKvHeadsWhenRanksExceedThem) {
  const model_spec llama = spec_named("tiny-llama");  // Q = 8, K = 2
  const layout t8 = parsed("tp:tp=8");
  for (std::int64_t r = 0; r < 8; ++r) {
    EXPECT_EQ(t8.rank_kv_heads(r, llama), (index_range{r / 4, 1})) << r;  // 4 ranks per KV head
  }
  const layout t2 = parsed("tp:tp=2");
  EXPECT_EQ(t2.rank_kv_heads(1, llama), (index_range{1, 1}));
  const layout t1 = parsed("tp:tp=1");
  EXPECT_EQ(t1.rank_kv_heads(0, llama), (index_range{0, 2}));
  const model_spec deepseek = spec_named("tiny-deepseek");
  EXPECT_EQ(t8.rank_kv_heads(5, deepseek), (index_range{0, 1}));  // the latent, everywhere
}

TEST(LayoutRankMath, HeaderExampleHolds) {
  const model_spec llama = spec_named("tiny-llama");
  const layout l = parsed("helix:kvp=4,tpa=2");
  EXPECT_EQ(l.attention_coords(5), (attention_coord{1, 1}));
  EXPECT_EQ(l.kvp_group(1), (std::vector<std::int64_t>{4, 5, 6, 7}));
  EXPECT_EQ(l.column_q_heads(1, llama), (index_range{4, 4}));
  EXPECT_EQ(l.column_kv_heads(1, llama), (index_range{1, 1}));
  EXPECT_EQ(l.rank_q_heads(5, llama), (index_range{5, 1}));
  const model_spec deepseek = spec_named("tiny-deepseek");
  const layout e = parsed("helix:kvp=8,tpa=1,tpf=2,ep=4");
  EXPECT_EQ(e.ffn_coords(5), (ffn_coord{2, 1}));
  EXPECT_EQ(e.tpf_group(2), (std::vector<std::int64_t>{4, 5}));
  EXPECT_EQ(e.ep_group(1), (std::vector<std::int64_t>{1, 3, 5, 7}));
  EXPECT_EQ(e.group_experts(2, deepseek), (index_range{4, 2}));
  const layout m = parsed("medha:kvp=4,tpa=2");
  EXPECT_EQ(m.ffn_ranks(), (std::vector<std::int64_t>{0, 4}));
  EXPECT_EQ(m.ffn_coords(4), (ffn_coord{0, 1}));
}

// Regression for the bug real implementations shipped (wrong o_proj shards): after the
// all-to-all, member j of column c's KVP group must hold exactly the query heads whose rows of
// o_proj's input dimension the TP = N output projection gives to rank r = c*KVP + j.
TEST(LayoutRankMath, WrongOProjShardsRegression) {
  for (const auto& [l, spec] : valid_layouts()) {
    SCOPED_TRACE(l.to_string() + " " + spec.name);
    const std::int64_t q = spec.num_q_heads;
    const std::int64_t dv = spec.attn_out_head_dim();
    const std::int64_t o_proj_in = q * dv;
    // TP = N row split of o_proj's input dim, computed independently of the layout code.
    const std::int64_t rows_per_rank = o_proj_in / l.num_ranks;
    for (std::int64_t c = 0; c < l.tpa; ++c) {
      for (std::int64_t j = 0; j < l.kvp; ++j) {
        const std::int64_t r = c * l.kvp + j;
        const index_range got = l.all_to_all_q_heads(c, j, spec);
        // Lies inside the column's heads (the ones column c computed attention for).
        const index_range col = l.column_q_heads(c, spec);
        EXPECT_GE(got.first, col.first);
        EXPECT_LE(got.end(), col.end());
        EXPECT_EQ(got.first * dv, r * rows_per_rank) << "rank " << r;
        EXPECT_EQ(got.end() * dv, (r + 1) * rows_per_rank) << "rank " << r;
        EXPECT_EQ(got, l.rank_q_heads(r, spec));
        EXPECT_EQ(l.attention_rank(c, j), r);
      }
    }
  }
  // A concrete case, spelled out: helix kvp=4,tpa=2 on tiny-llama. Column 1 computes heads 4..7;
  // member 2 (rank 6) must end with head 6, not head 2 (the bug: slice j of all heads).
  const model_spec llama = spec_named("tiny-llama");
  const layout l = parsed("helix:kvp=4,tpa=2");
  EXPECT_EQ(l.all_to_all_q_heads(1, 2, llama), (index_range{6, 1}));
}

}  // namespace
}  // namespace helix
