// Workers as processes, the engine side: the registrar, the heartbeat monitor and the worker
// sources (spawned and listening workers). The worker side, `helix worker`, is worker_process.cpp.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <caf/io/all.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <ostream>

#include "actors/config_file.hpp"
#include "actors/runtime.hpp"
#include "cluster/cluster.hpp"
#include "cluster/cluster_internal.hpp"
#include "cluster/front_door.hpp"
#include "cluster/handshake.hpp"
#include "cluster/messages.hpp"
#include "cluster/tls.hpp"
#include "core/log.hpp"
#include "proto/helix.pb.h"
#include "transport/fault/fault_fabric.hpp"
#include "transport/netns.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::cluster {
namespace {

using namespace detail;

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

// Worker side: answers pings at once (runs on CAF's scheduler, not the worker's thread).
// Answers the engine's pings at once, even while the worker computes, and records when the last
// one came (steady-clock nanoseconds), so the worker notices an engine that went silent.
class spawned_source final : public actors::worker_source {
 public:
  explicit spawned_source(spawned_workers_options opts) : opts_(std::move(opts)) {}
  // Listening: workers started by hand or by a scheduler join at host:port.
  explicit spawned_source(const listening_workers_options& l)
      : listening_(true), listen_port_(l.port), on_listening_(l.on_listening) {
    opts_.host = l.host;
    opts_.tls_dir = l.tls_dir;
    opts_.join_timeout = l.join_timeout;
    opts_.standbys = l.standbys;
  }

  ~spawned_source() override {
    // The engine's actor system is gone: workers lost their connection or were told to exit.
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (const pid_t pid : pids_) {
      int wstatus = 0;
      for (;;) {
        const pid_t w = ::waitpid(pid, &wstatus, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR)) break;
        if (std::chrono::steady_clock::now() >= until) {
          logger()->warn("worker pid {} did not exit within 5 s of the engine's end; killing it",
                         pid);
          ::kill(pid, SIGKILL);
          ::waitpid(pid, &wstatus, 0);
          break;
        }
        ::usleep(5000);
      }
    }
  }

