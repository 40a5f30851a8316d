#include "kernels/sampling.hpp"

#include <cmath>

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels {

status validate(const sampling_options& o) {
  if (!std::isfinite(o.temperature) || o.temperature < 0.0f) {
    return invalid_argument("sampling: temperature {} must be finite and >= 0", o.temperature);
  }
  if (o.top_k < 0) return invalid_argument("sampling: top_k {} must be >= 0", o.top_k);
  if (!(o.top_p > 0.0f && o.top_p <= 1.0f)) {
    return invalid_argument("sampling: top_p {} must be in (0, 1]", o.top_p);
  }
  return ok_status();
}

std::size_t sampling_workspace_bytes(std::int64_t vocab) {
  // Candidate ids and their values.
  return static_cast<std::size_t>(vocab) * (sizeof(std::int32_t) + sizeof(float));
}

status bad_logits_row(std::int64_t row, std::int64_t token, float logit) {
  if (token < 0) {
    return invalid_argument(
        "logits row {} is not finite (NaN/Inf): every logit is -inf, nothing to sample", row);
  }
  return invalid_argument("logits row {} is not finite (NaN/Inf): token {} has logit {}", row,
                          token, logit);
}

status sample(const sample_params& p, const exec_context& ctx) {
  if (p.rows < 0 || p.vocab <= 0 || p.logits == nullptr || p.options == nullptr ||
      p.request_ids == nullptr || p.positions == nullptr || p.tokens == nullptr) {
    return invalid_argument("sample: rows {}, vocab {} or null pointers", p.rows, p.vocab);
  }
  if (p.logits_stride != 0 && p.logits_stride < p.vocab) {
    return invalid_argument("sample: logits_stride {} < vocab {}", p.logits_stride, p.vocab);
  }
  for (std::int64_t r = 0; r < p.rows; ++r) {
    HELIX_RETURN_IF_ERROR(validate(p.options[r]).with_context(fmt::format("row {}", r)));
  }
  if (p.workspace_bytes < sampling_workspace_bytes(p.vocab) || p.workspace == nullptr) {
    return failed_precondition("sample: workspace of {} bytes given, {} needed", p.workspace_bytes,
                               sampling_workspace_bytes(p.vocab));
  }
  switch (ctx.backend) {
    case backend::reference:
      return reference::sample(p);
    case backend::cpu:
      return cpu::sample(p, ctx.pool);
    case backend::cuda:
      return failed_precondition("sample: no CUDA implementation yet");
  }
  return internal_error("sample: unknown backend");
}

}  // namespace helix::kernels
