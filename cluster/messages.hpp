// The join handshake between an engine's registrar and its worker processes (both ends register
// the helix_cluster type block after helix_actors'). What a worker and the engine say about
// themselves crosses the process boundary as protobuf bytes (proto/cluster.proto, parsed with
// size limits by handshake.hpp); CAF carries those bytes and the actor handles.
//
//   worker    -> registrar  join_msg{JoinRequest: protocol and helix versions, pid, host, name,
//                           capabilities}
//   registrar -> worker     join_reply_msg{JoinReply: accepted with rank, world size and
//                           ClusterConfig (EngineConfig, layout, heartbeats, KV capacity), or
//                           refused with a reason; always the engine's versions}. A refused
//                           worker exits 1 naming both versions; the engine logs it and waits on.
//   worker    -> registrar  address_msg{rank, UCX address}
//   registrar -> workers    membership_msg{Membership: every rank's name, pid, host and UCX
//                           address}, once all addresses are in; workers connect UCX from it.
//   worker    -> registrar  ready_msg{rank, worker actor, heartbeat actor, agent, pid}; a
//                           standby (JoinReply.standby) sends rank -1 and no worker at once
//   source    -> agents     relayout_msg{new rank, world, ClusterConfig, a new registrar, engine}
//                           after a failure (recovery): each survivor repeats address_msg and
//                           ready_msg with the new registrar; rank -1 stands by
//   engine    -> registrar  await_workers -> worker_set (in the engine's process only)
//
// join_msg and join_reply_msg never change (CAF 0.17 finds a message type by its name, and each
// holds one string), so that a worker of any other protocol can still be told why it is refused;
// everything else may change with protocol_version (cluster.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/messages.hpp"

namespace helix::cluster {

/// Worker -> registrar: a serialized proto_v1::JoinRequest; answered with join_reply_msg.
struct join_msg {
  std::string request;
};
/// Registrar -> worker: a serialized proto_v1::JoinReply.
struct join_reply_msg {
  std::string reply;
};
/// Worker -> registrar: its UCX address (at most max_ucx_address_bytes); answered with
/// membership_msg once every rank's has arrived.
struct address_msg {
  std::int32_t rank = 0;
  std::string address;
};
/// Registrar -> worker: a serialized proto_v1::Membership.
struct membership_msg {
  std::string membership;
};
/// Worker -> registrar: its worker actor is up.
struct ready_msg {
  std::int32_t rank = 0;
  caf::actor worker;
  caf::actor heartbeat;  // answers ping_atom at once, even while the worker computes
  caf::actor agent;      // the process's agent: takes relayout_msg
  std::int64_t pid = 0;  // names a standby (rank -1, no worker) among those that joined
};
/// Engine (its worker source) -> a worker process's agent, after a failure elsewhere: the process
/// is now rank `rank` of `world` under `config` (a serialized proto_v1::ClusterConfig with the new
/// layout). It stops its old worker, makes a new data plane, and joins through `registrar` as at
/// the start (address_msg, membership_msg, ready_msg). rank -1: it stands by without a rank until
/// the next relayout_msg, or exits when `engine` ends. `leave` (a graceful leave): instead of
/// standing by, the process exits, once its donor worker (rank >= the layout's) was stopped.
struct relayout_msg {
  std::int32_t rank = -1;
  std::int32_t world = 0;
  std::string config;
  caf::actor registrar;
  caf::actor engine;
  bool leave = false;
  /// The engine recovered without this worker (it was lost: a partition, a missed deadline):
  /// its epoch is over and nothing it sends is applied. It ends, or rejoins as a new worker.
  bool fenced = false;
};
/// Engine -> registrar: answer with every worker, in rank order, or an error after timeout_ms.
struct await_workers {
  std::int64_t timeout_ms = 0;
};
struct worker_set {
  std::vector<caf::actor> workers;  // by rank
  std::vector<caf::actor> heartbeats;
  std::vector<caf::actor> agents;
  std::vector<std::int64_t> pids;
  std::vector<std::string> hosts;
  std::vector<std::string> names;
  // Standbys (joined without a rank), in join order.
  std::vector<caf::actor> standby_agents;
  std::vector<caf::actor> standby_heartbeats;
  std::vector<std::int64_t> standby_pids;
  std::vector<std::string> standby_hosts;
  std::vector<std::string> standby_names;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, join_msg& x) {
  return f(caf::meta::type_name("join_msg"), x.request);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, join_reply_msg& x) {
  return f(caf::meta::type_name("join_reply_msg"), x.reply);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, address_msg& x) {
  return f(caf::meta::type_name("address_msg"), x.rank, x.address);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, membership_msg& x) {
  return f(caf::meta::type_name("membership_msg"), x.membership);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, ready_msg& x) {
  return f(caf::meta::type_name("ready_msg"), x.rank, x.worker, x.heartbeat, x.agent, x.pid);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, relayout_msg& x) {
  return f(caf::meta::type_name("relayout_msg"), x.rank, x.world, x.config, x.registrar, x.engine,
           x.leave, x.fenced);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, await_workers& x) {
  return f(caf::meta::type_name("await_workers"), x.timeout_ms);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_set& x) {
  return f(caf::meta::type_name("worker_set"), x.workers, x.heartbeats, x.agents, x.pids, x.hosts,
           x.names, x.standby_agents, x.standby_heartbeats, x.standby_pids, x.standby_hosts,
           x.standby_names);
}

}  // namespace helix::cluster

CAF_BEGIN_TYPE_ID_BLOCK(helix_cluster, caf::id_block::helix_actors::end)
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::join_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::join_reply_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::address_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::membership_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::ready_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::relayout_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::await_workers))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::worker_set))
CAF_ADD_ATOM(helix_cluster, helix::cluster, join_timeout_atom, "jointimeo")
CAF_ADD_ATOM(helix_cluster, helix::cluster, ping_atom, "hxping")
CAF_ADD_ATOM(helix_cluster, helix::cluster, tick_atom, "hxtick")
CAF_END_TYPE_ID_BLOCK(helix_cluster)
