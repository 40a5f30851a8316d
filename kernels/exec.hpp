// How a kernel runs: which implementation, on which threads or stream.
//
// Every op in kernels/ is `status op(const op_params&, const exec_context&)`. The backend picks the
// implementation in one explicit switch per op:
//   reference: plain, obvious C++ on one thread; the oracle every other implementation is tested
//              against.
//   cpu:       vectorised, multi-threaded over `pool` (or single-threaded when pool is null).
//   cuda:      CUDA kernels on `stream`; all pointers in the params are device pointers.
// A backend that is not compiled in, or a combination an implementation does not support, returns
// failed_precondition.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/status.hpp"
#include "core/tensor.hpp"
#include "core/thread_pool.hpp"

namespace helix::kernels {

enum class backend : std::uint8_t { reference, cpu, cuda };

[[nodiscard]] std::string_view backend_name(backend b) noexcept;

struct exec_context {
  kernels::backend backend = backend::cpu;
  thread_pool* pool = nullptr;     // cpu backend: threads to use; null = calling thread only
  stream_handle stream = nullptr;  // cuda backend: cudaStream_t, null = default stream
};

/// Whether the CUDA kernels were compiled into this build.
[[nodiscard]] bool cuda_compiled() noexcept;

}  // namespace helix::kernels
