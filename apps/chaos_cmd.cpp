#include "apps/chaos_cmd.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <utility>

#include <fmt/format.h>

#include "apps/cli_args.hpp"
#include "transport/fault/schedule.hpp"

namespace helix::apps {
namespace {

namespace fault = transport::fault;

expected<std::string> from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) return invalid_argument("--schedule-hex: odd number of hex digits");
  std::string out;
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    unsigned value = 0;
    for (std::size_t k = 0; k < 2; ++k) {
      const char c = hex[i + k];
      unsigned d = 0;
      if (c >= '0' && c <= '9') {
        d = static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        d = static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        d = static_cast<unsigned>(c - 'A' + 10);
      } else {
        return invalid_argument("--schedule-hex: '{}' is not a hex digit", c);
      }
      value = value * 16 + d;
    }
    out.push_back(static_cast<char>(value));
  }
  return out;
}

}  // namespace

nlohmann::json chaos_report_json(const chaos_options& o, const chaos_report& r) {
  nlohmann::json details = nlohmann::json::array();
  for (const chaos_violation& v : r.violation_details) {
    details.push_back({{"schedule", v.schedule},
                       {"seed", v.seed},
                       {"description", v.description},
                       {"schedule_hex", v.schedule_hex},
                       {"what", v.what}});
  }
  const bool procs = o.processes > 0;
  nlohmann::json by_action =
      procs ? nlohmann::json{{"CRASH", r.crashes}, {"FAIL_OR_HANG", r.fail_or_hang}}
            : nlohmann::json{
                  {"DELAY", r.delays}, {"FAIL", r.fails}, {"HANG", r.hangs}, {"CRASH", r.crashes}};
  nlohmann::json actions = {"DELAY", "FAIL", "HANG"};
  if (procs) actions.push_back("CRASH");
  return {{"schedules", r.schedules},
          {"faults_scheduled", r.faults_scheduled},
          {"faults_injected", r.faults_injected},
          {"faults_by_action", std::move(by_action)},
          {"crashes", r.crashes},
          {"control_faults",
           {{"delayed", r.control_delayed},
            {"dropped", r.control_dropped},
            {"duplicated", r.control_duplicated},
            {"reordered", r.control_reordered}}},
          {"recoveries", r.recoveries},
          {"recoveries_lost_blocks", r.recoveries_lost_blocks},
          {"recoveries_dropping_another_rank", r.recoveries_dropping_another_rank},
          {"migrations", r.migrations},
          {"fault_free_migrations", r.fault_free_migrations},
          {"engines_exhausted", r.engines_exhausted},
          {"violations", r.violations},
          {"schedules_with_violations", r.schedules_with_violations},
          {"violation_details", std::move(details)},
          {"abandoned", r.abandoned},
          {"wall_s", r.wall_s},
          {"fault_free_s", r.fault_free_s},
          {"slowest_schedule", {{"index", r.slowest_schedule}, {"s", r.slowest_schedule_s}}},
          {"slowest_destructor",
           {{"index", r.slowest_destructor_schedule}, {"s", r.slowest_destructor_s}}},
          {"slow_destructors", r.slow_destructors},
          {"workload",
           {{"seed", o.seed},
            {"model", o.model},
            {"layout", r.layout},
            {"workers", procs ? o.processes : o.workers},
            {"world", r.world},
            {"threads", !procs},
            {"processes", o.processes},
            {"standbys", o.standbys},
            {"fault_counts", procs ? "observed" : "fired"},
            {"faults_first_epoch_only", procs},
            {"requests", o.requests},
            {"prompt_tokens", r.prompt_tokens},
            {"max_tokens", o.max_tokens},
            {"decode_tokens", r.decode_tokens},
            {"synthetic_context_tokens", r.synthetic_context_tokens},
            {"faults_per_schedule", o.faults_per_schedule},
            {"max_nth", r.max_nth},
            {"actions", std::move(actions)},
            {"recovery", o.recovery},
            {"peer_timeout_ms", o.peer_timeout_ms},
            {"schedule_timeout_ms", chaos_schedule_timeout_ms(o)},
            {"replay", o.replay.has_value()}}}};
}

namespace {
std::int64_t range_min(const std::vector<std::int64_t>& v) {
  return v.empty() ? 0 : *std::min_element(v.begin(), v.end());
}
std::int64_t range_max(const std::vector<std::int64_t>& v) {
  return v.empty() ? 0 : *std::max_element(v.begin(), v.end());
}
}  // namespace

