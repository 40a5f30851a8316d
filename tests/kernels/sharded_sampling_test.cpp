// Sharded sampling (kernels/sharded_sampling.hpp): the token from per-shard summaries, or for an
// undecided row from kernels::sample on the full row (what rank_program does), must equal
// helix::kernels::sample (reference backend) on the full row, token for token, for uneven splits
// with empty shards, every top_k and top_p, any k_max, flat, tied and peaked logits; bad logits
// (NaN, +inf, only -inf) are reported per row, naming the row and the first bad token.
//
// Tolerances: none. Tokens are compared exactly (same z, same noise, same rules).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "kernels/sampling.hpp"
#include "kernels/sharded_sampling.hpp"

namespace helix::kernels {
namespace {

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

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

std::int32_t full_row_token(const row_case& c, backend be) {
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
  const status s = sample(p, exec_context{be, nullptr, nullptr});
  EXPECT_TRUE(s.ok()) << s.to_string();
  return token;
}

std::int32_t reference_token(const row_case& c) {
  return full_row_token(c, backend::reference);
}

/// Summaries of one row per shard, in a rotated rank order (to show order does not matter).
std::vector<shard_summary> summarise(const row_case& c, const std::vector<std::int64_t>& cuts,
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
    EXPECT_TRUE(s.ok()) << s.to_string();
  }
  return summaries;
}

struct sharded_result {
  std::int32_t token = -1;
  bool full_row = false;  // the summaries left the row undecided
};

/// What rank_program does with one row: the merge, then for an undecided row kernels::sample (the
/// optimised CPU backend, as rank_program runs it) on the full row; a bad row is its error.
expected<sharded_result> sharded_token(const row_case& c, const std::vector<std::int64_t>& cuts,
                                       std::int32_t k_max) {
  const std::vector<shard_summary> summaries = summarise(c, cuts, k_max);
  HELIX_ASSIGN_OR_RETURN(const shard_merge m,
                         merge_shard_candidates(summaries, c.options, c.request_id, c.position));
  switch (m.outcome) {
    case merge_outcome::sampled:
      return sharded_result{m.token, false};
    case merge_outcome::undecided:
      return sharded_result{full_row_token(c, backend::cpu), true};
    case merge_outcome::bad_logits:
      return bad_logits_row(0, m.token, m.bad_logit);
  }
  return internal_error("unknown merge outcome");
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
          c.logits =
              random_logits(vocab, request * 1000 + static_cast<std::uint64_t>(vocab), 24.0f, step);
          c.request_id = request;
          for (std::int64_t position = 0; position < 8; ++position) {
            c.position = position * 37 + 3;
            for (const sampling_options& o : all_options()) {
              c.options = o;
              const std::int32_t want = reference_token(c);
              const expected<sharded_result> got = sharded_token(c, cuts, shard_summary_capacity);
              ASSERT_TRUE(got.has_value())
                  << got.error().to_string() << " vocab " << vocab << " shards " << shards;
              ASSERT_EQ(got->token, want)
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

/// Shard layouts of a vocabulary: one shard, two even ones, four uneven with an empty one, eight
/// uneven with an empty one.
std::vector<std::vector<std::int64_t>> layouts(std::int64_t vocab) {
  std::vector<std::int64_t> eight = split(vocab, 7, static_cast<std::uint64_t>(vocab));
  eight.insert(eight.begin() + 3, eight[3]);
  return {{0, vocab},
          {0, vocab / 2, vocab},
          {0, vocab * 3 / 10, vocab * 3 / 10, vocab * 3 / 4, vocab},
          eight};
}

// Regression (top_p 0.9 at T 0.7-1, or top_k 65-300, failed the whole step with
// failed_precondition when a shard's share of the kept set exceeded k_max): every top_k from 1 to
// past the vocabulary, every top_p up to 1, any temperature, any k_max, on flat (huge nuclei),
// tied and peaked logits over uneven shards with empty ones, equals the single-rank sampler.
TEST(ShardedSampling, ExactForEveryTopKAndTopP) {
  const float top_ps[] = {0.1f, 0.5f, 0.9f, 0.95f, 0.99f, 0.999f, 1.0f};
  const float temperatures[] = {0.5f, 0.7f, 1.0f, 2.0f};
  struct shape {
    float spread;
    float step;
  };
  const shape shapes[] = {{2.0f, 0.0f}, {8.0f, 1.0f}, {60.0f, 0.0f}};  // flat, tied, peaked
  std::int64_t compared = 0;
  std::int64_t full_rows = 0;
  std::int64_t sampled_not_greedy = 0;
  for (const std::int64_t vocab : {300, 1000}) {
    const std::int32_t v = static_cast<std::int32_t>(vocab);
    const std::int32_t top_ks[] = {0, 1, 2, 63, 64, 65, 100, 255, 256, 257, 300, v - 1, v, 5000};
    const auto all_cuts = layouts(vocab);
    for (std::size_t layout_idx = 0; layout_idx < all_cuts.size(); ++layout_idx) {
      const auto& cuts = all_cuts[layout_idx];
      for (std::size_t shape_idx = 0; shape_idx < std::size(shapes); ++shape_idx) {
        row_case c;
        c.logits = random_logits(vocab, 40 + layout_idx * 3 + shape_idx, shapes[shape_idx].spread,
                                 shapes[shape_idx].step);
        c.request_id = 9 + layout_idx;
        for (const std::int32_t k_max : {shard_summary_capacity, 64, 4}) {
          std::int64_t combo = 0;
          for (const std::int32_t top_k : top_ks) {
            for (const float top_p : top_ps) {
              for (std::int64_t position = 0; position < 2; ++position, ++combo) {
                const float t = temperatures[static_cast<std::size_t>(combo) % 4];
                c.options = opts(t, top_k, top_p, 11 + static_cast<std::uint64_t>(k_max));
                c.position = 1000 * position + combo;
                const std::int32_t want = reference_token(c);
                const expected<sharded_result> got = sharded_token(c, cuts, k_max);
                ASSERT_TRUE(got.has_value()) << got.error().to_string();
                ASSERT_EQ(got->token, want)
                    << "vocab " << vocab << " layout " << layout_idx << " shape " << shape_idx
                    << " k_max " << k_max << " T " << t << " top_k " << top_k << " top_p " << top_p
                    << " position " << c.position;
                // top_k within k_max, or temperature alone, never needs the full row.
                if ((top_k > 0 && top_k <= k_max) || (top_k == 0 && top_p == 1.0f)) {
                  ASSERT_FALSE(got->full_row) << "top_k " << top_k << " top_p " << top_p;
                }
                ++compared;
                full_rows += got->full_row ? 1 : 0;
                row_case g = c;
                g.options = opts(0.0f);
                if (reference_token(g) != want) ++sampled_not_greedy;
              }
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(compared, 2 * 4 * 3 * 3 * 14 * 7 * 2);
  // Both rounds are exercised, and the sampled modes really sample.
  EXPECT_GT(full_rows, compared / 10);
  EXPECT_LT(full_rows, compared * 9 / 10);
  EXPECT_GT(sampled_not_greedy, compared / 4);
}

TEST(ShardedSampling, TinyKMaxFallsBackToTheFullRowAndStaysExact) {
  // All logits nearly equal: a 0.9 nucleus is most of the vocabulary, far beyond 4 candidates
  // per shard, so nearly every row takes the full-row round; the tokens are still the sampler's.
  std::int64_t full_rows = 0;
  std::int64_t rows = 0;
  const std::int64_t vocab = 512;
  const std::vector<std::int64_t> cuts = {0, 100, 100, 300, 512};
  for (std::uint64_t request = 0; request < 16; ++request) {
    row_case c;
    c.logits = random_logits(vocab, request + 900, 0.5f, 0.0f);
    c.request_id = request;
    c.position = static_cast<std::int64_t>(request) * 3;
    for (const sampling_options& o :
         {opts(1.0f, 0, 0.9f), opts(0.7f, 200), opts(2.0f, 300, 0.99f)}) {
      c.options = o;
      const expected<sharded_result> got = sharded_token(c, cuts, 4);
      ASSERT_TRUE(got.has_value()) << got.error().to_string();
      ASSERT_EQ(got->token, reference_token(c)) << "request " << request;
      full_rows += got->full_row ? 1 : 0;
      ++rows;
    }
  }
  EXPECT_GT(full_rows, rows * 9 / 10);
}

TEST(ShardedSampling, SmallNucleiAreDecidedInOneRound) {
  // Peaked logits: the top_p 0.9 nucleus holds a handful of tokens, well inside each shard's 64
  // candidates, so the summaries decide almost every row, even with top_k above k_max.
  std::int64_t full_rows = 0;
  std::int64_t rows = 0;
  const std::int64_t vocab = 2000;
  const std::vector<std::int64_t> cuts = {0, 700, 1000, 1000, 2000};
  for (std::uint64_t request = 0; request < 50; ++request) {
    row_case c;
    c.logits = random_logits(vocab, request + 4000, 200.0f, 0.0f);
    c.request_id = request;
    c.position = static_cast<std::int64_t>(request) + 17;
    for (const sampling_options& o : {opts(1.0f, 0, 0.9f), opts(0.7f, 0, 0.95f),
                                      opts(1.0f, 300, 0.9f), opts(1.0f, 1000, 0.99f)}) {
      c.options = o;
      const expected<sharded_result> got = sharded_token(c, cuts, 64);
      ASSERT_TRUE(got.has_value()) << got.error().to_string();
      ASSERT_EQ(got->token, reference_token(c));
      full_rows += got->full_row ? 1 : 0;
      ++rows;
    }
  }
  EXPECT_LE(full_rows, rows / 20) << full_rows << " of " << rows << " rows needed the full row";
}

TEST(ShardedSampling, TopPBoundaryReachedExactlyIsKept) {
  // Eight equal logits, top_p 0.5: the mass of the first four candidates equals top_p * total
  // exactly, and the sampler keeps a prefix as soon as its mass is >= the target, so only ids 0..3
  // may come out (lower id first on ties). With k_max 8 every shard sends everything (the exact
  // sum decides); with k_max 2 the kept set reaches past the candidates: the full row decides.
  row_case c;
  c.logits.assign(8, 0.25f);
  c.options = opts(1.0f, 0, 0.5f);
  std::vector<int> seen(8, 0);
  for (const std::int32_t k_max : {8, 2}) {
    for (std::int64_t position = 0; position < 64; ++position) {
      c.position = position;
      const expected<sharded_result> got = sharded_token(c, {0, 3, 5, 8}, k_max);
      ASSERT_TRUE(got.has_value()) << got.error().to_string();
      ASSERT_EQ(got->token, reference_token(c));
      EXPECT_EQ(got->full_row, k_max == 2);
      ASSERT_LT(got->token, 4);
      ++seen[static_cast<std::size_t>(got->token)];
    }
  }
  for (int t = 0; t < 4; ++t) EXPECT_GT(seen[static_cast<std::size_t>(t)], 0) << t;

  // Sixteen equal logits in two truncated shards of 8 (6 candidates each), top_p 0.25: the
  // boundary falls exactly on the 4th known candidate, within the margin of the shards' masses,
  // so the summaries do not call it (rounding could flip it): the full row decides.
  c.logits.assign(16, -1.5f);
  c.options = opts(0.7f, 0, 0.25f);
  for (std::int64_t position = 0; position < 16; ++position) {
    c.position = position;
    const expected<sharded_result> got = sharded_token(c, {0, 8, 16}, 6);
    ASSERT_TRUE(got.has_value()) << got.error().to_string();
    EXPECT_TRUE(got->full_row);
    ASSERT_EQ(got->token, reference_token(c));
    ASSERT_LT(got->token, 4);
  }
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
        const expected<sharded_result> got = sharded_token(c, cuts, 64);
        ASSERT_TRUE(got.has_value()) << got.error().to_string();
        ASSERT_EQ(got->token, reference_token(c));
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
  EXPECT_EQ(s.mass, 0.0);
  EXPECT_EQ(s.bad_id, -1);
  // Only empty shards: nothing to sample from.
  const std::vector<shard_summary> only_empty = {s};
  const expected<shard_merge> m = merge_shard_candidates(only_empty, o, request, position);
  ASSERT_FALSE(m.has_value());
  EXPECT_EQ(m.error().code(), errc::invalid_argument);
}

TEST(ShardedSampling, SummaryContents) {
  // One shard [100, 106) of a larger vocabulary: global ids, descending order, lower id first on
  // ties, the mass of z relative to its max.
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f, 2.0f};
  const sampling_options o = opts(0.5f, 4, 0.9f);
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
  EXPECT_EQ(s.has_finite, 1);
  double sum = 0.0;
  for (const float l : logits) sum += std::exp(static_cast<double>(l) / 0.5 - 6.0);
  EXPECT_NEAR(s.mass, sum, 1e-12);
  // Without top-p: the Gumbel winner, and no mass.
  const sampling_options hot = opts(0.5f);
  p.options = &hot;
  ASSERT_TRUE(shard_candidates(p).ok());
  EXPECT_GE(s.gumbel_id, 100);
  EXPECT_LT(s.gumbel_id, 106);
  EXPECT_EQ(s.mass, 0.0);

  // Bad k_max and bad options are rejected.
  p.options = &o;
  p.k_max = shard_summary_capacity + 1;
  EXPECT_EQ(shard_candidates(p).code(), errc::invalid_argument);
  p.k_max = 4;
  const sampling_options bad = opts(-1.0f);
  p.options = &bad;
  EXPECT_EQ(shard_candidates(p).code(), errc::invalid_argument);
}

TEST(ShardedSampling, BadLogitsAreReportedPerRow) {
  // Three rows over shards [0, 100), [100, 100), [100, 230), [230, 300): row 1 holds a NaN in
  // the last shard and +inf in the first, row 3 only -inf, row 4 -inf masks; rows 0, 2 and 4
  // must sample as the full-row sampler does, rows 1 and 3 must be reported, naming the lowest
  // bad id.
  const std::int64_t vocab = 300;
  const std::vector<std::int64_t> cuts = {0, 100, 100, 230, 300};
  const std::int64_t rows = 5;
  std::vector<float> logits;
  for (std::int64_t r = 0; r < rows; ++r) {
    std::vector<float> row = random_logits(vocab, 60 + static_cast<std::uint64_t>(r), 10.0f, 0.0f);
    if (r == 1) {
      row[250] = NAN;
      row[42] = INFINITY;
      row[260] = INFINITY;
    }
    if (r == 3) row.assign(sz(vocab), -INFINITY);
    if (r == 4) {
      for (std::size_t t = 0; t < row.size(); ++t) {
        if (t % 7 != 3) row[t] = -INFINITY;
      }
    }
    logits.insert(logits.end(), row.begin(), row.end());
  }
  for (const sampling_options& o : all_options()) {
    std::vector<sampling_options> options(sz(rows), o);
    std::vector<std::uint64_t> requests(sz(rows));
    std::vector<std::int64_t> positions(sz(rows));
    for (std::int64_t r = 0; r < rows; ++r) {
      requests[sz(r)] = 30 + static_cast<std::uint64_t>(r);
      positions[sz(r)] = 4 * r + 1;
    }
    std::vector<shard_summary> summaries((cuts.size() - 1) * sz(rows));  // [shard, row]
    for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
      shard_candidates_params p;
      p.logits = logits.data() + cuts[i];
      p.logits_stride = vocab;
      p.rows = rows;
      p.vocab_begin = cuts[i];
      p.vocab_end = cuts[i + 1];
      p.options = options.data();
      p.request_ids = requests.data();
      p.positions = positions.data();
      p.k_max = 8;
      p.summaries = summaries.data() + i * sz(rows);
      ASSERT_TRUE(shard_candidates(p).ok());
    }
    for (std::int64_t r = 0; r < rows; ++r) {
      std::vector<shard_summary> per_rank;
      for (std::size_t i = 0; i + 1 < cuts.size(); ++i) {
        per_rank.push_back(summaries[i * sz(rows) + sz(r)]);
      }
      const expected<shard_merge> m =
          merge_shard_candidates(per_rank, o, requests[sz(r)], positions[sz(r)]);
      ASSERT_TRUE(m.has_value()) << m.error().to_string();
      row_case c;
      c.logits.assign(logits.begin() + r * vocab, logits.begin() + (r + 1) * vocab);
      c.options = o;
      c.request_id = requests[sz(r)];
      c.position = positions[sz(r)];
      if (r == 1 || r == 3) {
        ASSERT_EQ(m->outcome, merge_outcome::bad_logits) << "row " << r;
        EXPECT_EQ(m->token, r == 1 ? 42 : -1);
        const status st = bad_logits_row(r, m->token, m->bad_logit);
        EXPECT_EQ(st.code(), errc::invalid_argument);
        EXPECT_NE(st.message().find(fmt::format("row {}", r)), std::string::npos) << st.message();
        if (r == 1) {
          EXPECT_NE(st.message().find("token 42"), std::string::npos) << st.message();
        }
        // The single-rank sampler refuses the same row with the same message.
        std::vector<std::uint8_t> ws(sampling_workspace_bytes(vocab));
        std::vector<std::int32_t> tokens(sz(rows), -7);
        sample_params sp;
        sp.logits = logits.data();
        sp.rows = rows;
        sp.vocab = vocab;
        sp.options = options.data();
        sp.request_ids = requests.data();
        sp.positions = positions.data();
        sp.tokens = tokens.data();
        sp.workspace = ws.data();
        sp.workspace_bytes = ws.size();
        if (r == 1) {  // the first bad row of the batch; no token is written
          for (const backend be : {backend::reference, backend::cpu}) {
            const status whole = sample(sp, {.backend = be});
            EXPECT_EQ(whole.message(), st.message()) << backend_name(be);
            EXPECT_EQ(tokens, std::vector<std::int32_t>(sz(rows), -7));
          }
        }
        continue;
      }
      ASSERT_NE(m->outcome, merge_outcome::bad_logits) << "row " << r;
      const std::int32_t got =
          m->outcome == merge_outcome::sampled ? m->token : full_row_token(c, backend::cpu);
      EXPECT_EQ(got, reference_token(c)) << "row " << r;
      if (r == 4) {
        EXPECT_EQ(got % 7, 3) << "a masked token was drawn";
      }
    }
  }
}

}  // namespace
}  // namespace helix::kernels
