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

}  // namespace helix::actors::engine_impl
