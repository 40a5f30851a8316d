// The embedding API of the Helix runtime: one engine serving many concurrent requests.
//
// A platform creates an engine from an engine_config (model, weights, layout, workers), submits
// requests (prompt tokens, sampling parameters, max tokens, stop tokens) from any number of
// threads, and receives each request's tokens as a stream: pulled from a token_stream, pushed to a
// callback, or both. Requests join and leave between decode steps (continuous batching); KV
// capacity is accounted per worker: a request that can never fit is refused at submit, one that
// does not fit now waits in the queue, and nothing accepted is dropped.
//
// Behind it (actors/): one worker actor per rank owning its weight shard and KV shard, a planner
// actor placing KV blocks and rebalancing them, and an engine actor batching steps. Tensors move
// over the data plane (the transport's communicators), never through actor mailboxes.
//
// Errors: a request's own failure (a callback that throws, non-finite logits, its deadline) ends
// that request only, with the cause. Only a worker or data-plane failure fails a step. With
// engine_config::recovery = "full_replay" (and a worker source that can rebuild its workers) the
// engine then recovers and every request goes on; otherwise it reports `health = failed` with the
// cause in stats(), ends every request with it, and refuses new ones (submit returns
// `unavailable` naming the failure).
//
// Thread-safety: every member function of `engine` may be called concurrently from any thread.
// Callbacks run on the engine's internal thread, one at a time per engine; they should return
// quickly (the next step waits for them). From a callback, submit(), cancel(), stats() and
// vocab() are safe and do not block on the engine; only the destructor must not be called there
// (it waits for the engine's thread). An exception thrown by a callback ends that request with
// `error` ("callback threw: ...") and nothing else.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "core/status.hpp"

