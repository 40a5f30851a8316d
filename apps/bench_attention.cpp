#include "apps/bench_attention.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/cli_args.hpp"
#include "apps/measure.hpp"
#include "core/block_table.hpp"
#include "core/kv_layout.hpp"
#include "core/model_spec.hpp"
#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "core/thread_pool.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu/simd.hpp"
#include "model/kv_store.hpp"

namespace helix::apps {
namespace {

constexpr const char* bench_usage =
    "usage: helix bench attention [options]\n"
    "  --model NAME        built-in model spec (default small-llama)\n"
    "  --context N         KV tokens, K/M suffixes allowed (default 1M)\n"
    "  --kv-dtype LIST     KV storage dtypes (default bf16,fp8_e4m3)\n"
    "  --threads LIST      thread counts, 'all' = every core (default 1,all)\n"
    "  --repeats N         timed repeats per case, median reported (default 5)\n"
    "  --mla-context N     tokens for the deepseek-r1 MLA case (default 16K)\n"
    "  --no-mla            skip the MLA case\n"
    "  --json              JSON on stdout instead of a table\n"
    "The MLA case is compute-bound: it reports GFLOP/s and their fraction of the f32 FMA peak\n"
    "(multiply-adds in registers) measured on the same threads in the same run.\n";

constexpr std::uint64_t kv_seed = 0x5eedULL;
constexpr std::size_t page_align = 4096;
constexpr std::uint64_t q_seed = 0x9eedULL;

struct bench_options {
  std::string model = "small-llama";
  std::int64_t context = std::int64_t{1} << 20;
  std::vector<dtype> kv_dtypes;
  std::vector<int> threads;
  std::int64_t repeats = 5;
  std::int64_t mla_context = std::int64_t{16} << 10;
  bool mla = true;
  bool json = false;
};

expected<std::vector<int>> parse_threads(const std::string& text) {
  const int all = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<int> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const std::string item = text.substr(start, comma - start);
    int n = 0;
    if (item == "all") {
      n = all;
    } else {
      auto v = parse_int_list(item);
      if (!v || v->size() != 1 || (*v)[0] < 1 || (*v)[0] > 1024) {
        return invalid_argument("--threads: '{}' is not a thread count or 'all'", item);
      }
      n = static_cast<int>((*v)[0]);
    }
    if (std::find(out.begin(), out.end(), n) == out.end()) out.push_back(n);
    start = comma + 1;
  }
  return out;
}

expected<bench_options> parse_options(const cli_args& cli) {
  bench_options o;
  HELIX_RETURN_IF_ERROR(cli.check_known({"model", "context", "kv-dtype", "threads", "repeats",
                                         "mla-context", "no-mla", "json", "help"}));
  o.model = cli.get_or("model", o.model);
  HELIX_ASSIGN_OR_RETURN(o.context, cli.get_size("context", o.context));
  HELIX_ASSIGN_OR_RETURN(o.mla_context, cli.get_size("mla-context", o.mla_context));
  HELIX_ASSIGN_OR_RETURN(o.repeats, cli.get_int("repeats", o.repeats));
  if (o.context < 1 || o.mla_context < 1) return invalid_argument("--context must be positive");
  if (o.repeats < 1) return invalid_argument("--repeats must be at least 1");
  const std::string dtypes = cli.get_or("kv-dtype", "bf16,fp8_e4m3");
  for (std::size_t start = 0; start <= dtypes.size();) {
    const std::size_t comma = std::min(dtypes.find(',', start), dtypes.size());
    auto t = parse_dtype(std::string_view(dtypes).substr(start, comma - start));
    if (!t) return t.error().with_context("--kv-dtype");
    o.kv_dtypes.push_back(*t);
    start = comma + 1;
  }
  HELIX_ASSIGN_OR_RETURN(o.threads, parse_threads(cli.get_or("threads", "1,all")));
  o.mla = !cli.has("no-mla");
  o.json = cli.has("json");
  return o;
}

// One layer's KV for one request, in a paged pool allocated as one buffer; the block list is what
// a block table would hold for a request of `context` tokens on one rank (slot i = block i).
struct kv_cache {
  kv_page_layout layout;
  buffer storage;        // the pool's memory
  void* pool = nullptr;  // 4 KiB-aligned base of the pages inside `storage`
  std::vector<kv_block_ref> blocks;
  std::int64_t context = 0;
  std::size_t kv_bytes = 0;  // bytes the kernel reads: every token's keys and values
};

expected<kv_cache> make_cache(const model_spec& spec, dtype type, std::int64_t context,
                              thread_pool& pool) {
  kv_cache c;
  c.layout.num_kv_heads = spec.layout_kv_heads();
  c.layout.key_dim = spec.kv_key_dim();
  c.layout.value_dim = spec.kv_value_dim();
  c.layout.block_tokens = default_block_tokens;
  c.layout.type = type;
  c.layout.value_in_key = spec.is_mla();
  c.context = context;
  const std::int64_t num_blocks = (context + c.layout.block_tokens - 1) / c.layout.block_tokens;
  const std::size_t bytes = static_cast<std::size_t>(num_blocks) * c.layout.page_bytes();
  const std::size_t phys = physical_memory_bytes();
  if (phys != 0 && bytes > phys / 10 * 8) {
    return resource_exhausted("{} tokens of {} {} KV need {:.1f} GiB; this machine has {:.1f} GiB",
                              context, spec.name, dtype_name(type),
                              static_cast<double>(bytes) / (1 << 30),
                              static_cast<double>(phys) / (1 << 30));
  }
  c.kv_bytes = static_cast<std::size_t>(context) *
               static_cast<std::size_t>(spec.kv_values_per_token_per_layer()) * dtype_bytes(type);
  // Pages start on a 4 KiB boundary, as a real KV store's pool would (whole OS pages per head's
  // keys), so that the hardware prefetchers, which stop at page boundaries, see whole runs.
  c.storage = buffer::host(bytes + page_align);
  c.pool = reinterpret_cast<void*>(
      (reinterpret_cast<std::uintptr_t>(c.storage.data()) + page_align - 1) / page_align *
      page_align);
  c.blocks.resize(static_cast<std::size_t>(num_blocks));
  for (std::int64_t b = 0; b < num_blocks; ++b) {
    kv_block_ref& r = c.blocks[static_cast<std::size_t>(b)];
    r.slot = static_cast<std::int32_t>(b);
    r.first_pos = b * c.layout.block_tokens;
    r.num_tokens = static_cast<std::int32_t>(
        std::min(c.layout.block_tokens, context - b * c.layout.block_tokens));
  }
  // Filled in parallel by block ranges.
  constexpr std::int64_t blocks_per_task = 256;
  void* base = c.pool;
  const std::size_t page_bytes = c.layout.page_bytes();
  pool.parallel_for((num_blocks + blocks_per_task - 1) / blocks_per_task, [&](std::int64_t t) {
    const std::int64_t end = std::min(num_blocks, (t + 1) * blocks_per_task);
    for (std::int64_t b = t * blocks_per_task; b < end; ++b) {
      model::fill_synthetic_page(
          static_cast<std::byte*>(base) + static_cast<std::size_t>(b) * page_bytes, c.layout,
          kv_seed, static_cast<std::uint64_t>(b));
    }
  });
  return c;
}

struct case_result {
  std::string model;
  dtype kv_dtype = dtype::bf16;
  int threads = 1;
  std::int64_t context = 0;
  std::size_t kv_bytes = 0;
  double kernel_s = 0.0;
  double stream_s = 0.0;
  double flops = 0.0;             // MLA only
  double fma_peak_flops_s = 0.0;  // MLA only: fma_peak_flops_per_s on the same threads

