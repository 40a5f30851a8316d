// The registrar and the heartbeat monitor of the engine side (registrar.hpp).
#include "cluster/registrar.hpp"

#include <caf/io/all.hpp>
#include <string>

#include "actors/runtime.hpp"
#include "cluster/cluster.hpp"
#include "cluster/cluster_internal.hpp"
#include "cluster/handshake.hpp"
#include "cluster/messages.hpp"

namespace helix::cluster::detail {
namespace {

using actors::worker_info;

caf::error refuse(std::string text) {
  return caf::make_error(caf::sec::runtime_error, std::move(text));
}

// Registrar: hands out ranks in join order (refusing, with a reply that says why, a worker of
// another protocol or build and bytes that are no join request: it logs them and waits on),
// sends every worker the membership once all sent their UCX address, collects the worker
// actors, and answers the engine's await_workers (or fails it after its timeout, naming who is
// missing). It stops once it answered the engine.
struct registrar_state {
  std::int32_t expected = 0;
  std::int32_t world = 0;  // the engine's ranks, told to standbys (workers added later: expected 0)
  proto_v1::ClusterConfig config;
  std::vector<worker_info> joined;
  std::vector<std::string> addresses;
  std::int32_t addresses_in = 0;
  std::vector<caf::response_promise> address_waiters;
  std::vector<caf::actor> workers;
  std::vector<caf::actor> heartbeats;
  std::vector<caf::actor> agents;
  std::int32_t ready = 0;
  // Standbys: joined past the ranks, up to standbys_expected; ready once their agent is known.
  std::int32_t standbys_expected = 0;
  std::vector<worker_info> standby_joined;
  std::vector<caf::actor> standby_agents;
  std::vector<caf::actor> standby_heartbeats;
  std::int32_t standbys_ready = 0;
  std::vector<caf::response_promise> engine;
  bool answered = false;
  /// A registrar of late joins (listening workers): called with each standby once it is ready.
  std::function<void(const worker_info&, caf::actor agent, caf::actor heartbeat)> on_standby;
};

using registrar_ptr = caf::stateful_actor<registrar_state>*;

void answer_engine(registrar_ptr self) {
  auto& st = self->state;
  if (st.answered || st.ready < st.expected || st.standbys_ready < st.standbys_expected) return;
  st.answered = true;
  worker_set w{st.workers,        st.heartbeats,         st.agents, {}, {}, {},
               st.standby_agents, st.standby_heartbeats, {},        {}, {}};
  for (const worker_info& j : st.joined) {
    w.pids.push_back(j.pid);
    w.hosts.push_back(j.host);
    w.names.push_back(j.name);
  }
  for (const worker_info& j : st.standby_joined) {
    w.standby_pids.push_back(j.pid);
    w.standby_hosts.push_back(j.host);
    w.standby_names.push_back(j.name);
  }
  for (auto& p : st.engine) p.deliver(w);
  st.engine.clear();
}

join_reply_msg refuse_join_msg(registrar_ptr self, const status& why) {
  logger()->warn("refused a worker ({}): {}", caf::to_string(self->current_sender()),
                 why.message());
  return join_reply_msg{to_bytes(refuse_join(why.message()))};
}

std::string describe(const proto_v1::WorkerCapabilities& c) {
  std::string tls;
  for (const auto& t : c.ucx_transports()) tls += (tls.empty() ? "" : ",") + t;
  return fmt::format("{}, {} cpus, {} MiB available, UCX transports {}", c.device(), c.cpus(),
                     c.memory_available_bytes() >> 20, tls.empty() ? "any" : tls);
}

membership_msg make_membership(const registrar_state& st) {
  proto_v1::Membership m;
  m.set_world_size(st.expected);
  for (const worker_info& j : st.joined) {
    proto_v1::Member& w = *m.add_members();
    w.set_rank(static_cast<std::int32_t>(j.rank));
    w.set_name(j.name);
    w.set_pid(j.pid);
    w.set_host(j.host);
    w.set_ucx_address(st.addresses[static_cast<std::size_t>(j.rank)]);
  }
  return membership_msg{to_bytes(m)};
}

// `members`: empty at the start (workers join); after a failure, the processes that take the
// new ranks (they joined before; each is told its rank by relayout_msg).
caf::behavior registrar(registrar_ptr self, std::int32_t expected, std::int32_t standbys,
                        proto_v1::ClusterConfig config, std::vector<worker_info> members,
                        std::int32_t world) {
  auto& st = self->state;
  st.expected = expected;
  st.world = world;
  st.standbys_expected = standbys;
  st.standby_agents.resize(static_cast<std::size_t>(standbys));
  st.standby_heartbeats.resize(static_cast<std::size_t>(standbys));
  st.config = std::move(config);
  st.joined = std::move(members);
  st.addresses.resize(static_cast<std::size_t>(expected));
  st.workers.resize(static_cast<std::size_t>(expected));
  st.heartbeats.resize(static_cast<std::size_t>(expected));
  st.agents.resize(static_cast<std::size_t>(expected));
  return {
      [self](join_msg& m) -> join_reply_msg {
        auto& st = self->state;
        auto j = read_join_request(m.request);
        if (!j) return refuse_join_msg(self, j.error());
        const bool standby_free =
            static_cast<std::int32_t>(st.standby_joined.size()) < st.standbys_expected;
        if (j->standby() && !standby_free) {
          return refuse_join_msg(
              self, failed_precondition("worker '{}' (pid {} on {}) asks to stand by, but the "
                                        "engine expects {} standbys and has them",
                                        j->name(), j->pid(), j->host(), st.standbys_expected));
        }
        if ((j->standby() || static_cast<std::int32_t>(st.joined.size()) >= st.expected) &&
            standby_free) {
          st.standby_joined.push_back({-1, j->pid(), j->host(), j->name()});
          logger()->info("worker {} joined as a standby (pid {}, host {}; {})", j->name(), j->pid(),
                         j->host(), describe(j->capabilities()));
          return join_reply_msg{to_bytes(accept_join(-1, st.world, st.config))};
        }
        if (static_cast<std::int32_t>(st.joined.size()) >= st.expected) {
          return refuse_join_msg(
              self, failed_precondition("worker '{}' (pid {} on {}): the engine already has its "
                                        "{} workers",
                                        j->name(), j->pid(), j->host(), st.expected));
        }
        const auto rank = static_cast<std::int32_t>(st.joined.size());
        st.joined.push_back({rank, j->pid(), j->host(), j->name()});
        logger()->info("worker {} joined as rank {} (pid {}, host {}; {})", j->name(), rank,
                       j->pid(), j->host(), describe(j->capabilities()));
        return join_reply_msg{to_bytes(accept_join(rank, st.expected, st.config))};
      },
      [self](address_msg& a) -> caf::result<membership_msg> {
        auto& st = self->state;
        if (a.rank < 0 || a.rank >= static_cast<std::int32_t>(st.joined.size())) {
          return refuse(fmt::format("address for rank {}, which never joined", a.rank));
        }
        if (a.address.empty() || a.address.size() > max_ucx_address_bytes) {
          return refuse(fmt::format("rank {} sent a {}-byte UCX address (1 to {} bytes allowed)",
                                    a.rank, a.address.size(), max_ucx_address_bytes));
        }
        auto& slot = st.addresses[static_cast<std::size_t>(a.rank)];
        if (slot.empty()) ++st.addresses_in;
        slot = std::move(a.address);
        auto promise = self->make_response_promise<membership_msg>();
        st.address_waiters.push_back(promise);
        if (st.addresses_in == st.expected) {
          const membership_msg m = make_membership(st);
          for (auto& p : st.address_waiters) p.deliver(m);
          st.address_waiters.clear();
        }
        return promise;
      },
      [self](ready_msg& r) {
        auto& st = self->state;
        if (r.rank == -1) {
          for (std::size_t i = 0; i < st.standby_joined.size(); ++i) {
            if (st.standby_joined[i].pid != r.pid || st.standby_agents[i]) continue;
            st.standby_agents[i] = std::move(r.agent);
            st.standby_heartbeats[i] = std::move(r.heartbeat);
            ++st.standbys_ready;
            if (st.on_standby) {
              st.on_standby(st.standby_joined[i], st.standby_agents[i], st.standby_heartbeats[i]);
            }
            answer_engine(self);
            return;
          }
          return;
        }
        if (r.rank < 0 || r.rank >= st.expected) return;
        auto& slot = st.workers[static_cast<std::size_t>(r.rank)];
        if (!slot) ++st.ready;
        slot = std::move(r.worker);
        st.heartbeats[static_cast<std::size_t>(r.rank)] = std::move(r.heartbeat);
        st.agents[static_cast<std::size_t>(r.rank)] = std::move(r.agent);
        answer_engine(self);
      },
      [self](await_workers& w) -> caf::result<worker_set> {
        auto promise = self->make_response_promise<worker_set>();
        self->state.engine.push_back(promise);
        self->delayed_send(self, std::chrono::milliseconds(w.timeout_ms), join_timeout_atom::value);
        answer_engine(self);
        return promise;
      },
      [self](join_timeout_atom) {
        auto& st = self->state;
        if (st.answered) return;
        std::string missing;
        for (std::int32_t r = 0; r < st.expected; ++r) {
          if (st.workers[static_cast<std::size_t>(r)]) continue;
          const bool joined = r < static_cast<std::int32_t>(st.joined.size());
          missing += fmt::format("{}rank {} ({})", missing.empty() ? "" : ", ", r,
                                 joined ? fmt::format("{} pid {} joined but is not ready",
                                                      st.joined[static_cast<std::size_t>(r)].name,
                                                      st.joined[static_cast<std::size_t>(r)].pid)
                                        : std::string("never joined"));
        }
        for (std::int32_t i = st.standbys_ready; i < st.standbys_expected; ++i) {
          missing += fmt::format("{}a standby", missing.empty() ? "" : ", ");
        }
        const std::string why =
            fmt::format("{} of {} workers ready; missing: {}", st.ready, st.expected, missing);
        for (auto& p : st.engine) p.deliver(refuse(why));
        for (auto& p : st.address_waiters) p.deliver(refuse(why));
        st.engine.clear();
        st.address_waiters.clear();
        st.answered = true;
      },
  };
}

// The registrar of a running engine's late joins (listening workers started by hand): up to
// `room` standbys join, each handed to `on_standby` once ready; it ends with `engine`.
caf::behavior late_registrar(
    registrar_ptr self, std::int32_t room, proto_v1::ClusterConfig config, std::int32_t world,
    caf::actor engine,
    std::function<void(const worker_info&, caf::actor agent, caf::actor heartbeat)> on_standby) {
  self->monitor(engine);
  self->set_down_handler([self](caf::down_msg&) { self->quit(); });
  self->state.on_standby = std::move(on_standby);
  return registrar(self, 0, room, std::move(config), {}, world);
}

// Engine side: pings every worker's heartbeat actor each `period`; the first one that does not
// answer within `deadline` is reported to the engine (lost_atom, naming the worker actor).
caf::behavior heartbeat_monitor(caf::event_based_actor* self, caf::actor engine,
                                std::vector<caf::actor> workers, std::vector<caf::actor> beats,
                                std::chrono::milliseconds period,
                                std::chrono::milliseconds deadline) {
  // Ends with the engine; not linked to it, since a recovery stops it and starts another.
  self->monitor(engine);
  self->set_down_handler([self](caf::down_msg&) { self->quit(); });
  auto reported = std::make_shared<bool>(false);
  auto asked = std::make_shared<std::vector<bool>>(beats.size(), false);  // to leave (SIGTERM)
  self->send(self, tick_atom::value);
  return {
      [=](tick_atom) {
        for (std::size_t r = 0; r < beats.size(); ++r) {
          self->request(beats[r], deadline, ping_atom::value)
              .then(
                  [=](ping_atom, bool leaving) {
                    // A worker process told to terminate leaves gracefully: the engine moves
                    // its KV and duties to the others first (engine::drain_worker).
                    if (!leaving || (*asked)[r]) return;
                    (*asked)[r] = true;
                    logger()->info("worker {} asks to leave (SIGTERM)", r);
                    self->request(engine, caf::infinite, actors::shrink_atom::value, workers[r])
                        .then(
                            [r](actors::wire_status& w) {
                              const status st = actors::from_wire(w);
                              if (!st.ok()) logger()->error("leave of worker {}: {}", r, st);
                            },
                            [r](caf::error& e) {
                              logger()->error("leave of worker {}: {}", r, caf::to_string(e));
                            });
                  },
                  [=](caf::error& e) {
                    if (*reported) return;
                    *reported = true;
                    self->send(engine, actors::lost_atom::value, workers[r],
                               fmt::format("no heartbeat answer within {} ms ({})",
                                           deadline.count(), self->system().render(e)));
                  });
        }
        self->delayed_send(self, period, tick_atom::value);
      },
  };
}

}  // namespace

caf::actor spawn_registrar(caf::actor_system& sys, std::int32_t expected, std::int32_t standbys,
                           proto_v1::ClusterConfig config, std::vector<worker_info> members,
                           std::int32_t world) {
  return sys.spawn(registrar, expected, standbys, std::move(config), std::move(members), world);
}

caf::actor spawn_late_registrar(
    caf::actor_system& sys, std::int32_t room, proto_v1::ClusterConfig config, std::int32_t world,
    caf::actor engine,
    std::function<void(const worker_info&, caf::actor agent, caf::actor heartbeat)> on_standby) {
  return sys.spawn(late_registrar, room, std::move(config), world, std::move(engine),
                   std::move(on_standby));
}

caf::actor spawn_heartbeat_monitor(caf::actor_system& sys, caf::actor engine,
                                   std::vector<caf::actor> workers, std::vector<caf::actor> beats,
                                   std::chrono::milliseconds period,
                                   std::chrono::milliseconds deadline) {
  return sys.spawn(heartbeat_monitor, std::move(engine), std::move(workers), std::move(beats),
                   period, deadline);
}

}  // namespace helix::cluster::detail
