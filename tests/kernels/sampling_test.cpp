// Token sampling: the optimised CPU kernel against the reference, greedy and tie rules,
// determinism of the counter-based noise, top-k / top-p support, the sampled distribution, and
// option validation.
//
// Tolerances: optimised vs reference tokens are exact (same arithmetic, same noise). The
// empirical distribution over dist_samples positions must be within dist_tol (absolute) of
// softmax(z / T) for every token (about 6 standard deviations at 20000 samples).
#include <cmath>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "core/thread_pool.hpp"
#include "kernels/sampling.hpp"

namespace helix::kernels {
namespace {

constexpr std::int64_t dist_samples = 20000;
constexpr double dist_tol = 0.02;

struct batch {
  std::int64_t vocab = 0;
  std::vector<float> logits;  // [rows, vocab]
  std::vector<sampling_options> options;
  std::vector<std::uint64_t> request_ids;
  std::vector<std::int64_t> positions;

  void add(const std::vector<float>& row, const sampling_options& o, std::uint64_t request,
           std::int64_t position) {
    logits.insert(logits.end(), row.begin(), row.end());
    options.push_back(o);
    request_ids.push_back(request);
    positions.push_back(position);
  }
};

std::vector<std::int32_t> run(const batch& b, const exec_context& ctx) {
  const auto rows = static_cast<std::int64_t>(b.options.size());
  std::vector<std::int32_t> tokens(static_cast<std::size_t>(rows), -1);
  std::vector<std::uint8_t> workspace(sampling_workspace_bytes(b.vocab));
  sample_params p;
  p.logits = b.logits.data();
  p.rows = rows;
  p.vocab = b.vocab;
  p.options = b.options.data();
  p.request_ids = b.request_ids.data();
  p.positions = b.positions.data();
  p.tokens = tokens.data();
  p.workspace = workspace.data();
  p.workspace_bytes = workspace.size();
  const status s = sample(p, ctx);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return tokens;
}

std::vector<float> random_logits(std::int64_t vocab, std::uint64_t stream, float spread) {
  std::vector<float> v(static_cast<std::size_t>(vocab));
  for (std::int64_t t = 0; t < vocab; ++t) {
    v[static_cast<std::size_t>(t)] = spread * (random_uniform(17, stream, 0, rng_purpose::test_data,
                                                              static_cast<std::uint64_t>(t)) -
                                               0.5f);
  }
  return v;
}

sampling_options opts(float temperature, std::int32_t top_k = 0, float top_p = 1.0f,
                      std::uint64_t seed = 42) {
  sampling_options o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.seed = seed;
  return o;
}

TEST(SamplingCpu, MatchesReferenceExactly) {
  thread_pool pool(2);
  const sampling_options cases[] = {opts(0.0f),
                                    opts(0.7f),
                                    opts(1.0f, 5),
                                    opts(1.0f, 1),
                                    opts(1.3f, 0, 0.9f),
                                    opts(0.8f, 50, 0.8f),
                                    opts(5.0f, 0, 0.999f),
                                    opts(1.0f, 1 << 20),
                                    opts(2.0f, 3, 0.5f, 7)};
  for (std::int64_t vocab : {1, 7, 100, 8197, 50000}) {
    // Spreads of 20 and 300 let the optimised kernel prune most tokens before drawing noise.
    for (float spread : {2.0f, 20.0f, 300.0f}) {
      batch b;
      b.vocab = vocab;
      std::int64_t row = 0;
      for (const sampling_options& o : cases) {
        for (int rep = 0; rep < 3; ++rep, ++row) {
          b.add(random_logits(vocab, static_cast<std::uint64_t>(row), spread), o,
                static_cast<std::uint64_t>(1000 + row), 77 * row);
        }
      }
      const std::vector<std::int32_t> ref = run(b, {.backend = backend::reference});
      const std::vector<std::int32_t> opt = run(b, {.backend = backend::cpu, .pool = &pool});
      EXPECT_EQ(opt, ref) << "vocab " << vocab << " spread " << spread;
      for (std::int32_t t : opt) {
        ASSERT_GE(t, 0);
        ASSERT_LT(t, vocab);
      }
    }
  }
}

// Masked tokens (-inf logits) are never drawn, and the optimised kernel agrees.
TEST(SamplingCpu, MaskedTokensAreNeverDrawn) {
  thread_pool pool(2);
  batch b;
  b.vocab = 20000;
  std::vector<float> logits = random_logits(b.vocab, 300, 4.0f);
  for (std::size_t t = 0; t < logits.size(); ++t) {
    if (t % 3 != 1) logits[t] = -INFINITY;
  }
  for (std::int64_t pos = 0; pos < 20; ++pos) {
    b.add(logits, opts(1.0f), 1, pos);
    b.add(logits, opts(0.5f, 40, 0.9f), 2, pos);
  }
  const std::vector<std::int32_t> ref = run(b, {.backend = backend::reference});
  EXPECT_EQ(run(b, {.backend = backend::cpu, .pool = &pool}), ref);
  for (std::int32_t t : ref) EXPECT_EQ(t % 3, 1) << "token " << t;
}

// A row holding NaN or +inf, or only -inf, has no distribution: both backends refuse the batch
// with the same invalid_argument naming the first bad row and its first bad token, and write no
// token (it used to come out as token 0, or whatever the NaN comparisons left).
TEST(SamplingCpu, NonFiniteRowsAreRefused) {
  thread_pool pool(2);
  struct bad_case {
    std::int64_t token;  // where the bad logit goes; -1: every logit is -inf
    float value;
    const char* names;  // expected in the message
  };
  const bad_case cases[] = {{3, NAN, "token 3"},
                            {9000, INFINITY, "token 9000"},
                            {0, -NAN, "token 0"},
                            {-1, -INFINITY, "every logit is -inf"}};
  for (const bad_case& bc : cases) {
    for (const sampling_options& o : {opts(0.0f), opts(1.0f), opts(0.7f, 40, 0.9f)}) {
      batch b;
      b.vocab = 10000;  // several check blocks of the optimised kernel
      const std::vector<float> good = random_logits(b.vocab, 70, 6.0f);
      std::vector<float> bad = good;
      if (bc.token < 0) {
        bad.assign(bad.size(), -INFINITY);
      } else {
        bad[static_cast<std::size_t>(bc.token)] = bc.value;
        bad[9999] = NAN;  // a later bad logit is not the one named
      }
      b.add(good, o, 1, 0);
      b.add(good, o, 2, 0);
      b.add(bad, o, 3, 0);
      b.add(bad, o, 4, 0);
      std::vector<std::string> messages;
      for (const exec_context ctx : {exec_context{.backend = backend::reference},
                                     exec_context{.backend = backend::cpu, .pool = &pool}}) {
        std::vector<std::int32_t> tokens(4, -5);
        std::vector<std::uint8_t> workspace(sampling_workspace_bytes(b.vocab));
        sample_params p;
        p.logits = b.logits.data();
        p.rows = 4;
        p.vocab = b.vocab;
        p.options = b.options.data();
        p.request_ids = b.request_ids.data();
        p.positions = b.positions.data();
        p.tokens = tokens.data();
        p.workspace = workspace.data();
        p.workspace_bytes = workspace.size();
        const status s = sample(p, ctx);
        EXPECT_EQ(s.code(), errc::invalid_argument) << s.to_string();
        EXPECT_NE(s.message().find("row 2"), std::string::npos) << s.message();
        EXPECT_NE(s.message().find(bc.names), std::string::npos) << s.message();
        EXPECT_EQ(tokens, std::vector<std::int32_t>(4, -5)) << backend_name(ctx.backend);
        messages.push_back(s.message());
      }
      EXPECT_EQ(messages[0], messages[1]);
    }
  }
}

// Regression: random_uniform rounds to exactly 1.0f for 2^-24 of its counters, where the Gumbel
// noise -log(-log(u)) would be +inf and the token would win however unlikely it is. Search a
// position where token 1 draws such a counter; the clamped noise is 16.64. Token 0 (logit 0) draws
// g0; token 1 gets logit -d with d = 17.57 - g0, so that it loses with the clamped noise
// (-d + 16.64 < g0) but is close enough not to be pruned by the optimised kernel
// (-d + 18.5 >= g0), which must therefore draw its noise too.
TEST(SamplingCpu, GreedyIsArgmaxWithLowestIdOnTies) {
  for (backend be : {backend::reference, backend::cpu}) {
    batch b;
    b.vocab = 5;
    b.add({1.0f, 5.0f, 3.0f, 5.0f, -2.0f}, opts(0.0f), 1, 0);
    b.add({-1.0f, -1.0f, -1.0f, -1.0f, -1.0f}, opts(0.0f), 2, 0);
    b.add({0.0f, 0.0f, 0.0f, 0.0f, 9.0f}, opts(0.0f, 2, 0.5f), 3, 0);  // filters do not apply
    EXPECT_EQ(run(b, {.backend = be}), (std::vector<std::int32_t>{1, 0, 4})) << backend_name(be);
  }
  // Across chunk boundaries of the optimised scan: a tie between token 3 and token 20000.
  batch b;
  b.vocab = 30000;
  std::vector<float> row(30000, 0.0f);
  row[3] = 1.0f;
  row[20000] = 1.0f;
  b.add(row, opts(0.0f), 1, 0);
  thread_pool pool(2);
  EXPECT_EQ(run(b, {.backend = backend::cpu, .pool = &pool})[0], 3);
}

TEST(SamplingCpu, DeterministicPerSeedRequestAndPosition) {
  for (backend be : {backend::reference, backend::cpu}) {
    batch b;
    b.vocab = 1000;
    const std::vector<float> flat(1000, 0.0f);
    for (std::int64_t pos = 0; pos < 64; ++pos) b.add(flat, opts(1.0f), 5, pos);
    const std::vector<std::int32_t> first = run(b, {.backend = be});
    EXPECT_EQ(run(b, {.backend = be}), first) << backend_name(be);
    // Different positions draw different tokens.
    EXPECT_GT(std::set<std::int32_t>(first.begin(), first.end()).size(), 40u) << backend_name(be);
    // Another request or another seed draws other tokens at the same positions.
    batch other_request = b;
    for (auto& r : other_request.request_ids) r = 6;
    batch other_seed = b;
    for (auto& o : other_seed.options) o.seed = 43;
    EXPECT_NE(run(other_request, {.backend = be}), first);
    EXPECT_NE(run(other_seed, {.backend = be}), first);
    // A row's token does not depend on the rest of the batch.
    batch single;
    single.vocab = 1000;
    single.add(flat, opts(1.0f), 5, 17);
    EXPECT_EQ(run(single, {.backend = be})[0], first[17]);
  }
}

TEST(SamplingCpu, TopKOneAndTinyTopPEqualGreedy) {
  for (backend be : {backend::reference, backend::cpu}) {
    batch greedy;
    batch top_k1;
    batch top_p_tiny;
    greedy.vocab = top_k1.vocab = top_p_tiny.vocab = 300;
    for (std::int64_t row = 0; row < 50; ++row) {
      const std::vector<float> logits = random_logits(300, 200 + row, 3.0f);
      greedy.add(logits, opts(0.0f), 9, row);
      top_k1.add(logits, opts(1.5f, 1), 9, row);
      top_p_tiny.add(logits, opts(1.5f, 0, 1e-6f), 9, row);
    }
    const std::vector<std::int32_t> expected = run(greedy, {.backend = be});
    EXPECT_EQ(run(top_k1, {.backend = be}), expected) << backend_name(be);
    EXPECT_EQ(run(top_p_tiny, {.backend = be}), expected) << backend_name(be);
  }
}

/// Frequencies of each token over `dist_samples` positions of one row's logits.
std::vector<double> frequencies(const std::vector<float>& logits, const sampling_options& o,
                                backend be, thread_pool* pool) {
  batch b;
  b.vocab = static_cast<std::int64_t>(logits.size());
  for (std::int64_t pos = 0; pos < dist_samples; ++pos) b.add(logits, o, 3, pos);
  std::vector<double> freq(logits.size(), 0.0);
  for (std::int32_t t : run(b, {.backend = be, .pool = pool})) {
    freq[static_cast<std::size_t>(t)] += 1.0 / static_cast<double>(dist_samples);
  }
  return freq;
}

TEST(SamplingCpu, EmpiricalDistributionMatchesSoftmax) {
  thread_pool pool(2);
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, 0.5f};
  constexpr float temperature = 0.8f;
  double total = 0.0;
  for (float z : logits) total += std::exp(z / temperature);
  for (backend be : {backend::reference, backend::cpu}) {
    const std::vector<double> freq = frequencies(logits, opts(temperature), be, &pool);
    for (std::size_t t = 0; t < logits.size(); ++t) {
      const double p = std::exp(logits[t] / temperature) / total;
      EXPECT_NEAR(freq[t], p, dist_tol) << "token " << t << " " << backend_name(be);
    }
  }
}

TEST(SamplingCpu, TopKAndTopPRestrictTheSupport) {
  for (backend be : {backend::reference, backend::cpu}) {
    // top-k 3 of 10 near-flat logits: only tokens 2, 5, 7 (the three largest) appear, each
    // with its renormalised probability.
    std::vector<float> logits(10, 0.0f);
    logits[2] = 0.3f;
    logits[5] = 0.2f;
    logits[7] = 0.1f;
    std::vector<double> freq = frequencies(logits, opts(1.0f, 3), be, nullptr);
    const double total = std::exp(0.3) + std::exp(0.2) + std::exp(0.1);
    for (std::size_t t = 0; t < 10; ++t) {
      if (t == 2 || t == 5 || t == 7) {
        EXPECT_NEAR(freq[t], std::exp(logits[t]) / total, dist_tol) << t;
      } else {
        EXPECT_EQ(freq[t], 0.0) << "token " << t << " outside the top-3";
      }
    }
    // top-p 0.75 over probabilities (0.5, 0.3, 0.15, 0.05): 0.5 < 0.75 <= 0.8 keeps two tokens,
    // drawn as 0.5 : 0.3.
    const std::vector<float> probs = {std::log(0.05f), std::log(0.5f), std::log(0.15f),
                                      std::log(0.3f)};
    freq = frequencies(probs, opts(1.0f, 0, 0.75f), be, nullptr);
    EXPECT_NEAR(freq[1], 0.625, dist_tol) << backend_name(be);
    EXPECT_NEAR(freq[3], 0.375, dist_tol) << backend_name(be);
    EXPECT_EQ(freq[0], 0.0);
    EXPECT_EQ(freq[2], 0.0);
  }
}

TEST(SamplingCpu, InvalidOptionsAreInvalidArgument) {
  const sampling_options bad[] = {opts(-1.0f), opts(1.0f, 0, 0.0f), opts(1.0f, 0, 1.5f),
                                  opts(1.0f, -1), opts(NAN)};
  const char* field[] = {"temperature", "top_p", "top_p", "top_k", "temperature"};
  for (backend be : {backend::reference, backend::cpu}) {
    for (std::size_t i = 0; i < std::size(bad); ++i) {
      const std::vector<float> logits = {0.0f, 1.0f};
      const std::uint64_t request = 1;
      const std::int64_t position = 0;
      std::int32_t token = -1;
      std::vector<std::uint8_t> workspace(sampling_workspace_bytes(2));
      sample_params p;
      p.logits = logits.data();
      p.rows = 1;
      p.vocab = 2;
      p.options = &bad[i];
      p.request_ids = &request;
      p.positions = &position;
      p.tokens = &token;
      p.workspace = workspace.data();
      p.workspace_bytes = workspace.size();
      const status s = sample(p, {.backend = be});
      EXPECT_EQ(s.code(), errc::invalid_argument) << i << ": " << s.to_string();
      EXPECT_NE(s.message().find(field[i]), std::string::npos) << s.message();
      EXPECT_EQ(token, -1);
      // A workspace that is too small is a failed precondition.
      const sampling_options good = opts(1.0f);
      p.options = &good;
      p.workspace_bytes = workspace.size() - 1;
      EXPECT_EQ(sample(p, {.backend = be}).code(), errc::failed_precondition);
    }
  }
}

}  // namespace
}  // namespace helix::kernels