  [[nodiscard]] nlohmann::json to_json() const {
    nlohmann::json j = {{"model", model},
                        {"kv_dtype", std::string(dtype_name(kv_dtype))},
                        {"threads", threads},
                        {"context", context},
                        {"kv_bytes", kv_bytes},
                        {"kv_bytes_per_s", static_cast<double>(kv_bytes) / kernel_s},
                        {"stream_bytes_per_s", static_cast<double>(kv_bytes) / stream_s},
                        {"ratio", stream_s / kernel_s},
                        {"ms", kernel_s * 1e3}};
    if (flops > 0.0) {
      j["flops_per_s"] = flops / kernel_s;
      j["fma_peak_flops_per_s"] = fma_peak_flops_s;
      j["fraction_of_fma_peak"] = flops / kernel_s / fma_peak_flops_s;
    }
    return j;
  }
};

// Times the kernel and the stream alternately, `repeats` times after one warm-up of each.
expected<case_result> run_case(const model_spec& spec, const kv_cache& cache, int threads,
                               std::int64_t repeats) {
  thread_pool pool(threads);
  const kv_page_layout& l = cache.layout;
  std::vector<float> q(static_cast<std::size_t>(spec.num_q_heads * l.key_dim));
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = 2.0f * random_uniform(q_seed, 0, 0, rng_purpose::synthetic_kv, i) - 1.0f;
  }
  std::vector<float> out(static_cast<std::size_t>(spec.num_q_heads * l.value_dim));
  std::vector<float> lse(static_cast<std::size_t>(spec.num_q_heads));
  const std::int64_t query_pos = cache.context;
  kernels::attention_partial_params p;
  p.q = q.data();
  p.query_pos = &query_pos;
  p.num_queries = 1;
  p.num_q_heads = spec.num_q_heads;
  p.layout = l;
  p.kv_pool = cache.pool;
  p.blocks = cache.blocks.data();
  p.num_blocks = static_cast<std::int64_t>(cache.blocks.size());
  p.softmax_scale = static_cast<float>(spec.softmax_scale());
  p.out = out.data();
  p.lse = lse.data();
  const kernels::exec_context ctx{kernels::backend::cpu, &pool, nullptr};
  buffer workspace = buffer::host(kernels::attention_workspace_bytes(p, ctx));
  p.workspace = workspace.data();
  p.workspace_bytes = workspace.bytes();

