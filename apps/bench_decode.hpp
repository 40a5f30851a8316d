// `helix bench decode`: end-to-end decode steps of the engine (actors/engine.hpp: the engine,
// planner and worker actors, the rank programs and the data plane that serve requests), for
// several layouts side by side; workers are threads of this process or, with --processes,
// `helix worker` processes joined over UCX.
//
// Per case (layout x HOP-B setting): create an engine with seeded bf16 weights and KV sized for
// the batch, submit --batch requests whose sequences start with --context tokens of seeded
// synthetic KV (the engine's benchmark seam, placed by the planner's normal rule; reported as
// "kv_fill": "synthetic") and one prompt token, and let each generate greedily. Step times are
// the intervals between the timed request's consecutive tokens (engine overhead included), after
// --warmup untimed decode steps; the median of --steps is reported, and every timed step is
// checked to hold the whole batch. The engine is destroyed before the next case starts. Every
// worker runs its kernels on --threads-per-rank threads (default 1: the host has few cores and
// all N workers share them, so absolute times are those of N workers time-sharing its cores).
//
// Flags: --model NAME (default small-llama), --context N (K/M/G suffixes, default 128K),
// --batch N (default 2), --workers N (default 8), --layouts LIST (families helix,tp,medha, each
// expanded with default_layout for --workers; default helix,tp unless --layout is given),
// --layout STRING (a canonical layout; repeat the flag or separate several with ';'; its rank
// count must equal --workers), --hopb on|off|both (default off; both runs every layout twice),
// --kv-dtype bf16|f32|fp8_e4m3 (default bf16), --steps N (default 8), --warmup N (default 1),
// --threads-per-rank N (default 1), --processes N (workers as N processes; N = --workers, which
// it sets when absent), --netns (with --processes, root: each worker a network namespace of its
// own, UCX over TCP between them, the engine in the first), --json, --help.
//
// KV capacity per rank is sized from the layout: a rank holds ~1/KVP of every sequence's blocks
// (tp: KVP = 1, so every rank holds the whole context of its duplicated KV heads). The run is
// refused up front (resource_exhausted, exit 2) when the KV stores of all ranks of any case would
// exceed 70% of the host's physical memory.
//
// JSON shape:
//   {"model","context","batch","workers","processes","kv_dtype","weight_dtype",
//    "kv_fill":"synthetic","steps","threads_per_rank","data_plane",
//    "layouts":[{"name","family","hopb","kv_bytes_per_worker","kv_bytes_read_per_step_per_worker",
//                "weight_bytes_read_per_step_per_worker","bytes_read_per_step",
//                "stream_read_bytes_per_s","fraction_of_limit",
//                "step_ms","tokens_per_s","speedup_vs_tp","fill_s","worker_pids"}, ...]}
// kv_bytes_per_worker is the maximum over workers of the KV they hold while the batch decodes
// (the busiest worker bounds the step); a decode step reads all of it, so
// kv_bytes_read_per_step_per_worker is the same figure. weight_bytes_read_per_step_per_worker
// is what one worker's kernels stream per step (model::weights_read_per_step: its attention
// column, its share of o_proj, FFN and LM head, `batch` embedding rows, the small replicated
// tensors); bytes_read_per_step sums weights and KV over all workers. stream_read_bytes_per_s
// is an integer sum over a 512 MiB buffer (apps/measure.hpp) on min(workers x threads per
// worker, hardware threads) threads, the better of the medians of 5 reads with 512-bit and 5 with
// 256-bit loads, taken right after the case in the same run; fraction_of_limit =
// bytes_read_per_step / step time / that rate, how close a step comes to the memory system's limit.
// speedup_vs_tp is tp's step_ms / this step_ms with the same hopb setting (null when no tp case
// with that setting ran). fill_s is the time from the first submit to the timed request's first
// token (synthetic fill and prompt). processes is 0 for worker threads; data_plane is "local"
// (threads), "ucx" (processes) or "ucx-tcp-netns" (--netns).
#pragma once

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.hpp"
#include "core/layout.hpp"
#include "core/status.hpp"

