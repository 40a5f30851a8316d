// FFN of the per-rank layer program (ARCHITECTURE.md section 2, step 8). The ranks regroup as the
// FFN grid: a dense layer is split over the FFN ranks (column-parallel gate/up, row-parallel
// down); a MoE layer routes every token on every rank (the router is replicated and x is
// bit-identical everywhere, so all ranks agree), each rank computes its TPF slice of the experts of
// its EP group that its tokens chose, weighted by the router, plus its slice of the shared expert;
// one all-reduce over the world sums it all. Ranks without an FFN share (medha's non-TPA ranks)
// contribute zeros to the same all-reduce.
#include <algorithm>

#include "kernels/router.hpp"
#include "kernels/swiglu.hpp"
#include "model/rank_program.hpp"

namespace helix::model {
namespace {
std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}
}  // namespace

// out [rows, H] (+)= this rank's slice of one SwiGLU MLP applied to in [rows, H].
status rank_program::mlp_slice(const mlp_shard& mlp, const float* in, float* out, std::int64_t rows,
                               bool accumulate) {
  const std::int64_t h = w_.spec.hidden;
  const std::int64_t f = mlp.ffn.count;
  if (f == 0) {
    if (!accumulate) std::fill_n(out, rows * h, 0.0f);
    return ok_status();
  }
  HELIX_RETURN_IF_ERROR(linear(in, h, mlp.gate_proj, gate_.data(), f, rows));
  HELIX_RETURN_IF_ERROR(linear(in, h, mlp.up_proj, up_.data(), f, rows));
  kernels::swiglu_params sw;
  sw.gate = gate_.data();
  sw.up = up_.data();
  sw.out = gate_.data();
  sw.rows = rows;
  sw.dim = f;
  HELIX_RETURN_IF_ERROR(kernels::swiglu(sw, ctx()));
  return linear(gate_.data(), f, mlp.down_proj, out, h, rows, accumulate);
}

// Routed experts of this rank's EP group (each its TPF slice), weighted, plus the shared expert's
// slice, into partial_. Each token's terms are added in expert-id order, then the shared expert,
// whatever the batch (batch invariance).
status rank_program::moe(std::int64_t layer_idx, std::int64_t rows) {
  const model_spec& s = w_.spec;
  const moe_spec& e = s.moe;
  const rank_layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t h = s.hidden;
  const std::int64_t k = e.experts_per_token;

  HELIX_RETURN_IF_ERROR(linear(xn_.data(), 0, L.router, router_logits_.data(), 0, rows));
  kernels::router_params rp;
  rp.logits = router_logits_.data();
  rp.bias = L.router_bias.numel() > 0 ? L.router_bias.as<float>() : nullptr;
  rp.rows = rows;
  rp.num_experts = e.num_experts;
  rp.top_k = k;
  rp.num_groups = e.num_groups;
  rp.topk_groups = e.topk_groups;
  rp.scoring = e.scoring;
  rp.norm_topk_prob = e.norm_topk_prob;
  rp.routed_scaling_factor = static_cast<float>(e.routed_scaling_factor);
  rp.expert_ids = expert_ids_.data();
  rp.expert_weights = expert_w_.data();
  HELIX_RETURN_IF_ERROR(kernels::route_experts(rp, ctx()));

  std::fill_n(partial_.data(), rows * h, 0.0f);
  // L.experts is in ascending expert id, so every token meets its local experts in id order.
  for (const expert_shard& x : L.experts) {
    std::int64_t n = 0;  // (row * k + choice) entries routed to this expert
    for (std::int64_t i = 0; i < rows * k; ++i) {
      if (expert_ids_[sz(i)] == x.expert_idx) expert_rows_[sz(n++)] = i;
    }
    if (n == 0 || x.mlp.ffn.count == 0) continue;
    for (std::int64_t j = 0; j < n; ++j) {
      std::copy_n(xn_.data() + (expert_rows_[sz(j)] / k) * h, h, expert_in_.data() + j * h);
    }
    HELIX_RETURN_IF_ERROR(mlp_slice(x.mlp, expert_in_.data(), expert_tmp_.data(), n, false));
    for (std::int64_t j = 0; j < n; ++j) {
      const std::int64_t entry = expert_rows_[sz(j)];
      const float wgt = expert_w_[sz(entry)];
      float* dst = partial_.data() + (entry / k) * h;
      const float* src = expert_tmp_.data() + j * h;
      for (std::int64_t c = 0; c < h; ++c) dst[c] += wgt * src[c];
    }
  }
  if (e.num_shared_experts > 0) {
    HELIX_RETURN_IF_ERROR(mlp_slice(L.shared, xn_.data(), partial_.data(), rows, true));
  }
  return ok_status();
}

status rank_program::ffn(std::int64_t layer_idx, std::int64_t rows) {
  const rank_layer_weights& L = w_.layers[sz(layer_idx)];
  if (!L.has_ffn) {
    std::fill_n(partial_.data(), rows * w_.spec.hidden, 0.0f);
  } else if (L.is_moe) {
    HELIX_RETURN_IF_ERROR(moe(layer_idx, rows));
  } else {
    HELIX_RETURN_IF_ERROR(mlp_slice(L.mlp, xn_.data(), partial_.data(), rows, false));
  }
  return all_reduce_add(rows);
}

}  // namespace helix::model
