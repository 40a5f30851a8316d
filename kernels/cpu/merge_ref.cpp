// Reference LSE merge: the oracle, in double, partials in index order.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/reference.hpp"

namespace helix::kernels::reference {

status lse_merge(const lse_merge_params& p) {
  constexpr double neg_inf = -std::numeric_limits<double>::infinity();
  for (std::int64_t r = 0; r < p.num_rows; ++r) {
    double max_lse = neg_inf;
    for (std::int64_t i = 0; i < p.num_partials; ++i) {
      max_lse = std::max(max_lse, static_cast<double>(p.partial_lse[i * p.num_rows + r]));
    }
    float* out = p.out + r * p.dim;
    if (max_lse == neg_inf) {  // every partial empty: a no-op merge, never 0/0
      std::fill(out, out + p.dim, 0.0f);
      if (p.lse != nullptr) p.lse[r] = -std::numeric_limits<float>::infinity();
      continue;
    }
    double sum = 0.0;
    for (std::int64_t i = 0; i < p.num_partials; ++i) {
      sum += std::exp(static_cast<double>(p.partial_lse[i * p.num_rows + r]) - max_lse);
    }
    const double lse = max_lse + std::log(sum);
    for (std::int64_t d = 0; d < p.dim; ++d) {
      double acc = 0.0;
      for (std::int64_t i = 0; i < p.num_partials; ++i) {
        const double li = p.partial_lse[i * p.num_rows + r];
        if (li == neg_inf) continue;  // contributes nothing, whatever its out holds
        acc += std::exp(li - lse) *
               static_cast<double>(p.partial_out[(i * p.num_rows + r) * p.dim + d]);
      }
      out[d] = static_cast<float>(acc);
    }
    if (p.lse != nullptr) p.lse[r] = static_cast<float>(lse);
  }
  return ok_status();
}

}  // namespace helix::kernels::reference
