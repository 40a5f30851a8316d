// The seeded fault harness behind `helix chaos` (apps/chaos_cmd.hpp): the workload, the
// fault fabrics per data plane (threads) or the worker processes and what /proc says of them
// (processes), one pass per schedule on a thread of its own, and the checks.
#include <signal.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>

#include "actors/control_faults.hpp"
#include "actors/engine.hpp"
#include "actors/worker_source.hpp"
#include "apps/chaos_cmd.hpp"
#include "apps/chaos_processes.hpp"
#include "cluster/cluster.hpp"
#include "core/layout.hpp"
#include "core/log.hpp"
#include "core/rng.hpp"
#include "transport/fault/fault_fabric.hpp"

namespace helix::apps {
namespace {

namespace fault = transport::fault;
using clock_type = std::chrono::steady_clock;

constexpr std::int64_t synthetic_tokens = 128;
constexpr std::size_t max_details_kept = 1000;
constexpr std::size_t max_problems_per_request = 4;
constexpr auto kv_poll_interval = std::chrono::milliseconds(10);
constexpr int kv_poll_tries = 200;  // 2 s: the closes of the last requests land just after them

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

std::string to_hex(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) out += fmt::format("{:02x}", static_cast<unsigned char>(c));
  return out;
}

// ---- the workload ----------------------------------------------------------------------------

std::int64_t prompt_length(std::int64_t i) {
  return 6 + 9 * (i % 5);
}

// Requests leave at different steps, so that the ones that remain run (and rebalance) alone.
std::int64_t decode_length(std::int64_t i, std::int64_t max_tokens) {
  return max_tokens + 4 * (i % 3);
}

std::int64_t synthetic_request(std::int64_t requests) {
  return std::min<std::int64_t>(2, requests - 1);
}

std::vector<actors::request_options> make_workload(const chaos_options& o, std::int64_t vocab) {
  std::vector<actors::request_options> out;
  for (std::int64_t i = 0; i < o.requests; ++i) {
    actors::request_options r;
    const std::int64_t n = prompt_length(i);
    for (std::int64_t t = 0; t < n; t += 4) {
      const auto w = random_words(o.seed, static_cast<std::uint64_t>(i),
                                  static_cast<std::uint64_t>(t / 4), rng_purpose::workload, 0);
      for (std::int64_t k = 0; k < 4 && t + k < n; ++k) {
        r.prompt.push_back(static_cast<std::int32_t>(w[static_cast<std::size_t>(k)] %
                                                     static_cast<std::uint32_t>(vocab)));
      }
    }
    r.max_tokens = decode_length(i, o.max_tokens);
    if (i % 2 == 1) r.sampling = {0.8f, 30, 0.9f, o.seed + static_cast<std::uint64_t>(i)};
    if (i == synthetic_request(o.requests)) {
      r.synthetic_context_tokens = synthetic_tokens;
      r.synthetic_seed = o.seed;
    }
    out.push_back(std::move(r));
  }
  return out;
}

actors::engine_config engine_config_for(const chaos_options& o) {
  actors::engine_config c;
  c.model = o.model;
  c.num_workers = o.processes > 0 ? o.processes : o.workers;
  c.layout = o.layout;
  c.max_batch_tokens = 128;
  c.prefill_chunk_tokens = 16;  // prompts span several steps: faults hit prefill too
  c.block_tokens = 16;
  // Every request at once on a single worker: after recoveries down to one rank, replays must
  // still fit, so that running out of KV is never what ends a request here.
  const std::int64_t longest = synthetic_tokens + prompt_length(4) + decode_length(2, o.max_tokens);
  c.kv_capacity_tokens_per_worker = std::max<std::int64_t>(
      1024, actors::kv_capacity_for(o.requests, longest, 1, c.block_tokens, c.rebalance_threshold));
  // Rebalance however little KV is resident, so that a larger workload (--requests) migrates
  // blocks (send/recv on the data plane) and faults can hit a migration; the default workload
  // stays within the threshold and rarely moves any.
  c.rebalance_min_blocks = 1;
  c.recovery = o.recovery;
  c.peer_timeout_ms = o.peer_timeout_ms;
  return c;
}

// ---- worker processes ----------------------------------------------------------------------

// Whether a CRASH of `s` can be what killed rank `rank`'s first-epoch process: one is aimed at
// it, and no FAIL or HANG aimed at it comes first. Faults of `any` kind on one rank fire in nth
// order (the first to fire ends the first epoch, and with it the others); where a kind, step or
// layer makes nths count different calls, any CRASH aimed at the rank counts.
bool crash_can_kill(const fault::fault_schedule& s, std::int64_t rank) {
  const fault::fault_spec* first = nullptr;
  bool ordered = true;
  bool crash = false;
  for (const fault::fault_spec& f : s.faults) {
    if (f.action == fault::fault_action::delay || (f.rank && *f.rank != rank)) continue;
    crash = crash || f.action == fault::fault_action::crash;
    ordered = ordered && f.kind == fault::call_kind::any && !f.step && !f.layer;
    if (first == nullptr || f.nth < first->nth) first = &f;
  }
  return crash && (!ordered || first->action == fault::fault_action::crash);
}

// ---- one engine run --------------------------------------------------------------------------

// What the callbacks saw of one request. Written on the engine's thread under run_state::mu.
struct request_record {
  bool submitted = false;
  std::vector<std::int32_t> tokens;
  std::vector<std::string> problems;  // index gaps and repeats, as they came
  int ends = 0;
  int events_after_end = 0;
  actors::finish_reason reason = actors::finish_reason::none;
  status error;
};

// Shared with the callbacks (they may outlive run_pass when an engine's destructor hangs).
struct run_state {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<request_record> records;
  std::int64_t ended = 0;
};

// The fault fabrics of one engine, one per data plane it built (epoch), and which of the
// schedule's faults each carries. Shared with the worker source's wrap_fabric.
struct fault_state {
  struct epoch {
    fault::fault_fabric* fabric = nullptr;  // owned by the engine's worker source
    std::vector<std::size_t> schedule_idx;  // this fabric's fault j is the schedule's fault
  };
  std::mutex mu;
  fault::fault_schedule schedule;  // the whole schedule (world: the first data plane's)
  fault::fault_options options;
  std::vector<epoch> epochs;
  std::vector<std::string> errors;  // a wrap that could not be made (reported as a violation)
};

// Wraps a new data plane: the faults that have not fired on earlier ones, ranks modulo its world.
std::unique_ptr<transport::fabric> wrap_with_faults(const std::shared_ptr<fault_state>& fs,
                                                    std::unique_ptr<transport::fabric> inner) {
  std::lock_guard lk(fs->mu);
  std::vector<bool> fired(fs->schedule.faults.size(), false);
  for (const fault_state::epoch& e : fs->epochs) {
    for (const fault::injected_fault& f : e.fabric->injected())
      fired[e.schedule_idx[f.fault_idx]] = true;
  }
  const int world = inner->world_size();
  fault::fault_schedule s;
  s.seed = fs->schedule.seed;
  s.world_size = world;
  fault_state::epoch e;
  for (std::size_t i = 0; i < fs->schedule.faults.size(); ++i) {
    if (fired[i]) continue;
    fault::fault_spec f = fs->schedule.faults[i];
    if (f.rank) f.rank = *f.rank % world;
    s.faults.push_back(f);
    e.schedule_idx.push_back(i);
  }
  if (const status v = fault::validate(s, world); !v.ok()) {
    fs->errors.push_back(
        fmt::format("fault schedule for a data plane of {} ranks: {}", world, v.to_string()));
    return inner;
  }
  auto wrapped = fault::make_fault_fabric(std::move(inner), std::move(s), fs->options);
  HELIX_CHECK(wrapped.has_value(), "{}", wrapped.error().to_string());  // validated above
  e.fabric = wrapped->get();
  fs->epochs.push_back(std::move(e));
  return std::move(*wrapped);
}

struct pass_result {
  std::vector<request_record> records;
  actors::engine_stats stats;
  std::vector<std::string> violations;
  bool exhausted = false;  // the engine could not survive (no layout left): allowed
  bool abandoned = false;  // the pass's thread is stuck in the engine and was left running
  bool all_ended = false;  // every accepted request ended within the schedule's limit
  std::int64_t recoveries = 0;
  std::int64_t recoveries_lost_blocks = 0;
  std::int64_t misattributed = 0;  // recoveries that dropped a rank no fault had hit
  std::int64_t migrations = 0;
  std::vector<fault::injected_fault> injected;  // threads
  std::int64_t crashes = 0;                     // processes: see chaos_report
  std::int64_t fail_or_hang = 0;
  std::vector<worker_process> processes;  // processes: every worker process of the engine
  // Control-plane fault proxies' records (--control-faults), read once the engine is gone.
  struct control_records {
    std::mutex mu;
    std::vector<std::unique_ptr<actors::control_fault_counts>> counts;
  };
  std::shared_ptr<control_records> control = std::make_shared<control_records>();
  double destructor_s = 0.0;    // how long the engine's destructor took
  std::uint64_t min_calls = 0;  // fewest calls of any rank on the first data plane
  std::string layout;           // the layout the engine started with
};

// An engine failure that full replay cannot avoid: more workers failed than the family can lose.
bool engine_exhausted(const actors::engine_stats& s) {
  return s.health == actors::engine_health::failed &&
         s.failure.message().find("recovery: no ") != std::string::npos &&
         s.failure.message().find(" remaining workers") != std::string::npos;
}

std::int64_t kv_used(const actors::engine_stats& s) {
  std::int64_t used = 0;
  for (const actors::worker_stats& w : s.workers) used += w.kv_used_blocks;
  return used;
}

std::string kv_per_worker(const actors::engine_stats& s) {
  std::string out;
  for (const actors::worker_stats& w : s.workers) {
    out += fmt::format("{}{}", out.empty() ? "" : ", ", w.kv_used_blocks);
  }
  return "[" + out + "]";
}

// Processes, while the engine still serves: the worker processes it named since (after recoveries,
// the ranks' pids and the dead ones'), which died and why, and what its recoveries say of the
// faults (the fault fabrics' records stay in the workers). A process dies here because a CRASH
// killed it or because a recovery dropped its rank (a dropped worker process exits). A dead
// process counts as crashed when a CRASH can have killed it (crash_can_kill) and no recovery
// dropped it on its own report ("worker R: ...": a FAIL it returned, or a timeout it saw, so it
// was alive then).
void check_processes_before_destructor(pass_result& out, const fault::fault_schedule& schedule,
                                       const actors::engine& eng) {
  for (const actors::worker_info& w : eng.workers()) note_process(out.processes, w.pid, -1);
  for (const actors::recovery_stats& r : out.stats.recoveries) {
    note_process(out.processes, r.pid, -1);
  }
  const auto self_reported = [](const actors::recovery_stats& r) {
    return r.why.find(fmt::format("worker {}: ", r.rank)) != std::string::npos;
  };
  std::set<std::int64_t> crashed;
  for (const worker_process& p : out.processes) {
    if (still_running(p)) continue;
    const auto rec = std::find_if(
        out.stats.recoveries.begin(), out.stats.recoveries.end(),
        [&](const actors::recovery_stats& r) { return r.pid == static_cast<std::int64_t>(p.pid); });
    const bool dropped = rec != out.stats.recoveries.end();
    if (p.rank >= 0 && crash_can_kill(schedule, p.rank) && (!dropped || !self_reported(*rec))) {
      crashed.insert(p.pid);
    } else if (!dropped) {
      out.violations.push_back(fmt::format(
          "worker process pid {} ({}) died while the engine served, though no CRASH was aimed at "
          "it and no recovery dropped it",
          p.pid, p.rank >= 0 ? fmt::format("rank {}", p.rank) : std::string("a standby")));
    }
  }
  out.crashes = static_cast<std::int64_t>(crashed.size());
  std::set<std::int64_t> aimed;  // ranks a FAIL, HANG or CRASH was aimed at (unset: all)
  bool fail_or_hang_scheduled = false;
  for (const fault::fault_spec& f : schedule.faults) {
    if (f.action == fault::fault_action::delay) continue;
    fail_or_hang_scheduled = fail_or_hang_scheduled || f.action != fault::fault_action::crash;
    if (!f.rank) {
      for (std::int64_t r = 0; r < schedule.world_size; ++r) aimed.insert(r);
    } else {
      aimed.insert(*f.rank);
    }
  }
  for (const actors::recovery_stats& r : out.stats.recoveries) {
    if (fail_or_hang_scheduled && crashed.count(r.pid) == 0) ++out.fail_or_hang;
  }
  // Only the first data plane has faults: its recovery is the one a fault's rank explains.
  if (!out.stats.recoveries.empty() && !aimed.empty() &&
      aimed.count(out.stats.recoveries.front().rank) == 0) {
    ++out.misattributed;
  }
}

// After the engine's destructor: every worker process of the engine is gone (a zombie counts as
// gone). One still running is an orphan: reported, then killed and reaped, so that it does not
// outlive the harness too.
void check_no_orphans(pass_result& out) {
  for (const worker_process& p : out.processes) {
    if (!still_running(p)) continue;
    out.violations.push_back(
        fmt::format("orphan: worker process pid {} ({}) outlived the engine's destructor (state "
                    "{})",
                    p.pid, p.rank >= 0 ? fmt::format("rank {}", p.rank) : std::string("a standby"),
                    proc_state(p.pid)));
    ::kill(p.pid, SIGKILL);
    int wstatus = 0;
    while (::waitpid(p.pid, &wstatus, 0) < 0 && errno == EINTR) {
    }
  }
}

// Runs the workload once on a fresh engine whose data planes carry `schedule` (empty: none),
// and checks what needs no reference (ends once, indices, KV, hang). Leaves the engine in
// `eng` for the caller to destroy (phase 2 of a pass); the records are read after that.
expected<pass_result> run_requests(const chaos_options& o, const actors::engine_config& config,
                                   const fault::fault_schedule& schedule,
                                   std::unique_ptr<actors::engine>& eng,
                                   std::shared_ptr<run_state>& st) {
  pass_result out;
  const bool processes = o.processes > 0;
  auto fs = std::make_shared<fault_state>();
  std::unique_ptr<actors::worker_source> source;
  if (processes) {
    // Each worker wraps its first data plane with the schedule and fires its own rank's faults.
    cluster::spawned_workers_options so;
    so.worker_binary = o.worker_binary;
    so.standbys = static_cast<int>(o.standbys);
    so.faults = schedule;
    source = cluster::spawned_workers(so);
  } else {
    fs->schedule = schedule;
    // A HANG ends when a collective would have given up on it: the engine's peer timeout.
    fs->options.default_timeout = std::chrono::milliseconds(o.peer_timeout_ms);
    actors::in_process_options io;
    io.wrap_fabric = [fs](std::unique_ptr<transport::fabric> f) {
      return wrap_with_faults(fs, std::move(f));
    };
    if (o.control_faults > 0.0 && !schedule.faults.empty()) {
      // Control-plane faults from the schedule's seed: each worker's proxy injects at most one.
      const double each = o.control_faults / 4.0;
      io.wrap_worker = [st = out.control, each, seed = schedule.seed](
                           caf::actor_system& sys, std::int64_t rank, caf::actor w) {
        actors::control_fault_options cf;
        cf.seed = seed ^ (0x636f6e74726f6cULL + static_cast<std::uint64_t>(rank));
        cf.delay = cf.drop = cf.duplicate = cf.reorder = each;
        cf.max_faults = 1;
        std::lock_guard lk(st->mu);
        st->counts.push_back(std::make_unique<actors::control_fault_counts>());
        return actors::spawn_control_fault_proxy(sys, std::move(w), rank, cf,
                                                 st->counts.back().get());
      };
    }
    source = actors::in_process_workers(std::move(io));
  }
  const std::int64_t limit_ms = chaos_schedule_timeout_ms(o);
  const auto limit = std::chrono::milliseconds(limit_ms);
  const clock_type::time_point t0 = clock_type::now();
  auto made = actors::engine::create(config, std::move(source));
  if (!made) {
    // The fault-free engine's config was accepted: a faulty one refused is the faults' doing.
    if (schedule.faults.empty()) return made.error();
    out.violations.push_back(fmt::format("engine::create failed: {}", made.error().to_string()));
    return out;
  }
  eng = std::move(*made);
  if (processes) {
    // Every worker process is started by create: the ranks, then the standbys.
    out.processes = worker_children();
    for (const actors::worker_info& w : eng->workers()) note_process(out.processes, w.pid, w.rank);
    if (o.extra_worker_pids && !schedule.faults.empty()) {
      for (const std::int64_t pid : o.extra_worker_pids()) note_process(out.processes, pid, -1);
    }
  }
  const std::vector<actors::request_options> work = make_workload(o, eng->vocab());

  st = std::make_shared<run_state>();
  st->records.resize(work.size());
  std::vector<std::uint64_t> ids(work.size(), 0);
  for (std::size_t i = 0; i < work.size(); ++i) {
    auto h = eng->submit(work[i], [st, i](const actors::token_event& e) {
      std::lock_guard lk(st->mu);
      request_record& r = st->records[i];
      if (r.ends > 0) {
        ++r.events_after_end;
        return;
      }
      if (e.token >= 0) {
        const auto have = static_cast<std::int64_t>(r.tokens.size());
        if (e.index != have && r.problems.size() < max_problems_per_request) {
          r.problems.push_back(fmt::format("token index {} arrived after {} tokens ({})", e.index,
                                           have, e.index < have ? "repeated" : "skipped"));
        }
        r.tokens.push_back(e.token);
      }
      if (e.last) {
        ++r.ends;
        r.reason = e.reason;
        r.error = e.error;
        ++st->ended;
        st->cv.notify_all();
      }
    });
    if (!h) {
      if (schedule.faults.empty()) return h.error();
      out.violations.push_back(fmt::format("request {} refused by submit: {}", i, h.error()));
      continue;
    }
    ids[i] = h->id;
    std::lock_guard lk(st->mu);
    st->records[i].submitted = true;
  }
  const auto submitted = static_cast<std::int64_t>(
      std::count_if(ids.begin(), ids.end(), [](std::uint64_t id) { return id != 0; }));
  bool all_ended = false;
  {
    std::unique_lock lk(st->mu);
    all_ended = st->cv.wait_until(lk, t0 + limit, [&] { return st->ended >= submitted; });
  }
  out.all_ended = all_ended;
  if (!all_ended) {
    std::string open;
    {
      std::lock_guard lk(st->mu);
      for (std::size_t i = 0; i < st->records.size(); ++i) {
        const request_record& r = st->records[i];
        if (r.submitted && r.ends == 0) {
          open +=
              fmt::format("{}request {} ({} tokens)", open.empty() ? "" : ", ", i, r.tokens.size());
        }
      }
    }
    const actors::engine_stats s = eng->stats();
    out.violations.push_back(
        fmt::format("hang: not ended within {} ms: {}; engine {} after {} recoveries{}", limit_ms,
                    open, s.health == actors::engine_health::serving ? "serving" : "failed",
                    s.recoveries.size(), s.failure.ok() ? "" : ": " + s.failure.to_string()));
    for (std::uint64_t id : ids) {
      if (id != 0) (void)eng->cancel(id);
    }
  }
  out.stats = eng->stats();
  out.layout =
      out.stats.recoveries.empty() ? out.stats.layout : out.stats.recoveries.front().layout_before;
  if (all_ended && out.stats.health == actors::engine_health::serving) {
    for (int tries = 0; tries < kv_poll_tries && kv_used(out.stats) != 0 &&
                        out.stats.health == actors::engine_health::serving;
         ++tries) {
      std::this_thread::sleep_for(kv_poll_interval);
      out.stats = eng->stats();
    }
    // An engine that failed meanwhile (a lost close or open made it lose its last worker) holds
    // no accounting to check: its workers end with it (the exhausted case, allowed).
    if (kv_used(out.stats) != 0 && out.stats.health == actors::engine_health::serving) {
      out.violations.push_back(
          fmt::format("KV accounting: {} blocks still used after the last request (per worker {})",
                      kv_used(out.stats), kv_per_worker(out.stats)));
    }
  }
  out.recoveries = static_cast<std::int64_t>(out.stats.recoveries.size());
  out.recoveries_lost_blocks =
      std::count_if(out.stats.recoveries.begin(), out.stats.recoveries.end(),
                    [](const actors::recovery_stats& x) { return x.mode == "lost_blocks"; });
  out.migrations = out.stats.migrations;
  out.exhausted = engine_exhausted(out.stats);
  if (processes) {
    check_processes_before_destructor(out, schedule, *eng);
    return out;
  }
  {
    std::lock_guard lk(fs->mu);
    for (const std::string& e : fs->errors) out.violations.push_back(e);
    for (const fault_state::epoch& e : fs->epochs) {
      for (fault::injected_fault f : e.fabric->injected()) {
        f.fault_idx = e.schedule_idx[f.fault_idx];
        out.injected.push_back(f);
      }
    }
    // Recovery k ended data plane k: did it drop a rank that a FAIL or HANG hit there? (A HANG's
    // peers time out waiting for it at about the same moment, and whichever reports first is
    // the one the engine drops.)
    for (std::size_t k = 0; k < out.stats.recoveries.size() && k < fs->epochs.size(); ++k) {
      bool culprit = false;
      bool any = false;
      for (const fault::injected_fault& f : fs->epochs[k].fabric->injected()) {
        if (f.action == fault::fault_action::delay) continue;
        any = true;
        culprit = culprit || f.rank == out.stats.recoveries[k].rank;
      }
      if (any && !culprit) ++out.misattributed;
    }
    if (!fs->epochs.empty()) {
      const fault::fault_fabric& first = *fs->epochs.front().fabric;
      out.min_calls = std::numeric_limits<std::uint64_t>::max();
      for (int r = 0; r < first.world_size(); ++r) {
        out.min_calls = std::min(out.min_calls, first.calls(r, fault::call_kind::any));
      }
    }
  }
  return out;
}

// The records of a pass, once its engine is gone (events that came during the destructor
// included).
void take_records(pass_result& out, run_state& st, bool all_ended) {
  std::lock_guard lk(st.mu);
  out.records = st.records;
  if (!all_ended) {
    // Reported as the hang; what the destructor did to them (cancelled) is no news.
    for (request_record& r : out.records) {
      if (r.ends == 0 || r.reason == actors::finish_reason::cancelled) r.submitted = false;
    }
  }
}

// What the thread of one pass shares with the harness, which may abandon it.
struct driver_state {
  std::mutex mu;
  std::condition_variable cv;
  bool requests_done = false;  // phase 1 over: `result` is set
  bool destroyed = false;      // phase 2 over: the engine's destructor returned
  expected<pass_result> result = internal_error("not run");
};

// One pass on a thread of its own, which creates, uses and destroys the engine. (An engine
// must be destroyed on the thread that created it and with no other thread still alive that
// called its stats(): CAF 0.17 keeps a thread-local reference to the actor system's logger on
// each such thread, and ~actor_system waits for the logger to go.) The harness waits for the
// requests (phase 1) and for the destructor (phase 2), each at most `schedule_timeout_ms` plus
// slack for the engine's own waits; a thread past either limit is reported and abandoned.
expected<pass_result> run_pass(const chaos_options& o, const actors::engine_config& config,
                               const fault::fault_schedule& schedule) {
  auto d = std::make_shared<driver_state>();
  std::thread driver([d, o, config, schedule] {
    std::unique_ptr<actors::engine> eng;
    std::shared_ptr<run_state> st;
    expected<pass_result> got = run_requests(o, config, schedule, eng, st);
    const bool all_ended = got && got->all_ended;
    {
      std::lock_guard lk(d->mu);
      d->result = got;
      d->requests_done = true;
    }
    d->cv.notify_all();
    const clock_type::time_point destroying = clock_type::now();
    eng.reset();
    const double destructor_s = seconds_since(destroying);
    std::lock_guard lk(d->mu);
    if (d->result && st) take_records(*d->result, *st, all_ended);
    if (d->result) {
      d->result->destructor_s = destructor_s;
      check_no_orphans(*d->result);
    }
    d->destroyed = true;
    d->cv.notify_all();
  });
  const std::int64_t limit_ms = chaos_schedule_timeout_ms(o);
  const auto limit = std::chrono::milliseconds(limit_ms);
  // Phase 1 ends by itself at the schedule's limit, plus the KV poll and stats() answers.
  const auto requests_limit = limit + std::chrono::seconds(15);
  std::unique_lock lk(d->mu);
  if (!d->cv.wait_for(lk, requests_limit, [&] { return d->requests_done; })) {
    lk.unlock();
    driver.detach();
    pass_result out;
    out.abandoned = true;
    out.violations.push_back(fmt::format(
        "hang: a call into the engine (create, submit, cancel or stats) did not return within {} "
        "ms (the pass's thread is abandoned)",
        requests_limit.count()));
    return out;
  }
  if (!d->cv.wait_for(lk, limit, [&] { return d->destroyed; })) {
    expected<pass_result> out = d->result;
    lk.unlock();
    driver.detach();
    if (!out) return out;
    out->abandoned = true;
    out->violations.push_back(fmt::format(
        "hang: the engine's destructor did not return within {} ms (its thread is abandoned)",
        limit_ms));
    return out;
  }
  expected<pass_result> out = std::move(d->result);
  lk.unlock();
  driver.join();
  return out;
}

// The checks that compare with the fault-free run (`want`: tokens per request).
void check_requests(pass_result& p, const std::vector<std::vector<std::int32_t>>& want) {
  std::int64_t ok_count = 0;
  std::int64_t error_count = 0;
  for (std::size_t i = 0; i < p.records.size(); ++i) {
    const request_record& r = p.records[i];
    if (!r.submitted) continue;
    for (const std::string& problem : r.problems) {
      p.violations.push_back(fmt::format("request {}: {}", i, problem));
    }
    if (r.ends != 1) p.violations.push_back(fmt::format("request {}: ended {} times", i, r.ends));
    if (r.events_after_end > 0) {
      p.violations.push_back(
          fmt::format("request {}: {} events after its last one", i, r.events_after_end));
    }
    const std::vector<std::int32_t>& w = want[i];
    const auto mismatch = std::mismatch(r.tokens.begin(), r.tokens.end(), w.begin(), w.end());
    const bool prefix = mismatch.first == r.tokens.end();
    const auto token_diff = [&] {
      if (mismatch.first != r.tokens.end() && mismatch.second != w.end()) {
        const auto k = mismatch.first - r.tokens.begin();
        return fmt::format("token {} is {}, the fault-free run's is {}", k, *mismatch.first,
                           *mismatch.second);
      }
      return fmt::format("{} tokens, the fault-free run has {}", r.tokens.size(), w.size());
    };
    switch (r.reason) {
      case actors::finish_reason::length:
      case actors::finish_reason::stop_token:
        ++ok_count;
        if (r.tokens != w) {
          p.violations.push_back(fmt::format("request {}: ended with {} but {}", i,
                                             actors::finish_reason_name(r.reason), token_diff()));
        }
        break;
      case actors::finish_reason::error:
        ++error_count;
        if (!p.exhausted) {
          p.violations.push_back(
              fmt::format("request {}: ended with error: {}", i, r.error.to_string()));
        } else if (!prefix) {
          p.violations.push_back(fmt::format(
              "request {}: ended with error (no layout left) after tokens that differ: {}", i,
              token_diff()));
        }
        break;
      case actors::finish_reason::cancelled:
      case actors::finish_reason::none:
        if (r.ends > 0) {
          p.violations.push_back(
              fmt::format("request {}: ended with {}", i, actors::finish_reason_name(r.reason)));
        }
        break;
    }
  }
  if (p.stats.completed != ok_count) {
    p.violations.push_back(
        fmt::format("engine counters: completed {} but {} requests ended with length or stop_token",
                    p.stats.completed, ok_count));
  }
  if (p.exhausted && p.stats.failed != error_count) {
    p.violations.push_back(
        fmt::format("engine counters: failed {} but {} requests ended with error", p.stats.failed,
                    error_count));
  }
}

// Silences the engine's log lines about the faults (every injected fault fails a step on each
// rank, logged as an error, and every recovery is a warning: all expected here, and the report
// says what matters) while the level is the default warn; restores it after.
class quiet_engine_logs {
 public:
  quiet_engine_logs() {
    if (module_logger("apps")->level() == spdlog::level::warn) {
      restore_ = set_log_level("critical").ok();
    }
  }
  ~quiet_engine_logs() {
    if (restore_) (void)set_log_level("warn");
  }
  quiet_engine_logs(const quiet_engine_logs&) = delete;
  quiet_engine_logs& operator=(const quiet_engine_logs&) = delete;

