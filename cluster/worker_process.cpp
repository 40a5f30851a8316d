// `helix worker`: a worker process. It joins an engine (CAF io middleman), builds the rank it is
// given (its UCX fabric, its shards, the worker actor), serves until the engine stops it, and
// after a failure elsewhere takes the rank a relayout_msg gives it, hands its KV over as a donor,
// or stands by. The engine side of cluster/ is cluster.cpp.
#include <linux/close_range.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <atomic>
#include <caf/io/all.hpp>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <ostream>
#include <thread>
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

struct worker_args {
  std::string host;
  std::uint16_t port = 0;
  std::string name;
  int threads = 0;
  std::chrono::milliseconds timeout{60000};
  std::string ucx_tls;      // the UCX transports this process's UCX is limited to, for the join
  std::string netns;        // entered before anything else
  std::string transports;   // ucx_fabric_options::transports
  std::string net_devices;  // ucx_fabric_options::net_devices
  bool standby = false;     // join as a standby
  std::string tls_dir;      // mutual TLS credentials (tls.hpp); empty: none
  bool rejoin = false;      // after losing the engine, join again as a new worker
  std::vector<std::string> args;  // as given (after "worker"), for a rejoin
};

constexpr const char* worker_usage =
    "usage: helix worker --join HOST:PORT [--threads N] [--name NAME] [--timeout-ms MS]\n"
    "                    [--netns NAME] [--transports TLS] [--net-devices DEVS] [--standby]\n"
    "                    [--tls-dir DIR] [--rejoin]\n"
    "  Runs one worker of an engine: joins it at HOST:PORT, receives its rank, layout and\n"
    "  model, and serves until the engine stops it (or goes away: then it exits 1).\n"
    "  --netns enters a network namespace first (root); --transports and --net-devices limit\n"
    "  the UCX data plane (UCX_TLS and UCX_NET_DEVICES syntax). --standby joins without a\n"
    "  rank (the engine must expect standbys: helix run --standby K) and takes a dead worker's\n"
    "  rank at a recovery. --tls-dir DIR (ca.pem, cert.pem, key.pem: helix cluster certs)\n"
    "  authenticates both ends with mutual TLS; an engine with --tls-dir admits only workers\n"
    "  whose certificate its CA signed. SIGTERM leaves gracefully: the engine moves this\n"
    "  worker's KV to the others first. --rejoin: a worker that lost its engine (a network\n"
    "  partition: the engine recovered without it and fenced it) drops everything it held and\n"
    "  joins again as a new standby, trying every second for --timeout-ms.\n";

expected<worker_args> parse_worker_args(const std::vector<std::string>& args) {
  worker_args w;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--standby") {
      w.standby = true;
      continue;
    }
    if (a == "--rejoin") {
      w.rejoin = true;
      continue;
    }
    if (i + 1 >= args.size()) return invalid_argument("flag {} needs a value", a);
    const std::string& v = args[++i];
    if (a == "--join") {
      const auto colon = v.rfind(':');
      if (colon == std::string::npos || colon == 0) {
        return invalid_argument("--join takes HOST:PORT, got '{}'", v);
      }
      w.host = v.substr(0, colon);
      char* end = nullptr;
      const long port = std::strtol(v.c_str() + colon + 1, &end, 10);
      if (*end != '\0' || port < 1 || port > 65535) {
        return invalid_argument("--join: bad port in '{}'", v);
      }
      w.port = static_cast<std::uint16_t>(port);
    } else if (a == "--name") {
      w.name = v;
    } else if (a == "--netns") {
      w.netns = v;
    } else if (a == "--transports") {
      w.transports = v;
    } else if (a == "--net-devices") {
      w.net_devices = v;
    } else if (a == "--tls-dir") {
      w.tls_dir = v;
    } else if (a == "--threads") {
      char* end = nullptr;
      const long t = std::strtol(v.c_str(), &end, 10);
      if (*end != '\0' || t < 1 || t > 256) return invalid_argument("--threads takes 1 to 256");
      w.threads = static_cast<int>(t);
    } else if (a == "--timeout-ms") {
      char* end = nullptr;
      const long t = std::strtol(v.c_str(), &end, 10);
      if (*end != '\0' || t < 1) return invalid_argument("--timeout-ms takes a positive count");
      w.timeout = std::chrono::milliseconds(t);
    } else {
      return invalid_argument("unknown flag {}", a);
    }
  }
  if (w.host.empty()) return invalid_argument("--join HOST:PORT is required");
  if (w.name.empty()) w.name = fmt::format("worker-pid{}", ::getpid());
  w.args = args;
  return w;
}

