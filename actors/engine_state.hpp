// The engine actor's state and the helpers its two files share (engine_actor.cpp: queue,
// admission, batching and the step loop; engine_recovery.cpp: recovery from a worker failure).
// Internal to actors/.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "actors/runtime.hpp"

namespace spdlog {
class logger;
}

namespace helix::actors::engine_impl {

struct request_state {
  submit_msg req;
  std::uint64_t seq = 0;       // 0 while queued
  std::int64_t prefilled = 0;  // tokens of feed() in the KV
  std::int64_t generated = 0;
  std::int32_t last_token = -1;
  std::vector<std::int32_t> outputs;  // every token delivered, in order
  /// After a recovery: the prompt and every generated token but the last, prefilled again
  /// without sampling (the last generated token is the next decode input, as before).
  std::vector<std::int32_t> replay;
  bool rebuilding = false;  // its KV is being rebuilt after a recovery
  /// Lost blocks only: the positions [from, to) past its synthetic context whose KV a recovery
  /// lost, in order; computed again (rewrite items) before the request goes on.
  std::deque<std::pair<std::int64_t, std::int64_t>> lost_runs;
  std::int64_t reserved = 0;       // blocks per KVP member
  bool synthetic_pending = false;  // its synthetic context is not appended yet
  bool cancelled = false;
  bool expired = false;  // its deadline passed
};

// The tokens a request prefills: its prompt, or its replay after a recovery.
inline const std::vector<std::int32_t>& feed(const request_state& r) {
  return r.replay.empty() ? r.req.prompt : r.replay;
}

// A planned change of the workers (engine::add_workers, engine::drain_worker), carried out at a
// step boundary.
struct planned_change {
  bool join = false;       // else a leave
  std::int64_t count = 0;  // join: members to add
  std::int64_t rank = -1;  // leave: the rank that leaves (-1: the highest)
  caf::actor_addr leaver;  // leave: else this worker (its process asked to leave), if current
  std::string note;        // the policy's explanation, for the epoch
  std::chrono::steady_clock::time_point deadline;
  caf::response_promise promise;
};

struct engine_state {
  engine_setup setup;
  std::vector<caf::actor> workers;
  caf::actor planner;
  std::shared_ptr<stream_registry> registry;

  std::deque<request_state> queue;
  std::vector<request_state> active;  // admission order
  std::int64_t reserved_per_member = 0;
  std::uint64_t next_seq = 1;
  std::int64_t epoch = 0;
  std::int64_t next_op = 1;

  // The step in flight.
  bool busy = false;
  std::int64_t step_id = 0;
  std::size_t pending = 0;
  status step_error;
  std::vector<std::int32_t> step_tokens;
  std::vector<wire_status> step_item_errors;
  bool replies_agree = true;
  std::vector<std::size_t> step_members;  // index into `active` of each item
  std::vector<std::int64_t> step_counts;
  std::vector<std::uint64_t> step_seqs;
  std::vector<bool> step_synthetic;         // per item: a synthetic-KV fill
  std::vector<std::int64_t> step_rewrites;  // per item: lost positions it computes again, or 0
  std::vector<bool> step_wants_logits;      // per item: sampled, and its request returns logits
  std::vector<float> step_logits;           // rank 0's rows for those items
  std::vector<bool> step_replied;           // per rank: its reply to the step in flight arrived
  // Operations (opens, closes, migrations) sent to every worker and not yet answered by all:
  // op id -> per rank, whether it answered. A rank silent for peer_timeout_ms lost the message.
  std::map<std::int64_t, std::vector<bool>> ops_pending;
  std::set<std::int64_t> migrations_pending;  // op ids of migrations not answered by all

  status broken;  // a failed step: nothing runs any more
  bool draining = false;
  std::vector<caf::response_promise> drain_waiters;

  engine_stats stats;
  std::vector<std::int64_t> kv_used;  // per worker, from the last step

  // Recovery (engine_config::recovery).
  std::int64_t generation = 0;  // of the worker set and planner; each recovery makes a new one
  std::chrono::steady_clock::time_point step_started;
  bool rebuilding = false;  // some request's KV is still being rebuilt
  std::chrono::steady_clock::time_point rebuild_started;
  /// The restore_msg that follows a relayout (op id; 0: none pending): no step runs until every
  /// worker answered it. A lost-blocks restore that fails falls back to a full replay.
  std::int64_t restore_op = 0;
  bool restore_has_seqs = false;
  std::int64_t failed_restore_op = 0;  // its other ranks' replies are ignored
  /// Members of the old layout left without a rank that hand their KV over in the restore
  /// (rank N + j); stopped once it is answered (they stand by then).
  std::vector<caf::actor> donors;
  /// A planned change of TPA size re-slices the KV by head (restore_msg::reslice_from): the old
  /// layout and, per old rank, its member in the restore's communicator. Empty: none.
  std::string reslice_from;
  std::vector<std::int64_t> reslice_holders;
  std::int64_t reslice_bytes = 0;   // KV bytes its head pieces carry between members
  std::int64_t reslice_blocks = 0;  // the blocks it moved (engine_stats counts blocks too)