namespace helix::apps {

/// One case: a layout and whether HOP-B overlaps its all-to-all.
struct decode_case {
  helix::layout layout;
  bool hopb = false;
};

struct bench_decode_options {
  std::string model = "small-llama";
  std::int64_t context = std::int64_t{128} << 10;  // synthetic tokens per sequence
  std::int64_t batch = 2;                          // sequences, one decode token each per step
  std::int64_t workers = 8;
  dtype kv_dtype = dtype::bf16;
  dtype weight_dtype = dtype::bf16;  // bf16 or fp8_e4m3 (block-scaled, kept in FP8)
  std::int64_t steps = 8;            // timed decode steps
  std::int64_t warmup = 1;           // untimed decode steps before them
  int threads_per_rank = 1;
  std::int64_t processes = 0;  // > 0: workers as `helix worker` processes
  std::string worker_binary;   // with processes: the `helix` binary
  /// With processes: every worker a host of its own (a network namespace), UCX over TCP between
  /// them; run_bench_decode makes the namespaces and moves this process into the first.
  bool netns = false;
  std::vector<std::string> worker_netns;  // filled by run_bench_decode
  std::string engine_host;                // where the workers reach the engine; empty: loopback
  std::string net_devices;                // the workers' UCX device with netns
  bool json = false;                      // report format (run_bench_decode only)
  std::vector<decode_case> cases;         // run in this order
};

struct decode_case_result {
  std::string name;  // full canonical layout string
  layout_family family = layout_family::helix;
  bool hopb = false;
  std::int64_t kv_bytes_per_worker = 0;                    // max over ranks of KV bytes used
  std::int64_t kv_bytes_read_per_step_per_worker = 0;      // max over ranks, last timed step
  std::int64_t weight_bytes_read_per_step_per_worker = 0;  // model::weights_read_per_step
  std::int64_t bytes_read_per_step = 0;                    // every worker's weights and KV, summed
  double stream_read_bytes_per_s = 0.0;  // the streaming-read baseline, measured with this case
  double fraction_of_limit = 0.0;        // bytes_read_per_step / step / stream_read_bytes_per_s
  double step_ms = 0.0;                  // median timed step
  double tokens_per_s = 0.0;             // batch / step
  std::optional<double> speedup_vs_tp;
  double fill_s = 0.0;  // first submit to the timed request's first token
  std::vector<std::int64_t> worker_pids;
  /// Rank 0's mean ms per step in each phase over the timed steps (engine_stats::step_phases):
  /// where a step goes, and what is left for control messages and barriers.
  struct phases {
    double attention = 0.0;   // without the all-to-all wait
    double all_to_all = 0.0;  // the wait
    double ffn = 0.0;
    double sampling = 0.0;  // the LM head and sampling
  } phase_ms;
};

/// KV tokens one worker of `l` must hold for the engine to admit `batch` requests of
/// `tokens_per_seq` tokens each at once in blocks of `block_tokens` (actors::kv_capacity_for
/// with the default rebalance threshold): about 1/KVP of every sequence's blocks, plus the
/// engine's per-request slack and rebalancing reserve.
[[nodiscard]] std::int64_t kv_tokens_per_rank(const helix::layout& l, std::int64_t tokens_per_seq,
                                              std::int64_t batch, std::int64_t block_tokens);

/// Parses the command's flags (after "bench decode") into options with the cases expanded and
/// validated against the model. invalid_argument naming the flag or the broken layout rule;
/// not_found for an unknown model.
[[nodiscard]] expected<bench_decode_options> parse_bench_decode_args(
    const std::vector<std::string>& args);

/// Checks that every case's KV stores fit in 70% of physical memory; resource_exhausted naming
/// the case and the sizes otherwise.
[[nodiscard]] status check_decode_memory(const bench_decode_options& o);

/// Runs every case in order (progress lines on `progress`) and fills in speedup_vs_tp. Errors of
/// the engine are returned as they are, with the case's layout as context.
[[nodiscard]] expected<std::vector<decode_case_result>> run_decode_cases(
    const bench_decode_options& o, std::ostream& progress);

/// The JSON report (shape in the header comment).
[[nodiscard]] nlohmann::json decode_report_json(const bench_decode_options& o,
                                                const std::vector<decode_case_result>& results);
/// The human-readable table.
void print_decode_table(std::ostream& out, const bench_decode_options& o,
                        const std::vector<decode_case_result>& results);

/// Runs the benchmark with its arguments (after "bench decode"). Returns the exit code: 0 ok,
/// 2 bad usage or a run that would not fit in memory (an `error: ...` line on `err`), 1 a runtime
/// failure. Results go to `out`, progress lines to `err`.
int run_bench_decode(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
