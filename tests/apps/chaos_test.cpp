// `helix chaos` (apps/chaos_cmd.hpp): seeded fault schedules on the engine with recovery by full
// replay, its workers as threads or as `helix worker` processes. The 200-schedule run on threads
// and the 20-schedule run on processes are what `ctest -L chaos` is for; the others check that
// what the harness reports can fail: a wrong reference, a failure the engine does not recover
// from, an engine left without a layout (allowed, but it must end, not hang), crashes and other
// failures told apart from outside the worker processes, and a process left behind.
#include "apps/chaos_cmd.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "apps/cli_args.hpp"
#include "tests/support/cli.hpp"
#include "transport/fault/schedule.hpp"

namespace helix::apps {
namespace {

namespace fault = transport::fault;

std::string details(const chaos_report& r) {
  std::string out;
  for (const chaos_violation& v : r.violation_details) {
    out += "\n  schedule " + std::to_string(v.schedule) + " seed " + std::to_string(v.seed) + ": " +
           v.what + "\n    " + v.description + "\n    --schedule-hex " + v.schedule_hex;
  }
  return out;
}

std::string hex_to_bytes(const std::string& hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

fault::fault_spec fault_at(fault::fault_action action, int rank, std::uint64_t nth) {
  fault::fault_spec f;
  f.action = action;
  f.rank = rank;
  f.kind = fault::call_kind::any;
  f.nth = nth;
  if (action == fault::fault_action::delay) f.delay = std::chrono::milliseconds(5);
  return f;
}

fault::fault_spec fail_at(int rank, std::uint64_t nth) {
  return fault_at(fault::fault_action::fail, rank, nth);
}

// The `helix` binary the worker processes run (built before this test binary).
std::string helix_cli() {
  return HELIX_CLI;
}

// Options for a run on 4 worker processes, or a failure naming the missing binary.
::testing::AssertionResult processes_options(chaos_options& o) {
  o.processes = 4;
  o.worker_binary = helix_cli();
  if (::access(o.worker_binary.c_str(), X_OK) != 0) {
    return ::testing::AssertionFailure()
           << "no helix binary at '" << o.worker_binary << "' (build the helix target)";
  }
  return ::testing::AssertionSuccess();
}

fault::fault_schedule one_fault(fault::fault_action action, int rank, std::uint64_t nth) {
  fault::fault_schedule s;
  s.seed = 100 + static_cast<std::uint64_t>(action);
  s.world_size = 4;
  s.faults.push_back(fault_at(action, rank, nth));
  return s;
}

// The acceptance run: 200 schedules of the default workload with threads.
TEST(ChaosCommand, TwoHundredSchedulesOnThreadsHaveNoViolation) {
  chaos_options o;
  o.seed = 1;
  o.schedules = 200;
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->schedules, 200);
  EXPECT_EQ(r->violations, 0) << details(*r);
  EXPECT_GT(r->recoveries, 0);
  EXPECT_GT(r->faults_injected, 0);
  EXPECT_LE(r->faults_injected, r->faults_scheduled);
  EXPECT_EQ(r->faults_injected, r->delays + r->fails + r->hangs);
  EXPECT_EQ(r->crashes, 0);
  EXPECT_FALSE(r->abandoned);
  EXPECT_NE(progress.str().find("200/200 schedules"), std::string::npos) << progress.str();
  std::printf(
      "chaos: 200 schedules in %.1f s (fault-free run %.2f s), %lld faults fired, %lld "
      "recoveries\n",
      r->wall_s, r->fault_free_s, static_cast<long long>(r->faults_injected),
      static_cast<long long>(r->recoveries));
}

// Control-plane faults on top (--control-faults): delayed, dropped, duplicated and reordered
// control messages to the workers. A lost or out-of-order message is a lost worker (recovered
// from, or the engine runs out of workers, which ends the requests with that error); nothing
// may hang, repeat a token or change an output.
TEST(ChaosCommand, ControlPlaneFaultsOnThreadsHaveNoViolation) {
  chaos_options o;
  o.seed = 4;
  o.schedules = 40;
  o.control_faults = 0.05;
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->violations, 0) << details(*r);
  EXPECT_GT(r->control_dropped + r->control_delayed + r->control_duplicated + r->control_reordered,
            0);
  EXPECT_FALSE(r->abandoned);
}

// A reference that is wrong for request 1 makes every schedule report it, with the schedule's
// seed and bytes: the report names what a user needs to replay it.
TEST(ChaosCommand, WrongTokensAreReportedWithTheSeedAndSchedule) {
  chaos_options o;
  o.seed = 5;
  o.schedules = 3;
  o.tamper_expected = [](std::vector<std::vector<std::int32_t>>& want) { want[1][3] += 1; };
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->schedules_with_violations, 3) << details(*r);
  ASSERT_GE(r->violation_details.size(), 3u);
  std::vector<bool> seen(3, false);
  for (const chaos_violation& v : r->violation_details) {
    ASSERT_GE(v.schedule, 0);
    ASSERT_LT(v.schedule, 3);
    if (v.what.find("request 1: ended with length but token 3 is") == std::string::npos) continue;
    seen[static_cast<std::size_t>(v.schedule)] = true;
    EXPECT_EQ(v.seed, chaos_schedule_seed(5, v.schedule));
    EXPECT_EQ(v.description.rfind("seed " + std::to_string(v.seed) + ", world ", 0), 0u)
        << v.description;
    auto s = fault::parse_schedule(hex_to_bytes(v.schedule_hex));
    ASSERT_TRUE(s.has_value()) << s.error().to_string();
    EXPECT_EQ(s->seed, v.seed);
    EXPECT_EQ(fault::describe(*s), v.description);
  }
  EXPECT_EQ(seen, std::vector<bool>(3, true)) << details(*r);
  std::ostringstream human;
  print_chaos_report(human, o, *r);
  EXPECT_NE(human.str().find("VIOLATION schedule 0 (seed " +
                             std::to_string(chaos_schedule_seed(5, 0)) + ")"),
            std::string::npos)
      << human.str();
  EXPECT_NE(human.str().find("--schedule-hex " + r->violation_details[0].schedule_hex),
            std::string::npos)
      << human.str();
}

