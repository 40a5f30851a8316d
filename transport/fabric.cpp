#include "transport/fabric.hpp"

#include <cstring>
#include <new>

#include "core/memory.hpp"

namespace helix::transport {

expected<fabric_buffer> allocate_host_buffer(std::size_t bytes) {
  if (bytes == 0) return fabric_buffer{};
  const memory_headroom room = available_memory();
  if (bytes > room.bytes) {
    return make_error(errc::resource_exhausted, "fabric buffer of {} does not fit in {} ({})",
                      format_bytes(bytes), format_bytes(room.bytes), room.limited_by);
  }
  constexpr std::align_val_t align{64};
  void* p = ::operator new(bytes, align, std::nothrow);
  if (p == nullptr) {
    return make_error(errc::resource_exhausted, "fabric buffer of {}: allocation failed",
                      format_bytes(bytes));
  }
  std::memset(p, 0, bytes);
  return fabric_buffer(static_cast<std::byte*>(p), bytes,
                       [](std::byte* d, std::size_t) { ::operator delete(d, align); });
}

}  // namespace helix::transport