  // Planned changes (engine_elastic.cpp): queued, then one at a time at a step boundary.
  std::deque<planned_change> changes;
  bool changing = false;  // a change runs: no step until it is done
  planned_change change;  // the one running
  epoch_stats change_epoch;
  recovery_stats change_kv;  // how its KV moved (the recovery's fields, filled the same way)
  std::chrono::steady_clock::time_point change_started;
  std::int64_t change_migration = 0;  // a join's spreading migration (op id), 0: none
  /// Its KV moves re-sliced by head (another TPA size, or a member neither kept nor donated
  /// whole): every old member left without a rank sends as a donor.
  bool change_reslice = false;
  /// A leave that waits for room (elastic_leave = "wait"): no admission meanwhile.
  bool admission_paused = false;
  /// Rebalancing migrations in flight: op id -> (index in stats.epochs, when sent).
  std::map<std::int64_t, std::pair<std::size_t, std::chrono::steady_clock::time_point>>
      migration_epochs;
  std::chrono::steady_clock::time_point recovery_started;  // the last recovery's failure
  // The elastic policy (engine_config::elastic_policy).
  bool unasked_join = false;  // a member joined on its own since the last change
  std::chrono::steady_clock::time_point policy_since;  // gain predicted since; epoch: none
  std::chrono::steady_clock::time_point policy_checked;
  std::chrono::steady_clock::time_point last_change;
};

using self_ptr = caf::stateful_actor<engine_state>*;

// engine_actor.cpp
std::shared_ptr<spdlog::logger> logger();
void publish(const engine_state& s);
/// The request's last event (with `token`, or -1 for none) and its counters.
void end_request(engine_state& s, const request_state& r, std::int32_t token, finish_reason reason,
                 status error = ok_status(), std::vector<float> logits = {});
/// Ends every request with `error`; nothing runs any more.
void fail_everything(self_ptr self, const status& error);
void answer_drains(engine_state& s);
/// Cancellations, expired deadlines and admissions (between steps), then the next step.
void start_step(self_ptr self);
/// Operation `op` went to every worker (and to `extra` donors after them): each must answer
/// within peer_timeout_ms.
void op_sent(self_ptr self, std::int64_t op, std::size_t extra = 0);
double ms_between(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b);

// engine_recovery.cpp
/// Worker `rank` failed (`why`; `suspects`: the ranks its data plane blamed): recovers, or fails
/// the engine when recovery is off or impossible.
void recover(self_ptr self, std::int64_t rank, const status& why,
             const std::vector<std::int32_t>& suspects = {});
/// A worker answered the restore_msg after a relayout: once all did, steps run again; a failed
/// lost-blocks restore falls back to a full replay. Returns false when `m` is no such answer.
bool restore_answered(self_ptr self, const op_done_msg& m);
/// Operation `op` went unanswered by `rank` past the peer timeout: true when it was the restore
/// and the silent one a donor (the engine then replays in full); false for a worker failure.
bool restore_timed_out(self_ptr self, std::int64_t op, std::int64_t rank);
/// Where the KV of the running relayout is accounted: the planned change's, or the last
/// recovery's.
recovery_stats& kv_record(engine_state& s);
/// The layout of `members` ranks of `current`'s family (default_layout), with the current TPA
/// size instead where `keep_tpa` and that is valid.
expected<layout> layout_of(const layout& current, std::int64_t members, const model_spec& spec,
                           bool keep_tpa);
/// The largest member count up to `members` with a valid layout of `current`'s family, the TPA
/// size kept where possible (then KVP members keep their blocks); `current` itself when no
/// smaller count helps.
expected<layout> layout_for_members(const layout& current, std::int64_t members,
                                    const model_spec& spec, bool keep_tpa);
/// The members of `before` that can hand their blocks over under `after`. Same TPA size: each
/// KVP member whose holders are all in `standby`, its holders in column order (donor d's holder
/// in column c is donor d * TPA + c, model::restored_sequence::donor). Another TPA size: every
/// member of `standby` (the KV is re-sliced by head, model::kv_reslice).
std::vector<std::int64_t> donor_ranks(const layout& before, const layout& after,
                                      const std::vector<std::int64_t>& standby);
/// Whether every old KVP member is kept by a new member (planner::kept_members) or donated
/// whole by `donors` (donor_ranks' groups); when not, a planned change re-slices instead.
bool whole_members_cover(const layout& before, const layout& after,
                         const std::vector<std::int64_t>& survivors,
                         const std::vector<std::int64_t>& donors);
/// KV bytes a relayout's `blocks_moved` blocks took over the data plane: a re-slice's head
/// pieces between members, plus whole blocks (donations, migrations).
std::int64_t kv_bytes_moved(const engine_state& s, std::int64_t blocks_moved);
/// The new workers `fresh` (ranks of `grid`, then donors) replace the old ones: installed, and
/// the KV restored (kept and donated blocks, lost ones rebuilt; a full replay when nothing can
/// be kept, or `replay` names why none may be). `survivors[i]`: the old rank of new rank i.
void install_and_restore(self_ptr self, const layout& before, const layout& grid,
                         std::vector<caf::actor> fresh, const std::vector<std::int64_t>& survivors,
                         const std::vector<std::int64_t>& donors, const std::string& replay);

// engine_elastic.cpp
/// Queues a planned change and starts it when the engine is between steps.
void queue_change(self_ptr self, planned_change c);
/// Starts the next planned change if the engine is between steps (no step, restore, migration
/// or rebuild in flight); true when one runs (no step may start).
bool run_change(self_ptr self);
/// The restore of a planned change was answered by every worker: a join spreads the blocks
/// over its new members, then the change ends.
void change_restored(self_ptr self);
/// A migration was answered by every worker: a join's spreading ends its change; a
/// rebalancing's epoch gets its pause.
void migration_done(self_ptr self, std::int64_t op);
/// Ends the running change with `error` (a recovery took over, the engine failed).
void abandon_change(self_ptr self, const status& error);
/// The elastic policy, between steps: after a member joined on its own, queues a join onto the
/// larger layout once the cost model's gain for the current load held long enough.
void consider_growth(self_ptr self);

}  // namespace helix::actors::engine_impl
