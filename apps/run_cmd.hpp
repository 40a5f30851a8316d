// `helix run`: a multi-agent workload on the embedded engine (actors/engine.hpp), and its report.
//
// The workload model. Agent sessions arrive as a Poisson process of --rate sessions per second,
// the first at t = 0 (exponential gaps, -ln(u) / rate, with u a counter-based uniform from
// core/rng.hpp keyed by (--seed, session), so the same seed gives the same sessions). At most
// --agents sessions are live at once: an arrival that finds them all busy waits for one to leave
// (the platform's session limit). A session is a conversation of T turns, T uniform in [1, 2 *
// --turns - 1]:
//   turn 0  a fresh context of C0 tokens, C0 uniform in [--context / 2, 3 * --context / 2];
//   turn k  the whole context so far: the previous prompt, the previous answer and a new
//           observation (tool output, user message) of uniform [--context / 8, 3 * --context / 8]
//           tokens; when that exceeds 4 * --context the oldest tokens are dropped (a sliding
//           window, as agents truncate their history).
// Each turn is one request (greedy, --max-tokens tokens, no stop tokens) submitted as soon as the
// previous turn's last token arrives: the session waits for its answer before it goes on. The
// engine keeps no KV between requests, so every turn prefills its whole context; when a session
// leaves, its KV blocks are freed, which is what the planner rebalances. Token ids are seeded
// uniform draws over the vocabulary.
//
// Arrivals stop after --duration seconds or once --requests turns have been planned (the last
// session is cut short so that exactly --requests requests are made), whichever comes first; the
// run ends when every live session has finished. It measures, per request, TTFT (submit to first
// token) and TPOT (mean gap between consecutive tokens), and samples engine::stats() every 0.5 s
// for per-worker KV use. Progress lines (elapsed, requests done, tokens/s) go to the progress
// stream once a second.
//
// Thread-safety: each call runs its own engine and threads; calls are independent.
#pragma once

#include <atomic>
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/engine.hpp"
#include "core/status.hpp"

