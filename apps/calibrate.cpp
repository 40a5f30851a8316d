#include "apps/calibrate.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <span>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "apps/measure.hpp"
#include "core/tensor.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/gemm.hpp"
#include "transport/transport.hpp"

namespace helix::apps {
namespace {

constexpr std::size_t mib = std::size_t{1} << 20;

// Slice t of `bytes` split over `n` threads, 256-byte aligned (as stream_read splits its reads).
std::pair<std::size_t, std::size_t> slice_of(std::size_t bytes, std::size_t n, std::size_t t) {
  const std::size_t slice = (bytes / n + 255) / 256 * 256;
  const std::size_t begin = std::min(bytes, t * slice);
  return {begin, std::min(bytes, begin + slice)};
}

// Last-level cache size in bytes (glibc's sysconf; 0 when unknown).
std::size_t last_level_cache_bytes() {
  for (const int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
    const long v = sysconf(name);
    if (v > 0) return static_cast<std::size_t>(v);
  }
  return 0;
}

struct all_reduce_figures {
  double latency_s = 0;
  double bytes_per_s = 0;
};

// The sequence both ranks run: for the small then the large message, one warm-up and `repeats`
// timed repeats, each opened by a barrier so that both ranks start together. Rank 0's times are
// the samples (a 2-rank all-reduce completes on both ranks at once).
struct all_reduce_samples {
  std::vector<double> small_s;
  std::vector<double> large_s;
};

expected<all_reduce_samples> all_reduce_rank(transport::communicator& comm,
                                             const calibration_options& o) {
  all_reduce_samples samples;
  for (const bool large : {false, true}) {
    const std::size_t count =
        std::max<std::size_t>(1, (large ? o.large_message_bytes : o.small_message_bytes) / 4);
    std::vector<float> send(count, 1.0f);
    std::vector<float> recv(count, 0.0f);
    const int iterations = large ? 1 : o.latency_iterations;
    for (int r = 0; r <= o.repeats; ++r) {
      HELIX_RETURN_IF_ERROR(comm.barrier());
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < iterations; ++i) {
        HELIX_RETURN_IF_ERROR(comm.all_reduce(transport::as_send(std::span<const float>(send)),
                                              transport::as_recv(std::span<float>(recv))));
      }
      const double t = seconds_since(t0) / iterations;
      if (r == 0) continue;  // warm-up: first touch of the buffers, thread wake-ups
      (large ? samples.large_s : samples.small_s).push_back(t);
    }
    if (recv[0] != 2.0f) {
      return internal_error("all-reduce of 1.0 over 2 ranks gave {} on rank {}", recv[0],
                            comm.rank());
    }
  }
  return samples;
}

expected<all_reduce_figures> measure_all_reduce(const calibration_options& o) {
  transport::local_fabric_options fo;
  fo.world_size = 2;
  fo.default_timeout = std::chrono::milliseconds(60'000);  // a lost peer fails, never hangs
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<transport::fabric> fab, transport::make_local_fabric(fo));
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<transport::communicator> c0, fab->make_world(0));
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<transport::communicator> c1, fab->make_world(1));
  status peer_status;
  std::thread peer([&] {
    auto s = all_reduce_rank(*c1, o);
    if (!s) {
      peer_status = s.error();
      fab->abort(peer_status);
    }
  });
  auto samples = all_reduce_rank(*c0, o);
  if (!samples) fab->abort(samples.error());
  peer.join();
  HELIX_RETURN_IF_ERROR(samples.error());
  HELIX_RETURN_IF_ERROR(peer_status);
  all_reduce_figures f;
  f.latency_s = median(samples->small_s);
  // Two ranks: each sends and receives one message's worth, so the bus bandwidth equals the
  // algorithm bandwidth (the 2(n-1)/n factor is 1).
  f.bytes_per_s = static_cast<double>(o.large_message_bytes) / median(samples->large_s);
  return f;
}

expected<double> measure_gemm(const calibration_options& o, thread_pool& pool) {
  const auto m = static_cast<std::size_t>(o.gemm_m);
  const auto n = static_cast<std::size_t>(o.gemm_n);
  const auto k = static_cast<std::size_t>(o.gemm_k);
  std::vector<float> x(m * k);
  std::vector<float> w(n * k);
  std::vector<float> y(m * n);
  // Small, varied values: no denormals, no overflow.
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(i % 17) * 0.01f - 0.08f;
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 13) * 0.01f - 0.06f;
  kernels::gemm_params p;
  p.x = x.data();
  p.w = w.data();
  p.w_type = dtype::f32;
  p.y = y.data();
  p.m = o.gemm_m;
  p.n = o.gemm_n;
  p.k = o.gemm_k;
  const kernels::exec_context ctx{kernels::backend::cpu, &pool, nullptr};
  std::vector<double> times;
  for (int r = 0; r <= o.repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    HELIX_RETURN_IF_ERROR(kernels::gemm(p, ctx));
    const double t = seconds_since(t0);
    if (r > 0) times.push_back(t);
  }
  for (const float v : y) {
    if (!std::isfinite(v)) return internal_error("gemm calibration produced a non-finite {}", v);
  }
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k) /
         median(times);
}

}  // namespace

