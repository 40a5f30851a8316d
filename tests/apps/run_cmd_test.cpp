#include "apps/run_cmd.hpp"

#include <atomic>
#include <chrono>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace helix::apps {
namespace {

// A workload of a few seconds on 4 workers: every requested turn completes, the report has every
// field, and the latency percentiles are ordered.
TEST(RunCommand, SmallWorkloadJsonReport) {
  std::ostringstream out, err;
  ASSERT_EQ(run_workload({"--workers", "4", "--requests", "10", "--rate", "20", "--agents", "4",
                          "--context", "256", "--max-tokens", "8", "--seed", "7", "--json"},
                         out, err),
            0)
      << err.str();
  const auto j = nlohmann::json::parse(out.str());
  for (const char* f : {"ttft_ms", "tpot_ms", "tokens_per_s", "kv_imbalance_max", "migrations",
                        "layout", "workers", "requests", "requests_completed", "kv_series"}) {
    EXPECT_TRUE(j.contains(f)) << f << " in " << j.dump();
  }
  for (const char* lat : {"ttft_ms", "tpot_ms"}) {
    const auto& l = j[lat];
    ASSERT_TRUE(l.contains("p50") && l.contains("p90") && l.contains("p99")) << l.dump();
    EXPECT_GT(l["p50"].get<double>(), 0.0) << lat;
    EXPECT_LE(l["p50"].get<double>(), l["p90"].get<double>()) << lat;
    EXPECT_LE(l["p90"].get<double>(), l["p99"].get<double>()) << lat;
  }
  EXPECT_EQ(j["requests"], 10);
  EXPECT_EQ(j["requests_completed"], 10);
  EXPECT_EQ(j["requests_failed"], 0);
  EXPECT_EQ(j["generated_tokens"], 80);
  EXPECT_EQ(j["workers"], 4);
  EXPECT_EQ(j["layout"].get<std::string>().rfind("helix:", 0), 0u) << j["layout"];
  EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
  const double imbalance = j["kv_imbalance_max"].get<double>();
  EXPECT_GE(imbalance, 0.0);
  EXPECT_GE(j["migrations"].get<std::int64_t>(), 0);
  // A sample before the first request and one after the last, each with one entry per worker.
  const auto& series = j["kv_series"];
  ASSERT_GE(series.size(), 2u);
  for (const auto& s : series) EXPECT_EQ(s["used_blocks"].size(), 4u) << s.dump();
  EXPECT_EQ(series.front()["t_s"], 0.0);
  EXPECT_EQ(j["kv_peak_blocks"].size(), 4u);
  EXPECT_GT(j["kv_capacity_blocks"].get<std::int64_t>(), 0);
}

// --config loads an engine config file; flags given next to it override its fields.
TEST(RunCommand, ConfigFileWithOverrides) {
  std::ostringstream out, err;
  ASSERT_EQ(run_workload({"--config", HELIX_SOURCE_DIR "/examples/configs/engine.json", "--workers",
                          "2", "--kv-capacity", "4K", "--requests", "3", "--rate", "50",
                          "--context", "64", "--max-tokens", "4", "--json"},
                         out, err),
            0)
      << err.str();
  const auto j = nlohmann::json::parse(out.str());
  EXPECT_EQ(j["model"], "tiny-llama");
  EXPECT_EQ(j["workers"], 2);
  EXPECT_EQ(j["kv_capacity_blocks"], 4096 / 16);
  EXPECT_EQ(j["requests_completed"], 3);
}

// The same seed gives the same sessions: the same number of sessions and prompt tokens (what the
// engine generates does not depend on timing either: greedy decoding is batch invariant).
TEST(RunCommand, SameSeedSameWorkload) {
  std::vector<nlohmann::json> runs;
  for (int i = 0; i < 2; ++i) {
    std::ostringstream out, err;
    ASSERT_EQ(run_workload({"--workers", "2", "--requests", "6", "--rate", "50", "--context", "64",
                            "--max-tokens", "4", "--seed", "3", "--json"},
                           out, err),
              0)
        << err.str();
    runs.push_back(nlohmann::json::parse(out.str()));
  }
  EXPECT_EQ(runs[0]["sessions"], runs[1]["sessions"]);
  EXPECT_EQ(runs[0]["prompt_tokens"], runs[1]["prompt_tokens"]);
  EXPECT_EQ(runs[0]["requests_completed"], 6);
}

TEST(RunCommand, HumanReportHasEverySection) {
  std::ostringstream out, err;
  ASSERT_EQ(run_workload({"--workers", "2", "--requests", "4", "--rate", "50", "--context", "64",
                          "--max-tokens", "4"},
                         out, err),
            0)
      << err.str();
  for (const char* s : {"agents     tiny-llama on 2 workers", "4/4 requests completed", "TTFT ms",
                        "TPOT ms", "KV blocks used per worker", "peak", "rebalancing:"}) {
    EXPECT_NE(out.str().find(s), std::string::npos) << s << " in\n" << out.str();
  }
}

// A workload whose requests can never fit in the KV capacity fails at once, naming the flags,
// before any prompt is built (--context 1G used to spend 20 s building prompts first).
TEST(RunCommand, ContextThatCanNeverFitIsRefusedBeforeBuildingPrompts) {
  for (const char* context : {"2K", "1G"}) {
    std::ostringstream out, err;
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(run_workload({"--workers", "2", "--requests", "2", "--rate", "50", "--context",
                            context, "--kv-capacity", "256", "--max-tokens", "4"},
                           out, err),
              1);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
    EXPECT_NE(err.str().find("lower --context or raise --kv-capacity"), std::string::npos)
        << err.str();
  }
}

// SIGINT during `helix run` used to end it with no report: the interrupt (set by run_workload's
// SIGINT handler) stops arrivals and the report covers what ran.
TEST(RunCommand, InterruptGivesAPartialReport) {
  workload_options o;
  o.engine.model = "tiny-llama";
  o.engine.num_workers = 2;
  o.engine.kv_capacity_tokens_per_worker = 4096;
  o.duration_s = 60.0;
  o.rate = 20.0;
  o.context = 64;
  o.max_tokens = 16;
  std::atomic<bool> stop{false};
  o.interrupt = &stop;
  std::thread interrupter([&stop] {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    stop = true;
  });
  std::ostringstream progress;
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run_agent_workload(o, progress);
  interrupter.join();
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  EXPECT_TRUE(r->interrupted);
  EXPECT_GT(r->requests_completed, 0);
  EXPECT_EQ(workload_report_json(o, *r)["interrupted"], true);
  std::ostringstream human;
  print_workload_report(human, o, *r, 4);
  EXPECT_NE(human.str().find("INTERRUPTED"), std::string::npos) << human.str();
}

TEST(RunCommand, BadFlagsAreUsageErrors) {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--colour", "red"},
           {"--rate", "0"},
           {"--rate", "fast"},
           {"--agents", "0"},
           {"--context", "lots"},
           {"--max-tokens", "0"},
           {"--turns", "0"},
           {"--requests", "-1"},
           {"--workers", "0"},
           {"--duration", "0"},  // no end
           {"--config", "/no/such/engine.json"},
           {"--workers", "3", "--requests", "1"},  // 8 query heads: no layout for 3 workers
           {"--layout", "helix:kvp=nine", "--requests", "1"},
           {"positional"},
       }) {
    std::ostringstream out, err;
    EXPECT_EQ(run_workload(args, out, err), 2) << args[0] << ": " << err.str();
    EXPECT_NE(err.str().find("error: "), std::string::npos) << args[0];
  }
  std::ostringstream out, err;
  EXPECT_EQ(run_workload({"--help"}, out, err), 0);
  EXPECT_NE(out.str().find("usage: helix run"), std::string::npos);
}

}  // namespace
}  // namespace helix::apps
