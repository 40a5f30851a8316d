// The CLI's benchmarks and tools drive the engine with workers as processes (`--processes N`):
// the same engine, actors and layer program as with threads.
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "tests/support/cli.hpp"

namespace helix {
namespace {

using test_support::last_json;
using test_support::run_cli;

TEST(OneRuntime, BenchDecodeWithWorkerProcesses) {
  int rc = -1;
  const std::string out =
      run_cli(HELIX_CLI,
              "bench decode --processes 2 --model tiny-llama --context 512 "
              "--layout 'helix:kvp=2,tpa=1;tp:tp=2' --hopb both --steps 2 --json",
              rc);
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = last_json(out);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["processes"], 2);
  EXPECT_EQ(j["workers"], 2);
  ASSERT_EQ(j["layouts"].size(), 4u) << j.dump();
  for (const auto& l : j["layouts"]) {
    EXPECT_GT(l["step_ms"].get<double>(), 0.0) << l.dump();
    const auto pids = l["worker_pids"].get<std::vector<std::int64_t>>();
    ASSERT_EQ(pids.size(), 2u) << l.dump();
    EXPECT_NE(pids[0], pids[1]);
    EXPECT_GT(pids[0], 0);
  }
  EXPECT_EQ(j["layouts"][0]["name"], "helix:kvp=2,tpa=1,tpf=2,ep=1");
}

// Workers as hosts: each worker process in a network namespace of its own, UCX over TCP between
// them, the engine in the first (root only; skipped where namespaces cannot be made).
TEST(OneRuntime, BenchDecodeWithWorkersInNetworkNamespaces) {
  int rc = -1;
  const std::string out = run_cli(HELIX_CLI,
                                  "bench decode --processes 2 --netns --model tiny-llama "
                                  "--context 256 --layout helix:kvp=2,tpa=1 --hopb both "
                                  "--steps 2 --json",
                                  rc);
  if (rc == 2 && out.find("--netns") != std::string::npos) {
    GTEST_SKIP() << "no network namespaces here: " << out;
  }
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = last_json(out);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["data_plane"], "ucx-tcp-netns");
  ASSERT_EQ(j["layouts"].size(), 2u) << j.dump();
  for (const auto& l : j["layouts"]) EXPECT_GT(l["step_ms"].get<double>(), 0.0) << l.dump();
}

TEST(OneRuntime, DemoWithWorkerProcesses) {
  int rc = -1;
  const std::string out = run_cli(HELIX_CLI,
                                  "demo --processes 2 --context 1K --decode-model tiny-llama "
                                  "--agent-requests 4 --agent-context 128 --steps 2 --json",
                                  rc);
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = last_json(out);
  ASSERT_FALSE(j.is_discarded()) << out;
  ASSERT_EQ(j["sharded_exactness"].size(), 2u) << j.dump();
  for (const auto& e : j["sharded_exactness"]) {
    EXPECT_LE(e["max_abs_logit_diff"].get<double>(), 1e-4) << e.dump();
    EXPECT_EQ(e["steps"], 16) << e.dump();
  }
  EXPECT_EQ(j["decode"]["processes"], 2);
  EXPECT_EQ(j["agents"]["worker_processes"].size(), 2u) << j["agents"].dump();
}

}  // namespace
}  // namespace helix
