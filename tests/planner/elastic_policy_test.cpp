// The elastic policy's decision (planner/elastic_policy.hpp): members that joined unasked are
// taken in for speed (the cost model's gain) or for room (KV use per member), and the
// explanation says which and why not.
#include <gtest/gtest.h>

#include "planner/elastic_policy.hpp"

namespace helix::planner {
namespace {

growth_inputs load(double now_s, double then_s, double kv_now, double kv_then) {
  growth_inputs in;
  in.layout_now = "helix:kvp=2,tpa=1,tpf=2,ep=1";
  in.layout_then = "helix:kvp=4,tpa=1,tpf=4,ep=1";
  in.new_members = 2;
  in.requests = 8;
  in.context = 3000;
  in.step_now_s = now_s;
  in.step_then_s = then_s;
  in.kv_use_now = kv_now;
  in.kv_use_then = kv_then;
  return in;
}

TEST(ElasticPolicy, GrowsWhenTheCostModelPredictsAFasterStep) {
  const growth_decision d = decide_growth(load(2.0e-3, 1.2e-3, 0.3, 0.16));
  EXPECT_TRUE(d.grow);
  EXPECT_FALSE(d.for_room);
  EXPECT_NEAR(d.gain, 2.0 / 1.2 - 1.0, 1e-9);
  EXPECT_NE(d.why.find("cost model predicts 2.000 -> 1.200 ms per step (+67%)"), std::string::npos)
      << d.why;
  EXPECT_NE(d.why.find("8 requests of ~3000 tokens"), std::string::npos) << d.why;
}

TEST(ElasticPolicy, GrowsForRoomWhenKvIsNearlyFullEvenWithoutASpeedUp) {
  const growth_decision d = decide_growth(load(1.0e-3, 1.0e-3, 0.9, 0.46));
  EXPECT_TRUE(d.grow);
  EXPECT_TRUE(d.for_room);
  EXPECT_NE(d.why.find("KV use 90% -> 46% of admission per member"), std::string::npos) << d.why;
}

TEST(ElasticPolicy, StandsByBelowBothThresholdsAndSaysWhy) {
  const growth_decision d = decide_growth(load(1.0e-3, 0.98e-3, 0.5, 0.26));
  EXPECT_FALSE(d.grow);
  EXPECT_NE(d.why.find("the members stand by"), std::string::npos) << d.why;
  // Full KV that the larger layout would not relieve is no reason either.
  EXPECT_FALSE(decide_growth(load(1.0e-3, 1.0e-3, 0.9, 0.9)).grow);
  // Thresholds are the caller's.
  EXPECT_TRUE(decide_growth(load(1.0e-3, 0.98e-3, 0.5, 0.26), {0.01, 0.8}).grow);
  EXPECT_TRUE(decide_growth(load(1.0e-3, 1.0e-3, 0.5, 0.26), {0.05, 0.4}).grow);
}

TEST(ElasticPolicy, NothingToDecideWithoutLoadOrALargerLayout) {
  growth_inputs idle = load(2.0e-3, 1.0e-3, 0.9, 0.4);
  idle.requests = 0;
  EXPECT_FALSE(decide_growth(idle).grow);
  growth_inputs same = load(2.0e-3, 1.0e-3, 0.9, 0.4);
  same.layout_then = same.layout_now;
  EXPECT_FALSE(decide_growth(same).grow);
  // Without a prediction only room can decide.
  EXPECT_FALSE(decide_growth(load(0.0, 0.0, 0.5, 0.25)).grow);
  EXPECT_TRUE(decide_growth(load(0.0, 0.0, 0.85, 0.43)).grow);
}

}  // namespace
}  // namespace helix::planner