// Without recovery a worker failure fails the engine and every request with it: a violation,
// reported with the schedule (a replayed one: its own seed).
TEST(ChaosCommand, FailureWithoutRecoveryIsAViolation) {
  chaos_options o;
  o.recovery = "off";
  o.workers = 2;
  o.layout = "helix:kvp=2,tpa=1";
  fault::fault_schedule s;
  s.seed = 77;
  s.world_size = 2;
  s.faults.push_back(fail_at(1, 20));
  o.replay = s;
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->schedules, 1);
  EXPECT_EQ(r->faults_injected, 1);
  EXPECT_EQ(r->recoveries, 0);
  EXPECT_EQ(r->engines_exhausted, 0);
  ASSERT_GE(r->violations, 1);
  bool errored = false;
  for (const chaos_violation& v : r->violation_details) {
    EXPECT_EQ(v.seed, 77u);
    EXPECT_EQ(v.description, fault::describe(s));
    errored = errored || v.what.find("ended with error") != std::string::npos;
  }
  EXPECT_TRUE(errored) << details(*r);
}

// Two failures on a 2-rank layout: the first leaves one rank, the second (carried over to the
// rebuilt data plane, whose single rank it hits) leaves none. The engine must then end every
// request with the "no layout" error, promptly: allowed, not a violation, and no hang.
TEST(ChaosCommand, NoLayoutLeftEndsTheRequestsWithAnErrorNotAHang) {
  chaos_options o;
  o.workers = 2;
  o.layout = "tp:tp=2";
  fault::fault_schedule s;
  s.seed = 9;
  s.world_size = 2;
  s.faults.push_back(fail_at(0, 30));
  s.faults.push_back(fail_at(0, 30));  // the same call: dropped there, so it carries over
  o.replay = s;
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->violations, 0) << details(*r);
  EXPECT_EQ(r->faults_injected, 2);
  EXPECT_EQ(r->recoveries, 1);
  EXPECT_EQ(r->engines_exhausted, 1);
  EXPECT_LT(r->wall_s - r->fault_free_s, 5.0);
}