// One rank of a worker process: makes its UCX fabric (kept in `fabrics`, which outlive every
// worker that used one), exchanges addresses through `reg`, builds the rank's compute and starts
// its worker actor, monitored by `self`, and tells `reg` it is ready.
expected<caf::actor> build_rank(caf::scoped_actor& self, caf::actor_system& sys,
                                const worker_args& w, const caf::actor& reg, std::int32_t rank,
                                std::int32_t world, const proto_v1::ClusterConfig& cc,
                                const caf::actor& beat,
                                std::vector<std::unique_ptr<transport::fabric>>& fabrics,
                                std::shared_ptr<actors::worker_compute>& compute_out,
                                std::unique_ptr<model::carried_kv> carried) {
  HELIX_ASSIGN_OR_RETURN(actors::engine_config config, actors::from_proto(cc.engine()));
  if (!config.log_level.empty()) HELIX_RETURN_IF_ERROR(set_log_level(config.log_level));
  config.layout = cc.layout();
  config.kv_capacity_tokens_per_worker = cc.kv_capacity_tokens_per_worker();
  if (w.threads > 0) config.threads_per_worker = w.threads;
  HELIX_ASSIGN_OR_RETURN(const layout grid, layout::parse(config.layout));
  // Ranks past the layout's are donors of a recovery (actors::donor_compute).
  if (grid.num_ranks > world || rank < 0 || rank >= world) {
    return invalid_argument("join: rank {} of layout {} ({} ranks) in a world of {}", rank,
                            grid.to_string(), grid.num_ranks, world);
  }
  transport::ucx_fabric_options fo;
  fo.world_size = world;
  fo.rank = rank;
  fo.transports = w.transports;
  fo.net_devices = w.net_devices;
  fo.default_timeout = std::chrono::milliseconds(config.peer_timeout_ms);
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<transport::ucx_fabric> fabric,
                         transport::make_ucx_fabric(fo));
  const auto addr = fabric->address();
  status st;
  std::string membership_bytes;
  self->request(
          reg, w.timeout,
          address_msg{rank, std::string(reinterpret_cast<const char*>(addr.data()), addr.size())})
      .receive(
          [&](membership_msg& m) { membership_bytes = std::move(m.membership); },
          [&](caf::error& e) { st = unavailable("address exchange failed: {}", sys.render(e)); });
  HELIX_RETURN_IF_ERROR(st);
  HELIX_ASSIGN_OR_RETURN(const proto_v1::Membership members,
                         read_membership(membership_bytes, world));
  std::vector<std::vector<std::byte>> addresses;
  for (const proto_v1::Member& m : members.members()) {
    const auto* b = reinterpret_cast<const std::byte*>(m.ucx_address().data());
    addresses.emplace_back(b, b + m.ucx_address().size());
    logger()->debug("{}: rank {} is {} (pid {} on {})", w.name, m.rank(), m.name(), m.pid(),
                    m.host());
  }
  HELIX_RETURN_IF_ERROR(fabric->connect(addresses));
  if (cc.has_fault_schedule()) {
    HELIX_ASSIGN_OR_RETURN(
        auto schedule, transport::fault::parse_schedule(cc.fault_schedule().SerializeAsString()));
    HELIX_ASSIGN_OR_RETURN(auto faulty,
                           transport::fault::make_fault_fabric(std::move(fabric), schedule));
    fabrics.push_back(std::move(faulty));
  } else {
    fabrics.push_back(std::move(fabric));
  }
  HELIX_ASSIGN_OR_RETURN(
      auto compute,
      actors::make_rank_compute(config, grid, rank, *fabrics.back(), std::move(carried)));
  compute_out = compute;
  caf::actor worker = sys.spawn<caf::detached>(
      actors::worker_actor, std::move(compute),
      actors::suspects_fn([f = fabrics.back().get()] { return f->suspects(); }));
  self->monitor(worker);
  self->send(reg, ready_msg{rank, worker, beat, caf::actor_cast<caf::actor>(self),
                            static_cast<std::int64_t>(::getpid())});
  logger()->info("{}: rank {} of {} ({}) ready", w.name, rank, world, grid.to_string());
  return worker;
}