namespace helix::apps {

/// One planned change of `helix run --elastic`: `count` workers join, or `count` leave (the
/// highest rank each time), once the engine ran `step` steps or `at_s` seconds passed since the
/// first decode step.
struct elastic_event {
  bool join = true;
  std::int64_t count = 1;
  bool by_step = false;
  std::int64_t step = 0;
  double at_s = 0.0;
  std::string text;  // as given, for messages
};

/// Parses "join:2@3s,leave:1@6s" (also "@500ms" and "@step20"): comma-separated events
/// `join|leave:COUNT@WHEN`, COUNT in [1, 64]. invalid_argument naming the event and what is wrong.
[[nodiscard]] expected<std::vector<elastic_event>> parse_elastic(std::string_view text);

struct workload_options {
  actors::engine_config engine;      // the engine the agents share
  std::int64_t max_agents = 16;      // sessions live at once
  double rate = 2.0;                 // session arrivals per second
  double duration_s = 8.0;           // arrivals stop after this; 0: no limit
  std::int64_t max_requests = 0;     // requests (turns) in all; 0: no limit
  std::int64_t context = 4096;       // mean prompt tokens of a session's first turn
  std::int64_t turns = 3;            // mean turns per session
  std::int64_t max_tokens = 32;      // tokens generated per turn
  std::uint64_t seed = 1;            // arrivals, lengths and token ids
  double sample_interval_s = 0.5;    // engine::stats() sampling period
  double progress_interval_s = 1.0;  // progress line period
  double stall_timeout_s = 120.0;    // runtime error when no token arrives for this long
  /// When set and it becomes true (e.g. from a SIGINT handler), arrivals stop, running requests
  /// are cancelled and the report covers what ran so far (workload_report::interrupted).
  const std::atomic<bool>* interrupt = nullptr;
  /// > 0: the engine's workers are this many `helix worker` processes started from
  /// `worker_binary` (cluster::spawned_workers) instead of threads of this process.
  std::int64_t processes = 0;
  std::string worker_binary;
  /// With processes or listen: this many more workers join as standbys (a recovery gives them
  /// the ranks of dead workers).
  std::int64_t standbys = 0;
  /// Set: the workers are started by hand or a scheduler and join at listen_host:listen_port
  /// (cluster::listening_workers); engine.num_workers of them.
  bool listen = false;
  std::string listen_host;
  std::uint16_t listen_port = 0;
  /// Mutual TLS for worker processes (cluster/tls.hpp): ca.pem, cert.pem, key.pem; empty: none.
  std::string tls_dir;
  /// Workers that join and leave while the workload runs (engine::add_workers, drain_worker).
  std::vector<elastic_event> elastic;
};

/// Percentiles of a latency in milliseconds (linear interpolation between order statistics).
struct latency_summary {
  double p50 = 0.0;
  double p90 = 0.0;
  double p99 = 0.0;
  double mean = 0.0;
  std::int64_t count = 0;
};
/// Percentiles and mean of a sample (empty: all zero).
[[nodiscard]] latency_summary summarize(std::vector<double> v);

/// One engine::stats() sample: used KV blocks per worker (in rank order) and kv_imbalance.
struct kv_sample {
  double t_s = 0.0;
  std::vector<std::int64_t> used_blocks;
  double imbalance = 0.0;
};

struct workload_report {
  std::string model;
  std::string layout;  // full layout string in use
  std::int64_t workers = 0;
  std::int64_t sessions = 0;
  std::int64_t requests_submitted = 0;  // accepted by submit
  std::int64_t requests_planned = 0;    // turns the sessions tried to submit
  std::int64_t requests_completed = 0;  // ended by length or a stop token
  std::int64_t requests_failed = 0;     // refused at submit or ended otherwise
  std::vector<std::string> failures;    // the first few causes
  std::int64_t prompt_tokens = 0;       // summed over requests (every turn prefills its context)
  std::int64_t generated_tokens = 0;
  std::int64_t max_prompt_tokens = 0;
  double wall_s = 0.0;        // first submit to last token
  double tokens_per_s = 0.0;  // generated tokens / wall_s
  latency_summary ttft_ms;
  latency_summary tpot_ms;
  std::int64_t kv_capacity_blocks = 0;       // per worker
  std::vector<std::int64_t> kv_peak_blocks;  // per worker, over the samples
  std::vector<kv_sample> kv_series;
  std::int64_t migrations = 0;
  double kv_imbalance_max = 0.0;
  std::vector<actors::recovery_stats> recoveries;  // engine_config::recovery
  /// The layout epochs (initial, joins, leaves, recoveries, rebalancing), in order.
  std::vector<actors::epoch_stats> epochs;
  /// --elastic events that failed or never ran (the workload ended first): the run fails.
  std::vector<std::string> elastic_failures;
  bool interrupted = false;                      // stopped early by workload_options::interrupt
  std::vector<actors::worker_info> worker_info;  // rank, pid, host of every worker
  /// Resident memory of each worker's process at the end of the run (-1: not on this host).
  std::vector<std::int64_t> worker_rss_bytes;
  /// SHA-256 (hex) over (session, turn, finish reason, tokens) of every turn that ended, in
  /// session and turn order: equal for two runs of the same workload and seed however their
  /// workers ran (threads or processes), independent of engine request ids and timing.
  std::string output_digest;
};

/// Runs the workload on a fresh engine built from `o.engine`. invalid_argument for bad options or
/// an engine config engine::create refuses (its message); resource_exhausted when the engine does
/// not fit, or when the workload's first prompts (up to 3/2 x context) plus max_tokens exceed
/// what one request may hold (checked before any prompt is built); deadline_exceeded when no token
/// arrives for stall_timeout_s. Failed requests are not an error here: they are counted in the
/// report (requests_failed, failures).
[[nodiscard]] expected<workload_report> run_agent_workload(const workload_options& o,
                                                           std::ostream& progress);

/// The JSON report: model, layout, workers, sessions, requests, requests_completed,
/// requests_failed, failures, prompt_tokens, generated_tokens, wall_s, tokens_per_s,
/// ttft_ms and tpot_ms ({p50, p90, p99, mean}), kv_capacity_blocks, kv_peak_blocks, kv_series
/// ([{t_s, used_blocks: [...], kv_imbalance}]), migrations, kv_imbalance_max (a fraction), and the
/// workload's parameters under "workload", "interrupted" (true when SIGINT stopped the run),
/// "output_digest", "worker_processes" ([{rank, pid, host, name, rss_bytes}]; rss_bytes null
/// for a worker on another host), and "recoveries" ([{rank, pid, why, layout_before,
/// layout_after, detect_ms, replan_ms, reload_ms, rebuild_ms, requests_replayed,
/// tokens_replayed}], one per recovery from a worker failure), "epochs" ([{reason, layout_before,
/// layout_after, kv_bytes_moved, blocks_moved, blocks_rebuilt, pause_ms, note}]) and
/// "elastic_failures".
[[nodiscard]] nlohmann::json workload_report_json(const workload_options& o,
                                                  const workload_report& r);

/// The human-readable report; `max_series_rows` bounds the KV-over-time table (evenly spaced).
void print_workload_report(std::ostream& out, const workload_options& o, const workload_report& r,
                           std::size_t max_series_rows);

/// `helix run` with its arguments (after "run"). Exit code: 0 ok, 1 a runtime error or a failed
/// request, 2 bad usage (an `error: ...` line on `err`). Report on `out`, progress on `err`.
int run_workload(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