namespace helix::actors {

class worker_source;  // actors/worker_source.hpp

/// Who a worker is, for reports.
struct worker_info {
  std::int64_t rank = 0;
  std::int64_t pid = 0;
  std::string host;
  std::string name;
};

/// How to build an engine. Validated by validate() and engine::create (invalid_argument naming
/// the field); every numeric field has bounds (below), so sizes derived from them cannot overflow.
struct engine_config {
  /// Built-in model (seeded weights); at most one of `model` and `checkpoint` may be set, and
  /// both empty means tiny-llama.
  std::string model;
  std::string checkpoint;          // HF checkpoint directory; its config.json gives the model
  dtype weight_type = dtype::f32;  // seeded weights' dtype (checkpoints are converted to it)
  dtype kv_type = dtype::f32;      // KV storage: f32, bf16, f16, fp8_e4m3
  /// Seeded weights only; the default is the CLI's too (model::default_weight_seed, checked by
  /// tests/apps/default_seed_test.cpp).
  std::uint64_t weight_seed = 1234;
  /// "auto" (the planner's cost model picks the fastest runtime layout for this machine) or a
  /// layout string, e.g. "helix:kvp=4,tpa=2".
  std::string layout = "auto";
  std::int64_t num_workers = 1;  // N in [1, 1024]: ranks (workers), each a thread in this process
  std::string device = "cpu";    // "cpu" (the only device of this build's workers)
  /// In [block_tokens, 2^40]; the KV stores of all workers must also fit in memory.
  std::int64_t kv_capacity_tokens_per_worker = 1 << 16;
  std::int64_t block_tokens = 16;           // in [1, 65536]
  std::int64_t max_batch_tokens = 256;      // in [1, 2^20]: decode tokens + prefill chunks per step
  std::int64_t prefill_chunk_tokens = 128;  // in [1, 2^20]: longest chunk of one request per step
  std::int64_t max_queued_requests = 1 << 16;  // in [1, 2^24]: queued + running
  bool hopb = false;
  int threads_per_worker = 1;  // in [1, 256]
  /// Rebalancing: after requests leave, KV blocks migrate between KVP ranks until every rank is
  /// within `rebalance_threshold` (in (0, 1]) of the mean (kv_imbalance = (max - mean) / mean),
  /// whenever at least `rebalance_min_blocks` (in [0, 2^40]) blocks per rank are resident.
  double rebalance_threshold = 0.10;
  std::int64_t rebalance_min_blocks = 64;
  /// What a worker or data-plane failure does. "lost_blocks" (the default): as full_replay below,
  /// but the survivors keep their KV blocks, members the new layout leaves without a rank hand
  /// theirs to the new owners over the data plane (one TPA column), and only the dead worker's
  /// blocks are rebuilt: synthetic positions refilled, the others computed again as prefill chunks
  /// in position order over all earlier KV (a smaller layout keeps the TPA size where one is
  /// valid). Falls back to a full replay when nothing can be kept (a different TPA size, a
  /// migration in flight), the running requests no longer fit, or a survivor or donor lost its KV.
  /// "full_replay": the engine aborts the step, rebuilds its workers on a layout of the members
  /// that remain (the failed worker's rank dropped; the planner picks the largest member count with
  /// a valid layout of the same family), and replays every running request's prompt and generated
  /// tokens as a prefill: no accepted request is lost, no token is emitted twice, and every
  /// request's tokens equal the fault-free run's. Needs a worker source that can rebuild its
  /// workers (in-process threads, and worker processes: the surviving processes take the new ranks,
  /// members left without one stand by for the next recovery). "off": the engine fails (health =
  /// failed), every request ends with the cause.
  std::string recovery = "lost_blocks";
  /// How long (ms, in [1, 3600000]) a worker waits in a collective for its peers before the call
  /// fails with deadline_exceeded (a hung or partitioned peer), and how long the engine waits,
  /// after a step's first worker answered, for the others (a lost reply): either is a worker
  /// failure, with recovery as above. Process deaths are noticed sooner (heartbeats, at most 2 s).
  std::int64_t peer_timeout_ms = 30000;
  /// A worker leave (engine::drain_worker) after which the running requests would need more KV
  /// per worker than admission allows: "refuse" fails the leave at once (resource_exhausted);
  /// "wait" stops admitting new requests and carries the leave out once the running ones fit
  /// (or refuses it when the caller's deadline passes first).
  std::string elastic_leave = "refuse";
  /// Members that join a running engine on their own (a worker started with helix worker --join
  /// against a listening engine): "auto" lets the planner give them ranks when the cost model
  /// predicts a faster step for the current load (at least 5%, held for 2 s, and 5 s after the
  /// previous change: it does not flap), explaining each decision in the log and in
  /// engine_stats::epochs; "off" keeps them as standbys (for recoveries) until add_workers.
  std::string elastic_policy = "auto";
  /// Level of every module's logger ("trace", "debug", "info", "warn", "error", "off"); empty
  /// leaves the process's level as it is. Logs go to stderr.
  std::string log_level;
};

/// The KV capacity per worker, in tokens (whole blocks), that lets an engine admit `requests`
/// requests of `tokens_per_request` tokens each (synthetic context + prompt + max_tokens) at
/// once on a layout with `kvp` KVP ranks, by the engine's admission rule (per-member
/// reservations plus rebalancing's reserve of `rebalance_threshold`). INT64_MAX when it overflows.
[[nodiscard]] std::int64_t kv_capacity_for(std::int64_t requests, std::int64_t tokens_per_request,
                                           std::int64_t kvp, std::int64_t block_tokens,
                                           double rebalance_threshold);

/// Checks every field of `c` that needs no model: bounds, names, exclusive fields.
/// invalid_argument naming the field and its bounds.
[[nodiscard]] status validate(const engine_config& c);

/// Sampling of one request: greedy with temperature 0; else softmax(logits / T) restricted to the
/// top_k tokens (0: all) and the top_p nucleus (1: all), with counter-based noise from `seed`.
struct sampling_params {
  float temperature = 0.0f;
  std::int32_t top_k = 0;
  float top_p = 1.0f;
  std::uint64_t seed = 0;
};

struct request_options {
  std::vector<std::int32_t> prompt;  // token ids, at least one, each in [0, vocab)
  sampling_params sampling;
  std::int64_t max_tokens = 16;           // tokens to generate, >= 1
  std::vector<std::int32_t> stop_tokens;  // generation ends after emitting one of these
  /// When set: past this time the request ends with `error` and status deadline_exceeded (queued
  /// or running; its KV is freed at the next step boundary).
  std::optional<std::chrono::steady_clock::time_point> deadline;
  /// Benchmark seam: the sequence starts with this many positions (in [0, 2^40]) of seeded
  /// synthetic KV (every layer, uniform in [-1, 1), keyed by `synthetic_seed`), placed on the
  /// workers by the normal placement rule, and the prompt follows at the next positions. A long
  /// context without a prefill that would take hours; tokens generated over it mean nothing and
  /// are reported as synthetic. Counted in the request's KV reservation.
  std::int64_t synthetic_context_tokens = 0;
  std::uint64_t synthetic_seed = 0;
  /// Every token event carries the full logits row its token was sampled from (vocab floats,
  /// gathered from the workers each step): for verification (`helix verify`), not for serving.
  bool return_logits = false;
};

enum class finish_reason : std::uint8_t { none, length, stop_token, cancelled, error };
/// "none", "length", "stop_token", "cancelled", "error" (reports and JSON).
[[nodiscard]] const char* finish_reason_name(finish_reason r) noexcept;

/// One event of a request's stream: a generated token, and with the last one why it ended.
/// A request that ends without a token (cancelled in the queue, or failed) gets one event with
/// token = -1 and last = true.
struct token_event {
  std::uint64_t request_id = 0;
  std::int32_t token = -1;
  std::int64_t index = 0;  // 0 for the first generated token
  bool last = false;
  finish_reason reason = finish_reason::none;  // set on the last event
  status error;                                // reason == error: what went wrong
  std::vector<float> logits;  // request_options::return_logits: the row `token` came from
};

/// The pull side of a request's tokens. Thread-safe; any number of readers.
class token_stream {
 public:
  /// The next event, blocking until there is one; nullopt once the last event was taken.
  [[nodiscard]] std::optional<token_event> next();
  /// As next(), giving up after `timeout` (nullopt also when nothing arrived in time: check
  /// finished() to tell the two apart).
  [[nodiscard]] std::optional<token_event> next_for(std::chrono::milliseconds timeout);
  /// Blocks until the request ends; all its tokens in order (events already taken excluded).
  [[nodiscard]] std::vector<std::int32_t> wait_all();
  /// Whether the last event has been taken.
  [[nodiscard]] bool finished() const;

