#include "model/step_ops.hpp"

#include <algorithm>
#include <array>

#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/rope.hpp"
#include "kernels/router.hpp"
#include "kernels/swiglu.hpp"

namespace helix::model {

void set_weight(kernels::gemm_params& g, const tensor& w, std::int64_t first_row) {
  const std::int64_t cols = w.dims().rank == 2 ? w.dims()[1] : w.numel();
  g.w = static_cast<const std::uint8_t*>(w.data()) +
        static_cast<std::size_t>(first_row * cols) * dtype_bytes(w.type());
  g.w_type = w.type();
  if (const block_scales* s = w.scales()) {
    g.w_scales = s->row_scales.data() + first_row * s->per_row;
    g.w_scale_stride = s->per_row;
    g.w_block_k = s->block_k;
    g.w_scale_phase = s->phase;
  }
}

namespace {

// y [rows, w rows] (+)= x [rows, w cols] . w^T as gemm arguments (strides 0: packed).
kernels::gemm_params linear_params(const float* x, std::int64_t x_stride, const tensor& w, float* y,
                                   std::int64_t y_stride, std::int64_t rows, bool accumulate) {
  kernels::gemm_params g;
  g.x = x;
  g.x_stride = x_stride;
  set_weight(g, w, 0);
  g.y = y;
  g.y_stride = y_stride;
  g.m = rows;
  g.n = w.dims()[0];
  g.k = w.dims()[1];
  g.accumulate = accumulate;
  return g;
}

}  // namespace

status linear(const kernels::exec_context& ctx, const float* x, std::int64_t x_stride,
              const tensor& w, float* y, std::int64_t y_stride, std::int64_t rows,
              bool accumulate) {
  return kernels::gemm(linear_params(x, x_stride, w, y, y_stride, rows, accumulate), ctx);
}

status embed_tokens(const kernels::exec_context& ctx, const tensor& table, const std::int32_t* ids,
                    std::int64_t rows, float* out) {
  kernels::embedding_params e;
  e.ids = ids;
  e.rows = rows;
  e.table = table.data();
  e.table_type = table.type();
  e.vocab_begin = 0;
  e.vocab_end = table.dims()[0];
  e.dim = table.dims()[1];
  e.out = out;
  return kernels::embedding(e, ctx);
}

status rms_norm(const kernels::exec_context& ctx, const float* x, const tensor& weight, float* out,
                std::int64_t rows, double eps) {
  kernels::rmsnorm_params n;
  n.x = x;
  n.weight = weight.data();
  n.out = out;
  n.rows = rows;
  n.dim = weight.numel();
  n.eps = static_cast<float>(eps);
  return kernels::rmsnorm(n, ctx);
}

kernels::rope_params rope_params_for(const model_spec& spec, const kernels::rope_table& table,
                                     const std::int64_t* positions, std::int64_t rows,
                                     std::int64_t rot_dim) {
  kernels::rope_params r;
  r.rows = rows;
  r.rot_dim = rot_dim;
  r.positions = positions;
  r.inv_freq = table.inv_freq.data();
  r.attention_factor = table.attention_factor;
  r.interleave = spec.rope.interleave;
  return r;
}

status swiglu_mlp(const kernels::exec_context& ctx, const tensor& gate_proj, const tensor& up_proj,
                  const tensor& down_proj, const float* in, float* out, std::int64_t rows,
                  bool accumulate, float* gate_ws, float* up_ws) {
  const std::int64_t f = gate_proj.dims()[0];
  const std::int64_t h = down_proj.dims()[0];
  // gate and up read the same input: one parallel region.
  const std::array<kernels::gemm_params, 2> gate_up = {
      linear_params(in, h, gate_proj, gate_ws, f, rows, false),
      linear_params(in, h, up_proj, up_ws, f, rows, false)};
  HELIX_RETURN_IF_ERROR(kernels::gemm_group(gate_up, ctx));
  kernels::swiglu_params sw;
  sw.gate = gate_ws;
  sw.up = up_ws;
  sw.out = gate_ws;
  sw.rows = rows;
  sw.dim = f;
  HELIX_RETURN_IF_ERROR(kernels::swiglu(sw, ctx));
  return linear(ctx, gate_ws, f, down_proj, out, h, rows, accumulate);
}

status route_tokens(const kernels::exec_context& ctx, const model_spec& spec, const tensor& router,
                    const tensor& bias, const float* xn, std::int64_t rows, float* router_logits,
                    std::int32_t* expert_ids, float* expert_weights) {
  const moe_spec& e = spec.moe;
  const std::int64_t k = e.experts_per_token;
  HELIX_RETURN_IF_ERROR(linear(ctx, xn, 0, router, router_logits, 0, rows));
  kernels::router_params rp;
  rp.logits = router_logits;
  rp.bias = bias.numel() > 0 ? bias.as<float>() : nullptr;
  rp.rows = rows;
  rp.num_experts = e.num_experts;
  rp.top_k = k;
  rp.num_groups = e.num_groups;
  rp.topk_groups = e.topk_groups;
  rp.scoring = e.scoring;
  rp.norm_topk_prob = e.norm_topk_prob;
  rp.routed_scaling_factor = static_cast<float>(e.routed_scaling_factor);
  rp.expert_ids = expert_ids;
  rp.expert_weights = expert_weights;
  HELIX_RETURN_IF_ERROR(kernels::route_experts(rp, ctx));
  // Ascending expert id per token: the fixed order in which its terms are summed.
  for (std::int64_t i = 0; i < rows; ++i) {
    std::int32_t* ids = expert_ids + i * k;
    float* ws = expert_weights + i * k;
    for (std::int64_t a = 1; a < k; ++a) {
      for (std::int64_t b = a; b > 0 && ids[b - 1] > ids[b]; --b) {
        std::swap(ids[b - 1], ids[b]);
        std::swap(ws[b - 1], ws[b]);
      }
    }
  }
  return ok_status();
}

status project_gqa(const kernels::exec_context& ctx, const model_spec& spec,
                   const kernels::rope_table& rope, const tensor& q_proj, const tensor& k_proj,
                   const tensor& v_proj, const float* xn, const std::int64_t* positions,
                   std::int64_t rows, float* q, float* k, float* v) {
  const std::int64_t d = spec.head_dim;
  const std::int64_t q_heads = q_proj.dims()[0] / d;
  const std::int64_t kv_heads = k_proj.dims()[0] / d;
  // q, k and v read the same input: one parallel region.
  const std::array<kernels::gemm_params, 3> qkv = {linear_params(xn, 0, q_proj, q, 0, rows, false),
                                                   linear_params(xn, 0, k_proj, k, 0, rows, false),
                                                   linear_params(xn, 0, v_proj, v, 0, rows, false)};
  HELIX_RETURN_IF_ERROR(kernels::gemm_group(qkv, ctx));
  kernels::rope_params r = rope_params_for(spec, rope, positions, rows, d);
  r.head_stride = d;
  r.x = q;
  r.row_stride = q_heads * d;
  r.num_heads = q_heads;
  HELIX_RETURN_IF_ERROR(kernels::rope(r, ctx));
  r.x = k;
  r.row_stride = kv_heads * d;
  r.num_heads = kv_heads;
  return kernels::rope(r, ctx);
}

status project_mla(const kernels::exec_context& ctx, const model_spec& spec,
                   const kernels::rope_table& rope, const mla_projection& w, const float* xn,
                   const std::int64_t* positions, std::int64_t rows, float* qa, float* q,
                   float* kva) {
  const mla_spec& m = spec.mla;
  const std::int64_t key_dim = spec.kv_key_dim();  // kv_lora_rank + qk_rope_head_dim
  if (m.q_lora_rank > 0) {
    HELIX_RETURN_IF_ERROR(linear(ctx, xn, 0, *w.q_a_proj, qa, 0, rows));
    kernels::rmsnorm_params n;
    n.x = qa;
    n.weight = w.q_a_norm->data();
    n.out = qa;
    n.rows = rows;
    n.dim = m.q_lora_rank;
    n.eps = mla_norm_eps;
    HELIX_RETURN_IF_ERROR(kernels::rmsnorm(n, ctx));
    HELIX_RETURN_IF_ERROR(linear(ctx, qa, 0, *w.q_b_proj, q, 0, rows));
  } else {
    HELIX_RETURN_IF_ERROR(linear(ctx, xn, 0, *w.q_proj, q, 0, rows));
  }
  HELIX_RETURN_IF_ERROR(linear(ctx, xn, 0, *w.kv_a_proj, kva, 0, rows));
  kernels::rmsnorm_params n;
  n.x = kva;
  n.x_stride = key_dim;
  n.weight = w.kv_a_norm->data();
  n.out = kva;
  n.out_stride = key_dim;
  n.rows = rows;
  n.dim = m.kv_lora_rank;
  n.eps = mla_norm_eps;
  HELIX_RETURN_IF_ERROR(kernels::rmsnorm(n, ctx));
  kernels::rope_params r = rope_params_for(spec, rope, positions, rows, m.qk_rope_head_dim);
  r.x = kva;
  r.row_stride = key_dim;
  r.num_heads = 1;
  r.head_stride = key_dim;
  r.rot_offset = m.kv_lora_rank;
  return kernels::rope(r, ctx);
}

status absorb_mla_queries(const kernels::exec_context& ctx, const model_spec& spec,
                          const kernels::rope_table& rope, const tensor& w_uk_t, const float* q,
                          const std::int64_t* positions, std::int64_t rows, std::int64_t heads,
                          float* q_abs) {
  const mla_spec& m = spec.mla;
  const std::int64_t qk = m.qk_head_dim();
  const std::int64_t key_dim = spec.kv_key_dim();
  const auto w_head_bytes =
      static_cast<std::size_t>(m.kv_lora_rank * m.qk_nope_head_dim) * dtype_bytes(w_uk_t.type());
  for (std::int64_t h = 0; h < heads; ++h) {
    kernels::gemm_params g;
    g.x = q + h * qk;
    g.x_stride = heads * qk;
    g.w = static_cast<const std::uint8_t*>(w_uk_t.data()) +
          static_cast<std::size_t>(h) * w_head_bytes;
    g.w_type = w_uk_t.type();  // never fp8: rank_program builds it dequantized
    g.y = q_abs + h * key_dim;
    g.y_stride = heads * key_dim;
    g.m = rows;
    g.n = m.kv_lora_rank;
    g.k = m.qk_nope_head_dim;
    HELIX_RETURN_IF_ERROR(kernels::gemm(g, ctx));
    for (std::int64_t i = 0; i < rows; ++i) {
      std::copy_n(q + (i * heads + h) * qk + m.qk_nope_head_dim, m.qk_rope_head_dim,
                  q_abs + (i * heads + h) * key_dim + m.kv_lora_rank);
    }
  }
  kernels::rope_params r = rope_params_for(spec, rope, positions, rows, m.qk_rope_head_dim);
  r.x = q_abs;
  r.row_stride = heads * key_dim;
  r.num_heads = heads;
  r.head_stride = key_dim;
  r.rot_offset = m.kv_lora_rank;
  return kernels::rope(r, ctx);
}

status mla_values(const kernels::exec_context& ctx, const model_spec& spec, const tensor& w,
                  std::int64_t head_row_stride, std::int64_t head_row_offset, const float* latent,
                  std::int64_t rows, std::int64_t heads, float* out) {
  const mla_spec& m = spec.mla;
  for (std::int64_t h = 0; h < heads; ++h) {
    kernels::gemm_params g;
    g.x = latent + h * m.kv_lora_rank;
    g.x_stride = heads * m.kv_lora_rank;
    set_weight(g, w, h * head_row_stride + head_row_offset);
    g.y = out + h * m.v_head_dim;
    g.y_stride = heads * m.v_head_dim;
    g.m = rows;
    g.n = m.v_head_dim;
    g.k = m.kv_lora_rank;
    HELIX_RETURN_IF_ERROR(kernels::gemm(g, ctx));
  }
  return ok_status();
}

std::int64_t gather_logit_rows(std::span<const batch_item> items, float* x, std::int64_t hidden) {
  // In place: rows only move towards the front.
  std::int64_t src = 0;
  std::int64_t dst = 0;
  for (const batch_item& it : items) {
    const auto n = static_cast<std::int64_t>(it.tokens.size());
    const std::int64_t first = it.all_logits ? src : src + n - 1;
    for (std::int64_t r = first; r < src + n; ++r, ++dst) {
      if (dst != r) std::copy_n(x + r * hidden, hidden, x + dst * hidden);
    }
    src += n;
  }
  return dst;
}

}  // namespace helix::model
