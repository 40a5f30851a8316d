#include "apps/demo_cmd.hpp"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "actors/engine.hpp"
#include "apps/bench_decode.hpp"
#include "apps/cli_args.hpp"
#include "apps/run_cmd.hpp"
#include "cluster/cluster.hpp"
#include "core/layout.hpp"
#include "core/rng.hpp"
#include "model/decoder.hpp"
#include "model/reference_forward.hpp"

namespace helix::apps {
namespace {

constexpr double exact_tolerance = 1e-4;

// The engine checked against the single worker: (model, layout) on 8 worker threads; with
// --processes N, each model's default helix layout for N.
constexpr std::pair<const char*, const char*> sharded_checks[] = {
    {"tiny-llama", "helix:kvp=4,tpa=2"},
    {"tiny-deepseek", "helix:kvp=8,tpa=1,tpf=2,ep=4"},  // MLA, MoE with expert parallelism
};

struct exactness {
  std::string model;
  std::int64_t steps = 0;
  double max_abs_diff = 0;
};

// Prefill a prompt, decode `steps` tokens greedily with the KV cache, then compare every step's
// logits with a cache-free forward pass over the final sequence.
expected<exactness> check_exactness(const std::string& name, std::int64_t steps) {
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(name));
  HELIX_ASSIGN_OR_RETURN(const model::model_weights w,
                         model::init_seeded_weights(spec, dtype::f32, model::default_weight_seed));
  HELIX_ASSIGN_OR_RETURN(auto dec, model::decoder::create(w, {.kv_capacity_tokens = 1024}));
  std::vector<std::int32_t> seq;
  for (std::uint64_t i = 0; i < 19; ++i) {
    seq.push_back(static_cast<std::int32_t>(random_words(42, 0, i, rng_purpose::test_data, 0)[0] %
                                            static_cast<std::uint32_t>(spec.vocab)));
  }
  const std::uint64_t id = dec->open_sequence();
  std::vector<float> logits(static_cast<std::size_t>(spec.vocab));
  std::vector<std::vector<float>> step_logits;
  std::span<const std::int32_t> feed(seq);
  for (std::int64_t s = 0; s <= steps; ++s) {
    model::decoder::batch_item item{id, feed, false};
    HELIX_RETURN_IF_ERROR(dec->forward({&item, 1}, logits));
    step_logits.push_back(logits);
    const auto best = std::max_element(logits.begin(), logits.end()) - logits.begin();
    seq.push_back(static_cast<std::int32_t>(best));
    feed = std::span<const std::int32_t>(seq).last(1);
  }
  seq.pop_back();  // the last sampled token was never fed
  HELIX_ASSIGN_OR_RETURN(const tensor full, model::reference_forward(w, seq));
  exactness e{name, steps, 0.0};
  const std::int64_t first = static_cast<std::int64_t>(seq.size()) - steps - 1;
  for (std::int64_t s = 0; s <= steps; ++s) {
    const float* ref = full.as<float>() + (first + s) * spec.vocab;
    for (std::int64_t v = 0; v < spec.vocab; ++v) {
      e.max_abs_diff = std::max(e.max_abs_diff, double{std::fabs(ref[v] - step_logits[s][v])});
    }
  }
  return e;
}

struct sharded_exactness {
  std::string model;
  std::string layout;  // full canonical string
  std::int64_t steps = 0;
  double max_abs_diff = 0;
};

// The engine on `grid` (f32 weights and KV; its workers threads, or processes when
// `worker_binary` is set) decodes a prompt greedily, returning every token's logits row; the
// single-worker decoder is fed the same tokens and every row is compared.
expected<sharded_exactness> check_sharded(const std::string& name, const helix::layout& grid,
                                          std::int64_t steps, const std::string& worker_binary) {
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(name));
  HELIX_ASSIGN_OR_RETURN(const model::model_weights w,
                         model::init_seeded_weights(spec, dtype::f32, model::default_weight_seed));
  HELIX_ASSIGN_OR_RETURN(auto single, model::decoder::create(w, {.kv_capacity_tokens = 1024}));
  std::vector<std::int32_t> prompt;
  for (std::uint64_t i = 0; i < 19; ++i) {
    prompt.push_back(
        static_cast<std::int32_t>(random_words(42, 1, i, rng_purpose::test_data, 0)[0] %
                                  static_cast<std::uint32_t>(spec.vocab)));
  }
  actors::engine_config ec;
  ec.model = name;
  ec.layout = grid.to_string();
  ec.num_workers = grid.num_ranks;
  ec.kv_capacity_tokens_per_worker = 1024;
  ec.max_batch_tokens = 64;
  std::unique_ptr<actors::worker_source> source;
  if (!worker_binary.empty()) {
    cluster::spawned_workers_options so;
    so.worker_binary = worker_binary;
    source = cluster::spawned_workers(so);
  }
  HELIX_ASSIGN_OR_RETURN(auto eng, actors::engine::create(ec, std::move(source)));
  actors::request_options ro;
  ro.prompt = prompt;
  ro.max_tokens = steps + 1;
  ro.return_logits = true;
  HELIX_ASSIGN_OR_RETURN(const actors::request_handle h, eng->submit(ro));
  const std::uint64_t seq = single->open_sequence();
  std::vector<float> ref(static_cast<std::size_t>(spec.vocab));
  sharded_exactness e{name, grid.to_string(), 0, 0.0};
  std::vector<std::int32_t> feed = prompt;
  while (auto ev = h.stream->next()) {
    if (ev->reason == actors::finish_reason::error) return ev->error;
    if (ev->token < 0) continue;
    if (ev->logits.size() != ref.size()) return internal_error("engine returned no logits row");
    const model::decoder::batch_item item{seq, feed, false};
    HELIX_RETURN_IF_ERROR(single->forward({&item, 1}, ref));
    for (std::size_t v = 0; v < ref.size(); ++v) {
      e.max_abs_diff = std::max(e.max_abs_diff, double{std::fabs(ref[v] - ev->logits[v])});
    }
    e.steps = ev->index;
    feed = {ev->token};
  }
  return e;
}

