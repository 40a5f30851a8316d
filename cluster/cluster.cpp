// Workers as processes, the engine side: the worker sources (spawned and listening workers). The
// registrar and the heartbeat monitor are registrar.cpp; the worker side, `helix worker`, is
// worker_process.cpp.
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
#include "cluster/registrar.hpp"
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

// The worker source of worker processes: spawned children of this process, or workers started
// elsewhere that join at a listening port.
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
        spawn_registrar(sys, n, opts_.standbys, std::move(cc), std::vector<worker_info>{}, n);
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
    if (auto w = await_registrar(sys, reg, "workers", 0)) {
      for (std::size_t r = 0; r < w->workers.size(); ++r) {
        info_.push_back({static_cast<std::int64_t>(r), w->pids[r], w->hosts[r], w->names[r]});
      }
      take_standbys(*w);
      take(*w);
      result = w->workers;
    } else {
      result = w.error();
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
    drop_silent_standbys(sys);
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
    caf::actor reg = spawn_registrar(sys, world, 0, cc, infos, world);
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
    // Ranks the engine lost (neither kept nor standing by): should one still be alive behind a
    // partition, this reaches it when the link returns, and it knows it was fenced.
    for (std::size_t r = 0; r < agents_.size(); ++r) {
      const auto kept = [&](const std::vector<std::int64_t>& v) {
        return std::find(v.begin(), v.end(), static_cast<std::int64_t>(r)) != v.end();
      };
      if (!agents_[r] || kept(survivors) || kept(standby)) continue;
      caf::anon_send(agents_[r], relayout_msg{-1, 0, {}, nullptr, engine_, false, true});
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
        spawn_registrar(sys, 0, n, cluster_config(config, grid), std::vector<worker_info>{},
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
    const std::size_t first_child = pids_.size();
    for (std::int32_t i = 0; i < n && st.ok(); ++i) st = spawn_worker(join, true);
    if (st.ok()) {
      logger()->info("started {} worker processes to join, at {}", n, join);
      if (auto w = await_registrar(sys, reg, "add_workers", first_child)) {
        take_standbys(*w);
        // They learn the engine now, and end with it.
        for (const caf::actor& agent : w->standby_agents) {
          caf::anon_send(agent, relayout_msg{-1, 0, {}, nullptr, engine_});
        }
      } else {
        st = w.error();
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
    caf::actor reg = spawn_late_registrar(
        sys, max_late_joins, late_config_, late_world_, engine,
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

  // Asks `reg` for its worker set and waits for it (or its error) up to the join timeout; a
  // child started for it (the `first_child`-th on) that ended meanwhile fails it at once rather
  // than at the timeout. Sent, not requested: the answer comes back as a plain message beside
  // the polling. `what` prefixes the errors.
  expected<worker_set> await_registrar(caf::actor_system& sys, const caf::actor& reg,
                                       const char* what, std::size_t first_child) {
    caf::scoped_actor self{sys};
    self->send(reg, await_workers{opts_.join_timeout.count()});
    const auto until =
        std::chrono::steady_clock::now() + opts_.join_timeout + std::chrono::seconds(5);
    expected<worker_set> out = internal_error("{}: no answer", what);
    for (bool answered = false; !answered;) {
      self->receive(
          [&](worker_set& w) {
            answered = true;
            out = std::move(w);
          },
          [&](caf::error& e) {
            answered = true;
            out = make_error(errc::unavailable, "{}: {}{}", what, sys.render(e),
                             exited_children(first_child));
          },
          caf::after(std::chrono::milliseconds(100)) >>
              [&] {
                const std::string gone = exited_children(first_child);
                if (!gone.empty()) {
                  answered = true;
                  out = make_error(errc::unavailable, "{}: a worker ended before it was ready{}",
                                   what, gone);
                } else if (std::chrono::steady_clock::now() > until) {
                  answered = true;
                  out = make_error(errc::unavailable, "{}: the registrar never answered", what);
                }
              });
    }
    return out;
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

  // Standbys started elsewhere (listening) that ended, a crash or SIGTERM while standing by, are
  // not children here: ask every standby's heartbeat at once and drop those that do not answer
  // within standby_answer_limit, so that a relayout gives their ranks to live ones.
  void prune_standbys(caf::actor_system& sys) override {
    absorb_late_joins();
    std::erase_if(standbys_, [&](const member& m) { return exited(m.info.pid); });
    drop_silent_standbys(sys);
  }

  void drop_silent_standbys(caf::actor_system& sys) {
    std::vector<std::uint8_t> answered(standbys_.size(), 0);
    std::size_t waiting = 0;
    caf::scoped_actor self{sys};
    for (std::size_t i = 0; i < standbys_.size(); ++i) {
      if (!standbys_[i].heartbeat) {
        answered[i] = 1;
        continue;
      }
      self->send(standbys_[i].heartbeat, ping_atom::value);
      ++waiting;
    }
    const auto until = std::chrono::steady_clock::now() + standby_answer_limit;
    while (waiting > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          until - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      bool timed_out = false;
      self->receive(
          [&](ping_atom, bool) {
            const caf::actor from = caf::actor_cast<caf::actor>(self->current_sender());
            for (std::size_t i = 0; i < standbys_.size(); ++i) {
              if (answered[i] == 0 && standbys_[i].heartbeat == from) {
                answered[i] = 1;
                --waiting;
              }
            }
          },
          caf::after(left) >> [&] { timed_out = true; });
      if (timed_out) break;
    }
    std::vector<member> alive;
    for (std::size_t i = 0; i < standbys_.size(); ++i) {
      if (answered[i] != 0) {
        alive.push_back(std::move(standbys_[i]));
        continue;
      }
      logger()->warn("standby {} (pid {} on {}) did not answer within {} ms; dropped",
                     standbys_[i].info.name, standbys_[i].info.pid, standbys_[i].info.host,
                     standby_answer_limit.count());
    }
    standbys_ = std::move(alive);
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
    monitor_ = spawn_heartbeat_monitor(sys, engine_, workers_, heartbeats_, heartbeat_period,
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

  // Children that already ended (from the `from`-th started on), for error messages.
  std::string exited_children(std::size_t from = 0) {
    std::string out;
    for (std::size_t i = from; i < pids_.size(); ++i) {
      const pid_t pid = pids_[i];
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
