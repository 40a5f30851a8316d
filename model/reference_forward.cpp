#include "model/reference_forward.hpp"
#include "model/step_ops.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/rope.hpp"
#include "kernels/router.hpp"
#include "kernels/swiglu.hpp"

namespace helix::model {
namespace {

using vec = std::vector<float>;
std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}
const kernels::exec_context ref_ctx{kernels::backend::reference, nullptr, nullptr};

// y [t, out] = x [t, in] (row stride x_stride) @ w^T
status matmul(const float* x, std::int64_t x_stride, const tensor& w, float* y, std::int64_t t) {
  kernels::gemm_params g;
  g.x = x;
  g.x_stride = x_stride;
  set_weight(g, w, 0);
  g.y = y;
  g.m = t;
  g.n = w.dims()[0];
  g.k = w.dims()[1];
  return kernels::gemm(g, ref_ctx);
}
status matmul(const float* x, const tensor& w, float* y, std::int64_t t) {
  return matmul(x, 0, w, y, t);
}

status rms(const float* x, std::int64_t stride, const tensor& w, float* out, std::int64_t t,
           std::int64_t dim, float eps) {
  kernels::rmsnorm_params n;
  n.x = x;
  n.x_stride = stride;
  n.weight = w.data();
  n.out = out;
  n.out_stride = stride;
  n.rows = t;
  n.dim = dim;
  n.eps = eps;
  return kernels::rmsnorm(n, ref_ctx);
}

status rope(float* x, std::int64_t t, std::int64_t row_stride, std::int64_t heads,
            std::int64_t head_stride, std::int64_t offset, std::int64_t rot_dim,
            const std::vector<std::int64_t>& pos, const kernels::rope_table& table,
            bool interleave) {
  kernels::rope_params r;
  r.x = x;
  r.rows = t;
  r.row_stride = row_stride;
  r.num_heads = heads;
  r.head_stride = head_stride;
  r.rot_offset = offset;
  r.rot_dim = rot_dim;
  r.positions = pos.data();
  r.inv_freq = table.inv_freq.data();
  r.attention_factor = table.attention_factor;
  r.interleave = interleave;
  return kernels::rope(r, ref_ctx);
}

// Dense causal attention for one head: out[i] = sum_{j<=i} softmax_j(scale * q_i.k_j) v_j.
void causal_attention(const float* q, std::int64_t q_stride, const float* k, std::int64_t k_stride,
                      const float* v, std::int64_t v_stride, std::int64_t t, std::int64_t dk,
                      std::int64_t dv, double scale, float* out, std::int64_t out_stride) {
  std::vector<double> p(sz(t));
  for (std::int64_t i = 0; i < t; ++i) {
    double mx = -std::numeric_limits<double>::infinity();
    for (std::int64_t j = 0; j <= i; ++j) {
      double dot = 0.0;
      for (std::int64_t d = 0; d < dk; ++d)
        dot += double{q[i * q_stride + d]} * k[j * k_stride + d];
      p[sz(j)] = dot * scale;
      mx = std::max(mx, p[sz(j)]);
    }
    double sum = 0.0;
    for (std::int64_t j = 0; j <= i; ++j) sum += (p[sz(j)] = std::exp(p[sz(j)] - mx));
    for (std::int64_t d = 0; d < dv; ++d) {
      double acc = 0.0;
      for (std::int64_t j = 0; j <= i; ++j) acc += p[sz(j)] * v[j * v_stride + d];
      out[i * out_stride + d] = static_cast<float>(acc / sum);
    }
  }
}

status mlp(const mlp_weights& w, const float* x, float* out, std::int64_t t) {
  const std::int64_t f = w.gate_proj.dims()[0];
  vec gate(sz(t * f)), up(sz(t * f));
  HELIX_RETURN_IF_ERROR(matmul(x, w.gate_proj, gate.data(), t));
  HELIX_RETURN_IF_ERROR(matmul(x, w.up_proj, up.data(), t));
  kernels::swiglu_params s;
  s.gate = gate.data();
  s.up = up.data();
  s.out = gate.data();
  s.rows = t;
  s.dim = f;
  HELIX_RETURN_IF_ERROR(kernels::swiglu(s, ref_ctx));
  return matmul(gate.data(), w.down_proj, out, t);
}

status attention_gqa(const model_spec& s, const layer_weights& L, const vec& xn, std::int64_t t,
                     const std::vector<std::int64_t>& pos, const kernels::rope_table& table,
                     vec& attn_out) {
  const std::int64_t d = s.head_dim;
  vec q(sz(t * s.num_q_heads * d)), k(sz(t * s.num_kv_heads * d)), v(k.size());
  HELIX_RETURN_IF_ERROR(matmul(xn.data(), L.q_proj, q.data(), t));
  HELIX_RETURN_IF_ERROR(matmul(xn.data(), L.k_proj, k.data(), t));
  HELIX_RETURN_IF_ERROR(matmul(xn.data(), L.v_proj, v.data(), t));
  HELIX_RETURN_IF_ERROR(
      rope(q.data(), t, s.num_q_heads * d, s.num_q_heads, d, 0, d, pos, table, s.rope.interleave));
  HELIX_RETURN_IF_ERROR(rope(k.data(), t, s.num_kv_heads * d, s.num_kv_heads, d, 0, d, pos, table,
                             s.rope.interleave));
  attn_out.assign(sz(t * s.num_q_heads * d), 0.0f);
  const std::int64_t group = s.num_q_heads / s.num_kv_heads;
  for (std::int64_t h = 0; h < s.num_q_heads; ++h) {
    const std::int64_t kvh = h / group;
    causal_attention(q.data() + h * d, s.num_q_heads * d, k.data() + kvh * d, s.num_kv_heads * d,
                     v.data() + kvh * d, s.num_kv_heads * d, t, d, d, s.softmax_scale(),
                     attn_out.data() + h * d, s.num_q_heads * d);
  }
  return ok_status();
}

status attention_mla(const model_spec& s, const layer_weights& L, const vec& xn, std::int64_t t,
                     const std::vector<std::int64_t>& pos, const kernels::rope_table& table,
                     vec& attn_out) {
  const mla_spec& m = s.mla;
  const std::int64_t nq = s.num_q_heads;
  const std::int64_t qk = m.qk_head_dim();
  const std::int64_t kv_a_dim = m.kv_lora_rank + m.qk_rope_head_dim;
  vec q(sz(t * nq * qk));
  if (m.q_lora_rank > 0) {
    vec qa(sz(t * m.q_lora_rank));
    HELIX_RETURN_IF_ERROR(matmul(xn.data(), L.q_a_proj, qa.data(), t));
    HELIX_RETURN_IF_ERROR(rms(qa.data(), 0, L.q_a_norm, qa.data(), t, m.q_lora_rank, 1e-6f));
    HELIX_RETURN_IF_ERROR(matmul(qa.data(), L.q_b_proj, q.data(), t));
  } else {
    HELIX_RETURN_IF_ERROR(matmul(xn.data(), L.q_proj, q.data(), t));
  }
  vec kva(sz(t * kv_a_dim));
  HELIX_RETURN_IF_ERROR(matmul(xn.data(), L.kv_a_proj, kva.data(), t));
  HELIX_RETURN_IF_ERROR(
      rms(kva.data(), kv_a_dim, L.kv_a_norm, kva.data(), t, m.kv_lora_rank, 1e-6f));
  // Decompress: kv [t, Q, qk_nope + v_head] = latent @ kv_b_proj^T.
  const std::int64_t kvb = m.qk_nope_head_dim + m.v_head_dim;
  vec kv(sz(t * nq * kvb));
  HELIX_RETURN_IF_ERROR(matmul(kva.data(), kv_a_dim, L.kv_b_proj, kv.data(), t));
  HELIX_RETURN_IF_ERROR(rope(q.data(), t, nq * qk, nq, qk, m.qk_nope_head_dim, m.qk_rope_head_dim,
                             pos, table, s.rope.interleave));
  HELIX_RETURN_IF_ERROR(rope(kva.data(), t, kv_a_dim, 1, kv_a_dim, m.kv_lora_rank,
                             m.qk_rope_head_dim, pos, table, s.rope.interleave));
  // Full keys per head: [k_nope | k_rope (shared by heads)].
  vec k(sz(t * nq * qk)), v(sz(t * nq * m.v_head_dim));
  for (std::int64_t i = 0; i < t; ++i) {
    for (std::int64_t h = 0; h < nq; ++h) {
      const float* src = kv.data() + (i * nq + h) * kvb;
      float* kd = k.data() + (i * nq + h) * qk;
      std::copy_n(src, m.qk_nope_head_dim, kd);
      std::copy_n(kva.data() + i * kv_a_dim + m.kv_lora_rank, m.qk_rope_head_dim,
                  kd + m.qk_nope_head_dim);
      std::copy_n(src + m.qk_nope_head_dim, m.v_head_dim, v.data() + (i * nq + h) * m.v_head_dim);
    }
  }
  attn_out.assign(sz(t * nq * m.v_head_dim), 0.0f);
  for (std::int64_t h = 0; h < nq; ++h) {
    causal_attention(q.data() + h * qk, nq * qk, k.data() + h * qk, nq * qk,
                     v.data() + h * m.v_head_dim, nq * m.v_head_dim, t, qk, m.v_head_dim,
                     s.softmax_scale(), attn_out.data() + h * m.v_head_dim, nq * m.v_head_dim);
  }
  return ok_status();
}

status moe(const model_spec& s, const layer_weights& L, const vec& xn, std::int64_t t, vec& out) {
  const moe_spec& e = s.moe;
  const std::int64_t h = s.hidden;
  vec logits(sz(t * e.num_experts));
  HELIX_RETURN_IF_ERROR(matmul(xn.data(), L.router, logits.data(), t));
  std::vector<std::int32_t> ids(sz(t * e.experts_per_token));
  vec w(ids.size());
  kernels::router_params rp;
  rp.logits = logits.data();
  rp.bias = L.router_bias.numel() > 0 ? L.router_bias.as<float>() : nullptr;
  rp.rows = t;
  rp.num_experts = e.num_experts;
  rp.top_k = e.experts_per_token;
  rp.num_groups = e.num_groups;
  rp.topk_groups = e.topk_groups;
  rp.scoring = e.scoring;
  rp.norm_topk_prob = e.norm_topk_prob;
  rp.routed_scaling_factor = static_cast<float>(e.routed_scaling_factor);
  rp.expert_ids = ids.data();
  rp.expert_weights = w.data();
  HELIX_RETURN_IF_ERROR(kernels::route_experts(rp, ref_ctx));
  out.assign(sz(t * h), 0.0f);
  vec y(sz(h));
  for (std::int64_t i = 0; i < t; ++i) {
    for (std::int64_t j = 0; j < e.experts_per_token; ++j) {
      const std::int64_t c = i * e.experts_per_token + j;
      HELIX_RETURN_IF_ERROR(mlp(L.experts[sz(ids[sz(c)])], xn.data() + i * h, y.data(), 1));
      for (std::int64_t d = 0; d < h; ++d) out[sz(i * h + d)] += w[sz(c)] * y[sz(d)];
    }
  }
  if (e.num_shared_experts > 0) {
    vec shared(sz(t * h));
    HELIX_RETURN_IF_ERROR(mlp(L.shared, xn.data(), shared.data(), t));
    for (std::size_t d = 0; d < out.size(); ++d) out[d] += shared[d];
  }
  return ok_status();
}

}  // namespace

