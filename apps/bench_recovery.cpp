// `helix bench recovery`: lost-blocks recovery against full replay; see bench_recovery.hpp.
#include "apps/bench_recovery.hpp"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/engine.hpp"
#include "apps/cli_args.hpp"
#include "cluster/cluster.hpp"
#include "core/layout.hpp"
#include "core/model_spec.hpp"
#include "core/rng.hpp"

namespace helix::apps {
namespace {

constexpr std::uint64_t weight_seed = 1;
constexpr std::uint64_t kv_seed = 100;
constexpr std::uint64_t prompt_seed = 7;

struct options {
  std::string model = "small-llama";
  int processes = 4;
  int standbys = 0;
  std::string layout;  // empty: helix's default for `processes` ranks
  std::int64_t context = 16 * 1024;
  std::int64_t batch = 2;
  std::int64_t prompt = 16;
  std::int64_t max_tokens = 32;
  std::int64_t kill_after = 8;
  std::int64_t victim = 1;
  dtype kv_dtype = dtype::bf16;
  std::string worker_binary;
  bool json = false;
};

struct run_result {
  std::vector<std::vector<std::int32_t>> tokens;  // per request
  std::optional<actors::recovery_stats> recovery;
  std::int64_t victim_pid = 0;
  double wall_s = 0.0;
};

expected<options> parse(const std::vector<std::string>& args) {
  HELIX_ASSIGN_OR_RETURN(const cli_args cli, cli_args::parse(args, {"json", "help"}));
  HELIX_RETURN_IF_ERROR(
      cli.check_known({"model", "processes", "standby", "layout", "context", "batch", "prompt",
                       "max-tokens", "kill-after", "victim", "kv-dtype", "json", "help"}));
  options o;
  o.model = cli.get_or("model", o.model);
  HELIX_ASSIGN_OR_RETURN(const std::int64_t procs, cli.get_int("processes", o.processes));
  HELIX_ASSIGN_OR_RETURN(const std::int64_t standbys, cli.get_int("standby", o.standbys));
  o.layout = cli.get_or("layout", "");
  HELIX_ASSIGN_OR_RETURN(o.context, cli.get_size("context", o.context));
  HELIX_ASSIGN_OR_RETURN(o.batch, cli.get_size("batch", o.batch));
  HELIX_ASSIGN_OR_RETURN(o.prompt, cli.get_size("prompt", o.prompt));
  HELIX_ASSIGN_OR_RETURN(o.max_tokens, cli.get_size("max-tokens", o.max_tokens));
  HELIX_ASSIGN_OR_RETURN(o.kill_after, cli.get_int("kill-after", o.kill_after));
  HELIX_ASSIGN_OR_RETURN(o.victim, cli.get_int("victim", o.victim));
  o.json = cli.has("json");
  if (procs < 2 || procs > 64)
    return invalid_argument("--processes must be in [2, 64], got {}", procs);
  if (standbys < 0 || standbys > 64) {
    return invalid_argument("--standby must be in [0, 64], got {}", standbys);
  }
  o.processes = static_cast<int>(procs);
  o.standbys = static_cast<int>(standbys);
  if (o.context < 1 || o.context > (std::int64_t{1} << 24)) {
    return invalid_argument("--context must be in [1, 16M], got {}", o.context);
  }
  if (o.batch < 1 || o.batch > 64)
    return invalid_argument("--batch must be in [1, 64], got {}", o.batch);
  if (o.prompt < 1 || o.prompt > 4096) {
    return invalid_argument("--prompt must be in [1, 4096], got {}", o.prompt);
  }
  if (o.max_tokens < 2 || o.max_tokens > 4096) {
    return invalid_argument("--max-tokens must be in [2, 4096], got {}", o.max_tokens);
  }
  if (o.kill_after < 1 || o.kill_after >= o.max_tokens) {
    return invalid_argument("--kill-after must be in [1, --max-tokens), got {}", o.kill_after);
  }
  if (o.victim < 0 || o.victim >= o.processes) {
    return invalid_argument("--victim must be a rank in [0, {}), got {}", o.processes, o.victim);
  }
  auto kv = parse_dtype(cli.get_or("kv-dtype", "bf16"));
  if (!kv) return kv.error().with_context("--kv-dtype");
  if (*kv != dtype::bf16 && *kv != dtype::f32) {
    return invalid_argument("--kv-dtype: {} is not bf16 or f32", dtype_name(*kv));
  }
  o.kv_dtype = *kv;
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(o.model));
  if (o.layout.empty()) {
    HELIX_ASSIGN_OR_RETURN(const layout l, default_layout(layout_family::helix, o.processes, spec));
    o.layout = l.to_string();
  }
  HELIX_ASSIGN_OR_RETURN(const layout l, layout::parse(o.layout));
  HELIX_RETURN_IF_ERROR(validate(l, spec));
  if (l.num_ranks != o.processes) {
    return invalid_argument("--layout {} has {} ranks, --processes is {}", o.layout, l.num_ranks,
                            o.processes);
  }
  o.layout = l.to_string();
  HELIX_ASSIGN_OR_RETURN(o.worker_binary, this_program_path());
  return o;
}

// One run: `mode` "off" runs without a kill (the reference).
expected<run_result> run_once(const options& o, const std::string& mode, std::ostream& progress) {
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(o.model));
  actors::engine_config ec;
  ec.model = o.model;
  ec.weight_type = dtype::bf16;
  ec.kv_type = o.kv_dtype;
  ec.weight_seed = weight_seed;
  ec.layout = o.layout;
  ec.num_workers = o.processes;
  ec.block_tokens = default_block_tokens;
  // Room for the whole batch on one KVP member: any layout a recovery ends on fits.
  ec.kv_capacity_tokens_per_worker =
      actors::kv_capacity_for(o.batch, o.context + o.prompt + o.max_tokens, 1, default_block_tokens,
                              ec.rebalance_threshold);
  ec.max_batch_tokens = std::max<std::int64_t>(o.batch + o.prompt, 64);
  ec.prefill_chunk_tokens = 64;
  ec.recovery = mode;
  cluster::spawned_workers_options so;
  so.worker_binary = o.worker_binary;
  so.standbys = o.standbys;
  const auto t0 = std::chrono::steady_clock::now();
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<actors::engine> eng,
                         actors::engine::create(ec, cluster::spawned_workers(so)));
  run_result res;
  const std::vector<actors::worker_info> workers = eng->workers();
  for (const actors::worker_info& w : workers) {
    if (w.rank == o.victim) res.victim_pid = w.pid;
  }
  std::atomic<bool> killed{false};
  std::vector<std::shared_ptr<actors::token_stream>> streams;
  for (std::int64_t i = 0; i < o.batch; ++i) {
    actors::request_options r;
    for (std::int64_t t = 0; t < o.prompt; ++t) {
      const std::uint32_t u =
          random_words(prompt_seed, static_cast<std::uint64_t>(i), static_cast<std::uint64_t>(t),
                       rng_purpose::workload, 0)[0];
      r.prompt.push_back(static_cast<std::int32_t>(u % static_cast<std::uint32_t>(spec.vocab)));
    }
    r.max_tokens = o.max_tokens;
    r.synthetic_context_tokens = o.context;
    r.synthetic_seed = kv_seed + static_cast<std::uint64_t>(i);
    const bool first = i == 0;
    auto h = eng->submit(std::move(r), [&, first](const actors::token_event& e) {
      if (!first || mode == "off" || e.token < 0 || e.index + 1 != o.kill_after) return;
      if (!killed.exchange(true)) ::kill(static_cast<pid_t>(res.victim_pid), SIGKILL);
    });
    if (!h) return h.error();
    streams.push_back(h->stream);
  }
  for (std::size_t i = 0; i < streams.size(); ++i) {
    std::vector<std::int32_t> tokens;
    std::optional<actors::token_event> last;
    while (auto e = streams[i]->next()) {
      if (e->token >= 0) tokens.push_back(e->token);
      if (e->last) last = std::move(e);
    }
    if (!last) return internal_error("request {} ended without a last event", i);
    if (last->reason != actors::finish_reason::length) {
      return internal_error("{}: request {} ended with {}: {}", mode, i,
                            actors::finish_reason_name(last->reason), last->error.to_string());
    }
    res.tokens.push_back(std::move(tokens));
  }
  const actors::engine_stats s = eng->stats();
  res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (mode != "off") {
    if (s.recoveries.size() != 1) {
      return internal_error("{}: {} recoveries, expected 1 (did the kill come too late?)", mode,
                            s.recoveries.size());
    }
    res.recovery = s.recoveries[0];
  }
  progress << fmt::format("  {:<12} {:.1f} s\n", mode == "off" ? "no failure" : mode, res.wall_s);
  progress.flush();
  return res;
}

