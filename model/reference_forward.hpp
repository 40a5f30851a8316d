// Full forward pass without a KV cache: the oracle for incremental decoding.
//
// Computes the logits of every position of one token sequence the plain way: dense causal
// attention over the whole sequence with keys and values recomputed from scratch, and for MLA the
// non-absorbed form of HF transformers (k_nope = W_UK latent, v = W_UV latent, per-head attention
// over [q_nope | q_rope]). Shares no attention code with the decoder, so agreement between the
// two checks the paged KV cache, the block tables, the attention kernels and MLA absorption.
// Quadratic in the sequence length: meant for tests of a few thousand tokens at most.
#pragma once

#include <cstdint>
#include <span>

#include "core/tensor.hpp"
#include "model/weights.hpp"

namespace helix::model {

/// Logits [tokens.size(), vocab] (f32). invalid_argument for an empty sequence or an id outside
/// the vocabulary.
[[nodiscard]] expected<tensor> reference_forward(const model_weights& weights,
                                                 std::span<const std::int32_t> tokens);

}  // namespace helix::model
