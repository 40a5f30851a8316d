#include "core/model_spec.hpp"

#include <cmath>

namespace helix {

bool model_spec::layer_is_moe(std::int64_t layer_idx) const {
  return is_moe() && layer_idx >= moe.first_dense_layers && layer_idx % moe.layer_freq == 0;
}

std::int64_t model_spec::kv_key_dim() const {
  return is_mla() ? mla.kv_lora_rank + mla.qk_rope_head_dim : head_dim;
}

std::int64_t model_spec::kv_value_dim() const {
  return is_mla() ? mla.kv_lora_rank : head_dim;
}

std::int64_t model_spec::kv_values_per_token_per_layer() const {
  return is_mla() ? kv_key_dim() : num_kv_heads * (kv_key_dim() + kv_value_dim());
}

std::int64_t model_spec::attn_out_head_dim() const {
  return is_mla() ? mla.v_head_dim : head_dim;
}

double model_spec::softmax_scale() const {
  if (!is_mla()) return 1.0 / std::sqrt(static_cast<double>(head_dim));
  double scale = 1.0 / std::sqrt(static_cast<double>(mla.qk_head_dim()));
  if (rope.scaling == rope_scaling_kind::yarn && rope.mscale_all_dim != 0.0 && rope.factor > 1.0) {
    const double m = 0.1 * rope.mscale_all_dim * std::log(rope.factor) + 1.0;
    scale *= m * m;
  }
  return scale;
}

std::int64_t model_spec::num_params() const {
  std::int64_t attn = 0;
  if (is_mla()) {
    const std::int64_t q = mla.q_lora_rank > 0
                               ? hidden * mla.q_lora_rank + mla.q_lora_rank +
                                     mla.q_lora_rank * num_q_heads * mla.qk_head_dim()
                               : hidden * num_q_heads * mla.qk_head_dim();
    attn = q + hidden * (mla.kv_lora_rank + mla.qk_rope_head_dim) + mla.kv_lora_rank +
           mla.kv_lora_rank * num_q_heads * (mla.qk_nope_head_dim + mla.v_head_dim) +
           num_q_heads * mla.v_head_dim * hidden;
  } else {
    attn = hidden * head_dim * (2 * num_q_heads + 2 * num_kv_heads);
  }
  std::int64_t total = vocab * hidden * (tie_word_embeddings ? 1 : 2) + hidden;
  for (std::int64_t l = 0; l < num_layers; ++l) {
    total += attn + 2 * hidden;
    if (layer_is_moe(l)) {
      total += moe.num_experts * hidden + (moe.score_correction_bias ? moe.num_experts : 0);
      total += (moe.num_experts + moe.num_shared_experts) * 3 * hidden * moe.expert_ffn;
    } else {
      total += 3 * hidden * ffn;
    }
  }
  return total;
}

status model_spec::validate() const {
  auto positive = [&](std::int64_t v, const char* field) -> status {
    if (v <= 0) return invalid_argument("model '{}': {} must be positive (got {})", name, field, v);
    return ok_status();
  };
  HELIX_RETURN_IF_ERROR(positive(hidden, "hidden_size"));
  HELIX_RETURN_IF_ERROR(positive(num_layers, "num_hidden_layers"));
  HELIX_RETURN_IF_ERROR(positive(num_q_heads, "num_attention_heads"));
  HELIX_RETURN_IF_ERROR(positive(vocab, "vocab_size"));
  if (!(rms_norm_eps > 0)) return invalid_argument("model '{}': rms_norm_eps must be > 0", name);
  if (!(rope.theta > 0)) return invalid_argument("model '{}': rope_theta must be > 0", name);
  if (is_mla()) {
    HELIX_RETURN_IF_ERROR(positive(mla.kv_lora_rank, "kv_lora_rank"));
    HELIX_RETURN_IF_ERROR(positive(mla.qk_nope_head_dim, "qk_nope_head_dim"));
    HELIX_RETURN_IF_ERROR(positive(mla.qk_rope_head_dim, "qk_rope_head_dim"));
    HELIX_RETURN_IF_ERROR(positive(mla.v_head_dim, "v_head_dim"));
    if (mla.qk_rope_head_dim % 2 != 0) {
      return invalid_argument("model '{}': qk_rope_head_dim must be even", name);
    }
  } else {
    HELIX_RETURN_IF_ERROR(positive(num_kv_heads, "num_key_value_heads"));
    HELIX_RETURN_IF_ERROR(positive(head_dim, "head_dim"));
    if (num_q_heads % num_kv_heads != 0) {
      return invalid_argument(
          "model '{}': num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
          name, num_q_heads, num_kv_heads);
    }
    if (head_dim % 2 != 0) return invalid_argument("model '{}': head_dim must be even", name);
  }
  if (!is_moe() || moe.first_dense_layers > 0)
    HELIX_RETURN_IF_ERROR(positive(ffn, "intermediate_size"));
  if (is_moe()) {
    HELIX_RETURN_IF_ERROR(positive(moe.expert_ffn, "moe_intermediate_size"));
    HELIX_RETURN_IF_ERROR(positive(moe.experts_per_token, "num_experts_per_tok"));
    HELIX_RETURN_IF_ERROR(positive(moe.num_groups, "n_group"));
    HELIX_RETURN_IF_ERROR(positive(moe.layer_freq, "moe_layer_freq"));
    if (moe.num_experts % moe.num_groups != 0) {
      return invalid_argument("model '{}': n_routed_experts ({}) not divisible by n_group ({})",
                              name, moe.num_experts, moe.num_groups);
    }
    if (moe.topk_groups < 1 || moe.topk_groups > moe.num_groups) {
      return invalid_argument("model '{}': topk_group ({}) must be in [1, n_group={}]", name,
                              moe.topk_groups, moe.num_groups);
    }
    if (moe.experts_per_token > moe.topk_groups * (moe.num_experts / moe.num_groups)) {
      return invalid_argument(
          "model '{}': num_experts_per_tok ({}) exceeds the experts in topk_group groups ({})",
          name, moe.experts_per_token, moe.topk_groups * (moe.num_experts / moe.num_groups));
    }
  }
  if (rope.scaling != rope_scaling_kind::none && !(rope.factor > 0)) {
    return invalid_argument("model '{}': rope_scaling.factor must be > 0", name);
  }
  return ok_status();
}

namespace {

model_spec tiny_llama() {
  model_spec s;
  s.name = "tiny-llama";
  s.architecture = "llama";
  s.hidden = 64;
  s.num_layers = 2;
  s.num_q_heads = 8;
  s.num_kv_heads = 2;
  s.head_dim = 16;
  s.ffn = 128;
  s.vocab = 256;
  s.rms_norm_eps = 1e-5;
  s.max_position_embeddings = 1 << 20;
  return s;
}

model_spec tiny_deepseek() {
  model_spec s;
  s.name = "tiny-deepseek";
  s.architecture = "deepseek_v3";
  s.attention = attention_kind::mla;
  s.hidden = 64;
  s.num_layers = 3;
  s.num_q_heads = 8;
  s.num_kv_heads = 8;
  s.ffn = 96;
  s.vocab = 256;
  s.max_position_embeddings = 1 << 20;
  s.rope.interleave = true;
  s.mla = {.q_lora_rank = 24,
           .kv_lora_rank = 32,
           .qk_nope_head_dim = 16,
           .qk_rope_head_dim = 8,
           .v_head_dim = 16};
  s.moe = {.num_experts = 8,
           .num_shared_experts = 1,
           .experts_per_token = 2,
           .expert_ffn = 32,
           .num_groups = 4,
           .topk_groups = 2,
           .first_dense_layers = 1,
           .layer_freq = 1,
           .routed_scaling_factor = 2.5,
           .norm_topk_prob = true,
           .scoring = router_scoring::sigmoid,
           .score_correction_bias = true};
  return s;
}

model_spec small_llama() {
  model_spec s;
  s.name = "small-llama";
  s.architecture = "llama";
  s.hidden = 1024;
  s.num_layers = 8;
  s.num_q_heads = 8;
  s.num_kv_heads = 2;
  s.head_dim = 128;
  s.ffn = 2816;
  s.vocab = 32000;
  s.rms_norm_eps = 1e-5;
  s.rope.theta = 500000.0;
  s.max_position_embeddings = 1 << 24;
  return s;
}

model_spec llama_405b() {
  model_spec s;
  s.name = "llama-3.1-405b";
  s.architecture = "llama";
  s.hidden = 16384;
  s.num_layers = 126;
  s.num_q_heads = 128;
  s.num_kv_heads = 8;
  s.head_dim = 128;
  s.ffn = 53248;
  s.vocab = 128256;
  s.rms_norm_eps = 1e-5;
  s.max_position_embeddings = 131072;
  s.rope = {.theta = 500000.0,
            .scaling = rope_scaling_kind::llama3,
            .factor = 8.0,
            .low_freq_factor = 1.0,
            .high_freq_factor = 4.0,
            .original_max_position_embeddings = 8192};
  return s;
}

model_spec deepseek_r1() {
  model_spec s;
  s.name = "deepseek-r1";
  s.architecture = "deepseek_v3";
  s.attention = attention_kind::mla;
  s.hidden = 7168;
  s.num_layers = 61;
  s.num_q_heads = 128;
  s.num_kv_heads = 128;
  s.ffn = 18432;
  s.vocab = 129280;
  s.max_position_embeddings = 163840;
  s.rope = {.theta = 10000.0,
            .scaling = rope_scaling_kind::yarn,
            .factor = 40.0,
            .original_max_position_embeddings = 4096,
            .beta_fast = 32.0,
            .beta_slow = 1.0,
            .mscale = 1.0,
            .mscale_all_dim = 1.0,
            .interleave = true};
  s.mla = {.q_lora_rank = 1536,
           .kv_lora_rank = 512,
           .qk_nope_head_dim = 128,
           .qk_rope_head_dim = 64,
           .v_head_dim = 128};
  s.moe = {.num_experts = 256,
           .num_shared_experts = 1,
           .experts_per_token = 8,
           .expert_ffn = 2048,
           .num_groups = 8,
           .topk_groups = 4,
           .first_dense_layers = 3,
           .layer_freq = 1,
           .routed_scaling_factor = 2.5,
           .norm_topk_prob = true,
           .scoring = router_scoring::sigmoid,
           .score_correction_bias = true};
  return s;
}

}  // namespace

std::vector<std::string> builtin_model_names() {
  return {"tiny-llama", "tiny-deepseek", "small-llama", "llama-3.1-405b", "deepseek-r1"};
}

expected<model_spec> builtin_model(std::string_view name) {
  if (name == "tiny-llama") return tiny_llama();
  if (name == "tiny-deepseek") return tiny_deepseek();
  if (name == "small-llama") return small_llama();
  if (name == "llama-3.1-405b") return llama_405b();
  if (name == "deepseek-r1") return deepseek_r1();
  return not_found(
      "unknown model '{}' (built-in: tiny-llama, tiny-deepseek, small-llama, "
      "llama-3.1-405b, deepseek-r1)",
      name);
}

}  // namespace helix
