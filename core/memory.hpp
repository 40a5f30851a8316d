// How much host memory this process may still allocate, for checks made before large allocations.
//
// Who calls it: engine::create and the weight loaders, before they allocate weights and KV stores,
// so that a model or a config too large for the machine is refused with resource_exhausted
// instead of being killed by the kernel's OOM killer or aborting on a failed allocation.
//
// The figure is the smallest of the limits that apply to this process:
//   - the kernel's MemAvailable (/proc/meminfo),
//   - its cgroup's memory.max minus memory.current (cgroup v2; v1's memory.limit_in_bytes minus
//     memory.usage_in_bytes), when a limit is set,
//   - RLIMIT_AS minus the address space in use (VmSize) and RLIMIT_DATA minus the data segment in
//     use (VmData), when those limits are set.
// Each is read when the function is called (a few small /proc and /sys reads: not for hot paths).
//
// Thread-safety: pure functions of the machine's state; callable from any thread.
#pragma once

#include <cstdint>
#include <string>

namespace helix {

struct memory_headroom {
  std::uint64_t bytes = 0;  // the smallest limit found; UINT64_MAX when none could be read
  std::string limited_by;   // which limit gave `bytes` ("MemAvailable", "cgroup memory.max", ...)
};

/// The memory this process may still allocate (see above).
[[nodiscard]] memory_headroom available_memory();

/// "1.5 GiB", "512.0 MiB", "1234 bytes": sizes in messages.
[[nodiscard]] std::string format_bytes(std::uint64_t bytes);

}  // namespace helix
