// Token sampling: greedy, temperature, top-k, top-p; seeded and counter-based.
//
// For each row: temperature 0 is greedy (argmax, lowest id on ties). Otherwise z = logit / T;
// top_k > 0 keeps the k largest z (lower id first on ties); top_p < 1 then keeps the smallest set
// of the highest-probability candidates whose probability mass (softmax over the kept set) reaches
// top_p (at least one). The token is the Gumbel-max sample over the kept candidates:
//   argmax_i z_i + g_i,   g_i = -log(-log(u)),  u = random_uniform(seed, request_id, position,
//   rng_purpose::sampling, token id i)
// which is an exact sample from softmax(z) over the kept set, and reproducible on any rank: the
// noise of token i does not depend on which rank or batch computes it.
// Shapes: logits [rows, vocab] (row stride logits_stride, 0 = vocab); options, request_ids and
// positions [rows]; tokens [rows] (int32). workspace: caller-owned scratch of
// sampling_workspace_bytes(vocab) bytes (used for top-k / top-p).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/exec.hpp"

namespace helix::kernels {

struct sampling_options {
  float temperature = 0.0f;  // 0 = greedy
  std::int32_t top_k = 0;    // 0 = off
  float top_p = 1.0f;        // 1 = off
  std::uint64_t seed = 0;
};

/// invalid_argument naming the field: temperature < 0 or not finite, top_k < 0, top_p not in (0,
/// 1].
[[nodiscard]] status validate(const sampling_options& o);

struct sample_params {
  const float* logits = nullptr;
  std::int64_t logits_stride = 0;
  std::int64_t rows = 0;
  std::int64_t vocab = 0;
  const sampling_options* options = nullptr;
  const std::uint64_t* request_ids = nullptr;
  const std::int64_t* positions = nullptr;
  std::int32_t* tokens = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};

[[nodiscard]] std::size_t sampling_workspace_bytes(std::int64_t vocab);

[[nodiscard]] status sample(const sample_params& p, const exec_context& ctx);

}  // namespace helix::kernels
