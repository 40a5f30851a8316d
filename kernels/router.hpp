// MoE router: scoring, optional group-limited selection, top-k, weight normalisation.
//
// Semantics of HF DeepSeek-V3 (`noaux_tc`, sigmoid scoring with e_score_correction_bias) and of
// plain softmax top-k routers:
//   score  = sigmoid(logit) or softmax(logits) over experts            [rows, num_experts]
//   choice = score + bias (bias may be null: choice = score)
//   groups (num_groups > 1): group score = sum of the top-2 choices in the group when a bias is
//          given (noaux_tc), else the group's max (DeepSeek-V2 group_limited_greedy); keep the
//          topk_groups best groups, experts of other groups cannot be chosen.
//   top-k over choice; weight = score (without bias) of each chosen expert;
//   if norm_topk_prob: weight /= sum(weights) + 1e-20; then weight *= routed_scaling_factor.
// Outputs: expert_ids [rows, top_k] (int32) and expert_weights [rows, top_k], ordered by
// descending choice; ties go to the lower expert id (so every rank routes identically).
#pragma once

#include <cstdint>

#include "core/model_spec.hpp"
#include "kernels/exec.hpp"

namespace helix::kernels {

struct router_params {
  const float* logits = nullptr;  // [rows, num_experts]
  const float* bias = nullptr;    // [num_experts] or null
  std::int64_t rows = 0;
  std::int64_t num_experts = 0;
  std::int64_t top_k = 0;
  std::int64_t num_groups = 1;
  std::int64_t topk_groups = 1;
  router_scoring scoring = router_scoring::softmax;
  bool norm_topk_prob = false;
  float routed_scaling_factor = 1.0f;
  std::int32_t* expert_ids = nullptr;
  float* expert_weights = nullptr;
};

[[nodiscard]] status route_experts(const router_params& p, const exec_context& ctx);

}  // namespace helix::kernels
