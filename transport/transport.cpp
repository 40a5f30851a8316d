#include "transport/transport.hpp"

#include "transport/local/local_fabric.hpp"

namespace helix::transport {

expected<std::unique_ptr<fabric>> make_local_fabric(const local_fabric_options& opts) {
  if (opts.world_size < 1) {
    return invalid_argument("make_local_fabric: world_size {} must be >= 1", opts.world_size);
  }
  if (opts.default_timeout.count() < 0) {
    return invalid_argument("make_local_fabric: default_timeout {} ms must be >= 0",
                            opts.default_timeout.count());
  }
  return std::unique_ptr<fabric>(
      std::make_unique<local::local_fabric>(opts.world_size, opts.default_timeout));
}

expected<std::unique_ptr<fabric>> make_local_fabric(int world_size) {
  local_fabric_options opts;
  opts.world_size = world_size;
  return make_local_fabric(opts);
}

}  // namespace helix::transport
