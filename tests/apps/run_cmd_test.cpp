#include "apps/run_cmd.hpp"

#include <algorithm>
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

// --elastic on threads: workers join and leave mid-run, every request completes, the epochs are
// listed, and the tokens are those of the run without the changes.
TEST(RunCommand, ElasticJoinAndLeaveKeepTheDigest) {
  const std::vector<std::string> workload = {
      "--workers", "2",         "--layout", "helix:kvp=2,tpa=1", "--requests", "16",     "--rate",
      "50",        "--context", "256",      "--max-tokens",      "24",         "--seed", "3",
      "--json"};
  std::ostringstream out1, err1;
  ASSERT_EQ(run_workload(workload, out1, err1), 0) << err1.str();
  const auto fixed = nlohmann::json::parse(out1.str());
  std::vector<std::string> elastic = workload;
  elastic.insert(elastic.end(), {"--elastic", "join:2@step10,leave:1@step40"});
  std::ostringstream out2, err2;
  ASSERT_EQ(run_workload(elastic, out2, err2), 0) << err2.str();
  const auto got = nlohmann::json::parse(out2.str());
  EXPECT_EQ(got["requests_completed"], 16);
  EXPECT_EQ(got["output_digest"], fixed["output_digest"]);
  ASSERT_TRUE(got.contains("epochs"));
  std::vector<std::string> reasons;
  for (const auto& e : got["epochs"]) {
    for (const char* f :
         {"reason", "layout_before", "layout_after", "kv_bytes_moved", "pause_ms"}) {
      EXPECT_TRUE(e.contains(f)) << f << " in " << e.dump();
    }
    reasons.push_back(e["reason"]);
    if (e["reason"] == "join") {
      EXPECT_EQ(e["layout_after"], "helix:kvp=4,tpa=1,tpf=4,ep=1");
      EXPECT_GT(e["kv_bytes_moved"].get<std::int64_t>(), 0);
    }
  }
  EXPECT_EQ(reasons.front(), "initial");
  EXPECT_EQ(std::count(reasons.begin(), reasons.end(), "join"), 1);
  EXPECT_EQ(std::count(reasons.begin(), reasons.end(), "leave"), 1);
  EXPECT_TRUE(got["elastic_failures"].empty()) << got["elastic_failures"].dump();
  EXPECT_NE(err2.str().find("[run] elastic join:2@step10: done"), std::string::npos) << err2.str();
}

// An event the workload never reaches fails the run (after the report), naming it.
TEST(RunCommand, ElasticEventStillPendingFailsTheRun) {
  std::ostringstream out, err;
  EXPECT_EQ(run_workload({"--workers", "2", "--requests", "2", "--context", "64", "--max-tokens",
                          "4", "--elastic", "join:1@step100000", "--json"},
                         out, err),
            1);
  EXPECT_NE(err.str().find("join:1@step100000: still pending"), std::string::npos) << err.str();
  const auto j = nlohmann::json::parse(out.str());
  EXPECT_EQ(j["requests_completed"], 2);
  EXPECT_EQ(j["elastic_failures"].size(), 1u);
  // A workload refused before it starts ends the events' thread too (no abort).
  std::ostringstream out2, err2;
  EXPECT_EQ(run_workload({"--workers", "2", "--requests", "2", "--context", "1M", "--elastic",
                          "join:1@step1"},
                         out2, err2),
            1);
  EXPECT_NE(err2.str().find("resource_exhausted"), std::string::npos) << err2.str();
}

TEST(RunCommand, ElasticEventsParse) {
  auto e = parse_elastic("join:2@3s,leave:1@500ms,join:1@step20");
  ASSERT_TRUE(e.has_value()) << e.error().to_string();
  ASSERT_EQ(e->size(), 3u);
  EXPECT_TRUE((*e)[0].join);
  EXPECT_EQ((*e)[0].count, 2);
  EXPECT_DOUBLE_EQ((*e)[0].at_s, 3.0);
  EXPECT_FALSE((*e)[1].join);
  EXPECT_DOUBLE_EQ((*e)[1].at_s, 0.5);
  EXPECT_TRUE((*e)[2].by_step);
  EXPECT_EQ((*e)[2].step, 20);
  for (const char* bad : {"", "join", "grow:1@1s", "join:0@1s", "join:65@1s", "join:1@", "join:1@3",
                          "join:1@steps", "leave:1@-1s", "join:1@1s,"}) {
    const auto r = parse_elastic(bad);
    ASSERT_FALSE(r.has_value()) << bad;
    EXPECT_EQ(r.error().code(), errc::invalid_argument) << bad;
    EXPECT_NE(r.error().message().find("--elastic"), std::string::npos) << r.error().message();
  }
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
           {"--elastic", "join:two@1s"},
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
