#include "kernels/merge.hpp"

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"
#if HELIX_HAVE_CUDA
#include "kernels/cuda/cuda_ops.hpp"
#endif

namespace helix::kernels {

status lse_merge(const lse_merge_params& p, const exec_context& ctx) {
  if (p.num_partials <= 0 || p.num_rows < 0 || p.dim <= 0) {
    return invalid_argument("lse_merge: num_partials {}, num_rows {}, dim {}", p.num_partials,
                            p.num_rows, p.dim);
  }
  if (p.partial_out == nullptr || p.partial_lse == nullptr || p.out == nullptr) {
    return invalid_argument("lse_merge: null partial_out, partial_lse or out");
  }
  switch (ctx.backend) {
    case backend::reference:
      return reference::lse_merge(p);
    case backend::cpu:
      return cpu::lse_merge(p, ctx.pool);
    case backend::cuda:
#if HELIX_HAVE_CUDA
      return cuda::lse_merge(p, ctx.stream);
#else
      return failed_precondition("lse_merge: this build has no CUDA kernels");
#endif
  }
  return internal_error("lse_merge: unknown backend");
}

}  // namespace helix::kernels
