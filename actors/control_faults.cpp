// The control-plane fault proxy (control_faults.hpp).
#include "actors/control_faults.hpp"

#include <caf/all.hpp>
#include <cmath>
#include <optional>

#include "actors/runtime.hpp"
#include "core/log.hpp"
#include "core/rng.hpp"

namespace helix::actors {

status validate(const control_fault_options& o) {
  const std::pair<const char*, double> ps[] = {{"delay", o.delay},
                                               {"drop", o.drop},
                                               {"duplicate", o.duplicate},
                                               {"reorder", o.reorder},
                                               {"kill", o.kill}};
  double sum = 0.0;
  for (const auto& [name, p] : ps) {
    if (!std::isfinite(p) || p < 0.0 || p > 1.0) {
      return invalid_argument("control_fault_options.{}: {} is not a probability in [0, 1]", name,
                              p);
    }
    sum += p;
  }
  if (sum > 1.0) return invalid_argument("control_fault_options: probabilities sum to {} > 1", sum);
  if (o.max_delay.count() < 1) {
    return invalid_argument("control_fault_options.max_delay: {} ms, must be >= 1",
                            o.max_delay.count());
  }
  if (o.max_faults < 0) {
    return invalid_argument("control_fault_options.max_faults: {}, must be >= 0", o.max_faults);
  }
  return ok_status();
}

namespace {

enum class fate : std::uint8_t { pass, delay, drop, duplicate, reorder, kill };

struct proxy_state {
  caf::actor worker;
  caf::actor engine;  // whoever sent the first message that was not the worker's
  control_fault_options opt;
  std::int64_t rank = 0;
  control_fault_counts* counts = nullptr;
  std::uint64_t next_message = 0;
  std::int64_t faults = 0;
  std::optional<caf::message> held;  // a reordered message, sent after the next one
};

using proxy_ptr = caf::stateful_actor<proxy_state>*;

fate draw(proxy_state& st) {
  const std::uint64_t k = st.next_message++;
  if (st.opt.max_faults > 0 && st.faults >= st.opt.max_faults) return fate::pass;
  const double u = uniform_open01(
      random_words(st.opt.seed, static_cast<std::uint64_t>(st.rank), k, rng_purpose::faults, 1)[0]);
  double edge = 0.0;
  const std::pair<double, fate> table[] = {{st.opt.delay, fate::delay},
                                           {st.opt.drop, fate::drop},
                                           {st.opt.duplicate, fate::duplicate},
                                           {st.opt.reorder, fate::reorder},
                                           {st.opt.kill, fate::kill}};
  for (const auto& [p, f] : table) {
    edge += p;
    if (u < edge) {
      ++st.faults;
      return f;
    }
  }
  return fate::pass;
}

std::chrono::milliseconds delay_of(const proxy_state& st) {
  const std::uint32_t w = random_words(st.opt.seed, static_cast<std::uint64_t>(st.rank),
                                       st.next_message, rng_purpose::faults, 2)[0];
  return std::chrono::milliseconds(1 + static_cast<std::int64_t>(w % st.opt.max_delay.count()));
}

caf::behavior proxy(proxy_ptr self, caf::actor worker, std::int64_t rank, control_fault_options opt,
                    control_fault_counts* counts) {
  auto& st = self->state;
  st.worker = std::move(worker);
  st.rank = rank;
  st.opt = opt;
  st.counts = counts;
  self->monitor(st.worker);
  self->set_down_handler([self](caf::down_msg& dm) {
    if (dm.source == self->state.worker.address()) self->quit(dm.reason);
  });
  self->set_exit_handler([self](caf::exit_msg& em) {
    self->send_exit(self->state.worker, em.reason);
    self->quit(em.reason);
  });
  // Every other message: a reply from the worker goes to the engine; anything else goes to the
  // worker, meeting the fate drawn for it.
  self->set_default_handler([self](caf::scheduled_actor*,
                                   caf::message_view& view) -> caf::result<caf::message> {
    auto& st = self->state;
    caf::message m = view.move_content_to_message();
    const caf::actor_addr from = caf::actor_cast<caf::actor_addr>(self->current_sender());
    if (from == st.worker.address()) {
      if (st.engine) self->send(st.engine, std::move(m));
      return caf::delegated<caf::message>{};
    }
    if (!st.engine) st.engine = caf::actor_cast<caf::actor>(self->current_sender());
    const auto forward = [self](caf::message msg) {
      self->send(self->state.worker, std::move(msg));
    };
    const auto release_held = [&] {
      if (st.held) {
        forward(std::move(*st.held));
        st.held.reset();
      }
    };
    const auto log = module_logger("actors");
    switch (draw(st)) {
      case fate::pass:
        forward(m);
        release_held();
        break;
      case fate::delay: {
        const auto d = delay_of(st);
        log->info("control fault: message {} to worker {} delayed {} ms", st.next_message - 1,
                  st.rank, d.count());
        if (st.counts) ++st.counts->delayed;
        self->delayed_send(st.worker, d, m);
        release_held();
        break;
      }
      case fate::drop:
        log->info("control fault: message {} to worker {} dropped", st.next_message - 1, st.rank);
        if (st.counts) ++st.counts->dropped;
        release_held();
        break;
      case fate::duplicate:
        log->info("control fault: message {} to worker {} sent twice", st.next_message - 1,
                  st.rank);
        if (st.counts) ++st.counts->duplicated;
        forward(m);
        forward(m);
        release_held();
        break;
      case fate::reorder:
        log->info("control fault: message {} to worker {} held back for the next",
                  st.next_message - 1, st.rank);
        if (st.counts) ++st.counts->reordered;
        release_held();
        st.held = m;
        break;
      case fate::kill:
        log->info("control fault: worker {} killed at message {}", st.rank, st.next_message - 1);
        if (st.counts) ++st.counts->killed;
        self->send_exit(st.worker, caf::exit_reason::kill);
        break;
    }
    return caf::delegated<caf::message>{};  // nothing to answer: replies come from the worker
  });
  return {[](caf::unit_t) {}};
}

}  // namespace

caf::actor spawn_control_fault_proxy(caf::actor_system& sys, caf::actor worker, std::int64_t rank,
                                     control_fault_options options, control_fault_counts* counts) {
  return sys.spawn(proxy, std::move(worker), rank, options, counts);
}

}  // namespace helix::actors