  std::vector<double> kernel_s;
  std::vector<double> stream_s;   // 512-bit loads
  std::vector<double> stream2_s;  // 256-bit loads (faster on some CPUs: the better one counts)
  volatile std::uint64_t sink = 0;
  for (std::int64_t r = 0; r <= repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    HELIX_RETURN_IF_ERROR(kernels::attention_partial(p, ctx));
    const double tk = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    sink = sink + stream_read(cache.pool, cache.kv_bytes, pool, kernels::simd::isa::avx512);
    const double ts = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    sink = sink + stream_read(cache.pool, cache.kv_bytes, pool, kernels::simd::isa::avx2);
    const double ts2 = seconds_since(t0);
    if (r == 0) continue;  // warm-up: page faults, caches, thread start
    kernel_s.push_back(tk);
    stream_s.push_back(ts);
    stream2_s.push_back(ts2);
  }
  for (float x : lse) {
    if (!std::isfinite(x)) return internal_error("attention returned a non-finite lse {}", x);
  }
  case_result res;
  res.model = spec.name;
  res.kv_dtype = l.type;
  res.threads = pool.num_threads();
  res.context = cache.context;
  res.kv_bytes = cache.kv_bytes;
  res.kernel_s = median(kernel_s);
  res.stream_s = std::min(median(stream_s), median(stream2_s));
  return res;
}

void print_progress(std::ostream& err, const case_result& r) {
  err << fmt::format(
      "  {} {} threads={}: {:.2f} ms, kv {:.2f} GB/s, stream {:.2f} GB/s, "
      "ratio {:.2f}{}\n",
      r.model, dtype_name(r.kv_dtype), r.threads, r.kernel_s * 1e3,
      static_cast<double>(r.kv_bytes) / r.kernel_s / 1e9,
      static_cast<double>(r.kv_bytes) / r.stream_s / 1e9, r.stream_s / r.kernel_s,
      r.flops > 0.0
          ? fmt::format(", {:.1f} GFLOP/s ({:.2f} of an FMA peak of {:.1f})",
                        r.flops / r.kernel_s / 1e9, r.flops / r.kernel_s / r.fma_peak_flops_s,
                        r.fma_peak_flops_s / 1e9)
          : std::string());
  err.flush();
}

