#include "apps/bench_decode.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include <fmt/format.h>

#include "actors/engine.hpp"
#include "apps/cli_args.hpp"
#include "apps/measure.hpp"
#include "cluster/cluster.hpp"
#include "core/kv_layout.hpp"
#include "core/memory.hpp"
#include "core/model_spec.hpp"
#include "kernels/sampling.hpp"
#include "model/weights.hpp"
#include "transport/netns.hpp"

namespace helix::apps {
namespace {

constexpr const char* bench_usage =
    "usage: helix bench decode [options]\n"
    "  --model NAME            built-in model spec (default small-llama)\n"
    "  --context N             synthetic KV tokens per sequence, K/M suffixes (default 128K)\n"
    "  --batch N               sequences, one decode token each per step (default 2)\n"
    "  --workers N             workers (ranks) of every layout (default 8)\n"
    "  --layouts LIST          layout families helix,tp,medha, each with its default grid for\n"
    "                          --workers (default helix,tp unless --layout is given)\n"
    "  --layout STRING         a canonical layout, e.g. helix:kvp=4,tpa=2; repeat the flag or\n"
    "                          separate several with ';' (rank count must equal --workers)\n"
    "  --hopb on|off|both      HOP-B overlap of the all-to-all (default off; both = run twice)\n"
    "  --kv-dtype T            KV storage dtype bf16|f32|fp8_e4m3 (default bf16)\n"
    "  --weight-dtype T        weights bf16|fp8_e4m3 (default bf16; fp8_e4m3: linear weights\n"
    "                          block-scaled in FP8, dequantized inside the GEMV)\n"
    "  --steps N               timed decode steps per case, median reported (default 8)\n"
    "  --warmup N              untimed decode steps before them (default 1)\n"
    "  --threads-per-rank N    kernel threads of every worker (default 1)\n"
    "  --processes N           workers as N `helix worker` processes (UCX data plane)\n"
    "  --netns                 with --processes: each worker a network namespace of its own\n"
    "                          (UCX over TCP between them; needs root)\n"
    "  --json                  JSON on stdout instead of a table\n";

constexpr std::uint64_t weight_seed = model::default_weight_seed;
constexpr std::uint64_t kv_seed = 11;
constexpr double max_memory_fraction = 0.7;
// Tokens every request but the timed (last) one generates beyond it (see run_case).
constexpr std::int64_t lead_tokens = 4;

std::string format_bytes(double bytes) {
  if (bytes >= double(1 << 30)) return fmt::format("{:.2f} GiB", bytes / double(1 << 30));
  if (bytes >= double(1 << 20)) return fmt::format("{:.1f} MiB", bytes / double(1 << 20));
  return fmt::format("{:.1f} KiB", bytes / 1024.0);
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t end = std::min(text.find(sep, start), text.size());
    out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// Tokens a request reserves: the synthetic context, one prompt token and every generated token
// (the first, warm-up and timed decode steps, and the lead of the untimed requests).
std::int64_t tokens_per_sequence(const bench_decode_options& o) {
  return o.context + 1 + 1 + o.warmup + o.steps + lead_tokens;
}

// The KV page of rank `rank` of `l` (its KV heads).
kv_page_layout rank_page_layout(const helix::layout& l, std::int64_t rank, const model_spec& spec,
                                dtype type) {
  kv_page_layout p;
  p.num_kv_heads = spec.is_mla() ? 1 : l.rank_kv_heads(rank, spec).count;
  p.key_dim = spec.kv_key_dim();
  p.value_dim = spec.kv_value_dim();
  p.block_tokens = default_block_tokens;
  p.type = type;
  p.value_in_key = spec.is_mla();
  return p;
}

expected<std::vector<bool>> parse_hopb(const std::string& s) {
  if (s == "off") return std::vector<bool>{false};
  if (s == "on") return std::vector<bool>{true};
  if (s == "both") return std::vector<bool>{false, true};
  return invalid_argument("--hopb: '{}' is not on, off or both", s);
}

// Appends (l, h) for every HOP-B setting h, skipping cases already listed.
void add_cases(bench_decode_options& o, const helix::layout& l, const std::vector<bool>& hopb) {
  for (const bool h : hopb) {
    const bool dup = std::any_of(o.cases.begin(), o.cases.end(), [&](const decode_case& c) {
      return c.layout == l && c.hopb == h;
    });
    if (!dup) o.cases.push_back({l, h});
  }
}

}  // namespace

std::int64_t kv_tokens_per_rank(const helix::layout& l, std::int64_t tokens_per_seq,
                                std::int64_t batch, std::int64_t block_tokens) {
  return actors::kv_capacity_for(batch, tokens_per_seq, l.kvp, block_tokens,
                                 actors::engine_config{}.rebalance_threshold);
}

expected<bench_decode_options> parse_bench_decode_args(const std::vector<std::string>& args) {
  // cli_args keeps one value per flag, so the repeatable --layout is taken out here first.
  std::vector<std::string> layout_texts;
  std::vector<std::string> rest;
  for (std::size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--layout") {
      if (i + 1 >= args.size()) return invalid_argument("--layout needs a value");
      layout_texts.push_back(args[++i]);
    } else if (args[i].rfind("--layout=", 0) == 0) {
      layout_texts.push_back(args[i].substr(9));
    } else {
      rest.push_back(args[i]);
    }
  }
  HELIX_ASSIGN_OR_RETURN(const cli_args cli, cli_args::parse(rest, {"json", "help", "netns"}));
  HELIX_RETURN_IF_ERROR(cli.check_known(
      {"model", "context", "batch", "workers", "layouts", "hopb", "kv-dtype", "weight-dtype",
       "steps", "warmup", "threads-per-rank", "processes", "netns", "json", "help"}));
  bench_decode_options o;
  o.model = cli.get_or("model", o.model);
  HELIX_ASSIGN_OR_RETURN(o.context, cli.get_size("context", o.context));
  HELIX_ASSIGN_OR_RETURN(o.batch, cli.get_size("batch", o.batch));
  HELIX_ASSIGN_OR_RETURN(o.workers, cli.get_size("workers", o.workers));
  HELIX_ASSIGN_OR_RETURN(o.steps, cli.get_size("steps", o.steps));
  HELIX_ASSIGN_OR_RETURN(o.warmup, cli.get_int("warmup", o.warmup));
  HELIX_ASSIGN_OR_RETURN(const std::int64_t threads, cli.get_int("threads-per-rank", 1));
  if (cli.has("processes")) {
    HELIX_ASSIGN_OR_RETURN(o.processes, cli.get_int("processes", 0));
    if (o.processes < 1 || o.processes > 64) {
      return invalid_argument("--processes must be in [1, 64], got {}", o.processes);
    }
    if (!cli.has("workers")) o.workers = o.processes;
    if (o.workers != o.processes) {
      return invalid_argument("--processes {} but --workers {}", o.processes, o.workers);
    }
    HELIX_ASSIGN_OR_RETURN(o.worker_binary, this_program_path());
  }
  o.netns = cli.has("netns");
  if (o.netns && o.processes == 0) return invalid_argument("--netns needs --processes N");
  if (o.context < 1) return invalid_argument("--context must be at least 1, got {}", o.context);
  if (o.batch < 1 || o.batch > 4096) {
    return invalid_argument("--batch must be in [1, 4096], got {}", o.batch);
  }
  if (o.workers < 1 || o.workers > 1024) {
    return invalid_argument("--workers must be in [1, 1024], got {}", o.workers);
  }
  if (o.steps < 1 || o.steps > 1 << 20) {
    return invalid_argument("--steps must be in [1, 1M], got {}", o.steps);
  }
  if (o.warmup < 0 || o.warmup > 1 << 20) {
    return invalid_argument("--warmup must be in [0, 1M], got {}", o.warmup);
  }
  if (threads < 1 || threads > 1024) {
    return invalid_argument("--threads-per-rank must be in [1, 1024], got {}", threads);
  }
  o.threads_per_rank = static_cast<int>(threads);
  auto kv = parse_dtype(cli.get_or("kv-dtype", "bf16"));
  if (!kv) return kv.error().with_context("--kv-dtype");
  if (*kv != dtype::bf16 && *kv != dtype::f32 && *kv != dtype::fp8_e4m3) {
    return invalid_argument("--kv-dtype: {} is not bf16, f32 or fp8_e4m3", dtype_name(*kv));
  }
  o.kv_dtype = *kv;
  auto wt = parse_dtype(cli.get_or("weight-dtype", "bf16"));
  if (!wt) return wt.error().with_context("--weight-dtype");
  if (*wt != dtype::bf16 && *wt != dtype::fp8_e4m3) {
    return invalid_argument("--weight-dtype: {} is not bf16 or fp8_e4m3", dtype_name(*wt));
  }
  o.weight_dtype = *wt;
  HELIX_ASSIGN_OR_RETURN(const std::vector<bool> hopb, parse_hopb(cli.get_or("hopb", "off")));
  o.json = cli.has("json");

