// Hardware presets and precisions (planner/cost_model.hpp).
//
// Every number below is a public vendor figure unless marked ASSUMPTION or MEASURED. FLOPs are the
// dense tensor-core peaks (vendor tables quote "with sparsity", which is twice the dense figure;
// decode GEMMs are not structured-sparse). Bandwidths and FLOPs are per device; the achievable
// fractions (default 0.8 of peak bandwidth, 0.5 of peak FLOPs) are ASSUMPTIONS shared by all
// presets so that the comparison between layouts does not depend on them much: decode GEMV-like
// kernels reach 70-90% of HBM bandwidth, and small-batch GEMMs rarely more than half of peak.
#include <array>

#include "planner/cost_model.hpp"

namespace helix::planner {

std::string_view precision_name(precision p) {
  switch (p) {
    case precision::fp4:
      return "fp4";
    case precision::fp8:
      return "fp8";
    case precision::bf16:
      return "bf16";
    case precision::f32:
      return "f32";
  }
  return "unknown";
}

expected<precision> parse_precision(std::string_view name) {
  for (precision p : {precision::fp4, precision::fp8, precision::bf16, precision::f32}) {
    if (name == precision_name(p)) return p;
  }
  return invalid_argument("unknown precision '{}' (fp4, fp8, bf16, f32)", name);
}

double precision_bytes(precision p) {
  switch (p) {
    case precision::fp4:
      return 0.5;
    case precision::fp8:
      return 1.0;
    case precision::bf16:
      return 2.0;
    case precision::f32:
      return 4.0;
  }
  return 4.0;
}

double achievable_flops_per_s(const hardware& hw, precision p) {
  // ASSUMPTION: a precision without native tensor-core support is computed at the next wider one
  // the device has (FP4 weights are dequantised to FP8 on Hopper, etc.).
  const std::array<double, 4> peaks{hw.flops_fp4, hw.flops_fp8, hw.flops_bf16, hw.flops_f32};
  for (auto i = static_cast<std::size_t>(p); i < peaks.size(); ++i) {
    if (peaks[i] > 0) return peaks[i] * hw.achievable_flops;
  }
  return 0;
}

namespace {

constexpr double tera = 1e12;
constexpr double giga = 1e9;

// ASSUMPTION (all NVLink presets): a collective phase costs 2 us on top of its bytes: one NVSwitch
// round trip plus the kernel's flag synchronisation, with launches amortised by CUDA graphs. It is
// not a vendor number; NCCL's small-message all-reduce on 8 H100 measures about 8-15 us with
// launch overhead, TensorRT-LLM's custom one/two-shot all-reduce about 4-8 us, i.e. 2-4 phases.
constexpr double nvlink_phase_latency_s = 2e-6;
// ASSUMPTION: 4 GB per GPU are not available to weights and KV (CUDA context, NCCL/NVSHMEM
// buffers, GEMM workspaces, allocator fragmentation).
constexpr double gpu_reserved_bytes = 4 * giga;

hardware gb200_nvl72() {
  hardware h;
  h.name = "gb200-nvl72";
  h.hbm_bytes_per_s = 8 * tera;
  h.hbm_capacity_bytes = 186 * giga;
  h.link_bytes_per_s = 900 * giga;
  h.link_latency_s = nvlink_phase_latency_s;
  h.flops_fp4 = 10000 * tera;
  h.flops_fp8 = 5000 * tera;
  h.flops_bf16 = 2500 * tera;
  h.flops_f32 = 80 * tera;
  h.max_devices = 72;
  h.reserved_bytes = gpu_reserved_bytes;
  h.sources =
      "NVIDIA GB200 NVL72 product page (rack: 72 GPUs, 13.4 TB HBM3e = 186 GB/GPU, 576 TB/s HBM = "
      "8 TB/s/GPU, NVLink 130 TB/s = 1.8 TB/s/GPU bidirectional = 900 GB/s per direction, FP4 "
      "1,440 PF / FP8 720 PF / BF16 360 PF with sparsity = 10 / 5 / 2.5 PF dense per GPU, FP32 "
      "5,760 TF = 80 TF/GPU); the Helix paper's Fig. 1 uses MemBW = 8000 GB/s; link latency and "
      "reserved memory are assumptions (hardware.cpp)";
  return h;
}

hardware b200() {
  hardware h;
  h.name = "b200";
  h.hbm_bytes_per_s = 8 * tera;
  h.hbm_capacity_bytes = 180 * giga;
  h.link_bytes_per_s = 900 * giga;
  h.link_latency_s = nvlink_phase_latency_s;
  h.flops_fp4 = 9000 * tera;
  h.flops_fp8 = 4500 * tera;
  h.flops_bf16 = 2250 * tera;
  h.flops_f32 = 75 * tera;
  h.max_devices = 8;
  h.reserved_bytes = gpu_reserved_bytes;
  h.sources =
      "NVIDIA HGX B200 datasheet (8 GPUs: 1.4 TB HBM3e = 180 GB/GPU, 64 TB/s = 8 TB/s/GPU, NVLink "
      "5 "
      "1.8 TB/s/GPU bidirectional, FP4 144 PF / FP8 72 PF / BF16 36 PF with sparsity = 9 / 4.5 / "
      "2.25 PF dense per GPU, FP32 600 TF = 75 TF/GPU); link latency and reserved memory are "
      "assumptions (hardware.cpp)";
  return h;
}

hardware h100_sxm() {
  hardware h;
  h.name = "h100-sxm";
  h.hbm_bytes_per_s = 3.35 * tera;
  h.hbm_capacity_bytes = 80 * giga;
  h.link_bytes_per_s = 450 * giga;
  h.link_latency_s = nvlink_phase_latency_s;
  h.flops_fp4 = 0;  // no FP4 tensor cores: runs at the FP8 rate
  h.flops_fp8 = 1979 * tera;
  h.flops_bf16 = 989 * tera;
  h.flops_f32 = 67 * tera;
  h.max_devices = 8;
  h.reserved_bytes = gpu_reserved_bytes;
  h.sources =
      "NVIDIA H100 SXM datasheet (80 GB HBM3, 3.35 TB/s, NVLink 4 900 GB/s bidirectional = 450 "
      "GB/s per direction, FP8 3,958 TF / BF16 1,979 TF with sparsity = 1,979 / 989 dense, FP32 67 "
      "TF; HGX: 8 GPUs per NVLink domain); link latency and reserved memory are assumptions";
  return h;
}

hardware h200() {
  hardware h = h100_sxm();
  h.name = "h200";
  h.hbm_bytes_per_s = 4.8 * tera;
  h.hbm_capacity_bytes = 141 * giga;
  h.sources =
      "NVIDIA H200 SXM datasheet (141 GB HBM3e, 4.8 TB/s, NVLink 900 GB/s bidirectional = 450 GB/s "
      "per direction, FP8 3,958 TF / BF16 1,979 TF with sparsity = 1,979 / 989 dense, FP32 67 TF; "
      "HGX: 8 GPUs per NVLink domain); link latency and reserved memory are assumptions";
  return h;
}

// MEASURED on this project's development machine (2 vCPUs of an AMD EPYC with AVX-512, 23 GiB),
// under a load average of about 4.7 from other builds: a 2-thread streaming read of 1 GiB reached
// 19.4 GB/s and an AVX-512 FMA loop 41 GFLOP/s (1 and 2 threads alike, i.e. the two vCPUs share
// a core or were busy). A "device" here is one worker thread: the figures are split over the 2
// cores. The CPU kernels compute in f32 whatever the storage precision, so all precisions get the
// f32 rate. Workers exchange through shared memory: ASSUMPTION link = half the per-core read
// bandwidth (a copy reads and writes) and 20 us per collective phase (a futex wake-up between
// threads). The CLI's calibration replaces all of this with the machine it runs on.
hardware cpu() {
  hardware h;
  h.name = "cpu";
  h.hbm_bytes_per_s = 19.4 * giga / 2;
  h.hbm_capacity_bytes = 23.0 * 1024 * 1024 * 1024;
  h.link_bytes_per_s = 19.4 * giga / 4;
  h.link_latency_s = 20e-6;
  h.flops_f32 = 41 * giga / 2;
  h.flops_bf16 = h.flops_fp8 = h.flops_fp4 = h.flops_f32;
  h.max_devices = 8;
  h.achievable_bandwidth = 0.8;
  h.achievable_flops = 0.5;
  h.reserved_bytes = 1 * giga;
  h.sources =
      "measured on the 2-vCPU development machine (hardware.cpp): 19.4 GB/s read, 41 GFLOP/s f32, "
      "23 GiB, split over 2 cores; link and latency are assumptions";
  return h;
}

}  // namespace

std::vector<std::string> hardware_preset_names() {
  return {"gb200-nvl72", "h100-sxm", "h200", "b200", "cpu"};
}

expected<hardware> hardware_preset(std::string_view name) {
  if (name == "gb200-nvl72") return gb200_nvl72();
  if (name == "h100-sxm") return h100_sxm();
  if (name == "h200") return h200();
  if (name == "b200") return b200();
  if (name == "cpu") return cpu();
  return not_found("unknown hardware preset '{}' (gb200-nvl72, h100-sxm, h200, b200, cpu)", name);
}

}  // namespace helix::planner
