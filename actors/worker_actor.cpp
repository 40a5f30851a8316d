// The worker actor: control messages in, calls on its worker_compute, replies out. Spawned
// detached, so its compute (which blocks in collectives until every rank joins) has a thread of
// its own and never stalls CAF's scheduler.
#include "actors/runtime.hpp"
#include "core/log.hpp"

namespace helix::actors {
namespace {

struct worker_state {
  std::int64_t epoch = 0;
  std::int64_t dropped = 0;  // messages of an older epoch, and repeats
  // The engine numbers steps and operations in increasing order: one not above the last seen
  // is a duplicate (or came after a later one) and is not run again.
  std::int64_t last_step = 0;
  std::int64_t last_op = 0;
  step_outcome outcome;
};

// The compute's calls may throw only what the standard library throws (std::bad_alloc from a
// container, std::system_error from a thread): turned into a status here, the edge of the
// worker, so that a failed allocation is a reported worker failure and not a dead actor.
template <class F>
status guarded(std::int64_t rank, F&& f) {
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return resource_exhausted("worker {}: out of memory", rank);
  } catch (const std::exception& e) {
    return internal_error("worker {}: {}", rank, e.what());
  }
}

}  // namespace

wire_status to_wire(const status& st) {
  return {static_cast<std::int32_t>(st.code()), st.ok() ? std::string() : st.message()};
}

status from_wire(const wire_status& w) {
  if (w.code == 0) return ok_status();
  return status(static_cast<errc>(w.code), w.message);
}

caf::behavior worker_actor(caf::event_based_actor* self, std::shared_ptr<worker_compute> compute,
                           suspects_fn suspects) {
  auto st = std::make_shared<worker_state>();
  auto reply_to = [self] { return caf::actor_cast<caf::actor>(self->current_sender()); };
  return {
      [=](step_msg& m) {
        if (m.epoch < st->epoch || m.step_id <= st->last_step) {
          ++st->dropped;
          return;
        }
        st->last_step = m.step_id;
        step_done_msg done;
        done.epoch = m.epoch;
        done.step_id = m.step_id;
        done.rank = compute->rank();
        const status result =
            guarded(compute->rank(), [&] { return compute->step(m, st->outcome); });
        if (!result.ok()) {
          module_logger("actors")->error("worker {}: step {} failed: {}", compute->rank(),
                                         m.step_id, result.to_string());
          if (suspects) {
            for (const int r : suspects()) done.suspects.push_back(r);
          }
        }
        done.result = to_wire(result);
        done.tokens = st->outcome.tokens;
        for (const status& e : st->outcome.item_errors) done.item_errors.push_back(to_wire(e));
        done.logits = std::move(st->outcome.logits);
        done.kv_used_blocks = compute->kv_used_blocks();
        done.phase_seconds = st->outcome.phase_seconds;
        self->send(reply_to(), std::move(done));
      },
      [=](open_seq_msg& m) {
        if (m.epoch < st->epoch || m.op_id <= st->last_op) {
          ++st->dropped;
          return;
        }
        st->last_op = m.op_id;
        const status result = guarded(compute->rank(), [&]() -> status {
          auto id = compute->open_sequence();
          if (!id) return id.error();
          if (*id != m.seq) {
            return internal_error("worker {}: opened sequence {}, the engine expected {}",
                                  compute->rank(), *id, m.seq);
          }
          return ok_status();
        });
        self->send(reply_to(), op_done_msg{m.epoch, m.op_id, compute->rank(), to_wire(result),
                                           compute->kv_used_blocks()});
      },
      [=](close_seq_msg& m) {
        if (m.epoch < st->epoch || m.op_id <= st->last_op) {
          ++st->dropped;
          return;
        }
        st->last_op = m.op_id;
        const status result =
            guarded(compute->rank(), [&] { return compute->close_sequence(m.seq); });
        self->send(reply_to(), op_done_msg{m.epoch, m.op_id, compute->rank(), to_wire(result),
                                           compute->kv_used_blocks()});
      },
      [=](migrate_msg& m) {
        // A migration starts a new epoch: anything older is stale from now on.
        if (m.epoch <= st->epoch || m.op_id <= st->last_op) {
          ++st->dropped;
          return;
        }
        st->epoch = m.epoch;
        st->last_op = m.op_id;
        const status result = guarded(compute->rank(), [&] { return compute->migrate(m.moves); });
        self->send(reply_to(), op_done_msg{m.epoch, m.op_id, compute->rank(), to_wire(result),
                                           compute->kv_used_blocks()});
      },
      [=](restore_msg& m) {
        // The first message after a relayout; it starts the new layout's epoch.
        if (m.epoch <= st->epoch || m.op_id <= st->last_op) {
          ++st->dropped;
          return;
        }
        st->epoch = m.epoch;
        st->last_op = m.op_id;
        const status result = guarded(compute->rank(), [&] { return compute->restore(m); });
        self->send(reply_to(), op_done_msg{m.epoch, m.op_id, compute->rank(), to_wire(result),
                                           compute->kv_used_blocks()});
      },
      [=](step_probe_atom, std::int64_t step_id) {
        // Behind any step still in the mailbox: the engine learns the step never came if this
        // arrives before the step's reply.
        self->send(reply_to(), probe_ack_atom::value, step_id, compute->rank());
      },
      [=](wstate_atom) {
        return caf::make_message(st->epoch, st->dropped, compute->kv_used_blocks());
      },
  };
}

}  // namespace helix::actors
