// CAF's view of the control messages of actors/protocol.hpp: an `inspect` overload per message
// (so they serialise for remote actors) and the type ID block registered with every actor
// system. Internal to actors/: includes CAF.
#pragma once

#include <caf/all.hpp>

#include "actors/engine.hpp"
#include "actors/protocol.hpp"

namespace helix::actors {

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, wire_status& x) {
  return f(caf::meta::type_name("wire_status"), x.code, x.message);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_item& x) {
  return f(caf::meta::type_name("step_item"), x.seq, x.tokens, x.sample, x.temperature, x.top_k,
           x.top_p, x.seed, x.request_id, x.want_logits, x.synthetic_tokens, x.synthetic_seed,
           x.rewrite_from);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_msg& x) {
  return f(caf::meta::type_name("step_msg"), x.epoch, x.step_id, x.items, x.new_block_kvp);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, step_done_msg& x) {
  return f(caf::meta::type_name("step_done_msg"), x.epoch, x.step_id, x.rank, x.result, x.tokens,
           x.item_errors, x.kv_used_blocks, x.logits, x.suspects, x.phase_seconds);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, open_seq_msg& x) {
  return f(caf::meta::type_name("open_seq_msg"), x.epoch, x.op_id, x.seq);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, close_seq_msg& x) {
  return f(caf::meta::type_name("close_seq_msg"), x.epoch, x.op_id, x.seq);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, move_item& x) {
  return f(caf::meta::type_name("move_item"), x.seq, x.block_idx, x.to_kvp);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, migrate_msg& x) {
  return f(caf::meta::type_name("migrate_msg"), x.epoch, x.op_id, x.moves);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, restore_seq& x) {
  return f(caf::meta::type_name("restore_seq"), x.seq, x.offset, x.num_tokens, x.owner_kvp,
           x.kept_kvp, x.synthetic_tokens, x.synthetic_seed, x.donor);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, restore_msg& x) {
  return f(caf::meta::type_name("restore_msg"), x.epoch, x.op_id, x.seqs, x.next_seq, x.handoff,
           x.reslice_from, x.reslice_holders);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, op_done_msg& x) {
  return f(caf::meta::type_name("op_done_msg"), x.epoch, x.op_id, x.rank, x.result,
           x.kv_used_blocks);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, submit_msg& x) {
  return f(caf::meta::type_name("submit_msg"), x.request_id, x.prompt, x.temperature, x.top_k,
           x.top_p, x.seed, x.max_tokens, x.stop_tokens, x.deadline_ns, x.synthetic_tokens,
           x.synthetic_seed, x.return_logits);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_stats& x) {
  return f(caf::meta::type_name("worker_stats"), x.rank, x.kv_used_blocks, x.kv_capacity_blocks);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, recovery_stats& x) {
  return f(caf::meta::type_name("recovery_stats"), x.rank, x.pid, x.why, x.layout_before,
           x.layout_after, x.mode, x.detect_ms, x.replan_ms, x.reload_ms, x.rebuild_ms,
           x.requests_replayed, x.tokens_replayed, x.blocks_kept, x.blocks_moved, x.blocks_rebuilt);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, epoch_stats& x) {
  return f(caf::meta::type_name("epoch_stats"), x.reason, x.layout_before, x.layout_after,
           x.kv_bytes_moved, x.blocks_moved, x.blocks_rebuilt, x.pause_ms, x.note);
}
// health and failure stay out: engine::stats() takes them from the registry the API shares with
// the engine actor (stream_registry::failure), never from a remote peer.
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, engine_stats& x) {
  return f(caf::meta::type_name("engine_stats"), x.layout, x.submitted, x.completed, x.cancelled,
           x.failed, x.refused, x.queued, x.active, x.steps, x.tokens_generated, x.migrations,
           x.kv_imbalance, x.kv_imbalance_max, x.epoch, x.workers, x.recoveries, x.epochs,
           x.standbys);
}

}  // namespace helix::actors

CAF_BEGIN_TYPE_ID_BLOCK(helix_actors, caf::first_custom_type_id)
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::wire_status))
CAF_ADD_TYPE_ID(helix_actors, (std::vector<helix::actors::wire_status>))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::step_item))
CAF_ADD_TYPE_ID(helix_actors, (std::vector<helix::actors::step_item>))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::step_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::step_done_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::open_seq_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::close_seq_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::move_item))
CAF_ADD_TYPE_ID(helix_actors, (std::vector<helix::actors::move_item>))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::migrate_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::op_done_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::restore_seq))
CAF_ADD_TYPE_ID(helix_actors, (std::vector<helix::actors::restore_seq>))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::restore_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::submit_msg))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::worker_stats))
CAF_ADD_TYPE_ID(helix_actors, (std::vector<helix::actors::worker_stats>))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::recovery_stats))
CAF_ADD_TYPE_ID(helix_actors, (std::vector<helix::actors::recovery_stats>))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::epoch_stats))
CAF_ADD_TYPE_ID(helix_actors, (std::vector<helix::actors::epoch_stats>))
CAF_ADD_TYPE_ID(helix_actors, (helix::actors::engine_stats))
CAF_ADD_ATOM(helix_actors, helix::actors, plan_atom, "plan")
CAF_ADD_ATOM(helix_actors, helix::actors, commit_atom, "commit")
CAF_ADD_ATOM(helix_actors, helix::actors, join_atom, "join")
CAF_ADD_ATOM(helix_actors, helix::actors, leave_atom, "leave")
CAF_ADD_ATOM(helix_actors, helix::actors, rebal_atom, "rebalance")
CAF_ADD_ATOM(helix_actors, helix::actors, cancel_atom, "cancel")
CAF_ADD_ATOM(helix_actors, helix::actors, stats_atom, "stats")
CAF_ADD_ATOM(helix_actors, helix::actors, drain_atom, "drain")
CAF_ADD_ATOM(helix_actors, helix::actors, wstate_atom, "wstate")
CAF_ADD_ATOM(helix_actors, helix::actors, deadline_atom, "deadline")
CAF_ADD_ATOM(helix_actors, helix::actors, lost_atom, "lost")
CAF_ADD_ATOM(helix_actors, helix::actors, step_watch_atom, "stepwatch")
CAF_ADD_ATOM(helix_actors, helix::actors, op_watch_atom, "opwatch")
CAF_ADD_ATOM(helix_actors, helix::actors, placement_atom, "placement")
CAF_ADD_ATOM(helix_actors, helix::actors, step_probe_atom, "stepprobe")
CAF_ADD_ATOM(helix_actors, helix::actors, probe_ack_atom, "probeack")
CAF_ADD_ATOM(helix_actors, helix::actors, grow_atom, "grow")
CAF_ADD_ATOM(helix_actors, helix::actors, shrink_atom, "shrink")
CAF_ADD_ATOM(helix_actors, helix::actors, member_atom, "member")
CAF_END_TYPE_ID_BLOCK(helix_actors)
