// MoE router: the optimised CPU kernel against the reference, and hand-made cases for group
// limiting, the selection bias, weight normalisation and ties.
//
// Tolerance: exact. Routing is a discrete choice and the optimised kernel uses the reference's
// arithmetic, so expert ids and weights must be bit-identical (every rank must route alike).
// Hand-made expectations: hand_tol (scores come through exp/sigmoid in f32).
#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "core/thread_pool.hpp"
#include "kernels/router.hpp"

namespace helix::kernels {
namespace {

constexpr double hand_tol = 1e-6;

struct routed {
  std::vector<std::int32_t> ids;
  std::vector<float> weights;
};

routed route(router_params p, const std::vector<float>& logits, const std::vector<float>* bias,
             const exec_context& ctx) {
  routed out;
  out.ids.assign(static_cast<std::size_t>(p.rows * p.top_k), -1);
  out.weights.assign(out.ids.size(), -1.0f);
  p.logits = logits.data();
  p.bias = bias != nullptr ? bias->data() : nullptr;
  p.expert_ids = out.ids.data();
  p.expert_weights = out.weights.data();
  const status s = route_experts(p, ctx);
  EXPECT_TRUE(s.ok()) << s.to_string();
  return out;
}

/// Logit whose sigmoid is `prob`.
float logit_of(double prob) {
  return static_cast<float>(std::log(prob / (1.0 - prob)));
}

TEST(RouterCpu, MatchesReferenceExactly) {
  thread_pool pool(2);
  struct shape {
    std::int64_t experts, groups, topk_groups, top_k;
  };
  const shape shapes[] = {{8, 1, 1, 2},   {8, 4, 2, 3},   {64, 1, 1, 6}, {64, 8, 3, 8},
                          {256, 8, 4, 8}, {256, 1, 1, 1}, {5, 1, 1, 5}};
  for (const shape& s : shapes) {
    for (router_scoring scoring : {router_scoring::softmax, router_scoring::sigmoid}) {
      for (bool with_bias : {false, true}) {
        for (bool norm : {false, true}) {
          for (bool coarse : {false, true}) {
            constexpr std::int64_t rows = 37;
            std::vector<float> logits(static_cast<std::size_t>(rows * s.experts));
            for (std::size_t i = 0; i < logits.size(); ++i) {
              float v = 8.0f * random_uniform(9, s.experts, 0, rng_purpose::test_data, i) - 4.0f;
              // A coarse grid makes ties frequent, so tie-breaking is compared too.
              if (coarse) v = std::round(v * 2.0f) / 2.0f;
              logits[i] = v;
            }
            std::vector<float> bias(static_cast<std::size_t>(s.experts));
            for (std::size_t e = 0; e < bias.size(); ++e) {
              bias[e] = coarse ? 0.0f : 0.2f * random_uniform(9, 99, 0, rng_purpose::test_data, e);
            }
            router_params p;
            p.rows = rows;
            p.num_experts = s.experts;
            p.top_k = s.top_k;
            p.num_groups = s.groups;
            p.topk_groups = s.topk_groups;
            p.scoring = scoring;
            p.norm_topk_prob = norm;
            p.routed_scaling_factor = 2.5f;
            const std::vector<float>* b = with_bias ? &bias : nullptr;
            const routed ref = route(p, logits, b, {.backend = backend::reference});
            const routed opt = route(p, logits, b, {.backend = backend::cpu, .pool = &pool});
            const std::string what = ::testing::PrintToString(std::vector<std::int64_t>{
                s.experts, s.groups, s.topk_groups, s.top_k, static_cast<std::int64_t>(scoring),
                with_bias, norm, coarse});
            EXPECT_EQ(opt.ids, ref.ids) << what;
            EXPECT_EQ(opt.weights, ref.weights) << what;
            // Every row's ids are distinct and in range.
            for (std::int64_t r = 0; r < rows; ++r) {
              for (std::int64_t j = 0; j < s.top_k; ++j) {
                const std::int32_t id = opt.ids[static_cast<std::size_t>(r * s.top_k + j)];
                ASSERT_GE(id, 0);
                ASSERT_LT(id, s.experts);
                for (std::int64_t i = 0; i < j; ++i) {
                  ASSERT_NE(opt.ids[static_cast<std::size_t>(r * s.top_k + i)], id) << what;
                }
              }
            }
          }
        }
      }
    }
  }
}

// Sigmoid scores per group of two: g0 (0.95, 0.05), g1 (0.7, 0.7), g2 (0.6, 0.6), g3 (0.1, 0.1).
// With a (zero) bias, group score = sum of the top two: 1.0, 1.4, 1.2, 0.2; keeping two groups
// keeps g1 and g2, so the best expert (0) cannot be chosen and the pick is experts 2 and 3 (a tie
// at 0.7: lower id first). Without group limiting the pick is 0, then 2 (tie with 3).
TEST(RouterCpu, GroupLimitingChangesTheChoice) {
  const std::vector<float> logits = {logit_of(0.95), logit_of(0.05), logit_of(0.7), logit_of(0.7),
                                     logit_of(0.6),  logit_of(0.6),  logit_of(0.1), logit_of(0.1)};
  const std::vector<float> zero_bias(8, 0.0f);
  router_params p;
  p.rows = 1;
  p.num_experts = 8;
  p.top_k = 2;
  p.scoring = router_scoring::sigmoid;
  for (backend b : {backend::reference, backend::cpu}) {
    p.num_groups = 4;
    p.topk_groups = 2;
    routed r = route(p, logits, &zero_bias, {.backend = b});
    EXPECT_EQ(r.ids, (std::vector<std::int32_t>{2, 3})) << backend_name(b);
    EXPECT_NEAR(r.weights[0], 0.7, hand_tol);
    EXPECT_NEAR(r.weights[1], 0.7, hand_tol);
    p.num_groups = 1;
    p.topk_groups = 1;
    r = route(p, logits, &zero_bias, {.backend = b});
    EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 2})) << backend_name(b);
    EXPECT_NEAR(r.weights[0], 0.95, hand_tol);
  }
}