  auto spec = builtin_model(o.model);
  if (!spec) return spec.error().with_context("--model");
  const std::string families =
      cli.get_or("layouts", layout_texts.empty() ? std::string("helix,tp") : std::string());
  for (const std::string& name :
       families.empty() ? std::vector<std::string>{} : split(families, ',')) {
    auto family = parse_layout_family(name);
    if (!family) return family.error().with_context("--layouts");
    auto l = default_layout(*family, o.workers, *spec);
    if (!l) {
      return l.error().with_context(
          fmt::format("--layouts {} with --workers {} for {}", name, o.workers, spec->name));
    }
    add_cases(o, *l, hopb);
  }
  for (const std::string& texts : layout_texts) {
    for (const std::string& text : split(texts, ';')) {
      if (text.empty()) continue;
      auto l = helix::layout::parse(text);
      if (!l) return l.error().with_context(fmt::format("--layout {}", text));
      const status valid = validate(*l, *spec);
      if (!valid.ok()) return valid.with_context(fmt::format("--layout {}", text));
      if (l->num_ranks != o.workers) {
        return invalid_argument("--layout {}: {} ranks, but --workers is {}", text, l->num_ranks,
                                o.workers);
      }
      add_cases(o, *l, hopb);
    }
  }
  if (o.cases.empty()) return invalid_argument("no layouts to run (--layouts and --layout empty)");
  return o;
}

status check_decode_memory(const bench_decode_options& o) {
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(o.model));
  const std::size_t phys = physical_memory_bytes();
  if (phys == 0) return ok_status();
  const double limit = max_memory_fraction * static_cast<double>(phys);
  for (const decode_case& c : o.cases) {
    const std::int64_t tokens =
        kv_tokens_per_rank(c.layout, tokens_per_sequence(o), o.batch, default_block_tokens);
    double total = 0.0;
    for (std::int64_t r = 0; r < c.layout.num_ranks; ++r) {
      const kv_page_layout p = rank_page_layout(c.layout, r, spec, o.kv_dtype);
      total += static_cast<double>(tokens / p.block_tokens) * static_cast<double>(p.page_bytes()) *
               static_cast<double>(spec.num_layers);
    }
    if (total > limit) {
      return resource_exhausted(
          "{}: {} x {} tokens of {} {} KV need {} over {} ranks; over {:.0f}% of this machine's "
          "{} of physical memory (lower --context or --batch)",
          c.layout.to_string(), o.batch, o.context, spec.name, dtype_name(o.kv_dtype),
          format_bytes(total), c.layout.num_ranks, max_memory_fraction * 100,
          format_bytes(static_cast<double>(phys)));
    }
  }
  return ok_status();
}

