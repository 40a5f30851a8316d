// Optimised LSE merge: rows split into fixed blocks of `rows_per_task` (never by thread count),
// each row merged with vector axpys over its partials in index order, so results do not depend on
// the pool size. Also used by the optimised attention to combine its chunk partials.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/simd.hpp"

namespace helix::kernels::cpu {
namespace {

constexpr std::int64_t rows_per_task = 16;
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

using axpy_fn = void (*)(float, const float*, float*, std::int64_t);

axpy_fn pick_axpy(simd::isa isa) {
#if HELIX_SIMD_X86
  switch (isa) {
    case simd::isa::avx512:
      return &simd::axpy_avx512<float>;
    case simd::isa::avx2:
      return &simd::axpy_avx2<float>;
    case simd::isa::scalar:
      break;
  }
#endif
  (void)isa;
  return &simd::axpy_scalar<float>;
}

void merge_row(const lse_merge_params& p, std::int64_t r, axpy_fn axpy) {
  float max_lse = neg_inf;
  for (std::int64_t i = 0; i < p.num_partials; ++i) {
    max_lse = std::max(max_lse, p.partial_lse[i * p.num_rows + r]);
  }
  float* out = p.out + r * p.dim;
  std::fill(out, out + p.dim, 0.0f);
  if (max_lse == neg_inf) {  // every partial empty: out 0, lse -inf, never 0/0
    if (p.lse != nullptr) p.lse[r] = neg_inf;
    return;
  }
  // Sum relative to the max so that large |lse| (1e4) neither overflows nor underflows.
  float sum = 0.0f;
  for (std::int64_t i = 0; i < p.num_partials; ++i) {
    sum += std::exp(p.partial_lse[i * p.num_rows + r] - max_lse);
  }
  const float lse = max_lse + std::log(sum);
  for (std::int64_t i = 0; i < p.num_partials; ++i) {
    const float li = p.partial_lse[i * p.num_rows + r];
    if (li == neg_inf) continue;  // contributes nothing, whatever its out holds
    axpy(std::exp(li - max_lse) / sum, p.partial_out + (i * p.num_rows + r) * p.dim, out, p.dim);
  }
  if (p.lse != nullptr) p.lse[r] = lse;
}

}  // namespace

/// Test seam: lse_merge on a given instruction set (clamped to what the CPU supports).
status lse_merge_with_isa(const lse_merge_params& p, thread_pool* pool, simd::isa isa) {
  const axpy_fn axpy = pick_axpy(std::min(isa, simd::cpu_isa()));
  const std::int64_t num_tasks = (p.num_rows + rows_per_task - 1) / rows_per_task;
  auto task = [&](std::int64_t t) {
    const std::int64_t end = std::min(p.num_rows, (t + 1) * rows_per_task);
    for (std::int64_t r = t * rows_per_task; r < end; ++r) merge_row(p, r, axpy);
  };
  parallel_for(pool, num_tasks, task);
  return ok_status();
}

status lse_merge(const lse_merge_params& p, thread_pool* pool) {
  return lse_merge_with_isa(p, pool, simd::cpu_isa());
}

}  // namespace helix::kernels::cpu
