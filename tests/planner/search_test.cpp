// Layout search (planner/cost_model.hpp): only feasible points within the device limit, the
// Pareto frontier property, the headline ratios and best_within_ttl on hand-built point sets, and
// the engine's "auto" layout choice.
#include <algorithm>
#include <set>

#include <gtest/gtest.h>

#include "planner/cost_model.hpp"

namespace helix::planner {
namespace {

model_spec builtin(const char* name) {
  auto s = builtin_model(name);
  EXPECT_TRUE(s.has_value()) << name;
  return *s;
}

hardware preset(const char* name) {
  auto h = hardware_preset(name);
  EXPECT_TRUE(h.has_value()) << name;
  return *h;
}

// A point with only the metrics the frontier and the ratios look at.
plan_point point(plan_family f, double ttl_ms, double per_device) {
  plan_point p;
  p.config.family = f;
  p.cost.step_s = ttl_ms * 1e-3;
  p.cost.tokens_per_s_per_user = 1.0 / p.cost.step_s;
  p.cost.tokens_per_s_per_device = per_device;
  p.cost.fits = true;
  return p;
}

bool dominates(const plan_point& a, const plan_point& b) {
  const auto& x = a.cost;
  const auto& y = b.cost;
  return x.tokens_per_s_per_user >= y.tokens_per_s_per_user &&
         x.tokens_per_s_per_device >= y.tokens_per_s_per_device &&
         (x.tokens_per_s_per_user > y.tokens_per_s_per_user ||
          x.tokens_per_s_per_device > y.tokens_per_s_per_device);
}

std::vector<plan_point> llama_search(std::int64_t max_devices) {
  plan_workload w;
  w.context = 1'000'000;
  search_options o;
  o.max_devices = max_devices;
  o.batches = {1, 4, 16, 64};
  auto pts = search_layouts(builtin("llama-3.1-405b"), preset("gb200-nvl72"), w, o);
  EXPECT_TRUE(pts.has_value()) << pts.error().to_string();
  return pts.has_value() ? *pts : std::vector<plan_point>{};
}

TEST(Search, ReturnsOnlyFeasiblePointsWithinTheLimit) {
  const model_spec llama = builtin("llama-3.1-405b");
  const hardware gb = preset("gb200-nvl72");
  plan_workload w;
  w.context = 1'000'000;
  const std::vector<plan_point> pts = llama_search(16);
  ASSERT_FALSE(pts.empty());
  std::set<plan_family> families;
  for (const plan_point& p : pts) {
    families.insert(p.config.family);
    EXPECT_TRUE(p.cost.fits) << p.config.to_string();
    EXPECT_LE(p.cost.memory_bytes_per_device, gb.hbm_capacity_bytes);
    EXPECT_LE(p.config.num_devices, 16);
    EXPECT_EQ(p.config.hopb, p.config.family == plan_family::helix);
    auto again = estimate_step(llama, gb, w, p.config);
    ASSERT_TRUE(again.has_value()) << p.config.to_string();
    EXPECT_EQ(again->step_s, p.cost.step_s);
    EXPECT_DOUBLE_EQ(p.cost.tokens_per_s_per_device,
                     p.config.batch / p.cost.step_s / p.config.num_devices);
  }
  EXPECT_EQ(families.size(), 5u);
  // 64 requests of 1M tokens (about 8 TB of KV at FP4) fit on no 16-GPU configuration.
  EXPECT_TRUE(std::none_of(pts.begin(), pts.end(),
                           [](const plan_point& p) { return p.config.batch == 64; }));
  // The hardware's NVLink domain caps the device count (HGX H100: 8).
  search_options o;
  o.max_devices = 64;
  o.batches = {1};
  o.families = {plan_family::tp};
  auto h100 = search_layouts(llama, preset("h100-sxm"), w, o);
  ASSERT_TRUE(h100.has_value());
  for (const plan_point& p : *h100) {
    EXPECT_LE(p.config.num_devices, 8);
    EXPECT_EQ(p.config.family, plan_family::tp);
  }
  o.max_devices = 0;
  EXPECT_EQ(search_layouts(llama, gb, w, o).error().code(), errc::invalid_argument);
}

TEST(Search, ParetoFrontierIsExactlyTheUndominatedPoints) {
  const std::vector<plan_point> pts = llama_search(16);
  const std::vector<plan_point> front = pareto_frontier(pts);
  ASSERT_FALSE(front.empty());
  for (std::size_t i = 0; i < front.size(); ++i) {
    for (const plan_point& p : pts) {
      EXPECT_FALSE(dominates(p, front[i]))
          << p.config.to_string() << " dominates " << front[i].config.to_string();
    }
    if (i > 0) {  // ascending interactivity, hence descending throughput
      EXPECT_LT(front[i - 1].cost.tokens_per_s_per_user, front[i].cost.tokens_per_s_per_user);
      EXPECT_GT(front[i - 1].cost.tokens_per_s_per_device, front[i].cost.tokens_per_s_per_device);
    }
  }
  for (const plan_point& p : pts) {
    const bool covered = std::any_of(front.begin(), front.end(), [&](const plan_point& f) {
      return dominates(f, p) || (f.cost.tokens_per_s_per_user == p.cost.tokens_per_s_per_user &&
                                 f.cost.tokens_per_s_per_device == p.cost.tokens_per_s_per_device);
    });
    EXPECT_TRUE(covered) << p.config.to_string();
  }
  // Hand-built: (ttl 1 ms, 10), (2 ms, 40), (2 ms, 30) dominated, (4 ms, 35) dominated.
  const auto hand = pareto_frontier({point(plan_family::tp, 2, 30), point(plan_family::tp, 1, 10),
                                     point(plan_family::tp, 4, 35), point(plan_family::tp, 2, 40)});
  ASSERT_EQ(hand.size(), 2u);
  EXPECT_EQ(hand[0].cost.tokens_per_s_per_device, 40);
  EXPECT_EQ(hand[1].cost.tokens_per_s_per_device, 10);
  EXPECT_TRUE(pareto_frontier({}).empty());
}

TEST(Search, HeadlineRatiosOnAHandBuiltSet) {
  // Helix: (1 ms, 10), (2 ms, 40). Baseline: (2 ms, 5) tp, (4 ms, 50) dp_ep.
  // Budgets: 1 ms baseline has nothing; 2 ms 40/5 = 8; 4 ms 40/50 = 0.8. Interactivity 1000/500.
  const std::vector<plan_point> pts = {
      point(plan_family::helix, 1, 10), point(plan_family::helix, 2, 40),
      point(plan_family::tp, 2, 5), point(plan_family::dp_ep, 4, 50)};
  auto h = headline_ratios(pts);
  ASSERT_TRUE(h.has_value()) << h.error().to_string();
  EXPECT_DOUBLE_EQ(h->throughput_ratio_at_equal_ttl, 8);
  EXPECT_DOUBLE_EQ(h->ttl_ms_at_max_ratio, 2);
  EXPECT_DOUBLE_EQ(h->interactivity_ratio, 2);
  // Baseline better everywhere: ratios below 1 are reported as they are.
  auto worse =
      headline_ratios({point(plan_family::helix, 3, 10), point(plan_family::tp_pp, 1, 20)});
  ASSERT_TRUE(worse.has_value());
  EXPECT_DOUBLE_EQ(worse->throughput_ratio_at_equal_ttl, 0.5);
  EXPECT_DOUBLE_EQ(worse->ttl_ms_at_max_ratio, 3);
  EXPECT_DOUBLE_EQ(worse->interactivity_ratio, 1.0 / 3);
  EXPECT_EQ(headline_ratios({point(plan_family::helix, 1, 1)}).error().code(),
            errc::failed_precondition);
  EXPECT_EQ(headline_ratios({point(plan_family::medha, 1, 1)}).error().code(),
            errc::failed_precondition);
}

TEST(Search, BestWithinTtl) {
  const std::vector<plan_point> pts = {
      point(plan_family::helix, 1, 10), point(plan_family::tp, 2, 40),
      point(plan_family::dp_ep, 1.5, 40), point(plan_family::tp_pp, 4, 50)};
  auto b = best_within_ttl(pts, 2);
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->config.family, plan_family::dp_ep);  // 40 at 1.5 ms beats 40 at 2 ms
  EXPECT_EQ(best_within_ttl(pts, 1)->config.family, plan_family::helix);
  EXPECT_EQ(best_within_ttl(pts, 100)->config.family, plan_family::tp_pp);
  EXPECT_EQ(best_within_ttl(pts, 0.5).error().code(), errc::not_found);
}

TEST(Search, HelixBeatsBaselinesAtLongContext) {
  // Not the paper's numbers (those come from the README's report): only the direction.
  const std::vector<plan_point> pts = llama_search(64);
  auto h = headline_ratios(pts);
  ASSERT_TRUE(h.has_value()) << h.error().to_string();
  EXPECT_GT(h->throughput_ratio_at_equal_ttl, 1);
  EXPECT_GT(h->interactivity_ratio, 1);
}

TEST(ChooseRuntimeLayout, PicksHelixForLongContextGqa) {
  const model_spec llama = builtin("llama-3.1-405b");
  auto l = choose_runtime_layout(llama, preset("gb200-nvl72"), 64, 1'000'000, 8, precision::fp4,
                                 precision::fp4);
  ASSERT_TRUE(l.has_value()) << l.error().to_string();
  EXPECT_EQ(l->family, layout_family::helix);
  EXPECT_GT(l->kvp, 1);
  EXPECT_EQ(l->num_ranks, 64);
  EXPECT_TRUE(validate(*l, llama).ok());
  // The same on the development machine's preset with the tiny model the runtime serves.
  const model_spec tiny = builtin("tiny-llama");
  auto t =
      choose_runtime_layout(tiny, preset("cpu"), 8, 1 << 20, 4, precision::bf16, precision::bf16);
  ASSERT_TRUE(t.has_value()) << t.error().to_string();
  EXPECT_EQ(t->family, layout_family::helix);
  EXPECT_TRUE(validate(*t, tiny).ok()) << t->to_string();
}

TEST(ChooseRuntimeLayout, ReturnsValidLayoutsAndErrors) {
  const model_spec ds = builtin("deepseek-r1");
  const hardware gb = preset("gb200-nvl72");
  for (std::int64_t n : {1, 2, 8, 32}) {
    for (std::int64_t ctx : {std::int64_t{4096}, std::int64_t{1} << 20}) {
      auto l = choose_runtime_layout(ds, gb, n, ctx, 1, precision::fp4, precision::fp4);
      if (!l.has_value()) {  // small device counts cannot hold 671B parameters
        EXPECT_EQ(l.error().code(), errc::resource_exhausted) << n;
        continue;
      }
      EXPECT_EQ(l->num_ranks, n);
      EXPECT_TRUE(validate(*l, ds).ok()) << l->to_string();
    }
  }
  EXPECT_EQ(
      choose_runtime_layout(ds, gb, 1, 4096, 1, precision::fp4, precision::fp4).error().code(),
      errc::resource_exhausted);
  // Q = 128 is not divisible by 3: no layout is valid.
  EXPECT_EQ(choose_runtime_layout(builtin("llama-3.1-405b"), gb, 3, 4096, 1, precision::fp4,
                                  precision::fp4)
                .error()
                .code(),
            errc::invalid_argument);
  EXPECT_EQ(
      choose_runtime_layout(ds, gb, 8, 4096, 0, precision::fp4, precision::fp4).error().code(),
      errc::invalid_argument);
}

}  // namespace
}  // namespace helix::planner
