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
//
// Non-finite logits: a -inf logit masks its token (never drawn). A row holding NaN or +inf, or
// only -inf, has no distribution to sample from, so it is refused (bad_logits_row) instead of
// yielding an arbitrary token such as 0; the sharded sampler (kernels/sharded_sampling.hpp)
// refuses the same rows with the same message.
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

/// Samples every row into tokens. invalid_argument for bad shapes or options (naming the field)
/// and for a row that cannot be sampled (bad_logits_row, the first such row): then no token is
/// written. failed_precondition for a workspace that is too small or the CUDA backend.
[[nodiscard]] status sample(const sample_params& p, const exec_context& ctx);

/// The status of a logits row that cannot be sampled: invalid_argument naming `row`, and either
/// the lowest token id whose logit is NaN or +inf (`token` >= 0, `logit` its value) or, with
/// `token` < 0, that every logit is -inf. Used by every sampler so that the reports agree.
[[nodiscard]] status bad_logits_row(std::int64_t row, std::int64_t token, float logit);

/// An upper bound of the Gumbel noise g = -log(-log(u)): random_uniform is at most 1 - 2^-24, so
/// g <= 16.64, and 18.5 leaves room for rounding. Since f32 rounding is monotonic, a token with
/// fl(z + gumbel_noise_bound) < v can neither reach nor tie the value v.
inline constexpr float gumbel_noise_bound = 18.5f;

}  // namespace helix::kernels
