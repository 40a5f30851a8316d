// CUDA kernels with the same signatures as the CPU ones (all pointers are device pointers), and
// the few device-memory helpers that tests and the model need. Compiled only when nvcc is found
// (HELIX_HAVE_CUDA); included only by the dispatchers and by tests. No CUDA types appear here.
#pragma once

#include <cstddef>

#include "kernels/attention.hpp"
#include "kernels/merge.hpp"

namespace helix::kernels::cuda {

[[nodiscard]] std::size_t attention_workspace_bytes(const attention_partial_params& p);
[[nodiscard]] status attention_partial(const attention_partial_params& p, stream_handle stream);
[[nodiscard]] status lse_merge(const lse_merge_params& p, stream_handle stream);

/// Number of CUDA devices usable here (0 without a GPU or driver; never fails).
[[nodiscard]] int device_count() noexcept;

/// Device memory owned by RAII; move-only.
class device_buffer {
 public:
  device_buffer() = default;
  /// resource_exhausted / unavailable with the CUDA error text.
  [[nodiscard]] static expected<device_buffer> allocate(std::size_t bytes);
  device_buffer(device_buffer&& o) noexcept;
  device_buffer& operator=(device_buffer&& o) noexcept;
  device_buffer(const device_buffer&) = delete;
  device_buffer& operator=(const device_buffer&) = delete;
  ~device_buffer();
  [[nodiscard]] void* data() const { return data_; }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

[[nodiscard]] status copy_to_device(void* dst, const void* src, std::size_t bytes);
[[nodiscard]] status copy_to_host(void* dst, const void* src, std::size_t bytes);
[[nodiscard]] status synchronize(stream_handle stream);

}  // namespace helix::kernels::cuda
