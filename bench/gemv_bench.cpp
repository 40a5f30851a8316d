// Micro-benchmark: the optimised CPU GEMV/GEMM with bf16 and block-scaled fp8_e4m3 weights, on
// small-llama's LM head (32000 x 1024) and an FFN down projection (1024 x 2816), at 1 and 4
// activation rows, on 1 and 2 threads. bytes_per_second counts the weight bytes (plus the fp8
// scales) read per call, so bf16 and fp8 compare as fractions of the same memory bandwidth;
// `weights_per_second` counts weights.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "core/thread_pool.hpp"
#include "kernels/gemm.hpp"

namespace {

using namespace helix;

float uniform(std::uint64_t stream, std::uint64_t i) {
  return 2.0f * random_uniform(3, stream, 0, rng_purpose::test_data, i) - 1.0f;
}

// Args: n (weight rows), k (columns), m (activation rows), fp8 (0 bf16, 1 fp8_e4m3), threads.
void BM_gemv(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  const std::int64_t k = state.range(1);
  const std::int64_t m = state.range(2);
  const dtype type = state.range(3) == 0 ? dtype::bf16 : dtype::fp8_e4m3;
  thread_pool pool(static_cast<int>(state.range(4)));
  const std::int64_t block_k = 128;
  const std::int64_t scale_stride = (k + block_k - 1) / block_k;

  std::vector<std::uint8_t> w(static_cast<std::size_t>(n * k) * dtype_bytes(type));
  for (std::int64_t i = 0; i < n * k; ++i) {
    // fp8 weights as a quantizer stores them: values up to 448, a small scale per block.
    const float v = uniform(0, static_cast<std::uint64_t>(i));
    store_from_f32(w.data(), type, static_cast<std::size_t>(i),
                   type == dtype::fp8_e4m3 ? 448 * v : v);
  }
  std::vector<float> scales(static_cast<std::size_t>(n * scale_stride));
  for (std::size_t i = 0; i < scales.size(); ++i) scales[i] = 1e-3f * (1.5f + uniform(1, i));
  std::vector<float> x(static_cast<std::size_t>(m * k));
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = uniform(2, i);
  std::vector<float> y(static_cast<std::size_t>(m * n));

  kernels::gemm_params p;
  p.x = x.data();
  p.w = w.data();
  p.w_type = type;
  p.y = y.data();
  p.m = m;
  p.n = n;
  p.k = k;
  if (type == dtype::fp8_e4m3) {
    p.w_scales = scales.data();
    p.w_scale_stride = scale_stride;
    p.w_block_k = block_k;
  }
  const kernels::exec_context ctx{kernels::backend::cpu, &pool, nullptr};
  for (auto _ : state) {
    const status st = kernels::gemm(p, ctx);
    if (!st.ok()) {
      state.SkipWithError(st.to_string().c_str());
      break;
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const std::int64_t bytes =
      static_cast<std::int64_t>(w.size()) + (type == dtype::fp8_e4m3 ? n * scale_stride * 4 : 0);
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * bytes);
  state.counters["weights_per_second"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(n * k),
                         benchmark::Counter::kIsRate);
  state.counters["threads"] = pool.num_threads();
}

BENCHMARK(BM_gemv)
    ->ArgsProduct({{32000}, {1024}, {1, 2, 3, 4, 8}, {0, 1}, {1, 2}})
    ->ArgsProduct({{1024}, {2816}, {1, 4}, {0, 1}, {1, 2}})
    ->ArgNames({"n", "k", "m", "fp8", "threads"})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
