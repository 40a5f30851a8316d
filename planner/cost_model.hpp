// Roofline cost model of one decode step, the layout search over it, and the Pareto frontier.
//
// Pure policy (ARCHITECTURE.md section 3): no I/O, no actors. It answers: for this model, this
// hardware, this context length and this latency budget, which layout and batch give the most
// tokens/s/GPU, and how much better is Helix than the best baseline? Measured figures (the `cpu`
// preset's calibration) come in as a `hardware` value that the CLI fills. The engine's "auto"
// layout asks choose_runtime_layout().
//
// Every modelling assumption is stated where it is made in cost_model.cpp and hardware.cpp
// (collective algorithms and latency, experts activated per batch, achievable fraction of peak
// bandwidth and FLOPs, what HOP-B hides); the formulas follow the Helix paper's Appendix A roofline
// (HELIX-REFERENCE.md section 1.8) extended with FLOPs and communication. The building blocks
// (collectives, HOP-B, expected experts, the Appendix A roofline) are public so that tests and
// reports can check each one by hand.
//
// Units: seconds, bytes, FLOPs, bytes/s, FLOP/s. All functions are pure and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/layout.hpp"
#include "core/model_spec.hpp"
#include "core/status.hpp"

namespace helix::planner {

/// Storage / arithmetic precision of weights, KV and compute.
enum class precision : std::uint8_t { fp4, fp8, bf16, f32 };
[[nodiscard]] std::string_view precision_name(precision p);
[[nodiscard]] expected<precision> parse_precision(std::string_view name);  // "fp4", "fp8", ...
/// 0.5, 1, 2, 4. Block scales of FP4/FP8 formats are not counted (MXFP4 adds 1/32 byte per value,
/// NVFP4 1/16): the paper's Fig. 1 arithmetic uses 0.5 bytes per FP4 value.
[[nodiscard]] double precision_bytes(precision p);

/// One accelerator (or the CPU host) and its interconnect, with the sources of the numbers.
struct hardware {
  std::string name;
  double hbm_bytes_per_s = 0;     // peak memory bandwidth per device
  double hbm_capacity_bytes = 0;  // memory per device
  double link_bytes_per_s = 0;    // per direction, per device, into the scale-up domain
  double link_latency_s = 0;      // fixed cost of one collective phase (see all_reduce_s)
  double flops_fp4 = 0;           // dense (not sparse) peak, per device; 0 = no native support
  double flops_fp8 = 0;
  double flops_bf16 = 0;
  double flops_f32 = 0;
  std::int64_t max_devices = 1;       // devices in one scale-up domain (NVLink domain)
  double achievable_bandwidth = 0.8;  // fraction of peak HBM bandwidth a decode kernel reaches
  double achievable_flops = 0.5;      // fraction of peak FLOPs
  double reserved_bytes = 0;  // per device, unavailable to weights and KV (runtime, buffers)
  std::string sources;        // where each number comes from
};

/// Built-in presets: gb200-nvl72, h100-sxm, h200, b200, cpu (the last with this project's 2-core
/// development machine as measured; the CLI's calibration replaces it with the machine it runs
/// on). not_found naming the presets for an unknown name.
[[nodiscard]] expected<hardware> hardware_preset(std::string_view name);
[[nodiscard]] std::vector<std::string> hardware_preset_names();

/// Achievable FLOP/s of `hw` at precision `p`: the peak of `p`, or of the next wider precision the
/// device supports natively when it has none for `p` (e.g. FP4 on H100 runs at the FP8 rate),
/// times achievable_flops.
[[nodiscard]] double achievable_flops_per_s(const hardware& hw, precision p);

// ---- building blocks (documented formulas; each is checked by hand in the tests) ------------
// `bytes` is always the full buffer one rank holds (before an all-to-all / after an all-gather).
// All are 0 for a group of one. The fabric is a switch (NVSwitch), so every collective is a
// direct exchange, not a ring: see cost_model.cpp.

/// Two-shot all-reduce (reduce-scatter, then all-gather, each one direct exchange):
///   2 (n-1)/n * bytes / link + 2 * latency.
[[nodiscard]] double all_reduce_s(const hardware& hw, std::int64_t n, double bytes);
/// Direct all-to-all: (n-1)/n * bytes / link + latency.
[[nodiscard]] double all_to_all_s(const hardware& hw, std::int64_t n, double bytes);
/// Direct all-gather of a `bytes` output (each rank contributes bytes/n): (n-1)/n * bytes / link
/// + latency. A reduce-scatter of a `bytes` input costs the same.
[[nodiscard]] double all_gather_s(const hardware& hw, std::int64_t n, double bytes);
/// Point-to-point send (pipeline stages): bytes / link + latency.
[[nodiscard]] double p2p_s(const hardware& hw, double bytes);

/// HOP-B (paper Fig. 3): `items` requests, each with attention time `attention_s` followed by its
/// all-to-all `a2a_s`; the all-to-all of item r overlaps the attention of item r+1:
///   total = attention_s + a2a_s + (items - 1) * max(attention_s, a2a_s).
/// The paper's toy case (8 items, 2 and 1.2 units) gives 17.2 against 25.6 without overlap.
[[nodiscard]] double hopb_total_s(double attention_s, double a2a_s, std::int64_t items);
/// What HOP-B leaves exposed: hopb_total_s - items * attention_s
///   = a2a_s + (items - 1) * max(0, a2a_s - attention_s).
[[nodiscard]] double hopb_exposed_s(double attention_s, double a2a_s, std::int64_t items);

/// Expected number of distinct routed experts that `tokens` tokens, each choosing top-k distinct
/// experts out of `num_experts`, activate, assuming uniform and independent routing:
///   E * (1 - (1 - k/E)^tokens).
[[nodiscard]] double expected_active_experts(std::int64_t num_experts, std::int64_t top_k,
                                             double tokens);

// ---- configurations and their cost ------------------------------------------------------------

/// Layout families the search compares. helix, medha and tp run in the runtime; tp_pp (tensor
/// parallel within a stage, pipeline over stages) and dp_ep (data-parallel attention, expert
/// parallel FFN) are modelled only.
enum class plan_family : std::uint8_t { helix, tp, tp_pp, dp_ep, medha };
[[nodiscard]] std::string_view plan_family_name(plan_family f);

/// One point of the search: a family, its grid and a batch. Per family:
///   helix: N = kvp*tpa = tpf*ep (pp = dp = 1)     tp: kvp = 1, tpa = tpf = N, ep = 1
///   medha: N = kvp*tpa, tpf = tpa, ep = 1          tp_pp: N = tpa*pp, tpf = tpa, kvp = ep = 1
///   dp_ep: N = dp*tpa (tpa = attention TP inside a replica), kvp = 1; MoE: ep = N, tpf = 1;
///          dense: ep = 1, tpf = N.
struct plan_config {
  plan_family family = plan_family::helix;
  std::int64_t num_devices = 1;  // N
  std::int64_t kvp = 1;
  std::int64_t tpa = 1;
  std::int64_t tpf = 1;
  std::int64_t ep = 1;
  std::int64_t pp = 1;     // tp_pp: pipeline stages
  std::int64_t dp = 1;     // dp_ep: attention replicas (each holds whole requests)
  std::int64_t batch = 1;  // concurrent requests decoded per step (all of them, over all replicas)
  bool hopb = false;       // helix: overlap the all-to-all with attention
  /// "helix:kvp=8,tpa=8,tpf=64,ep=1 batch=16 hopb", "tp_pp:tp=8,pp=4 batch=8",
  /// "dp_ep:dp=64,tpa=1,tpf=1,ep=64 batch=64". The helix/tp/medha part parses as a layout.
  [[nodiscard]] std::string to_string() const;
};

/// The runtime layout of a helix, tp or medha configuration (validated for `spec`);
/// invalid_argument for tp_pp and dp_ep (not runnable) or a configuration that breaks a rule.
[[nodiscard]] expected<helix::layout> to_runtime_layout(const plan_config& c,
                                                        const model_spec& spec);

/// What the model assumes about the workload and the numerics.
struct plan_workload {
  std::int64_t context = 1 << 20;  // KV tokens per request (S)
  precision weights = precision::fp4;
  precision kv = precision::fp4;
  precision compute = precision::fp4;
  precision activations = precision::bf16;  // collectives' payload
};

/// The paper's Appendix A roofline, verbatim (HELIX-REFERENCE.md 1.8), per layer, GQA-style:
///   KV read     = B * 2 * ceil(K/TPA) * Hsz * (S/KVP) * bytes_kv / MemBW
///   weight read = [2 H (Q/TPA) Hsz + 2 H ceil(K/TPA) Hsz + 3 H F / TPF] * bytes_w / MemBW
/// with MemBW = hbm_bytes_per_s * achievable_bandwidth, B = c.batch, S = w.context, the grid
/// c.tpa, c.kvp, c.tpf (whatever c.family) and the storage precisions of w. Note: the formula
/// charges o_proj at TPA; estimate_step charges it at N (Helix's TP = N output projection), so the
/// two differ when N > TPA (see step_cost::weight_read_s).
struct roofline_terms {
  double kv_read_s = 0;
  double weight_read_s = 0;
};
[[nodiscard]] roofline_terms appendix_a_roofline(const model_spec& spec, const hardware& hw,
                                                 const plan_workload& w, const plan_config& c);

/// One decode step's cost on the slowest device, per layer and in total. Times in seconds.
struct step_cost {
  // Per layer, per device (MoE and dense layers averaged over the model's layers).
  double kv_bytes = 0;      // KV read by attention
  double weight_bytes = 0;  // weights read (attention, o_proj, FFN; only the activated experts)
  double flops = 0;
  double kv_read_s = 0;      // kv_bytes / achievable bandwidth (the paper's Fig. 1 "KV read")
  double weight_read_s = 0;  // weight_bytes / achievable bandwidth (Fig. 1 "weight read")
  /// Sum of per-phase rooflines max(bytes / bandwidth, FLOPs / peak) of the QKV (and MLA
  /// absorption) projections, the attention kernel and the output projection.
  double attention_s = 0;
  double ffn_s = 0;           // max(FFN weights over bandwidth, FFN FLOPs) (+ router)
  double a2a_s = 0;           // the attention all-to-all as one collective (helix, medha)
  double comm_s = 0;          // all collectives of the layer, none overlapped
  double exposed_comm_s = 0;  // what is not hidden (HOP-B hides the all-to-all behind attention)
  double layer_s = 0;         // attention_s + ffn_s + exposed_comm_s
  double active_experts_per_device = 0;  // per MoE layer (0 for dense models)
  // Whole step (all layers, plus the LM head; all pipeline stages for tp_pp).
  double step_s = 0;                   // time to one token per request: the TTL
  double tokens_per_s_per_user = 0;    // 1 / step_s
  double tokens_per_s_per_device = 0;  // batch / step_s / N
  // Memory per device (the fullest one).
  double weight_bytes_per_device = 0;
  double kv_bytes_per_device = 0;
  double memory_bytes_per_device = 0;  // weights + KV + workspace (incl. hw.reserved_bytes)
  bool fits = false;                   // memory_bytes_per_device <= capacity
};

/// The cost of `c` for `spec` on `hw` under `w`. invalid_argument when the configuration breaks a
/// rule of its family for this model (core/layout.hpp's validate() for helix, tp and medha; the
/// rules in plan_config's comment for tp_pp and dp_ep), for batch < 1, context < 1, or a
/// hardware without bandwidth or FLOPs.
[[nodiscard]] expected<step_cost> estimate_step(const model_spec& spec, const hardware& hw,
                                                const plan_workload& w, const plan_config& c);

// ---- search -------------------------------------------------------------------------------

/// A feasible configuration and its cost.
struct plan_point {
  plan_config config;
  step_cost cost;
};

struct search_options {
  std::int64_t max_devices = 64;      // also capped by hw.max_devices
  std::vector<std::int64_t> batches;  // empty: powers of two 1..4096
  std::vector<plan_family> families;  // empty: all
  bool hopb = true;                   // helix points with HOP-B (as the paper's "Helix")
};

/// Every feasible (fitting) configuration of the chosen families on 1..max_devices devices and
/// the chosen batches. invalid_argument for max_devices < 1 or a batch < 1, or what
/// estimate_step reports for the hardware.
[[nodiscard]] expected<std::vector<plan_point>> search_layouts(const model_spec& spec,
                                                               const hardware& hw,
                                                               const plan_workload& w,
                                                               const search_options& o);

/// The Pareto frontier of `points` (tokens/s/device against tokens/s/user, both maximised), sorted
/// by tokens/s/user ascending. Of points with identical metrics one is kept.
[[nodiscard]] std::vector<plan_point> pareto_frontier(std::vector<plan_point> points);

/// The paper's two headline ratios between Helix's points and the best baseline's (the union
/// of the other families' points):
///   throughput_ratio_at_equal_ttl: the maximum, over latency budgets where both have a feasible
///     configuration, of Helix's best tokens/s/device divided by the baseline's;
///   interactivity_ratio: Helix's best tokens/s/user divided by the baseline's.
/// failed_precondition when either side has no point.
struct headline {
  double throughput_ratio_at_equal_ttl = 0;
  double ttl_ms_at_max_ratio = 0;  // the (smallest) budget where that maximum is reached
  double interactivity_ratio = 0;
};
[[nodiscard]] expected<headline> headline_ratios(const std::vector<plan_point>& points);

/// The best configuration (most tokens/s/device, then the lower TTL) whose TTL is within
/// `ttl_ms`; not_found when none is.
[[nodiscard]] expected<plan_point> best_within_ttl(const std::vector<plan_point>& points,
                                                   double ttl_ms);

/// The engine's "auto" layout: among the helix, tp and medha layouts valid (core/layout.hpp
/// validate()) on exactly `num_devices` ranks, the one with the lowest estimated step time that
/// fits in memory, for `batch` requests of `context` tokens. Compute runs at the wider of the two
/// storage precisions, activations in bf16, HOP-B off (the engine's default). Ties go to the
/// earlier of helix, tp, medha, and within a family to the smaller TPA, then the smaller EP.
/// invalid_argument for num_devices, context or batch
/// < 1 or when no layout is valid; resource_exhausted, naming the smallest memory need, when
/// none fits.
[[nodiscard]] expected<helix::layout> choose_runtime_layout(
    const model_spec& spec, const hardware& hw, std::int64_t num_devices, std::int64_t context,
    std::int64_t batch, precision weights, precision kv);

}  // namespace helix::planner