// The long-context comparison: helix's default layout against tp on the same workers.
bench_decode_options decode_options(std::string model, std::int64_t context, std::int64_t batch,
                                    std::int64_t steps, std::int64_t workers) {
  bench_decode_options o;
  o.model = std::move(model);
  o.context = context;
  o.batch = batch;
  o.steps = steps;
  o.workers = workers;
  o.kv_dtype = dtype::bf16;
  return o;
}

// Adds the two cases (helix first, tp last) and checks that their KV fits in memory.
status plan_decode(bench_decode_options& o) {
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(o.model));
  for (const layout_family f : {layout_family::helix, layout_family::tp}) {
    auto l = default_layout(f, o.workers, spec);
    if (!l) {
      return l.error().with_context(
          fmt::format("--workers {} for {}", o.workers, layout_family_name(f)));
    }
    o.cases.push_back({*l, false});
  }
  return check_decode_memory(o);
}

// The multi-agent workload of `helix run`, sized for the demo: a fixed number of requests (so the
// work does not depend on the host's speed) from sessions with long contexts arriving at 2/s.
workload_options agent_options(std::int64_t requests, std::int64_t context, std::int64_t workers) {
  workload_options o;
  o.engine.model = "tiny-llama";
  o.engine.num_workers = workers;
  o.max_agents = 16;
  o.rate = 2.0;
  o.duration_s = 0.0;
  o.max_requests = requests;
  o.context = context;
  o.turns = 3;
  o.max_tokens = 32;
  o.progress_interval_s = 2.0;
  return o;
}

std::string format_gib(std::int64_t bytes) {
  return bytes >= std::int64_t{1} << 30
             ? fmt::format("{:.2f} GiB", static_cast<double>(bytes) / (1 << 30))
             : fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
}
}  // namespace