 private:
  bool restore_ = false;
};

}  // namespace

status validate(const chaos_options& o) {
  if (o.schedules < 1 && !o.replay) {
    return invalid_argument("--schedules = {} must be >= 1", o.schedules);
  }
  if (o.faults_per_schedule < 0 || o.faults_per_schedule > 64) {
    return invalid_argument("--faults-per-schedule = {} must be in [0, 64]", o.faults_per_schedule);
  }
  if (o.workers < 1 || o.workers > 64) return invalid_argument("--workers takes 1 to 64");
  if (o.requests < 1 || o.requests > 64) return invalid_argument("--requests takes 1 to 64");
  if (o.max_tokens < 1 || o.max_tokens > 4096) {
    return invalid_argument("--max-tokens takes 1 to 4096");
  }
  if (o.peer_timeout_ms < 1 || o.peer_timeout_ms > 3600000) {
    return invalid_argument("--peer-timeout-ms takes 1 to 3600000");
  }
  if (o.schedule_timeout_ms < 0) {
    return invalid_argument("--schedule-timeout-ms must be >= 1 (0 in chaos_options: the default)");
  }
  if (o.processes < 0 || o.processes > 64) return invalid_argument("--processes takes 1 to 64");
  if (o.standbys < 0 || o.standbys > 64) return invalid_argument("--standby takes 0 to 64");
  if (o.standbys > 0 && o.processes == 0) {
    return invalid_argument("--standby goes with --processes (threads need none)");
  }
  if (o.processes > 0 && o.worker_binary.empty()) {
    return invalid_argument("--processes: no worker binary (chaos_options::worker_binary)");
  }
  return {};
}