status run_all(const bench_options& o, std::vector<case_result>& results,
               std::optional<case_result>& mla_result, std::ostream& err) {
  HELIX_ASSIGN_OR_RETURN(const model_spec spec, builtin_model(o.model));
  thread_pool fill_pool(0);
  for (const dtype t : o.kv_dtypes) {
    err << fmt::format("filling {} tokens of {} {} KV (synthetic, one layer)...\n", o.context,
                       spec.name, dtype_name(t));
    err.flush();
    HELIX_ASSIGN_OR_RETURN(const kv_cache cache, make_cache(spec, t, o.context, fill_pool));
    for (const int threads : o.threads) {
      HELIX_ASSIGN_OR_RETURN(case_result r, run_case(spec, cache, threads, o.repeats));
      print_progress(err, r);
      results.push_back(std::move(r));
    }
  }
  if (!o.mla) return ok_status();
  HELIX_ASSIGN_OR_RETURN(const model_spec mla, builtin_model("deepseek-r1"));
  err << fmt::format("filling {} tokens of deepseek-r1 bf16 latent KV (MLA)...\n", o.mla_context);
  HELIX_ASSIGN_OR_RETURN(const kv_cache cache,
                         make_cache(mla, dtype::bf16, o.mla_context, fill_pool));
  for (const int threads : o.threads) {
    HELIX_ASSIGN_OR_RETURN(case_result r, run_case(mla, cache, threads, o.repeats));
    // Scores and the value sum: 2 flops per multiply-add, every head against every token.
    r.flops = 2.0 * static_cast<double>(mla.num_q_heads) * static_cast<double>(o.mla_context) *
              static_cast<double>(mla.kv_key_dim() + mla.kv_value_dim());
    thread_pool peak_pool(threads);  // the ceiling on the same number of threads, same run
    r.fma_peak_flops_s = fma_peak_flops_per_s(peak_pool);
    print_progress(err, r);
    if (!mla_result || r.threads > mla_result->threads) mla_result = r;
    results.push_back(std::move(r));
  }
  return ok_status();
}

void print_table(std::ostream& out, const bench_options& o,
                 const std::vector<case_result>& results) {
  out << fmt::format(
      "attention decode, synthetic KV, {} tokens ({} for MLA), block_tokens {}, "
      "isa {}\n",
      o.context, o.mla_context, default_block_tokens,
      kernels::simd::isa_name(kernels::simd::cpu_isa()));
  out << fmt::format("{:<14} {:<9} {:>7} {:>9} {:>10} {:>10} {:>10} {:>7} {:>9} {:>9}\n", "model",
                     "kv_dtype", "threads", "context", "ms", "kv GB/s", "stream GB/s", "ratio",
                     "GFLOP/s", "FMA peak");
  for (const case_result& r : results) {
    const bool mla = r.flops > 0.0;
    out << fmt::format(
        "{:<14} {:<9} {:>7} {:>9} {:>10.2f} {:>10.2f} {:>10.2f} {:>7.2f} {:>9} {:>9}\n", r.model,
        dtype_name(r.kv_dtype), r.threads, r.context, r.kernel_s * 1e3,
        static_cast<double>(r.kv_bytes) / r.kernel_s / 1e9,
        static_cast<double>(r.kv_bytes) / r.stream_s / 1e9, r.stream_s / r.kernel_s,
        mla ? fmt::format("{:.1f}", r.flops / r.kernel_s / 1e9) : "-",
        mla ? fmt::format("{:.2f}", r.flops / r.kernel_s / r.fma_peak_flops_s) : "-");
  }
}

}  // namespace

int run_bench_attention(const std::vector<std::string>& args, std::ostream& out,
                        std::ostream& err) {
  auto cli = cli_args::parse(args, {"json", "no-mla", "help"});
  if (!cli) {
    err << "error: " << cli.error().message() << "\n" << bench_usage;
    return 2;
  }
  if (cli->has("help")) {
    out << bench_usage;
    return 0;
  }
  auto opts = parse_options(*cli);
  if (!opts) {
    err << "error: " << opts.error().message() << "\n";
    return 2;
  }
  std::vector<case_result> results;
  std::optional<case_result> mla_result;
  const status st = run_all(*opts, results, mla_result, err);
  if (!st.ok()) {
    err << "error: " << st.message() << "\n";
    return st.code() == errc::internal ? 1 : 2;
  }
  if (!opts->json) {
    print_table(out, *opts, results);
    return 0;
  }
  nlohmann::json j = {{"kv_fill", "synthetic"},
                      {"context", opts->context},
                      {"block_tokens", default_block_tokens},
                      {"isa", std::string(kernels::simd::isa_name(kernels::simd::cpu_isa()))},
                      {"results", nlohmann::json::array()}};
  for (const case_result& r : results) j["results"].push_back(r.to_json());
  if (mla_result) j["mla"] = mla_result->to_json();
  out << j.dump(2) << "\n";
  return 0;
}

int run_bench_attention(const std::vector<std::string>& args) {
  return run_bench_attention(args, std::cout, std::cerr);
}

}  // namespace helix::apps
