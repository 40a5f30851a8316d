// The streaming-read baseline of the benchmarks and the calibration, and the f32 FMA peak
// (apps/measure.hpp).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

#include "apps/measure.hpp"
#include "kernels/cpu/simd.hpp"

namespace helix::apps {
namespace {

// The streaming baseline: an integer sum over the same bytes (integer adds: no FP assists on
// random bit patterns), one contiguous slice per thread, the best case for the hardware.
#if HELIX_SIMD_X86
HELIX_SIMD_AVX512 std::uint64_t sum_avx512(const std::byte* p, std::size_t n) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  std::size_t i = 0;
  for (; i + 256 <= n; i += 256) {
    a0 = _mm512_add_epi32(a0, _mm512_loadu_si512(p + i));
    a1 = _mm512_add_epi32(a1, _mm512_loadu_si512(p + i + 64));
    a2 = _mm512_add_epi32(a2, _mm512_loadu_si512(p + i + 128));
    a3 = _mm512_add_epi32(a3, _mm512_loadu_si512(p + i + 192));
  }
  // Lanes summed as unsigned: _mm512_reduce_add_epi32 adds in (overflowing) signed int.
  alignas(64) std::uint32_t lanes[16];
  _mm512_store_si512(lanes, _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)));
  std::uint64_t s = 0;
  for (std::uint32_t x : lanes) s += x;
  for (; i < n; ++i) s += static_cast<std::uint8_t>(p[i]);
  return s;
}

HELIX_SIMD_AVX2 std::uint64_t sum_avx2(const std::byte* p, std::size_t n) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  std::size_t i = 0;
  for (; i + 128 <= n; i += 128) {
    a0 = _mm256_add_epi32(a0, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
    a1 = _mm256_add_epi32(a1, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    a2 = _mm256_add_epi32(a2, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 64)));
    a3 = _mm256_add_epi32(a3, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 96)));
  }
  alignas(32) std::uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
  std::uint64_t s = 0;
  for (std::uint32_t x : lanes) s += x;
  for (; i < n; ++i) s += static_cast<std::uint8_t>(p[i]);
  return s;
}
#endif

std::uint64_t sum_bytes(const std::byte* p, std::size_t n, kernels::simd::isa isa) {
#if HELIX_SIMD_X86
  switch (std::min(isa, kernels::simd::cpu_isa())) {
    case kernels::simd::isa::avx512:
      return sum_avx512(p, n);
    case kernels::simd::isa::avx2:
      return sum_avx2(p, n);
    case kernels::simd::isa::scalar:
      break;
  }
#endif
  std::uint64_t s = 0;
  for (std::size_t i = 0; i + 8 <= n; i += 8) {
    std::uint64_t x;
    std::memcpy(&x, p + i, 8);
    s += x;
  }
  return s;
}

// The FMA peak: independent chains of fused multiply-adds in registers (12 accumulators, more
// than latency x issue width on current cores), nothing loaded or stored in the loop. Returns a
// value derived from every chain so that none is optimised away.
constexpr int fma_chains = 12;

#if HELIX_SIMD_X86
HELIX_SIMD_AVX512 float fma_chains_avx512(std::int64_t iters, float seed) {
  __m512 a[fma_chains];
  for (int j = 0; j < fma_chains; ++j) a[j] = _mm512_set1_ps(seed + 0.01f * static_cast<float>(j));
  const __m512 m = _mm512_set1_ps(0.999999f);
  const __m512 c = _mm512_set1_ps(1e-6f);
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < fma_chains; ++j) a[j] = _mm512_fmadd_ps(a[j], m, c);
  }
  __m512 s = a[0];
  for (int j = 1; j < fma_chains; ++j) s = _mm512_add_ps(s, a[j]);
  return _mm512_reduce_add_ps(s);
}