namespace {

// The engine for one case: its layout, KV sized for the batch, seeded weights (bf16 or FP8);
// workers as threads of this process or as `helix worker` processes.
expected<std::unique_ptr<actors::engine>> make_engine(const bench_decode_options& o,
                                                      const decode_case& c) {
  actors::engine_config ec;
  ec.model = o.model;
  ec.weight_type = o.weight_dtype;
  ec.kv_type = o.kv_dtype;
  ec.weight_seed = weight_seed;
  ec.layout = c.layout.to_string();
  ec.num_workers = c.layout.num_ranks;
  ec.hopb = c.hopb;
  ec.threads_per_worker = o.threads_per_rank;
  ec.block_tokens = default_block_tokens;
  ec.kv_capacity_tokens_per_worker =
      kv_tokens_per_rank(c.layout, tokens_per_sequence(o), o.batch, default_block_tokens);
  ec.max_batch_tokens = std::max<std::int64_t>(o.batch, 16);
  std::unique_ptr<actors::worker_source> source;
  if (o.processes > 0) {
    cluster::spawned_workers_options so;
    so.worker_binary = o.worker_binary;
    if (!o.engine_host.empty()) so.host = o.engine_host;
    so.netns = o.worker_netns;
    if (!o.worker_netns.empty()) {
      so.transports = "tcp";
      so.net_devices = o.net_devices;
    }
    source = cluster::spawned_workers(so);
  }
  return actors::engine::create(ec, std::move(source));
}

// Per request: when each of its tokens arrived.
struct arrival_log {
  std::mutex mu;
  std::vector<std::vector<std::chrono::steady_clock::time_point>> at;
};

expected<decode_case_result> run_case(const bench_decode_options& o, const decode_case& c,
                                      std::ostream& progress) {
  decode_case_result res;
  res.name = c.layout.to_string();
  res.family = c.layout.family;
  res.hopb = c.hopb;
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(o.model));
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<actors::engine> eng, make_engine(o, c));
  for (const actors::worker_info& w : eng->workers()) res.worker_pids.push_back(w.pid);

  // Every request: the synthetic context, one prompt token, then one decode token per step. The
  // last request is timed; the others run lead_tokens longer, so every timed step holds the
  // whole batch even though the first request may have started a step or two earlier.
  const auto n = static_cast<std::size_t>(o.batch);
  arrival_log log;
  log.at.resize(n);
  progress << fmt::format("  filling {} x {} tokens of synthetic {} KV and decoding...\n", o.batch,
                          o.context, dtype_name(o.kv_dtype));
  progress.flush();
  const auto t0 = std::chrono::steady_clock::now();
  actors::engine_stats kv_seen;  // while the whole batch holds its KV (first timed token)
  std::vector<std::shared_ptr<actors::token_stream>> streams;
  for (std::size_t i = 0; i < n; ++i) {
    actors::request_options r;
    r.prompt = {static_cast<std::int32_t>((i * 7919 + 1) % static_cast<std::size_t>(spec.vocab))};
    r.max_tokens = 1 + o.warmup + o.steps + (i + 1 < n ? lead_tokens : 0);
    r.synthetic_context_tokens = o.context;
    r.synthetic_seed = kv_seed + i;
    actors::engine* e_ptr = eng.get();
    auto h = eng->submit(std::move(r), [&, i, e_ptr](const actors::token_event& e) {
      if (e.token < 0) return;
      std::lock_guard lk(log.mu);
      log.at[i].push_back(std::chrono::steady_clock::now());
      if (i + 1 == n && e.index == 1 + o.warmup) kv_seen = e_ptr->stats();
    });
    if (!h) return h.error();
    streams.push_back(h->stream);
  }
  for (std::size_t i = 0; i < n; ++i) {
    std::optional<actors::token_event> last;
    while (auto e = streams[i]->next()) last = std::move(e);
    if (!last) return internal_error("request {} ended without a last event", i);
    if (last->reason == actors::finish_reason::error) return last->error;
    if (last->reason != actors::finish_reason::length) {
      return internal_error("request {} ended early after {} tokens", i, last->index + 1);
    }
  }
  std::lock_guard lk(log.mu);
  const auto& timed = log.at[n - 1];
  if (timed.size() != static_cast<std::size_t>(1 + o.warmup + o.steps)) {
    return internal_error("the timed request got {} tokens", timed.size());
  }
  res.fill_s = std::chrono::duration<double>(timed[0] - t0).count();
  std::vector<double> step_ms;
  for (std::size_t k = static_cast<std::size_t>(1 + o.warmup); k < timed.size(); ++k) {
    // Every request's token of this step arrived in (timed[k-1], timed[k]].
    for (std::size_t i = 0; i + 1 < n; ++i) {
      const bool in_step = std::any_of(log.at[i].begin(), log.at[i].end(),
                                       [&](auto t) { return t > timed[k - 1] && t <= timed[k]; });
      if (!in_step) return internal_error("step {} did not hold request {}", k, i);
    }
    step_ms.push_back(std::chrono::duration<double, std::milli>(timed[k] - timed[k - 1]).count());
  }
  res.step_ms = median(step_ms);
  res.tokens_per_s = static_cast<double>(o.batch) / (res.step_ms / 1e3);
  const actors::engine_stats done = eng->stats();
  if (const std::int64_t steps = done.steps - kv_seen.steps; steps > 0) {
    const auto& a = kv_seen.step_phases;
    const auto& b = done.step_phases;
    const double per = 1e3 / static_cast<double>(steps);
    res.phase_ms = {(b.attention - a.attention) * per, (b.all_to_all - a.all_to_all) * per,
                    (b.ffn - a.ffn) * per, (b.sampling - a.sampling) * per};
  }
  // A decode step reads every KV block a worker holds (all of them belong to the batch), and
  // each worker's weight slices.
  std::int64_t kv_total = 0;
  for (const actors::worker_stats& w : kv_seen.workers) {
    const kv_page_layout p = rank_page_layout(c.layout, w.rank, spec, o.kv_dtype);
    const std::int64_t bytes =
        w.kv_used_blocks * static_cast<std::int64_t>(p.page_bytes()) * spec.num_layers;
    res.kv_bytes_per_worker = std::max(res.kv_bytes_per_worker, bytes);
    kv_total += bytes;
  }
  res.kv_bytes_read_per_step_per_worker = res.kv_bytes_per_worker;
  res.weight_bytes_read_per_step_per_worker =
      static_cast<std::int64_t>(model::weights_read_per_step(spec, o.weight_dtype, c.layout.tpa,
                                                             c.layout.num_ranks, o.batch));
  res.bytes_read_per_step = kv_total + res.weight_bytes_read_per_step_per_worker *
                                           static_cast<std::int64_t>(c.layout.num_ranks);
  progress << fmt::format("  {:.2f} ms/step ({:.2f} tokens/s), fill + first token {:.1f} s\n",
                          res.step_ms, res.tokens_per_s, res.fill_s);
  progress.flush();
  return res;
}

