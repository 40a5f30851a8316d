// Recovery of worker processes (label multiproc): kill -9 of a worker mid-decode, a scheduled
// CRASH, two deaths one after the other, a standby taking the dead rank, the engine's destructor
// right after a death, `helix run --processes 4` with a worker killed; every request ends as in a
// run without the failure, by full replay or by rebuilding only the lost KV blocks, and no worker
// outlives its engine.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <future>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/rng.hpp"
#include "tests/support/cli.hpp"
#include "tests/support/cluster_fixtures.hpp"
#include "transport/fault/schedule.hpp"

namespace helix::cluster {
namespace {

using namespace fixtures;
using namespace std::chrono_literals;

// Worker processes of `c` serve the long workload; rank `victim` is killed with SIGKILL once the
// first request has `at` tokens. Every request must end as in a run without the kill (in-process
// workers), the engine keep serving after exactly one recovery, which names the victim; then
// `more` checks the rest on the running engine, and no worker process outlives it.
void expect_kill_recovered(
    const engine_config& c, std::size_t victim, std::size_t at,
    const std::function<void(engine&, const actors::recovery_stats&,
                             const std::vector<actors::worker_info>&)>& more) {
  const long_run want = fault_free_run(c);
  ASSERT_FALSE(want.tokens.empty());
  auto eng = engine::create(c, processes());
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto before = (*eng)->workers();
  ASSERT_GT(before.size(), victim);
  const long_run got = serve_long(**eng, [&](std::size_t tokens) {
    if (tokens == at) {
      ASSERT_EQ(::kill(static_cast<pid_t>(before[victim].pid), SIGKILL), 0);
    }
  });
  EXPECT_EQ(got.tokens, want.tokens);
  for (const auto& e : got.last) {
    EXPECT_EQ(e.reason, finish_reason::length) << e.error.to_string();
  }
  const auto s = (*eng)->stats();
  EXPECT_EQ(s.health, actors::engine_health::serving) << s.failure.to_string();
  ASSERT_EQ(s.recoveries.size(), 1u);
  EXPECT_EQ(s.recoveries[0].rank, static_cast<std::int64_t>(victim));
  EXPECT_EQ(s.recoveries[0].pid, before[victim].pid);
  EXPECT_EQ(s.recoveries[0].layout_before, layout::parse(c.layout)->to_string());
  more(**eng, s.recoveries[0], before);
  eng->reset();
  for (const auto& w : before) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
}

// kill -9 of a worker process mid-decode with recovery on: the survivors take the ranks of a new
// layout (weights resharded, a new UCX world among them), the one without a rank stands by, and
// every request ends as in a run without the kill; nothing outlives the engine.
TEST(Processes, KilledWorkerIsRecoveredAndEveryRequestMatchesTheFaultFreeRun) {
  engine_config c = config_for("tiny-llama", "helix:kvp=2,tpa=2", 4);
  c.recovery = "full_replay";
  expect_kill_recovered(c, 1, 1,
                        [](engine& eng, const actors::recovery_stats&,
                           const std::vector<actors::worker_info>& before) {
                          const auto after = eng.workers();
                          ASSERT_EQ(after.size(),
                                    2u);  // tiny-llama has no 3-rank helix layout: one stands by
                          EXPECT_EQ(after[0].pid, before[0].pid);
                          EXPECT_EQ(after[1].pid, before[2].pid);
                          EXPECT_TRUE(alive(before[3].pid)) << "the standby lives on";
                          // The engine still serves new requests on the new layout.
                          request_options r;
                          r.prompt = test_support::random_tokens(7, eng.vocab(), 9);
                          r.max_tokens = 4;
                          auto h = eng.submit(r);
                          ASSERT_TRUE(h.has_value()) << h.error().to_string();
                          EXPECT_EQ(h->stream->wait_all().size(), 4u);
                        });
}

// Lost blocks only, with worker processes: kill -9 of rank 2 of helix:kvp=4 mid-decode; the
// survivors carry their KV into the new layout (kvp=2), the third survivor sends its blocks to
// their new owners over UCX and stands by, only what the dead one held is computed again, and
// every request matches the fault-free run.
TEST(Processes, KilledWorkerLostBlocksAreRebuiltAndEveryRequestMatches) {
  engine_config c = config_for("tiny-llama", "helix:kvp=4,tpa=1", 4);
  c.recovery = "lost_blocks";
  expect_kill_recovered(
      c, 2, 3,
      [](engine& eng, const actors::recovery_stats& rec,
         const std::vector<actors::worker_info>& before) {
        EXPECT_EQ(rec.mode, "lost_blocks");
        EXPECT_GT(rec.blocks_kept, 0);
        EXPECT_GT(rec.blocks_moved, 0) << "the survivor left without a rank hands its blocks over";
        EXPECT_GT(rec.blocks_rebuilt, 0);
        EXPECT_EQ(rec.layout_after, layout::parse("helix:kvp=2,tpa=1")->to_string());
        EXPECT_TRUE(alive(before[3].pid)) << "the donor stands by after the handoff";
        // Every sequence closed on the new workers: no KV left behind.
        std::int64_t used = -1;
        for (int tries = 0; tries < 200 && used != 0; ++tries) {
          used = 0;
          for (const auto& w : eng.stats().workers) used += w.kv_used_blocks;
          if (used != 0) std::this_thread::sleep_for(10ms);
        }
        EXPECT_EQ(used, 0);
      });
}

// A CRASH fault from a schedule (the chaos harness's way): worker process 3 kills itself at its
// 40th all_reduce; the engine recovers as from kill -9, and every request matches.
TEST(Processes, ScheduledCrashIsRecovered) {
  engine_config c = config_for("tiny-llama", "helix:kvp=4,tpa=1", 4);
  c.recovery = "full_replay";
  const long_run want = fault_free_run(c);
  ASSERT_FALSE(want.tokens.empty());
  spawned_workers_options o;
  o.worker_binary = HELIX_CLI;
  o.faults.faults.push_back({.action = transport::fault::fault_action::crash,
                             .rank = 3,
                             .kind = transport::fault::call_kind::all_reduce,
                             .nth = 40});
  auto eng = engine::create(c, spawned_workers(o));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto before = (*eng)->workers();
  const long_run got = serve_long(**eng);
  EXPECT_EQ(got.tokens, want.tokens);
  const auto s = (*eng)->stats();
  ASSERT_EQ(s.recoveries.size(), 1u);
  EXPECT_EQ(s.recoveries[0].rank, 3);
  EXPECT_EQ(s.recoveries[0].pid, before[3].pid);
  // Reported by rank 3 itself (its connection dropped) or by a peer that saw it go.
  EXPECT_NE(s.recoveries[0].why.find(" 3"), std::string::npos) << s.recoveries[0].why;
}

// Every layout family, each worker in turn: worker process r of 4 kills itself (a scheduled
// CRASH, SIGKILL) at a seeded all_reduce of the run, recovery rebuilds the lost blocks, and every
// request's tokens equal the run without the kill.
TEST(Processes, EachWorkerKilledInTurnUnderEveryLayoutFamilyKeepsEveryToken) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"tiny-llama", "helix:kvp=4,tpa=1"},
      {"tiny-llama", "helix:kvp=2,tpa=2"},
      {"tiny-llama", "tp:tp=4"},
      {"tiny-llama", "medha:kvp=2,tpa=2"},
      {"tiny-deepseek", "helix:kvp=4,tpa=1"}};
  for (std::size_t k = 0; k < cases.size(); ++k) {
    engine_config c = config_for(cases[k].first, cases[k].second, 4);
    c.recovery = "lost_blocks";
    const long_run want = fault_free_run(c);
    ASSERT_FALSE(want.tokens.empty());
    for (int rank = 0; rank < 4; ++rank) {
      SCOPED_TRACE(cases[k].first + " " + cases[k].second + " rank " + std::to_string(rank));
      const std::uint64_t nth =
          8 +
          random_words(11, k, static_cast<std::uint64_t>(rank), rng_purpose::test_data, 0)[0] % 64;
      spawned_workers_options o;
      o.worker_binary = HELIX_CLI;
      o.faults.faults.push_back({.action = transport::fault::fault_action::crash,
                                 .rank = rank,
                                 .kind = transport::fault::call_kind::all_reduce,
                                 .nth = nth});
      auto eng = engine::create(c, spawned_workers(o));
      ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
      const long_run got = serve_long(**eng);
      EXPECT_EQ(got.tokens, want.tokens) << "crash at all_reduce #" << nth;
      const auto s = (*eng)->stats();
      EXPECT_EQ(s.health, actors::engine_health::serving) << s.failure.to_string();
      ASSERT_EQ(s.recoveries.size(), 1u) << "crash at all_reduce #" << nth;
      EXPECT_EQ(s.recoveries[0].rank, rank);
    }
  }
}

