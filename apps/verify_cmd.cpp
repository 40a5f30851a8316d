#include "apps/verify_cmd.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>

#include <nlohmann/json.hpp>

#include "actors/engine.hpp"
#include "apps/cli_args.hpp"
#include "cluster/cluster.hpp"
#include "core/kv_layout.hpp"
#include "core/layout.hpp"
#include "core/rng.hpp"
#include "model/decoder.hpp"

namespace helix::apps {
namespace {

constexpr const char* usage =
    "usage: helix verify --layout LAYOUT [options]\n"
    "  --layout LAYOUT     e.g. helix:kvp=4,tpa=2, tp:tp=8, medha:kvp=4,tpa=2,\n"
    "                      helix:kvp=8,tpa=1,tpf=2,ep=4 (required)\n"
    "  --model NAME        built-in seeded model (default tiny-llama)\n"
    "  --batch N           requests decoded together (default 4)\n"
    "  --steps N           greedy steps per request, the prefill included (default 64)\n"
    "  --prompt-len N      prompt of request i has N + 5*i tokens (default 24)\n"
    "  --dtype D           weights and KV: f32 or bf16 (default f32)\n"
    "  --weight-dtype D    weights only: f32, bf16 or fp8_e4m3 (block-scaled; default --dtype)\n"
    "  --hopb on|off       HOP-B micro-batch overlap on the engine's side (default off)\n"
    "  --seed N            seed of the weights and prompts (default 1234, as every command)\n"
    "  --processes N       the engine's workers are N `helix worker` processes (N = the\n"
    "                      layout's ranks) instead of threads of this process\n"
    "  --json              machine-readable output\n";

constexpr std::int64_t max_batch = 256;
constexpr std::int64_t max_steps = 1 << 16;
constexpr std::int64_t max_prompt = 1 << 16;
// verify holds the full weights and every rank's shard (about twice the model) in one process.
constexpr double max_weight_bytes = 8.0 * (1ull << 30);
constexpr double max_logits_bytes = 2.0 * (1ull << 30);
constexpr std::int64_t max_step_rows = 4096;  // the engine's batch; longer prefills are chunked

struct config {
  model_spec spec;
  helix::layout grid;
  std::int64_t batch = 4;
  std::int64_t steps = 64;
  std::int64_t prompt_len = 24;
  dtype type = dtype::f32;  // KV (and weights unless weight_type says otherwise)
  dtype weight_type = dtype::f32;
  bool hopb = false;
  std::uint64_t seed = model::default_weight_seed;
  bool json = false;
  // > 0: the engine's workers are this many `helix worker` processes, else threads.
  std::int64_t processes = 0;
  std::string worker_binary;
};

expected<std::int64_t> bounded_int(const cli_args& a, const std::string& name,
                                   std::int64_t fallback, std::int64_t lo, std::int64_t hi) {
  HELIX_ASSIGN_OR_RETURN(const std::int64_t v, a.get_int(name, fallback));
  if (v < lo || v > hi) return invalid_argument("--{} {} must be in [{}, {}]", name, v, lo, hi);
  return v;
}

expected<config> parse(const std::vector<std::string>& argv) {
  HELIX_ASSIGN_OR_RETURN(const cli_args a, cli_args::parse(argv, {"json"}));
  HELIX_RETURN_IF_ERROR(a.check_known({"model", "layout", "batch", "steps", "prompt-len", "dtype",
                                       "weight-dtype", "hopb", "seed", "json", "processes"}));
  config c;
  HELIX_ASSIGN_OR_RETURN(c.spec, builtin_model(a.get_or("model", "tiny-llama")));
  const double weight_bytes = static_cast<double>(c.spec.num_params()) * 4.0;
  if (weight_bytes > max_weight_bytes) {
    return invalid_argument(
        "--model {}: {:.1f} GiB of f32 weights; verify keeps the full weights and all shards in "
        "one process (at most {:.0f} GiB)",
        c.spec.name, weight_bytes / (1ull << 30), max_weight_bytes / (1ull << 30));
  }
  if (!a.has("layout")) return invalid_argument("--layout is required (e.g. helix:kvp=4,tpa=2)");
  HELIX_ASSIGN_OR_RETURN(c.grid, layout::parse(*a.get("layout")));
  HELIX_RETURN_IF_ERROR(validate(c.grid, c.spec).with_context("--layout " + *a.get("layout")));
  HELIX_ASSIGN_OR_RETURN(c.batch, bounded_int(a, "batch", 4, 1, max_batch));
  HELIX_ASSIGN_OR_RETURN(c.steps, bounded_int(a, "steps", 64, 1, max_steps));
  HELIX_ASSIGN_OR_RETURN(c.prompt_len, bounded_int(a, "prompt-len", 24, 1, max_prompt));
  HELIX_ASSIGN_OR_RETURN(
      const std::int64_t seed,
      bounded_int(a, "seed", static_cast<std::int64_t>(model::default_weight_seed), 0,
                  std::numeric_limits<std::int64_t>::max()));
  c.seed = static_cast<std::uint64_t>(seed);
  const std::string type = a.get_or("dtype", "f32");
  if (type != "f32" && type != "bf16") {
    return invalid_argument("--dtype '{}' (expected f32 or bf16)", type);
  }
  HELIX_ASSIGN_OR_RETURN(c.type, parse_dtype(type));
  const std::string wtype = a.get_or("weight-dtype", type);
  if (wtype != "f32" && wtype != "bf16" && wtype != "fp8_e4m3") {
    return invalid_argument("--weight-dtype '{}' (expected f32, bf16 or fp8_e4m3)", wtype);
  }
  HELIX_ASSIGN_OR_RETURN(c.weight_type, parse_dtype(wtype));
  const std::string hopb = a.get_or("hopb", "off");
  if (hopb != "on" && hopb != "off")
    return invalid_argument("--hopb '{}' (expected on or off)", hopb);
  c.hopb = hopb == "on";
  c.json = a.has("json");
  HELIX_ASSIGN_OR_RETURN(c.processes, bounded_int(a, "processes", 0, 0, 64));
  if (c.processes > 0) {
    if (c.processes != c.grid.num_ranks) {
      return invalid_argument("--processes {} but layout {} has {} ranks", c.processes,
                              c.grid.to_string(), c.grid.num_ranks);
    }
    HELIX_ASSIGN_OR_RETURN(c.worker_binary, this_program_path());
  }
  return c;
}

// Wall time of one side: the first step (all prompts) and the decode steps after it.
struct side_timing {
  double prefill_ms = 0;
  double decode_ms = 0;
  std::int64_t decode_steps = 0;
  [[nodiscard]] double ms_per_decode_step() const {
    return decode_steps > 0 ? decode_ms / static_cast<double>(decode_steps) : 0.0;
  }
  void add(std::int64_t step, double ms) {
    if (step == 0) {
      prefill_ms += ms;
    } else {
      decode_ms += ms;
      ++decode_steps;
    }
  }
};

struct divergence {
  std::int64_t request = 0;
  std::int64_t step = 0;
  std::int32_t reference_token = 0;
  std::int32_t sharded_token = 0;
};

struct report {
  std::vector<std::int64_t> prompt_lens;
  double max_abs_logit_diff = 0;
  std::int64_t tokens_checked = 0;
  std::vector<divergence> diverged;
  // Sharded sampling picked a token other than the argmax of the sharded logits (step, request).
  std::vector<std::pair<std::int64_t, std::int64_t>> sampling_mismatch;
  side_timing reference, sharded;
};

std::vector<std::int32_t> prompt_tokens(std::uint64_t seed, std::int64_t request, std::int64_t len,
                                        std::int64_t vocab) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(len));
  for (std::int64_t t = 0; t < len; ++t) {
    const std::uint32_t u =
        random_words(seed, static_cast<std::uint64_t>(request), static_cast<std::uint64_t>(t),
                     rng_purpose::workload, 0)[0];
    out[static_cast<std::size_t>(t)] =
        static_cast<std::int32_t>(u % static_cast<std::uint32_t>(vocab));
  }
  return out;
}

