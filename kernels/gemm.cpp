#include "kernels/gemm.hpp"

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels {

namespace {

status check(const gemm_params& p) {
  if (p.m <= 0 || p.n <= 0 || p.k <= 0) {
    return invalid_argument("gemm: m {}, n {}, k {} must be positive", p.m, p.n, p.k);
  }
  if (p.x == nullptr || p.w == nullptr || p.y == nullptr) {
    return invalid_argument("gemm: null x, w or y");
  }
  if ((p.x_stride != 0 && p.x_stride < p.k) || (p.y_stride != 0 && p.y_stride < p.n)) {
    return invalid_argument("gemm: x_stride {} < k {} or y_stride {} < n {}", p.x_stride, p.k,
                            p.y_stride, p.n);
  }
  if (p.w_type == dtype::fp8_e4m3 &&
      (p.w_scales == nullptr || p.w_block_k <= 0 || p.w_scale_phase < 0 ||
       p.w_scale_phase >= p.w_block_k ||
       p.w_scale_stride < (p.k - 1 + p.w_scale_phase) / p.w_block_k + 1)) {
    return invalid_argument(
        "gemm: fp8_e4m3 weights need block scales (scales {}, block {}, phase {}, stride {} for "
        "k {})",
        p.w_scales != nullptr ? "set" : "null", p.w_block_k, p.w_scale_phase, p.w_scale_stride,
        p.k);
  }
  return ok_status();
}

}  // namespace

status gemm(const gemm_params& p, const exec_context& ctx) {
  HELIX_RETURN_IF_ERROR(check(p));
  switch (ctx.backend) {
    case backend::reference:
      return reference::gemm(p);
    case backend::cpu:
      return cpu::gemm(p, ctx.pool);
    case backend::cuda:
      return failed_precondition("gemm: no CUDA implementation yet");
  }
  return internal_error("gemm: unknown backend");
}

status gemm_group(std::span<const gemm_params> ps, const exec_context& ctx) {
  for (std::size_t i = 0; i < ps.size(); ++i) {
    HELIX_RETURN_IF_ERROR(check(ps[i]).with_context(fmt::format("gemm_group entry {}", i)));
  }
  switch (ctx.backend) {
    case backend::reference:
      for (const gemm_params& p : ps) HELIX_RETURN_IF_ERROR(reference::gemm(p));
      return ok_status();
    case backend::cpu:
      return cpu::gemm_group(ps, ctx.pool);
    case backend::cuda:
      return failed_precondition("gemm_group: no CUDA implementation yet");
  }
  return internal_error("gemm_group: unknown backend");
}

}  // namespace helix::kernels
