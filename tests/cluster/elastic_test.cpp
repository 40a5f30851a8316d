// Elastic workers as processes: `helix run --processes 2 --elastic ...` spawns joining worker
// processes mid-run (a registrar and front door of their own) and lets the highest rank leave;
// KV blocks move over UCX and the run's output digest is that of the run without the changes.
#include <signal.h>
#include <sys/types.h>

#include <chrono>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/cli.hpp"
#include "tests/support/cluster_fixtures.hpp"

namespace helix::cluster {
namespace {

using namespace fixtures;

// SIGTERM to a worker process mid-decode is a graceful leave: the engine moves its KV to the
// others (nothing recomputed, no recovery), the process exits, and every request ends as in a
// run on a fixed engine. Then add_workers brings the engine back to 4 processes.
TEST(Processes, SigtermIsAGracefulLeaveAndAddWorkersSpawnsNewOnes) {
  const engine_config c = config_for("tiny-llama", "helix:kvp=4,tpa=1", 4);
  // A fixed engine serves the workload twice (a sampled request's noise follows its request id).
  auto fixed = engine::create(c);
  ASSERT_TRUE(fixed.has_value()) << fixed.error().to_string();
  const long_run want = serve_long(**fixed);
  const long_run want_again = serve_long(**fixed);
  ASSERT_FALSE(want.tokens.empty());
  auto eng = engine::create(c, processes());
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto before = (*eng)->workers();
  ASSERT_EQ(before.size(), 4u);
  const pid_t victim = static_cast<pid_t>(before[3].pid);
  const long_run got = serve_long(**eng, [&](std::size_t tokens) {
    if (tokens == 4) {
      ASSERT_EQ(::kill(victim, SIGTERM), 0);
    }
  });
  EXPECT_EQ(got.tokens, want.tokens);
  for (const auto& e : got.last) {
    EXPECT_EQ(e.reason, actors::finish_reason::length) << e.error.to_string();
  }
  // The leave runs at a step boundary after the next heartbeat (500 ms): wait for its epoch.
  actors::engine_stats s;
  for (int i = 0; i < 200; ++i) {
    s = (*eng)->stats();
    if (std::any_of(s.epochs.begin(), s.epochs.end(),
                    [](const actors::epoch_stats& e) { return e.reason == "leave"; })) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(s.recoveries.empty()) << s.recoveries.front().why;
  ASSERT_EQ(s.epochs.back().reason, "leave");
  EXPECT_EQ(s.epochs.back().layout_before, "helix:kvp=4,tpa=1,tpf=4,ep=1");
  EXPECT_EQ(s.epochs.back().blocks_rebuilt, 0);
  // The source reaps its children only at the end: an exited worker is a zombie until then.
  const auto running = [](pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(stat, line)) return false;
    const auto close = line.rfind(')');
    return close != std::string::npos && close + 2 < line.size() && line[close + 2] != 'Z';
  };
  for (int i = 0; i < 200 && running(victim); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_FALSE(running(victim)) << "the worker that got SIGTERM did not exit";

  const status grown = (*eng)->add_workers(2);
  ASSERT_TRUE(grown.ok()) << grown.to_string();
  s = (*eng)->stats();
  EXPECT_EQ(s.layout, "helix:kvp=4,tpa=1,tpf=4,ep=1") << "2 served, 1 stood by, 2 joined";
  EXPECT_EQ(s.standbys, 1);
  const auto after = (*eng)->workers();
  ASSERT_EQ(after.size(), 4u);
  const long_run again = serve_long(**eng);
  EXPECT_EQ(again.tokens, want_again.tokens);
  eng->reset();
  for (const auto& w : after) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
}

// The check, on a smaller context: every request completes, `epochs` has a join and a
// leave entry that moved KV and rebuilt none, and output_digest equals the static run's.
TEST(Processes, ElasticJoinAndLeaveKeepTheDigest) {
  const std::string workload = "run --requests 48 --max-tokens 64 --context 256 --seed 5 --json";
  int rc = -1;
  const std::string fixed_text = test_support::run_cli(HELIX_CLI, workload + " --workers 2", rc);
  ASSERT_EQ(rc, 0) << fixed_text;
  const nlohmann::json fixed = test_support::last_json(fixed_text);
  ASSERT_TRUE(fixed.contains("output_digest")) << fixed_text;

  const std::string text = test_support::run_cli(
      HELIX_CLI, workload + " --processes 2 --elastic join:2@step20,leave:1@step60", rc);
  ASSERT_EQ(rc, 0) << text;
  const nlohmann::json got = test_support::last_json(text);
  ASSERT_TRUE(got.contains("epochs")) << text;
  EXPECT_EQ(got["requests_completed"], 48) << text;
  EXPECT_EQ(got["output_digest"], fixed["output_digest"]) << text;
  int joins = 0;
  int leaves = 0;
  for (const auto& e : got["epochs"]) {
    if (e["reason"] == "join") {
      ++joins;
      // tiny-llama on 2 workers is helix:kvp=1,tpa=2; 4 keep the TPA size.
      EXPECT_EQ(e["layout_before"], "helix:kvp=1,tpa=2,tpf=2,ep=1") << e.dump();
      EXPECT_EQ(e["layout_after"], "helix:kvp=2,tpa=2,tpf=4,ep=1") << e.dump();
      EXPECT_GT(e["kv_bytes_moved"].get<std::int64_t>(), 0) << e.dump();
      EXPECT_EQ(e["blocks_rebuilt"], 0) << e.dump();
    }
    if (e["reason"] == "leave") {
      ++leaves;
      // 3 members have no layout: 2 serve, the third stands by; the leaver's member donates.
      EXPECT_EQ(e["layout_after"], "helix:kvp=1,tpa=2,tpf=2,ep=1") << e.dump();
      EXPECT_GT(e["blocks_moved"].get<std::int64_t>(), 0) << e.dump();
      EXPECT_EQ(e["blocks_rebuilt"], 0) << e.dump();
      EXPECT_GT(e["pause_ms"].get<double>(), 0.0) << e.dump();
    }
  }
  EXPECT_EQ(joins, 1) << got["epochs"].dump();
  EXPECT_EQ(leaves, 1) << got["epochs"].dump();
  EXPECT_TRUE(got["elastic_failures"].empty()) << text;
  EXPECT_EQ(got["worker_processes"].size(), 2u) << "rank order after the leave: " << text;
}

// A standby process that exits (SIGTERM while standing by) no longer counts: a later leave
// shrinks the layout instead of handing the rank to the dead standby (which failed the engine).
TEST(Processes, AStandbyThatExitedIsNotGivenARank) {
  const engine_config c = config_for("tiny-llama", "helix:kvp=2,tpa=1", 2);
  spawned_workers_options o;
  o.worker_binary = HELIX_CLI;
  o.standbys = 1;
  auto eng = engine::create(c, spawned_workers(o));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  std::vector<pid_t> ranks;
  for (const auto& w : (*eng)->workers()) ranks.push_back(static_cast<pid_t>(w.pid));
  pid_t standby = -1;
  for (const pid_t p : children_of(::getpid(), "worker --join")) {
    if (std::find(ranks.begin(), ranks.end(), p) == ranks.end()) standby = p;
  }
  ASSERT_GT(standby, 0);
  ASSERT_EQ(::kill(standby, SIGTERM), 0);
  for (int i = 0; i < 200 && (*eng)->stats().standbys > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ((*eng)->stats().standbys, 0);
  const status left = (*eng)->drain_worker(-1);
  ASSERT_TRUE(left.ok()) << left.to_string();
  const auto s = (*eng)->stats();
  EXPECT_EQ(s.health, actors::engine_health::serving) << s.failure.to_string();
  EXPECT_EQ(s.layout, "helix:kvp=1,tpa=1,tpf=1,ep=1");
  const long_run after = serve_long(**eng);
  for (const auto& e : after.last) {
    EXPECT_EQ(e.reason, actors::finish_reason::length) << e.error.to_string();
  }
}

// A standby started by hand (listening engine) that dies: not a child of the engine, so only its
// silence shows. The next planned change asks every standby's heartbeat first and drops the
// silent one: the leave shrinks the layout instead of handing the rank to the dead standby (which
// failed the relayout, then the engine), and the engine keeps serving exactly.
TEST(Processes, AHandStartedStandbyThatDiedIsDroppedBeforeARelayout) {
  listening_engine le(2, 1);
  auto port_future = le.listening.get_future();
  ASSERT_EQ(port_future.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  const std::uint16_t port = port_future.get();
  ASSERT_NE(port, 0);
  const pid_t a = start_worker(port, "hand-0");
  const pid_t b = start_worker(port, "hand-1");
  const pid_t spare = start_worker(port, "hand-spare", /*standby=*/true);
  le.builder.join();
  ASSERT_TRUE(le.eng.has_value()) << le.eng.error().to_string();
  engine& eng = **le.eng;
  EXPECT_EQ(eng.stats().standbys, 1);
  ASSERT_EQ(::kill(spare, SIGKILL), 0);
  ASSERT_EQ(::waitpid(spare, nullptr, 0), spare);
  const status left = eng.drain_worker(-1);
  ASSERT_TRUE(left.ok()) << left.to_string();
  const auto s = eng.stats();
  EXPECT_EQ(s.health, actors::engine_health::serving) << s.failure.to_string();
  EXPECT_EQ(s.layout, "helix:kvp=1,tpa=1,tpf=1,ep=1");
  EXPECT_EQ(s.standbys, 0);
  EXPECT_TRUE(s.recoveries.empty()) << "a planned leave, not a recovery";
  const long_run after = serve_long(eng);
  for (const auto& e : after.last) {
    EXPECT_EQ(e.reason, actors::finish_reason::length) << e.error.to_string();
  }
  le.eng = internal_error("stopped");  // the engine's end stops its workers
  reap(a);
  reap(b);
}

// `workload` on `workers` threads and on as many worker processes with `elastic` changes: every
// request completes on both and the digests agree. The elastic run's JSON (null on a failure).
nlohmann::json expect_elastic_digest(const std::string& workload, int workers, int requests,
                                     const std::string& elastic) {
  int rc = -1;
  const auto fixed = test_support::last_json(
      test_support::run_cli(HELIX_CLI, fmt::format("{} --workers {}", workload, workers), rc));
  EXPECT_EQ(rc, 0);
  const std::string text = test_support::run_cli(
      HELIX_CLI, fmt::format("{} --processes {} --elastic {}", workload, workers, elastic), rc);
  EXPECT_EQ(rc, 0) << text;
  if (rc != 0) return nullptr;
  auto got = test_support::last_json(text);
  EXPECT_EQ(got["requests_completed"], requests) << text;
  EXPECT_EQ(got["output_digest"], fixed["output_digest"]) << text;
  return got;
}

// The epochs of `run` with `reason`.
std::vector<nlohmann::json> epochs_of(const nlohmann::json& run, const std::string& reason) {
  std::vector<nlohmann::json> out;
  if (!run.is_object()) return out;
  for (const auto& e : run["epochs"]) {
    if (e["reason"] == reason) out.push_back(e);
  }
  return out;
}

// A leave on two TPA columns with worker processes: the members left without a rank donate,
// each column's holder to the same column (donor order member-major), so nothing is rebuilt.
TEST(Processes, LeaveOnTwoColumnsMovesEveryColumnsBlocks) {
  const auto got = expect_elastic_digest(
      "run --layout helix:kvp=4,tpa=2 --requests 16 --context 128 --max-tokens 24 --seed 2 "
      "--json",
      8, 16, "leave:1@step10");
  const auto leaves = epochs_of(got, "leave");
  ASSERT_EQ(leaves.size(), 1u) << got.dump();
  EXPECT_EQ(leaves[0]["layout_after"], "helix:kvp=2,tpa=2,tpf=4,ep=1") << leaves[0].dump();
  EXPECT_EQ(leaves[0]["blocks_rebuilt"], 0) << leaves[0].dump();
}

// Two columns, and a standby process takes the leaver's rank: the leaver's member keeps a
// serving holder in the other column, so its pages move from both holders (re-sliced at the
// same TPA size) rather than being rebuilt.
TEST(Processes, AStandbyTakingTheLeaversRankGetsItsPagesFromBothColumns) {
  const auto got = expect_elastic_digest(
      "run --layout helix:kvp=2,tpa=2 --requests 12 --max-tokens 32 --context 128 --seed 4 "
      "--json",
      4, 12, "join:1@step4,leave:1@step10");
  const auto leaves = epochs_of(got, "leave");
  ASSERT_EQ(leaves.size(), 1u) << got.dump();
  EXPECT_EQ(leaves[0]["layout_after"], "helix:kvp=2,tpa=2,tpf=4,ep=1") << leaves[0].dump();
  EXPECT_EQ(leaves[0]["blocks_rebuilt"], 0) << leaves[0].dump();
  EXPECT_GT(leaves[0]["blocks_moved"].get<std::int64_t>(), 0) << leaves[0].dump();
}

// The tp family with worker processes: every change alters the TPA size, so the KV moves
// re-sliced by head over UCX (tp=2 -> 4 copies each of tiny-llama's 2 KV heads onto two ranks;
// the leave joins them again on tp=2, the leaver sending its heads as a donor); nothing is
// rebuilt and the digest is the static run's.
TEST(Processes, TensorParallelChangesMoveKvHeadsBetweenProcesses) {
  const auto got = expect_elastic_digest(
      "run --layout tp:tp=2 --requests 12 --max-tokens 32 --context 128 --seed 4 --json", 2, 12,
      "join:2@step8,leave:1@step20");
  std::vector<std::string> after;
  for (const std::string reason : {"join", "leave"}) {
    for (const auto& e : epochs_of(got, reason)) {
      after.push_back(e["layout_after"].get<std::string>());
      EXPECT_EQ(e["blocks_rebuilt"], 0) << e.dump();
      EXPECT_GT(e["kv_bytes_moved"].get<std::int64_t>(), 0) << e.dump();
      EXPECT_NE(e["note"].get<std::string>().find("re-sliced by head"), std::string::npos)
          << e.dump();
    }
  }
  EXPECT_EQ(after, (std::vector<std::string>{"tp:tp=4", "tp:tp=2"})) << got.dump();
}

#if !defined(__SANITIZE_ADDRESS__)
// Workers started by hand join a running engine (listening): they stand by, and the planner's
// policy gives them ranks once the cost model predicts a faster step for the load (or the KV
// use calls for room: planner/elastic_policy.hpp, unit-tested), explaining the decision in the
// epoch; the tokens are those of the run on a fixed layout. Not under ASan:
// the load must be heavy enough for the cost model (64 requests of ~2K tokens), which takes
// minutes there.
TEST(Processes, WorkersThatJoinARunningEngineAreTakenInByThePolicy) {
  const std::string workload =
      "run --layout helix:kvp=2,tpa=1 --requests 64 --rate 8 --context 2K --max-tokens 48 "
      "--seed 6 --json";
  int rc = -1;
  const auto fixed =
      test_support::last_json(test_support::run_cli(HELIX_CLI, workload + " --workers 2", rc));
  ASSERT_EQ(rc, 0);
  const auto port = static_cast<std::uint16_t>(20000 + ((::getpid() + 7919) % 20000));
  const std::string join = fmt::format("127.0.0.1:{}", port);
  auto engine = std::async(std::launch::async, [&] {
    int code = -1;
    std::string out = test_support::run_cli(
        HELIX_CLI, workload + " --listen " + join + " --expect-workers 2 --log-level info", code);
    return std::make_pair(code, out);
  });
  const auto worker = [&](const std::string& name) {
    return std::async(std::launch::async, [&join, name] {
      int code = -1;
      return test_support::run_cli(HELIX_CLI, "worker --join " + join + " --name " + name, code);
    });
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  auto w1 = worker("first-1");
  auto w2 = worker("first-2");
  std::this_thread::sleep_for(std::chrono::seconds(3));  // serving by then
  auto w3 = worker("late-1");
  auto w4 = worker("late-2");
  const auto [code, out] = engine.get();
  for (auto* w : {&w1, &w2, &w3, &w4}) w->get();
  ASSERT_EQ(code, 0) << out;
  const auto got = test_support::last_json(out);
  EXPECT_EQ(got["requests_completed"], 64) << out;
  EXPECT_EQ(got["output_digest"], fixed["output_digest"]);
  bool taken = false;
  for (const auto& e : got["epochs"]) {
    if (e["reason"] != "join") continue;
    taken = true;
    EXPECT_EQ(e["layout_after"], "helix:kvp=4,tpa=1,tpf=4,ep=1") << e.dump();
    EXPECT_NE(e["note"].get<std::string>().find("cost model predicts"), std::string::npos)
        << e.dump();
    EXPECT_NE(e["note"].get<std::string>().find("of admission per member"), std::string::npos)
        << e.dump();
    EXPECT_EQ(e["blocks_rebuilt"], 0);
  }
  EXPECT_TRUE(taken) << "the late workers were never taken in: " << out;
}
#endif

}  // namespace
}  // namespace helix::cluster