// Lowest id on ties, as greedy sampling (kernels/sampling.hpp) defines it.
std::int32_t argmax(std::span<const float> row) {
  return static_cast<std::int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
}

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Reference logits of one request: one row (vocab floats) per step, the step's token its argmax.
struct reference_run {
  std::vector<std::vector<float>> rows;  // [request][step * vocab + v]
  std::vector<std::vector<std::int32_t>> tokens;
};

// The single worker: every request decoded greedily, batched, each feeding its own tokens back.
expected<reference_run> run_reference(const config& c, const model::model_weights& w,
                                      const std::vector<std::vector<std::int32_t>>& prompts,
                                      std::int64_t capacity, std::int64_t rows, report& r) {
  const auto n = prompts.size();
  const auto vocab = static_cast<std::size_t>(c.spec.vocab);
  model::decoder_options ro;
  ro.kv_type = c.type;
  ro.kv_capacity_tokens = capacity;
  ro.max_batch_tokens = rows;
  ro.num_threads = 1;
  HELIX_ASSIGN_OR_RETURN(auto ref, model::decoder::create(w, ro));
  std::vector<model::decoder::batch_item> items(n);
  for (std::size_t i = 0; i < n; ++i) {
    items[i].seq = ref->open_sequence();
    items[i].tokens = prompts[i];
  }
  reference_run out;
  out.rows.assign(n, {});
  out.tokens.assign(n, {});
  std::vector<float> logits(n * vocab);
  std::vector<std::int32_t> next(n);
  for (std::int64_t step = 0; step < c.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    HELIX_RETURN_IF_ERROR(
        ref->forward(items, logits).with_context(fmt::format("single worker, step {}", step)));
    r.reference.add(step, ms_since(t0));
    for (std::size_t i = 0; i < n; ++i) {
      const auto row = std::span<const float>(logits).subspan(i * vocab, vocab);
      out.rows[i].insert(out.rows[i].end(), row.begin(), row.end());
      next[i] = argmax(row);
      out.tokens[i].push_back(next[i]);
      items[i].tokens = std::span<const std::int32_t>(&next[i], 1);
    }
  }
  return out;
}

