// The per-layer program of the single-worker decoder: attention (GQA, MLA absorbed) and FFN
// (dense SwiGLU, DeepSeek-V3 MoE). Follows ARCHITECTURE.md section 2 with every grid of size 1.
#include <algorithm>
#include <numeric>

#include "kernels/attention.hpp"
#include "kernels/gemm.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/router.hpp"
#include "kernels/swiglu.hpp"
#include "model/decoder.hpp"
#include "model/step_ops.hpp"

namespace helix::model {
namespace {
std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}
}  // namespace

// Attention of every item over its own blocks. q: [rows, Q, key_dim]; out: [rows, Q, value_dim].
status decoder::attend(std::int64_t layer_idx, std::span<const batch_item> items, const float* q,
                       float* out) {
  const model_spec& s = w_.spec;
  const kv_page_layout& layout = kv_.layout();
  std::int64_t row = 0;
  for (const batch_item& it : items) {
    const block_table& t = seqs_.at(it.seq).table;
    kernels::attention_partial_params a;
    a.num_queries = static_cast<std::int64_t>(it.tokens.size());
    a.q = q + row * s.num_q_heads * layout.key_dim;
    a.query_pos = positions_.data() + row;
    a.num_q_heads = s.num_q_heads;
    a.layout = layout;
    a.kv_pool = kv_.layer_pool(layer_idx);
    a.blocks = t.blocks().data();
    a.num_blocks = static_cast<std::int64_t>(t.blocks().size());
    a.softmax_scale = static_cast<float>(s.softmax_scale());
    a.causal = true;
    a.out = out + row * s.num_q_heads * layout.value_dim;
    a.lse = lse_.data() + row * s.num_q_heads;
    const std::size_t need = kernels::attention_workspace_bytes(a, ctx());
    // Grows with the longest context seen, so steady-state decoding does not allocate.
    if (attn_workspace_.size() < need) attn_workspace_.resize(need);
    a.workspace = attn_workspace_.data();
    a.workspace_bytes = attn_workspace_.size();
    HELIX_RETURN_IF_ERROR(kernels::attention_partial(a, ctx()));
    row += a.num_queries;
  }
  return ok_status();
}

status decoder::attention_gqa(std::int64_t layer_idx, std::span<const batch_item> items,
                              std::int64_t rows) {
  const model_spec& s = w_.spec;
  const layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t kv_width = s.num_kv_heads * s.head_dim;
  HELIX_RETURN_IF_ERROR(project_gqa(ctx(), s, rope_, L.q_proj, L.k_proj, L.v_proj, xn_.data(),
                                    positions_.data(), rows, q_.data(), k_.data(), v_.data()));
  for (std::int64_t i = 0; i < rows; ++i) {
    const row_info& ri = rows_[sz(i)];
    kv_.write_token(layer_idx, ri.slot, ri.slot_offset, k_.data() + i * kv_width,
                    v_.data() + i * kv_width);
  }
  HELIX_RETURN_IF_ERROR(attend(layer_idx, items, q_.data(), attn_.data()));
  return linear(attn_.data(), 0, L.o_proj, x_.data(), 0, rows, /*accumulate=*/true);
}

