// The three actors behind the embedding API, as CAF behaviours (internal to actors/; the public
// header is actors/engine.hpp):
//
//   worker  one per rank; owns a worker_compute (the rank's weight and KV shards). Runs each
//           control message on its own thread (spawned detached), replies to the sender. Drops
//           messages of an older layout epoch.
//   planner wraps planner/: the placement record (offsets at join, owners of every new block,
//           commits after each step) and rebalancing decisions after requests leave.
//   engine  the request queue, KV admission, continuous batching (requests join and leave between
//           steps), the step loop (plan -> all workers -> commit), token streams, cancellation
//           and counters.
//
// A step is one message to each worker and one reply from each (ARCHITECTURE.md section 4); the
// per-layer collectives run inside the workers over the data plane.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/engine.hpp"
#include "actors/messages.hpp"
#include "actors/worker_compute.hpp"
#include "core/layout.hpp"
#include "core/model_spec.hpp"

namespace helix::actors {

/// What the API and the engine actor share: where each request's events go (its stream and
/// optional callback), cancellations requested through the API, the engine's health and the stats
/// it published last. Thread-safe.
class stream_registry {
 public:
  void add(std::uint64_t id, std::shared_ptr<token_stream> stream,
           std::function<void(const token_event&)> on_token);
  /// Calls the callback, then pushes the event to the stream (both outside the lock); forgets the
  /// request after its last event. Unknown ids are ignored. Returns internal ("callback threw:
  /// ...") when the callback threw (the event still reaches the stream): the caller ends the
  /// request.
  [[nodiscard]] status deliver(const token_event& e);
  [[nodiscard]] std::size_t size() const;

  /// API side: marks request `id` as cancelled; not_found when it is unknown or already closing.
  /// Once this returned ok, close() answers `cancelled` for the request.
  [[nodiscard]] status request_cancel(std::uint64_t id);
  /// Engine side: whether a cancel was requested through request_cancel.
  [[nodiscard]] bool cancel_requested(std::uint64_t id) const;
  /// Engine side, before the last event: marks the request as closing (request_cancel answers
  /// not_found from now on) and returns the reason to end it with: `cancelled` when a cancel
  /// was requested first, else `reason`.
  [[nodiscard]] finish_reason close(std::uint64_t id, finish_reason reason);

  /// The engine's failure (ok while serving); set once by the engine actor.
  void set_failure(const status& failure);
  [[nodiscard]] status failure() const;

  /// The engine actor's counters as of its last change, for stats() from a callback.
  void publish(const engine_stats& s);
  [[nodiscard]] engine_stats snapshot() const;

  /// Whether the calling thread is inside a callback this registry is running.
  [[nodiscard]] static bool in_callback();