expected<tensor> reference_forward(const model_weights& weights,
                                   std::span<const std::int32_t> tokens) {
  const model_spec& s = weights.spec;
  const auto t = static_cast<std::int64_t>(tokens.size());
  if (t == 0) return invalid_argument("reference_forward: empty sequence");
  for (std::int32_t id : tokens) {
    if (id < 0 || id >= s.vocab) {
      return invalid_argument("reference_forward: token id {} outside [0, {})", id, s.vocab);
    }
  }
  const std::int64_t h = s.hidden;
  std::vector<std::int64_t> pos(sz(t));
  for (std::int64_t i = 0; i < t; ++i) pos[sz(i)] = i;
  const kernels::rope_table table =
      kernels::make_rope_table(s.rope, s.is_mla() ? s.mla.qk_rope_head_dim : s.head_dim);

  vec x(sz(t * h)), xn(sz(t * h)), attn, proj(sz(t * h)), ffn(sz(t * h));
  kernels::embedding_params e;
  e.ids = tokens.data();
  e.rows = t;
  e.table = weights.embed.data();
  e.table_type = weights.embed.type();
  e.vocab_end = s.vocab;
  e.dim = h;
  e.out = x.data();
  HELIX_RETURN_IF_ERROR(kernels::embedding(e, ref_ctx));
  const float eps = static_cast<float>(s.rms_norm_eps);
  for (std::int64_t l = 0; l < s.num_layers; ++l) {
    const layer_weights& L = weights.layers[sz(l)];
    HELIX_RETURN_IF_ERROR(rms(x.data(), 0, L.input_norm, xn.data(), t, h, eps));
    HELIX_RETURN_IF_ERROR(s.is_mla() ? attention_mla(s, L, xn, t, pos, table, attn)
                                     : attention_gqa(s, L, xn, t, pos, table, attn));
    HELIX_RETURN_IF_ERROR(matmul(attn.data(), L.o_proj, proj.data(), t));
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
    HELIX_RETURN_IF_ERROR(rms(x.data(), 0, L.post_attn_norm, xn.data(), t, h, eps));
    if (s.layer_is_moe(l)) {
      HELIX_RETURN_IF_ERROR(moe(s, L, xn, t, ffn));
    } else {
      HELIX_RETURN_IF_ERROR(mlp(L.mlp, xn.data(), ffn.data(), t));
    }
    for (std::size_t i = 0; i < x.size(); ++i) x[i] += ffn[i];
  }
  HELIX_RETURN_IF_ERROR(rms(x.data(), 0, weights.final_norm, xn.data(), t, h, eps));
  tensor logits(dtype::f32, {t, s.vocab});
  HELIX_RETURN_IF_ERROR(matmul(xn.data(), weights.lm_head_or_embed(), logits.as<float>(), t));
  return logits;
}

}  // namespace helix::model