// The streaming-read baseline on `threads` threads: median of 5 integer sums over a buffer far
// larger than the caches (512 MiB, or what fits), bytes per second; with 512-bit and with 256-bit
// loads (interleaved), the better of the two (on this project's EPYC one thread streams faster
// with 256-bit loads).
expected<double> measure_stream_read(int threads) {
  std::size_t bytes = std::size_t{512} << 20;
  const memory_headroom room = available_memory();
  while (bytes > (std::size_t{64} << 20) && 2 * bytes > room.bytes) bytes /= 2;
  HELIX_ASSIGN_OR_RETURN(buffer data, buffer::try_host(bytes));
  std::memset(data.data(), 1, bytes);  // touch every page before timing
  thread_pool pool(threads);
  std::vector<double> wide;
  std::vector<double> narrow;
  std::uint64_t sink = 0;
  for (int i = 0; i < 5; ++i) {
    for (auto* rates : {&wide, &narrow}) {
      const auto isa = rates == &wide ? kernels::simd::isa::avx512 : kernels::simd::isa::avx2;
      const auto t0 = std::chrono::steady_clock::now();
      sink = sink + stream_read(data.data(), bytes, pool, isa);
      rates->push_back(static_cast<double>(bytes) / seconds_since(t0));
    }
  }
  if (sink == 0) return internal_error("the streaming read summed nothing");
  return std::max(median(std::move(wide)), median(std::move(narrow)));
}

}  // namespace