  /// Called by the engine; not part of the client's contract.
  void push(token_event e);

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<token_event> events_;
  bool closed_ = false;  // the last event was pushed
  bool taken_last_ = false;
};

struct request_handle {
  std::uint64_t id = 0;
  std::shared_ptr<token_stream> stream;
};

/// One recovery from a worker failure (engine_config::recovery). Times in milliseconds.
struct recovery_stats {
  std::int64_t rank = 0;  // the failed worker's rank in the layout before
  std::int64_t pid = 0;
  std::string why;
  std::string layout_before;
  std::string layout_after;
  /// How the KV was rebuilt: "lost_blocks" (only what the dead held, and what members left
  /// without a rank held) or "full_replay" (every running request's prompt and generated tokens).
  std::string mode;
  double detect_ms = 0.0;   // from the failing step's start to the failure reaching the engine
  double replan_ms = 0.0;   // aborting the step and choosing the layout
  double reload_ms = 0.0;   // rebuilding the workers (weights resharded, new data plane)
  double rebuild_ms = 0.0;  // until every running request's KV was rebuilt
  std::int64_t requests_replayed = 0;
  std::int64_t tokens_replayed = 0;  // prefill tokens the rebuild ran (synthetic context too)
  std::int64_t blocks_kept = 0;      // KV blocks that stayed on their survivors (lost_blocks)
  /// KV blocks that members left without a rank sent to their new owners (lost_blocks)
  std::int64_t blocks_moved = 0;
  std::int64_t blocks_rebuilt = 0;  // KV blocks written again (full_replay: every block)
};

/// One layout epoch in which the workers changed: the initial layout, a planned join or leave
/// (engine::add_workers, engine::drain_worker), a recovery from a failure, or a rebalancing that
/// moved KV blocks between members. Times in milliseconds.
struct epoch_stats {
  std::string reason;         // "initial", "join", "leave", "recovery" or "rebalance"
  std::string layout_before;  // empty for the initial epoch
  std::string layout_after;
  std::int64_t kv_bytes_moved = 0;  // KV moved between members over the data plane, every rank
  std::int64_t blocks_moved = 0;
  std::int64_t blocks_rebuilt = 0;  // KV blocks computed again (0 unless no layout kept them)
  /// How long no step could run: a join or leave from its start at a step boundary (a join's
  /// new members added, spawned processes included) until the workers restored their KV and
  /// (join) took their blocks over; a recovery from the failure's notice until the restore was
  /// answered (its KV rebuild follows as steps). A rebalance: from the migration's sending until
  /// every worker answered it (the next step waits behind it on each worker). 0: initial.
  double pause_ms = 0.0;
  std::string note;  // why the layout is what it is (e.g. members kept as standbys)
};

/// serving: steps run. failed: a worker or the data plane failed (engine_stats::failure says
/// which and why); nothing runs any more and submit() refuses new requests.
enum class engine_health : std::uint8_t { serving, failed };

/// Per-worker KV use and the engine's counters. Latencies in milliseconds.
struct worker_stats {
  std::int64_t rank = 0;
  std::int64_t kv_used_blocks = 0;
  std::int64_t kv_capacity_blocks = 0;
};
struct engine_stats {
  std::string layout;  // the full layout string in use
  std::int64_t submitted = 0;
  std::int64_t completed = 0;  // ended by length or a stop token
  std::int64_t cancelled = 0;
  std::int64_t failed = 0;   // ended with error (their own or a worker failure)
  std::int64_t refused = 0;  // refused by submit() (bad input, too large, queue full, failed)
  std::int64_t queued = 0;   // accepted, waiting for KV capacity or a batch slot
  std::int64_t active = 0;   // in the batch
  std::int64_t steps = 0;
  std::int64_t tokens_generated = 0;
  std::int64_t migrations = 0;    // KV blocks moved by rebalancing
  double kv_imbalance = 0.0;      // now, over the KVP ranks of column 0
  double kv_imbalance_max = 0.0;  // the largest seen after a rebalancing pass
  std::int64_t epoch = 0;         // layout epoch (advances when blocks move)
  std::vector<worker_stats> workers;
  engine_health health = engine_health::serving;
  status failure;                          // health == failed: the worker and the cause
  std::vector<recovery_stats> recoveries;  // in order
  std::vector<epoch_stats> epochs;         // in order, the initial one first
  std::int64_t standbys = 0;               // members alive without a rank
  /// Rank 0's seconds per phase over every step so far (model::rank_program::step_phases):
  /// attention without the all-to-all wait, the all-to-all wait, the FFN, the LM head and
  /// sampling.
  struct phase_seconds {
    double attention = 0.0;
    double all_to_all = 0.0;
    double ffn = 0.0;
    double sampling = 0.0;
  } step_phases;
};

class engine {
 public:
  /// Builds the weights (seeded or from the checkpoint), chooses the layout ("auto":
  /// planner::choose_runtime_layout on the `cpu` preset), starts the actor system, the workers, the
  /// planner and the engine actor. invalid_argument for a bad config (naming the field or the
  /// layout rule), resource_exhausted when the KV stores do not fit in memory.
  [[nodiscard]] static expected<std::unique_ptr<engine>> create(const engine_config& config);
  /// As above, with the workers from `source` (cluster/ has sources whose workers are
  /// processes); null means in-process workers.
  [[nodiscard]] static expected<std::unique_ptr<engine>> create(
      const engine_config& config, std::unique_ptr<worker_source> source);
  /// Cancels every request still running or queued (their streams end with `cancelled`), stops
  /// the actors and joins their threads.
  ~engine();
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  /// Submits a request. Its tokens arrive on the returned stream and, when `on_token` is set, to
  /// the callback too (on the engine's thread). Never blocks on the engine. invalid_argument for
  /// an empty prompt, a token outside the vocabulary, max_tokens < 1 or invalid sampling
  /// parameters (each naming the field); resource_exhausted for a request whose prompt plus
  /// max_tokens can never fit in the KV capacity, or when the queue is full; deadline_exceeded
  /// for a deadline already past; unavailable once the engine has failed (naming the failure).
  /// Once accepted, the request is never dropped: it ends with length, stop_token, cancelled, or
  /// error (its own failure or a worker's, reported with the cause).
  [[nodiscard]] expected<request_handle> submit(
      request_options request, std::function<void(const token_event&)> on_token = {});
  /// Cancels a queued or running request: once this returns ok, the request's stream ends with
  /// `cancelled` (at the next step boundary; tokens of a step in flight are not delivered).
  /// not_found for an unknown id or a request that already ended. Never blocks on the engine.
  [[nodiscard]] status cancel(std::uint64_t request_id);
  /// A snapshot of the counters. From a client thread it waits (at most a few seconds) for the
  /// engine actor's answer, so it reflects every submit() and cancel() made before; from a
  /// callback it returns the snapshot the engine published last (it cannot wait for itself).
  [[nodiscard]] engine_stats stats();
  /// The vocabulary size of the model served.
  [[nodiscard]] std::int64_t vocab() const;
  /// The most tokens (synthetic context + prompt + max_tokens) one request may hold: the KV a
  /// request may reserve on each KVP worker. A longer request is refused by submit() with
  /// resource_exhausted.
  [[nodiscard]] std::int64_t max_request_tokens() const;
  /// Who the workers are (rank, pid, host, name).
  [[nodiscard]] std::vector<worker_info> workers() const;