TEST(ChaosCommand, ScheduleSeedsAreDeterministicAndDistinct) {
  EXPECT_EQ(chaos_schedule_seed(1, 0), chaos_schedule_seed(1, 0));
  EXPECT_NE(chaos_schedule_seed(1, 0), chaos_schedule_seed(1, 1));
  EXPECT_NE(chaos_schedule_seed(1, 1), chaos_schedule_seed(2, 0));
  EXPECT_NE(chaos_schedule_seed(1, 0), 0u);
}

// The CLI: JSON fields, a replay by --schedule-hex, and usage errors.
TEST(ChaosCommand, JsonReportAndReplayByHex) {
  std::ostringstream out, err;
  ASSERT_EQ(run_chaos_cmd({"--seed", "3", "--schedules", "2", "--json"}, out, err), 0)
      << err.str() << out.str();
  const auto j = nlohmann::json::parse(out.str());
  for (const char* f :
       {"schedules", "faults_scheduled", "faults_injected", "faults_by_action", "crashes",
        "recoveries", "recoveries_dropping_another_rank", "migrations", "engines_exhausted",
        "violations", "schedules_with_violations", "violation_details", "wall_s", "workload"}) {
    EXPECT_TRUE(j.contains(f)) << f << " in " << j.dump();
  }
  EXPECT_EQ(j["schedules"], 2);
  EXPECT_TRUE(j["violations"].is_number_integer());
  EXPECT_EQ(j["violations"], 0);
  EXPECT_TRUE(j["violation_details"].is_array());
  EXPECT_EQ(j["crashes"], 0);
  for (const char* f : {"seed", "model", "layout", "workers", "world", "requests", "max_tokens",
                        "prompt_tokens", "synthetic_context_tokens", "faults_per_schedule",
                        "max_nth", "recovery", "peer_timeout_ms", "schedule_timeout_ms"}) {
    EXPECT_TRUE(j["workload"].contains(f)) << f << " in " << j["workload"].dump();
  }
  EXPECT_EQ(j["workload"]["faults_per_schedule"], 2);
  EXPECT_EQ(j["workload"]["threads"], true);
  EXPECT_EQ(j["workload"]["processes"], 0);
  EXPECT_EQ(j["workload"]["fault_counts"], "fired");
  EXPECT_EQ(j["workload"]["schedule_timeout_ms"], 5000);
  EXPECT_EQ(j["faults_by_action"]["CRASH"], 0);

  // Replay: one schedule, as given.
  const int world = j["workload"]["world"].get<int>();
  fault::fault_schedule s;
  s.seed = 42;
  s.world_size = world;
  s.faults.push_back(fail_at(world - 1, 7));
  std::string hex;
  for (const char c : fault::to_bytes(s)) {
    static const char* digits = "0123456789abcdef";
    hex += digits[(static_cast<unsigned char>(c) >> 4) & 0xf];
    hex += digits[static_cast<unsigned char>(c) & 0xf];
  }
  std::ostringstream out2, err2;
  ASSERT_EQ(run_chaos_cmd({"--seed", "3", "--schedule-hex", hex, "--json"}, out2, err2), 0)
      << err2.str() << out2.str();
  const auto k = nlohmann::json::parse(out2.str());
  EXPECT_EQ(k["schedules"], 1);
  EXPECT_EQ(k["faults_injected"], 1);
  EXPECT_EQ(k["recoveries"], 1);
  // A FAIL answers at once, long before its peers' deadline: the engine drops the faulty rank.
  EXPECT_EQ(k["recoveries_dropping_another_rank"], 0);
  EXPECT_EQ(k["workload"]["replay"], true);

  for (const std::vector<std::string>& bad : {std::vector<std::string>{"--schedules", "0"},
                                              {"--recovery", "sometimes"},
                                              {"--schedule-hex", "zz"},
                                              {"--bogus"},
                                              {"--faults-per-schedule", "-1"},
                                              {"--workers", "3", "--layout", "tp:tp=2"},
                                              {"--standby", "1"},
                                              {"--processes", "0"},
                                              {"--processes", "4", "--workers", "2"}}) {
    std::ostringstream o3, e3;
    EXPECT_EQ(run_chaos_cmd(bad, o3, e3), 2) << bad[0] << ": " << e3.str();
    EXPECT_NE(e3.str().find("error: "), std::string::npos) << e3.str();
  }
}