expected<std::vector<decode_case_result>> run_decode_cases(const bench_decode_options& o,
                                                           std::ostream& progress) {
  std::vector<decode_case_result> results;
  for (std::size_t i = 0; i < o.cases.size(); ++i) {
    const decode_case& c = o.cases[i];
    progress << fmt::format("case {}/{}: {} hopb={} on {} {}\n", i + 1, o.cases.size(),
                            c.layout.to_string(), c.hopb ? "on" : "off", c.layout.num_ranks,
                            o.processes > 0 ? "worker processes" : "worker threads");
    progress.flush();
    // The engine (its workers, KV stores and weight shards) is gone before the next case.
    auto r = run_case(o, c, progress);
    if (!r) return r.error().with_context(c.layout.to_string());
    // The limit, measured now on as many threads as the workers ran their kernels on.
    const int threads = static_cast<int>(
        std::min<std::int64_t>(c.layout.num_ranks * o.threads_per_rank,
                               std::max<unsigned>(1, std::thread::hardware_concurrency())));
    HELIX_ASSIGN_OR_RETURN(r->stream_read_bytes_per_s, measure_stream_read(threads));
    if (r->step_ms > 0.0) {
      r->fraction_of_limit = static_cast<double>(r->bytes_read_per_step) / (r->step_ms / 1e3) /
                             r->stream_read_bytes_per_s;
    }
    progress << fmt::format(
        "  {} read per step, {:.2f} GB/s; streaming read {:.2f} GB/s on {} "
        "threads: {:.2f} of the limit\n",
        format_bytes(static_cast<double>(r->bytes_read_per_step)),
        static_cast<double>(r->bytes_read_per_step) / (r->step_ms / 1e3) / 1e9,
        r->stream_read_bytes_per_s / 1e9, threads, r->fraction_of_limit);
    progress.flush();
    results.push_back(std::move(*r));
  }
  for (decode_case_result& r : results) {
    const auto tp = std::find_if(results.begin(), results.end(), [&](const decode_case_result& t) {
      return t.family == layout_family::tp && t.hopb == r.hopb;
    });
    if (tp != results.end() && r.step_ms > 0.0) r.speedup_vs_tp = tp->step_ms / r.step_ms;
  }
  return results;
}

