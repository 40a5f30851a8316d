// Small building blocks shared by the single-worker decoder (decoder.cpp, layer_program.cpp) and
// the per-rank program (rank_program.cpp): the pieces of a step that are the same whatever the
// layout. Internal to model/; no state.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "core/model_spec.hpp"
#include "core/tensor.hpp"
#include "kernels/exec.hpp"
#include "kernels/gemm.hpp"
#include "kernels/rope.hpp"
#include "model/batch.hpp"

namespace helix::model {

/// The weight operand of a GEMM: rows [first_row, ...) of the 2-D `w` (fp8: with their block
/// scales).
void set_weight(kernels::gemm_params& g, const tensor& w, std::int64_t first_row);

/// y [rows, out] (+)= x [rows, in] @ w^T for a weight w [out, in]; strides of 0 mean dense rows.
[[nodiscard]] status linear(const kernels::exec_context& ctx, const float* x, std::int64_t x_stride,
                            const tensor& w, float* y, std::int64_t y_stride, std::int64_t rows,
                            bool accumulate = false);

/// out [rows, hidden] = rows of the embedding table [vocab, hidden] for token ids [rows].
[[nodiscard]] status embed_tokens(const kernels::exec_context& ctx, const tensor& table,
                                  const std::int32_t* ids, std::int64_t rows, float* out);

/// out [rows, dim] = RMSNorm of x [rows, dim] with weight [dim] (dense rows; out may be x).
[[nodiscard]] status rms_norm(const kernels::exec_context& ctx, const float* x,
                              const tensor& weight, float* out, std::int64_t rows, double eps);

/// RoPE params for `rows` tokens at `positions` with the table and convention of `spec`; the
/// caller sets x, row_stride, num_heads, head_stride and rot_offset.
[[nodiscard]] kernels::rope_params rope_params_for(const model_spec& spec,
                                                   const kernels::rope_table& table,
                                                   const std::int64_t* positions, std::int64_t rows,
                                                   std::int64_t rot_dim);

/// out [rows, H] (+)= SwiGLU MLP of in [rows, H] (row stride H) with gate/up [f, H] and down
/// [H, f], for any slice f >= 1 of the intermediate dimension. gate_ws and up_ws are scratch of
/// rows * f floats each.
[[nodiscard]] status swiglu_mlp(const kernels::exec_context& ctx, const tensor& gate_proj,
                                const tensor& up_proj, const tensor& down_proj, const float* in,
                                float* out, std::int64_t rows, bool accumulate, float* gate_ws,
                                float* up_ws);

/// The MoE router of one layer on xn [rows, H]: expert ids and weights [rows, top_k] (the
/// spec's scoring, grouping and scaling), each row's choices in ascending expert id.
/// router_logits is scratch of rows * num_experts floats; bias may be empty.
[[nodiscard]] status route_tokens(const kernels::exec_context& ctx, const model_spec& spec,
                                  const tensor& router, const tensor& bias, const float* xn,
                                  std::int64_t rows, float* router_logits, std::int32_t* expert_ids,
                                  float* expert_weights);

/// GQA projections of `rows` tokens from xn [rows, H] with RoPE at their positions:
/// q [rows, q_heads, D], k and v [rows, kv_heads, D] (heads = the weights' rows / D).
[[nodiscard]] status project_gqa(const kernels::exec_context& ctx, const model_spec& spec,
                                 const kernels::rope_table& rope, const tensor& q_proj,
                                 const tensor& k_proj, const tensor& v_proj, const float* xn,
                                 const std::int64_t* positions, std::int64_t rows, float* q,
                                 float* k, float* v);

/// HF DeepseekV3 builds q_a_layernorm and kv_a_layernorm with the default epsilon, whatever
/// rms_norm_eps says.
inline constexpr float mla_norm_eps = 1e-6f;

/// The MLA projection weights of one layer (of the full model or of one rank's shard: q_b_proj or
/// q_proj may hold only some heads). q_a_proj/q_a_norm are null without q_lora.
struct mla_projection {
  const tensor* q_a_proj = nullptr;   // [q_lora, H]
  const tensor* q_a_norm = nullptr;   // [q_lora]
  const tensor* q_b_proj = nullptr;   // [heads * qk_head_dim, q_lora]
  const tensor* q_proj = nullptr;     // [heads * qk_head_dim, H] (models without q_lora)
  const tensor* kv_a_proj = nullptr;  // [kv_lora + qk_rope, H]
  const tensor* kv_a_norm = nullptr;  // [kv_lora]
};

/// MLA queries and cached rows of `rows` tokens from the normed input xn [rows, H]:
///   q   [rows, heads, qk_nope | qk_rope]   (not rotated; absorb_mla_queries rotates)
///   kva [rows, kv_lora + qk_rope]          (normalised latent | rotated rope key: the KV row)
/// qa is scratch of rows * q_lora floats.
[[nodiscard]] status project_mla(const kernels::exec_context& ctx, const model_spec& spec,
                                 const kernels::rope_table& rope, const mla_projection& w,
                                 const float* xn, const std::int64_t* positions, std::int64_t rows,
                                 float* qa, float* q, float* kva);

/// Absorbed queries q_abs [rows, heads, kv_lora | qk_rope] from q [rows, heads, qk_nope | qk_rope]:
/// q_nope of each head through W_UK^T (w_uk_t [heads * kv_lora, qk_nope], per head), the rope
/// part copied and rotated at the tokens' positions.
[[nodiscard]] status absorb_mla_queries(const kernels::exec_context& ctx, const model_spec& spec,
                                        const kernels::rope_table& rope, const tensor& w_uk_t,
                                        const float* q, const std::int64_t* positions,
                                        std::int64_t rows, std::int64_t heads, float* q_abs);

/// out [rows, heads, v_head_dim] = per head, latent [rows, heads, kv_lora] through W_UV. Head h
/// of the output uses rows [first_row(h), first_row(h) + v_head_dim) of `w` (each kv_lora wide),
/// first_row(h) = h * head_row_stride + head_row_offset.
[[nodiscard]] status mla_values(const kernels::exec_context& ctx, const model_spec& spec,
                                const tensor& w, std::int64_t head_row_stride,
                                std::int64_t head_row_offset, const float* latent,
                                std::int64_t rows, std::int64_t heads, float* out);

/// Moves the hidden rows [rows, hidden] of `x` that need logits (the last token of each item, or
/// all its tokens with all_logits) to the front, in order, and returns how many there are.
[[nodiscard]] std::int64_t gather_logit_rows(std::span<const batch_item> items, float* x,
                                             std::int64_t hidden);

/// Checks one step's items: a non-empty batch of known sequences (`seqs` maps sequence id to
/// state), none twice, each with tokens inside [0, vocab), at most max_batch_tokens in all, and a
/// logits span large enough (or empty, when logits_optional). Returns the number of token rows;
/// invalid_argument prefixed by `who` otherwise. Allocates nothing (the duplicate check is
/// quadratic; steps hold few items).
template <class SeqMap>
[[nodiscard]] expected<std::int64_t> validate_step(
    std::string_view who, std::span<const batch_item> items, const SeqMap& seqs, std::int64_t vocab,
    std::int64_t max_batch_tokens, std::size_t logits_size, bool logits_optional = false) {
  if (items.empty()) return invalid_argument("{}: empty batch", who);
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const batch_item& it = items[i];
    if (seqs.count(it.seq) == 0) return invalid_argument("{}: unknown sequence {}", who, it.seq);
    for (std::size_t j = 0; j < i; ++j) {
      if (items[j].seq == it.seq) {
        return invalid_argument("{}: sequence {} appears twice in one step", who, it.seq);
      }
    }
    if (it.tokens.empty()) return invalid_argument("{}: sequence {} has no tokens", who, it.seq);
    for (std::int32_t t : it.tokens) {
      if (t < 0 || t >= vocab) {
        return invalid_argument("{}: token id {} outside the vocabulary [0, {})", who, t, vocab);
      }
    }
    rows += static_cast<std::int64_t>(it.tokens.size());
  }
  if (rows > max_batch_tokens) {
    return invalid_argument("{}: step has {} tokens, max_batch_tokens is {}", who, rows,
                            max_batch_tokens);
  }
  const std::int64_t need = logits_rows(items) * vocab;
  if (static_cast<std::int64_t>(logits_size) < need && !(logits_optional && logits_size == 0)) {
    return invalid_argument("{}: logits span holds {} floats, {} needed", who, logits_size, need);
  }
  return rows;
}

}  // namespace helix::model
