#include "apps/demo_cmd.hpp"

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace helix::apps {
namespace {

// The job of `make run`, at a small context: exactness passes and every section reports.
TEST(DemoCommand, SmallContextJsonReport) {
  std::ostringstream out, err;
  ASSERT_EQ(run_demo({"--context", "4K", "--steps", "2", "--json"}, out, err), 0) << err.str();
  const auto j = nlohmann::json::parse(out.str());
  ASSERT_EQ(j["exactness"].size(), 2u);
  for (const auto& e : j["exactness"]) EXPECT_LE(e["max_abs_logit_diff"].get<double>(), 1e-4);
  EXPECT_EQ(j["long_decode"]["context"], 4096);
  EXPECT_EQ(j["long_decode"]["kv_fill"], "synthetic");
  EXPECT_EQ(j["long_decode"]["tokens"].size(), 2u);
  EXPECT_GT(j["long_decode"]["ms_per_token"].get<double>(), 0.0);
  EXPECT_FALSE(j["long_context"]["results"].empty());
}

TEST(DemoCommand, BadFlagsAreUsageErrors) {
  std::ostringstream out, err;
  EXPECT_EQ(run_demo({"--context", "lots"}, out, err), 2);
  EXPECT_EQ(run_demo({"--steps", "0"}, out, err), 2);
  EXPECT_EQ(run_demo({"--colour", "red"}, out, err), 2);
}

}  // namespace
}  // namespace helix::apps
