// Micro-benchmark: optimised vs reference CPU partial attention, one decode query with
// small-llama's shape (8 query heads over 2 KV heads of 128) at a few contexts, bf16 and fp8 KV.
// Runs in seconds; `helix bench attention` is the full-size bandwidth benchmark.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <thread>
#include <vector>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "core/thread_pool.hpp"
#include "kernels/attention.hpp"

namespace {

using namespace helix;

struct attention_setup {
  kv_page_layout layout;
  buffer pool;
  std::vector<kv_block_ref> blocks;
  std::vector<float> q;
  std::vector<float> out;
  std::vector<float> lse;
  std::int64_t query_pos = 0;
  buffer workspace;
  kernels::attention_partial_params params;

  attention_setup(std::int64_t context, dtype type, const kernels::exec_context& ctx) {
    layout.num_kv_heads = 2;
    layout.key_dim = layout.value_dim = 128;
    layout.type = type;
    const std::int64_t num_blocks = (context + layout.block_tokens - 1) / layout.block_tokens;
    pool = buffer::host(static_cast<std::size_t>(num_blocks) * layout.page_bytes());
    const auto elems = static_cast<std::size_t>(num_blocks * layout.page_elems());
    for (std::size_t i = 0; i < elems; ++i) {
      store_from_f32(pool.data(), type, i,
                     2.0f * random_uniform(1, 0, 0, rng_purpose::synthetic_kv, i) - 1.0f);
    }
    for (std::int64_t b = 0; b < num_blocks; ++b) {
      blocks.push_back({0, static_cast<std::int32_t>(b), b * layout.block_tokens,
                        static_cast<std::int32_t>(std::min<std::int64_t>(
                            layout.block_tokens, context - b * layout.block_tokens))});
    }
    q.resize(8 * 128);
    for (std::size_t i = 0; i < q.size(); ++i) {
      q[i] = 2.0f * random_uniform(2, 0, 0, rng_purpose::synthetic_kv, i) - 1.0f;
    }
    out.resize(8 * 128);
    lse.resize(8);
    query_pos = context;
    params.q = q.data();
    params.query_pos = &query_pos;
    params.num_q_heads = 8;
    params.layout = layout;
    params.kv_pool = pool.data();
    params.blocks = blocks.data();
    params.num_blocks = num_blocks;
    params.softmax_scale = 0.08838834764f;
    params.out = out.data();
    params.lse = lse.data();
    workspace = buffer::host(kernels::attention_workspace_bytes(params, ctx));
    params.workspace = workspace.data();
    params.workspace_bytes = workspace.bytes();
  }
};

// Args: context tokens, dtype index (0 bf16, 1 fp8_e4m3), threads (0 = all cores; optimised only).
void run(benchmark::State& state, kernels::backend backend) {
  const dtype type = state.range(1) == 0 ? dtype::bf16 : dtype::fp8_e4m3;
  thread_pool pool(static_cast<int>(state.range(2)));
  const kernels::exec_context ctx{backend, &pool, nullptr};
  attention_setup s(state.range(0), type, ctx);
  for (auto _ : state) {
    const status st = kernels::attention_partial(s.params, ctx);
    if (!st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(s.out.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(s.blocks.size() * s.layout.page_bytes()));
  state.counters["threads"] = pool.num_threads();
}

void BM_attention_optimized(benchmark::State& state) {
  run(state, kernels::backend::cpu);
}
void BM_attention_reference(benchmark::State& state) {
  run(state, kernels::backend::reference);
}

BENCHMARK(BM_attention_optimized)
    ->ArgsProduct({{4096, 65536}, {0, 1}, {1, 0}})
    ->ArgNames({"context", "fp8", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_attention_reference)
    ->ArgsProduct({{1024, 4096}, {0, 1}, {1}})
    ->ArgNames({"context", "fp8", "threads"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
