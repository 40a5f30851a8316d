// Workers as processes (ARCHITECTURE.md: the cluster layer, above actors/). An engine whose
// workers are processes takes them from spawned_workers(): it publishes a registrar actor through
// CAF's io middleman, starts one `helix worker --join HOST:PORT` child per rank, and every worker
// announces itself (protocol and helix versions, pid, host, name, capabilities), receives its
// rank and the cluster config, makes its UCX fabric, exchanges UCX addresses with the others
// through the registrar, builds its rank's weights and KV store, and hands back the handle of a
// worker actor running the same behaviour as an in-process worker. From then on the engine drives
// it exactly as a thread. messages.hpp has the handshake step by step; proto/cluster.proto its
// wire form.
//
// Failure: a worker that does not join or get ready within the join timeout fails engine::create
// naming it; a worker that dies later fails the engine (the engine actor monitors every worker)
// naming its rank. Children die with the engine (PR_SET_PDEATHSIG) and are reaped by the source.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "actors/worker_source.hpp"
#include "transport/fault/schedule.hpp"

namespace helix::cluster {

/// Bumped whenever the join handshake or the control messages change; a worker of another
/// protocol is refused with both versions named, on both sides. 2: protobuf handshake.
/// 3: relayout after a failure (relayout_msg, agents).
/// 4: lost-blocks recovery (restore_msg, step_item::rewrite_from, recovery_stats fields).
/// 5: elastic workers (relayout_msg::leave, engine_stats::epochs).
inline constexpr std::int32_t protocol_version = 5;

struct spawned_workers_options {
  /// The `helix` binary whose `worker` subcommand runs a worker (e.g. /proc/self/exe).
  std::string worker_binary;
  /// Address the engine listens on for its workers.
  std::string host = "127.0.0.1";
  /// How long every worker has to join and get ready.
  std::chrono::milliseconds join_timeout{60000};
  /// Kernel threads per worker process (0: the engine config's threads_per_worker).
  int threads = 0;
  /// Worker processes started beyond the layout's ranks: they join as standbys, hold nothing,
  /// and take a dead worker's rank at a recovery (engine_config::recovery).
  int standbys = 0;
  /// Empty, or one network namespace per rank (a name under /var/run/netns, e.g. from
  /// transport::netns_hosts) that worker enters first: workers as hosts on one machine. `host`
  /// must then be reachable from every one of them.
  std::vector<std::string> netns;
  /// The workers' UCX transports (UCX_TLS syntax, e.g. "tcp") and network devices (e.g.
  /// "helix0"); empty lets UCX choose.
  std::string transports;
  std::string net_devices;
  /// Fault injection (the chaos harness): each worker wraps the data plane of its first rank in
  /// a transport::fault::fault_fabric with this schedule (its own rank's faults fire in it,
  /// CRASH included); later ranks after a recovery run without faults. Empty: none.
  transport::fault::fault_schedule faults;
  /// Mutual TLS (tls.hpp): a directory with the cluster CA (ca.pem) and this node's certificate
  /// and key (cert.pem, key.pem); the workers are started with the same --tls-dir. Empty: none.
  std::string tls_dir;
};

/// A worker source whose workers are child processes of this one.
[[nodiscard]] std::unique_ptr<actors::worker_source> spawned_workers(
    const spawned_workers_options& opts);

struct listening_workers_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  // 0: any free port (logged, and given to on_listening)
  std::chrono::milliseconds join_timeout{60000};
  /// Standbys expected beyond the layout's ranks (joining workers past the ranks become
  /// standbys until this many have joined).
  int standbys = 0;
  /// Called (on the engine's creating thread) once the port listens, with its number.
  std::function<void(std::uint16_t)> on_listening;
  /// Mutual TLS as above: only workers with a certificate of this CA may join.
  std::string tls_dir;
};

/// A worker source whose workers are started by hand or by a cluster scheduler
/// (`helix worker --join HOST:PORT`) and join at opts.host:opts.port; engine::create waits for
/// all of them (one per rank) up to the join timeout, then fails naming the missing ranks.
[[nodiscard]] std::unique_ptr<actors::worker_source> listening_workers(
    const listening_workers_options& opts);

/// `helix worker --join HOST:PORT [--threads N] [--name NAME]`: runs one worker until the engine
/// stops it. Exit code 0 after a clean stop, 1 when joining failed (the reason on `err`), 2 for a
/// usage error.
int run_worker(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

/// `helix cluster certs --out DIR [--ca DIR] [--days N]`: credentials for mutual TLS (tls.hpp).
int run_cluster_cmd(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::cluster