// Without a bias the group score is the group's max (DeepSeek-V2): g0 (0.9, 0.01) beats
// g1 (0.8, 0.8). With a bias it is the top-2 sum: g1 (1.6) beats g0 (0.91).
TEST(RouterCpu, GroupScoreIsMaxWithoutBiasAndTopTwoSumWithBias) {
  const std::vector<float> logits = {logit_of(0.9), logit_of(0.01), logit_of(0.8), logit_of(0.8)};
  const std::vector<float> zero_bias(4, 0.0f);
  router_params p;
  p.rows = 1;
  p.num_experts = 4;
  p.top_k = 1;
  p.num_groups = 2;
  p.topk_groups = 1;
  p.scoring = router_scoring::sigmoid;
  for (backend b : {backend::reference, backend::cpu}) {
    EXPECT_EQ(route(p, logits, nullptr, {.backend = b}).ids[0], 0) << backend_name(b);
    EXPECT_EQ(route(p, logits, &zero_bias, {.backend = b}).ids[0], 2) << backend_name(b);
  }
}

// Scores (0.8, 0.6, 0.3, 0.1); bias (0, 0.3, 0, 0) makes expert 1 the choice (0.9 > 0.8), but its
// weight is its unbiased score 0.6 (times the scaling factor 2).
TEST(RouterCpu, BiasChangesChoiceButNotWeights) {
  const std::vector<float> logits = {logit_of(0.8), logit_of(0.6), logit_of(0.3), logit_of(0.1)};
  const std::vector<float> bias = {0.0f, 0.3f, 0.0f, 0.0f};
  router_params p;
  p.rows = 1;
  p.num_experts = 4;
  p.top_k = 1;
  p.scoring = router_scoring::sigmoid;
  p.routed_scaling_factor = 2.0f;
  for (backend b : {backend::reference, backend::cpu}) {
    routed r = route(p, logits, nullptr, {.backend = b});
    EXPECT_EQ(r.ids[0], 0) << backend_name(b);
    EXPECT_NEAR(r.weights[0], 1.6, hand_tol);
    r = route(p, logits, &bias, {.backend = b});
    EXPECT_EQ(r.ids[0], 1) << backend_name(b);
    EXPECT_NEAR(r.weights[0], 1.2, hand_tol);
  }
}