status decoder::attention_mla(std::int64_t layer_idx, std::span<const batch_item> items,
                              std::int64_t rows) {
  const model_spec& s = w_.spec;
  const mla_spec& m = s.mla;
  const layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t nq = s.num_q_heads;
  const std::int64_t key_dim = s.kv_key_dim();  // kv_lora_rank + qk_rope_head_dim

  const mla_projection proj{&L.q_a_proj, &L.q_a_norm,  &L.q_b_proj,
                            &L.q_proj,   &L.kv_a_proj, &L.kv_a_norm};
  HELIX_RETURN_IF_ERROR(project_mla(ctx(), s, rope_, proj, xn_.data(), positions_.data(), rows,
                                    qa_.data(), q_.data(), kva_.data()));
  for (std::int64_t i = 0; i < rows; ++i) {
    const row_info& ri = rows_[sz(i)];
    kv_.write_token(layer_idx, ri.slot, ri.slot_offset, kva_.data() + i * key_dim, nullptr);
  }
  // Absorbed queries in k_: [rows, Q, q_latent (kv_lora) | rotated q_rope].
  float* q_abs = k_.data();
  HELIX_RETURN_IF_ERROR(absorb_mla_queries(ctx(), s, rope_, w_uk_t_[sz(layer_idx)], q_.data(),
                                           positions_.data(), rows, nq, q_abs));
  // Attention in latent space, then W_UV per head (rows h*(nope+v)+nope.. of kv_b_proj), o_proj.
  HELIX_RETURN_IF_ERROR(attend(layer_idx, items, q_abs, lat_.data()));
  HELIX_RETURN_IF_ERROR(mla_values(ctx(), s, L.kv_b_proj, m.qk_nope_head_dim + m.v_head_dim,
                                   m.qk_nope_head_dim, lat_.data(), rows, nq, attn_.data()));
  return linear(attn_.data(), 0, L.o_proj, x_.data(), 0, rows, /*accumulate=*/true);
}

status decoder::ffn_dense(const mlp_weights& mlp, const float* in, float* out, std::int64_t rows,
                          bool accumulate) {
  return swiglu_mlp(ctx(), mlp.gate_proj, mlp.up_proj, mlp.down_proj, in, out, rows, accumulate,
                    gate_.data(), up_.data());
}

// DeepSeek-V3 MoE: routed experts weighted by the router, plus the shared expert, added to the
// residual. Tokens are grouped per expert so each expert's weights are read once per step; every
// token's sum runs over its experts in expert-id order, then the shared expert, whatever the batch.
status decoder::ffn_moe(std::int64_t layer_idx, std::int64_t rows) {
  const model_spec& s = w_.spec;
  const moe_spec& e = s.moe;
  const layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t h = s.hidden;
  const std::int64_t k = e.experts_per_token;

  HELIX_RETURN_IF_ERROR(route_tokens(ctx(), s, L.router, L.router_bias, xn_.data(), rows,
                                     router_logits_.data(), expert_ids_.data(), expert_w_.data()));
  for (std::int64_t x = 0; x < e.num_experts; ++x) {
    std::int64_t n = 0;  // (row * k + choice) entries routed to expert x
    for (std::int64_t i = 0; i < rows * k; ++i) {
      if (expert_ids_[sz(i)] == x) expert_rows_[sz(n++)] = i;
    }
    if (n == 0) continue;
    for (std::int64_t j = 0; j < n; ++j) {
      std::copy_n(xn_.data() + (expert_rows_[sz(j)] / k) * h, h, expert_in_.data() + j * h);
    }
    HELIX_RETURN_IF_ERROR(ffn_dense(L.experts[sz(x)], expert_in_.data(), expert_tmp_.data(), n,
                                    /*accumulate=*/false));
    for (std::int64_t j = 0; j < n; ++j) {
      std::copy_n(expert_tmp_.data() + j * h, h, expert_out_.data() + expert_rows_[sz(j)] * h);
    }
  }
  const bool has_shared = e.num_shared_experts > 0;
  if (has_shared) {
    HELIX_RETURN_IF_ERROR(ffn_dense(L.shared, xn_.data(), expert_tmp_.data(), rows, false));
  }
  for (std::int64_t i = 0; i < rows; ++i) {
    float* out = x_.data() + i * h;
    for (std::int64_t c = 0; c < h; ++c) {
      float routed = 0.0f;
      for (std::int64_t j = 0; j < k; ++j) {
        routed += expert_w_[sz(i * k + j)] * expert_out_[sz((i * k + j) * h + c)];
      }
      out[c] += routed + (has_shared ? expert_tmp_[sz(i * h + c)] : 0.0f);
    }
  }
  return ok_status();
}

}  // namespace helix::model
