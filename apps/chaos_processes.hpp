// The worker processes of an engine as the fault harness (`helix chaos --processes`, in
// apps/chaos_run.cpp) sees them from outside: through /proc, since the harness must tell a
// process that still runs from one that died (a zombie, not yet reaped by the engine's worker
// source, counts as dead) and from a later process that reuses its pid. Linux only; every
// function reads /proc afresh and is thread-safe.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

namespace helix::apps {

/// One worker process of an engine, as first seen: its start time (clock ticks after boot, field
/// 22 of /proc/<pid>/stat) tells it apart from a later process that reuses the pid.
struct worker_process {
  pid_t pid = 0;
  std::uint64_t start_time = 0;  // 0: it was gone when first seen
  std::int64_t rank = -1;        // its rank in the first layout; -1: a standby, or seen later
};

/// Whether `p` still runs: its pid exists, is not a zombie and is the same process (same start
/// time).
[[nodiscard]] bool still_running(const worker_process& p);

/// The state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...), '-' when there is no such process.
[[nodiscard]] char proc_state(pid_t pid);

/// This process's children that run `helix worker` (argv[1] is "worker"), rank -1.
[[nodiscard]] std::vector<worker_process> worker_children();

/// Adds `pid` at `rank` to `procs` unless it is there (then only sets a rank it lacks); a pid
/// first seen now gets its current start time. Pids <= 0 are ignored.
void note_process(std::vector<worker_process>& procs, std::int64_t pid, std::int64_t rank);

}  // namespace helix::apps
