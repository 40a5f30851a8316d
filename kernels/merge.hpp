// Exact log-sum-exp merge of K partial attention results (Flash-Decoding's combine, across ranks).
//
//   lse = log sum_i exp(lse_i),   out = sum_i exp(lse_i - lse) * out_i
// Shapes: partial_out [num_partials, num_rows, dim], partial_lse [num_partials, num_rows] (natural
// log); out [num_rows, dim], lse [num_rows] (lse may be null if not wanted). A partial with
// lse = -inf contributes nothing; if every partial is -inf, out = 0 and lse = -inf (no NaN).
// Partials are summed in index order, so the result is deterministic.
#pragma once

#include <cstdint>

#include "kernels/exec.hpp"

namespace helix::kernels {

struct lse_merge_params {
  const float* partial_out = nullptr;
  const float* partial_lse = nullptr;
  std::int64_t num_partials = 0;
  std::int64_t num_rows = 0;
  std::int64_t dim = 0;
  float* out = nullptr;
  float* lse = nullptr;
};

[[nodiscard]] status lse_merge(const lse_merge_params& p, const exec_context& ctx);

}  // namespace helix::kernels
