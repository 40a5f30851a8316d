// The multi-worker layer program against the single-worker decoder: N ranks as threads of one
// process over the local fabric, under every layout family on both tiny models (GQA dense and
// MLA + MoE), must give the decoder's logits (f32, max abs diff <= 1e-4) over chunked prefill and
// decode, with short contexts (KVP members without KV), batches of sequences of different lengths,
// bf16 KV, HOP-B on and off (bit-identical) and sharded sampling (the same tokens as sampling the
// full logits).
#include "model/rank_program.hpp"
#include "model/decoder.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "kernels/sampling.hpp"
#include "planner/placement_book.hpp"
#include "tests/support/model_fixtures.hpp"
#include "transport/transport.hpp"

namespace helix::model {
namespace {

model_weights seeded(const std::string& name) {
  return test_support::seeded_weights(name);
}
using test_support::random_tokens;

constexpr float tolerance = 1e-4f;

std::size_t sz_of(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

// A scripted run: `num_seqs` sequences opened up front (ids 1..num_seqs on every program), then
// one forward() per step.
struct script_item {
  std::uint64_t seq = 0;
  std::vector<std::int32_t> tokens;
  bool all_logits = false;
};
using script_step = std::vector<script_item>;
struct script {
  std::int64_t num_seqs = 1;
  std::vector<script_step> steps;
};

std::vector<decoder::batch_item> to_items(const script_step& step) {
  std::vector<decoder::batch_item> items;
  for (const script_item& it : step) items.push_back({it.seq, it.tokens, it.all_logits});
  return items;
}

// Logits of every step from the single-worker decoder.
expected<std::vector<std::vector<float>>> run_reference(const model_weights& w, const script& s,
                                                        dtype kv_type = dtype::f32) {
  decoder_options o;
  o.num_threads = 1;
  o.kv_type = kv_type;
  HELIX_ASSIGN_OR_RETURN(auto dec, decoder::create(w, o));
  for (std::int64_t i = 0; i < s.num_seqs; ++i) (void)dec->open_sequence();
  std::vector<std::vector<float>> out;
  for (const script_step& step : s.steps) {
    const auto items = to_items(step);
    std::vector<float> logits(sz_of(decoder::logits_rows(items) * w.spec.vocab));
    HELIX_RETURN_IF_ERROR(dec->forward(items, logits));
    out.push_back(std::move(logits));
  }
  return out;
}

// What one sharded run produced.
struct sharded_result {
  std::vector<std::vector<float>> logits;         // per step, from rank 0
  bool ranks_agree = true;                        // every rank returned bit-identical logits
  std::vector<std::vector<std::int32_t>> owners;  // per sequence: owner rank of each block (rank 0)
  bool tables_agree = true;  // same block ranks and positions on every rank of the column
  std::vector<std::int64_t> used_slots;           // per rank at the end
  std::vector<std::vector<std::int32_t>> tokens;  // per step, sharded sampling (rank 0)
  bool tokens_agree = true;  // every rank sampled the same tokens and reported the same rows
  std::vector<std::vector<status>> row_status;  // per step (rank 0), when asked for
  std::int64_t full_row_samples = 0;            // summed over the steps (rank 0)
};

// What run_sharded_forward asks every step to sample (every logits row the same way).
struct sampling_request {
  kernels::sampling_options options;
  std::int32_t k_max = kernels::shard_summary_capacity;
  bool row_status = false;  // ask for per-row status
};

// The owners of the blocks each step opens, decided up front by the engine's placement record (the
// script is fixed, so the whole run can be planned before the ranks start).
expected<std::vector<std::vector<std::int64_t>>> plan_script(const layout& l,
                                                             const rank_program_options& options,
                                                             const script& s) {
  planner::placement_book book(l, options.block_tokens);
  for (std::int64_t i = 0; i < s.num_seqs; ++i) {
    HELIX_RETURN_IF_ERROR(book.join(static_cast<std::uint64_t>(i + 1)));
  }
  std::vector<std::vector<std::int64_t>> plans;
  for (const script_step& step : s.steps) {
    std::vector<std::int64_t> owners;
    for (const script_item& it : step) {
      const auto n = static_cast<std::int64_t>(it.tokens.size());
      HELIX_RETURN_IF_ERROR(book.plan(it.seq, n, owners));
      HELIX_RETURN_IF_ERROR(book.commit(it.seq, n));
    }
    book.tick();
    plans.push_back(std::move(owners));
  }
  return plans;
}

// Spawns one thread per rank of `layout_text`, each driving its own rank_program through the
// script. A failing rank aborts the fabric so that its peers return instead of waiting forever.
expected<sharded_result> run_sharded_forward(const model_weights& w, std::string_view layout_text,
                                             const script& s,
                                             const rank_program_options& options = {},
                                             const sampling_request* sampling = nullptr) {
  HELIX_ASSIGN_OR_RETURN(const layout l, layout::parse(layout_text));
  HELIX_ASSIGN_OR_RETURN(const auto plans, plan_script(l, options, s));
  const auto n = static_cast<int>(l.num_ranks);
  HELIX_ASSIGN_OR_RETURN(auto fab, transport::make_local_fabric(n));
  std::vector<status> results(sz_of(n), ok_status());
  std::vector<std::vector<std::vector<float>>> logits(sz_of(n));
  std::vector<std::vector<std::vector<std::int32_t>>> tokens(sz_of(n));
  std::vector<std::vector<std::vector<status>>> row_status(sz_of(n));
  std::vector<std::int64_t> full_rows(sz_of(n), 0);
  std::vector<std::vector<std::vector<kv_block_ref>>> tables(sz_of(n));
  std::vector<std::int64_t> used(sz_of(n), 0);
  auto body = [&](int r) -> status {
    HELIX_ASSIGN_OR_RETURN(auto world, fab->make_world(r));
    std::vector<int> group;
    for (std::int64_t g : l.kvp_group(l.attention_coords(r).tpa_idx)) {
      group.push_back(static_cast<int>(g));
    }
    HELIX_ASSIGN_OR_RETURN(auto kvp, fab->make_communicator(r, group));
    HELIX_ASSIGN_OR_RETURN(
        auto prog, rank_program::create(w, l, r, std::move(world), std::move(kvp), options));
    for (std::int64_t i = 0; i < s.num_seqs; ++i) {
      const std::uint64_t id = prog->open_sequence();
      if (id != static_cast<std::uint64_t>(i + 1)) return internal_error("sequence id {}", id);
    }
    for (std::size_t step_idx = 0; step_idx < s.steps.size(); ++step_idx) {
      const script_step& step = s.steps[step_idx];
      const auto items = to_items(step);
      const auto rows = sz_of(decoder::logits_rows(items));
      std::vector<float> out(rows * sz_of(w.spec.vocab));
      step_output so;
      so.logits = out;
      std::vector<kernels::sampling_options> opts(
          rows, sampling ? sampling->options : kernels::sampling_options{});
      std::vector<std::uint64_t> ids(rows);
      for (std::size_t i = 0; i < rows; ++i) ids[i] = 100 + i;
      std::vector<std::int32_t> toks(sampling ? rows : 0);
      std::vector<status> st(sampling && sampling->row_status ? rows : 0);
      so.sampling = opts;
      so.request_ids = ids;
      so.tokens = toks;
      so.row_status = st;
      if (sampling) so.k_max = sampling->k_max;
      HELIX_RETURN_IF_ERROR(prog->forward(items, plans[step_idx], so));
      logits[sz_of(r)].push_back(std::move(out));
      tokens[sz_of(r)].push_back(std::move(toks));
      row_status[sz_of(r)].push_back(std::move(st));
      full_rows[sz_of(r)] += prog->full_row_samples_last_step();
    }
    for (std::int64_t i = 0; i < s.num_seqs; ++i) {
      const auto t = prog->table(static_cast<std::uint64_t>(i + 1)).blocks();
      tables[sz_of(r)].emplace_back(t.begin(), t.end());
    }
    used[sz_of(r)] = prog->kv().used_slots();
    return ok_status();
  };
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      results[sz_of(r)] = body(r);
      if (!results[sz_of(r)].ok()) fab->abort(results[sz_of(r)]);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const status& st : results) HELIX_RETURN_IF_ERROR(st);

  sharded_result res;
  res.logits = logits[0];
  res.tokens = tokens[0];
  res.row_status = row_status[0];
  res.full_row_samples = full_rows[0];
  res.used_slots = used;
  for (int r = 1; r < n; ++r) {
    res.ranks_agree = res.ranks_agree && logits[sz_of(r)] == logits[0];
    res.tokens_agree =
        res.tokens_agree && tokens[sz_of(r)] == tokens[0] && full_rows[sz_of(r)] == full_rows[0];
    for (std::size_t step = 0; step < row_status[0].size(); ++step) {
      for (std::size_t i = 0; i < row_status[0][step].size(); ++i) {
        res.tokens_agree = res.tokens_agree && row_status[sz_of(r)][step][i].to_string() ==
                                                   row_status[0][step][i].to_string();
      }
    }
  }
  for (const auto& t : tables[0]) {
    std::vector<std::int32_t> owners;
    for (const kv_block_ref& b : t) owners.push_back(b.rank);
    res.owners.push_back(std::move(owners));
  }
  // Ranks of one column must see the same table; other columns place on the same kvp_idx.
  for (int r = 0; r < n; ++r) {
    for (std::size_t q = 0; q < tables[0].size(); ++q) {
      const auto& a = tables[0][q];
      const auto& b = tables[sz_of(r)][q];
      if (a.size() != b.size()) {
        res.tables_agree = false;
        continue;
      }
      for (std::size_t i = 0; i < a.size(); ++i) {
        const bool same =
            l.attention_coords(a[i].rank).kvp_idx == l.attention_coords(b[i].rank).kvp_idx &&
            l.attention_coords(b[i].rank).tpa_idx == l.attention_coords(r).tpa_idx &&
            a[i].first_pos == b[i].first_pos && a[i].num_tokens == b[i].num_tokens;
        res.tables_agree = res.tables_agree && same;
      }
    }
  }
  return res;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  float m = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

void expect_matches_reference(const model_weights& w, std::string_view layout_text, const script& s,
                              sharded_result* out = nullptr,
                              const rank_program_options& options = {},
                              float max_diff = tolerance) {
  auto ref = run_reference(w, s, options.kv_type);
  ASSERT_TRUE(ref.has_value()) << ref.error().to_string();
  auto got = run_sharded_forward(w, layout_text, s, options);
  ASSERT_TRUE(got.has_value()) << layout_text << ": " << got.error().to_string();
  ASSERT_EQ(got->logits.size(), ref->size());
  for (std::size_t i = 0; i < ref->size(); ++i) {
    const float diff = max_abs_diff(got->logits[i], (*ref)[i]);
    EXPECT_LE(diff, max_diff) << layout_text << " step " << i;
  }
  EXPECT_TRUE(got->ranks_agree) << layout_text << ": ranks returned different logits";
  EXPECT_TRUE(got->tables_agree) << layout_text << ": block tables differ between ranks";
  if (out != nullptr) *out = std::move(got).value();
}

// Prompt of 21 tokens prefilled in chunks of 9 and 12 (straddling a block boundary), then 20
// decode steps of fixed tokens.
script prefill_then_decode(std::int64_t vocab, std::int64_t prompt, std::int64_t first_chunk,
                           std::int64_t steps) {
  const auto tokens = random_tokens(prompt + steps, vocab, 1);
  script s;
  s.steps.push_back({{1, {tokens.begin(), tokens.begin() + first_chunk}, false}});
  if (prompt > first_chunk) {
    s.steps.push_back({{1, {tokens.begin() + first_chunk, tokens.begin() + prompt}, false}});
  }
  for (std::int64_t i = 0; i < steps; ++i) {
    s.steps.push_back({{1, {tokens[sz_of(prompt + i)]}, false}});
  }
  return s;
}

struct layout_case {
  std::string model;
  std::string layout;
};
void PrintTo(const layout_case& c, std::ostream* os) {
  *os << c.model << " " << c.layout;
}

class RankProgramLayouts : public ::testing::TestWithParam<layout_case> {};

TEST_P(RankProgramLayouts, PrefillAndDecodeMatchDecoder) {
  const model_weights w = seeded(GetParam().model);
  const script s = prefill_then_decode(w.spec.vocab, 21, 9, 20);
  sharded_result res;
  expect_matches_reference(w, GetParam().layout, s, &res);
  // 41 tokens = 3 blocks of 16: consecutive blocks on distinct KVP members (round-robin).
  auto l = layout::parse(GetParam().layout);
  ASSERT_TRUE(l.has_value());
  ASSERT_EQ(res.owners.size(), 1u);
  ASSERT_EQ(res.owners[0].size(), 3u);
  for (std::size_t i = 1; i < res.owners[0].size() && l->kvp > 1; ++i) {
    EXPECT_NE(res.owners[0][i], res.owners[0][i - 1]);
  }
}

INSTANTIATE_TEST_SUITE_P(
    AllFamilies, RankProgramLayouts,
    ::testing::Values(layout_case{"tiny-llama", "helix:kvp=4,tpa=2"},
                      layout_case{"tiny-llama", "helix:kvp=8,tpa=1"},
                      layout_case{"tiny-llama", "helix:kvp=2,tpa=2"},
                      layout_case{"tiny-llama", "helix:kvp=1,tpa=2"},
                      layout_case{"tiny-llama", "tp:tp=8"}, layout_case{"tiny-llama", "tp:tp=2"},
                      layout_case{"tiny-llama", "medha:kvp=4,tpa=2"},
                      layout_case{"tiny-deepseek", "helix:kvp=8,tpa=1"},
                      layout_case{"tiny-deepseek", "helix:kvp=8,tpa=1,tpf=2,ep=4"},
                      layout_case{"tiny-deepseek", "helix:kvp=4,tpa=1,tpf=1,ep=4"},
                      layout_case{"tiny-deepseek", "helix:kvp=2,tpa=1,tpf=1,ep=2"},
                      layout_case{"tiny-deepseek", "tp:tp=8"},
                      layout_case{"tiny-deepseek", "medha:kvp=8,tpa=1"}),
    [](const auto& info) {
      std::string n = info.param.model + "_" + info.param.layout;
      std::replace_if(
          n.begin(), n.end(), [](char c) { return !std::isalnum(c); }, '_');
      return n;
    });

// A context shorter than KVP * block_tokens: most KVP members hold no KV, their partials are
// empty (lse = -inf) and must merge as no-ops.
TEST(RankProgram, ShortContextLeavesMembersEmpty) {
  const model_weights w = seeded("tiny-llama");
  const script s = prefill_then_decode(w.spec.vocab, 3, 3, 6);  // 9 tokens: one block
  sharded_result res;
  expect_matches_reference(w, "helix:kvp=4,tpa=2", s, &res);
  ASSERT_EQ(res.owners.size(), 1u);
  EXPECT_EQ(res.owners[0].size(), 1u);
  // One block in each of the two columns; the other six ranks store nothing.
  std::int64_t holders = 0;
  for (std::int64_t u : res.used_slots) holders += u > 0 ? 1 : 0;
  EXPECT_EQ(holders, 2);

  // MLA + MoE: one column of eight, seven of them empty.
  const model_weights ds = seeded("tiny-deepseek");
  const script s2 = prefill_then_decode(ds.spec.vocab, 3, 3, 6);
  expect_matches_reference(ds, "helix:kvp=8,tpa=1,tpf=2,ep=4", s2, &res);
  holders = 0;
  for (std::int64_t u : res.used_slots) holders += u > 0 ? 1 : 0;
  EXPECT_EQ(holders, 1);
}

// Two sequences of different lengths share every step (a chunk and a decode token in one batch,
// then decode together); each item must still equal the decoder's result.
TEST(RankProgram, BatchOfTwoSequencesMatchesDecoder) {
  const model_weights w = seeded("tiny-llama");
  const auto a = random_tokens(60, w.spec.vocab, 2);
  const auto b = random_tokens(40, w.spec.vocab, 3);
  script s;
  s.num_seqs = 2;
  s.steps.push_back({{1, {a.begin(), a.begin() + 21}, false}});
  s.steps.push_back({{1, {a[21]}, false}, {2, {b.begin(), b.begin() + 5}, true}});
  for (std::int64_t i = 0; i < 18; ++i) {
    s.steps.push_back({{2, {b[sz_of(5 + i)]}, false}, {1, {a[sz_of(22 + i)]}, false}});
  }
  for (const char* l : {"helix:kvp=4,tpa=2", "helix:kvp=2,tpa=2"}) {
    sharded_result res;
    expect_matches_reference(w, l, s, &res);
    ASSERT_EQ(res.owners.size(), 2u);
  }
}

// Mixed lengths in one batch on the MoE + MLA model, where each token routes to different experts.
TEST(RankProgram, MoeBatchOfTwoSequencesMatchesDecoder) {
  const model_weights w = seeded("tiny-deepseek");
  const auto a = random_tokens(40, w.spec.vocab, 4);
  const auto b = random_tokens(30, w.spec.vocab, 5);
  script s;
  s.num_seqs = 2;
  s.steps.push_back(
      {{1, {a.begin(), a.begin() + 17}, false}, {2, {b.begin(), b.begin() + 3}, true}});
  for (std::int64_t i = 0; i < 10; ++i) {
    s.steps.push_back({{1, {a[sz_of(17 + i)]}, false}, {2, {b[sz_of(3 + i)]}, false}});
  }
  expect_matches_reference(w, "helix:kvp=8,tpa=1,tpf=2,ep=4", s);
}

// bf16 KV on both sides: the same values are rounded the same way wherever they are stored.
TEST(RankProgram, Bf16KvMatchesDecoder) {
  rank_program_options o;
  o.kv_type = dtype::bf16;
  for (const char* model : {"tiny-llama", "tiny-deepseek"}) {
    const model_weights w = seeded(model);
    const script s = prefill_then_decode(w.spec.vocab, 21, 9, 8);
    expect_matches_reference(w,
                             w.spec.is_mla() ? "helix:kvp=4,tpa=1,tpf=2,ep=2" : "helix:kvp=4,tpa=2",
                             s, nullptr, o, 2e-2f);
  }
}

// HOP-B splits the step into one micro-batch per item with its all-to-all in flight during the
// next item's attention; every row's math is unchanged, so the logits are bit-identical.
TEST(RankProgram, HopbIsBitIdentical) {
  for (const char* model : {"tiny-llama", "tiny-deepseek"}) {
    const model_weights w = seeded(model);
    const auto a = random_tokens(40, w.spec.vocab, 6);
    const auto b = random_tokens(40, w.spec.vocab, 7);
    const auto c = random_tokens(40, w.spec.vocab, 8);
    script s;
    s.num_seqs = 3;
    s.steps.push_back({{1, {a.begin(), a.begin() + 20}, false},
                       {2, {b.begin(), b.begin() + 2}, false},
                       {3, {c.begin(), c.begin() + 9}, true}});
    for (std::int64_t i = 0; i < 6; ++i) {
      s.steps.push_back({{3, {c[sz_of(9 + i)]}, false},
                         {1, {a[sz_of(20 + i)]}, false},
                         {2, {b[sz_of(2 + i)]}, false}});
    }
    const char* l = w.spec.is_mla() ? "helix:kvp=8,tpa=1,tpf=2,ep=4" : "helix:kvp=4,tpa=2";
    rank_program_options on;
    on.hopb = true;
    auto off_run = run_sharded_forward(w, l, s);
    auto on_run = run_sharded_forward(w, l, s, on);
    ASSERT_TRUE(off_run.has_value()) << off_run.error().to_string();
    ASSERT_TRUE(on_run.has_value()) << on_run.error().to_string();
    EXPECT_EQ(on_run->logits, off_run->logits) << model;
    expect_matches_reference(w, l, s, nullptr, on);
  }
}

/// kernels::sample (reference backend) on one row of gathered full logits.
std::int32_t full_row_token(const std::vector<float>& logits, std::int64_t row, std::int64_t vocab,
                            const kernels::sampling_options& o, std::uint64_t id,
                            std::int64_t pos) {
  std::int32_t want = -1;
  std::vector<std::uint8_t> ws(kernels::sampling_workspace_bytes(vocab));
  kernels::sample_params p;
  p.logits = logits.data() + row * vocab;
  p.rows = 1;
  p.vocab = vocab;
  p.options = &o;
  p.request_ids = &id;
  p.positions = &pos;
  p.tokens = &want;
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  const status st = kernels::sample(p, {.backend = kernels::backend::reference});
  EXPECT_TRUE(st.ok()) << st.to_string();
  return want;
}

// Every step of a one-sequence script sampled over the sharded vocabulary must pick what
// kernels::sample picks on the gathered full logits of the same step. Returns the rows that took
// the full-row round.
std::int64_t expect_sampling_matches(const model_weights& w, const char* layout_text,
                                     const script& s, const sampling_request& req) {
  auto got = run_sharded_forward(w, layout_text, s, {}, &req);
  EXPECT_TRUE(got.has_value()) << got.error().to_string();
  if (!got.has_value()) return 0;
  EXPECT_TRUE(got->tokens_agree) << layout_text;
  EXPECT_EQ(got->tokens.size(), s.steps.size());
  std::int64_t pos = 0;
  for (std::size_t step = 0; step < s.steps.size() && step < got->tokens.size(); ++step) {
    pos += static_cast<std::int64_t>(s.steps[step][0].tokens.size());
    const std::int32_t want =
        full_row_token(got->logits[step], 0, w.spec.vocab, req.options, 100, pos);
    EXPECT_EQ(got->tokens[step], std::vector<std::int32_t>{want})
        << layout_text << " step " << step << " k_max " << req.k_max << " top_k "
        << req.options.top_k << " top_p " << req.options.top_p;
  }
  return got->full_row_samples;
}

// Sampling over the sharded vocabulary (8 and 2 shards) picks what kernels::sample picks on the
// gathered full logits, greedy and with temperature, top-k and top-p.
TEST(RankProgram, ShardedSamplingMatchesFullSampler) {
  const model_weights w = seeded("tiny-llama");
  const script s = prefill_then_decode(w.spec.vocab, 12, 12, 10);
  sampling_request greedy;
  sampling_request hot;
  hot.options = {.temperature = 0.9f, .top_k = 20, .top_p = 0.9f, .seed = 77};
  for (const sampling_request& req : {greedy, hot}) {
    for (const char* l : {"helix:kvp=4,tpa=2", "tp:tp=2"}) {
      EXPECT_EQ(expect_sampling_matches(w, l, s, req), 0) << l;
    }
  }
}

// Regression: top_p 0.9 at temperature 1 (no top_k), or top_k above the candidates a shard
// sends, failed the whole step with failed_precondition. Every top_k and top_p is now exact over
// 2, 4 and 8 ranks, with the vocabulary split evenly (256 tokens) and unevenly (250), and with a
// k_max small enough that most rows take the full-row round.
TEST(RankProgram, ShardedSamplingIsExactForAnyTopKAndTopP) {
  model_spec spec = *builtin_model("tiny-llama");
  std::int64_t full_rows = 0;
  for (const std::int64_t vocab : {256, 250}) {
    spec.vocab = vocab;
    auto w = init_seeded_weights(spec, dtype::f32, 1234);
    ASSERT_TRUE(w.has_value()) << w.error().to_string();
    const script s = prefill_then_decode(vocab, 12, 12, 6);
    for (const char* l : {"tp:tp=2", "helix:kvp=2,tpa=2", "helix:kvp=4,tpa=2"}) {
      for (const kernels::sampling_options o :
           {kernels::sampling_options{.temperature = 1.0f, .top_k = 0, .top_p = 0.9f, .seed = 5},
            kernels::sampling_options{.temperature = 0.7f, .top_k = 100, .top_p = 1.0f, .seed = 6},
            kernels::sampling_options{.temperature = 1.0f, .top_k = 300, .top_p = 1.0f, .seed = 7},
            kernels::sampling_options{
                .temperature = 2.0f, .top_k = 100, .top_p = 0.999f, .seed = 8},
            kernels::sampling_options{
                .temperature = 1.0f, .top_k = 300, .top_p = 0.9f, .seed = 9}}) {
        for (const std::int32_t k_max : {kernels::shard_summary_capacity, 8}) {
          sampling_request req;
          req.options = o;
          req.k_max = k_max;
          full_rows += expect_sampling_matches(*w, l, s, req);
        }
      }
    }
  }
  EXPECT_GT(full_rows, 0);  // the second round ran
}

// A row whose logits are NaN is reported on its own when the step asks for row status: its token
// is -1, the other row is sampled as usual and forward() succeeds; without row status the step
// fails with the same invalid_argument on every rank.
TEST(RankProgram, NonFiniteLogitsRowIsReportedPerRow) {
  model_weights w = seeded("tiny-llama");
  const std::int32_t poisoned = 7;  // its embedding row becomes NaN
  for (std::int64_t i = 0; i < w.spec.hidden; ++i) {
    store_from_f32(w.embed.data(), w.embed.type(), sz_of(poisoned * w.spec.hidden + i), NAN);
  }
  script s;
  s.num_seqs = 2;
  s.steps.push_back({{1, {1, 2, 3}, false}, {2, {4, 5}, false}});
  s.steps.push_back({{1, {poisoned}, false}, {2, {6}, false}});
  sampling_request req;
  req.options = {.temperature = 1.0f, .top_k = 0, .top_p = 0.9f, .seed = 3};
  req.row_status = true;
  auto got = run_sharded_forward(w, "helix:kvp=2,tpa=2", s, {}, &req);
  ASSERT_TRUE(got.has_value()) << got.error().to_string();
  EXPECT_TRUE(got->tokens_agree);
  ASSERT_EQ(got->row_status.size(), 2u);
  for (const status& st : got->row_status[0]) EXPECT_TRUE(st.ok()) << st.to_string();
  const status& bad = got->row_status[1][0];
  EXPECT_EQ(bad.code(), errc::invalid_argument) << bad.to_string();
  EXPECT_NE(bad.message().find("row 0"), std::string::npos) << bad.message();
  EXPECT_NE(bad.message().find("token 0"), std::string::npos) << bad.message();
  EXPECT_EQ(got->tokens[1][0], -1);
  EXPECT_TRUE(got->row_status[1][1].ok()) << got->row_status[1][1].to_string();
  EXPECT_EQ(got->tokens[1][1],
            full_row_token(got->logits[1], 1, w.spec.vocab, req.options, 101, 3));

  req.row_status = false;
  auto failed = run_sharded_forward(w, "helix:kvp=2,tpa=2", s, {}, &req);
  ASSERT_FALSE(failed.has_value());
  EXPECT_EQ(failed.error().code(), errc::invalid_argument) << failed.error().to_string();
  EXPECT_NE(failed.error().message().find("row 0"), std::string::npos);
}

// The owners come from the caller: a wrong count or a member outside the column is refused before
// anything changes.
TEST(RankProgram, RejectsWrongBlockOwners) {
  const model_weights w = seeded("tiny-llama");
  auto l = layout::parse("helix:kvp=1,tpa=1");
  ASSERT_TRUE(l.has_value());
  auto fab = transport::make_local_fabric(1);
  ASSERT_TRUE(fab.has_value());
  auto world = (*fab)->make_world(0);
  auto kvp = (*fab)->make_communicator(0, std::vector<int>{0});
  ASSERT_TRUE(world.has_value() && kvp.has_value());
  auto prog = rank_program::create(w, *l, 0, std::move(world).value(), std::move(kvp).value(), {});
  ASSERT_TRUE(prog.has_value()) << prog.error().to_string();
  const std::uint64_t seq = (*prog)->open_sequence();
  const std::vector<std::int32_t> tokens = {1, 2, 3, 4, 5};
  const decoder::batch_item item{seq, tokens, false};
  std::vector<float> logits(sz_of(w.spec.vocab));
  const std::vector<std::int64_t> none;
  const std::vector<std::int64_t> outside = {1};
  const std::vector<std::int64_t> two = {0, 0};
  for (const auto* owners : {&none, &outside, &two}) {
    const status st = (*prog)->forward({&item, 1}, *owners, logits);
    EXPECT_EQ(st.code(), errc::invalid_argument) << st.to_string();
    EXPECT_EQ(*(*prog)->sequence_length(seq), 0);
    EXPECT_EQ((*prog)->kv().used_slots(), 0);
  }
  const std::vector<std::int64_t> right = {0};
  ASSERT_TRUE((*prog)->forward({&item, 1}, right, logits).ok());
  EXPECT_EQ(*(*prog)->sequence_length(seq), 5);
  EXPECT_EQ((*prog)->append_synthetic(seq, 40, 1, none).code(), errc::invalid_argument);
  const std::vector<std::int64_t> three = {0, 0, 0};  // 11 tokens fill block 0, 29 open 2 more
  EXPECT_EQ((*prog)->append_synthetic(seq, 40, 1, three).code(), errc::invalid_argument);
  const std::vector<std::int64_t> two_more = {0, 0};
  ASSERT_TRUE((*prog)->append_synthetic(seq, 40, 1, two_more).ok());
  EXPECT_EQ(*(*prog)->sequence_length(seq), 45);
}

TEST(RankProgram, RejectsMismatchedCommunicators) {
  const model_weights w = seeded("tiny-llama");
  auto l = layout::parse("helix:kvp=2,tpa=2");
  ASSERT_TRUE(l.has_value());
  auto fab = transport::make_local_fabric(4);
  ASSERT_TRUE(fab.has_value());
  auto world = (*fab)->make_world(2);
  ASSERT_TRUE(world.has_value());
  const std::vector<int> wrong = {0, 2};  // rank 2's KVP group is {2, 3}
  auto kvp = (*fab)->make_communicator(2, wrong);
  ASSERT_TRUE(kvp.has_value());
  auto prog = rank_program::create(w, *l, 2, std::move(world).value(), std::move(kvp).value(), {});
  ASSERT_FALSE(prog.has_value());
  EXPECT_EQ(prog.error().code(), errc::invalid_argument);
}

// A KV store too small on one rank fails the step on every rank with the tables unchanged.
TEST(RankProgram, KvExhaustionFailsOnEveryRank) {
  const model_weights w = seeded("tiny-llama");
  // 33 tokens = 3 blocks over 2 KVP members: one member needs 2 slots, the other 1, and each
  // rank has one. Only the first member's ranks are short, yet every rank must fail (no hang).
  script s = prefill_then_decode(w.spec.vocab, 33, 33, 0);
  rank_program_options o;
  o.kv_capacity_tokens = 16;
  auto got = run_sharded_forward(w, "helix:kvp=2,tpa=2", s, o);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), errc::resource_exhausted);
}

}  // namespace
}  // namespace helix::model