// The sharded side is the engine (worker threads, or `helix worker` processes), every request
// returning the logits row of each token; compared request by request with the single worker.
expected<report> run(const config& c) {
  const model_spec& s = c.spec;
  const auto n = static_cast<std::size_t>(c.batch);
  const auto vocab = static_cast<std::size_t>(s.vocab);
  // Both sides keep every step's logits row of every request.
  const double logits_bytes = 2.0 * static_cast<double>(c.batch) * static_cast<double>(c.steps) *
                              static_cast<double>(vocab) * 4.0;
  if (logits_bytes > max_logits_bytes) {
    return resource_exhausted(
        "--batch {} x --steps {} keep {:.1f} GiB of logits rows (at most {:.0f} GiB)", c.batch,
        c.steps, logits_bytes / (1ull << 30), max_logits_bytes / (1ull << 30));
  }
  report r;
  std::vector<std::vector<std::int32_t>> prompts(n);
  std::int64_t prefill_rows = 0;
  std::int64_t longest = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t len = c.prompt_len + 5 * static_cast<std::int64_t>(i);
    prompts[i] = prompt_tokens(c.seed, static_cast<std::int64_t>(i), len, s.vocab);
    r.prompt_lens.push_back(len);
    prefill_rows += len;
    longest = std::max(longest, len);
  }
  const std::int64_t rows = std::min(std::max(prefill_rows, c.batch), max_step_rows);
  const std::int64_t capacity =
      actors::kv_capacity_for(c.batch, longest + c.steps, c.grid.kvp, default_block_tokens,
                              actors::engine_config{}.rebalance_threshold);

  reference_run ref;
  {
    HELIX_ASSIGN_OR_RETURN(const model::model_weights w,
                           model::init_seeded_weights(s, c.weight_type, c.seed));
    HELIX_ASSIGN_OR_RETURN(
        ref, run_reference(c, w, prompts, prefill_rows + c.batch * (c.steps + default_block_tokens),
                           std::max(prefill_rows, c.batch), r));
  }

  actors::engine_config ec;
  ec.model = s.name;
  ec.weight_type = c.weight_type;
  ec.kv_type = c.type;
  ec.weight_seed = c.seed;
  ec.layout = c.grid.to_string();
  ec.num_workers = static_cast<int>(c.grid.num_ranks);
  ec.kv_capacity_tokens_per_worker = capacity;
  ec.max_batch_tokens = rows;
  ec.prefill_chunk_tokens = rows;
  ec.hopb = c.hopb;
  std::unique_ptr<actors::worker_source> source;
  if (c.processes > 0) {
    cluster::spawned_workers_options so;
    so.worker_binary = c.worker_binary;
    source = cluster::spawned_workers(so);
  }
  HELIX_ASSIGN_OR_RETURN(auto eng, actors::engine::create(ec, std::move(source)));
  std::vector<std::shared_ptr<actors::token_stream>> streams;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    actors::request_options ro;
    ro.prompt = prompts[i];
    ro.max_tokens = c.steps;
    ro.return_logits = true;
    HELIX_ASSIGN_OR_RETURN(auto h, eng->submit(ro));
    streams.push_back(h.stream);
  }
  std::chrono::steady_clock::time_point first_token, last_token;
  for (std::size_t i = 0; i < n; ++i) {
    bool diverged = false;
    while (auto e = streams[i]->next()) {
      if (e->reason == actors::finish_reason::error) {
        return e->error.with_context(fmt::format("engine, request {}", i));
      }
      if (e->token < 0) continue;
      const auto now = std::chrono::steady_clock::now();
      if (i == 0 && e->index == 0) first_token = now;
      last_token = std::max(last_token, now);
      const auto step = static_cast<std::size_t>(e->index);
      if (step >= ref.tokens[i].size()) return internal_error("request {}: extra token", i);
      if (e->logits.size() != vocab) {
        return internal_error("request {}: step {} came with {} logits, not {}", i, step,
                              e->logits.size(), vocab);
      }
      if (argmax(e->logits) != e->token) {
        r.sampling_mismatch.emplace_back(e->index, static_cast<std::int64_t>(i));
      }
      // Each side feeds its own token back, so once they differ the inputs differ and nothing
      // later of that request is comparable.
      if (diverged) continue;
      const float* want = ref.rows[i].data() + step * vocab;
      for (std::size_t v = 0; v < vocab; ++v) {
        r.max_abs_logit_diff =
            std::max(r.max_abs_logit_diff, static_cast<double>(std::fabs(want[v] - e->logits[v])));
      }
      ++r.tokens_checked;
      if (ref.tokens[i][step] != e->token) {
        diverged = true;
        r.diverged.push_back(
            {static_cast<std::int64_t>(i), e->index, ref.tokens[i][step], e->token});
      }
    }
  }
  // The engine's steps are not visible one by one here: the prefill is the first token's wait
  // (engine start excluded), the decode steps share the rest.
  r.sharded.prefill_ms = std::chrono::duration<double, std::milli>(first_token - t0).count();
  r.sharded.decode_ms = std::chrono::duration<double, std::milli>(last_token - first_token).count();
  r.sharded.decode_steps = c.steps - 1;
  return r;
}