double total_ms(const actors::recovery_stats& r) {
  return r.detect_ms + r.replan_ms + r.reload_ms + r.rebuild_ms;
}

nlohmann::json run_json(const run_result& r) {
  const actors::recovery_stats& x = *r.recovery;
  return {{"mode", x.mode},
          {"layout_after", x.layout_after},
          {"detect_ms", x.detect_ms},
          {"replan_ms", x.replan_ms},
          {"reload_ms", x.reload_ms},
          {"rebuild_ms", x.rebuild_ms},
          {"total_ms", total_ms(x)},
          {"blocks_kept", x.blocks_kept},
          {"blocks_moved", x.blocks_moved},
          {"blocks_rebuilt", x.blocks_rebuilt},
          {"positions_rebuilt", x.tokens_replayed},
          {"victim_pid", r.victim_pid},
          {"wall_s", r.wall_s}};
}

}  // namespace

int run_bench_recovery(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  constexpr const char* usage =
      "usage: helix bench recovery [--processes 4] [--standby 0] [--layout helix:kvp=4,tpa=1]\n"
      "                            [--context 16K] [--batch 2] [--prompt 16] [--max-tokens 32]\n"
      "                            [--kill-after 8] [--victim 1] [--model small-llama] [--json]\n"
      "  Kills worker --victim (SIGKILL) once the first request generated --kill-after tokens,\n"
      "  with recovery by lost blocks and by full replay, side by side, and a run without the\n"
      "  kill for the reference tokens; reports each recovery's phases and the KV rebuild times.\n";
  if (std::find(args.begin(), args.end(), "--help") != args.end()) {
    out << usage;
    return 0;
  }
  auto o = parse(args);
  if (!o) {
    err << "error: " << o.error().message() << "\n" << usage;
    return 2;
  }
  err << fmt::format(
      "bench recovery: {} on {} worker processes{} ({}), {} x {} tokens of "
      "synthetic KV, rank {} killed after {} tokens\n",
      o->model, o->processes, o->standbys > 0 ? fmt::format(" + {} standbys", o->standbys) : "",
      o->layout, o->batch, o->context, o->victim, o->kill_after);
  std::optional<run_result> runs[3];
  const char* modes[3] = {"off", "lost_blocks", "full_replay"};
  for (int i = 0; i < 3; ++i) {
    auto r = run_once(*o, modes[i], err);
    if (!r) {
      err << "error: " << r.error().to_string() << "\n";
      return 1;
    }
    runs[i] = std::move(*r);
  }
  const bool equal = runs[1]->tokens == runs[0]->tokens && runs[2]->tokens == runs[0]->tokens;
  const actors::recovery_stats& lost = *runs[1]->recovery;
  if (lost.mode != "lost_blocks") {
    err << "error: the lost_blocks run fell back to " << lost.mode << " (see its log)\n";
    return 1;
  }
  const actors::recovery_stats& full = *runs[2]->recovery;
  const double speedup = lost.rebuild_ms > 0.0 ? full.rebuild_ms / lost.rebuild_ms : 0.0;
  const double total_speedup = total_ms(lost) > 0.0 ? total_ms(full) / total_ms(lost) : 0.0;
  if (o->json) {
    const nlohmann::json j = {{"model", o->model},
                              {"context", o->context},
                              {"batch", o->batch},
                              {"processes", o->processes},
                              {"standbys", o->standbys},
                              {"layout", o->layout},
                              {"victim", o->victim},
                              {"kill_after_tokens", o->kill_after},
                              {"kv_fill", "synthetic"},
                              {"lost_blocks", run_json(*runs[1])},
                              {"full_replay", run_json(*runs[2])},
                              {"lost_blocks_ms", lost.rebuild_ms},
                              {"full_replay_ms", full.rebuild_ms},
                              {"speedup", speedup},
                              {"total_speedup", total_speedup},
                              {"outputs_equal", equal}};
    out << j.dump(2) << "\n";
  } else {
    out << fmt::format(
        "recovery   {} on {} processes, {} x {} tokens of synthetic KV, rank {} "
        "killed after {} tokens\n",
        o->model, o->processes, o->batch, o->context, o->victim, o->kill_after);
    out << fmt::format("  {:<12} {:>9} {:>9} {:>9} {:>10} {:>9} {:>7} {:>7} {:>8}  {}\n", "mode",
                       "detect", "re-plan", "reload", "KV rebuild", "total", "kept", "moved",
                       "rebuilt", "layout after");
    for (const actors::recovery_stats* x : {&lost, &full}) {
      out << fmt::format(
          "  {:<12} {:>6.0f} ms {:>6.0f} ms {:>6.0f} ms {:>7.0f} ms {:>6.0f} ms "
          "{:>7} {:>7} {:>8}  {}\n",
          x->mode, x->detect_ms, x->replan_ms, x->reload_ms, x->rebuild_ms, total_ms(*x),
          x->blocks_kept, x->blocks_moved, x->blocks_rebuilt, x->layout_after);
    }
    out << fmt::format(
        "  KV rebuild: lost blocks {:.1f}x faster than full replay ({:.1f}x for "
        "the whole recovery); outputs {}\n",
        speedup, total_speedup, equal ? "equal to the run without the kill" : "DIFFER");
  }
  if (!equal) {
    err << "error: a recovery changed the outputs\n";
    return 1;
  }
  return 0;
}

}  // namespace helix::apps
