// Small measuring helpers shared by the benchmark commands (bench attention, bench decode, demo).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/tensor.hpp"  // physical_memory_bytes
#include "core/thread_pool.hpp"
#include "kernels/cpu/simd.hpp"

namespace helix::apps {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

/// Median of a non-empty sample (mean of the middle two for an even count).
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

/// The streaming-read baseline: an integer sum over `bytes` at `data` (integer adds: no FP
/// assists on arbitrary bit patterns), one contiguous slice per pool thread, with the widest
/// vector loads this CPU has: the best case for the memory system. Returns the sum (use it, so
/// the read is not optimised away).
[[nodiscard]] std::uint64_t stream_read(const void* data, std::size_t bytes, thread_pool& pool);
/// The same with vector loads no wider than `isa`'s (on some CPUs 256-bit loads stream faster
/// than 512-bit ones: a baseline that claims to be the limit takes the better of the two).
[[nodiscard]] std::uint64_t stream_read(const void* data, std::size_t bytes, thread_pool& pool,
                                        kernels::simd::isa isa);

/// The f32 FMA peak of the pool's threads, flop/s (2 per multiply-add): independent chains of
/// fused multiply-adds in registers with the widest vectors this CPU has, median of `repeats`
/// runs of about 0.1 s after one warm-up. The ceiling a compute-bound kernel is measured against.
[[nodiscard]] double fma_peak_flops_per_s(thread_pool& pool, int repeats = 5);

}  // namespace helix::apps