// Two workers killed one after the other: the first recovery leaves a standby, which takes the
// second dead worker's rank in the next.
TEST(Processes, TwoWorkersKilledOneAfterTheOtherAreBothRecovered) {
  engine_config c = config_for("tiny-llama", "helix:kvp=4,tpa=1", 4);
  c.recovery = "full_replay";
  const long_run want = fault_free_run(c);
  ASSERT_FALSE(want.tokens.empty());
  auto eng = engine::create(c, processes());
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto before = (*eng)->workers();
  std::vector<actors::worker_info> middle;
  const long_run got = serve_long(**eng, [&](std::size_t tokens) {
    if (tokens == 2) {
      ASSERT_EQ(::kill(static_cast<pid_t>(before[0].pid), SIGKILL), 0);
    }
    if (tokens == 12) {
      middle = (*eng)->workers();
      ASSERT_EQ(middle.size(), 2u);
      ASSERT_EQ(::kill(static_cast<pid_t>(middle[1].pid), SIGKILL), 0);
    }
  });
  EXPECT_EQ(got.tokens, want.tokens);
  const auto s = (*eng)->stats();
  ASSERT_EQ(s.recoveries.size(), 2u);
  EXPECT_EQ(s.recoveries[0].pid, before[0].pid);
  ASSERT_EQ(middle.size(), 2u);
  EXPECT_EQ(s.recoveries[1].pid, middle[1].pid);
  const auto after = (*eng)->workers();
  ASSERT_EQ(after.size(), 2u);
  EXPECT_EQ(after[1].pid, before[3].pid) << "the standby took the free rank";
  eng->reset();
  for (const auto& w : before) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
}

