// `helix chaos`: the seeded fault harness. Runs a small seeded workload on the embedded engine
// (engine_config::recovery = "lost_blocks" by default, a short engine_config::peer_timeout_ms) once
// without faults, then under N fault schedules injected into the workers' data plane
// (transport/fault/), and checks after each schedule that the engine kept its promises. The workers
// are threads of this process, or with --processes P `helix worker` processes
// (cluster::spawned_workers). Called by apps/main.cpp and the tests. The harness is in
// chaos_run.cpp, the command line and the reports in chaos_cmd.cpp.
//
// The workload: --requests requests (default 5), all submitted at once; request i has a prompt of
// 6 + 9 * (i % 5) seeded tokens, prefilled in chunks of 16 (so some faults hit prefill and some
// decode), decodes --max-tokens + 4 * (i % 3) tokens (requests leave at different steps), is
// greedy for even i and samples (T 0.8, top-k 30, top-p 0.9, seed --seed + i) for odd i; request
// 2 (or the last one, when there are fewer) starts over a synthetic context of 128 positions
// (request_options::synthetic_context_tokens). Token ids come from core/rng.hpp keyed by --seed.
// The engine rebalances KV from the first block on (rebalance_min_blocks = 1) and has KV for
// every request at once on one worker, so running out of KV after recoveries never ends one.
//
// The schedules. Schedule i is transport::fault::generate_schedule(seed_i, world, K, options),
// seed_i a Philox hash of (--seed, i) (chaos_schedule_seed), world the layout's ranks, K
// --faults-per-schedule. The options draw DELAY (1-50 ms), FAIL (unavailable) and HANG (until the
// peer timeout), and with processes CRASH too (the worker process SIGKILLs itself; with threads
// it would kill this process), on the nth call of `any` kind of a rank, nth uniform in
// [1, max_nth]: max_nth is the fewest calls any rank made in the fault-free run (so a fault lands
// anywhere from the first prefill to the last decode step, on whichever collective is running
// there), unless --max-nth is given.
//
// After a recovery the engine rebuilds its data plane on fewer ranks (or on standbys). What the
// schedule does then differs:
// - threads (our choice): every fault that has not fired yet carries over to the new data plane,
//   its rank taken modulo the new world size and its nth counted anew from that data plane's
//   first call; a fault that fired never fires again. So a schedule's K faults are spread over
//   the epochs they reach, and one with two FAILs exercises a recovery after a recovery.
// - processes (cluster::spawned_workers_options::faults): every worker process wraps only its
//   FIRST data plane with the schedule and injects its own rank's faults there; the ranks a
//   recovery rebuilds run without faults. So faults apply to the first epoch only: after the
//   first recovery, the faults that had not fired are dropped, and a schedule exercises one
//   recovery (more only when faults fire in the same step on several ranks).
//
// What each schedule checks (a violation each, with the schedule to replay it):
// - every accepted request ends exactly once (one last event, nothing after it);
// - token indices run 0, 1, 2, ... with none repeated or skipped;
// - every request ends with `length` or `stop_token` and exactly the fault-free run's tokens;
//   the one allowed exception is an engine that could not survive: more workers failed than the
//   layout family can lose, so the engine reports health failed with "recovery: no <family>
//   layout for N remaining workers"; its requests may then end with `error` (that cause), after
//   a prefix of their fault-free tokens. Any other `error`, `cancelled`, or a failed engine for
//   another reason (e.g. --recovery off) is a violation;
// - the engine's counters agree (completed = requests that ended with length or stop_token);
// - while the engine serves, KV accounting returns to zero after the last request
//   (stats().workers[*].kv_used_blocks, polled for up to 2 s: closes land just after the last
//   token);
// - no hang: every request ends within --schedule-timeout-ms (default 5000 with threads, 10000
//   with processes), and the engine's destructor returns within the same limit. Each schedule's
//   engine lives on a thread of its own (created, used and destroyed there); a thread stuck in
//   the engine past these limits (and 15 s of slack for the engine's own waits) is reported and
//   abandoned: the run stops there, and the CLI ends the process with _Exit so that it
//   terminates at all;
// - with processes, no orphan: every worker process of the engine (the pids engine::workers()
//   gives after create and before the destructor, the pids its recoveries name, and the standbys:
//   this process's `helix worker` children right after create) is gone once the engine's
//   destructor returned (a zombie counts as gone; a pid is the same process while
//   /proc/<pid>/stat's start time is); an orphan is reported, then killed. And a worker process
//   that died before the destructor is explained: a CRASH of the schedule was aimed at its rank,
//   or a recovery dropped it (a dropped worker process exits).
//
// The fault-free reference runs with threads; with processes a second fault-free run (workers as
// processes, no schedule) must give the same tokens, or run_chaos fails (there is no reference).
//
// While it runs, the engine's own log lines about the faults (each injected fault fails a step
// on every rank, logged as an error; each recovery is a warning) are silenced when the log level
// is the default warn (in this process; worker processes log at their own level).
//
// Thread-safety: each call builds its own engines; calls are independent (but see the log level
// above: it is the process's; and with processes, the children of this process that run
// `helix worker` are taken for the engine's standbys).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.hpp"
#include "transport/fault/schedule.hpp"