HELIX_SIMD_AVX2 float fma_chains_avx2(std::int64_t iters, float seed) {
  __m256 a[fma_chains];
  for (int j = 0; j < fma_chains; ++j) a[j] = _mm256_set1_ps(seed + 0.01f * static_cast<float>(j));
  const __m256 m = _mm256_set1_ps(0.999999f);
  const __m256 c = _mm256_set1_ps(1e-6f);
  for (std::int64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < fma_chains; ++j) a[j] = _mm256_fmadd_ps(a[j], m, c);
  }
  alignas(32) float lanes[8];
  __m256 s = a[0];
  for (int j = 1; j < fma_chains; ++j) s = _mm256_add_ps(s, a[j]);
  _mm256_store_ps(lanes, s);
  float r = 0.0f;
  for (float x : lanes) r += x;
  return r;
}
#endif

float fma_chains_scalar(std::int64_t iters, float seed) {
  float a[fma_chains];
  for (int j = 0; j < fma_chains; ++j) a[j] = seed + 0.01f * static_cast<float>(j);
  for (std::int64_t i = 0; i < iters; ++i) {
    for (float& x : a) x = std::fma(x, 0.999999f, 1e-6f);
  }
  float r = 0.0f;
  for (float x : a) r += x;
  return r;
}

}  // namespace

double fma_peak_flops_per_s(thread_pool& pool, int repeats) {
  [[maybe_unused]] const kernels::simd::isa isa = kernels::simd::cpu_isa();
  repeats = std::max(repeats, 1);
  int lanes = 1;
#if HELIX_SIMD_X86
  if (isa == kernels::simd::isa::avx512) lanes = 16;
  if (isa == kernels::simd::isa::avx2) lanes = 8;
#endif
  // About 8 ms per repeat at 100 GFLOP/s per thread; 8 tasks per thread, claimed as they come.
  const std::int64_t tasks = 8 * static_cast<std::int64_t>(pool.num_threads());
  const std::int64_t iters = (lanes == 1 ? 4'000'000 : 2'000'000) / 8;
  std::vector<float> sink(static_cast<std::size_t>(tasks), 0.0f);
  std::vector<double> seconds;
  for (int r = 0; r <= repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    pool.parallel_for(tasks, [&](std::int64_t t) {
      const float seed = 1.0f + 1e-3f * static_cast<float>(t);
      float v = 0.0f;
#if HELIX_SIMD_X86
      if (lanes == 16) v = fma_chains_avx512(iters, seed);
      if (lanes == 8) v = fma_chains_avx2(iters, seed);
#endif
      if (lanes == 1) v = fma_chains_scalar(iters, seed);
      sink[static_cast<std::size_t>(t)] += v;
    });
    if (r > 0) seconds.push_back(seconds_since(t0));  // the first run warms up
  }
  volatile float keep = 0.0f;
  for (float v : sink) keep = keep + v;
  const double flops = 2.0 * fma_chains * lanes * static_cast<double>(iters * tasks);
  return flops / median(seconds);
}

std::uint64_t stream_read(const void* data, std::size_t bytes, thread_pool& pool) {
  return stream_read(data, bytes, pool, kernels::simd::cpu_isa());
}

std::uint64_t stream_read(const void* data, std::size_t bytes, thread_pool& pool,
                          kernels::simd::isa isa) {
  const auto* p = static_cast<const std::byte*>(data);
  const auto n = static_cast<std::size_t>(pool.num_threads());
  const std::size_t slice = (bytes / n + 255) / 256 * 256;
  std::vector<std::uint64_t> sums(n, 0);
  pool.parallel_for(static_cast<std::int64_t>(n), [&](std::int64_t t) {
    const std::size_t begin = std::min(bytes, static_cast<std::size_t>(t) * slice);
    const std::size_t end = std::min(bytes, begin + slice);
    sums[static_cast<std::size_t>(t)] = sum_bytes(p + begin, end - begin, isa);
  });
  std::uint64_t s = 0;
  for (std::uint64_t x : sums) s += x;
  return s;
}

}  // namespace helix::apps