int run_demo(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  constexpr const char* demo_usage =
      "usage: helix demo [--context 64K] [--decode-model small-llama] [--batch 2] [--steps 8]\n"
      "                  [--workers 8 | --processes N]\n"
      "                  [--agent-requests 32] [--agent-context 4K] [--json]\n"
      "  --context N          synthetic KV tokens per request of the long decode (K/M suffixes)\n"
      "  --decode-model NAME  model of the long decode (default small-llama)\n"
      "  --batch N            requests decoded together\n"
      "  --steps N            timed decode steps per layout (median reported)\n"
      "  --workers N          workers (ranks) as threads of this process\n"
      "  --processes N        N workers as `helix worker` processes instead (UCX data plane)\n"
      "  --agent-requests N   requests of the multi-agent workload (`helix run`)\n"
      "  --agent-context N    its mean first-turn context (K/M suffixes)\n";
  auto a = cli_args::parse(args, {"json", "help"});
  if (!a || !a->check_known({"context", "decode-model", "batch", "steps", "workers", "processes",
                             "agent-requests", "agent-context", "json", "help"})
                 .ok()) {
    err << demo_usage;
    return 2;
  }
  if (a->has("help")) {
    out << demo_usage;
    return 0;
  }
  const bool json = a->has("json");
  const auto context = a->get_size("context", std::int64_t{64} << 10);
  const auto batch = a->get_size("batch", 2);
  const auto steps = a->get_size("steps", 8);
  const auto processes = a->get_size("processes", 0);
  const auto workers = a->get_size("workers", processes && *processes > 0 ? *processes : 8);
  const auto agent_requests = a->get_size("agent-requests", 32);
  const auto agent_context = a->get_size("agent-context", 4096);
  if (!processes || *processes < 0 || *processes > 64 ||
      (*processes > 0 && workers && *workers != *processes)) {
    err << "error: --processes takes 1 to 64 and sets the workers (--workers must match)\n"
        << demo_usage;
    return 2;
  }
  std::string worker_binary;
  if (*processes > 0) {
    auto self = this_program_path();
    if (!self) {
      err << "error: " << self.error().to_string() << "\n";
      return 1;
    }
    worker_binary = std::move(*self);
  }
  if (!context || !batch || !steps || !workers || !agent_requests || !agent_context ||
      *context < 1 || *batch < 1 || *batch > 64 || *steps < 1 || *steps > 4096 || *workers < 1 ||
      *workers > 64 || *agent_requests < 1 || *agent_context < 2) {
    err << "error: --context, --batch (<= 64), --steps (<= 4096), --workers (<= 64), "
           "--agent-requests and --agent-context (>= 2) take positive sizes\n"
        << demo_usage;
    return 2;
  }
  bench_decode_options dopt =
      decode_options(a->get_or("decode-model", "small-llama"), *context, *batch, *steps, *workers);
  dopt.processes = *processes;
  dopt.worker_binary = worker_binary;
  const status planned = plan_decode(dopt);
  if (!planned.ok()) {
    err << "error: " << planned.to_string() << "\n";
    return 2;
  }
  nlohmann::json report;
  bool exact = true;
  if (!json) {
    out << (*processes > 0
                ? fmt::format("Helix demo: {} workers as `helix worker` processes on this host "
                              "(UCX data plane), driven by one engine\n\n",
                              *workers)
                : fmt::format("Helix demo: {} workers as threads of this process (sharing this "
                              "host's cores), driven by one engine\n\n",
                              *workers));
  }
  for (const char* name : {"tiny-llama", "tiny-deepseek"}) {
    err << "checking exactness of " << name << "...\n";
    auto e = check_exactness(name, 64);
    if (!e) {
      err << "error: " << e.error().to_string() << "\n";
      return 1;
    }
    exact = exact && e->max_abs_diff <= exact_tolerance;
    report["exactness"].push_back(
        {{"model", e->model}, {"steps", e->steps}, {"max_abs_logit_diff", e->max_abs_diff}});
    if (!json) {
      out << fmt::format(
          "exactness  {:<14} {} cached decode steps vs cache-free forward: "
          "max |logit diff| {:.2e} {}\n",
          e->model, e->steps, e->max_abs_diff, e->max_abs_diff <= exact_tolerance ? "ok" : "FAIL");
    }
  }
  for (const auto& [name, layout_text] : sharded_checks) {
    auto grid = layout::parse(layout_text);
    if (*processes > 0)
      grid = default_layout(layout_family::helix, *processes, *builtin_model(name));
    if (!grid) {
      err << "error: " << grid.error().with_context(name).to_string() << "\n";
      return 2;
    }
    err << "checking " << name << " on " << grid->to_string() << " against one worker...\n";
    auto e = check_sharded(name, *grid, 16, worker_binary);
    if (!e) {
      err << "error: " << e.error().to_string() << "\n";
      return 1;
    }
    exact = exact && e->max_abs_diff <= exact_tolerance;
    report["sharded_exactness"].push_back({{"model", e->model},
                                           {"layout", e->layout},
                                           {"reference", "single worker"},
                                           {"steps", e->steps},
                                           {"max_abs_logit_diff", e->max_abs_diff}});
    if (!json) {
      out << fmt::format(
          "engine     {:<14} {} vs one worker, {} greedy steps: max |logit diff| {:.2e} {}\n",
          e->model, e->layout, e->steps, e->max_abs_diff,
          e->max_abs_diff <= exact_tolerance ? "ok" : "FAIL");
    }
  }
  workload_options agents = agent_options(*agent_requests, *agent_context, *workers);
  agents.processes = *processes;
  agents.worker_binary = worker_binary;
  err << fmt::format("running the multi-agent workload: {} requests on {} workers...\n",
                     agents.max_requests, agents.engine.num_workers);
  auto agent_report = run_agent_workload(agents, err);
  if (!agent_report) {
    err << "error: " << agent_report.error().to_string() << "\n";
    return 1;
  }
  const bool agents_ok = agent_report->requests_failed == 0 &&
                         agent_report->requests_completed == agent_report->requests_planned;
  report["agents"] = workload_report_json(agents, *agent_report);
  if (!json) {
    out << "\n";
    print_workload_report(out, agents, *agent_report, 6);
  }
  auto results = run_decode_cases(dopt, err);
  if (!results) {
    err << "error: " << results.error().to_string() << "\n";
    return 1;
  }
  report["decode"] = decode_report_json(dopt, *results);
  const decode_case_result& helix_r = results->front();
  const decode_case_result& tp_r = results->back();
  report["helix_speedup_vs_tp"] = helix_r.speedup_vs_tp.value_or(0.0);
  if (json) {
    out << report.dump(2) << "\n";
    return exact && agents_ok ? 0 : 1;
  }
  out << fmt::format(
      "\ndecode     {} on {} workers: {} requests x {} tokens of synthetic bf16 KV, bf16 weights, "
      "median of {} steps\n",
      dopt.model, dopt.workers, dopt.batch, dopt.context, dopt.steps);
  out << fmt::format("  {:<30} {:>11} {:>15} {:>9} {:>10}\n", "layout", "KV/worker", "KV read/step",
                     "tokens/s", "ms/token");
  for (const decode_case_result& r : *results) {
    out << fmt::format("  {:<30} {:>11} {:>15} {:>9.2f} {:>10.1f}\n", r.name,
                       format_gib(r.kv_bytes_per_worker),
                       format_gib(r.kv_bytes_read_per_step_per_worker), r.tokens_per_s, r.step_ms);
  }
  out << fmt::format(
      "  helix vs tp: {:.2f}x tokens/s with {:.2f}x less KV per worker and {:.2f}x less KV read "
      "per step per worker\n",
      helix_r.speedup_vs_tp.value_or(0.0),
      static_cast<double>(tp_r.kv_bytes_per_worker) /
          static_cast<double>(std::max<std::int64_t>(1, helix_r.kv_bytes_per_worker)),
      static_cast<double>(tp_r.kv_bytes_read_per_step_per_worker) /
          static_cast<double>(
              std::max<std::int64_t>(1, helix_r.kv_bytes_read_per_step_per_worker)));
  return exact && agents_ok ? 0 : 1;
}

}  // namespace helix::apps
