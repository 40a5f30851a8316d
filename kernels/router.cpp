#include "kernels/router.hpp"

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels {

status route_experts(const router_params& p, const exec_context& ctx) {
  if (p.rows < 0 || p.num_experts <= 0 || p.logits == nullptr || p.expert_ids == nullptr ||
      p.expert_weights == nullptr) {
    return invalid_argument("router: rows {}, num_experts {} or null pointers", p.rows,
                            p.num_experts);
  }
  if (p.num_groups <= 0 || p.num_experts % p.num_groups != 0) {
    return invalid_argument("router: {} experts not divisible into {} groups", p.num_experts,
                            p.num_groups);
  }
  if (p.topk_groups <= 0 || p.topk_groups > p.num_groups) {
    return invalid_argument("router: topk_groups {} not in [1, {}]", p.topk_groups, p.num_groups);
  }
  const std::int64_t selectable = p.topk_groups * (p.num_experts / p.num_groups);
  if (p.top_k <= 0 || p.top_k > selectable) {
    return invalid_argument("router: top_k {} not in [1, {}] (experts in the kept groups)", p.top_k,
                            selectable);
  }
  if (p.num_groups > 1 && p.bias != nullptr && p.num_experts / p.num_groups < 2) {
    return invalid_argument("router: group scoring by top-2 needs >= 2 experts per group");
  }
  switch (ctx.backend) {
    case backend::reference:
      return reference::route_experts(p);
    case backend::cpu:
      return cpu::route_experts(p, ctx.pool);
    case backend::cuda:
      return failed_precondition("router: no CUDA implementation yet");
  }
  return internal_error("router: unknown backend");
}

}  // namespace helix::kernels