// Stops `worker` (monitored by self) and waits up to `limit` for its end; whether it ended.
bool stop_worker(caf::scoped_actor& self, const caf::actor& worker,
                 std::chrono::milliseconds limit) {
  self->send_exit(worker, caf::exit_reason::user_shutdown);
  const auto until = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        until - std::chrono::steady_clock::now());
    if (left.count() <= 0) return false;
    bool ended = false;
    bool timed_out = false;
    self->receive([&](caf::down_msg& dm) { ended = dm.source == worker.address(); },
                  caf::after(left) >> [&] { timed_out = true; });
    if (ended) return true;
    if (timed_out) return false;
  }
}

// SIGTERM: leave gracefully. A serving worker asks the engine (through its heartbeat answers)
// to move its KV and duties to the others, then exits once the engine let it go; a standby exits
// at once. A second SIGTERM terminates as usual.
std::atomic<bool> terminate_requested{false};
std::atomic<bool> serving{false};  // before, while joining, SIGTERM terminates at once

void on_sigterm(int) {
  std::signal(SIGTERM, SIG_DFL);
  if (!serving.load()) {
    std::raise(SIGTERM);
    return;
  }
  terminate_requested.store(true);
}

// Once serving ended, the process has `shutdown_limit` to take its actor system down; past it,
// it ends with `code` anyway. CAF's actor_system destructor waits for every detached actor to be
// destroyed, and after an engine that went away (seen in the partition test under load, about 1 run
// in 10) some reference to the ended worker actor is never released: the destructor then waits
// forever and the process never exits. A worker process owns nothing that outlives it (its KV
// and shards are memory, UCX's shared memory goes with the process), so ending it is safe.
constexpr std::chrono::seconds shutdown_limit{20};

// A rejoin (--rejoin): this process becomes a new worker. Nothing it held is kept: it executes
// itself again (same pid, a fresh image) as a standby with the same arguments. Every descriptor
// past stderr closes on exec, the connection to the engine included, so the engine sees the old
// node go. Returns only when exec failed.
status rejoin_as_new_worker(const worker_args& w) {
  char exe[4096];
  const ssize_t n = ::readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0) return unavailable("rejoin: /proc/self/exe: {}", std::strerror(errno));
  exe[n] = '\0';
  const auto level = spdlog::level::to_string_view(logger()->level());
  std::vector<std::string> args = {exe, "--log-level", std::string(level.data(), level.size()),
                                   "worker"};
  args.insert(args.end(), w.args.begin(), w.args.end());
  if (!w.standby) args.emplace_back("--standby");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  logger()->info("{}: fenced by its engine; joining {}:{} again as a new worker", w.name, w.host,
                 w.port);
  logger()->flush();
  ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
  ::execv(exe, argv.data());
  return unavailable("rejoin: exec {}: {}", exe, std::strerror(errno));
}

