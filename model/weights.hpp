// Model weights in memory: the full (unsharded) parameters of a Llama or DeepSeek-V3 model.
//
// Tensor shapes follow HF checkpoints exactly (linear weights are [out, in]) so that loading is a
// copy and the tensor names map one to one (see checkpoint.hpp). Weights are stored as f32, bf16
// or f16 (`weight_type`); norms, router and biases are always f32. Built by init_seeded_weights()
// or load_checkpoint(); owned by whoever holds the struct (move-only). With fp8_e4m3 the linear
// weights stay in e4m3 with their block scales (tensor::scales()) and the kernels dequantize them
// as they read (kernels::gemm_params); the embedding is bf16.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/model_spec.hpp"
#include "core/tensor.hpp"

namespace helix::model {

/// One SwiGLU MLP: down(silu(gate(x)) * up(x)).
struct mlp_weights {
  tensor gate_proj;  // [ffn, hidden]
  tensor up_proj;    // [ffn, hidden]
  tensor down_proj;  // [hidden, ffn]
};

struct layer_weights {
  tensor input_norm;      // [hidden] f32
  tensor post_attn_norm;  // [hidden] f32
  // GQA (Llama)
  tensor q_proj;  // [num_q_heads * head_dim, hidden]; MLA without q_lora: [Q * qk_head_dim, hidden]
  tensor k_proj;  // [num_kv_heads * head_dim, hidden]
  tensor v_proj;  // [num_kv_heads * head_dim, hidden]
  tensor o_proj;  // [hidden, num_q_heads * attn_out_head_dim]
  // MLA (DeepSeek-V3)
  tensor q_a_proj;   // [q_lora_rank, hidden]
  tensor q_a_norm;   // [q_lora_rank] f32
  tensor q_b_proj;   // [Q * qk_head_dim, q_lora_rank]
  tensor kv_a_proj;  // [kv_lora_rank + qk_rope_head_dim, hidden] (kv_a_proj_with_mqa)
  tensor kv_a_norm;  // [kv_lora_rank] f32
  tensor kv_b_proj;  // [Q * (qk_nope_head_dim + v_head_dim), kv_lora_rank]
  // FFN: dense, or MoE (router + routed experts + one shared MLP of num_shared * expert_ffn)
  mlp_weights mlp;
  tensor router;       // [num_experts, hidden] f32 (mlp.gate.weight)
  tensor router_bias;  // [num_experts] f32 (e_score_correction_bias); empty if unused
  std::vector<mlp_weights> experts;
  mlp_weights shared;  // empty tensors when num_shared_experts == 0
};

struct model_weights {
  model_spec spec;
  dtype weight_type = dtype::f32;
  tensor embed;  // [vocab, hidden]
  std::vector<layer_weights> layers;
  tensor final_norm;  // [hidden] f32
  tensor lm_head;     // [vocab, hidden]; empty when tie_word_embeddings (embed is used)
  [[nodiscard]] const tensor& lm_head_or_embed() const {
    return spec.tie_word_embeddings ? embed : lm_head;
  }
};

/// FP8 weights (weight_type fp8_e4m3: linear weights in e4m3 with block scales, the embedding in
/// bf16, norms and routers in f32): the block of seeded ones, DeepSeek-V3's 128 x 128.
inline constexpr std::int64_t fp8_block_rows = 128;
inline constexpr std::int64_t fp8_block_cols = 128;
/// The embedding's dtype for `weight_type` (bf16 for fp8_e4m3: a lookup, never quantized).
[[nodiscard]] dtype embedding_type(dtype weight_type);

/// What a tensor is, for initialisation and for which dtype it is stored in.
enum class tensor_role : std::uint8_t { linear, embedding, norm, router, router_bias };

/// One tensor of a model with its HF checkpoint name ("model.layers.0.self_attn.q_proj.weight").
struct named_tensor {
  std::string name;
  tensor* t = nullptr;
  tensor_role role = tensor_role::linear;
  std::int64_t fan_in = 0;  // linear / router: the input dimension
};

/// Every tensor the spec has, in a fixed order, with HF names. Pointers are into `w`.
[[nodiscard]] std::vector<named_tensor> list_tensors(model_weights& w);
/// Layer l's tensors, in the order and with the names list_tensors gives them.
[[nodiscard]] std::vector<named_tensor> list_layer_tensors(layer_weights& layer, std::int64_t l);
/// Layer l of a `spec` model in `weight_type`, allocated as allocate_weights allocates it (no
/// memory check: the caller holds one layer at a time).
[[nodiscard]] layer_weights allocate_layer(const model_spec& spec, dtype weight_type,
                                           std::int64_t l);
/// Gives `tensors` the values init_seeded_weights gives them when the first is list_tensors'
/// tensor number `first_index` (1-based) and the others follow it in that list.
void seed_tensors(std::span<const named_tensor> tensors, std::uint64_t seed,
                  std::uint64_t first_index);

/// The seed of built-in models' weights everywhere (CLI commands and the engine), so that one model
/// name means the same weights in every command.
inline constexpr std::uint64_t default_weight_seed = 1234;

/// Bytes of the full weights of `spec` as `weight_type` (norms, router and biases in f32), by how
/// a layout shards them (model/sharding.hpp): `replicated` on every rank (embedding, norms,
/// router, MLA's down-projections), `per_column` split over the TPA columns and held by every
/// KVP member of a column (attention input projections), `split` over all N ranks (o_proj, FFN,
/// LM head). In double: a config's product of sizes may exceed int64.
struct weights_size {
  double replicated = 0;
  double per_column = 0;
  double split = 0;
  double embedding = 0;  // the token embedding, part of `replicated` (a step reads only its rows)
  double experts = 0;    // routed experts' FFNs, part of `split` (a step reads the activated ones)
  [[nodiscard]] double total() const { return replicated + per_column + split; }
};
[[nodiscard]] weights_size weights_bytes(const model_spec& spec, dtype weight_type);

/// Weight bytes one rank of `grid` reads in a decode step of `batch` tokens: its column's slice
/// of the attention input projections (per_column / TPA), its share of everything split over
/// the N ranks, the replicated tensors it reads whole (norms, routers, MLA's down-projections)
/// and `batch` rows of the embedding (a tied embedding is also the LM head, split over N). Routed
/// experts count as activated: min(experts, batch x top_k) per MoE layer, spread evenly over the
/// ranks. An estimate of what the kernels stream, for benchmarks' bytes-per-second figures.
[[nodiscard]] double weights_read_per_step(const model_spec& spec, dtype weight_type,
                                           std::int64_t tpa, std::int64_t num_ranks,
                                           std::int64_t batch);

/// Deterministic weights for a spec: every tensor is filled from the counter-based RNG keyed by
/// (seed, tensor index), uniform in +-1/sqrt(fan_in) for linear weights, 1 +- 0.1 for norms,
/// rounded to `weight_type` (fp8_e4m3: as seed_fp8 in weights.cpp, block-scaled). invalid_argument
/// for a bad spec;
/// resource_exhausted (naming the bytes needed and available) when they do not fit in memory.
[[nodiscard]] expected<model_weights> init_seeded_weights(const model_spec& spec, dtype weight_type,
                                                          std::uint64_t seed);

/// Allocates every tensor of `spec` with the shapes above, zero-filled (loaders fill them).
[[nodiscard]] expected<model_weights> allocate_weights(const model_spec& spec, dtype weight_type);

}  // namespace helix::model