calibration_options calibration_options::quick() {
  calibration_options o;
  o.stream_bytes = 128 * mib;
  o.repeats = 3;
  o.large_message_bytes = 8 * mib;
  o.latency_iterations = 50;
  o.gemm_m = 64;
  o.gemm_n = 512;
  o.gemm_k = 1024;
  return o;
}

double stream_read_seconds(const void* data, std::size_t bytes, thread_pool& pool, int repeats) {
  std::vector<double> times;
  volatile std::uint64_t sink = 0;
  for (int r = 0; r <= repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    sink = sink + stream_read(data, bytes, pool);
    const double t = seconds_since(t0);
    if (r > 0) times.push_back(t);
  }
  return median(times);
}

expected<calibration> measure_cpu(const calibration_options& opts, std::ostream& progress) {
  calibration_options o = opts;
  if (o.threads < 0 || o.threads > 1024) {
    return invalid_argument("calibration: {} threads is out of range (0 = every core)", o.threads);
  }
  if (o.repeats < 1 || o.latency_iterations < 1) {
    return invalid_argument("calibration: repeats ({}) and iterations ({}) must be at least 1",
                            o.repeats, o.latency_iterations);
  }
  if (o.small_message_bytes < 4 || o.large_message_bytes < 4) {
    return invalid_argument("calibration: all-reduce messages must hold at least one f32");
  }
  if (o.gemm_m < 1 || o.gemm_n < 1 || o.gemm_k < 1) {
    return invalid_argument("calibration: GEMM shape {}x{}x{} must be positive", o.gemm_m, o.gemm_n,
                            o.gemm_k);
  }
  const std::size_t phys = physical_memory_bytes();
  if (o.stream_bytes == 0) {
    // sysconf may report a whole socket's L3 (hundreds of MiB on a VM): at most 1 GiB.
    o.stream_bytes = std::clamp(4 * last_level_cache_bytes(), 256 * mib, 1024 * mib);
    if (phys != 0) o.stream_bytes = std::min(o.stream_bytes, phys / 8);
  }
  if (o.stream_bytes < 4096) {
    return invalid_argument("calibration: a {}-byte stream buffer is too small", o.stream_bytes);
  }
  if (phys != 0 && o.stream_bytes > phys / 2) {
    return resource_exhausted(
        "calibration: a {:.1f} GiB stream buffer exceeds half of the {:.1f} "
        "GiB of memory",
        static_cast<double>(o.stream_bytes) / (1 << 30), static_cast<double>(phys) / (1 << 30));
  }

  thread_pool pool(o.threads);
  calibration c;
  c.threads = pool.num_threads();
  c.stream_bytes = o.stream_bytes;
  c.small_message_bytes = o.small_message_bytes;
  c.large_message_bytes = o.large_message_bytes;
  c.gemm_m = o.gemm_m;
  c.gemm_n = o.gemm_n;
  c.gemm_k = o.gemm_k;
  c.physical_memory_bytes = static_cast<double>(phys);

  {
    progress << fmt::format("calibrate: streaming read of {} MiB on {} threads...\n",
                            o.stream_bytes / mib, c.threads);
    progress.flush();
    HELIX_ASSIGN_OR_RETURN(buffer buf, buffer::try_host(o.stream_bytes));
    // First touch by the thread that later reads the slice (NUMA-local pages).
    const auto n = static_cast<std::size_t>(c.threads);
    pool.parallel_for(static_cast<std::int64_t>(n), [&](std::int64_t t) {
      const auto [begin, end] = slice_of(o.stream_bytes, n, static_cast<std::size_t>(t));
      std::memset(static_cast<std::byte*>(buf.data()) + begin, 0x5a, end - begin);
    });
    c.stream_bytes_per_s = static_cast<double>(o.stream_bytes) /
                           stream_read_seconds(buf.data(), o.stream_bytes, pool, o.repeats);
    progress << fmt::format("  {:.2f} GB/s\n", c.stream_bytes_per_s / 1e9);
  }
  {
    progress << fmt::format(
        "calibrate: local all-reduce between 2 ranks, {} B and {} MiB messages...\n",
        o.small_message_bytes, o.large_message_bytes / mib);
    progress.flush();
    HELIX_ASSIGN_OR_RETURN(const all_reduce_figures f, measure_all_reduce(o));
    c.all_reduce_latency_s = f.latency_s;
    c.all_reduce_bytes_per_s = f.bytes_per_s;
    progress << fmt::format("  latency {:.1f} us, bandwidth {:.2f} GB/s\n", f.latency_s * 1e6,
                            f.bytes_per_s / 1e9);
  }
  {
    progress << fmt::format("calibrate: f32 GEMM {}x{}x{} on {} threads...\n", o.gemm_m, o.gemm_n,
                            o.gemm_k, c.threads);
    progress.flush();
    HELIX_ASSIGN_OR_RETURN(c.gemm_flops_per_s, measure_gemm(o, pool));
    progress << fmt::format("  {:.1f} GFLOP/s\n", c.gemm_flops_per_s / 1e9);
  }
  {
    progress << fmt::format(
        "calibrate: f32 FMA peak (multiply-adds in registers) on {} threads...\n", c.threads);
    progress.flush();
    c.fma_peak_flops_per_s = fma_peak_flops_per_s(pool, o.repeats);
    progress << fmt::format("  {:.1f} GFLOP/s\n", c.fma_peak_flops_per_s / 1e9);
  }

  HELIX_ASSIGN_OR_RETURN(const planner::hardware preset, planner::hardware_preset("cpu"));
  planner::hardware& hw = c.hw;
  hw = preset;
  hw.name = "cpu-calibrated";
  // As in the preset, a "device" is one worker thread: the machine's bandwidth and FLOPs are
  // split over the threads that produced them; memory is the whole machine's, as in the preset.
  const double per_device = 1.0 / c.threads;
  hw.hbm_bytes_per_s = c.stream_bytes_per_s * per_device;
  if (phys != 0) hw.hbm_capacity_bytes = c.physical_memory_bytes;
  // The cost model charges a 2-rank all-reduce bytes / link + 2 * latency (planner::all_reduce_s,
  // two-shot): the small message gives the latency, the large one's time above it the link.
  hw.link_latency_s = c.all_reduce_latency_s / 2;
  const double large_s = static_cast<double>(c.large_message_bytes) / c.all_reduce_bytes_per_s;
  hw.link_bytes_per_s = static_cast<double>(c.large_message_bytes) /
                        std::max(large_s - c.all_reduce_latency_s, large_s * 0.01);
  // Only f32 is measured (the CPU kernels compute in f32 whatever the storage); the other
  // precisions keep the preset's ratio to f32.
  hw.flops_f32 = c.gemm_flops_per_s * per_device;
  const double scale = preset.flops_f32 > 0 ? hw.flops_f32 / preset.flops_f32 : 1.0;
  hw.flops_fp4 = preset.flops_fp4 > 0 ? preset.flops_fp4 * scale : hw.flops_f32;
  hw.flops_fp8 = preset.flops_fp8 > 0 ? preset.flops_fp8 * scale : hw.flops_f32;
  hw.flops_bf16 = preset.flops_bf16 > 0 ? preset.flops_bf16 * scale : hw.flops_f32;
  hw.sources = fmt::format(
      "calibrated on this machine from the cpu preset (a device is one worker thread: machine "
      "figures divided by the {} measuring threads): hbm_bytes_per_s = streaming read (integer "
      "sum, {}) of {} MiB on {} threads, median of {}: {:.2f} GB/s; hbm_capacity_bytes = "
      "physical memory from sysconf: {:.1f} GiB; link_latency_s = half the median time of a {} B "
      "all-reduce between 2 ranks (threads) of the local fabric (mean of {} calls per sample, "
      "{} samples): {:.1f} us; link_bytes_per_s = {} MiB f32 all-reduce between the same ranks, "
      "bytes / (median time - that latency): {:.2f} GB/s; flops_f32 = kernels::gemm cpu backend, "
      "f32 weights, {}x{}x{} on {} threads, median of {}: {:.1f} GFLOP/s; flops_fp4/fp8/bf16 "
      "scaled from the preset by the same factor ({:.3g}); achievable_bandwidth {}, "
      "achievable_flops {}, max_devices {} and reserved_bytes kept from the preset. Preset "
      "sources: {}",
      c.threads, kernels::simd::isa_name(kernels::simd::cpu_isa()), o.stream_bytes / mib, c.threads,
      o.repeats, c.stream_bytes_per_s / 1e9, c.physical_memory_bytes / (1 << 30),
      o.small_message_bytes, o.latency_iterations, o.repeats, c.all_reduce_latency_s * 1e6,
      o.large_message_bytes / mib, hw.link_bytes_per_s / 1e9, o.gemm_m, o.gemm_n, o.gemm_k,
      c.threads, o.repeats, c.gemm_flops_per_s / 1e9, scale, hw.achievable_bandwidth,
      hw.achievable_flops, hw.max_devices, preset.sources);
  return c;
}

expected<planner::hardware> calibrate_cpu(int threads, std::ostream& progress) {
  calibration_options o;
  o.threads = threads;
  HELIX_ASSIGN_OR_RETURN(calibration c, measure_cpu(o, progress));
  return std::move(c.hw);
}

}  // namespace helix::apps