// A standby started with the engine takes the dead worker's rank: the layout stays the same.
TEST(Processes, StandbyTakesTheDeadWorkersRankAndTheLayoutStays) {
  engine_config c = config_for("tiny-llama", "helix:kvp=4,tpa=1", 4);
  c.recovery = "full_replay";
  const long_run want = fault_free_run(c);
  ASSERT_FALSE(want.tokens.empty());
  spawned_workers_options o;
  o.worker_binary = HELIX_CLI;
  o.standbys = 1;
  auto eng = engine::create(c, spawned_workers(o));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto before = (*eng)->workers();
  ASSERT_EQ(before.size(), 4u);
  const long_run got = serve_long(**eng, [&](std::size_t tokens) {
    if (tokens == 3) {
      ASSERT_EQ(::kill(static_cast<pid_t>(before[1].pid), SIGKILL), 0);
    }
  });
  EXPECT_EQ(got.tokens, want.tokens);
  const auto s = (*eng)->stats();
  ASSERT_EQ(s.recoveries.size(), 1u);
  EXPECT_EQ(s.recoveries[0].layout_after, s.recoveries[0].layout_before);
  const auto after = (*eng)->workers();
  ASSERT_EQ(after.size(), 4u);
  std::set<std::int64_t> old_pids;
  for (const auto& w : before) old_pids.insert(w.pid);
  EXPECT_EQ(old_pids.count(after[3].pid), 0u) << "the standby is rank 3 now";
  const std::int64_t standby_pid = after[3].pid;
  eng->reset();
  for (const auto& w : before) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
  EXPECT_FALSE(alive(standby_pid));
}

// The engine's destructor right after a worker died mid-step (the drain meets the failure): it
// returns at once, every request ended, and no worker process outlives it.
TEST(Processes, EngineDestroyedRightAfterAWorkerDiedEndsEverythingWithoutHanging) {
  engine_config c = config_for("tiny-llama", "helix:kvp=4,tpa=1", 4);
  c.recovery = "full_replay";
  auto eng = engine::create(c, processes());
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto before = (*eng)->workers();
  std::vector<actors::request_handle> handles;
  for (int i = 0; i < 3; ++i) {
    request_options r;
    r.prompt = test_support::random_tokens(12, (*eng)->vocab(), 60 + static_cast<std::uint64_t>(i));
    r.max_tokens = 400;
    auto h = (*eng)->submit(r);
    ASSERT_TRUE(h.has_value()) << h.error().to_string();
    handles.push_back(*h);
  }
  ASSERT_TRUE(handles[0].stream->next_for(30s).has_value());
  ASSERT_EQ(::kill(static_cast<pid_t>(before[2].pid), SIGKILL), 0);
  const auto t0 = std::chrono::steady_clock::now();
  eng->reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 20s);
  for (auto& h : handles) {
    bool ended = false;
    while (auto e = h.stream->next_for(1s)) ended = ended || e->last;
    EXPECT_TRUE(ended || h.stream->finished()) << "a request never ended";
  }
  for (const auto& w : before) EXPECT_FALSE(alive(w.pid)) << "worker pid " << w.pid << " outlived";
}

