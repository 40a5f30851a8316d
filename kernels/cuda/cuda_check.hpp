// Private to kernels/cuda/: the one place that turns a cudaError_t into a helix status.
//
// Runtime API only (CUDA::cudart); the driver API is never used, so test binaries load on
// machines without a driver. Not a public header: it includes cuda_runtime.h.
#pragma once

#include <cuda_runtime.h>

#include "core/status.hpp"

namespace helix::kernels::cuda {

/// The status for a failed CUDA call `what`. No device or no driver is `unavailable`, out of
/// memory `resource_exhausted`, anything else `internal`; the message carries the CUDA error name,
/// number and text. Also clears the runtime's last-error slot, so that a non-sticky error does not
/// resurface in an unrelated later call.
[[nodiscard]] inline status cuda_error_status(cudaError_t err, const char* what) {
  (void)cudaGetLastError();
  errc code = errc::internal;
  switch (err) {
    case cudaErrorMemoryAllocation:
      code = errc::resource_exhausted;
      break;
    case cudaErrorInsufficientDriver:
    case cudaErrorNoDevice:
    case cudaErrorInitializationError:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
      code = errc::unavailable;
      break;
    default:
      break;
  }
  return make_error(code, "CUDA error {} ({}): {} (in {})", cudaGetErrorName(err),
                    static_cast<int>(err), cudaGetErrorString(err), what);
}

}  // namespace helix::kernels::cuda

/// Returns a status from the enclosing function if the CUDA runtime call `expr` fails.
#define HELIX_CUDA_RETURN_IF_ERROR(expr)                                        \
  do {                                                                          \
    const cudaError_t helix_cuda_err_ = (expr);                                 \
    if (helix_cuda_err_ != cudaSuccess) [[unlikely]]                            \
      return ::helix::kernels::cuda::cuda_error_status(helix_cuda_err_, #expr); \
  } while (0)