// The acceptance run with processes: 20 schedules on 4 `helix worker` processes, CRASH among
// the actions, faults on the first epoch only; some schedules must kill a worker process.
TEST(ChaosCommand, TwentySchedulesOnFourProcessesHaveNoViolationAndKillWorkers) {
  chaos_options o;
  ASSERT_TRUE(processes_options(o));
  o.seed = 1;
  o.schedules = 20;
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->schedules, 20);
  EXPECT_EQ(r->violations, 0) << details(*r);
  EXPECT_GT(r->crashes, 0);
  EXPECT_GT(r->fail_or_hang, 0);
  EXPECT_GT(r->recoveries, 0);
  EXPECT_EQ(r->faults_injected, r->crashes + r->fail_or_hang);
  EXPECT_LE(r->faults_injected, r->faults_scheduled);
  EXPECT_EQ(r->delays + r->fails + r->hangs, 0) << "not seen from outside the workers";
  EXPECT_FALSE(r->abandoned);
  EXPECT_EQ(r->layout.rfind("helix:", 0), 0u) << r->layout;
  std::printf(
      "chaos: 20 schedules on 4 processes in %.1f s (fault-free runs %.2f s, slowest schedule "
      "%.2f s), %lld crashes, %lld recoveries\n",
      r->wall_s, r->fault_free_s, r->slowest_schedule_s, static_cast<long long>(r->crashes),
      static_cast<long long>(r->recoveries));
}

// From outside the worker processes, a CRASH (its process died, dropped by the recovery) and a
// FAIL (the rank reported it, then its dropped process exited) are counted apart.
TEST(ChaosCommand, ProcessesTellACrashFromAFail) {
  chaos_options o;
  ASSERT_TRUE(processes_options(o));
  std::ostringstream progress;
  o.replay = one_fault(fault::fault_action::crash, 2, 50);
  auto crash = run_chaos(o, progress);
  ASSERT_TRUE(crash.has_value()) << crash.error().to_string();
  EXPECT_EQ(crash->violations, 0) << details(*crash);
  EXPECT_EQ(crash->recoveries, 1);
  EXPECT_EQ(crash->crashes, 1);
  EXPECT_EQ(crash->fail_or_hang, 0);
  EXPECT_EQ(crash->faults_injected, 1);
  EXPECT_EQ(crash->recoveries_dropping_another_rank, 0);

  o.replay = one_fault(fault::fault_action::fail, 2, 50);
  auto fail = run_chaos(o, progress);
  ASSERT_TRUE(fail.has_value()) << fail.error().to_string();
  EXPECT_EQ(fail->violations, 0) << details(*fail);
  EXPECT_EQ(fail->recoveries, 1);
  EXPECT_EQ(fail->crashes, 0);
  EXPECT_EQ(fail->fail_or_hang, 1);
  EXPECT_EQ(fail->recoveries_dropping_another_rank, 0);

  // A HANG before a CRASH on the same rank: the HANG ends the faulty epoch, so the rank's process
  // (dropped, then exited) is not a crash.
  fault::fault_schedule hang_first = one_fault(fault::fault_action::hang, 2, 40);
  hang_first.faults.push_back(fault_at(fault::fault_action::crash, 2, 90));
  o.replay = hang_first;
  auto hang = run_chaos(o, progress);
  ASSERT_TRUE(hang.has_value()) << hang.error().to_string();
  EXPECT_EQ(hang->violations, 0) << details(*hang);
  EXPECT_EQ(hang->recoveries, 1);
  EXPECT_EQ(hang->crashes, 0);
  EXPECT_EQ(hang->fail_or_hang, 1);
}

