// The worker actor: control messages in, calls on its worker_compute, replies out. Spawned
// detached, so its compute (which blocks in collectives until every rank joins) has a thread of
// its own and never stalls CAF's scheduler.
#include "actors/runtime.hpp"

namespace helix::actors {
namespace {

struct worker_state {
  std::int64_t epoch = 0;
  std::int64_t dropped = 0;  // messages of an older epoch
  std::vector<std::int32_t> tokens;
};

}  // namespace

wire_status to_wire(const status& st) {
  return {static_cast<std::int32_t>(st.code()), st.ok() ? std::string() : st.message()};
}

status from_wire(const wire_status& w) {
  if (w.code == 0) return ok_status();
  return status(static_cast<errc>(w.code), w.message);
}

caf::behavior worker_actor(caf::event_based_actor* self, std::shared_ptr<worker_compute> compute) {
  auto st = std::make_shared<worker_state>();
  auto reply_to = [self] { return caf::actor_cast<caf::actor>(self->current_sender()); };
  return {
      [=](step_msg& m) {
        if (m.epoch < st->epoch) {
          ++st->dropped;
          return;
        }
        step_done_msg done;
        done.epoch = m.epoch;
        done.step_id = m.step_id;
        done.rank = compute->rank();
        done.result = to_wire(compute->step(m, st->tokens));
        done.tokens = st->tokens;
        done.kv_used_blocks = compute->kv_used_blocks();
        self->send(reply_to(), std::move(done));
      },
      [=](open_seq_msg& m) {
        if (m.epoch < st->epoch) {
          ++st->dropped;
          return;
        }
        status result = ok_status();
        auto id = compute->open_sequence();
        if (!id) {
          result = id.error();
        } else if (*id != m.seq) {
          result = internal_error("worker {}: opened sequence {}, the engine expected {}",
                                  compute->rank(), *id, m.seq);
        }
        self->send(reply_to(), op_done_msg{m.epoch, m.op_id, compute->rank(), to_wire(result),
                                           compute->kv_used_blocks()});
      },
      [=](close_seq_msg& m) {
        if (m.epoch < st->epoch) {
          ++st->dropped;
          return;
        }
        const status result = compute->close_sequence(m.seq);
        self->send(reply_to(), op_done_msg{m.epoch, m.op_id, compute->rank(), to_wire(result),
                                           compute->kv_used_blocks()});
      },
      [=](migrate_msg& m) {
        // A migration starts a new epoch: anything older is stale from now on.
        if (m.epoch <= st->epoch) {
          ++st->dropped;
          return;
        }
        st->epoch = m.epoch;
        const status result = compute->migrate(m.moves);
        self->send(reply_to(), op_done_msg{m.epoch, m.op_id, compute->rank(), to_wire(result),
                                           compute->kv_used_blocks()});
      },
      [=](wstate_atom) {
        return caf::make_message(st->epoch, st->dropped, compute->kv_used_blocks());
      },
  };
}

}  // namespace helix::actors
