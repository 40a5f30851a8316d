// Calibration of the planner's `cpu` hardware preset on the machine the CLI runs on.
//
// Who calls it: `helix calibrate` and `helix plan --hardware cpu --calibrate` (apps/plan_cmd.cpp).
// It measures, in this process:
//   - memory bandwidth: a vectorised streaming read (integer sum) of a buffer much larger than the
//     last-level cache, one contiguous slice per thread (the approach of `helix bench attention`),
//     median of the repeats;
//   - the local communicator's all-reduce between 2 ranks (threads over
//     transport::make_local_fabric): the latency of a small message and the bandwidth of a large
//     one, each a median;
//   - the FLOPs of the optimised GEMM kernel (kernels::gemm, cpu backend, f32 weights) on a
//     thread pool, median of the repeats;
//   - physical memory (sysconf).
// and fills a planner::hardware starting from planner::hardware_preset("cpu"), naming every
// measurement in `sources`. As in the preset, a "device" is one worker thread: bandwidth and
// FLOPs are the machine's divided by the measuring threads; the link figures are fitted to the
// cost model's 2-rank all-reduce (planner::all_reduce_s: bytes / link + 2 * latency).
//
// Thread-safety: each call allocates its own buffers, pools and fabric; calls may run
// concurrently (but then measure each other). Timings on a shared machine are noisy: medians.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>

#include "core/status.hpp"
#include "core/thread_pool.hpp"
#include "planner/cost_model.hpp"

namespace helix::apps {

struct calibration_options {
  int threads = 0;  // stream and GEMM threads; 0 = every core
  /// Streaming-read buffer; 0 = 4 x the last-level cache within [256 MiB, 1 GiB], at most 1/8
  /// of memory.
  std::size_t stream_bytes = 0;
  int repeats = 5;                       // timed repeats per measurement (after one warm-up)
  std::size_t small_message_bytes = 64;  // all-reduce latency
  std::size_t large_message_bytes = std::size_t{64} << 20;  // all-reduce bandwidth
  int latency_iterations = 200;  // small all-reduces per timed repeat (the mean is one sample)
  std::int64_t gemm_m = 128;     // GEMM shape: y[m, n] = x[m, k] W[n, k]^T
  std::int64_t gemm_n = 1024;
  std::int64_t gemm_k = 2048;

  /// Small sizes that finish in about a second (tests, --quick): less accurate (a 128 MiB
  /// stream may be partly cached).
  [[nodiscard]] static calibration_options quick();
};

/// The measurements (whole machine, all threads) and the hardware value built from them.
struct calibration {
  int threads = 0;
  std::size_t stream_bytes = 0;
  double stream_bytes_per_s = 0;
  std::size_t small_message_bytes = 0;
  double all_reduce_latency_s = 0;  // one small-message all-reduce between 2 ranks
  std::size_t large_message_bytes = 0;
  double all_reduce_bytes_per_s = 0;  // bus bandwidth: message bytes / time (2 ranks)
  std::int64_t gemm_m = 0;
  std::int64_t gemm_n = 0;
  std::int64_t gemm_k = 0;
  double gemm_flops_per_s = 0;      // f32
  double fma_peak_flops_per_s = 0;  // f32 FMAs in registers (fma_peak_flops_per_s), all threads
  double physical_memory_bytes = 0;
  planner::hardware hw;
};

/// Runs every measurement; progress lines go to `progress`. invalid_argument for options out of
/// range, resource_exhausted when the stream buffer would not fit in memory, and the transport's
/// or the kernel's error if a measurement fails (internal for a non-finite GEMM result).
[[nodiscard]] expected<calibration> measure_cpu(const calibration_options& opts,
                                                std::ostream& progress);

/// measure_cpu with the default sizes and `threads` (0 = every core); the calibrated hardware.
[[nodiscard]] expected<planner::hardware> calibrate_cpu(int threads, std::ostream& progress);

/// Median seconds of a multi-threaded streaming read of `bytes` at `data`, one contiguous slice
/// per pool thread, `repeats` timed runs after one warm-up. Shared measuring helper (the same
/// read as `helix bench attention`'s baseline).
[[nodiscard]] double stream_read_seconds(const void* data, std::size_t bytes, thread_pool& pool,
                                         int repeats);

}  // namespace helix::apps