void print_chaos_report(std::ostream& out, const chaos_options& o, const chaos_report& r) {
  const bool procs = o.processes > 0;
  const std::string kind =
      procs ? fmt::format("{} worker processes{}", o.processes,
                          o.standbys > 0 ? fmt::format(" + {} standbys", o.standbys) : "")
            : fmt::format("{} workers (threads)", o.workers);
  out << fmt::format("chaos       {} on {}, layout {}, recovery {}\n", o.model, kind, r.layout,
                     o.recovery);
  out << fmt::format(
      "  workload  {} requests at once (prompts of {}..{} tokens, request {} over a synthetic "
      "context of {}), {}..{} tokens generated each, greedy and seeded sampling; seed {}\n",
      o.requests, range_min(r.prompt_tokens), range_max(r.prompt_tokens), r.synthetic_request,
      r.synthetic_context_tokens, range_min(r.decode_tokens), range_max(r.decode_tokens), o.seed);
  if (o.replay) {
    out << fmt::format("  schedule  replayed: {}\n", fault::describe(*o.replay));
  } else {
    out << fmt::format(
        "  schedules {} from seed {}: {} faults each ({} at a rank's call #1..#{}{}), peer "
        "timeout {} ms, {} ms per schedule at most\n",
        r.schedules, o.seed, o.faults_per_schedule,
        procs ? "DELAY, FAIL, HANG or CRASH" : "DELAY, FAIL or HANG", r.max_nth,
        procs ? "; first epoch only" : "", o.peer_timeout_ms, chaos_schedule_timeout_ms(o));
  }
  if (procs) {
    out << fmt::format(
        "  faults    {} scheduled, {} seen to take effect: {} crashes (worker processes killed), "
        "{} recoveries from a FAIL or HANG (DELAYs are not seen from outside)\n",
        r.faults_scheduled, r.faults_injected, r.crashes, r.fail_or_hang);
  } else {
    out << fmt::format(
        "  faults    {} scheduled, {} fired (DELAY {}, FAIL {}, HANG {}); crashes {}\n",
        r.faults_scheduled, r.faults_injected, r.delays, r.fails, r.hangs, r.crashes);
  }
  out << fmt::format("  migrations {} KV blocks moved by rebalancing (fault-free run: {})\n",
                     r.migrations, r.fault_free_migrations);
  out << fmt::format(
      "  recovery  {} recoveries ({} rebuilt only the lost KV blocks, {} dropped a rank other "
      "than the one the fault hit); {} schedules left no layout for the workers remaining "
      "(requests ended with that error, allowed)\n",
      r.recoveries, r.recoveries_lost_blocks, r.recoveries_dropping_another_rank,
      r.engines_exhausted);
  out << fmt::format("  violations {} in {} schedules{}\n", r.violations,
                     r.schedules_with_violations,
                     r.abandoned ? " (STOPPED: an engine's destructor hung)" : "");
  out << fmt::format(
      "  wall      {:.1f} s ({:.2f} s per schedule, slowest {:.2f} s (schedule {}); fault-free "
      "runs {:.2f} s)\n",
      r.wall_s,
      r.schedules > 0 ? (r.wall_s - r.fault_free_s) / static_cast<double>(r.schedules) : 0.0,
      r.slowest_schedule_s, r.slowest_schedule, r.fault_free_s);
  out << fmt::format(
      "  shutdown  slowest engine destructor {:.2f} s (schedule {}); {} took over 2 s{}\n",
      r.slowest_destructor_s, r.slowest_destructor_schedule, r.slow_destructors,
      r.slow_destructors > 0 && procs
          ? " (worker processes that did not end with the engine: the source kills them after 5 s)"
          : "");
  // Details come grouped by schedule (in run order): its schedule and replay line once.
  const chaos_violation* last = nullptr;
  for (const chaos_violation& v : r.violation_details) {
    if (last == nullptr || last->schedule != v.schedule) {
      out << fmt::format("VIOLATION schedule {} (seed {}): {}\n", v.schedule, v.seed, v.what);
      out << fmt::format("  schedule  {}\n", v.description);
      if (!v.schedule_hex.empty()) {
        out << fmt::format(
            "  replay    helix chaos --seed {} --model {} {} --layout {} --requests {} "
            "--max-tokens {} --peer-timeout-ms {} --recovery {} --schedule-hex {}\n",
            o.seed, o.model,
            procs ? fmt::format("--processes {}{}", o.processes,
                                o.standbys > 0 ? fmt::format(" --standby {}", o.standbys) : "")
                  : fmt::format("--workers {}", o.workers),
            r.layout, o.requests, o.max_tokens, o.peer_timeout_ms, o.recovery, v.schedule_hex);
      }
    } else {
      out << fmt::format("  and       {}\n", v.what);
    }
    last = &v;
  }
  if (static_cast<std::int64_t>(r.violation_details.size()) < r.violations) {
    out << fmt::format("  ({} more violations not listed)\n",
                       r.violations - static_cast<std::int64_t>(r.violation_details.size()));
  }
}