void bound_shutdown(const std::string& name, int code) {
  std::thread([name, code] {
    std::this_thread::sleep_for(shutdown_limit);
    logger()->warn("{}: the actor system did not shut down within {} s; exiting", name,
                   shutdown_limit.count());
    logger()->flush();
    std::_Exit(code);
  }).detach();
}

// Declared right after the actor system: whichever way serve() returns, its destructor (which
// runs before the actor system's) starts the bound.
struct shutdown_bound {
  const std::string& name;
  const int& code;
  const bool& armed;  // once joined: before, no worker actor can hold the system up
  ~shutdown_bound() {
    if (armed) bound_shutdown(name, code);
  }
};

// Joins, builds the rank, and serves: until the engine stops the worker actor, or, after a
// failure elsewhere, takes the rank a relayout_msg gives it (or stands by). `joined`: whether
// the engine admitted it (a --rejoin worker retries the join while not).
status serve(const worker_args& w, bool& joined) {
  joined = false;
  // Declared before the actor system: the workers' communicators belong to them, and the TLS
  // tunnel carries the middleman's connection to the engine.
  std::vector<std::unique_ptr<transport::fabric>> fabrics;
  std::unique_ptr<tls_tunnel> tunnel;
  if (!w.tls_dir.empty()) {
    HELIX_ASSIGN_OR_RETURN(auto ctx, tls_context::load(w.tls_dir, tls_context::role::client));
    HELIX_ASSIGN_OR_RETURN(tunnel, tls_tunnel::open(w.host, w.port, *ctx, w.timeout));
  }
  caf::actor_system_config cfg;
  cfg.add_message_types<caf::id_block::helix_actors>();
  configure_system(cfg);
  cfg.set("scheduler.max-threads", 2);
  cfg.set("scheduler.policy", caf::atom("sharing"));  // as the engine's (actors/engine.cpp)
  cfg.set("logger.verbosity", caf::atom("quiet"));
  cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds(500)});
  caf::actor_system sys{cfg};
  int exit_code = 1;  // what the process ends with should the actor system not go down
  const shutdown_bound bound{w.name, exit_code, joined};
  auto reg = tunnel ? sys.middleman().remote_actor("127.0.0.1", tunnel->local_port())
                    : sys.middleman().remote_actor(w.host, w.port);
  if (!reg) {
    return make_error(errc::unavailable, "cannot reach the engine at {}:{}: {}{}", w.host, w.port,
                      sys.render(reg.error()),
                      tunnel ? ""
                             : " (an engine that requires authentication admits only "
                               "workers with --tls-dir)");
  }
  caf::scoped_actor self{sys};
  const std::string engine_at = fmt::format("the engine at {}:{}", w.host, w.port);
  status st;
  std::string reply_bytes;
  const worker_identity id{
      static_cast<std::int64_t>(::getpid()), hostname(), w.name, w.threads, w.ucx_tls, w.standby};
  self->request(*reg, w.timeout, join_msg{to_bytes(make_join_request(id))})
      .receive([&](join_reply_msg& r) { reply_bytes = std::move(r.reply); },
               [&](caf::error& e) {
                 // An engine before protocol 2 knows no join_msg: it fails or never answers.
                 st = unavailable("joining {} failed: {}", engine_at, sys.render(e));
               });
  HELIX_RETURN_IF_ERROR(st);
  auto reply = read_join_reply(reply_bytes);
  if (!reply) return reply.error().with_context(fmt::format("join refused by {}", engine_at));
  joined = true;
  auto last_ping = std::make_shared<std::atomic<std::int64_t>>(0);
  auto asks_to_leave = std::make_shared<std::atomic<bool>>(false);  // SIGTERM, told the engine
  caf::actor beat = sys.spawn(heartbeat, last_ping, asks_to_leave);
  std::int32_t rank = reply->rank();
  caf::actor worker;                                // none while standing by
  std::shared_ptr<actors::worker_compute> compute;  // the worker's
  if (reply->standby()) {
    self->send(*reg, ready_msg{-1, nullptr, beat, caf::actor_cast<caf::actor>(self),
                               static_cast<std::int64_t>(::getpid())});
    logger()->info("{}: joined {} as a standby", w.name, engine_at);
  } else {
    auto first = build_rank(self, sys, w, *reg, rank, reply->world_size(), reply->config(), beat,
                            fabrics, compute, nullptr);
    if (!first) {
      self->send_exit(beat, caf::exit_reason::user_shutdown);
      return first.error();
    }
    worker = std::move(*first);
  }
  caf::actor engine;         // known once a relayout_msg named it; a standby ends with it
  bool donating = false;     // `worker` is a donor: once the engine stopped it, stand by again
  bool leaving = false;      // a graceful leave: exit instead of standing by
  bool lost_engine = false;  // it went silent while this rank served: fenced
  // Serve until the engine stops the worker actor. An engine that went away (its process ended,
  // its host vanished, the connection broke) stops pinging: once it has been silent for
  // engine_silence_limit (or never pinged within the join timeout), nobody is left to serve, so
  // wake the compute from any collective and end with an error. A standby is not pinged: it
  // watches the engine actor instead.
  auto ready_at = std::chrono::steady_clock::now();
  bool done = false;
  serving.store(true);
  status outcome;
  while (!done) {
    self->receive(
        [&](caf::down_msg& dm) {
          if (donating && worker && dm.source == worker.address() && leaving) {
            logger()->info("{}: handed its KV over; leaving", w.name);
            worker = nullptr;
            compute = nullptr;
            done = true;
            return;
          }
          if (donating && worker && dm.source == worker.address()) {
            logger()->info("{}: handed its KV over; standing by", w.name);
            worker = nullptr;
            compute = nullptr;
            donating = false;
            return;
          }
          if ((worker && dm.source == worker.address()) ||
              (engine && dm.source == engine.address())) {
            done = true;  // the engine stopped this rank (or, standing by, ended)
          }
        },
        [&](relayout_msg& m) {
          if (m.fenced) {  // the engine recovered without this rank: serve() stops it
            outcome = unavailable("{} recovered without rank {} (fenced)", engine_at, rank);
            lost_engine = true;
            done = true;
            return;
          }
          // Wake the old worker from any collective with the lost peer and wait for it to end;
          // its fabric stays alive for its compute's last moments. Once it ended, its KV passes
          // to the next rank's compute (the engine's restore_msg says which blocks stay).
          std::unique_ptr<model::carried_kv> carried;
          if (worker) {
            fabrics.back()->abort(
                make_error(errc::aborted, "{}: rank {} gives way to a new layout", w.name, rank));
            if (stop_worker(self, worker, std::chrono::seconds(10))) {
              if (compute) carried = compute->release_kv();
            } else {
              logger()->warn("{}: the old worker did not end within 10 s; its KV is not kept",
                             w.name);
            }
            worker = nullptr;
            compute = nullptr;
          }
          if (m.engine && !engine) {
            engine = m.engine;
            self->monitor(engine);
          }
          rank = m.rank;
          leaving = m.leave;
          if (rank < 0 && leaving) {
            logger()->info("{}: leaving the engine", w.name);
            done = true;
            return;
          }
          if (rank < 0) {
            logger()->info("{}: standing by", w.name);
            return;
          }
          proto_v1::ClusterConfig cc;
          auto built = cc.ParseFromString(m.config)
                           ? build_rank(self, sys, w, m.registrar, rank, m.world, cc, beat, fabrics,
                                        compute, std::move(carried))
                           : expected<caf::actor>(invalid_argument("relayout: config unreadable"));
          if (!built) {
            outcome =
                built.error().with_context(fmt::format("{}: relayout to rank {}", w.name, rank));
            logger()->error("{}", outcome);
            done = true;
            return;
          }
          worker = std::move(*built);
          auto grid = layout::parse(cc.layout());
          donating = grid && rank >= grid->num_ranks;
          last_ping->store(0);  // the new epoch's monitor starts now
          ready_at = std::chrono::steady_clock::now();
        },
        caf::after(heartbeat_period) >>
            [&] {
              const auto now = std::chrono::steady_clock::now();
              if (terminate_requested.load() && !asks_to_leave->load()) {
                if (!worker || donating) {
                  logger()->info("{}: SIGTERM while standing by: leaving", w.name);
                  done = true;
                  return;
                }
                logger()->info(
                    "{}: SIGTERM: asking the engine to move rank {}'s KV and duties "
                    "to the others",
                    w.name, rank);
                asks_to_leave->store(true);
              }
              if (!worker || donating) {  // standing by: ends with the engine actor, once known
                if (!engine && now - ready_at > w.timeout) {
                  outcome = unavailable("{}: standing by for {} ms, never told the engine",
                                        engine_at, w.timeout.count());
                  done = true;
                }
                return;
              }
              const std::int64_t last = last_ping->load();
              std::string silence;
              if (last == 0) {
                if (now - ready_at > w.timeout) {
                  silence = fmt::format("no heartbeat within {} ms of joining", w.timeout.count());
                }
              } else {
                const auto quiet = now.time_since_epoch() - std::chrono::nanoseconds(last);
                if (quiet > engine_silence_limit) {
                  silence = fmt::format(
                      "no heartbeat for {} ms",
                      std::chrono::duration_cast<std::chrono::milliseconds>(quiet).count());
                }
              }
              if (silence.empty()) return;
              outcome = unavailable("{} went away ({}); rank {} stops", engine_at, silence, rank);
              lost_engine = true;
              done = true;
            });
  }
  self->send_exit(beat, caf::exit_reason::user_shutdown);
  if (outcome.ok()) {
    exit_code = 0;
    return ok_status();
  }
  logger()->error("{}: {}", w.name, outcome);
  if (worker) {
    fabrics.back()->abort(outcome);
    if (!stop_worker(self, worker, std::chrono::seconds(5))) {
      logger()->warn("{}: the worker actor did not end within 5 s", w.name);
    }
  }
  if (lost_engine && w.rejoin) return rejoin_as_new_worker(w);
  return outcome;
}

}  // namespace