nlohmann::json decode_report_json(const bench_decode_options& o,
                                  const std::vector<decode_case_result>& results) {
  nlohmann::json j = {{"model", o.model},
                      {"context", o.context},
                      {"batch", o.batch},
                      {"workers", o.workers},
                      {"processes", o.processes},
                      {"data_plane", o.processes == 0 ? "local"
                                     : o.netns        ? "ucx-tcp-netns"
                                                      : "ucx"},
                      {"kv_dtype", std::string(dtype_name(o.kv_dtype))},
                      {"weight_dtype", std::string(dtype_name(o.weight_dtype))},
                      {"kv_fill", "synthetic"},
                      {"steps", o.steps},
                      {"threads_per_rank", o.threads_per_rank},
                      {"layouts", nlohmann::json::array()}};
  for (const decode_case_result& r : results) {
    j["layouts"].push_back(
        {{"name", r.name},
         {"family", std::string(layout_family_name(r.family))},
         {"hopb", r.hopb},
         {"kv_bytes_per_worker", r.kv_bytes_per_worker},
         {"kv_bytes_read_per_step_per_worker", r.kv_bytes_read_per_step_per_worker},
         {"weight_bytes_read_per_step_per_worker", r.weight_bytes_read_per_step_per_worker},
         {"bytes_read_per_step", r.bytes_read_per_step},
         {"stream_read_bytes_per_s", r.stream_read_bytes_per_s},
         {"fraction_of_limit", r.fraction_of_limit},
         {"step_ms", r.step_ms},
         {"tokens_per_s", r.tokens_per_s},
         {"speedup_vs_tp",
          r.speedup_vs_tp ? nlohmann::json(*r.speedup_vs_tp) : nlohmann::json(nullptr)},
         {"fill_s", r.fill_s},
         {"phase_ms",
          {{"attention", r.phase_ms.attention},
           {"all_to_all", r.phase_ms.all_to_all},
           {"ffn", r.phase_ms.ffn},
           {"sampling", r.phase_ms.sampling}}},
         {"worker_pids", r.worker_pids}});
  }
  return j;
}