namespace helix::apps {

struct chaos_options {
  std::uint64_t seed = 1;        // the workload's tokens and every schedule's seed
  std::int64_t schedules = 100;  // fault schedules to run (each on a fresh engine)
  int faults_per_schedule = 2;   // K
  std::string model = "tiny-llama";
  std::string layout = "auto";
  std::int64_t workers = 4;
  std::int64_t requests = 5;
  std::int64_t max_tokens = 12;
  std::string recovery = "lost_blocks";  // engine_config::recovery ("off": every fault fails)
  /// Threads only: per control message to a worker, the probability of a control-plane fault
  /// (delay, drop, duplicate or reorder, equally likely; actors/control_faults.hpp), at most one
  /// per worker and schedule, drawn from the schedule's seed. 0: none.
  double control_faults = 0.0;
  std::int64_t peer_timeout_ms = 200;  // engine_config::peer_timeout_ms, and HANG's deadline
  /// A schedule's wall-clock limit (hang detection); 0: 5000 ms with threads, 10000 ms with
  /// processes (chaos_schedule_timeout_ms).
  std::int64_t schedule_timeout_ms = 0;
  /// > 0: the workers are this many `helix worker` processes (the engine's num_workers, in place
  /// of `workers`; the CLI refuses a --workers that differs), CRASH is among the actions, and
  /// faults apply to the first epoch only (above). 0: threads.
  std::int64_t processes = 0;
  std::int64_t standbys = 0;  // with processes: standby worker processes beyond the ranks
  /// With processes: the `helix` binary the workers run (the CLI: this program).
  std::string worker_binary;
  std::uint64_t max_nth = 0;  // > 0: nth drawn from [1, max_nth]; 0: from the fault-free run
  /// Set: run only this schedule (replay) instead of `schedules` generated ones.
  std::optional<transport::fault::fault_schedule> replay;
  std::int64_t progress_every = 0;  // a progress line every this many schedules; 0: automatic
  /// Test seam: edits the fault-free run's tokens (per request) before they are compared, so a
  /// test can see a mismatch reported.
  std::function<void(std::vector<std::vector<std::int32_t>>&)> tamper_expected;
  /// Test seam (processes): pids taken for more worker processes of every schedule's engine (not
  /// the fault-free runs'), so a test can see a process that outlives the engine reported (and
  /// killed) as an orphan.
  std::function<std::vector<std::int64_t>()> extra_worker_pids;
};

/// One violated check of one schedule.
struct chaos_violation {
  std::int64_t schedule = 0;  // index in this run (0 for a replay; -1: the fault-free run)
  std::uint64_t seed = 0;     // the schedule's seed (generate_schedule's)
  std::string description;    // transport::fault::describe(schedule)
  std::string schedule_hex;   // transport::fault::to_bytes(schedule), hex: --schedule-hex
  std::string what;
};

struct chaos_report {
  std::string layout;      // the full layout string the engine ran
  std::int64_t world = 0;  // its ranks: the schedules' world size
  std::uint64_t max_nth = 0;
  std::vector<std::int64_t> prompt_tokens;  // per request
  std::vector<std::int64_t> decode_tokens;  // per request: its max_tokens
  std::int64_t synthetic_context_tokens = 0;
  std::int64_t synthetic_request = 0;  // the request that starts over the synthetic context
  std::int64_t schedules = 0;          // schedules run
  std::int64_t faults_scheduled = 0;   // faults in the schedules run
  /// Threads: faults that fired, i.e. a call of a faulty rank was delayed, failed or hung
  /// (counted by the fault fabrics' records over every data plane of the schedule; a fault that
  /// never came to its nth call, e.g. because the requests ended first, is scheduled but not
  /// injected). Processes: the fabrics' records stay in the worker processes, so this counts the
  /// faults seen to take effect from outside: crashes, plus fail_or_hang; a lower bound (DELAYs
  /// and faults that fired without failing a step are not seen).
  std::int64_t faults_injected = 0;
  /// Control-plane faults the proxies injected (--control-faults), by kind.
  std::int64_t control_delayed = 0;
  std::int64_t control_dropped = 0;
  std::int64_t control_duplicated = 0;
  std::int64_t control_reordered = 0;
  std::int64_t delays = 0;  // of faults_injected, by action (threads only)
  std::int64_t fails = 0;
  std::int64_t hangs = 0;
  /// Processes: worker processes killed by a scheduled CRASH: a first-epoch rank's process, dead
  /// before the engine's destructor, with a CRASH of the schedule aimed at its rank and no FAIL
  /// or HANG aimed there at an earlier call (on one rank, faults fire in nth order, and the first
  /// ends the faulty epoch), unless a recovery dropped it on that rank's own report
  /// (recovery_stats::why "worker R: ...": a FAIL it returned or a timeout it saw, so it was
  /// alive then; a dropped process exits). Read from outside: the fault fabrics' records stay in
  /// the workers. 0 with threads.
  std::int64_t crashes = 0;
  /// Processes: recoveries whose dead worker (recovery_stats::pid) is not a crashed process, in
  /// schedules with a FAIL or HANG: a FAIL or HANG fired and failed the step there.
  std::int64_t fail_or_hang = 0;
  std::int64_t recoveries = 0;  // engine recoveries over every schedule
  /// Of those, recoveries that rebuilt only the lost KV blocks (recovery_stats::mode); the others
  /// replayed in full (asked for, or the fallback).
  std::int64_t recoveries_lost_blocks = 0;
  /// Of those, recoveries that dropped a rank that no FAIL or HANG had hit on that data plane
  /// (a HANG's peers time out waiting for it, and the engine drops whichever rank reported
  /// first). Processes: the first recovery of a schedule, when its rank is none of the ranks
  /// the schedule's FAILs, HANGs and CRASHes were aimed at. Not a violation here (a known engine
  /// limitation): with threads the hung rank works again after its HANG; with processes a rank
  /// that stays hung is kept and a healthy one dropped, which is allowed while the tokens are
  /// right.
  std::int64_t recoveries_dropping_another_rank = 0;
  std::int64_t migrations = 0;             // KV blocks moved by rebalancing, over every schedule
  std::int64_t fault_free_migrations = 0;  // in the fault-free run
  /// Schedules where the engine legitimately could not survive (no layout for the workers left)
  /// and ended its requests with that error.
  std::int64_t engines_exhausted = 0;
  std::int64_t violations = 0;  // violated checks over every schedule
  std::int64_t schedules_with_violations = 0;
  std::vector<chaos_violation> violation_details;  // the first 1000
  bool abandoned = false;  // a thread stuck in an engine was left running; the run stopped
  double wall_s = 0.0;
  double fault_free_s = 0.0;  // the fault-free runs' wall time (engine builds included)
  /// The slowest schedule (engine build to destructor) and the slowest engine destructor, with
  /// their schedule indices: where a limit is near, and where worker processes were slow to end
  /// (the source waits up to 5 s for each before it kills it).
  double slowest_schedule_s = 0.0;
  std::int64_t slowest_schedule = -1;
  double slowest_destructor_s = 0.0;
  std::int64_t slowest_destructor_schedule = -1;
  /// Schedules whose engine destructor took over 2 s (with processes: worker processes that did
  /// not end with the engine, which the worker source killed after 5 s). Not a violation.
  std::int64_t slow_destructors = 0;
};

/// invalid_argument, naming the flag, for options out of their bounds (run_chaos checks them
/// too; the engine config's own checks come at engine::create).
[[nodiscard]] status validate(const chaos_options& o);

/// The per-schedule limit in force: o.schedule_timeout_ms, or its default when that is 0.
[[nodiscard]] std::int64_t chaos_schedule_timeout_ms(const chaos_options& o);

/// The seed of schedule `index` of a run seeded `seed`: a Philox hash of both (core/rng.hpp,
/// rng_purpose::faults), so runs with nearby seeds share no schedules.
[[nodiscard]] std::uint64_t chaos_schedule_seed(std::uint64_t seed, std::int64_t index);

/// Runs the fault-free workload, then the schedules. Progress lines go to `progress`.
/// invalid_argument for bad options or an engine config engine::create refuses;
/// internal when the fault-free run itself breaks a check (there is no reference then).
/// Violations are not an error here: they are in the report.
[[nodiscard]] expected<chaos_report> run_chaos(const chaos_options& o, std::ostream& progress);

/// The JSON report: schedules, faults_scheduled, faults_injected (threads: faults that fired;
/// processes: faults seen to take effect, crashes + FAIL_OR_HANG, a lower bound; see
/// chaos_report), faults_by_action (threads: {DELAY, FAIL, HANG, CRASH: 0}; processes: {CRASH,
/// FAIL_OR_HANG}), crashes (worker processes killed by a scheduled CRASH), recoveries,
/// recoveries_lost_blocks, recoveries_dropping_another_rank, migrations (KV blocks moved by
/// rebalancing), fault_free_migrations, engines_exhausted, violations, schedules_with_violations,
/// violation_details ([{schedule, seed, description, schedule_hex, what}]), abandoned, wall_s,
/// fault_free_s, slowest_schedule {index, s}, slowest_destructor {index, s}, slow_destructors,
/// and the workload under
/// "workload" (seed, model, layout, workers, world, threads (true when the workers are threads),
/// processes, standbys, fault_counts ("fired" or "observed"), faults_first_epoch_only, requests,
/// prompt_tokens, max_tokens, decode_tokens, synthetic_context_tokens, faults_per_schedule,
/// max_nth, actions, recovery, peer_timeout_ms, schedule_timeout_ms (the limit in force), replay).
[[nodiscard]] nlohmann::json chaos_report_json(const chaos_options& o, const chaos_report& r);

/// The human-readable summary, then every violation with its seed, schedule and a replay command.
void print_chaos_report(std::ostream& out, const chaos_options& o, const chaos_report& r);

/// `helix chaos` with its arguments (after "chaos"). Exit code: 0 no violation, 1 violations or a
/// runtime error, 2 bad usage (an `error: ...` line on `err`). Report on `out`, progress on `err`.
int run_chaos_cmd(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