int run_worker(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    out << worker_usage;
    return 0;
  }
  auto w = parse_worker_args(args);
  if (!w) {
    err << "error: " << w.error().message() << "\n" << worker_usage;
    return 2;
  }
  std::signal(SIGTERM, on_sigterm);
  // First, while this process has one thread (setns moves only the calling thread).
  if (!w->netns.empty()) {
    const status entered = transport::enter_netns(w->netns);
    if (!entered.ok()) {
      err << "helix worker " << w->name << ": --netns " << w->netns << ": " << entered.to_string()
          << "\n";
      return 1;
    }
  }
  // UCX reads its own environment; the join only reports what it will be limited to.
  if (const char* tls = std::getenv("UCX_TLS")) w->ucx_tls = tls;
  if (!w->transports.empty()) w->ucx_tls = w->transports;
  // --rejoin: an engine that cannot be reached (yet: the partition that fenced this worker may
  // still be there) is tried again every second for --timeout-ms.
  const auto give_up = std::chrono::steady_clock::now() + w->timeout;
  bool joined = false;
  status st = serve(*w, joined);
  while (!st.ok() && !joined && w->rejoin && std::chrono::steady_clock::now() < give_up &&
         !terminate_requested.load()) {
    logger()->info("{}: {}; trying again in 1 s", w->name, st.message());
    std::this_thread::sleep_for(std::chrono::seconds(1));
    st = serve(*w, joined);
  }
  if (!st.ok()) {
    err << "helix worker " << w->name << ": " << st.to_string() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace helix::cluster
