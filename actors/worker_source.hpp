// Where an engine's workers come from. The engine asks its worker source for one worker actor per
// rank of the layout; every worker runs the same worker_actor behaviour over a rank_compute, be it
// a thread of the engine's process (the default source, in_process_workers) or a process of its
// own on this host or another (cluster/, which implements this interface so that the dependency
// stays one way: cluster -> actors).
//
// Lifetime: the engine owns its source and destroys it after the actor system, so a source may
// own what its workers use (the in-process data plane, child processes).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/fwd.hpp>

#include "actors/engine.hpp"
#include "actors/worker_compute.hpp"
#include "core/layout.hpp"
#include "transport/fabric.hpp"

namespace helix::actors {

class worker_source {
 public:
  virtual ~worker_source() = default;
  /// Adds what the source needs to the engine's actor system (remote workers: the io
  /// middleman). Called before the system starts.
  virtual void configure(caf::actor_system_config& cfg) { (void)cfg; }
  /// Starts one worker per rank of `grid` for `config` (whose layout is grid's) and returns their
  /// actor handles in rank order. Errors name the workers that are missing and why.
  [[nodiscard]] virtual expected<std::vector<caf::actor>> start(caf::actor_system& sys,
                                                                const engine_config& config,
                                                                const layout& grid) = 0;
  /// Called once the engine actor runs: a source whose workers can stop answering without
  /// their actor ending (a stopped process, a partitioned host) watches them and sends the
  /// engine (lost_atom, worker actor, why). Whatever it spawns must end with the engine actor.
  virtual void watch(caf::actor_system& sys, const caf::actor& engine) {
    (void)sys;
    (void)engine;
  }
  /// Wakes workers blocked in a collective when the engine shuts down without draining, or when
  /// a step failed and the engine recovers.
  virtual void abort(const status& why) { (void)why; }
  /// Recovery (engine_config::recovery): after a failure, rebuilds the workers as the ranks of
  /// `grid`: the member at old rank survivors[i] becomes rank i (its weights resharded for the
  /// new rank, a new data plane among them); ranks past survivors.size(), and those whose
  /// survivors[i] is -1, are taken by standbys
  /// (standbys() of them are available); the members at the old ranks in `standby` live on
  /// without a rank and become standbys. `donors` (a subset of `standby`, in order) first hand
  /// their KV over: donor j joins the new data plane as rank N + j (N = grid.num_ranks) with a
  /// donor_compute over the KV its old worker held, and stands by once the engine stops that
  /// worker. `leaving` (a subset of `standby`): members that leave the engine instead of
  /// standing by (a graceful leave, engine::drain_worker): once the engine stopped their donor
  /// worker (or at once, when they donate nothing) they end, a process exits. Returns the new
  /// ranks' actors, then the donors'. The old workers' actors are the engine's to stop once this
  /// returned; what they use stays valid until the source is destroyed. Default: unimplemented
  /// (the engine then fails as without recovery).
  [[nodiscard]] virtual expected<std::vector<caf::actor>> relayout(
      caf::actor_system& sys, const engine_config& config, const layout& grid,
      const std::vector<std::int64_t>& survivors, const std::vector<std::int64_t>& standby,
      const std::vector<std::int64_t>& donors, const std::vector<std::int64_t>& leaving);
  /// Scale out (engine::add_workers): `count` more members join as standbys (threads; spawned
  /// processes that join through a new registrar), for the relayout that follows to give them
  /// ranks. Blocks until they are ready or failed. Default: failed_precondition.
  [[nodiscard]] virtual status add_members(caf::actor_system& sys, const engine_config& config,
                                           const layout& grid, std::int64_t count);
  /// Members alive without a rank, that a relayout can give one.
  [[nodiscard]] virtual std::int64_t standbys() const { return 0; }
  /// Checks that the standbys are still there and forgets those that are not (a process started
  /// elsewhere that ended), within a short bound; called before a layout is planned, so that
  /// standbys() counts only live ones. Default: nothing to check.
  virtual void prune_standbys(caf::actor_system& sys) { (void)sys; }
  /// The ranks whose member is known to have died (a worker process that ended), so that
  /// recovery drops them rather than a rank that only saw them fail. Default: none known.
  [[nodiscard]] virtual std::vector<std::int64_t> dead() { return {}; }
  /// The workers started, by rank.
  [[nodiscard]] virtual std::vector<worker_info> workers() const = 0;
};

/// The default source: every worker a thread of this process, the data plane transport/local.
[[nodiscard]] std::unique_ptr<worker_source> in_process_workers();

struct in_process_options {
  /// Applied to every data plane the source makes (at start and at each relayout), e.g. a
  /// transport::fault_fabric for fault-injection tests; null: the plain local fabric.
  std::function<std::unique_ptr<transport::fabric>(std::unique_ptr<transport::fabric>)> wrap_fabric;
  /// Applied to every worker actor the source starts (rank, actor) before the engine sees it,
  /// e.g. a control-plane fault proxy (control_faults.hpp); null: the workers themselves.
  std::function<caf::actor(caf::actor_system&, std::int64_t, caf::actor)> wrap_worker;
};
[[nodiscard]] std::unique_ptr<worker_source> in_process_workers(in_process_options options);

/// Rank `rank`'s compute for `config` and `grid` over `fab` (the world and the rank's KVP group
/// are made from it): only the rank's shards are built, seeded (model::seeded_rank_weights) or
/// read from the checkpoint's files (model::checkpoint_rank_weights). `carried`: the KV of this
/// member's previous compute (worker_compute::release_kv), kept until the engine's restore_msg.
/// A fabric wider than the layout holds donors after its ranks: ranks get the whole fabric as
/// their handoff communicator, and a rank past the layout's is a donor (donor_compute over
/// `carried`).
[[nodiscard]] expected<std::shared_ptr<worker_compute>> make_rank_compute(
    const engine_config& config, const layout& grid, std::int64_t rank, transport::fabric& fab,
    std::unique_ptr<model::carried_kv> carried = nullptr);

}  // namespace helix::actors