std::int64_t chaos_schedule_timeout_ms(const chaos_options& o) {
  if (o.schedule_timeout_ms > 0) return o.schedule_timeout_ms;
  return o.processes > 0 ? 10000 : 5000;
}

std::uint64_t chaos_schedule_seed(std::uint64_t seed, std::int64_t index) {
  // Position 1 keeps these words apart from generate_schedule's own draws (position 0).
  const auto w = random_words(seed, static_cast<std::uint64_t>(index), 1, rng_purpose::faults, 0);
  return (std::uint64_t{w[0]} << 32) | w[1];
}

expected<chaos_report> run_chaos(const chaos_options& o, std::ostream& progress) {
  HELIX_RETURN_IF_ERROR(validate(o));
  const quiet_engine_logs quiet;
  actors::engine_config config = engine_config_for(o);
  chaos_report r;
  const clock_type::time_point t0 = clock_type::now();

  // A fault-free run with `opts`: its result when it kept every promise (checked against `want`,
  // or against its own tokens when `want` is empty, which it then fills) or when its thread was
  // abandoned (then reported in `r`, r.abandoned set: nothing else runs); an error when it broke
  // a check.
  std::vector<std::vector<std::int32_t>> want;
  const auto fault_free = [&](const chaos_options& opts,
                              const char* what) -> expected<pass_result> {
    HELIX_ASSIGN_OR_RETURN(pass_result clean, run_pass(opts, config, {}));
    if (clean.abandoned) {
      // Even without faults the engine did not come back: that is the finding, and its thread
      // still runs in this process, so nothing else runs.
      r.abandoned = true;
      r.violations = static_cast<std::int64_t>(clean.violations.size());
      r.schedules_with_violations = 1;
      for (std::string& v : clean.violations) {
        r.violation_details.push_back(
            {-1, 0, fmt::format("{} (no faults)", what), "", std::move(v)});
      }
      r.wall_s = seconds_since(t0);
      return clean;
    }
    if (want.empty()) {
      for (const request_record& rec : clean.records) want.push_back(rec.tokens);
    }
    check_requests(clean, want);
    for (const request_record& rec : clean.records) {
      if (rec.reason != actors::finish_reason::length &&
          rec.reason != actors::finish_reason::stop_token) {
        clean.violations.push_back(fmt::format("a request ended with {}: {}",
                                               actors::finish_reason_name(rec.reason),
                                               rec.error.to_string()));
      }
    }
    if (!clean.violations.empty() || clean.recoveries > 0) {
      return internal_error("helix chaos: the {} is broken, there is no reference: {}{}", what,
                            clean.violations.empty() ? "" : clean.violations.front(),
                            clean.recoveries > 0 ? " (it recovered from a worker failure)" : "");
    }
    return clean;
  };

  // The reference: the same engine and workload without faults, with threads (through a fault
  // fabric with an empty schedule, which counts the calls that size max_nth).
  chaos_options threads_o = o;
  threads_o.processes = 0;
  threads_o.standbys = 0;
  HELIX_ASSIGN_OR_RETURN(pass_result clean, fault_free(threads_o, "fault-free run"));
  if (r.abandoned) return r;
  // Every later engine runs the layout this one chose ("auto" is chosen once).
  config.layout = clean.layout;
  if (o.processes > 0) {
    // Processes give the threads' tokens: checked once without faults, so that a difference
    // shows as that and not as every schedule's violation.
    const expected<pass_result> procs = fault_free(o, "fault-free run with worker processes");
    if (!procs) return procs.error();
    if (r.abandoned) return r;
  }
  r.fault_free_s = seconds_since(t0);
  r.fault_free_migrations = clean.migrations;
  if (o.tamper_expected) o.tamper_expected(want);
  auto grid = layout::parse(clean.layout);
  if (!grid) {
    return internal_error("helix chaos: the engine's layout '{}': {}", clean.layout, grid.error());
  }
  r.layout = clean.layout;
  r.world = grid->num_ranks;
  r.max_nth = o.max_nth > 0 ? o.max_nth : std::max<std::uint64_t>(1, clean.min_calls);
  for (std::int64_t i = 0; i < o.requests; ++i) {
    r.prompt_tokens.push_back(prompt_length(i));
    r.decode_tokens.push_back(decode_length(i, o.max_tokens));
  }
  r.synthetic_context_tokens = synthetic_tokens;
  r.synthetic_request = synthetic_request(o.requests);

  fault::schedule_options so;
  so.actions = {fault::fault_action::delay, fault::fault_action::fail, fault::fault_action::hang};
  if (o.processes > 0) so.actions.push_back(fault::fault_action::crash);
  so.kinds = {fault::call_kind::any};
  so.max_nth = r.max_nth;
  if (o.replay) {
    HELIX_RETURN_IF_ERROR(fault::validate(*o.replay, static_cast<int>(r.world)));
    for (const fault::fault_spec& f : o.replay->faults) {
      if (f.action == fault::fault_action::crash && o.processes == 0) {
        return invalid_argument(
            "helix chaos: the schedule has a CRASH, which would kill this process (workers are "
            "threads)");
      }
    }
  }
  const std::int64_t count = o.replay ? 1 : o.schedules;
  const std::int64_t every =
      o.progress_every > 0 ? o.progress_every : std::max<std::int64_t>(10, count / 20);
  for (std::int64_t i = 0; i < count; ++i) {
    fault::fault_schedule s;
    if (o.replay) {
      s = *o.replay;
    } else {
      HELIX_ASSIGN_OR_RETURN(
          s, fault::generate_schedule(chaos_schedule_seed(o.seed, i), static_cast<int>(r.world),
                                      o.faults_per_schedule, so));
    }
    const clock_type::time_point pass_start = clock_type::now();
    HELIX_ASSIGN_OR_RETURN(pass_result p, run_pass(o, config, s));
    const double pass_s = seconds_since(pass_start);
    if (pass_s > r.slowest_schedule_s) {
      r.slowest_schedule_s = pass_s;
      r.slowest_schedule = i;
    }
    if (p.destructor_s > 2.0) ++r.slow_destructors;
    if (p.destructor_s > r.slowest_destructor_s) {
      r.slowest_destructor_s = p.destructor_s;
      r.slowest_destructor_schedule = i;
    }
    check_requests(p, want);
    ++r.schedules;
    r.faults_scheduled += static_cast<std::int64_t>(s.faults.size());
    r.faults_injected += static_cast<std::int64_t>(p.injected.size());
    for (const fault::injected_fault& f : p.injected) {
      if (f.action == fault::fault_action::delay) ++r.delays;
      if (f.action == fault::fault_action::fail) ++r.fails;
      if (f.action == fault::fault_action::hang) ++r.hangs;
    }
    r.crashes += p.crashes;
    r.fail_or_hang += p.fail_or_hang;
    if (o.processes > 0) r.faults_injected += p.crashes + p.fail_or_hang;
    r.recoveries += p.recoveries;
    if (!p.abandoned) {  // the proxies are gone with the engine
      std::lock_guard lk(p.control->mu);
      for (const auto& c : p.control->counts) {
        r.control_delayed += c->delayed;
        r.control_dropped += c->dropped;
        r.control_duplicated += c->duplicated;
        r.control_reordered += c->reordered;
      }
    }
    r.recoveries_lost_blocks += p.recoveries_lost_blocks;
    r.recoveries_dropping_another_rank += p.misattributed;
    r.migrations += p.migrations;
    if (p.exhausted) ++r.engines_exhausted;
    if (!p.violations.empty()) ++r.schedules_with_violations;
    const std::string description = fault::describe(s);
    const std::string hex = to_hex(fault::to_bytes(s));
    for (std::string& what : p.violations) {
      ++r.violations;
      if (r.violation_details.size() < max_details_kept) {
        r.violation_details.push_back({i, s.seed, description, hex, std::move(what)});
      }
    }
    if ((i + 1) % every == 0 || i + 1 == count || p.abandoned) {
      progress << fmt::format(
          "chaos: {}/{} schedules, {} faults {}, {} crashes, {} recoveries, {} violations ({:.1f} "
          "s)\n",
          i + 1, count, r.faults_injected, o.processes > 0 ? "seen" : "fired", r.crashes,
          r.recoveries, r.violations, seconds_since(t0));
    }
    if (p.abandoned) {
      r.abandoned = true;
      break;  // its threads still run in this process: what follows would not be trustworthy
    }
  }
  r.wall_s = seconds_since(t0);
  return r;
}

}  // namespace helix::apps