// A process still running after the engine's destructor is an orphan: reported, then killed.
// (The seam hands the harness a `sleep` child of this test as one more worker process.)
TEST(ChaosCommand, ProcessLeftAfterTheEngineIsAnOrphan) {
  chaos_options o;
  ASSERT_TRUE(processes_options(o));
  const pid_t sleeper = ::fork();
  ASSERT_GE(sleeper, 0);
  if (sleeper == 0) {
    ::execl("/bin/sleep", "sleep", "60", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  o.extra_worker_pids = [sleeper] { return std::vector<std::int64_t>{sleeper}; };
  o.replay = one_fault(fault::fault_action::delay, 1, 20);
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  const bool gone = ::kill(sleeper, 0) != 0 && errno == ESRCH;
  if (!gone) {
    ::kill(sleeper, SIGKILL);
    ::waitpid(sleeper, nullptr, 0);
  }
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->violations, 1) << details(*r);
  ASSERT_EQ(r->violation_details.size(), 1u);
  EXPECT_NE(
      r->violation_details[0].what.find("orphan: worker process pid " + std::to_string(sleeper)),
      std::string::npos)
      << details(*r);
  EXPECT_TRUE(gone) << "the orphan was killed and reaped";
}

// The CLI with --processes and --standby: the JSON says what was counted and how.
TEST(ChaosCommand, ProcessesJsonReportFromTheCli) {
  const std::string cli = helix_cli();
  ASSERT_EQ(::access(cli.c_str(), X_OK), 0) << "no helix binary at " << cli;
  int rc = -1;
  const std::string out = test_support::run_cli(
      cli, "chaos --seed 4 --schedules 3 --processes 4 --standby 1 --json", rc);
  ASSERT_EQ(rc, 0) << out;
  const auto j = test_support::last_json(out);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["schedules"], 3);
  EXPECT_EQ(j["violations"], 0) << j["violation_details"].dump();
  EXPECT_TRUE(j["faults_by_action"].contains("CRASH")) << j.dump();
  EXPECT_TRUE(j["faults_by_action"].contains("FAIL_OR_HANG")) << j.dump();
  EXPECT_EQ(j["faults_injected"], j["faults_by_action"]["CRASH"].get<int>() +
                                      j["faults_by_action"]["FAIL_OR_HANG"].get<int>());
  EXPECT_TRUE(j["slowest_destructor"].contains("s")) << j.dump();
  EXPECT_TRUE(j["slow_destructors"].is_number_integer()) << j.dump();
  const auto& w = j["workload"];
  EXPECT_EQ(w["processes"], 4);
  EXPECT_EQ(w["standbys"], 1);
  EXPECT_EQ(w["workers"], 4);
  EXPECT_EQ(w["threads"], false);
  EXPECT_EQ(w["fault_counts"], "observed");
  EXPECT_EQ(w["faults_first_epoch_only"], true);
  EXPECT_EQ(w["schedule_timeout_ms"], 10000);
  EXPECT_NE(w["actions"].dump().find("CRASH"), std::string::npos) << w.dump();
}

// 10,000 schedules (label slow).
TEST(ChaosCommand, SlowTenThousandSchedules) {
  chaos_options o;
  o.seed = 2;
  o.schedules = 10000;
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->schedules, 10000);
  EXPECT_EQ(r->violations, 0) << details(*r);
  EXPECT_GT(r->recoveries, 0);
}

// 1,000 schedules on 4 worker processes (label slow).
TEST(ChaosCommand, SlowThousandSchedulesOnFourProcesses) {
  chaos_options o;
  ASSERT_TRUE(processes_options(o));
  o.seed = 3;
  o.schedules = 1000;
  std::ostringstream progress;
  auto r = run_chaos(o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->schedules, 1000);
  EXPECT_EQ(r->violations, 0) << details(*r);
  EXPECT_GT(r->crashes, 0);
}

}  // namespace
}  // namespace helix::apps
