// Model specifications: the shapes and hyper-parameters of a decoder-only transformer.
//
// A spec is what an HF `config.json` says (model/hf_config.cpp parses one into this struct, with
// HF transformers' defaults), or one of the built-in specs below: `tiny-llama` and `tiny-deepseek`
// (seeded weights for tests, 8 query heads so 8-worker layouts are valid), `small-llama`
// (benchmark-sized) and the real shapes of `llama-3.1-405b` and `deepseek-r1` (for the planner).
// Plain data; validate() says which field is inconsistent.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.hpp"

namespace helix {

enum class attention_kind : std::uint8_t { gqa, mla };
enum class rope_scaling_kind : std::uint8_t { none, linear, llama3, yarn };
enum class router_scoring : std::uint8_t { softmax, sigmoid };

/// RoPE frequencies and their long-context scaling (HF `rope_scaling`).
struct rope_spec {
  double theta = 10000.0;
  rope_scaling_kind scaling = rope_scaling_kind::none;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;
  double mscale_all_dim = 0.0;
  double attention_factor = 0.0;  // yarn: explicit attention_factor; 0 = derived from mscale
  /// Interleaved pairs (x0,x1),(x2,x3)... as DeepSeek-V3's `rope_interleave`, instead of
  /// rotate-half pairs (x_i, x_{i+d/2}).
  bool interleave = false;
};

/// Multi-head latent attention (DeepSeek-V2/V3) shapes.
struct mla_spec {
  std::int64_t q_lora_rank = 0;  // 0: q_proj directly from hidden
  std::int64_t kv_lora_rank = 0;
  std::int64_t qk_nope_head_dim = 0;
  std::int64_t qk_rope_head_dim = 0;
  std::int64_t v_head_dim = 0;
  [[nodiscard]] std::int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

/// Mixture-of-experts FFN (DeepSeek-V3 style). Absent (num_experts == 0) for dense models.
struct moe_spec {
  std::int64_t num_experts = 0;         // routed experts
  std::int64_t num_shared_experts = 0;  // each of size expert_ffn; summed into one shared MLP
  std::int64_t experts_per_token = 0;   // top-k
  std::int64_t expert_ffn = 0;          // moe_intermediate_size
  std::int64_t num_groups = 1;          // n_group
  std::int64_t topk_groups = 1;         // topk_group
  std::int64_t first_dense_layers = 0;  // first_k_dense_replace
  std::int64_t layer_freq = 1;          // moe_layer_freq
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = false;
  router_scoring scoring = router_scoring::softmax;
  bool score_correction_bias = false;  // e_score_correction_bias (noaux_tc)
};

struct model_spec {
  std::string name;
  std::string architecture;  // "llama" or "deepseek_v3"
  attention_kind attention = attention_kind::gqa;
  std::int64_t hidden = 0;
  std::int64_t num_layers = 0;
  std::int64_t num_q_heads = 0;
  std::int64_t num_kv_heads = 0;  // GQA; for MLA the config's value is kept but K = 1 for layouts
  std::int64_t head_dim = 0;      // GQA head size
  std::int64_t ffn = 0;           // dense FFN intermediate size
  std::int64_t vocab = 0;
  double rms_norm_eps = 1e-6;
  std::int64_t max_position_embeddings = 4096;
  bool tie_word_embeddings = false;
  rope_spec rope;
  mla_spec mla;
  moe_spec moe;

  [[nodiscard]] bool is_mla() const { return attention == attention_kind::mla; }
  [[nodiscard]] bool is_moe() const { return moe.num_experts > 0; }
  /// Whether layer `layer_idx` uses the MoE FFN (HF DeepSeek-V3 rule).
  [[nodiscard]] bool layer_is_moe(std::int64_t layer_idx) const;
  /// KV heads for layout rules: 1 for MLA (the latent is shared by all heads).
  [[nodiscard]] std::int64_t layout_kv_heads() const { return is_mla() ? 1 : num_kv_heads; }
  /// Width of one cached key per KV head: head_dim (GQA), kv_lora_rank + qk_rope_head_dim (MLA).
  [[nodiscard]] std::int64_t kv_key_dim() const;
  /// Width of one cached value per KV head: head_dim (GQA), kv_lora_rank (MLA: the latent).
  [[nodiscard]] std::int64_t kv_value_dim() const;
  /// Cached values per token per layer (all KV heads, K and V; MLA stores V inside K).
  [[nodiscard]] std::int64_t kv_values_per_token_per_layer() const;
  /// Width of one attention output head before o_proj: head_dim (GQA), v_head_dim (MLA).
  [[nodiscard]] std::int64_t attn_out_head_dim() const;
  /// Softmax scale, including YaRN's mscale correction for MLA.
  [[nodiscard]] double softmax_scale() const;
  /// Total parameter count (embeddings and LM head included).
  [[nodiscard]] std::int64_t num_params() const;

  /// invalid_argument naming the first inconsistent field.
  [[nodiscard]] status validate() const;
};

/// Names of the built-in specs.
[[nodiscard]] std::vector<std::string> builtin_model_names();
/// A built-in spec by name; not_found lists the names.
[[nodiscard]] expected<model_spec> builtin_model(std::string_view name);

}  // namespace helix
