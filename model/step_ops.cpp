#include "model/step_ops.hpp"

#include <algorithm>

#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/rmsnorm.hpp"

namespace helix::model {

status linear(const kernels::exec_context& ctx, const float* x, std::int64_t x_stride,
              const tensor& w, float* y, std::int64_t y_stride, std::int64_t rows,
              bool accumulate) {
  kernels::gemm_params g;
  g.x = x;
  g.x_stride = x_stride;
  g.w = w.data();
  g.w_type = w.type();
  g.y = y;
  g.y_stride = y_stride;
  g.m = rows;
  g.n = w.dims()[0];
  g.k = w.dims()[1];
  g.accumulate = accumulate;
  return kernels::gemm(g, ctx);
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

std::int64_t gather_logit_rows(std::span<const decoder::batch_item> items, float* x,
                               std::int64_t hidden) {
  // In place: rows only move towards the front.
  std::int64_t src = 0;
  std::int64_t dst = 0;
  for (const decoder::batch_item& it : items) {
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
