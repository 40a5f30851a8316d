// `helix bench decode`: end-to-end decode steps of a model sharded over N simulated workers (one
// apps::sharded_decoder, one thread per rank, in this process), for several layouts side by side.
//
// Per case (layout x HOP-B setting): create the sharded decoder with seeded bf16 weights, open
// --batch sequences, append --context tokens of seeded synthetic KV to each (reported as
// "kv_fill": "synthetic"), prefill one real token per sequence, run --warmup untimed
// decode steps, then time --steps decode steps (one token per sequence, greedy sharded sampling)
// and report the median step. The decoder is destroyed before the next case starts. Every rank
// runs its kernels on --threads-per-rank threads (default 1: the host has few cores and all N
// ranks share them, so absolute times are those of N workers time-sharing the host's cores).
//
// Flags: --model NAME (default small-llama), --context N (K/M/G suffixes, default 128K),
// --batch N (default 2), --workers N (default 8), --layouts LIST (families helix,tp,medha, each
// expanded with default_layout for --workers; default helix,tp unless --layout is given),
// --layout STRING (a canonical layout; repeat the flag or separate several with ';'; its rank
// count must equal --workers), --hopb on|off|both (default off; both runs every layout twice),
// --kv-dtype bf16|f32|fp8_e4m3 (default bf16), --steps N (default 8), --warmup N (default 1),
// --threads-per-rank N (default 1), --json, --help.
//
// KV capacity per rank is sized from the layout: a rank holds ~1/KVP of every sequence's blocks
// (tp: KVP = 1, so every rank holds the whole context of its duplicated KV heads). The run is
// refused up front (resource_exhausted, exit 2) when the KV stores of all ranks of any case would
// exceed 70% of the host's physical memory.
//
// JSON shape:
//   {"model","context","batch","workers","kv_dtype","weight_dtype","kv_fill":"synthetic","steps",
//    "layouts":[{"name","family","hopb","kv_bytes_per_worker","kv_bytes_read_per_step_per_worker",
//                "step_ms","tokens_per_s","speedup_vs_tp","fill_s"}, ...]}
// kv_bytes_per_worker and kv_bytes_read_per_step_per_worker are maxima over ranks (the busiest
// worker bounds the step); speedup_vs_tp is tp's step_ms / this step_ms with the same hopb
// setting (null when no tp case with that setting ran).
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
  std::int64_t steps = 8;   // timed decode steps
  std::int64_t warmup = 1;  // untimed decode steps before them
  int threads_per_rank = 1;
  bool json = false;               // report format (run_bench_decode only)
  std::vector<decode_case> cases;  // run in this order
};

struct decode_case_result {
  std::string name;  // full canonical layout string
  layout_family family = layout_family::helix;
  bool hopb = false;
  std::int64_t kv_bytes_per_worker = 0;                // max over ranks of KV bytes used
  std::int64_t kv_bytes_read_per_step_per_worker = 0;  // max over ranks, last timed step
  double step_ms = 0.0;                                // median timed step
  double tokens_per_s = 0.0;                           // batch / step
  std::optional<double> speedup_vs_tp;
  double fill_s = 0.0;  // synthetic KV fill of all sequences
};

/// KV tokens one rank of `l` must hold for `batch` sequences of `tokens_per_seq` tokens each in
/// blocks of `block_tokens`: its share of every sequence's blocks (1/KVP, rounded up) plus one
/// block of placement imbalance, times the batch.
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
/// the sharded decoder are returned as they are, with the case's layout as context.
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
