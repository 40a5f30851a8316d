// The join handshake between an engine's registrar and its worker processes, as CAF messages
// (both ends register the helix_cluster type block after helix_actors').
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/all.hpp>

#include "actors/messages.hpp"

namespace helix::cluster {

/// Worker -> registrar: who is joining.
struct join_request {
  std::int32_t protocol = 0;
  std::int64_t pid = 0;
  std::string host;
  std::string name;
};
/// Registrar -> worker: its rank, the world size and the engine config (EngineConfig protobuf).
struct assignment {
  std::int32_t rank = 0;
  std::int32_t world = 0;
  std::string config;
};
/// Worker -> registrar: its UCX address; answered with every rank's once all have arrived.
struct address_msg {
  std::int32_t rank = 0;
  std::string address;
};
struct address_book {
  std::vector<std::string> addresses;
};
/// Worker -> registrar: its worker actor is up.
struct ready_msg {
  std::int32_t rank = 0;
  caf::actor worker;
  caf::actor heartbeat;  // answers ping_atom at once, even while the worker computes
};
/// Engine -> registrar: answer with every worker, in rank order, or an error after timeout_ms.
struct await_workers {
  std::int64_t timeout_ms = 0;
};
struct worker_set {
  std::vector<caf::actor> workers;  // by rank
  std::vector<caf::actor> heartbeats;
  std::vector<std::int64_t> pids;
  std::vector<std::string> hosts;
  std::vector<std::string> names;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, join_request& x) {
  return f(caf::meta::type_name("join_request"), x.protocol, x.pid, x.host, x.name);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, assignment& x) {
  return f(caf::meta::type_name("assignment"), x.rank, x.world, x.config);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, address_msg& x) {
  return f(caf::meta::type_name("address_msg"), x.rank, x.address);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, address_book& x) {
  return f(caf::meta::type_name("address_book"), x.addresses);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, ready_msg& x) {
  return f(caf::meta::type_name("ready_msg"), x.rank, x.worker, x.heartbeat);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, await_workers& x) {
  return f(caf::meta::type_name("await_workers"), x.timeout_ms);
}
template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, worker_set& x) {
  return f(caf::meta::type_name("worker_set"), x.workers, x.heartbeats, x.pids, x.hosts, x.names);
}

}  // namespace helix::cluster

CAF_BEGIN_TYPE_ID_BLOCK(helix_cluster, caf::id_block::helix_actors::end)
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::join_request))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::assignment))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::address_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::address_book))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::ready_msg))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::await_workers))
CAF_ADD_TYPE_ID(helix_cluster, (helix::cluster::worker_set))
CAF_ADD_ATOM(helix_cluster, helix::cluster, join_timeout_atom, "jointimeo")
CAF_ADD_ATOM(helix_cluster, helix::cluster, ping_atom, "hxping")
CAF_ADD_ATOM(helix_cluster, helix::cluster, tick_atom, "hxtick")
CAF_END_TYPE_ID_BLOCK(helix_cluster)