// Softmax of logits (ln 4, ln 2, 0, 0) is (0.5, 0.25, 0.125, 0.125). Top-2 weights are
// (0.5, 0.25); normalised (2/3, 1/3); then times the scaling factor.
TEST(RouterCpu, NormTopkProbAndScaling) {
  const std::vector<float> logits = {std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};
  router_params p;
  p.rows = 1;
  p.num_experts = 4;
  p.top_k = 2;
  p.scoring = router_scoring::softmax;
  for (backend b : {backend::reference, backend::cpu}) {
    p.norm_topk_prob = false;
    p.routed_scaling_factor = 1.0f;
    routed r = route(p, logits, nullptr, {.backend = b});
    EXPECT_EQ(r.ids, (std::vector<std::int32_t>{0, 1})) << backend_name(b);
    EXPECT_NEAR(r.weights[0], 0.5, hand_tol);
    EXPECT_NEAR(r.weights[1], 0.25, hand_tol);
    p.norm_topk_prob = true;
    r = route(p, logits, nullptr, {.backend = b});
    EXPECT_NEAR(r.weights[0], 2.0 / 3.0, hand_tol);
    EXPECT_NEAR(r.weights[1], 1.0 / 3.0, hand_tol);
    p.routed_scaling_factor = 2.5f;
    r = route(p, logits, nullptr, {.backend = b});
    EXPECT_NEAR(r.weights[0], 2.5 * 2.0 / 3.0, hand_tol);
    EXPECT_NEAR(r.weights[1], 2.5 / 3.0, hand_tol);
  }
}

// Equal logits: the lowest ids win, in order, for both groups and experts.
TEST(RouterCpu, TiesGoToLowerIds) {
  const std::vector<float> logits(16, 0.25f);
  const std::vector<float> bias(16, 0.0f);
  router_params p;
  p.rows = 1;
  p.num_experts = 16;
  p.top_k = 3;
  p.scoring = router_scoring::sigmoid;
  for (backend b : {backend::reference, backend::cpu}) {
    p.num_groups = 1;
    p.topk_groups = 1;
    EXPECT_EQ(route(p, logits, nullptr, {.backend = b}).ids, (std::vector<std::int32_t>{0, 1, 2}))
        << backend_name(b);
    // Four groups of four, keep two: groups 0 and 1.
    p.num_groups = 4;
    p.topk_groups = 2;
    p.top_k = 6;
    EXPECT_EQ(route(p, logits, &bias, {.backend = b}).ids,
              (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}))
        << backend_name(b);
    p.top_k = 3;
  }
}

TEST(RouterCpu, TopKBeyondKeptGroupsIsInvalidArgument) {
  const std::vector<float> logits(8, 0.0f);
  std::vector<std::int32_t> ids(8);
  std::vector<float> weights(8);
  router_params p;
  p.logits = logits.data();
  p.rows = 1;
  p.num_experts = 8;
  p.num_groups = 4;
  p.topk_groups = 1;
  p.top_k = 3;  // only 2 experts in one kept group
  p.expert_ids = ids.data();
  p.expert_weights = weights.data();
  EXPECT_EQ(route_experts(p, {}).code(), errc::invalid_argument);
}

// The cpu backend keeps group scores on the stack: more than 256 groups is a failed precondition
// there (the reference has no limit).
TEST(RouterCpu, TooManyGroupsIsFailedPreconditionOnCpu) {
  const std::vector<float> logits(514, 0.0f);
  router_params p;
  p.rows = 1;
  p.num_experts = 514;
  p.num_groups = 257;
  p.topk_groups = 1;
  p.top_k = 1;
  EXPECT_EQ(route(p, logits, nullptr, {.backend = backend::reference}).ids[0], 0);
  std::vector<std::int32_t> ids(1);
  std::vector<float> weights(1);
  p.logits = logits.data();
  p.expert_ids = ids.data();
  p.expert_weights = weights.data();
  EXPECT_EQ(route_experts(p, {.backend = backend::cpu}).code(), errc::failed_precondition);
}

}  // namespace
}  // namespace helix::kernels
