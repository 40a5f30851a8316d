#include "apps/plan_cmd.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/calibrate.hpp"
#include "apps/cli_args.hpp"
#include "apps/svg_plot.hpp"
#include "core/model_spec.hpp"
#include "planner/cost_model.hpp"

namespace helix::apps {
namespace {

using planner::plan_family;
using planner::plan_point;
// Keys in the order written: the JSON reads top-down like the summary.
using json = nlohmann::ordered_json;

constexpr const char* plan_usage =
    "usage: helix plan [options]\n"
    "  --model NAME             built-in model (default deepseek-r1)\n"
    "  --hardware NAME          hardware preset (default gb200-nvl72)\n"
    "  --context N              KV tokens per request, K/M/G suffixes (default 1M)\n"
    "  --max-gpus N             most devices searched (default min(64, the preset's domain))\n"
    "  --precision P            weights, KV and compute: fp4, fp8, bf16, f32 (default fp4)\n"
    "  --weight-precision P     override for the weights\n"
    "  --kv-precision P         override for the KV cache\n"
    "  --compute-precision P    override for the arithmetic\n"
    "  --activation-precision P collectives' payload (default bf16)\n"
    "  --batches LIST           batch sizes searched (default powers of two 1..4096)\n"
    "  --families LIST          helix,tp,tp_pp,dp_ep,medha (default all)\n"
    "  --no-hopb                Helix without HOP-B\n"
    "  --ttl-ms X               query: the best layout and batch within X ms per token\n"
    "  --plot FILE.svg          write an SVG chart of the per-family Pareto frontiers\n"
    "  --calibrate              measure this machine and plan on the calibrated cpu preset\n"
    "  --link-latency-us X      override the preset's fixed cost of one collective phase\n"
    "  --threads N              calibration threads (default every core)\n"
    "  --quick                  calibration with small buffers (faster, less accurate)\n"
    "  --json                   JSON on stdout instead of a summary\n";

constexpr const char* calibrate_usage =
    "usage: helix calibrate [options]\n"
    "Measures this machine's streaming-read bandwidth, local all-reduce latency and bandwidth\n"
    "(2 ranks), f32 GEMM FLOPs and memory, and prints the calibrated `cpu` planner preset.\n"
    "  --threads N   stream and GEMM threads (default every core)\n"
    "  --quick       small buffers: under a second, less accurate\n"
    "  --json        JSON on stdout instead of a table\n";

constexpr std::array<plan_family, 5> all_families = {plan_family::helix, plan_family::tp,
                                                     plan_family::tp_pp, plan_family::dp_ep,
                                                     plan_family::medha};

struct plan_options {
  std::string model = "deepseek-r1";
  std::string hardware = "gb200-nvl72";
  std::int64_t context = std::int64_t{1} << 20;
  std::optional<std::int64_t> max_gpus;
  planner::plan_workload workload;
  std::vector<std::int64_t> batches;
  std::vector<plan_family> families;  // never empty after parsing
  bool hopb = true;
  std::optional<double> ttl_ms;
  std::optional<double> link_latency_us;  // overrides the preset's collective latency
  std::string plot_path;
  bool json = false;
  bool calibrate = false;
  calibration_options calibration;
};

expected<plan_family> parse_family(std::string name) {
  std::replace(name.begin(), name.end(), '-', '_');
  for (const plan_family f : all_families) {
    if (planner::plan_family_name(f) == name) return f;
  }
  std::string names;
  for (const plan_family f : all_families) {
    names += (names.empty() ? "" : ", ") + std::string(planner::plan_family_name(f));
  }
  return invalid_argument("unknown family '{}' (families: {})", name, names);
}

expected<planner::precision> precision_flag(const cli_args& cli, const std::string& flag,
                                            planner::precision fallback) {
  const auto v = cli.get(flag);
  if (!v) return fallback;
  auto p = planner::parse_precision(*v);
  if (!p) return p.error().with_context("--" + flag);
  return p;
}

expected<calibration_options> parse_calibration(const cli_args& cli) {
  calibration_options o = cli.has("quick") ? calibration_options::quick() : calibration_options{};
  HELIX_ASSIGN_OR_RETURN(const std::int64_t threads, cli.get_int("threads", 0));
  if (threads < 0 || threads > 1024) {
    return invalid_argument("--threads must be between 1 and 1024 (or 0 for every core)");
  }
  o.threads = static_cast<int>(threads);
  return o;
}

expected<plan_options> parse_plan_options(const cli_args& cli) {
  HELIX_RETURN_IF_ERROR(cli.check_known({"model",
                                         "hardware",
                                         "context",
                                         "max-gpus",
                                         "precision",
                                         "weight-precision",
                                         "kv-precision",
                                         "compute-precision",
                                         "activation-precision",
                                         "batches",
                                         "families",
                                         "no-hopb",
                                         "ttl-ms",
                                         "link-latency-us",
                                         "plot",
                                         "calibrate",
                                         "threads",
                                         "quick",
                                         "json",
                                         "help"}));
  plan_options o;
  o.calibrate = cli.has("calibrate");
  o.model = cli.get_or("model", o.model);
  o.hardware = cli.get_or("hardware", o.calibrate ? "cpu" : o.hardware);
  if (o.calibrate && o.hardware != "cpu") {
    return invalid_argument("--calibrate measures this machine: it needs --hardware cpu, not '{}'",
                            o.hardware);
  }
  if (!o.calibrate && (cli.has("threads") || cli.has("quick"))) {
    return invalid_argument("--threads and --quick tune --calibrate; pass --calibrate too");
  }
  HELIX_ASSIGN_OR_RETURN(o.calibration, parse_calibration(cli));
  HELIX_ASSIGN_OR_RETURN(o.context, cli.get_size("context", o.context));
  if (o.context < 1) return invalid_argument("--context must be at least 1 token");
  if (cli.has("link-latency-us")) {
    HELIX_ASSIGN_OR_RETURN(const double us, cli.get_double("link-latency-us", 0.0));
    if (!(us >= 0.0) || us > 1e6) {
      return invalid_argument("--link-latency-us must be in [0, 1e6], got {}", us);
    }
    o.link_latency_us = us;
  }
  if (cli.has("max-gpus")) {
    HELIX_ASSIGN_OR_RETURN(const std::int64_t n, cli.get_int("max-gpus", 0));
    if (n < 1) return invalid_argument("--max-gpus must be at least 1, got {}", n);
    o.max_gpus = n;
  }
  HELIX_ASSIGN_OR_RETURN(const planner::precision all,
                         precision_flag(cli, "precision", planner::precision::fp4));
  o.workload.context = o.context;
  HELIX_ASSIGN_OR_RETURN(o.workload.weights, precision_flag(cli, "weight-precision", all));
  HELIX_ASSIGN_OR_RETURN(o.workload.kv, precision_flag(cli, "kv-precision", all));
  HELIX_ASSIGN_OR_RETURN(o.workload.compute, precision_flag(cli, "compute-precision", all));
  HELIX_ASSIGN_OR_RETURN(o.workload.activations,
                         precision_flag(cli, "activation-precision", o.workload.activations));
  if (const auto b = cli.get("batches")) {
    auto list = parse_int_list(*b);
    if (!list) return list.error().with_context("--batches");
    if (list->empty()) return invalid_argument("--batches: empty list");
    for (const std::int64_t v : *list) {
      if (v < 1) return invalid_argument("--batches: batch {} must be at least 1", v);
    }
    o.batches = std::move(*list);
  }
  if (const auto f = cli.get("families"); f && *f != "all") {
    for (std::size_t start = 0; start <= f->size();) {
      const std::size_t comma = std::min(f->find(',', start), f->size());
      auto fam = parse_family(f->substr(start, comma - start));
      if (!fam) return fam.error().with_context("--families");
      if (std::find(o.families.begin(), o.families.end(), *fam) == o.families.end()) {
        o.families.push_back(*fam);
      }
      start = comma + 1;
    }
  } else {
    o.families.assign(all_families.begin(), all_families.end());
  }
  o.hopb = !cli.has("no-hopb");
  if (cli.has("ttl-ms")) {
    HELIX_ASSIGN_OR_RETURN(const double t, cli.get_double("ttl-ms", 0));
    if (!(t > 0)) return invalid_argument("--ttl-ms must be positive, got {}", t);
    o.ttl_ms = t;
  }
  o.plot_path = cli.get_or("plot", "");
  if (cli.has("plot") && o.plot_path.empty()) return invalid_argument("--plot needs a file name");
  o.json = cli.has("json");
  return o;
}

// "1M", "128K" or the plain count.
std::string context_label(std::int64_t tokens) {
  if (tokens % (std::int64_t{1} << 30) == 0) return fmt::format("{}G", tokens >> 30);
  if (tokens % (std::int64_t{1} << 20) == 0) return fmt::format("{}M", tokens >> 20);
  if (tokens % (std::int64_t{1} << 10) == 0) return fmt::format("{}K", tokens >> 10);
  return std::to_string(tokens);
}

// nlohmann writes non-finite numbers as null; keep them explicit.
json number(double v) {
  return std::isfinite(v) ? json(v) : json(nullptr);
}

json hardware_json(const planner::hardware& hw) {
  return {{"name", hw.name},
          {"hbm_bytes_per_s", number(hw.hbm_bytes_per_s)},
          {"hbm_capacity_bytes", number(hw.hbm_capacity_bytes)},
          {"link_bytes_per_s", number(hw.link_bytes_per_s)},
          {"link_latency_s", number(hw.link_latency_s)},
          {"flops_fp4", number(hw.flops_fp4)},
          {"flops_fp8", number(hw.flops_fp8)},
          {"flops_bf16", number(hw.flops_bf16)},
          {"flops_f32", number(hw.flops_f32)},
          {"max_devices", hw.max_devices},
          {"achievable_bandwidth", number(hw.achievable_bandwidth)},
          {"achievable_flops", number(hw.achievable_flops)},
          {"sources", hw.sources}};
}

json calibration_json(const calibration& c) {
  return {{"threads", c.threads},
          {"stream", {{"bytes", c.stream_bytes}, {"bytes_per_s", number(c.stream_bytes_per_s)}}},
          {"all_reduce",
           {{"ranks", 2},
            {"small_message_bytes", c.small_message_bytes},
            {"latency_s", number(c.all_reduce_latency_s)},
            {"large_message_bytes", c.large_message_bytes},
            {"bytes_per_s", number(c.all_reduce_bytes_per_s)}}},
          {"gemm",
           {{"m", c.gemm_m},
            {"n", c.gemm_n},
            {"k", c.gemm_k},
            {"dtype", "f32"},
            {"flops_per_s", number(c.gemm_flops_per_s)}}},
          {"fma_peak_flops_per_s", number(c.fma_peak_flops_per_s)},
          {"physical_memory_bytes", number(c.physical_memory_bytes)},
          {"hardware", hardware_json(c.hw)}};
}

json point_json(const plan_point& p) {
  const planner::plan_config& c = p.config;
  const planner::step_cost& s = p.cost;
  return {{"family", std::string(planner::plan_family_name(c.family))},
          {"config", c.to_string()},
          {"num_gpus", c.num_devices},
          {"batch", c.batch},
          {"kvp", c.kvp},
          {"tpa", c.tpa},
          {"tpf", c.tpf},
          {"ep", c.ep},
          {"pp", c.pp},
          {"dp", c.dp},
          {"hopb", c.hopb},
          {"ttl_ms", number(s.step_s * 1e3)},
          {"tokens_per_s_per_user", number(s.tokens_per_s_per_user)},
          {"tokens_per_s_per_gpu", number(s.tokens_per_s_per_device)},
          {"memory_bytes_per_gpu", number(s.memory_bytes_per_device)},
          {"weight_bytes_per_gpu", number(s.weight_bytes_per_device)},
          {"kv_bytes_per_gpu", number(s.kv_bytes_per_device)}};
}

// What one run found: every feasible point and each family's frontier.
struct plan_result {
  model_spec spec;
  planner::hardware hw;
  std::optional<calibration> calib;
  std::int64_t max_gpus = 0;
  std::vector<plan_point> points;
  std::vector<std::pair<plan_family, std::vector<plan_point>>> frontiers;  // option order
  std::optional<planner::headline> head;
  std::string headline_note;  // why there is no headline
};

// The model and the hardware named by the options: usage errors (exit code 2) when unknown.
expected<plan_result> resolve_inputs(const plan_options& o) {
  plan_result r;
  HELIX_ASSIGN_OR_RETURN(r.spec, builtin_model(o.model));
  HELIX_ASSIGN_OR_RETURN(r.hw, planner::hardware_preset(o.hardware));
  if (o.link_latency_us) {
    r.hw.link_latency_s = *o.link_latency_us * 1e-6;
    r.hw.sources +=
        fmt::format("; link latency set to {} us by --link-latency-us", *o.link_latency_us);
  }
  r.max_gpus = o.max_gpus.value_or(std::min<std::int64_t>(64, r.hw.max_devices));
  if (r.max_gpus > r.hw.max_devices) {
    return invalid_argument("--max-gpus {} exceeds {}'s scale-up domain of {} devices", r.max_gpus,
                            r.hw.name, r.hw.max_devices);
  }
  return r;
}

// The search, the per-family frontiers and the headline.
expected<plan_result> search(const plan_options& o, plan_result r) {
  planner::search_options so;
  so.max_devices = r.max_gpus;
  so.batches = o.batches;
  so.families = o.families;
  so.hopb = o.hopb;
  HELIX_ASSIGN_OR_RETURN(r.points, planner::search_layouts(r.spec, r.hw, o.workload, so));
  for (const plan_family f : o.families) {
    std::vector<plan_point> mine;
    for (const plan_point& p : r.points) {
      if (p.config.family == f) mine.push_back(p);
    }
    r.frontiers.emplace_back(f, planner::pareto_frontier(std::move(mine)));
  }
  const bool has_helix =
      std::find(o.families.begin(), o.families.end(), plan_family::helix) != o.families.end();
  if (!has_helix || o.families.size() < 2) {
    r.headline_note = "the headline compares helix with other families: pass both to --families";
  } else if (auto h = planner::headline_ratios(r.points)) {
    r.head = *h;
  } else {
    r.headline_note = h.error().message();
  }
  return r;
}

std::string precision_label(const planner::plan_workload& w) {
  return fmt::format("weights {}, KV {}, compute {}, activations {}",
                     planner::precision_name(w.weights), planner::precision_name(w.kv),
                     planner::precision_name(w.compute), planner::precision_name(w.activations));
}

std::string family_label(plan_family f, bool hopb) {
  switch (f) {
    case plan_family::helix:
      return hopb ? "helix (KVP x TPA | TPF x EP, HOP-B)" : "helix (KVP x TPA | TPF x EP)";
    case plan_family::tp:
      return "tp (tensor parallel)";
    case plan_family::tp_pp:
      return "tp_pp (TP x pipeline)";
    case plan_family::dp_ep:
      return "dp_ep (DP attention, EP FFN)";
    case plan_family::medha:
      return "medha (KVP, TP tied)";
  }
  return std::string(planner::plan_family_name(f));
}

// The batches searched: the option, or search_options' documented default (powers of two
// 1..4096).
std::vector<std::int64_t> batches_searched(const plan_options& o) {
  if (!o.batches.empty()) return o.batches;
  std::vector<std::int64_t> out;
  for (std::int64_t b = 1; b <= 4096; b *= 2) out.push_back(b);
  return out;
}

json header_json(const plan_options& o, const plan_result& r) {
  json j = {{"model", r.spec.name},
            {"hardware", hardware_json(r.hw)},
            {"context", o.context},
            {"max_gpus", r.max_gpus},
            {"precision",
             {{"weights", std::string(planner::precision_name(o.workload.weights))},
              {"kv", std::string(planner::precision_name(o.workload.kv))},
              {"compute", std::string(planner::precision_name(o.workload.compute))},
              {"activations", std::string(planner::precision_name(o.workload.activations))}}},
            {"hopb", o.hopb},
            {"batches", batches_searched(o)},
            {"families", json::array()},
            {"num_feasible", r.points.size()}};
  j["num_feasible_per_family"] = json::object();
  for (const plan_family f : o.families) {
    j["families"].push_back(std::string(planner::plan_family_name(f)));
    j["num_feasible_per_family"][std::string(planner::plan_family_name(f))] =
        std::count_if(r.points.begin(), r.points.end(),
                      [f](const plan_point& p) { return p.config.family == f; });
  }
  if (r.calib) j["calibration"] = calibration_json(*r.calib);
  return j;
}

std::string point_row(const plan_point& p) {
  const planner::step_cost& s = p.cost;
  return fmt::format("{:>4} {:>6} {:>9.3f} {:>11.2f} {:>11.2f} {:>8.1f}  {}", p.config.num_devices,
                     p.config.batch, s.step_s * 1e3, s.tokens_per_s_per_user,
                     s.tokens_per_s_per_device, s.memory_bytes_per_device / 1e9,
                     p.config.to_string());
}

constexpr const char* row_header = "   N  batch    TTL ms  tok/s/user   tok/s/GPU   GB/GPU  config";

void print_summary(std::ostream& out, const plan_options& o, const plan_result& r) {
  out << fmt::format("helix plan: {} on {} (up to {} devices), context {} tokens\n", r.spec.name,
                     r.hw.name, r.max_gpus, context_label(o.context));
  out << fmt::format("  {}; HOP-B {}\n", precision_label(o.workload), o.hopb ? "on" : "off");
  out << fmt::format("{} feasible configurations; Pareto frontier sizes:", r.points.size());
  for (const auto& [f, front] : r.frontiers) {
    out << fmt::format("{} {} {}{}", f == r.frontiers.front().first ? "" : ",",
                       planner::plan_family_name(f), front.size(),
                       front.empty() ? " (none feasible)" : "");
  }
  out << "\n";
  if (r.head) {
    out << "headline (helix against the best baseline, the union of the other families):\n";
    out << fmt::format("  throughput at equal TTL: {:.2f}x (at TTL {:.3f} ms)\n",
                       r.head->throughput_ratio_at_equal_ttl, r.head->ttl_ms_at_max_ratio);
    out << fmt::format("  interactivity:           {:.2f}x\n", r.head->interactivity_ratio);
  } else {
    out << "headline: none (" << r.headline_note << ")\n";
  }
  out << "best points per family (the two ends of its frontier):\n";
  out << fmt::format("  {:<6} {:<17} {}\n", "family", "end", row_header);
  for (const auto& [f, front] : r.frontiers) {
    const std::string name(planner::plan_family_name(f));
    if (front.empty()) {
      out << fmt::format("  {:<6} no feasible configuration (memory or layout rules)\n", name);
      continue;
    }
    // Sorted by tokens/s/user ascending: the first point has the most tokens/s/GPU.
    out << fmt::format("  {:<6} {:<17} {}\n", name, "max throughput", point_row(front.front()));
    if (front.size() > 1) {
      out << fmt::format("  {:<6} {:<17} {}\n", "", "max interactivity", point_row(front.back()));
    }
  }
}

json frontier_json(const plan_options& o, const plan_result& r) {
  json j = header_json(o, r);
  j["frontier"] = json::object();
  j["best"] = json::object();
  for (const auto& [f, front] : r.frontiers) {
    const std::string name(planner::plan_family_name(f));
    json pts = json::array();
    for (const plan_point& p : front) pts.push_back(point_json(p));
    j["frontier"][name] = std::move(pts);
    if (!front.empty()) {
      j["best"][name] = {{"max_throughput", point_json(front.front())},
                         {"max_interactivity", point_json(front.back())}};
    }
  }
  if (r.head) {
    j["headline"] = {
        {"throughput_ratio_at_equal_ttl", number(r.head->throughput_ratio_at_equal_ttl)},
        {"ttl_ms_at_max_ratio", number(r.head->ttl_ms_at_max_ratio)},
        {"interactivity_ratio", number(r.head->interactivity_ratio)}};
  } else {
    j["headline"] = nullptr;
    j["headline_note"] = r.headline_note;
  }
  if (!o.plot_path.empty()) j["plot"] = o.plot_path;
  return j;
}

status write_plot(const plan_options& o, const plan_result& r) {
  svg_plot_options po;
  po.title = fmt::format("{} on {}: decode Pareto frontiers", r.spec.name, r.hw.name);
  const planner::plan_workload& w = o.workload;
  const std::string precision =
      w.weights == w.kv && w.kv == w.compute
          ? fmt::format("{} weights, KV and compute", planner::precision_name(w.kv))
          : precision_label(w);
  po.subtitle = fmt::format("context {} tokens, {}, up to {} devices, HOP-B {}",
                            context_label(o.context), precision, r.max_gpus, o.hopb ? "on" : "off");
  if (r.head) {
    po.subtitle += fmt::format(
        "\nhelix against the best baseline: {:.2f}x tokens/s/GPU at equal TTL ({:.3g} ms), "
        "{:.2f}x tokens/s/user",
        r.head->throughput_ratio_at_equal_ttl, r.head->ttl_ms_at_max_ratio,
        r.head->interactivity_ratio);
  }
  po.x_label = "tokens/s/user (interactivity, 1/TTL)";
  po.y_label = "tokens/s/GPU (throughput)";
  std::vector<svg_series> series;
  for (const auto& [f, front] : r.frontiers) {
    svg_series s;
    s.name = family_label(f, o.hopb);
    for (const plan_point& p : front) {
      s.points.push_back({p.cost.tokens_per_s_per_user, p.cost.tokens_per_s_per_device});
    }
    series.push_back(std::move(s));
  }
  HELIX_ASSIGN_OR_RETURN(const std::string svg, render_svg_plot(po, series));
  std::ofstream file(o.plot_path, std::ios::binary | std::ios::trunc);
  if (!file) return failed_precondition("cannot open plot file '{}' for writing", o.plot_path);
  file << svg;
  file.close();
  if (!file) return failed_precondition("writing plot file '{}' failed", o.plot_path);
  return ok_status();
}

// Query mode: the best point within the TTL, overall and per family.
int answer_query(std::ostream& out, std::ostream& err, const plan_options& o,
                 const plan_result& r) {
  const double ttl = *o.ttl_ms;
  auto best = planner::best_within_ttl(r.points, ttl);
  if (!best) {
    double fastest = std::numeric_limits<double>::infinity();
    for (const plan_point& p : r.points) fastest = std::min(fastest, p.cost.step_s * 1e3);
    err << fmt::format("error: no feasible configuration within {} ms per token{}\n", ttl,
                       std::isfinite(fastest)
                           ? fmt::format(" (the fastest takes {:.3f} ms)", fastest)
                           : std::string(" (none is feasible at all)"));
    return 1;
  }
  std::vector<std::pair<plan_family, std::optional<plan_point>>> per_family;
  for (const auto& [f, front] : r.frontiers) {
    auto b = planner::best_within_ttl(front, ttl);
    per_family.emplace_back(f, b ? std::optional<plan_point>(*b) : std::nullopt);
  }
  if (o.json) {
    json j = header_json(o, r);
    j["ttl_ms"] = ttl;
    j["best"] = point_json(*best);
    j["best_per_family"] = json::object();
    for (const auto& [f, p] : per_family) {
      j["best_per_family"][std::string(planner::plan_family_name(f))] =
          p ? point_json(*p) : json(nullptr);
    }
    if (!o.plot_path.empty()) j["plot"] = o.plot_path;
    out << j.dump(2) << "\n";
    return 0;
  }
  out << fmt::format("helix plan: {} on {} (up to {} devices), context {} tokens, {}\n",
                     r.spec.name, r.hw.name, r.max_gpus, context_label(o.context),
                     precision_label(o.workload));
  out << fmt::format("best within TTL {} ms: {} on {} devices\n", ttl, best->config.to_string(),
                     best->config.num_devices);
  out << fmt::format("  TTL {:.3f} ms, {:.2f} tokens/s/user, {:.2f} tokens/s/GPU, {:.1f} GB/GPU\n",
                     best->cost.step_s * 1e3, best->cost.tokens_per_s_per_user,
                     best->cost.tokens_per_s_per_device, best->cost.memory_bytes_per_device / 1e9);
  out << fmt::format("per family:\n  {:<6} {}\n", "family", row_header);
  for (const auto& [f, p] : per_family) {
    const std::string name(planner::plan_family_name(f));
    out << fmt::format("  {:<6} {}\n", name,
                       p ? point_row(*p) : fmt::format("none within {} ms", ttl));
  }
  return 0;
}

int usage_error(std::ostream& err, const status& st) {
  err << "error: " << st.message() << "\n";
  return 2;
}

}  // namespace

int run_plan(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  auto cli = cli_args::parse(args, {"json", "no-hopb", "calibrate", "quick", "help"});
  if (!cli) {
    err << "error: " << cli.error().message() << "\n" << plan_usage;
    return 2;
  }
  if (cli->has("help")) {
    out << plan_usage;
    return 0;
  }
  auto opts = parse_plan_options(*cli);
  if (!opts) return usage_error(err, opts.error());
  auto resolved = resolve_inputs(*opts);
  if (!resolved) return usage_error(err, resolved.error());
  plan_result& result = *resolved;
  if (opts->calibrate) {
    auto c = measure_cpu(opts->calibration, err);
    if (!c) {
      err << "error: calibration failed: " << c.error().message() << "\n";
      return 1;
    }
    result.hw = c->hw;
    result.calib = std::move(*c);
    if (result.max_gpus > result.hw.max_devices) {
      return usage_error(err, invalid_argument("--max-gpus {} exceeds the calibrated domain of {}",
                                               result.max_gpus, result.hw.max_devices));
    }
  }
  auto searched = search(*opts, std::move(result));
  if (!searched) {
    // The search rejects options (invalid_argument) or fails inside the model (anything else).
    const status st = searched.error();
    if (st.code() == errc::invalid_argument) return usage_error(err, st);
    err << "error: " << st.message() << "\n";
    return 1;
  }
  if (!opts->plot_path.empty()) {
    const status st = write_plot(*opts, *searched);
    if (!st.ok()) {
      err << "error: " << st.message() << "\n";
      return 1;
    }
  }
  if (opts->ttl_ms) return answer_query(out, err, *opts, *searched);
  if (opts->json) {
    out << frontier_json(*opts, *searched).dump(2) << "\n";
  } else {
    print_summary(out, *opts, *searched);
    if (!opts->plot_path.empty()) out << "plot written to " << opts->plot_path << "\n";
  }
  return 0;
}

int run_calibrate(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  auto cli = cli_args::parse(args, {"json", "quick", "help"});
  if (!cli) {
    err << "error: " << cli.error().message() << "\n" << calibrate_usage;
    return 2;
  }
  if (cli->has("help")) {
    out << calibrate_usage;
    return 0;
  }
  if (const status st = cli->check_known({"threads", "quick", "json", "help"}); !st.ok()) {
    return usage_error(err, st);
  }
  auto o = parse_calibration(*cli);
  if (!o) return usage_error(err, o.error());
  auto c = measure_cpu(*o, err);
  if (!c) {
    err << "error: " << c.error().message() << "\n";
    return 1;
  }
  auto preset = planner::hardware_preset("cpu");
  if (!preset) {
    err << "error: " << preset.error().message() << "\n";
    return 1;
  }
  if (cli->has("json")) {
    json j = calibration_json(*c);
    j["preset"] = hardware_json(*preset);
    out << j.dump(2) << "\n";
    return 0;
  }
  const planner::hardware& hw = c->hw;
  out << fmt::format(
      "calibration of the cpu preset on this machine ({} threads; a planner device is one "
      "thread)\n",
      c->threads);
  out << fmt::format("{:<16} {:>9} {:>11} {:>13}  {}\n", "", "machine", "per device",
                     "built-in cpu", "how");
  out << fmt::format(
      "{:<16} {:>9.2f} {:>11.2f} {:>13.2f}  streaming read of {} MiB, median of {}\n",
      "memory GB/s", c->stream_bytes_per_s / 1e9, hw.hbm_bytes_per_s / 1e9,
      preset->hbm_bytes_per_s / 1e9, c->stream_bytes >> 20, o->repeats);
  out << fmt::format("{:<16} {:>9.1f} {:>11.1f} {:>13.1f}  sysconf\n", "memory GiB",
                     c->physical_memory_bytes / (1 << 30), hw.hbm_capacity_bytes / (1 << 30),
                     preset->hbm_capacity_bytes / (1 << 30));
  out << fmt::format(
      "{:<16} {:>9.2f} {:>11.2f} {:>13.2f}  all-reduce of {} MiB between 2 ranks (bytes/time; "
      "link: time above 2 latencies)\n",
      "link GB/s", c->all_reduce_bytes_per_s / 1e9, hw.link_bytes_per_s / 1e9,
      preset->link_bytes_per_s / 1e9, c->large_message_bytes >> 20);
  out << fmt::format(
      "{:<16} {:>9.2f} {:>11.2f} {:>13.2f}  all-reduce of {} B between 2 ranks (a phase: half)\n",
      "latency us", c->all_reduce_latency_s * 1e6, hw.link_latency_s * 1e6,
      preset->link_latency_s * 1e6, c->small_message_bytes);
  out << fmt::format(
      "{:<16} {:>9.1f} {:>11.1f} {:>13.1f}  kernels::gemm f32 {}x{}x{}, median of {}\n",
      "f32 GFLOP/s", c->gemm_flops_per_s / 1e9, hw.flops_f32 / 1e9, preset->flops_f32 / 1e9,
      c->gemm_m, c->gemm_n, c->gemm_k, o->repeats);
  out << fmt::format(
      "{:<16} {:>9.1f} {:>11.1f} {:>13}  f32 multiply-adds in registers, median of {} (the "
      "ceiling; not used by the planner)\n",
      "FMA peak GFLOP/s", c->fma_peak_flops_per_s / 1e9, c->fma_peak_flops_per_s / c->threads / 1e9,
      "-", o->repeats);
  out << "Use it with: helix plan --hardware cpu --calibrate ...\n";
  return 0;
}

}  // namespace helix::apps
