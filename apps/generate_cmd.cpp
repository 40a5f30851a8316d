#include "apps/generate_cmd.hpp"

#include <thread>

#include <nlohmann/json.hpp>

#include "apps/cli_args.hpp"
#include "model/checkpoint.hpp"
#include "model/generate.hpp"

namespace helix::apps {
namespace {

constexpr const char* usage =
    "usage: helix generate (--model NAME | --checkpoint DIR) --prompt IDS [options]\n"
    "  --model NAME          built-in seeded weights: tiny-llama, tiny-deepseek, small-llama\n"
    "  --checkpoint DIR      HF-style checkpoint (config.json + model.safetensors)\n"
    "  --prompt 3,14,15      prompt token ids\n"
    "  --steps N             tokens to generate (default 16)\n"
    "  --temperature T       0 = greedy (default 0)\n"
    "  --top-k K, --top-p P  sampling filters (defaults off)\n"
    "  --sample-seed S       sampling seed (default 0)\n"
    "  --stop IDS            stop token ids\n"
    "  --weight-dtype D      f32, bf16, f16 or fp8_e4m3 in memory (default f32; fp8_e4m3:\n"
    "                        block-scaled linear weights, dequantized inside the GEMV)\n"
    "  --kv-dtype D          f32, bf16, f16 or fp8_e4m3 (default f32)\n"
    "  --seed S              seed of built-in weights (default 1234, as the engine)\n"
    "  --threads N           CPU threads (default all)\n"
    "  --backend B           cpu or reference (default cpu)\n"
    "  --prefill-chunk N     prompt tokens per step (default 128)\n"
    "  --json                machine-readable output\n";

struct parsed {
  model::generate_request request;
  model::decoder_options options;
  model::generate_options gen;
  std::string model_name;
  std::string checkpoint;
  dtype weight_type = dtype::f32;
  std::uint64_t seed = model::default_weight_seed;
  bool json = false;
};

expected<parsed> parse(const std::vector<std::string>& argv) {
  HELIX_ASSIGN_OR_RETURN(cli_args a, cli_args::parse(argv, {"json"}));
  HELIX_RETURN_IF_ERROR(a.check_known(
      {"model", "checkpoint", "prompt", "steps", "temperature", "top-k", "top-p", "sample-seed",
       "stop", "weight-dtype", "kv-dtype", "seed", "threads", "backend", "prefill-chunk", "json"}));
  parsed p;
  p.model_name = a.get_or("model", "");
  p.checkpoint = a.get_or("checkpoint", "");
  if (p.model_name.empty() == p.checkpoint.empty()) {
    return invalid_argument("give exactly one of --model and --checkpoint");
  }
  if (!a.has("prompt")) return invalid_argument("--prompt is required (e.g. --prompt 3,14,15)");
  HELIX_ASSIGN_OR_RETURN(const auto prompt, parse_int_list(*a.get("prompt")));
  for (std::int64_t t : prompt) {
    if (t < 0 || t > INT32_MAX) return invalid_argument("--prompt: token id {} out of range", t);
    p.request.prompt.push_back(static_cast<std::int32_t>(t));
  }
  if (p.request.prompt.empty()) return invalid_argument("--prompt is empty");
  if (a.has("stop")) {
    HELIX_ASSIGN_OR_RETURN(const auto stops, parse_int_list(*a.get("stop")));
    for (std::int64_t t : stops) {
      if (t < 0 || t > INT32_MAX) return invalid_argument("--stop: token id {} out of range", t);
      p.request.stop_tokens.push_back(static_cast<std::int32_t>(t));
    }
  }
  HELIX_ASSIGN_OR_RETURN(p.request.max_new_tokens, a.get_size("steps", 16));
  // One worker's KV is bounded by memory; the decoder checks the bytes, this keeps sizes sane.
  constexpr std::int64_t max_tokens = std::int64_t{1} << 32;
  if (p.request.max_new_tokens < 1 || p.request.max_new_tokens > max_tokens) {
    return invalid_argument("--steps {} must be in [1, {}]", p.request.max_new_tokens, max_tokens);
  }
  HELIX_ASSIGN_OR_RETURN(const double temperature, a.get_double("temperature", 0.0));
  HELIX_ASSIGN_OR_RETURN(const std::int64_t top_k, a.get_int("top-k", 0));
  HELIX_ASSIGN_OR_RETURN(const double top_p, a.get_double("top-p", 1.0));
  HELIX_ASSIGN_OR_RETURN(const std::int64_t sample_seed, a.get_int("sample-seed", 0));
  if (top_k < 0 || top_k > INT32_MAX) return invalid_argument("--top-k {} out of range", top_k);
  p.request.sampling = {static_cast<float>(temperature), static_cast<std::int32_t>(top_k),
                        static_cast<float>(top_p), static_cast<std::uint64_t>(sample_seed)};
  HELIX_RETURN_IF_ERROR(kernels::validate(p.request.sampling));
  HELIX_ASSIGN_OR_RETURN(p.weight_type, parse_dtype(a.get_or("weight-dtype", "f32")));
  HELIX_ASSIGN_OR_RETURN(p.options.kv_type, parse_dtype(a.get_or("kv-dtype", "f32")));
  HELIX_ASSIGN_OR_RETURN(const std::int64_t seed,
                         a.get_int("seed", static_cast<std::int64_t>(model::default_weight_seed)));
  p.seed = static_cast<std::uint64_t>(seed);
  HELIX_ASSIGN_OR_RETURN(const std::int64_t threads, a.get_int("threads", 0));
  if (threads < 0 || threads > 1024) return invalid_argument("--threads {} out of range", threads);
  p.options.num_threads = static_cast<int>(threads);
  const std::string backend = a.get_or("backend", "cpu");
  if (backend == "cpu") {
    p.options.backend = kernels::backend::cpu;
  } else if (backend == "reference") {
    p.options.backend = kernels::backend::reference;
  } else {
    return invalid_argument("--backend '{}' (expected cpu or reference)", backend);
  }
  HELIX_ASSIGN_OR_RETURN(p.gen.prefill_chunk, a.get_size("prefill-chunk", 128));
  if (p.gen.prefill_chunk < 1 || p.gen.prefill_chunk > 65536) {
    return invalid_argument("--prefill-chunk {} must be in [1, 65536]", p.gen.prefill_chunk);
  }
  p.options.max_batch_tokens =
      std::min(p.gen.prefill_chunk, static_cast<std::int64_t>(p.request.prompt.size()));
  p.options.kv_capacity_tokens =
      static_cast<std::int64_t>(p.request.prompt.size()) + p.request.max_new_tokens;
  p.json = a.has("json");
  return p;
}

expected<model::model_weights> load_weights(const parsed& p) {
  if (!p.checkpoint.empty()) return model::load_checkpoint(p.checkpoint, p.weight_type);
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(p.model_name));
  return model::init_seeded_weights(spec, p.weight_type, p.seed);
}

}  // namespace

