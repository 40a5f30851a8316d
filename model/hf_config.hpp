// HF `config.json` <-> model_spec, for checkpoints in the Hugging Face layout.
//
// Called by checkpoint.cpp (load_checkpoint / save_checkpoint) and by the CLI to describe a model
// directory. Two model types: "llama" (LlamaForCausalLM) and "deepseek_v3"
// (DeepseekV3ForCausalLM). Keys a file leaves out take HF transformers' defaults for that model
// type (see hf_config.cpp for the version followed); anything the runtime cannot execute exactly
// (quantization, biases, other activations, other RoPE scalings, other routers) is refused with
// invalid_argument naming the key, never silently approximated. Pure functions; thread-safe.
#pragma once

#include <string>

#include "core/dtype.hpp"
#include "core/model_spec.hpp"
#include "core/status.hpp"

namespace helix::model {

/// Parses the text of a config.json into a validated spec named `name`. invalid_argument naming
/// the key for: text that is not a JSON object, an unknown model_type, a missing required key
/// (hidden_size, num_hidden_layers, num_attention_heads, vocab_size, intermediate_size), a value
/// of the wrong JSON type, `quantization_config`, attention_bias / mlp_bias true, hidden_act
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

/// The config.json text (HF keys, so that transformers reads the same model) of a spec whose
/// weights are stored as `weight_type` ("torch_dtype"). invalid_argument for an unknown
/// architecture or an invalid spec.
[[nodiscard]] expected<std::string> hf_config_json(const model_spec& spec, dtype weight_type);

}  // namespace helix::model