int run_chaos_cmd(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  constexpr const char* chaos_usage =
      "usage: helix chaos [--seed 1] [--schedules 100] [--faults-per-schedule 2]\n"
      "                   [--model tiny-llama] [--layout auto] [--workers 4 | --processes P]\n"
      "                   [--standby K] [--json]\n"
      "  The seeded fault harness: a small workload (greedy and sampled requests, one over a\n"
      "  synthetic context, all at once) on the engine with workers as threads (or processes)\n"
      "  and recovery (lost blocks only by default), once without faults and then under N\n"
      "  seeded fault schedules (DELAY, FAIL, HANG on the data plane; CRASH with processes);\n"
      "  after each: every request ended once, no token repeated or skipped, tokens equal to the\n"
      "  fault-free run's, KV back to zero, no hang, no worker process left. Prints the seed and "
      "schedule\n"
      "  of every violation. Exit code 1 when there is one.\n"
      "  --seed S                 seed of the workload and of every schedule (default 1)\n"
      "  --schedules N            fault schedules to run (default 100)\n"
      "  --faults-per-schedule K  faults per schedule (default 2); a fault that has not fired\n"
      "                           when the engine recovers carries over to the new workers\n"
      "  --model NAME             built-in model (default tiny-llama)\n"
      "  --workers W              workers (ranks) of the engine, as threads (default 4)\n"
      "  --processes P            the workers are P `helix worker` processes; CRASH joins the\n"
      "                           actions; faults hit only the first layout's ranks (a recovery's\n"
      "                           rebuilt workers run without); checks no worker process outlives\n"
      "                           the engine\n"
      "  --standby K              with --processes: K more worker processes join as standbys\n"
      "  --layout L               auto (helix's default for W workers) or a layout string\n"
      "  --requests N             requests of the workload (default 5)\n"
      "  --max-tokens N           tokens request i generates: N + 4 * (i % 3) (default 12)\n"
      "  --max-nth N              faults hit a rank's call #1..#N (default: the fewest calls a\n"
      "                           rank makes in the fault-free run)\n"
      "  --peer-timeout-ms MS     the engine's peer timeout; a HANG lasts that long (default 200)\n"
      "  --schedule-timeout-ms MS a schedule's wall-clock limit: past it, a hang (default 5000;\n"
      "                           with --processes 10000)\n"
      "  --recovery MODE          lost_blocks (default), full_replay or off (every failure is a\n"
      "                           violation)\n"
      "  --control-faults P       threads: each control message to a worker is delayed, dropped,\n"
      "                           duplicated or reordered with probability P (at most one per\n"
      "                           worker and schedule, from the schedule's seed; default 0)\n"
      "  --schedule-hex HEX       run only this schedule (the hex a violation prints)\n"
      "  --replay FILE            run only the schedule stored in FILE (FaultSchedule bytes)\n"
      "  --json                   the report as JSON\n";
  int exit_code = 0;
  const auto a = parse_command(
      args, {"json"},
      {"seed", "schedules", "faults-per-schedule", "model", "layout", "workers", "requests",
       "max-tokens", "max-nth", "peer-timeout-ms", "schedule-timeout-ms", "recovery",
       "schedule-hex", "replay", "processes", "standby", "control-faults", "json"},
      chaos_usage, out, err, exit_code);
  if (!a) return exit_code;
  const auto usage_error = [&err](const std::string& what) {
    err << "error: " << what << "\n" << chaos_usage;
    return 2;
  };
  chaos_options o;
  const auto seed = a->get_int("seed", 1);
  const auto schedules = a->get_int("schedules", o.schedules);
  const auto faults = a->get_int("faults-per-schedule", o.faults_per_schedule);
  const auto workers = a->get_int("workers", o.workers);
  const auto requests = a->get_int("requests", o.requests);
  const auto max_tokens = a->get_int("max-tokens", o.max_tokens);
  const auto max_nth = a->get_int("max-nth", 0);
  const auto peer = a->get_int("peer-timeout-ms", o.peer_timeout_ms);
  const auto limit = a->get_int("schedule-timeout-ms", o.schedule_timeout_ms);
  const auto processes = a->get_int("processes", 0);
  const auto standbys = a->get_int("standby", 0);
  for (const auto* e : {&seed, &schedules, &faults, &workers, &requests, &max_tokens, &max_nth,
                        &peer, &limit, &processes, &standbys}) {
    if (!*e) return usage_error(e->error().message());
  }
  if (*seed < 0) return usage_error("--seed must be >= 0");
  if (*max_nth < 0) return usage_error("--max-nth must be >= 1");
  if (*faults < 0 || *faults > 64) return usage_error("--faults-per-schedule takes 0 to 64");
  if (*limit < 1 && a->has("schedule-timeout-ms")) {
    return usage_error("--schedule-timeout-ms must be >= 1");
  }
  if (a->has("processes")) {
    if (*processes < 1 || *processes > 64) return usage_error("--processes takes 1 to 64");
    if (a->has("workers") && *workers != *processes) {
      return usage_error("--workers and --processes name the same count: give one");
    }
    auto self_exe = this_program_path();
    if (!self_exe) return usage_error(self_exe.error().message());
    o.worker_binary = std::move(*self_exe);
    o.processes = *processes;
  }
  o.standbys = *standbys;
  o.seed = static_cast<std::uint64_t>(*seed);
  o.schedules = *schedules;
  o.faults_per_schedule = static_cast<int>(*faults);
  o.model = a->get_or("model", o.model);
  o.layout = a->get_or("layout", o.layout);
  o.workers = o.processes > 0 ? o.processes : *workers;
  o.requests = *requests;
  o.max_tokens = *max_tokens;
  o.max_nth = static_cast<std::uint64_t>(*max_nth);
  o.peer_timeout_ms = *peer;
  if (const auto cf = a->get("control-faults")) {
    char* end = nullptr;
    const double p = std::strtod(cf->c_str(), &end);
    if (end == cf->c_str() || *end != '\0' || !(p >= 0.0 && p <= 1.0)) {
      return usage_error("--control-faults takes a probability in [0, 1]");
    }
    if (p > 0.0 && o.processes > 0) return usage_error("--control-faults: threads only");
    o.control_faults = p;
  }
  o.schedule_timeout_ms = *limit;
  o.recovery = a->get_or("recovery", o.recovery);
  if (o.recovery != "off" && o.recovery != "lost_blocks" && o.recovery != "full_replay") {
    return usage_error("--recovery takes off, lost_blocks or full_replay");
  }
  if (a->has("schedule-hex") && a->has("replay")) {
    return usage_error("--schedule-hex and --replay exclude each other");
  }
  std::optional<std::string> bytes;
  if (const auto hex = a->get("schedule-hex")) {
    auto b = from_hex(*hex);
    if (!b) return usage_error(b.error().message());
    bytes = std::move(*b);
  } else if (const auto path = a->get("replay")) {
    std::ifstream in(*path, std::ios::binary);
    if (!in) return usage_error(fmt::format("--replay: cannot read '{}'", *path));
    bytes = std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (bytes) {
    auto s = fault::parse_schedule(*bytes);
    if (!s) return usage_error(s.error().message());
    o.replay = std::move(*s);
  }
  if (const status v = validate(o); !v.ok()) return usage_error(v.message());

  auto r = run_chaos(o, err);
  if (!r) {
    err << "error: " << r.error().to_string() << "\n";
    return r.error().code() == errc::invalid_argument ? 2 : 1;
  }
  if (a->has("json")) {
    out << chaos_report_json(o, *r).dump(2) << "\n";
  } else {
    print_chaos_report(out, o, *r);
  }
  if (r->abandoned) {
    // An engine's threads are still blocked in this process; exiting normally would run static
    // destructors under them. The report is out; end here.
    out.flush();
    err.flush();
    std::fflush(nullptr);
    std::_Exit(1);
  }
  return r->violations == 0 ? 0 : 1;
}

}  // namespace helix::apps
