#include "kernels/rmsnorm.hpp"

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels {

status rmsnorm(const rmsnorm_params& p, const exec_context& ctx) {
  if (p.rows < 0 || p.dim <= 0 || p.x == nullptr || p.weight == nullptr || p.out == nullptr) {
    return invalid_argument("rmsnorm: rows {}, dim {} or null pointers", p.rows, p.dim);
  }
  if (!(p.eps > 0.0f)) return invalid_argument("rmsnorm: eps {} must be > 0", p.eps);
  switch (ctx.backend) {
    case backend::reference:
      return reference::rmsnorm(p);
    case backend::cpu:
      return cpu::rmsnorm(p, ctx.pool);
    case backend::cuda:
      return failed_precondition("rmsnorm: no CUDA implementation yet");
  }
  return internal_error("rmsnorm: unknown backend");
}

}  // namespace helix::kernels