  /// Scale out: `count` more workers join (threads, or processes for a source that spawns
  /// them) and, at the next step boundary, the engine moves to the largest layout of its family
  /// that the members allow (the same TPA size where one is valid): a new epoch in which
  /// weights are resharded and KV blocks move to the new members over the data plane, never
  /// recomputed (a TPA change, such as a tp layout's, replays the running requests instead).
  /// Members no layout uses stand by. Returns once the change is done (its epoch in stats());
  /// requests keep their tokens and only pause. invalid_argument for count outside [1, 1024];
  /// resource_exhausted when the new ranks' shards and KV stores would not fit in memory;
  /// failed_precondition when the source cannot add workers or the engine has failed;
  /// deadline_exceeded past `timeout` (the change may still complete; stats() tells). Not from
  /// a callback.
  [[nodiscard]] status add_workers(std::int64_t count,
                                   std::chrono::milliseconds timeout = std::chrono::minutes(2));
  /// Graceful leave: worker `rank` (-1: the highest) hands its KV blocks over to the others and
  /// leaves (its process exits); the engine moves to a layout of the remaining members at the
  /// next step boundary. resource_exhausted when the running requests would no longer fit (or,
  /// with engine_config::elastic_leave = "wait", when they still do not at `timeout`);
  /// invalid_argument for a rank outside the layout; failed_precondition for the last worker.
  /// Graceful leave of a worker process is also SIGTERM to it (cluster/).
  [[nodiscard]] status drain_worker(std::int64_t rank = -1,
                                    std::chrono::milliseconds timeout = std::chrono::minutes(2));

 private:
  struct impl;
  struct passkey {};
  [[nodiscard]] static expected<std::unique_ptr<impl>> build(const engine_config& config,
                                                             std::unique_ptr<worker_source> source);
  [[nodiscard]] expected<request_handle> try_submit(
      request_options request, std::function<void(const token_event&)> on_token);

 public:
  explicit engine(passkey, std::unique_ptr<impl> p);

 private:
  std::unique_ptr<impl> p_;
};

}  // namespace helix::actors
