// Factories of the transport backends. The only place that includes backend headers, so that
// callers depend on `fabric` and `communicator` alone.
//
// make_local_fabric: all ranks are threads of this process; data moves by memcpy between the
// ranks' buffers. Errors: invalid_argument for world_size < 1.
#pragma once

#include <chrono>
#include <memory>

#include "core/status.hpp"
#include "transport/communicator.hpp"
#include "transport/fabric.hpp"

namespace helix::transport {

struct local_fabric_options {
  int world_size = 1;
  /// Default per-call timeout of every communicator (call_options::timeout overrides); zero
  /// means wait forever (until abort()).
  std::chrono::milliseconds default_timeout{0};
};

[[nodiscard]] expected<std::unique_ptr<fabric>> make_local_fabric(const local_fabric_options& opts);

/// Shorthand: world_size ranks, no default timeout.
[[nodiscard]] expected<std::unique_ptr<fabric>> make_local_fabric(int world_size);

}  // namespace helix::transport
