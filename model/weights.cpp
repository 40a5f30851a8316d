#include "model/weights.hpp"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/memory.hpp"
#include "core/rng.hpp"

namespace helix::model {
namespace {

tensor make(dtype t, std::int64_t rows, std::int64_t cols) {
  return tensor(t, {rows, cols});
}
tensor make_vec(std::int64_t n) {
  return tensor(dtype::f32, {n});
}

mlp_weights make_mlp(dtype t, std::int64_t hidden, std::int64_t ffn) {
  return {make(t, ffn, hidden), make(t, ffn, hidden), make(t, hidden, ffn)};
}

}  // namespace

dtype embedding_type(dtype weight_type) {
  return weight_type == dtype::fp8_e4m3 ? dtype::bf16 : weight_type;
}

weights_size weights_bytes(const model_spec& spec, dtype weight_type) {
  const auto d = [](std::int64_t v) { return static_cast<double>(v); };
  // A linear weight [rows, cols] as stored (FP8: a byte each and an f32 scale per row and block
  // of columns).
  const auto lin = [&](std::int64_t rows, std::int64_t cols) {
    if (weight_type != dtype::fp8_e4m3) return d(rows) * d(cols) * d(dtype_bytes(weight_type));
    return d(rows) * (d(cols) + 4.0 * d((cols + fp8_block_cols - 1) / fp8_block_cols));
  };
  const std::int64_t h = spec.hidden;
  const std::int64_t nq = spec.num_q_heads;
  weights_size out;
  out.embedding = d(spec.vocab) * d(h) * d(dtype_bytes(embedding_type(weight_type)));
  out.replicated = out.embedding + d(h) * 4.0;                      // embedding, final norm
  out.split = spec.tie_word_embeddings ? 0.0 : lin(spec.vocab, h);  // LM head
  for (std::int64_t l = 0; l < spec.num_layers; ++l) {
    out.replicated += 2.0 * d(h) * 4.0;  // the layer's two norms
    if (spec.is_mla()) {
      const mla_spec& m = spec.mla;
      const std::int64_t qk = m.qk_head_dim();
      out.replicated += (m.q_lora_rank > 0 ? lin(m.q_lora_rank, h) : 0.0) +
                        lin(m.kv_lora_rank + m.qk_rope_head_dim, h) +
                        (d(m.q_lora_rank) + d(m.kv_lora_rank)) * 4.0;
      out.per_column += (m.q_lora_rank > 0 ? lin(nq * qk, m.q_lora_rank) : lin(nq * qk, h)) +
                        lin(nq * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank);
      out.split += lin(h, nq * m.v_head_dim);
    } else {
      out.per_column += lin((nq + 2 * spec.num_kv_heads) * spec.head_dim, h);
      out.split += lin(h, nq * spec.head_dim);
    }
    if (spec.layer_is_moe(l)) {
      const moe_spec& e = spec.moe;
      out.replicated +=
          (d(e.num_experts) * d(h) + (e.score_correction_bias ? d(e.num_experts) : 0.0)) * 4.0;
      const double mlp = 2.0 * lin(e.expert_ffn, h) + lin(h, e.expert_ffn);
      const std::int64_t shared = e.num_shared_experts * e.expert_ffn;  // one MLP
      out.split +=
          d(e.num_experts) * mlp + (shared > 0 ? 2.0 * lin(shared, h) + lin(h, shared) : 0.0);
      out.experts += d(e.num_experts) * mlp;
    } else {
      out.split += 2.0 * lin(spec.ffn, h) + lin(h, spec.ffn);
    }
  }
  return out;
}

double weights_read_per_step(const model_spec& spec, dtype weight_type, std::int64_t tpa,
                             std::int64_t num_ranks, std::int64_t batch) {
  const weights_size s = weights_bytes(spec, weight_type);
  const double w = static_cast<double>(dtype_bytes(embedding_type(weight_type)));
  const double h = static_cast<double>(spec.hidden);
  const double n = static_cast<double>(std::max<std::int64_t>(num_ranks, 1));
  const double b = static_cast<double>(std::max<std::int64_t>(batch, 1));
  double experts = s.experts;
  if (s.experts > 0.0 && spec.moe.num_experts > 0) {
    const double e = static_cast<double>(spec.moe.num_experts);
    const double active = std::min(e, b * static_cast<double>(spec.moe.experts_per_token));
    experts = s.experts * active / e;
  }
  const double lm_head = spec.tie_word_embeddings ? s.embedding / n : 0.0;
  return (s.replicated - s.embedding) + b * h * w + lm_head +
         s.per_column / static_cast<double>(std::max<std::int64_t>(tpa, 1)) +
         (s.split - s.experts + experts) / n;
}

// Layer l's tensors of a `spec` model in `t` (norms and routers in f32), allocated.
layer_weights make_layer(const model_spec& spec, dtype t, std::int64_t l) {
  const std::int64_t h = spec.hidden;
  const std::int64_t nq = spec.num_q_heads;
  layer_weights L;
  L.input_norm = make_vec(h);
  L.post_attn_norm = make_vec(h);
  if (spec.is_mla()) {
    const mla_spec& m = spec.mla;
    if (m.q_lora_rank > 0) {
      L.q_a_proj = make(t, m.q_lora_rank, h);
      L.q_a_norm = make_vec(m.q_lora_rank);
      L.q_b_proj = make(t, nq * m.qk_head_dim(), m.q_lora_rank);
    } else {
      L.q_proj = make(t, nq * m.qk_head_dim(), h);
    }
    L.kv_a_proj = make(t, m.kv_lora_rank + m.qk_rope_head_dim, h);
    L.kv_a_norm = make_vec(m.kv_lora_rank);
    L.kv_b_proj = make(t, nq * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank);
    L.o_proj = make(t, h, nq * m.v_head_dim);
  } else {
    L.q_proj = make(t, nq * spec.head_dim, h);
    L.k_proj = make(t, spec.num_kv_heads * spec.head_dim, h);
    L.v_proj = make(t, spec.num_kv_heads * spec.head_dim, h);
    L.o_proj = make(t, h, nq * spec.head_dim);
  }
  if (spec.layer_is_moe(l)) {
    const moe_spec& e = spec.moe;
    L.router = make(dtype::f32, e.num_experts, h);
    if (e.score_correction_bias) L.router_bias = make_vec(e.num_experts);
    for (std::int64_t x = 0; x < e.num_experts; ++x)
      L.experts.push_back(make_mlp(t, h, e.expert_ffn));
    if (e.num_shared_experts > 0) L.shared = make_mlp(t, h, e.num_shared_experts * e.expert_ffn);
  } else {
    L.mlp = make_mlp(t, h, spec.ffn);
  }
  return L;
}

expected<model_weights> allocate_weights(const model_spec& spec, dtype weight_type) {
  HELIX_RETURN_IF_ERROR(spec.validate());
  const double need = weights_bytes(spec, weight_type).total();
  const memory_headroom avail = available_memory();
  if (need > static_cast<double>(avail.bytes)) {
    return resource_exhausted(
        "weights: model '{}' needs {} as {}, more than the {} this process can allocate ({})",
        spec.name, format_bytes(static_cast<std::uint64_t>(std::min(need, 1.8e19))),
        dtype_name(weight_type), format_bytes(avail.bytes), avail.limited_by);
  }
  const dtype t = weight_type;
  const std::int64_t h = spec.hidden;
  model_weights w;
  w.spec = spec;
  w.weight_type = t;
  w.embed = make(embedding_type(t), spec.vocab, h);
  w.final_norm = make_vec(h);
  if (!spec.tie_word_embeddings) w.lm_head = make(t, spec.vocab, h);
  w.layers.reserve(static_cast<std::size_t>(spec.num_layers));
  for (std::int64_t l = 0; l < spec.num_layers; ++l) w.layers.push_back(make_layer(spec, t, l));
  return w;
}

namespace {

void add_tensor(std::vector<named_tensor>& out, std::string name, tensor& t, tensor_role role) {
  if (t.numel() == 0) return;
  const std::int64_t fan_in = t.dims().rank == 2 ? t.dims()[1] : 0;
  out.push_back({std::move(name), &t, role, fan_in});
}

void add_mlp(std::vector<named_tensor>& out, const std::string& prefix, mlp_weights& m) {
  add_tensor(out, prefix + ".gate_proj.weight", m.gate_proj, tensor_role::linear);
  add_tensor(out, prefix + ".up_proj.weight", m.up_proj, tensor_role::linear);
  add_tensor(out, prefix + ".down_proj.weight", m.down_proj, tensor_role::linear);
}

}  // namespace

std::vector<named_tensor> list_layer_tensors(layer_weights& L, std::int64_t l) {
  std::vector<named_tensor> out;
  const std::string p = fmt::format("model.layers.{}", l);
  add_tensor(out, p + ".input_layernorm.weight", L.input_norm, tensor_role::norm);
  add_tensor(out, p + ".self_attn.q_proj.weight", L.q_proj, tensor_role::linear);
  add_tensor(out, p + ".self_attn.k_proj.weight", L.k_proj, tensor_role::linear);
  add_tensor(out, p + ".self_attn.v_proj.weight", L.v_proj, tensor_role::linear);
  add_tensor(out, p + ".self_attn.q_a_proj.weight", L.q_a_proj, tensor_role::linear);
  add_tensor(out, p + ".self_attn.q_a_layernorm.weight", L.q_a_norm, tensor_role::norm);
  add_tensor(out, p + ".self_attn.q_b_proj.weight", L.q_b_proj, tensor_role::linear);
  add_tensor(out, p + ".self_attn.kv_a_proj_with_mqa.weight", L.kv_a_proj, tensor_role::linear);
  add_tensor(out, p + ".self_attn.kv_a_layernorm.weight", L.kv_a_norm, tensor_role::norm);
  add_tensor(out, p + ".self_attn.kv_b_proj.weight", L.kv_b_proj, tensor_role::linear);
  add_tensor(out, p + ".self_attn.o_proj.weight", L.o_proj, tensor_role::linear);
  add_tensor(out, p + ".post_attention_layernorm.weight", L.post_attn_norm, tensor_role::norm);
  add_mlp(out, p + ".mlp", L.mlp);
  add_tensor(out, p + ".mlp.gate.weight", L.router, tensor_role::router);
  add_tensor(out, p + ".mlp.gate.e_score_correction_bias", L.router_bias, tensor_role::router_bias);
  for (std::size_t x = 0; x < L.experts.size(); ++x) {
    add_mlp(out, fmt::format("{}.mlp.experts.{}", p, x), L.experts[x]);
  }
  add_mlp(out, p + ".mlp.shared_experts", L.shared);
  return out;
}

std::vector<named_tensor> list_tensors(model_weights& w) {
  std::vector<named_tensor> out;
  add_tensor(out, "model.embed_tokens.weight", w.embed, tensor_role::embedding);
  for (std::size_t l = 0; l < w.layers.size(); ++l) {
    auto layer = list_layer_tensors(w.layers[l], static_cast<std::int64_t>(l));
    out.insert(out.end(), layer.begin(), layer.end());
  }
  add_tensor(out, "model.norm.weight", w.final_norm, tensor_role::norm);
  add_tensor(out, "lm_head.weight", w.lm_head, tensor_role::linear);
  return out;
}

layer_weights allocate_layer(const model_spec& spec, dtype weight_type, std::int64_t l) {
  return make_layer(spec, weight_type, l);
}

namespace {

// An FP8 linear weight: every block of fp8_block_rows x fp8_block_cols gets a scale of
// bound x f / 448 (f in [0.5, 1] from the RNG, keyed by the block), and element u in [-1, 1]
// (the RNG of the other dtypes) is stored as e4m3(448 u): the value is e4m3(448 u) x scale, within
// +-bound x f. Scales depend on the block only, so a shard seeds the same values as the model.
void seed_fp8(const named_tensor& nt, std::uint64_t seed, std::uint64_t tensor_idx) {
  tensor& t = *nt.t;
  const std::int64_t rows = t.dims()[0];
  const std::int64_t cols = t.dims()[1];
  const float bound = 1.0f / std::sqrt(static_cast<float>(nt.fan_in));
  block_scales s;
  s.block_k = fp8_block_cols;
  s.per_row = (cols + fp8_block_cols - 1) / fp8_block_cols;
  s.row_scales.resize(static_cast<std::size_t>(rows * s.per_row));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t j = 0; j < s.per_row; ++j) {
      const auto block = static_cast<std::uint64_t>((r / fp8_block_rows) * s.per_row + j);
      const float f =
          0.5f + 0.5f * random_uniform(seed, tensor_idx, 1, rng_purpose::weight_init, block);
      s.row_scales[static_cast<std::size_t>(r * s.per_row + j)] = bound * f / 448.0f;
    }
  }
  auto* codes = t.as<fp8_e4m3_t>();
  for (std::int64_t i = 0; i < rows * cols; ++i) {
    const float u = 2.0f * random_uniform(seed, tensor_idx, 0, rng_purpose::weight_init,
                                          static_cast<std::uint64_t>(i)) -
                    1.0f;
    codes[i] = to_fp8_e4m3(448.0f * u);
  }
  t.set_scales(std::move(s));
}

}  // namespace

