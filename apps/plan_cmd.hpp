// `helix plan` and `helix calibrate`: the planner's cost model on the command line.
//
// helix plan: searches the layouts of every family (planner::search_layouts) for a model, a
// hardware preset, a context length and a GPU limit, and prints per family the Pareto frontier of
// tokens/s/GPU against tokens/s/user, the paper's two headline ratios (Helix against the best
// baseline) and the best point per family; `--ttl-ms X` instead answers which layout and batch
// give the most tokens/s/GPU within that latency; `--plot FILE.svg` draws the frontiers.
//   --model NAME            built-in model (default deepseek-r1)
//   --hardware NAME         hardware preset (default gb200-nvl72; `cpu` with --calibrate)
//   --context N             KV tokens per request, K/M/G suffixes (default 1M)
//   --max-gpus N            devices searched, 1..the preset's domain (default min(64, domain))
//   --precision P           weights, KV and compute: fp4, fp8, bf16, f32 (default fp4)
//   --weight-precision P, --kv-precision P, --compute-precision P, --activation-precision P
//                           per-quantity overrides (activations: the collectives' payload, bf16)
//   --batches LIST          batch sizes searched (default powers of two 1..4096)
//   --families LIST         helix,tp,tp_pp,dp_ep,medha (default all)
//   --no-hopb               Helix without HOP-B (all-to-all exposed)
//   --ttl-ms X              query mode: the best layout and batch within X ms per token
//   --plot FILE.svg         write an SVG chart of the per-family frontiers
//   --calibrate             measure this machine (see apps/calibrate.hpp) and plan on the
//                           calibrated `cpu` preset; --threads N and --quick tune the measurement
//   --json                  JSON on stdout instead of the summary
// JSON (frontier mode): {"model","hardware":{...preset fields, "sources"},"context","max_gpus",
//   "precision":{"weights","kv","compute","activations"},"hopb","batches","families",
//   "num_feasible","num_feasible_per_family":{FAMILY:N},"frontier":{FAMILY:[POINT...]},"best":{FAMILY:{"max_throughput":POINT,
//   "max_interactivity":POINT}},"headline":{"throughput_ratio_at_equal_ttl","ttl_ms_at_max_ratio",
//   "interactivity_ratio"} or null with "headline_note"[,"calibration":{...}][,"plot":FILE]}
// POINT: {"family","config","num_gpus","batch","kvp","tpa","tpf","ep","pp","dp","hopb","ttl_ms",
//   "tokens_per_s_per_user","tokens_per_s_per_gpu","memory_bytes_per_gpu","weight_bytes_per_gpu",
//   "kv_bytes_per_gpu"}. Each frontier is sorted by tokens/s/user ascending.
// JSON (query mode): the same header fields, then "ttl_ms", "best": POINT and
//   "best_per_family": {FAMILY: POINT or null}.
//
// helix calibrate: the measurements alone and the calibrated `cpu` preset (--threads N, --quick,
// --json); JSON {"threads","stream":{...},"all_reduce":{...},"gemm":{...},
// "physical_memory_bytes","hardware":{...},"preset":{...}}.
//
// Exit codes: 0 ok; 2 bad usage (an `error: ...` line on `err`: unknown flag, model, hardware,
// precision or family, a zero context or GPU count, --calibrate with a preset other than cpu);
// 1 a runtime failure (a failed measurement, no configuration within --ttl-ms, an unwritable
// plot file).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// `helix plan` with its arguments (after "plan"). Results on `out`, errors and calibration
/// progress on `err`.
int run_plan(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

/// `helix calibrate` with its arguments (after "calibrate").
int run_calibrate(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
