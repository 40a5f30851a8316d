// sharded_decoder against the single-worker decoder, and its error contract: deterministic errors
// come back and leave it usable, any other failure breaks it for good, and it always shuts down.
#include "apps/sharded_decoder.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "kernels/sampling.hpp"
#include "tests/support/model_fixtures.hpp"

namespace helix::apps {
namespace {

// The driver lives in apps/; what it drives is model/'s.
using namespace helix::model;

model_weights seeded(const std::string& name) {
  return test_support::seeded_weights(name);
}
using test_support::random_tokens;

constexpr float tolerance = 1e-4f;

std::size_t sz_of(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

expected<std::unique_ptr<sharded_decoder>> make_sharded(const model_weights& w,
                                                        std::string_view layout_text,
                                                        rank_program_options rank = {}) {
  HELIX_ASSIGN_OR_RETURN(const layout l, layout::parse(layout_text));
  rank.num_threads = 1;
  return sharded_decoder::create(w, {l, rank});
}

std::unique_ptr<decoder> make_reference(const model_weights& w) {
  decoder_options o;
  o.num_threads = 1;
  auto dec = decoder::create(w, o);
  EXPECT_TRUE(dec.has_value()) << dec.error().to_string();
  return std::move(dec).value();
}

float max_abs_diff(std::span<const float> a, std::span<const float> b) {
  if (a.size() != b.size()) return INFINITY;
  float m = 0.0f;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// Two sequences of different lengths: a 21-token prompt and a 5-token prompt (all logits)
// prefilled in one step, then `decode_steps` steps decoding both.
struct two_sequence_script {
  std::vector<std::int32_t> a, b;
  std::vector<std::vector<decoder::batch_item>> steps;
};

two_sequence_script make_script(std::int64_t vocab, std::uint64_t seq_a, std::uint64_t seq_b,
                                std::int64_t decode_steps) {
  two_sequence_script s;
  s.a = random_tokens(21 + decode_steps, vocab, 2);
  s.b = random_tokens(5 + decode_steps, vocab, 3);
  const std::span<const std::int32_t> a(s.a), b(s.b);
  s.steps.push_back({{seq_a, a.first(21), false}, {seq_b, b.first(5), true}});
  for (std::int64_t i = 0; i < decode_steps; ++i) {
    s.steps.push_back(
        {{seq_b, b.subspan(sz_of(5 + i), 1), false}, {seq_a, a.subspan(sz_of(21 + i), 1), false}});
  }
  return s;
}

// Runs the script on both and checks every step's logits (and, via step_output, that greedy
// sharded sampling picks the reference's argmax).
void expect_script_matches(const model_weights& w, sharded_decoder& sharded, decoder& ref,
                           const two_sequence_script& s, std::string_view label) {
  std::vector<float> want, got;
  for (std::size_t i = 0; i < s.steps.size(); ++i) {
    const auto& items = s.steps[i];
    const std::int64_t rows = decoder::logits_rows(items);
    want.resize(sz_of(rows * w.spec.vocab));
    got.assign(want.size(), NAN);
    ASSERT_TRUE(ref.forward(items, want).ok());
    if (i % 2 == 0) {
      const status st = sharded.forward(items, got);
      ASSERT_TRUE(st.ok()) << label << " step " << i << ": " << st.to_string();
    } else {
      std::vector<kernels::sampling_options> greedy(sz_of(rows));
      std::vector<std::uint64_t> ids(sz_of(rows));
      std::vector<std::int32_t> tokens(sz_of(rows), -1);
      for (std::int64_t r = 0; r < rows; ++r) ids[sz_of(r)] = static_cast<std::uint64_t>(r);
      step_output out;
      out.logits = got;
      out.sampling = greedy;
      out.request_ids = ids;
      out.tokens = tokens;
      const status st = sharded.forward(items, out);
      ASSERT_TRUE(st.ok()) << label << " step " << i << ": " << st.to_string();
      for (std::int64_t r = 0; r < rows; ++r) {
        const auto row =
            std::span<const float>(want).subspan(sz_of(r * w.spec.vocab), sz_of(w.spec.vocab));
        const auto best = std::max_element(row.begin(), row.end()) - row.begin();
        EXPECT_EQ(tokens[sz_of(r)], best) << label << " step " << i << " row " << r;
      }
    }
    EXPECT_LE(max_abs_diff(got, want), tolerance) << label << " step " << i;
  }
}

class ShardedDecoderLayouts : public ::testing::TestWithParam<std::string> {};

TEST_P(ShardedDecoderLayouts, BatchOfTwoSequencesMatchesDecoder) {
  const model_weights w = seeded("tiny-llama");
  auto sharded = make_sharded(w, GetParam());
  ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
  auto ref = make_reference(w);
  EXPECT_EQ((*sharded)->num_ranks(), 8);
  EXPECT_EQ((*sharded)->spec().name, "tiny-llama");
  auto a = (*sharded)->open_sequence();
  auto b = (*sharded)->open_sequence();
  ASSERT_TRUE(a.has_value() && b.has_value());
  EXPECT_NE(*a, *b);
  ASSERT_EQ(ref->open_sequence(), *a);
  ASSERT_EQ(ref->open_sequence(), *b);
  const two_sequence_script s = make_script(w.spec.vocab, *a, *b, 14);
  expect_script_matches(w, **sharded, *ref, s, GetParam());
  auto len = (*sharded)->sequence_length(*a);
  ASSERT_TRUE(len.has_value());
  EXPECT_EQ(*len, 21 + 14);
}

INSTANTIATE_TEST_SUITE_P(Layouts, ShardedDecoderLayouts,
                         ::testing::Values("helix:kvp=4,tpa=2", "tp:tp=8", "medha:kvp=4,tpa=2"),
                         [](const auto& info) {
                           std::string n = info.param;
                           std::replace_if(
                               n.begin(), n.end(), [](char c) { return !std::isalnum(c); }, '_');
                           return n;
                         });

// The MoE + MLA model under an expert-parallel FFN grid (needs rank_program's MLA and MoE).
TEST(ShardedDecoder, DeepseekMatchesDecoder) {
  const model_weights w = seeded("tiny-deepseek");
  auto sharded = make_sharded(w, "helix:kvp=8,tpa=1,tpf=2,ep=4");
  ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
  auto ref = make_reference(w);
  auto a = (*sharded)->open_sequence();
  auto b = (*sharded)->open_sequence();
  ASSERT_TRUE(a.has_value() && b.has_value());
  ASSERT_EQ(ref->open_sequence(), *a);
  ASSERT_EQ(ref->open_sequence(), *b);
  expect_script_matches(w, **sharded, *ref, make_script(w.spec.vocab, *a, *b, 6), "deepseek");
}

// Unknown sequences are the caller's mistake: reported identically by every rank, nothing changes.
TEST(ShardedDecoder, InvalidInputKeepsItUsable) {
  const model_weights w = seeded("tiny-llama");
  auto sharded = make_sharded(w, "helix:kvp=4,tpa=2");
  ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
  sharded_decoder& d = **sharded;
  auto a = d.open_sequence();
  auto b = d.open_sequence();
  ASSERT_TRUE(a.has_value() && b.has_value());

  const std::vector<std::int32_t> tokens = {1, 2, 3};
  std::vector<float> logits(sz_of(w.spec.vocab));
  const decoder::batch_item unknown{999, tokens, false};
  EXPECT_EQ(d.forward({&unknown, 1}, logits).code(), errc::invalid_argument);
  EXPECT_EQ(d.close_sequence(999).code(), errc::not_found);
  EXPECT_EQ(d.sequence_length(999).error().code(), errc::not_found);
  std::vector<float> short_logits(3);
  const decoder::batch_item good{*a, tokens, false};
  EXPECT_EQ(d.forward({&good, 1}, short_logits).code(), errc::invalid_argument);
  const std::vector<std::int32_t> bad_token = {static_cast<std::int32_t>(w.spec.vocab)};
  const decoder::batch_item out_of_vocab{*a, bad_token, false};
  EXPECT_EQ(d.forward({&out_of_vocab, 1}, logits).code(), errc::invalid_argument);

  // Still usable, and still exact.
  ASSERT_TRUE(d.close_sequence(*a).ok());
  ASSERT_TRUE(d.close_sequence(*b).ok());
  auto ref = make_reference(w);
  auto c = d.open_sequence();
  auto e = d.open_sequence();
  ASSERT_TRUE(c.has_value() && e.has_value());
  // The reference numbers its sequences from 1; map the script onto the sharded ids.
  const std::uint64_t rc = ref->open_sequence();
  const std::uint64_t re = ref->open_sequence();
  const two_sequence_script rs = make_script(w.spec.vocab, rc, re, 3);
  two_sequence_script ss = make_script(w.spec.vocab, *c, *e, 3);
  std::vector<float> want, got;
  for (std::size_t i = 0; i < rs.steps.size(); ++i) {
    const std::int64_t rows = decoder::logits_rows(rs.steps[i]);
    want.resize(sz_of(rows * w.spec.vocab));
    got.resize(want.size());
    ASSERT_TRUE(ref->forward(rs.steps[i], want).ok());
    ASSERT_TRUE(d.forward(ss.steps[i], got).ok());
    EXPECT_LE(max_abs_diff(got, want), tolerance) << "step " << i;
  }
}

// One rank short of KV fails the step on every rank; a step that fits then succeeds.
TEST(ShardedDecoder, KvExhaustionKeepsItUsable) {
  const model_weights w = seeded("tiny-llama");
  rank_program_options o;
  o.kv_capacity_tokens = 16;  // one block per rank
  auto sharded = make_sharded(w, "helix:kvp=2,tpa=2", o);
  ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
  sharded_decoder& d = **sharded;
  auto a = d.open_sequence();
  ASSERT_TRUE(a.has_value());
  const auto tokens = random_tokens(33, w.spec.vocab, 4);  // 3 blocks over 2 KVP members
  std::vector<float> logits(sz_of(w.spec.vocab));
  const decoder::batch_item too_long{*a, tokens, false};
  EXPECT_EQ(d.forward({&too_long, 1}, logits).code(), errc::resource_exhausted);
  auto len = d.sequence_length(*a);
  ASSERT_TRUE(len.has_value());
  EXPECT_EQ(*len, 0);

  const decoder::batch_item fits{*a, std::span<const std::int32_t>(tokens).first(20), false};
  ASSERT_TRUE(d.forward({&fits, 1}, logits).ok());
  auto ref = make_reference(w);
  const decoder::batch_item ref_item{ref->open_sequence(), fits.tokens, false};
  std::vector<float> want(logits.size());
  ASSERT_TRUE(ref->forward({&ref_item, 1}, want).ok());
  EXPECT_LE(max_abs_diff(logits, want), tolerance);
}

TEST(ShardedDecoder, BadLayoutFailsCreate) {
  const model_weights w = seeded("tiny-llama");
  // Not a layout at all: parse() names the problem.
  EXPECT_EQ(layout::parse("helix:kvp=x,tpa=2").error().code(), errc::invalid_argument);
  // A layout that breaks a rule for the model: create() returns the rule's message.
  for (const auto& [text, rule] : std::vector<std::pair<std::string, std::string>>{
           {"helix:kvp=3,tpa=2", "heads_divisible"}, {"helix:kvp=1,tpa=4", "tpa_divides_k"}}) {
    auto d = make_sharded(w, text);
    ASSERT_FALSE(d.has_value()) << text;
    EXPECT_EQ(d.error().code(), errc::invalid_argument) << text;
    EXPECT_NE(d.error().message().find("layout rule " + rule), std::string::npos)
        << text << ": " << d.error().to_string();
  }
  // A bad rank option fails inside every rank's create; the threads still shut down.
  rank_program_options o;
  o.block_tokens = 0;
  auto d = make_sharded(w, "helix:kvp=4,tpa=2", o);
  ASSERT_FALSE(d.has_value());
  EXPECT_EQ(d.error().code(), errc::invalid_argument);
}

TEST(ShardedDecoder, DestructorWithOpenSequencesIsClean) {
  const model_weights w = seeded("tiny-llama");
  for (int round = 0; round < 3; ++round) {
    auto sharded = make_sharded(w, "helix:kvp=4,tpa=2");
    ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
    auto a = (*sharded)->open_sequence();
    ASSERT_TRUE(a.has_value());
    const auto tokens = random_tokens(10, w.spec.vocab, 5);
    std::vector<float> logits(sz_of(w.spec.vocab));
    const decoder::batch_item item{*a, tokens, false};
    ASSERT_TRUE((*sharded)->forward({&item, 1}, logits).ok());
    auto b = (*sharded)->open_sequence();  // open, never used
    ASSERT_TRUE(b.has_value());
  }  // each decoder is destroyed here with both sequences open
}

TEST(ShardedDecoder, StatsReportPerRankUsedSlots) {
  const model_weights w = seeded("tiny-llama");
  auto sharded = make_sharded(w, "helix:kvp=4,tpa=2");
  ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
  sharded_decoder& d = **sharded;
  auto before = d.stats();
  ASSERT_EQ(before.size(), 8u);
  for (const rank_stats& s : before) EXPECT_EQ(s.kv_used_slots, 0);
  auto a = d.open_sequence();
  ASSERT_TRUE(a.has_value());
  const auto tokens = random_tokens(41, w.spec.vocab, 6);  // 3 blocks of 16
  std::vector<float> logits(sz_of(w.spec.vocab));
  const decoder::batch_item item{*a, tokens, false};
  ASSERT_TRUE(d.forward({&item, 1}, logits).ok());
  const auto after = d.stats();
  ASSERT_EQ(after.size(), 8u);
  std::int64_t total = 0;
  for (std::size_t r = 0; r < after.size(); ++r) {
    const rank_stats& s = after[r];
    EXPECT_EQ(s.rank, static_cast<std::int64_t>(r));
    EXPECT_GT(s.kv_num_slots, 0);
    EXPECT_LE(s.kv_used_slots, 1) << "rank " << r;  // round-robin: one block per KVP member
    EXPECT_GE(s.kv_bytes_used, 0);
    EXPECT_EQ(s.kv_bytes_used == 0, s.kv_used_slots == 0);
    total += s.kv_used_slots;
  }
  EXPECT_EQ(total, 3 * 2);  // 3 blocks, stored once in each of the two TPA columns
  ASSERT_TRUE(d.close_sequence(*a).ok());
  for (const rank_stats& s : d.stats()) EXPECT_EQ(s.kv_used_slots, 0);
}

// A failure the ranks cannot rule out up front (here the data plane aborted under them, as when a
// rank dies inside a collective) breaks the decoder: later calls name that first error, and the
// destructor still returns.
TEST(ShardedDecoder, NonDeterministicFailureBreaksIt) {
  const model_weights w = seeded("tiny-llama");
  auto sharded = make_sharded(w, "helix:kvp=4,tpa=2");
  ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
  sharded_decoder& d = **sharded;
  auto a = d.open_sequence();
  ASSERT_TRUE(a.has_value());
  const auto tokens = random_tokens(8, w.spec.vocab, 7);
  const decoder::batch_item item{*a, tokens, false};
  std::vector<float> logits(static_cast<std::size_t>(w.spec.vocab));
  d.abort(status(errc::aborted, "rank 3 went away"));
  const status st = d.forward({&item, 1}, logits);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), errc::aborted) << st.to_string();
  EXPECT_NE(st.message().find("rank 3 went away"), std::string::npos) << st.to_string();
  const auto again = d.open_sequence();
  ASSERT_FALSE(again.has_value());
  EXPECT_EQ(again.error().code(), errc::failed_precondition);
  EXPECT_NE(again.error().message().find("broken"), std::string::npos);
  EXPECT_NE(again.error().message().find("rank 3 went away"), std::string::npos)
      << again.error().to_string();
  EXPECT_EQ(d.sequence_length(*a).error().code(), errc::failed_precondition);
}

// Top-p alone with one candidate per shard used to fail the step (and break the decoder): the
// rows the merge cannot decide are sampled from their full rows in a second round, exactly.
TEST(ShardedDecoder, NucleusSamplingWithOneCandidatePerShardIsExactAndKeepsItUsable) {
  const model_weights w = seeded("tiny-llama");
  auto sharded = make_sharded(w, "helix:kvp=4,tpa=2");
  ASSERT_TRUE(sharded.has_value()) << sharded.error().to_string();
  sharded_decoder& d = **sharded;
  auto a = d.open_sequence();
  ASSERT_TRUE(a.has_value());
  const auto tokens = random_tokens(8, w.spec.vocab, 7);
  const decoder::batch_item item{*a, tokens, false};
  const kernels::sampling_options nucleus{1.0f, 0, 0.999f, 1};
  const std::uint64_t id = 1;
  std::int32_t token = -1;
  std::vector<float> logits(static_cast<std::size_t>(w.spec.vocab));
  step_output out;
  out.sampling = {&nucleus, 1};
  out.request_ids = {&id, 1};
  out.tokens = {&token, 1};
  out.logits = logits;
  out.k_max = 1;  // used to be failed_precondition: the nucleus needs far more candidates
  const status st = d.forward({&item, 1}, out);
  ASSERT_TRUE(st.ok()) << st.to_string();
  // The single-rank sampler on the gathered logits picks the same token.
  std::int32_t want = -1;
  const std::int64_t position = static_cast<std::int64_t>(tokens.size());
  std::vector<std::byte> ws(kernels::sampling_workspace_bytes(w.spec.vocab));
  kernels::sample_params sp;
  sp.logits = logits.data();
  sp.rows = 1;
  sp.vocab = w.spec.vocab;
  sp.options = &nucleus;
  sp.request_ids = &id;
  sp.positions = &position;
  sp.tokens = &want;
  sp.workspace = ws.data();
  sp.workspace_bytes = ws.size();
  ASSERT_TRUE(kernels::sample(sp, kernels::exec_context{}).ok());
  EXPECT_EQ(token, want);
  EXPECT_TRUE(d.open_sequence().has_value());
}

}  // namespace
}  // namespace helix::apps
