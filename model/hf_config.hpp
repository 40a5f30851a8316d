// HF `config.json` <-> model_spec, for checkpoints in the Hugging Face layout.
//
// Called by checkpoint.cpp (load_checkpoint / save_checkpoint) and by the CLI to describe a model
// directory. Two model types: "llama" (LlamaForCausalLM) and "deepseek_v3"
// (DeepseekV3ForCausalLM). Keys a file leaves out take HF transformers' defaults for that model
// type (see hf_config.cpp for the version followed); anything the runtime cannot execute exactly
// (quantization, biases, other activations, other RoPE scalings, other routers) is refused with
// invalid_argument naming the key, never silently approximated. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/dtype.hpp"
#include "core/model_spec.hpp"
#include "core/status.hpp"

namespace helix::model {

/// Parses the text of a config.json into a validated spec named `name`. invalid_argument naming
/// the key for: text that is not a JSON object, an unknown model_type, a missing required key
/// (hidden_size, num_hidden_layers, num_attention_heads, vocab_size, intermediate_size), a value
/// of the wrong JSON type, a `quantization_config` other than block-scaled FP8 (see
/// parse_hf_quantization), attention_bias / mlp_bias true, hidden_act
/// other than silu, an unsupported rope_scaling type, scoring_func or topk_method; values that
/// make no physical sense: rope_theta not finite or < 1, rms_norm_eps not in (0, 1),
/// max_position_embeddings < 1, rope_scaling factors (factor, low/high_freq_factor, beta_fast,
/// beta_slow) not finite and > 0, yarn mscale / mscale_all_dim / attention_factor negative,
/// original_max_position_embeddings < 1, routed_scaling_factor not finite and > 0; sizes (each
/// below 2^31) whose products (tensor sizes, parameter and KV-cache byte totals) overflow int64,
/// naming the fields of the product; and whatever model_spec::validate() rejects.
[[nodiscard]] expected<model_spec> parse_hf_config(const std::string& json_text, std::string name);

/// Reads `<dir>/config.json`; the spec is named after the directory. not_found if the file is
/// missing; otherwise as parse_hf_config().
[[nodiscard]] expected<model_spec> load_hf_config(const std::string& dir);

/// HF's block-scaled FP8 (quantization_config {"quant_method": "fp8", "fmt": "e4m3",
/// "weight_block_size": [rows, cols]}, as DeepSeek-V3 ships): linear weights stored as F8_E4M3,
/// each with a `<name>_scale_inv` tensor of one scale per block (partial blocks at the edges).
/// The weight is e4m3 value x its block's scale_inv; activations stay in full precision
/// (weight-only dequantization, whatever activation_scheme says).
struct hf_quantization {
  std::int64_t block_rows = 0;
  std::int64_t block_cols = 0;
};
/// The quantization of a config.json: none, or block-scaled FP8. invalid_argument naming the key
/// for any other quant_method, an fmt other than e4m3, or a weight_block_size that is not two
/// integers in [1, 2^20].
[[nodiscard]] expected<std::optional<hf_quantization>> parse_hf_quantization(
    const std::string& json_text, const std::string& name);
/// parse_hf_quantization of `<dir>/config.json`; not_found if it is missing.
[[nodiscard]] expected<std::optional<hf_quantization>> load_hf_quantization(const std::string& dir);

/// The config.json text (HF keys, so that transformers reads the same model) of a spec whose
/// weights are stored as `weight_type` ("torch_dtype"). invalid_argument for an unknown
/// architecture or an invalid spec.
[[nodiscard]] expected<std::string> hf_config_json(const model_spec& spec, dtype weight_type);

}  // namespace helix::model