 private:
  struct entry {
    std::shared_ptr<token_stream> stream;
    std::function<void(const token_event&)> on_token;
    bool cancel_requested = false;
    bool closing = false;
  };
  mutable std::mutex mu_;
  std::map<std::uint64_t, entry> entries_;
  status failure_;
  engine_stats snapshot_;
};

/// Worker behaviour. Replies (step_done_msg, op_done_msg) go to the message's sender;
/// `wstate_atom` answers (epoch, dropped stale messages, KV blocks used).
/// `suspects` (may be null) reads the worker's data plane's suspects (transport::fabric) for a
/// failed step's reply.
using suspects_fn = std::function<std::vector<int>()>;
caf::behavior worker_actor(caf::event_based_actor* self, std::shared_ptr<worker_compute> compute,
                           suspects_fn suspects);

/// Planner behaviour over a placement record for layout `l`.
///   (join_atom, seq) / (leave_atom, seq)               -> ok
///   (plan_atom, seqs, counts)                           -> owners (std::vector<int64_t>)
///   (commit_atom, seqs, counts)                         -> ok (after a successful step)
///   (rebal_atom)                                        -> moves (std::vector<move_item>),
///       already recorded in the placement, then the column's kv_imbalance and its mean blocks
///       per member after them (double, double)
///   (rebal_atom, threshold, min_blocks)                 -> the same with these options (a join
///       spreads the blocks over the new members whatever the configured minimum)
///   (placement_atom, layout text, kept, donated)        -> every live sequence under that
///       layout (std::vector<restore_seq>, planner/recovery_plan.hpp; kept: per old KVP member,
///       the new member that keeps its blocks, or -1; donated: its donor index, or -1) and the
///       step clock (std::int64_t)
caf::behavior planner_actor(caf::event_based_actor* self, layout l, std::int64_t block_tokens,
                            double rebalance_threshold, std::int64_t rebalance_min_blocks);
/// The same, its record holding the sequences a recovery restored and its clock at `step`.
caf::behavior planner_actor_recovered(caf::event_based_actor* self, layout l,
                                      std::int64_t block_tokens, double rebalance_threshold,
                                      std::int64_t rebalance_min_blocks,
                                      std::vector<restore_seq> restored, std::int64_t step);

/// What the API side and the engine actor share about the workers, which recovery changes: the
/// current worker actors (stopped at shutdown) and the KVP size admission checks against.
struct worker_roster {
  std::mutex mu;
  std::vector<caf::actor> workers;  // under mu
  std::vector<worker_info> info;    // under mu: who they are (engine::workers)
  std::atomic<std::int64_t> kvp{1};
};

/// What the engine actor needs to know about the model and the workers.
struct engine_setup {
  engine_config config;
  layout grid;
  model_spec spec;
  std::int64_t vocab = 0;
  std::int64_t capacity_blocks_per_worker = 0;  // KV slots of each worker
  /// Blocks per KVP member that admission may reserve; 0: all of capacity_blocks_per_worker.
  /// engine::create keeps room for rebalancing (admission_blocks()).
  std::int64_t admission_blocks_per_worker = 0;
  std::shared_ptr<worker_roster> roster;  // null in actor tests
  /// Wakes the workers from a failed step (worker_source::abort): a rank that failed leaves its
  /// peers waiting in a collective. May be null (actor tests).
  std::function<void(const status&)> abort_data_plane;
  /// Rebuilds the workers on a layout (worker_source::relayout: survivors, standby, donors,
  /// leaving), for a recovery (engine_config::recovery) or a planned join or leave; null: the
  /// workers can never change (actor tests).
  std::function<expected<std::vector<caf::actor>>(
      const layout&, const std::vector<std::int64_t>&, const std::vector<std::int64_t>&,
      const std::vector<std::int64_t>&, const std::vector<std::int64_t>&)>
      relayout;
  /// Scale out: more members join as standbys (worker_source::add_members); may be null.
  std::function<status(const layout&, std::int64_t)> add_members;
  /// Bytes of one KV block over its holders (every layer, K and V) under a layout, for
  /// epoch_stats.
  std::function<std::int64_t(const layout&)> block_bytes;
  /// The cost model's decode step time (seconds) on a layout for `batch` requests of `context`
  /// tokens, or < 0 when it has none; the elastic policy compares layouts with it. May be null.
  std::function<double(const layout&, std::int64_t batch, std::int64_t context)> predict_step_s;
  /// Members without a rank that a relayout can use (worker_source::standbys); may be null.
  std::function<std::int64_t()> standbys;
  /// worker_source::prune_standbys, before a layout is planned; may be null.
  std::function<void()> prune_standbys;
  /// Ranks whose member is known to be dead (worker_source::dead); may be null.
  std::function<std::vector<std::int64_t>()> dead;
  /// The worker pids by rank, for reports (worker_source::workers); may be null.
  std::function<std::vector<worker_info>()> workers_info;
};

/// Blocks a request of `prompt_len` + `max_tokens` tokens may occupy on any one KVP member
/// (round-robin placement puts at most ceil(blocks / KVP) on a member, plus one of slack for the
/// staggered start); admission reserves this much on every member. INT64_MAX when the sum
/// overflows (such a request can never fit).
[[nodiscard]] std::int64_t blocks_reserved_per_member(std::int64_t prompt_len,
                                                      std::int64_t max_tokens,
                                                      std::int64_t block_tokens, std::int64_t kvp);

/// The blocks per member admission may reserve so that no member ever overflows. Without
/// migration a member holds at most the sum of the reservations R (each request's blocks cycle
/// over the members). Rebalancing leaves a member at most (1 + threshold) x the mean + 1 blocks,
/// and the mean plus a member's share of every request's remaining blocks is at most R; so a
/// member never holds more than (1 + threshold) x R + 1, which fits when
/// R <= (capacity - 1) / (1 + threshold).
[[nodiscard]] std::int64_t admission_blocks(std::int64_t capacity_blocks, double threshold);

/// Spawns the engine actor (its behaviour below).
///   submit_msg                -> queues the request (events go to `registry`)
///   (cancel_atom, id)         -> ok or not_found (error)
///   (stats_atom)              -> engine_stats
///   (drain_atom)              -> cancels everything; answers once no step is in flight and every
///                                sequence is closed (used before shutdown)
///   (deadline_atom, id)       -> ends request `id` with deadline_exceeded if it still runs
///                                (sent by the engine to itself at a request's deadline)
///   (lost_atom, worker, why)  -> that worker stopped answering (a worker source's heartbeat
///                                monitor): the engine recovers or fails, naming its rank; a
///                                worker a recovery already replaced is ignored
///   (grow_atom, count, timeout_ms)  -> wire_status: ok once `count` more members joined and the
///                                engine moved to the larger layout (engine::add_workers)
///   (shrink_atom, rank, timeout_ms) -> wire_status: ok once worker `rank` (-1: the highest)
///                                handed its KV over and left (engine::drain_worker); a leave
///                                that waits for room gives up at the timeout
///   (shrink_atom, worker)     -> the same for that worker actor (its process asked to leave);
///                                ok at once when a relayout replaced it already
///   (member_atom)             -> a member joined on its own (a worker source's late join): the
///                                elastic policy considers a larger layout
[[nodiscard]] caf::actor spawn_engine(caf::actor_system& sys, engine_setup setup,
                                      std::vector<caf::actor> workers, caf::actor planner,
                                      std::shared_ptr<stream_registry> registry);

}  // namespace helix::actors
