// FFN of the per-rank layer program (ARCHITECTURE.md section 2, step 8). The ranks regroup as the
// FFN grid: a dense layer is split over the FFN ranks (column-parallel gate/up, row-parallel
// down); a MoE layer routes every token on every rank (the router is replicated and x is
// bit-identical everywhere, so all ranks agree), each rank computes its TPF slice of the experts of
// its EP group that its tokens chose, weighted by the router, plus its slice of the shared expert;
// one all-reduce over the world sums it all. Ranks without an FFN share (medha's non-TPA ranks)
// contribute zeros to the same all-reduce.
#include <algorithm>

#include "model/rank_program.hpp"
#include "model/step_ops.hpp"

namespace helix::model {
namespace {
std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}
}  // namespace

// out [rows, H] (+)= this rank's slice of one SwiGLU MLP applied to in [rows, H].
status rank_program::mlp_slice(const mlp_shard& mlp, const float* in, float* out, std::int64_t rows,
                               bool accumulate) {
  if (mlp.ffn.count == 0) {  // more slices than intermediate columns: this one is empty
    if (!accumulate) std::fill_n(out, rows * w_.spec.hidden, 0.0f);
    return ok_status();
  }
  return swiglu_mlp(ctx(), mlp.gate_proj, mlp.up_proj, mlp.down_proj, in, out, rows, accumulate,
                    gate_.data(), up_.data());
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

  HELIX_RETURN_IF_ERROR(route_tokens(ctx(), s, L.router, L.router_bias, xn_.data(), rows,
                                     router_logits_.data(), expert_ids_.data(), expert_w_.data()));
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