int run_generate(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      out << usage;
      return 0;
    }
  }
  auto p = parse(args);
  if (!p) {
    err << "error: " << p.error().to_string() << "\n" << usage;
    return 2;
  }
  auto weights = load_weights(*p);
  if (!weights) {
    err << "error: " << weights.error().to_string() << "\n";
    return 2;
  }
  auto dec = model::decoder::create(std::move(*weights), p->options);  // the only copy
  if (!dec) {
    err << "error: " << dec.error().to_string() << "\n";
    return 2;
  }
  model::generate_stats stats;
  auto result = model::generate(**dec, {&p->request, 1}, p->gen, &stats);
  if (!result) {
    err << "error: " << result.error().to_string() << "\n";
    return result.error().code() == errc::invalid_argument ? 2 : 1;
  }
  const model::generate_result& r = (*result)[0];
  const double decode_tokens = static_cast<double>(stats.decode_tokens);
  const double ms_per_token = decode_tokens > 0 ? stats.decode_ms / decode_tokens : 0.0;
  const int threads = p->options.num_threads > 0
                          ? p->options.num_threads
                          : static_cast<int>(std::thread::hardware_concurrency());
  if (p->json) {
    nlohmann::json j;
    j["model"] = weights->spec.name;
    j["weight_dtype"] = std::string(dtype_name(weights->weight_type));
    j["kv_dtype"] = std::string(dtype_name(p->options.kv_type));
    j["threads"] = threads;
    j["prompt"] = p->request.prompt;
    j["tokens"] = r.tokens;
    j["stopped"] = r.stopped;
    j["timings"] = {{"prefill_ms", stats.prefill_ms},
                    {"prefill_tokens", stats.prefill_tokens},
                    {"decode_ms", stats.decode_ms},
                    {"decode_tokens", stats.decode_tokens},
                    {"ms_per_token", ms_per_token},
                    {"tokens_per_s", ms_per_token > 0 ? 1000.0 / ms_per_token : 0.0}};
    out << j.dump(2) << "\n";
  } else {
    out << "model " << weights->spec.name << " (" << dtype_name(weights->weight_type)
        << " weights, " << dtype_name(p->options.kv_type) << " KV, " << threads << " threads)\n"
        << "tokens:";
    for (std::int32_t t : r.tokens) out << ' ' << t;
    out << (r.stopped ? "  [stop]\n" : "\n");
    out << fmt::format("prefill {} tokens in {:.1f} ms; decode {} tokens at {:.2f} ms/token\n",
                       stats.prefill_tokens, stats.prefill_ms, stats.decode_tokens, ms_per_token);
  }
  return 0;
}

}  // namespace helix::apps