void print_decode_table(std::ostream& out, const bench_decode_options& o,
                        const std::vector<decode_case_result>& results) {
  out << fmt::format(
      "decode through the engine: {} on {} worker {}, batch {}, {} tokens of synthetic {} KV per "
      "sequence, {} weights, median of {} steps, {} thread(s) per worker\n",
      o.model, o.workers,
      o.processes == 0 ? "threads"
      : o.netns        ? "processes, each in a network namespace (UCX over TCP)"
                       : "processes",
      o.batch, o.context, dtype_name(o.kv_dtype), dtype_name(o.weight_dtype), o.steps,
      o.threads_per_rank);
  out << fmt::format("{:<32} {:>4} {:>12} {:>14} {:>10} {:>10} {:>7} {:>8}\n", "layout", "hopb",
                     "KV/worker", "read/step", "ms/step", "tokens/s", "vs tp", "of limit");
  for (const decode_case_result& r : results) {
    out << fmt::format(
        "{:<32} {:>4} {:>12} {:>14} {:>10.2f} {:>10.2f} {:>7} {:>8.2f}\n", r.name,
        r.hopb ? "on" : "off", format_bytes(static_cast<double>(r.kv_bytes_per_worker)),
        format_bytes(static_cast<double>(r.bytes_read_per_step)), r.step_ms, r.tokens_per_s,
        r.speedup_vs_tp ? fmt::format("{:.2f}x", *r.speedup_vs_tp) : "-", r.fraction_of_limit);
  }
  for (const decode_case_result& r : results) {
    out << fmt::format(
        "{:<32} rank 0 per step: attention {:.2f} ms, all-to-all wait {:.2f}, FFN {:.2f}, LM "
        "head + sampling {:.2f}\n",
        r.name, r.phase_ms.attention, r.phase_ms.all_to_all, r.phase_ms.ffn, r.phase_ms.sampling);
  }
  out << "read/step: every worker's weights and KV; of limit: read/step per second over a "
         "streaming read measured right after the case on as many threads\n";
}

int run_bench_decode(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (std::find(args.begin(), args.end(), "--help") != args.end()) {
    out << bench_usage;
    return 0;
  }
  auto opts = parse_bench_decode_args(args);
  if (!opts) {
    err << "error: " << opts.error().message() << "\n" << bench_usage;
    return 2;
  }
  const status fits = check_decode_memory(*opts);
  if (!fits.ok()) {
    err << "error: " << fits.to_string() << "\n";
    return 2;
  }
  // Hosts as network namespaces: made now, while this process has one thread, and entered (the
  // engine lives in the first host; worker r in host r).
  std::optional<transport::netns_hosts> hosts;
  if (opts->netns) {
    auto made = transport::netns_hosts::create(
        static_cast<int>(std::max<std::int64_t>(2, opts->processes)));
    if (!made) {
      err << "error: --netns: " << made.error().to_string() << "\n";
      return 2;
    }
    hosts = std::move(*made);
    const status entered = transport::enter_netns(hosts->host(0).netns);
    if (!entered.ok()) {
      err << "error: --netns: " << entered.to_string() << "\n";
      return 2;
    }
    opts->worker_netns = hosts->netns_names();
    opts->engine_host = hosts->host(0).address;
    opts->net_devices = hosts->host(0).device;
  }
  auto results = run_decode_cases(*opts, err);
  if (!results) {
    err << "error: " << results.error().to_string() << "\n";
    return 1;
  }
  if (opts->json) {
    out << decode_report_json(*opts, *results).dump(2) << "\n";
  } else {
    print_decode_table(out, *opts, *results);
  }
  return 0;
}

}  // namespace helix::apps
