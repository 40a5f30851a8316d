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
#include "kernels/rope.hpp"
#include "model/decoder.hpp"

namespace helix::model {

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

/// Moves the hidden rows [rows, hidden] of `x` that need logits (the last token of each item, or
/// all its tokens with all_logits) to the front, in order, and returns how many there are.
[[nodiscard]] std::int64_t gather_logit_rows(std::span<const decoder::batch_item> items, float* x,
                                             std::int64_t hidden);

/// Checks one step's items: a non-empty batch of known sequences (`seqs` maps sequence id to
/// state), none twice, each with tokens inside [0, vocab), at most max_batch_tokens in all, and a
/// logits span large enough. Returns the number of token rows; invalid_argument prefixed by
/// `who` otherwise. Allocates nothing (the duplicate check is quadratic; steps hold few items).
template <class SeqMap>
[[nodiscard]] expected<std::int64_t> validate_step(std::string_view who,
                                                   std::span<const decoder::batch_item> items,
                                                   const SeqMap& seqs, std::int64_t vocab,
                                                   std::int64_t max_batch_tokens,
                                                   std::size_t logits_size) {
  if (items.empty()) return invalid_argument("{}: empty batch", who);
  std::int64_t rows = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const decoder::batch_item& it = items[i];
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
  const std::int64_t need = decoder::logits_rows(items) * vocab;
  if (static_cast<std::int64_t>(logits_size) < need) {
    return invalid_argument("{}: logits span holds {} floats, {} needed", who, logits_size, need);
  }
  return rows;
}

}  // namespace helix::model
