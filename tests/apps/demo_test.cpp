#include "apps/demo_cmd.hpp"

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace helix::apps {
namespace {

// The job of `make run`, at a small context: every exactness check passes, every request of the
// multi-agent workload completes on the 8-worker engine, and the decode section compares helix's
// default layout with tp on the same 8 workers.
TEST(DemoCommand, SmallContextJsonReport) {
  std::ostringstream out, err;
  // tiny-llama for the long decode keeps this quick in the sanitizer build; `make run` uses
  // small-llama.
  ASSERT_EQ(run_demo({"--context", "4K", "--decode-model", "tiny-llama", "--steps", "2",
                      "--agent-requests", "6", "--agent-context", "256", "--json"},
                     out, err),
            0)
      << err.str();
  const auto j = nlohmann::json::parse(out.str());
  ASSERT_EQ(j["exactness"].size(), 2u);
  for (const auto& e : j["exactness"]) EXPECT_LE(e["max_abs_logit_diff"].get<double>(), 1e-4);
  ASSERT_EQ(j["sharded_exactness"].size(), 2u);
  for (const auto& e : j["sharded_exactness"]) {
    EXPECT_LE(e["max_abs_logit_diff"].get<double>(), 1e-4) << e.dump();
    EXPECT_EQ(e["reference"], "single worker");
  }
  EXPECT_EQ(j["sharded_exactness"][0]["layout"], "helix:kvp=4,tpa=2,tpf=8,ep=1");
  EXPECT_EQ(j["sharded_exactness"][1]["layout"], "helix:kvp=8,tpa=1,tpf=2,ep=4");
  const auto& agents = j["agents"];
  EXPECT_EQ(agents["model"], "tiny-llama");
  EXPECT_EQ(agents["workers"], 8);
  EXPECT_EQ(agents["layout"], "helix:kvp=4,tpa=2,tpf=8,ep=1");
  EXPECT_EQ(agents["requests"], 6);
  EXPECT_EQ(agents["requests_completed"], 6);
  EXPECT_LE(agents["ttft_ms"]["p50"].get<double>(), agents["ttft_ms"]["p99"].get<double>());
  EXPECT_GT(agents["tokens_per_s"].get<double>(), 0.0);
  EXPECT_EQ(agents["kv_peak_blocks"].size(), 8u);
  EXPECT_TRUE(agents.contains("migrations"));
  EXPECT_TRUE(agents.contains("kv_imbalance_max"));
  const auto& d = j["decode"];
  EXPECT_EQ(d["model"], "tiny-llama");
  EXPECT_EQ(d["context"], 4096);
  EXPECT_EQ(d["workers"], 8);
  EXPECT_EQ(d["kv_fill"], "synthetic");
  ASSERT_EQ(d["layouts"].size(), 2u);
  EXPECT_EQ(d["layouts"][0]["name"], "helix:kvp=4,tpa=2,tpf=8,ep=1");
  EXPECT_EQ(d["layouts"][1]["name"], "tp:tp=8");
  // tiny-llama: K = 2, so a helix rank (KVP = 4) holds a quarter of a tp rank's KV, +- a block.
  const double helix_kv = d["layouts"][0]["kv_bytes_per_worker"].get<double>();
  const double tp_kv = d["layouts"][1]["kv_bytes_per_worker"].get<double>();
  EXPECT_NEAR(helix_kv / tp_kv, 0.25, 0.01);
  EXPECT_GT(d["layouts"][0]["tokens_per_s"].get<double>(), 0.0);
  EXPECT_EQ(j["helix_speedup_vs_tp"], d["layouts"][0]["speedup_vs_tp"]);
}

TEST(DemoCommand, HumanReportHasEverySection) {
  std::ostringstream out, err;
  ASSERT_EQ(run_demo({"--context", "1K", "--decode-model", "tiny-llama", "--steps", "1",
                      "--agent-requests", "4", "--agent-context", "128"},
                     out, err),
            0)
      << err.str();
  for (const char* s :
       {"exactness  tiny-llama", "exactness  tiny-deepseek", "engine     tiny-llama",
        "engine     tiny-deepseek", "agents     tiny-llama on 8 workers", "4/4 requests completed",
        "TTFT ms", "TPOT ms", "rebalancing:", "helix:kvp=4,tpa=2,tpf=8,ep=1", "tp:tp=8",
        "helix vs tp:"}) {
    EXPECT_NE(out.str().find(s), std::string::npos) << s << " in\n" << out.str();
  }
  EXPECT_EQ(out.str().find("FAIL"), std::string::npos) << out.str();
}

TEST(DemoCommand, BadFlagsAreUsageErrors) {
  std::ostringstream out, err;
  EXPECT_EQ(run_demo({"--context", "lots"}, out, err), 2);
  EXPECT_EQ(run_demo({"--steps", "0"}, out, err), 2);
  EXPECT_EQ(run_demo({"--agent-requests", "0"}, out, err), 2);
  EXPECT_EQ(run_demo({"--colour", "red"}, out, err), 2);
  EXPECT_EQ(run_demo({"--decode-model", "no-such-model"}, out, err), 2);
  EXPECT_EQ(run_demo({"--workers", "3"}, out, err), 2);  // Q = 8 is not divisible by 3
  EXPECT_NE(err.str().find("layout rule"), std::string::npos) << err.str();
}

}  // namespace
}  // namespace helix::apps