void seed_tensors(std::span<const named_tensor> tensors, std::uint64_t seed,
                  std::uint64_t first_index) {
  std::uint64_t tensor_idx = first_index;
  for (const named_tensor& nt : tensors) {
    tensor& t = *nt.t;
    if (t.type() == dtype::fp8_e4m3 && nt.role == tensor_role::linear && t.dims().rank == 2) {
      seed_fp8(nt, seed, tensor_idx++);
      continue;
    }
    const auto n = static_cast<std::uint64_t>(t.numel());
    for (std::uint64_t i = 0; i < n; ++i) {
      const float u =
          2.0f * random_uniform(seed, tensor_idx, 0, rng_purpose::weight_init, i) - 1.0f;
      float v = 0.0f;
      switch (nt.role) {
        case tensor_role::norm:
          v = 1.0f + 0.1f * u;
          break;
        case tensor_role::embedding:
          v = u;
          break;
        case tensor_role::router_bias:
          v = 0.1f * u;
          break;
        case tensor_role::linear:
        case tensor_role::router:
          v = u / std::sqrt(static_cast<float>(nt.fan_in));
          break;
      }
      store_from_f32(t.data(), t.type(), i, v);
    }
    ++tensor_idx;
  }
}

expected<model_weights> init_seeded_weights(const model_spec& spec, dtype weight_type,
                                            std::uint64_t seed) {
  HELIX_ASSIGN_OR_RETURN(model_weights w, allocate_weights(spec, weight_type));
  const std::vector<named_tensor> all = list_tensors(w);
  seed_tensors(all, seed, 1);
  return w;
}

}  // namespace helix::model