nlohmann::json timing_json(const side_timing& t) {
  return {{"prefill_ms", t.prefill_ms},
          {"decode_ms", t.decode_ms},
          {"decode_steps", t.decode_steps},
          {"ms_per_decode_step", t.ms_per_decode_step()}};
}

}  // namespace

int run_verify(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      out << usage;
      return 0;
    }
  }
  auto c = parse(args);
  if (!c) {
    err << "error: " << c.error().to_string() << "\n" << usage;
    return 2;
  }
  const std::string grid = c->grid.to_string();
  const std::string_view family = layout_family_name(c->grid.family);
  const std::string_view type = dtype_name(c->type);
  if (!c->json) {
    err << fmt::format("verifying {} on {} ({} ranks, {}, hopb {})...\n", c->spec.name, grid,
                       c->grid.num_ranks, type, c->hopb ? "on" : "off");
  }
  auto r = run(*c);
  if (!r) {
    err << "error: " << r.error().to_string() << "\n";
    return 1;
  }
  const double tolerance = c->type == dtype::f32 ? 1e-4 : 2e-2;
  const bool tokens_equal = r->diverged.empty();
  const bool within = r->max_abs_logit_diff <= tolerance;
  const bool sampling_ok = r->sampling_mismatch.empty();
  const bool pass = tokens_equal && within && sampling_ok;
  std::string failure;
  if (!tokens_equal) {
    const divergence& d = r->diverged.front();
    failure = fmt::format(
        "{} of {} requests diverged (first: request {} at step {}: single worker chose {}, "
        "sharded {})",
        r->diverged.size(), c->batch, d.request, d.step, d.reference_token, d.sharded_token);
  } else if (!within) {
    failure = fmt::format("max |logit diff| {:.3e} exceeds the {} tolerance {:.0e}",
                          r->max_abs_logit_diff, type, tolerance);
  } else if (!sampling_ok) {
    failure = fmt::format(
        "sharded greedy sampling disagrees with the argmax of its own logits at {} rows (first: "
        "step {}, request {})",
        r->sampling_mismatch.size(), r->sampling_mismatch.front().first,
        r->sampling_mismatch.front().second);
  }

  if (c->json) {
    nlohmann::json j = {{"model", c->spec.name},
                        {"layout", grid},
                        {"family", family},
                        {"num_ranks", c->grid.num_ranks},
                        {"hopb", c->hopb},
                        {"dtype", type},
                        {"weight_dtype", std::string(dtype_name(c->weight_type))},
                        {"batch", c->batch},
                        {"steps", c->steps},
                        {"prompt_lens", r->prompt_lens},
                        {"seed", c->seed},
                        {"tokens_equal", tokens_equal},
                        {"processes", c->processes},
                        {"tokens_checked", r->tokens_checked},
                        {"max_abs_logit_diff", r->max_abs_logit_diff},
                        {"tolerance", tolerance},
                        {"sharded_sampling_consistent", sampling_ok},
                        {"pass", pass},
                        {"single_worker", timing_json(r->reference)},
                        {"sharded", timing_json(r->sharded)}};
    j["diverged"] = nlohmann::json::array();
    for (const divergence& d : r->diverged) {
      j["diverged"].push_back({{"request", d.request},
                               {"step", d.step},
                               {"single_worker_token", d.reference_token},
                               {"sharded_token", d.sharded_token}});
    }
    if (!pass) j["failure"] = failure;
    out << j.dump(2) << "\n";
  } else {
    out << fmt::format("helix verify: {} on {} ({}, {} ranks), dtype {} (weights {}), hopb {}\n",
                       c->spec.name, grid, family, c->grid.num_ranks, type,
                       dtype_name(c->weight_type), c->hopb ? "on" : "off");
    out << fmt::format(
        "  {} requests, prompts of {}..{} tokens prefilled in one step, {} greedy steps each, "
        "seed {}\n",
        c->batch, r->prompt_lens.front(), r->prompt_lens.back(), c->steps, c->seed);
    out << fmt::format("  tokens          {} ({} compared)\n", tokens_equal ? "equal" : "DIFFERENT",
                       r->tokens_checked);
    for (const divergence& d : r->diverged) {
      out << fmt::format(
          "    request {} diverged at step {} (single worker {}, sharded {}); its later steps are "
          "not compared\n",
          d.request, d.step, d.reference_token, d.sharded_token);
    }
    out << fmt::format("  max |logit diff| {:.3e} (tolerance {:.0e}, over the steps compared)\n",
                       r->max_abs_logit_diff, tolerance);
    for (const auto& [name, t] :
         {std::pair{"single worker", &r->reference}, std::pair{"engine       ", &r->sharded}}) {
      out << fmt::format("  {}   prefill {:.2f} ms, decode {:.3f} ms/step over {} steps\n", name,
                         t->prefill_ms, t->ms_per_decode_step(), t->decode_steps);
    }
    out << (pass ? "PASS\n" : "FAIL: " + failure + "\n");
  }
  if (!pass) {
    err << "error: the engine does not match the single worker: " << failure << "\n";
    return 1;
  }
  return 0;
}

}  // namespace helix::apps
