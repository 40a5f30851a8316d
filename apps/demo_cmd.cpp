#include "apps/demo_cmd.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/bench_attention.hpp"
#include "apps/cli_args.hpp"
#include "core/rng.hpp"
#include "model/generate.hpp"
#include "model/reference_forward.hpp"

namespace helix::apps {
namespace {

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
                         model::init_seeded_weights(spec, dtype::f32, 42));
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

struct long_decode {
  std::int64_t context = 0;
  std::int64_t steps = 0;
  double fill_s = 0;
  double median_ms = 0;
  std::size_t kv_bytes = 0;      // KV read per decode token (all layers)
  std::size_t weight_bytes = 0;  // weights read per decode token
  std::vector<std::int32_t> tokens;
};

std::size_t weight_bytes(model::model_weights& w) {
  std::size_t n = 0;
  for (const model::named_tensor& t : model::list_tensors(w)) {
    // The embedding table is gathered, not streamed.
    if (t.role != model::tensor_role::embedding || w.spec.tie_word_embeddings) n += t.t->bytes();
  }
  return n;
}

// small-llama with bf16 weights and KV: `context` tokens of synthetic KV, then `steps` greedy
// decode tokens through all layers; the median step time is what one token costs at that context.
expected<long_decode> run_long_decode(std::int64_t context, std::int64_t steps, int threads,
                                      std::ostream& progress) {
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model("small-llama"));
  HELIX_ASSIGN_OR_RETURN(model::model_weights w, model::init_seeded_weights(spec, dtype::bf16, 7));
  model::decoder_options o;
  o.kv_type = dtype::bf16;
  o.kv_capacity_tokens = context + steps + 1;
  o.max_batch_tokens = 1;
  o.num_threads = threads;
  HELIX_ASSIGN_OR_RETURN(auto dec, model::decoder::create(w, o));
  long_decode r{context, steps};
  r.weight_bytes = weight_bytes(w);
  progress << fmt::format("filling {} tokens of synthetic bf16 KV over {} layers ({:.1f} GiB)...\n",
                          context, spec.num_layers,
                          static_cast<double>(dec->kv().slot_bytes()) *
                              static_cast<double>((context + 15) / 16) / (1 << 30));
  const auto t0 = std::chrono::steady_clock::now();
  const std::uint64_t seq = dec->open_sequence();
  HELIX_RETURN_IF_ERROR(dec->append_synthetic(seq, context, 11));
  r.fill_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<float> logits(static_cast<std::size_t>(spec.vocab));
  std::vector<double> ms;
  std::int32_t token = 1;
  for (std::int64_t s = 0; s < steps; ++s) {
    const auto t1 = std::chrono::steady_clock::now();
    model::decoder::batch_item item{seq, std::span<const std::int32_t>(&token, 1), false};
    HELIX_RETURN_IF_ERROR(dec->forward({&item, 1}, logits));
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count());
    token =
        static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    r.tokens.push_back(token);
  }
  std::sort(ms.begin(), ms.end());
  r.median_ms = ms[ms.size() / 2];
  r.kv_bytes = dec->kv().slot_bytes() * static_cast<std::size_t>((context + steps + 15) / 16);
  return r;
}

}  // namespace