// The issue's check: `helix run --processes 4` with one worker process killed by kill -9
// mid-run completes every request with the output_digest of the run without the kill, and its
// JSON lists the recovery with the dead worker's pid.
TEST(Processes, RunWithAWorkerKilledMidRunKeepsTheDigest) {
  const std::string workload =
      "run --requests 24 --context 256 --max-tokens 48 --seed 5 --recovery lost_blocks --json";
  int rc = -1;
  const nlohmann::json clean =
      test_support::last_json(test_support::run_cli(HELIX_CLI, workload + " --workers 4", rc));
  ASSERT_EQ(rc, 0);
  ASSERT_TRUE(clean.contains("output_digest"));

  // Started directly (no shell), so that its worker children are found by their parent; its
  // stderr is watched for the first progress line (the engine runs requests).
  int out_pipe[2];
  int err_pipe[2];
  ASSERT_EQ(::pipe(out_pipe), 0);
  ASSERT_EQ(::pipe(err_pipe), 0);
  const pid_t run = ::fork();
  ASSERT_GE(run, 0);
  if (run == 0) {
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::close(out_pipe[0]);
    ::close(err_pipe[0]);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::vector<std::string> args = {HELIX_CLI};
    std::istringstream words(workload + " --processes 4");
    for (std::string w; words >> w;) args.push_back(w);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(HELIX_CLI, argv.data());
    ::_exit(127);
  }
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  std::atomic<bool> running{false};
  auto output = std::async(std::launch::async, drain_run_output, out_pipe[0], nullptr);
  auto log = std::async(std::launch::async, drain_run_output, err_pipe[0], &running);
  const auto until = std::chrono::steady_clock::now() + 120s;
  while (!running && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
  ASSERT_TRUE(running) << "the run never started serving";
  const std::vector<pid_t> workers = children_of(run, "worker --join");
  ASSERT_EQ(workers.size(), 4u);
  const pid_t victim = workers[2];
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  int wstatus = 0;
  ASSERT_EQ(::waitpid(run, &wstatus, 0), run);
  const std::string text = output.get();
  const std::string stderr_text = log.get();
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << text << stderr_text;
  const nlohmann::json got = test_support::last_json(text);
  ASSERT_TRUE(got.contains("output_digest")) << text;
  EXPECT_EQ(got["requests_completed"], 24) << text;
  EXPECT_EQ(got["output_digest"], clean["output_digest"]);
  ASSERT_EQ(got["recoveries"].size(), 1u) << "the kill came after the run ended? " << text;
  EXPECT_EQ(got["recoveries"][0]["pid"], victim);
  EXPECT_EQ(got["recoveries"][0]["mode"], "lost_blocks") << text;
  for (const pid_t w : workers) EXPECT_FALSE(alive(w)) << "worker pid " << w << " outlived";
}

// A partition: the link of the worker host holding rank 1 goes down mid-decode (its interface,
// inside its namespace). The engine loses that worker's heartbeats within 2 s and recovers (lost
// blocks; the standby takes the rank, the layout stays); every request completes with the digest
// of a run without the partition. The cut-off worker lost its engine: it aborts its data plane
// (fenced: nothing it still had is applied) and, started with --rejoin, joins again as a new
// worker once the link is back (while the run still goes on): the engine takes it as a standby,
// and it ends with the engine.
TEST(Processes, PartitionedWorkerIsRecoveredFencedAndRejoins) {
  auto hosts = transport::netns_hosts::create(4);  // the engine, two ranks, a standby
  if (!hosts) GTEST_SKIP() << "network namespaces unavailable: " << hosts.error().to_string();
  const std::string at = hosts->host(0).address + ":7413";
  const std::vector<std::string> common = {
      "--model",      "tiny-llama", "--layout",  "helix:kvp=2,tpa=1",
      "--requests",   "72",         "--context", "256",
      "--max-tokens", "64",         "--rate",    "6",
      "--seed",       "3",          "--json"};
  int out_pipe[2];
  int err_pipe[2];
  ASSERT_EQ(::pipe(out_pipe), 0);
  ASSERT_EQ(::pipe(err_pipe), 0);
  std::vector<std::string> run_args = {"run",         "--listen",    at,    "--expect-workers",
                                       "2",           "--standby",   "1",   "--recovery",
                                       "lost_blocks", "--log-level", "info"};
  run_args.insert(run_args.end(), common.begin(), common.end());
  const pid_t eng = spawn_in(hosts->host(0).netns, {}, run_args, out_pipe[1], err_pipe[1]);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  std::atomic<bool> running{false};
  auto output = std::async(std::launch::async, drain_run_output, out_pipe[0], nullptr);
  auto log = std::async(std::launch::async, drain_run_output, err_pipe[0], &running);
  std::this_thread::sleep_for(500ms);  // the engine listens before the workers dial
  const std::vector<std::string> ucx_env = {"UCX_TLS=tcp,self", "UCX_NET_DEVICES=helix0"};
  std::vector<pid_t> workers;
  for (int h = 1; h <= 3; ++h) {
    std::vector<std::string> args = {"worker", "--join", at, "--name", "host" + std::to_string(h)};
    if (h == 3) args.push_back("--standby");
    if (h == 2) {
      args.insert(args.end(), {"--rejoin", "--timeout-ms", "30000", "--log-level", "info"});
    }
    workers.push_back(spawn_in(hosts->host(h).netns, ucx_env, args));
    std::this_thread::sleep_for(300ms);  // join in order: host1 rank 0, host2 rank 1
  }
  const auto until = std::chrono::steady_clock::now() + 90s;
  // Serving shows in the first progress line, which comes once a second or so: arrivals at 6 per
  // second keep the run going for several seconds. An engine that ends first fails the test.
  while (!running && std::chrono::steady_clock::now() < until &&
         log.wait_for(0s) != std::future_status::ready) {
    std::this_thread::sleep_for(20ms);
  }
  if (!running) {
    ::kill(eng, SIGKILL);
    ::waitpid(eng, nullptr, 0);
    for (const pid_t w : workers) ::kill(w, SIGKILL);
    for (const pid_t w : workers) ::waitpid(w, nullptr, 0);
    FAIL() << "the run never started serving:\n" << output.get() << log.get();
  }
  const auto cut = transport::run_process(
      {"ip", "-n", hosts->host(2).netns, "link", "set", hosts->host(2).device, "down"});
  ASSERT_TRUE(cut.has_value() && cut->exit_code == 0) << "could not cut the link";
  // The engine recovers within about 2 s; the link comes back while arrivals (6 per second for
  // 12 s) still run. The worker fences itself once its engine was silent for 4 s, then rejoins.
  std::this_thread::sleep_for(3s);
  const auto back = transport::run_process(
      {"ip", "-n", hosts->host(2).netns, "link", "set", hosts->host(2).device, "up"});
  EXPECT_TRUE(back.has_value() && back->exit_code == 0);
  int st = 0;
  ::waitpid(eng, &st, 0);
  const std::string text = output.get();
  const std::string stderr_text = log.get();
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << text << stderr_text;
  // The fenced worker came back as a new worker (same process, a fresh image) and stood by.
  EXPECT_NE(stderr_text.find(fmt::format("worker host2 (pid {} on", workers[1])), std::string::npos)
      << stderr_text;
  EXPECT_NE(stderr_text.find("joined the running engine as a standby"), std::string::npos)
      << stderr_text;
  // It ends with the engine, as a standby does.
  int wst = 0;
  pid_t reaped = 0;
  for (int i = 0; i < 600 && reaped == 0; ++i) {
    reaped = ::waitpid(workers[1], &wst, WNOHANG);
    if (reaped == 0) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(reaped, workers[1]) << "the rejoined worker outlived its engine";
  if (reaped == 0) ::kill(workers[1], SIGKILL);
  // The others end with their engine; closing UCX endpoints to the host that was cut off can
  // take until UCX's endpoint timeout (about 20 s measured under ASan).
  for (const pid_t w : {workers[0], workers[2]}) reap(w, 60s);
  const nlohmann::json j = test_support::last_json(text);
  ASSERT_TRUE(j.contains("output_digest")) << text << stderr_text;
  EXPECT_EQ(j["requests_completed"], 72);
  ASSERT_EQ(j["recoveries"].size(), 1u) << "the partition came after the run ended? " << text;
  EXPECT_EQ(j["recoveries"][0]["pid"], workers[1]);
  EXPECT_EQ(j["recoveries"][0]["mode"], "lost_blocks");
  // The same workload on in-process workers, without a partition.
  int rc = -1;
  std::string args = "run --workers 2";
  for (const auto& a : common) args += " " + a;
  const nlohmann::json local = test_support::last_json(test_support::run_cli(HELIX_CLI, args, rc));
  ASSERT_EQ(rc, 0);
  EXPECT_EQ(j["output_digest"], local["output_digest"]);
}

}  // namespace
}  // namespace helix::cluster