  void configure(caf::actor_system_config& cfg) override {
    configure_system(cfg);
    // Fast failure detection on the control links (CAF's defaults are tens of seconds).
    cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(500)});
  }

  expected<std::vector<caf::actor>> start(caf::actor_system& sys,
                                          const actors::engine_config& config,
                                          const layout& grid) override {
    const bool spawn = !listening_;
    if (spawn && opts_.worker_binary.empty()) {
      return invalid_argument("spawned workers: no worker binary named");
    }
    if (spawn && ::access(opts_.worker_binary.c_str(), X_OK) != 0) {
      return invalid_argument("spawned workers: {} is not executable: {}", opts_.worker_binary,
                              std::strerror(errno));
    }
    const auto n = static_cast<std::int32_t>(grid.num_ranks);
    if (!opts_.tls_dir.empty() && !tls_) {
      HELIX_ASSIGN_OR_RETURN(tls_, tls_context::load(opts_.tls_dir, tls_context::role::server));
    }
    proto_v1::ClusterConfig cc = cluster_config(config, grid);
    if (!opts_.faults.faults.empty()) {
      HELIX_RETURN_IF_ERROR(transport::fault::validate(opts_.faults, n));
      if (!cc.mutable_fault_schedule()->ParseFromString(transport::fault::to_bytes(opts_.faults))) {
        return internal_error("spawned workers: the fault schedule does not serialize");
      }
    }
    caf::actor reg =
        sys.spawn(registrar, n, opts_.standbys, std::move(cc), std::vector<worker_info>{}, n);
    // The middleman listens on loopback only; workers reach it through the front door, which
    // checks the framing before CAF allocates anything (front_door.hpp).
    auto port = sys.middleman().publish(reg, 0, "127.0.0.1");
    if (!port) {
      caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
      return make_error(errc::unavailable, "workers: the middleman cannot listen: {}",
                        sys.render(port.error()));
    }
    auto door = front_door::open(opts_.host, listen_port_, *port, max_control_frame_bytes, tls_);
    if (!door) {
      caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
      return door.error();
    }
    door_ = std::move(*door);
    const std::string join = fmt::format("{}:{}", opts_.host, door_->port());
    if (listening_) {
      logger()->info("waiting up to {} ms for {} workers and {} standbys: helix worker --join {}",
                     opts_.join_timeout.count(), n, opts_.standbys, join);
      if (on_listening_) on_listening_(door_->port());
    }
    for (std::int32_t r = 0; spawn && r < n + opts_.standbys; ++r) {
      if (status st = spawn_worker(join, false); !st.ok()) {
        caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
        return st;
      }
    }
    logger()->info("started {} worker processes, joining at {}", n, join);
    expected<std::vector<caf::actor>> result = internal_error("spawned workers: no answer");
    {
      // Sent, not requested: the answer comes back as a plain message, and the loop also
      // notices a child that died before it was ready (at once, not at the join timeout).
      caf::scoped_actor self{sys};
      self->send(reg, await_workers{opts_.join_timeout.count()});
      const auto until =
          std::chrono::steady_clock::now() + opts_.join_timeout + std::chrono::seconds(5);
      bool answered = false;
      while (!answered) {
        self->receive(
            [&](worker_set& w) {
              answered = true;
              for (std::size_t r = 0; r < w.workers.size(); ++r) {
                info_.push_back({static_cast<std::int64_t>(r), w.pids[r], w.hosts[r], w.names[r]});
              }
              take_standbys(w);
              take(w);
              result = w.workers;
            },
            [&](caf::error& e) {
              answered = true;
              result =
                  make_error(errc::unavailable, "workers: {}{}", sys.render(e), exited_children());
            },
            caf::after(std::chrono::milliseconds(100)) >>
                [&] {
                  const std::string gone = exited_children();
                  if (!gone.empty()) {
                    answered = true;
                    result = make_error(errc::unavailable,
                                        "workers: a worker ended before the "
                                        "engine started{}",
                                        gone);
                  } else if (std::chrono::steady_clock::now() > until) {
                    answered = true;
                    result = make_error(errc::unavailable, "workers: the registrar never answered");
                  }
                });
      }
    }
    caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
    // Joined workers keep their relayed connections; listening, the door stays open for late
    // joins (watch() starts their registrar).
    if (!listening_) door_->stop_accepting();
    (void)sys.middleman().unpublish(reg, *port);
    if (result) late_world_ = n, late_config_ = cluster_config(config, grid);
    return result;
  }

  std::vector<worker_info> workers() const override { return info_; }

  void watch(caf::actor_system& sys, const caf::actor& engine) override {
    engine_ = engine;
    restart_monitor(sys);
    // Standbys learn the engine actor now, and end with it.
    for (const member& m : standbys_) {
      caf::anon_send(m.agent, relayout_msg{-1, 0, {}, nullptr, engine_});
    }
    if (listening_ && door_) open_late_joins(sys);
  }

  // Survivors (and standbys) become the new ranks: each is sent its rank through its agent, stops
  // its old worker, and joins a new data plane through a registrar of this epoch, which hands
  // back the new workers as at the start. Donors join it too, after the ranks, for the restore
  // only: their agents stand by again once the engine stopped their donor workers.
  expected<std::vector<caf::actor>> relayout(
      caf::actor_system& sys, const actors::engine_config& config, const layout& grid,
      const std::vector<std::int64_t>& survivors, const std::vector<std::int64_t>& standby,
      const std::vector<std::int64_t>& donors, const std::vector<std::int64_t>& leaving) override {
    absorb_late_joins();
    std::erase_if(standbys_, [&](const member& m) { return exited(m.info.pid); });
    // The old monitor's reports would name old workers: a new one starts with the new ranks.
    if (monitor_) caf::anon_send_exit(monitor_, caf::exit_reason::user_shutdown);
    monitor_ = nullptr;
    const auto n = static_cast<std::int32_t>(grid.num_ranks);
    const auto known = [&](std::int64_t r) {
      return r >= 0 && r < static_cast<std::int64_t>(agents_.size()) &&
             agents_[static_cast<std::size_t>(r)];
    };
    // Standbys fill the ranks the survivors leave (-1 or past the survivors); the source's
    // lists change only on success.
    std::vector<member> idle(standbys_.begin(), standbys_.end());
    std::vector<member> ranks;
    for (std::int32_t i = 0; i < n; ++i) {
      const std::int64_t r = static_cast<std::size_t>(i) < survivors.size()
                                 ? survivors[static_cast<std::size_t>(i)]
                                 : -1;
      if (r >= 0) {
        if (!known(r)) return internal_error("relayout: no worker process at rank {}", r);
        ranks.push_back(member_at(r));
      } else if (!idle.empty()) {
        ranks.push_back(std::move(idle.front()));
        idle.erase(idle.begin());
      } else {
        break;
      }
    }
    if (static_cast<std::int32_t>(ranks.size()) != n) {
      return failed_precondition("relayout: {} ranks for layout {}, only {} workers remain", n,
                                 grid.to_string(), ranks.size());
    }
    const std::size_t old_idle = idle.size();
    std::vector<member> gone;  // leaving: they exit (after donating) instead of standing by
    for (const std::int64_t r : standby) {
      if (!known(r)) continue;
      const bool leaves = std::find(leaving.begin(), leaving.end(), r) != leaving.end();
      (leaves ? gone : idle).push_back(member_at(r));
    }
    // Donors in the engine's order (donor j is rank n + j of the new data plane).
    std::vector<member> giving;
    for (const std::int64_t r : donors) {
      if (known(r) && std::find(standby.begin(), standby.end(), r) != standby.end()) {
        giving.push_back(member_at(r));
      }
    }
    const auto is_gone = [&](const member& m) {
      return std::any_of(gone.begin(), gone.end(),
                         [&](const member& g) { return g.agent == m.agent; });
    };
    if (giving.size() != donors.size()) {
      return internal_error("relayout: {} donors named, {} known", donors.size(), giving.size());
    }
    const auto world = static_cast<std::int32_t>(n + static_cast<std::int32_t>(giving.size()));
    const proto_v1::ClusterConfig cc = cluster_config(config, grid);
    std::vector<worker_info> infos;
    for (std::int32_t r = 0; r < world; ++r) {
      infos.push_back(r < n ? ranks[static_cast<std::size_t>(r)].info
                            : giving[static_cast<std::size_t>(r - n)].info);
      infos.back().rank = r;
    }
    caf::actor reg = sys.spawn(registrar, world, 0, cc, infos, world);
    const std::string bytes = to_bytes(cc);
    for (std::int32_t r = 0; r < world; ++r) {
      const member& m =
          r < n ? ranks[static_cast<std::size_t>(r)] : giving[static_cast<std::size_t>(r - n)];
      caf::anon_send(m.agent, relayout_msg{r, world, bytes, reg, engine_, is_gone(m)});
    }
    for (const member& m : gone) {
      const bool donor = std::any_of(giving.begin(), giving.end(),
                                     [&](const member& g) { return g.agent == m.agent; });
      logger()->info("{} (pid {}) leaves{}", m.info.name, m.info.pid,
                     donor ? " once it handed its KV over" : "");
      if (!donor) caf::anon_send(m.agent, relayout_msg{-1, 0, {}, nullptr, engine_, true});
    }
    for (std::size_t i = old_idle; i < idle.size(); ++i) {
      const bool donor = std::any_of(giving.begin(), giving.end(),
                                     [&](const member& g) { return g.agent == idle[i].agent; });
      if (donor) {
        logger()->info("{} (pid {}) hands its KV over, then stands by", idle[i].info.name,
                       idle[i].info.pid);
        continue;
      }
      caf::anon_send(idle[i].agent, relayout_msg{-1, 0, {}, nullptr, engine_});
      logger()->info("{} (pid {}) stands by", idle[i].info.name, idle[i].info.pid);
    }
    expected<std::vector<caf::actor>> result = internal_error("relayout: no answer");
    {
      // A member that dies meanwhile fails the relayout at once (its agent ends), not at the
      // join timeout.
      caf::scoped_actor self{sys};
      for (const member& m : ranks) self->monitor(m.agent);
      for (const member& m : giving) self->monitor(m.agent);
      // Sent, not requested: the registrar's answer (or error) comes back as a plain message,
      // which the loop below takes beside the members' down messages.
      self->send(reg, await_workers{opts_.join_timeout.count()});
      bool answered = false;
      while (!answered) {
        self->receive(
            [&](worker_set& w) {
              answered = true;
              info_.assign(infos.begin(), infos.begin() + n);
              standbys_ = idle;
              result = w.workers;  // the ranks', then the donors'
              w.workers.resize(static_cast<std::size_t>(n));
              w.heartbeats.resize(static_cast<std::size_t>(n));
              w.agents.resize(static_cast<std::size_t>(n));
              take(w);
            },
            [&](caf::error& e) {
              answered = true;
              result = make_error(errc::unavailable, "relayout to {}: {}{}", grid.to_string(),
                                  sys.render(e), exited_children());
            },
            [&](caf::down_msg& dm) {
              std::vector<member> watched = ranks;
              watched.insert(watched.end(), giving.begin(), giving.end());
              for (const member& m : watched) {
                if (m.agent.address() != dm.source) continue;
                answered = true;
                result =
                    make_error(errc::unavailable, "relayout to {}: {} (pid {}) died meanwhile{}",
                               grid.to_string(), m.info.name, m.info.pid, exited_children());
              }
            },
            caf::after(opts_.join_timeout + std::chrono::seconds(5)) >>
                [&] {
                  answered = true;
                  result =
                      make_error(errc::unavailable, "relayout to {}: the registrar never answered",
                                 grid.to_string());
                });
      }
    }
    caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
    if (result) restart_monitor(sys);
    return result;
  }

  // A standby child that exited (SIGTERM while standing by, a crash) no longer counts.
  std::int64_t standbys() const override {
    std::lock_guard lk(late_->mu);
    const auto alive = std::count_if(standbys_.begin(), standbys_.end(),
                                     [&](const member& m) { return !exited(m.info.pid); });
    return static_cast<std::int64_t>(alive) + static_cast<std::int64_t>(late_->ready.size());
  }

  // Scale out: `count` new worker processes join as standbys through a registrar of their own,
  // behind a front door of its own (the first one stopped accepting once the engine started);
  // the relayout that follows gives them ranks.
  status add_members(caf::actor_system& sys, const actors::engine_config& config,
                     const layout& grid, std::int64_t count) override {
    if (listening_) {
      return failed_precondition(
          "listening workers: start more with helix worker --join {}:{} (the engine takes them "
          "in as they join)",
          opts_.host, door_ ? door_->port() : listen_port_);
    }
    if (count < 1 || count > 1024) {
      return invalid_argument("add_workers: count = {} must be in [1, 1024]", count);
    }
    const auto n = static_cast<std::int32_t>(count);
    caf::actor reg =
        sys.spawn(registrar, 0, n, cluster_config(config, grid), std::vector<worker_info>{},
                  static_cast<std::int32_t>(grid.num_ranks));
    const auto stop_reg = [&] { caf::anon_send_exit(reg, caf::exit_reason::user_shutdown); };
    auto port = sys.middleman().publish(reg, 0, "127.0.0.1");
    if (!port) {
      stop_reg();
      return make_error(errc::unavailable, "add_workers: the middleman cannot listen: {}",
                        sys.render(port.error()));
    }
    auto door = front_door::open(opts_.host, 0, *port, max_control_frame_bytes, tls_);
    if (!door) {
      stop_reg();
      return door.error();
    }
    const std::string join = fmt::format("{}:{}", opts_.host, (*door)->port());
    status st;
    for (std::int32_t i = 0; i < n && st.ok(); ++i) st = spawn_worker(join, true);
    if (st.ok()) {
      logger()->info("started {} worker processes to join, at {}", n, join);
      caf::scoped_actor self{sys};
      self->send(reg, await_workers{opts_.join_timeout.count()});
      const auto until =
          std::chrono::steady_clock::now() + opts_.join_timeout + std::chrono::seconds(5);
      bool answered = false;
      while (!answered) {
        self->receive(
            [&](worker_set& w) {
              answered = true;
              take_standbys(w);
              // They learn the engine now, and end with it.
              for (const caf::actor& agent : w.standby_agents) {
                caf::anon_send(agent, relayout_msg{-1, 0, {}, nullptr, engine_});
              }
            },
            [&](caf::error& e) {
              answered = true;
              st = make_error(errc::unavailable, "add_workers: {}{}", sys.render(e),
                              exited_children());
            },
            caf::after(std::chrono::milliseconds(100)) >>
                [&] {
                  if (std::chrono::steady_clock::now() > until) {
                    answered = true;
                    st =
                        make_error(errc::unavailable, "add_workers: the registrar never answered{}",
                                   exited_children());
                  }
                });
      }
    }
    stop_reg();
    (*door)->stop_accepting();  // joined workers keep their relayed connections
    doors_.push_back(std::move(*door));
    (void)sys.middleman().unpublish(reg, *port);
    return st;
  }

  // Ranks whose process ended: spawned children are reaped here (waitpid), so a dead one is known
  // as soon as the kernel says so.
  std::vector<std::int64_t> dead() override {
    std::vector<std::int64_t> out;
    for (const worker_info& w : info_) {
      if (std::find(pids_.begin(), pids_.end(), static_cast<pid_t>(w.pid)) == pids_.end()) continue;
      if (reaped_.count(static_cast<pid_t>(w.pid)) == 0) {
        int wstatus = 0;
        if (::waitpid(static_cast<pid_t>(w.pid), &wstatus, WNOHANG) != w.pid) continue;
        reaped_[static_cast<pid_t>(w.pid)] = wstatus;
      }
      out.push_back(w.rank);
    }
    return out;
  }

 private:
  // Starts one `helix worker` process joining at `join` (host:port), named worker-K in start
  // order; `standby`: it asks to stand by.
  status spawn_worker(const std::string& join, bool standby) {
    const std::int32_t r = spawned_++;
    std::vector<std::string> args = {"helix", "worker", "--join",
                                     join,    "--name", fmt::format("worker-{}", r)};
    if (standby) args.push_back("--standby");
    if (!opts_.tls_dir.empty()) {
      args.push_back("--tls-dir");
      args.push_back(opts_.tls_dir);
    }
    if (opts_.threads > 0) {
      args.push_back("--threads");
      args.push_back(std::to_string(opts_.threads));
    }
    for (const auto& [flag, value] :
         {std::pair<const char*, std::string>{
              "--netns", opts_.netns.empty()
                             ? std::string()
                             : opts_.netns[static_cast<std::size_t>(r) % opts_.netns.size()]},
          {"--transports", opts_.transports},
          {"--net-devices", opts_.net_devices}}) {
      if (value.empty()) continue;
      args.push_back(flag);
      args.push_back(value);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) return resource_exhausted("spawned workers: fork: {}", std::strerror(errno));
    if (pid == 0) {  // only async-signal-safe calls until exec
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::execv(opts_.worker_binary.c_str(), argv.data());
      ::_exit(127);
    }
    pids_.push_back(pid);
    return ok_status();
  }

  // Listening: workers started by hand join the running engine as standbys through a registrar
  // of late joins behind the same door; each ready one learns the engine actor and wakes it
  // (actors::member_atom), whose policy may then give it a rank.
  void open_late_joins(caf::actor_system& sys) {
    auto late = late_;
    caf::actor engine = engine_;
    caf::actor reg = sys.spawn(
        late_registrar, max_late_joins, late_config_, late_world_, engine,
        [late, engine](const worker_info& info, caf::actor agent, caf::actor heartbeat) {
          logger()->info("worker {} (pid {} on {}) joined the running engine as a standby",
                         info.name, info.pid, info.host);
          caf::anon_send(agent, relayout_msg{-1, 0, {}, nullptr, engine});
          {
            std::lock_guard lk(late->mu);
            late->ready.push_back({info, std::move(agent), std::move(heartbeat)});
          }
          caf::anon_send(engine, actors::member_atom::value);
        });
    auto port = sys.middleman().publish(reg, 0, "127.0.0.1");
    if (!port) {
      logger()->warn("late joins: the middleman cannot listen: {}", sys.render(port.error()));
      caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
      door_->stop_accepting();
      return;
    }
    door_->set_inner_port(*port);
  }

  // Whether `pid`, a child of this source, has ended (reaped here, so known from then on). A
  // worker started elsewhere is never known to have ended.
  bool exited(std::int64_t pid) const {
    const auto p = static_cast<pid_t>(pid);
    if (std::find(pids_.begin(), pids_.end(), p) == pids_.end()) return false;
    if (reaped_.count(p) != 0) return true;
    int wstatus = 0;
    if (::waitpid(p, &wstatus, WNOHANG) != p) return false;
    reaped_[p] = wstatus;
    return true;
  }

  // Late joins that became ready are standbys like the others (on the engine's thread).
  void absorb_late_joins() {
    std::lock_guard lk(late_->mu);
    for (member& m : late_->ready) standbys_.push_back(std::move(m));
    late_->ready.clear();
  }

  // A worker process as the engine knows it.
  struct member {
    worker_info info;
    caf::actor agent;
    caf::actor heartbeat;
  };

  member member_at(std::int64_t rank) const {
    const auto r = static_cast<std::size_t>(rank);
    return {info_[r], agents_[r], heartbeats_[r]};
  }

  void take_standbys(const worker_set& w) {
    for (std::size_t i = 0; i < w.standby_agents.size(); ++i) {
      standbys_.push_back({{-1, w.standby_pids[i], w.standby_hosts[i], w.standby_names[i]},
                           w.standby_agents[i],
                           w.standby_heartbeats[i]});
    }
  }

  void take(const worker_set& w) {
    workers_ = w.workers;
    heartbeats_ = w.heartbeats;
    agents_ = w.agents;
  }

  void restart_monitor(caf::actor_system& sys) {
    if (heartbeats_.empty() || !engine_) return;
    monitor_ = sys.spawn(heartbeat_monitor, engine_, workers_, heartbeats_, heartbeat_period,
                         heartbeat_deadline);
  }

  static proto_v1::ClusterConfig cluster_config(const actors::engine_config& config,
                                                const layout& grid) {
    proto_v1::ClusterConfig cc;
    *cc.mutable_engine() = actors::to_proto(config);
    cc.set_layout(grid.to_string());
    cc.set_heartbeat_interval_ms(heartbeat_period.count());
    cc.set_heartbeat_deadline_ms(heartbeat_deadline.count());
    cc.set_kv_capacity_tokens_per_worker(config.kv_capacity_tokens_per_worker);
    return cc;
  }

  // Children that already ended, for error messages.
  std::string exited_children() {
    std::string out;
    for (const pid_t pid : pids_) {
      int wstatus = 0;
      if (const auto it = reaped_.find(pid); it != reaped_.end()) {
        wstatus = it->second;
      } else if (::waitpid(pid, &wstatus, WNOHANG) == pid) {
        reaped_[pid] = wstatus;
      } else {
        continue;
      }
      out += fmt::format("; worker pid {} {}", pid,
                         WIFEXITED(wstatus)
                             ? fmt::format("exited with code {}", WEXITSTATUS(wstatus))
                             : fmt::format("was killed by signal {}", WTERMSIG(wstatus)));
    }
    return out;
  }

  spawned_workers_options opts_;
  bool listening_ = false;
  std::uint16_t listen_port_ = 0;
  std::function<void(std::uint16_t)> on_listening_;
  std::vector<pid_t> pids_;
  std::int32_t spawned_ = 0;             // worker processes started, for their names
  mutable std::map<pid_t, int> reaped_;  // children already waited for, with their wait status
  std::vector<worker_info> info_;        // by rank
  std::vector<caf::actor> workers_;      // by rank
  std::vector<caf::actor> heartbeats_;   // by rank
  std::vector<caf::actor> agents_;       // by rank
  std::vector<member> standbys_;         // alive, without a rank
  // Late joins ready since the last relayout: filled by their registrar's thread.
  struct late_joins {
    std::mutex mu;
    std::vector<member> ready;
  };
  static constexpr std::int32_t max_late_joins = 64;
  std::shared_ptr<late_joins> late_ = std::make_shared<late_joins>();
  std::int32_t late_world_ = 0;
  proto_v1::ClusterConfig late_config_;
  caf::actor engine_;
  caf::actor monitor_;
  std::shared_ptr<const tls_context> tls_;          // opts_.tls_dir's, loaded at start
  std::unique_ptr<front_door> door_;                // relays the workers' control connections
  std::vector<std::unique_ptr<front_door>> doors_;  // those of workers added later
};

}  // namespace

std::unique_ptr<actors::worker_source> spawned_workers(const spawned_workers_options& opts) {
  return std::make_unique<spawned_source>(opts);
}

std::unique_ptr<actors::worker_source> listening_workers(const listening_workers_options& opts) {
  return std::make_unique<spawned_source>(opts);
}

}  // namespace helix::cluster
