// Fault injection on the control plane (issue: the seeded fault harness): a proxy actor between the
// engine and one worker that delays, drops, duplicates or reorders the control messages going to
// the worker (steps, opens, closes, migrations), or kills the worker actor, each drawn from a seed.
// The replies come back through the proxy, so to the engine the proxy is the worker.
//
// Who calls it: tests and `helix chaos`, through in_process_options::wrap_worker. What the engine
// must do about each fault: a duplicate is dropped by the worker (it runs each step and each
// operation once), a delayed message only delays, a dropped or reordered one leaves a step that
// cannot complete or fails (an unknown sequence), which the engine's peer timeout and recovery
// turn into a recovery with outputs unchanged; a killed worker actor is a lost worker.
//
// Deterministic: the k-th message to rank r meets the same fate for the same seed (counter-based
// Philox, core/rng.hpp), whatever the timing.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include <caf/fwd.hpp>

#include "core/status.hpp"

namespace helix::actors {

struct control_fault_options {
  std::uint64_t seed = 0;
  /// Probability, per control message to the worker, of each fault (their sum must be <= 1).
  double delay = 0.0;
  double drop = 0.0;
  double duplicate = 0.0;
  double reorder = 0.0;  // held back and sent after the next message
  /// Probability, per message, that the worker actor is killed instead (a lost worker).
  double kill = 0.0;
  std::chrono::milliseconds max_delay{20};  // delays are uniform in [1, max_delay]
  /// Faults are drawn only for the first `max_faults` faulty messages (0: no limit), so that a run
  /// ends.
  std::int64_t max_faults = 1;
};

/// invalid_argument naming the field: a probability outside [0, 1], their sum above 1, a
/// negative delay or fault budget.
[[nodiscard]] status validate(const control_fault_options& o);

/// What a proxy did, for reports.
struct control_fault_counts {
  std::int64_t delayed = 0;
  std::int64_t dropped = 0;
  std::int64_t duplicated = 0;
  std::int64_t reordered = 0;
  std::int64_t killed = 0;
};

/// Spawns the proxy of `worker` (global rank `rank`). It ends when the worker ends, with the same
/// reason, and stops the worker when it is stopped. `counts` (may be null) is updated as faults
/// are injected (the proxy runs on CAF's scheduler; read it once the engine is gone).
[[nodiscard]] caf::actor spawn_control_fault_proxy(caf::actor_system& sys, caf::actor worker,
                                                   std::int64_t rank, control_fault_options options,
                                                   control_fault_counts* counts);

}  // namespace helix::actors
