#include "kernels/swiglu.hpp"

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels {

status swiglu(const swiglu_params& p, const exec_context& ctx) {
  if (p.rows < 0 || p.dim <= 0 || p.gate == nullptr || p.up == nullptr || p.out == nullptr) {
    return invalid_argument("swiglu: rows {}, dim {} or null pointers", p.rows, p.dim);
  }
  switch (ctx.backend) {
    case backend::reference:
      return reference::swiglu(p);
    case backend::cpu:
      return cpu::swiglu(p, ctx.pool);
    case backend::cuda:
      return failed_precondition("swiglu: no CUDA implementation yet");
  }
  return internal_error("swiglu: unknown backend");
}

}  // namespace helix::kernels
