// Sharded sampling (kernels/sharded_sampling.hpp): the token merged from per-shard summaries must
// equal helix::kernels::sample (reference backend) on the full row, token for token, for uneven
// splits, every sampling mode, and tied logits; k_max too small for a top-p nucleus must be a
// failed_precondition, never a different token; empty shards are handled.
//
// Tolerances: none. Tokens are compared exactly (same z, same noise, same rules).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "kernels/sampling.hpp"
#include "kernels/sharded_sampling.hpp"

namespace helix::kernels {
namespace {

sampling_options opts(float temperature, std::int32_t top_k = 0, float top_p = 1.0f,
                      std::uint64_t seed = 7) {
  sampling_options o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  return o;
}

/// Logits in [-spread/2, spread/2); with `step` > 0 rounded to multiples of step (ties).
std::vector<float> random_logits(std::int64_t vocab, std::uint64_t stream, float spread,
                                 float step) {
  std::vector<float> v(static_cast<std::size_t>(vocab));
  for (std::int64_t t = 0; t < vocab; ++t) {
    float x = spread *
              (random_uniform(3, stream, 0, rng_purpose::test_data, static_cast<std::uint64_t>(t)) -
               0.5f);
    if (step > 0.0f) x = step * std::round(x / step);
    v[static_cast<std::size_t>(t)] = x;
  }
  return v;
}

/// Uneven shard boundaries: `shards` + 1 increasing cut points from 0 to vocab, random widths.
std::vector<std::int64_t> split(std::int64_t vocab, int shards, std::uint64_t stream) {
  std::vector<std::int64_t> cuts = {0, vocab};
  for (int i = 1; i < shards; ++i) {
    const float u =
        random_uniform(5, stream, static_cast<std::uint64_t>(i), rng_purpose::test_data, 0);
    cuts.push_back(static_cast<std::int64_t>(u * static_cast<float>(vocab)));
  }
  std::sort(cuts.begin(), cuts.end());
  return cuts;
}

struct row_case {
  std::vector<float> logits;
  sampling_options options;
  std::uint64_t request_id = 0;
  std::int64_t position = 0;
};

std::int32_t reference_token(const row_case& c) {
  const auto vocab = static_cast<std::int64_t>(c.logits.size());
  std::vector<std::uint8_t> workspace(sampling_workspace_bytes(vocab));
  std::int32_t token = -1;
  sample_params p;
  p.logits = c.logits.data();
  p.rows = 1;
  p.vocab = vocab;
  p.options = &c.options;
  p.request_ids = &c.request_id;
  p.positions = &c.position;
  p.tokens = &token;
  p.workspace = workspace.data();
  p.workspace_bytes = workspace.size();
  const status s = sample(p, exec_context{backend::reference, nullptr, nullptr});
  EXPECT_TRUE(s.ok()) << s.to_string();
  return token;
}

/// Summaries of one row per shard (in a rotated rank order, to show order does not matter), then
/// the merge.
expected<std::int32_t> sharded_token(const row_case& c, const std::vector<std::int64_t>& cuts,
                                     std::int32_t k_max) {
  const std::size_t shards = cuts.size() - 1;
  std::vector<shard_summary> summaries(shards);
  for (std::size_t i = 0; i < shards; ++i) {
    shard_candidates_params p;
    p.logits = c.logits.data() + cuts[i];
    p.rows = 1;
    p.vocab_begin = cuts[i];
    p.vocab_end = cuts[i + 1];
    p.options = &c.options;
    p.request_ids = &c.request_id;
    p.positions = &c.position;
    p.k_max = k_max;
    p.summaries = &summaries[(i + 1) % shards];
    const status s = shard_candidates(p);
    if (!s.ok()) return s;
  }
  return merge_shard_candidates(summaries, c.options, c.request_id, c.position);
}

const std::vector<sampling_options>& all_options() {
  static const std::vector<sampling_options> o = {opts(0.0f), opts(0.7f), opts(1.0f, 5),
                                                  opts(1.0f, 0, 0.9f), opts(0.8f, 50, 0.95f)};
  return o;
}

TEST(ShardedSampling, MatchesSingleRankSamplerTokenForToken) {
  std::int64_t compared = 0;
  std::int64_t differing_from_greedy = 0;
  for (const std::int64_t vocab : {97, 256, 1000}) {
    for (const int shards : {1, 2, 3, 8}) {
      for (const float step : {0.0f, 1.0f}) {  // step 1: many tied logits
        const auto cuts = split(vocab, shards, static_cast<std::uint64_t>(vocab * 10 + shards));
        for (std::uint64_t request = 0; request < 6; ++request) {
          row_case c;
          // Spread 24 keeps the T = 1 top-p 0.9 nucleus of a 1000-token row (about 10% of it)
          // within shard_summary_capacity.
          c.logits =
              random_logits(vocab, request * 1000 + static_cast<std::uint64_t>(vocab), 24.0f, step);
          c.request_id = request;
          for (std::int64_t position = 0; position < 8; ++position) {
            c.position = position * 37 + 3;
            for (const sampling_options& o : all_options()) {
              c.options = o;
              const std::int32_t want = reference_token(c);
              const expected<std::int32_t> got = sharded_token(c, cuts, shard_summary_capacity);
              ASSERT_TRUE(got.has_value())
                  << got.error().to_string() << " vocab " << vocab << " shards " << shards;
              ASSERT_EQ(*got, want)
                  << "vocab " << vocab << " shards " << shards << " request " << request
                  << " position " << c.position << " T " << o.temperature << " top_k " << o.top_k
                  << " top_p " << o.top_p << " step " << step;
              ++compared;
              if (o.temperature > 0.0f) {
                c.options = opts(0.0f);
                if (reference_token(c) != want) ++differing_from_greedy;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(compared, 3 * 4 * 2 * 6 * 8 * 5);
  // The sampled modes must actually sample (else a merge that returned the argmax would pass).
  EXPECT_GT(differing_from_greedy, compared / 10);
}

TEST(ShardedSampling, SmallKMaxIsExactOrFailedPrecondition) {
  // With k_max below the shard sizes the top lists are truncated: the merge must either give the
  // single-rank token or say failed_precondition, and both outcomes must occur here.
  std::int64_t exact = 0;
  std::int64_t refused = 0;
  const std::int64_t vocab = 1000;
  for (const int shards : {1, 2, 3, 8}) {
    const auto cuts = split(vocab, shards, static_cast<std::uint64_t>(shards) + 99);
    for (std::uint64_t request = 0; request < 8; ++request) {
      row_case c;
      c.logits = random_logits(vocab, request + 500, 24.0f, 0.0f);
      c.request_id = request;
      c.position = static_cast<std::int64_t>(request) * 11;
      for (const sampling_options& o : all_options()) {
        c.options = o;
        const expected<std::int32_t> got = sharded_token(c, cuts, 16);
        if (got.has_value()) {
          ASSERT_EQ(*got, reference_token(c)) << "shards " << shards << " request " << request;
          ++exact;
        } else {
          ASSERT_EQ(got.error().code(), errc::failed_precondition) << got.error().to_string();
          ++refused;
        }
      }
    }
  }
  EXPECT_GT(exact, 0);
  EXPECT_GT(refused, 0);
}

TEST(ShardedSampling, FlatDistributionTopPNeedsLargerKMax) {
  // All logits equal: the 0.9 nucleus is 90% of the vocabulary, far more than 8 candidates from
  // each of 4 shards of 64.
  row_case c;
  c.logits.assign(256, 1.5f);
  c.options = opts(1.0f, 0, 0.9f);
  c.request_id = 3;
  c.position = 9;
  const std::vector<std::int64_t> cuts = {0, 64, 128, 192, 256};
  const expected<std::int32_t> small = sharded_token(c, cuts, 8);
  ASSERT_FALSE(small.has_value());
  EXPECT_EQ(small.error().code(), errc::failed_precondition) << small.error().to_string();
  // A k_max covering whole shards sends every token and is exact again.
  const expected<std::int32_t> full = sharded_token(c, cuts, 64);
  ASSERT_TRUE(full.has_value()) << full.error().to_string();
  EXPECT_EQ(*full, reference_token(c));
  // top_k within k_max is exact even when the flat top-p alone is not.
  c.options = opts(1.0f, 8, 0.9f);
  const expected<std::int32_t> with_k = sharded_token(c, cuts, 8);
  ASSERT_TRUE(with_k.has_value()) << with_k.error().to_string();
  EXPECT_EQ(*with_k, reference_token(c));
  // top_k above k_max cannot be exact here.
  c.options = opts(1.0f, 20);
  const expected<std::int32_t> big_k = sharded_token(c, cuts, 8);
  ASSERT_FALSE(big_k.has_value());
  EXPECT_EQ(big_k.error().code(), errc::failed_precondition);
}

TEST(ShardedSampling, TopPBoundaryReachedExactlyIsKept) {
  // Eight equal logits, top_p 0.5: the mass of the first four candidates equals top_p * total
  // exactly, and the sampler keeps a prefix as soon as its mass is >= the target, so only ids 0..3
  // may come out (lower id first on ties). Checked alone (top-p, so the whole set is known) and
  // with truncated shards (mass from the shards' log-sum-exps).
  row_case c;
  c.logits.assign(8, 0.25f);
  c.options = opts(1.0f, 0, 0.5f);
  std::vector<int> seen(8, 0);
  for (const std::int32_t k_max : {8, 4}) {
    for (std::int64_t position = 0; position < 64; ++position) {
      c.position = position;
      const expected<std::int32_t> got = sharded_token(c, {0, 3, 5, 8}, k_max);
      ASSERT_TRUE(got.has_value()) << got.error().to_string();
      ASSERT_EQ(*got, reference_token(c));
      ASSERT_LT(*got, 4);
      ++seen[static_cast<std::size_t>(*got)];
    }
  }
  for (int t = 0; t < 4; ++t) EXPECT_GT(seen[static_cast<std::size_t>(t)], 0) << t;
}

TEST(ShardedSampling, EmptyShardsAreHandled) {
  std::int64_t checked = 0;
  for (const std::vector<std::int64_t>& cuts :
       {std::vector<std::int64_t>{0, 0, 40, 97}, std::vector<std::int64_t>{0, 50, 50, 97},
        std::vector<std::int64_t>{0, 97, 97}, std::vector<std::int64_t>{0, 30, 30, 30, 97}}) {
    for (std::uint64_t request = 0; request < 10; ++request) {
      row_case c;
      c.logits = random_logits(97, request + 77, 24.0f, request % 2 == 0 ? 0.0f : 1.0f);
      c.request_id = request;
      c.position = 5;
      for (const sampling_options& o : all_options()) {
        c.options = o;
        const expected<std::int32_t> got = sharded_token(c, cuts, 64);
        ASSERT_TRUE(got.has_value()) << got.error().to_string();
        ASSERT_EQ(*got, reference_token(c));
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 4 * 10 * 5);

  // An empty shard's own summary: no argmax, no winner, no candidates, no mass.
  shard_summary s;
  const sampling_options o = opts(1.0f, 5, 0.9f);
  const std::uint64_t request = 1;
  const std::int64_t position = 2;
  shard_candidates_params p;
  p.rows = 1;
  p.vocab_begin = 10;
  p.vocab_end = 10;
  p.options = &o;
  p.request_ids = &request;
  p.positions = &position;
  p.summaries = &s;
  ASSERT_TRUE(shard_candidates(p).ok());
  EXPECT_EQ(s.argmax_id, -1);
  EXPECT_EQ(s.gumbel_id, -1);
  EXPECT_EQ(s.count, 0);
  EXPECT_TRUE(std::isinf(s.lse) && s.lse < 0.0);
  // Only empty shards: nothing to sample from.
  const std::vector<shard_summary> only_empty = {s};
  EXPECT_FALSE(merge_shard_candidates(only_empty, o, request, position).has_value());
}

TEST(ShardedSampling, SummaryContents) {
  // One shard [100, 106) of a larger vocabulary: global ids, descending order, lower id first on
  // ties, lse of z.
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 2.0f};
  const sampling_options o = opts(0.5f, 4);
  const std::uint64_t request = 0;
  const std::int64_t position = 0;
  shard_summary s;
  shard_candidates_params p;
  p.logits = logits.data();
  p.rows = 1;
  p.vocab_begin = 100;
  p.vocab_end = 106;
  p.options = &o;
  p.request_ids = &request;
  p.positions = &position;
  p.summaries = &s;
  ASSERT_TRUE(shard_candidates(p).ok());
  ASSERT_EQ(s.count, 4);
  EXPECT_EQ(s.ids[0], 101);
  EXPECT_EQ(s.ids[1], 103);
  EXPECT_EQ(s.ids[2], 102);
  EXPECT_EQ(s.ids[3], 105);
  EXPECT_FLOAT_EQ(s.values[0], 6.0f);
  EXPECT_FLOAT_EQ(s.values[3], 4.0f);
  EXPECT_EQ(s.argmax_id, 101);
  EXPECT_FLOAT_EQ(s.argmax_value, 6.0f);
  double sum = 0.0;
  for (const float l : logits) sum += std::exp(static_cast<double>(l) / 0.5);
  EXPECT_NEAR(s.lse, std::log(sum), 1e-12);
  EXPECT_GE(s.gumbel_id, 100);
  EXPECT_LT(s.gumbel_id, 106);

  // Bad k_max and bad options are rejected.
  p.k_max = shard_summary_capacity + 1;
  EXPECT_EQ(shard_candidates(p).code(), errc::invalid_argument);
  p.k_max = 4;
  const sampling_options bad = opts(-1.0f);
  p.options = &bad;
  EXPECT_EQ(shard_candidates(p).code(), errc::invalid_argument);
}

}  // namespace
}  // namespace helix::kernels