int run_demo(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  auto a = cli_args::parse(args, {"json"});
  if (!a || !a->check_known({"context", "json", "threads", "steps"}).ok()) {
    err << "usage: helix demo [--context 1M] [--steps 8] [--threads all|N] [--json]\n";
    return 2;
  }
  const bool json = a->has("json");
  const std::string context = a->get_or("context", "1M");
  const std::string threads = a->get_or("threads", "all");
  const auto context_tokens = parse_size(context);
  const auto steps = a->get_size("steps", 8);
  const auto num_threads = threads == "all" ? expected<std::int64_t>(0) : parse_size(threads);
  if (!context_tokens || !steps || !num_threads || *context_tokens < 1 || *steps < 1 ||
      *steps > 4096 || *num_threads > 1024) {
    err << "error: --context and --steps take positive sizes (steps <= 4096), --threads all or N\n";
    return 2;
  }
  nlohmann::json report;
  bool exact = true;
  if (!json)
    out << "Helix demo: one worker (multi-worker layouts come with the Helix execution issue)\n\n";
  for (const char* name : {"tiny-llama", "tiny-deepseek"}) {
    if (!json) err << "checking exactness of " << name << "...\n";
    auto e = check_exactness(name, 64);
    if (!e) {
      err << "error: " << e.error().to_string() << "\n";
      return 1;
    }
    exact = exact && e->max_abs_diff <= 1e-4;
    report["exactness"].push_back(
        {{"model", e->model}, {"steps", e->steps}, {"max_abs_logit_diff", e->max_abs_diff}});
    if (!json) {
      out << fmt::format(
          "exactness  {:<14} {} cached decode steps vs cache-free forward: "
          "max |logit diff| {:.2e} {}\n",
          e->model, e->steps, e->max_abs_diff, e->max_abs_diff <= 1e-4 ? "ok" : "FAIL");
    }
  }
  auto decode = run_long_decode(*context_tokens, *steps, static_cast<int>(*num_threads), err);
  if (!decode) {
    err << "error: " << decode.error().to_string() << "\n";
    return 1;
  }
  const double per_token_bytes = static_cast<double>(decode->kv_bytes + decode->weight_bytes);
  report["long_decode"] = {{"model", "small-llama"},
                           {"kv_fill", "synthetic"},
                           {"weight_dtype", "bf16"},
                           {"kv_dtype", "bf16"},
                           {"context", decode->context},
                           {"steps", decode->steps},
                           {"fill_s", decode->fill_s},
                           {"ms_per_token", decode->median_ms},
                           {"tokens_per_s", 1000.0 / decode->median_ms},
                           {"kv_bytes_per_token", decode->kv_bytes},
                           {"weight_bytes_per_token", decode->weight_bytes},
                           {"bytes_per_s", per_token_bytes / decode->median_ms * 1e3},
                           {"tokens", decode->tokens}};
  if (!json) {
    out << fmt::format(
        "decode     small-llama    {} steps after {} tokens of synthetic bf16 KV: "
        "{:.1f} ms/token ({:.2f} tokens/s), reading {:.2f} GiB KV + {:.0f} MiB "
        "weights per token = {:.1f} GB/s\n",
        decode->steps, decode->context, decode->median_ms, 1000.0 / decode->median_ms,
        static_cast<double>(decode->kv_bytes) / (1 << 30),
        static_cast<double>(decode->weight_bytes) / (1 << 20),
        per_token_bytes / decode->median_ms / 1e6);
  }
  if (!json) err << "measuring attention over " << context << " tokens of synthetic KV...\n";
  std::ostringstream bench_out;
  std::ostringstream bench_err;
  const int rc =
      run_bench_attention({"--model", "small-llama", "--context", context, "--kv-dtype", "bf16",
                           "--threads", threads, "--repeats", "3", "--no-mla", "--json"},
                          bench_out, json ? bench_err : err);
  if (rc != 0) {
    err << bench_err.str() << "error: attention benchmark failed\n";
    return 1;
  }
  const nlohmann::json bench = nlohmann::json::parse(bench_out.str(), nullptr, false);
  if (bench.is_discarded() || !bench.contains("results") || bench["results"].empty()) {
    err << "error: attention benchmark printed no results\n";
    return 1;
  }
  report["long_context"] = bench;
  if (json) {
    out << report.dump(2) << "\n";
  } else {
    for (const nlohmann::json& r : bench["results"]) {
      out << fmt::format(
          "long ctx   small-llama    one decode token over {} tokens of {} KV ({} threads): "
          "{:.2f} ms, {:.1f} GB/s vs streaming read {:.1f} GB/s (ratio {:.2f})\n",
          r.value("context", 0), r.value("kv_dtype", ""), r.value("threads", 0), r.value("ms", 0.0),
          r.value("kv_bytes_per_s", 0.0) / 1e9, r.value("stream_bytes_per_s", 0.0) / 1e9,
          r.value("ratio", 0.0));
    }
  }
  return exact ? 0 : 1;
}

}  // namespace helix::apps
