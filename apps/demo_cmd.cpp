#include "apps/demo_cmd.hpp"

#include <algorithm>
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
    seq.push_back(static_cast<std::int32_t>(
        random_words(42, 0, i, rng_purpose::test_data, 0)[0] % static_cast<std::uint32_t>(spec.vocab)));
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

}  // namespace

int run_demo(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  auto a = cli_args::parse(args, {"json"});
  if (!a || !a->check_known({"context", "json", "threads"}).ok()) {
    err << "usage: helix demo [--context 1M] [--threads all|N] [--json]\n";
    return 2;
  }
  const bool json = a->has("json");
  const std::string context = a->get_or("context", "1M");
  const std::string threads = a->get_or("threads", "all");
  nlohmann::json report;
  bool exact = true;
  if (!json) out << "Helix demo: one worker (multi-worker layouts come with the Helix execution issue)\n\n";
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
      out << fmt::format("exactness  {:<14} {} cached decode steps vs cache-free forward: "
                         "max |logit diff| {:.2e} {}\n",
                         e->model, e->steps, e->max_abs_diff, e->max_abs_diff <= 1e-4 ? "ok" : "FAIL");
    }
  }
  if (!json) err << "measuring attention over " << context << " tokens of synthetic KV...\n";
  std::ostringstream bench_out;
  std::ostringstream bench_err;
  const int rc = run_bench_attention({"--model", "small-llama", "--context", context, "--kv-dtype",
                                      "bf16", "--threads", threads, "--repeats", "3", "--no-mla",
                                      "--json"},
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
          r.value("context", 0), r.value("kv_dtype", ""), r.value("threads", 0),
          r.value("ms", 0.0), r.value("kv_bytes_per_s", 0.0) / 1e9,
          r.value("stream_bytes_per_s", 0.0) / 1e9, r.value("ratio", 0.0));
    }
  }
  return exact ? 0 : 1;
}

}  // namespace helix::apps
