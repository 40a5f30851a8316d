// Device-memory helpers of kernels/cuda/cuda_ops.hpp. Plain C++ against the CUDA runtime API
// (compiled by the host compiler; cuda_runtime.h comes with CUDA::cudart).
#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/cuda_ops.hpp"

namespace helix::kernels::cuda {

int device_count() noexcept {
  int count = 0;
  // Without a GPU or driver this returns cudaErrorInsufficientDriver / cudaErrorNoDevice; it is an
  // answer (zero devices), not a failure, and the error must not linger for the next call.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

expected<device_buffer> device_buffer::allocate(std::size_t bytes) {
  device_buffer buf;
  if (bytes == 0) return buf;
  void* ptr = nullptr;
  const cudaError_t err = cudaMalloc(&ptr, bytes);
  if (err != cudaSuccess) {
    return cuda_error_status(err, "cudaMalloc")
        .with_context(fmt::format("device_buffer: allocating {} bytes", bytes));
  }
  buf.data_ = ptr;
  buf.bytes_ = bytes;
  return buf;
}

device_buffer::device_buffer(device_buffer&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

device_buffer& device_buffer::operator=(device_buffer&& o) noexcept {
  if (this != &o) {
    if (data_ != nullptr) (void)cudaFree(data_);
    data_ = std::exchange(o.data_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

device_buffer::~device_buffer() {
  // A destructor cannot report; cudaFree only fails after a sticky device error, which the next
  // checked call reports anyway.
  if (data_ != nullptr) (void)cudaFree(data_);
}

status copy_to_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return ok_status();
  HELIX_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
  return ok_status();
}

status copy_to_host(void* dst, const void* src, std::size_t bytes) {
  if (bytes == 0) return ok_status();
  HELIX_CUDA_RETURN_IF_ERROR(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
  return ok_status();
}

status synchronize(stream_handle stream) {
  HELIX_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
  return ok_status();
}

}  // namespace helix::kernels::cuda
