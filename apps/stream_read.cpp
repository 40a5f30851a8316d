// The streaming-read baseline of the benchmarks and the calibration (apps/measure.hpp).
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

}  // namespace

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
