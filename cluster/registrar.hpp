// The engine side's control actors for worker processes (registrar.cpp): the registrar that
// admits joining workers and collects them, and the heartbeat monitor. Internal to cluster/.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <vector>

#include <caf/fwd.hpp>

#include "actors/engine.hpp"
#include "proto/cluster.pb.h"

namespace helix::cluster::detail {

/// Hands out ranks in join order (refusing, with a reply that says why, a worker of another
/// protocol or build and bytes that are no join request: it logs them and waits on), sends every
/// worker the membership once all sent their UCX address, collects the worker actors, and answers
/// the engine's await_workers (or fails it after its timeout, naming who is missing); it stops
/// once it answered. `expected` ranks, then up to `standbys` standbys; `members`: empty at the
/// start (workers join), or after a failure the processes that take the new ranks (each told its
/// rank by relayout_msg); `world`: the engine's ranks, told to standbys.
caf::actor spawn_registrar(caf::actor_system& sys, std::int32_t expected, std::int32_t standbys,
                           proto_v1::ClusterConfig config, std::vector<actors::worker_info> members,
                           std::int32_t world);

/// The registrar of a running engine's late joins (listening workers started by hand): up to
/// `room` standbys join, each handed to `on_standby` once ready; it ends with `engine`.
caf::actor spawn_late_registrar(
    caf::actor_system& sys, std::int32_t room, proto_v1::ClusterConfig config, std::int32_t world,
    caf::actor engine,
    std::function<void(const actors::worker_info&, caf::actor agent, caf::actor heartbeat)>
        on_standby);

/// Pings every worker's heartbeat actor each `period`; the first one that does not answer within
/// `deadline` is reported to the engine (lost_atom, naming the worker actor). Ends with `engine`.
caf::actor spawn_heartbeat_monitor(caf::actor_system& sys, caf::actor engine,
                                   std::vector<caf::actor> workers, std::vector<caf::actor> beats,
                                   std::chrono::milliseconds period,
                                   std::chrono::milliseconds deadline);

}  // namespace helix::cluster::detail
