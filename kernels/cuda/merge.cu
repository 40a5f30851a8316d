// CUDA LSE merge (kernels/merge.hpp): one thread block per row.
//
// Every thread of a row computes the row's max and sum of exp over the partials itself, serially in
// index order: the result is deterministic, matches the reference's summation order, and needs no
// reduction across threads. The per-partial weights are then computed once into shared memory (in
// groups, so any number of partials fits) and each thread accumulates its output elements over the
// partials, again in index order. attention.cu reuses this for its split-KV chunk combine.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/cuda_ops.hpp"

namespace helix::kernels::cuda {
namespace {

constexpr int merge_threads = 128;
// Weights held in shared memory per pass over the partials.
constexpr int merge_weight_group = 256;

__global__ void __launch_bounds__(merge_threads)
    lse_merge_kernel(const float* __restrict__ partial_out, const float* __restrict__ partial_lse,
                     std::int64_t num_partials, std::int64_t num_rows, std::int64_t dim,
                     float* __restrict__ out, float* __restrict__ lse) {
  __shared__ float weight_s[merge_weight_group];
  const std::int64_t row = blockIdx.x;
  const int tid = static_cast<int>(threadIdx.x);
  float* out_row = out + row * dim;

  float max_lse = -INFINITY;
  for (std::int64_t i = 0; i < num_partials; ++i) {
    max_lse = fmaxf(max_lse, partial_lse[i * num_rows + row]);
  }
  if (max_lse == -INFINITY) {
    // No partial saw a key: the merge of nothing is out = 0, lse = -inf (never NaN).
    for (std::int64_t d = tid; d < dim; d += merge_threads) out_row[d] = 0.0f;
    if (tid == 0 && lse != nullptr) lse[row] = -INFINITY;
    return;
  }
  float sum = 0.0f;
  for (std::int64_t i = 0; i < num_partials; ++i) {
    sum += expf(partial_lse[i * num_rows + row] - max_lse);
  }
  const float row_lse = max_lse + logf(sum);
  if (tid == 0 && lse != nullptr) lse[row] = row_lse;

  // The common case (dim <= 4 * merge_threads, e.g. 512 for MLA) keeps the row in registers.
  constexpr int max_per_thread = 4;
  const bool in_registers = dim <= static_cast<std::int64_t>(max_per_thread) * merge_threads;
  float acc[max_per_thread] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (!in_registers) {
    for (std::int64_t d = tid; d < dim; d += merge_threads) out_row[d] = 0.0f;
  }
  for (std::int64_t base = 0; base < num_partials; base += merge_weight_group) {
    const int group = static_cast<int>(
        num_partials - base < merge_weight_group ? num_partials - base : merge_weight_group);
    __syncthreads();  // the previous group's weights are no longer read
    for (int k = tid; k < group; k += merge_threads) {
      const float l = partial_lse[(base + k) * num_rows + row];
      // A -inf partial is skipped outright: its out may be anything, 0 * NaN must not leak in.
      weight_s[k] = (l == -INFINITY) ? 0.0f : expf(l - row_lse);
    }
    __syncthreads();
    for (int k = 0; k < group; ++k) {
      const float w = weight_s[k];
      if (w == 0.0f) continue;
      const float* src = partial_out + ((base + k) * num_rows + row) * dim;
      if (in_registers) {
#pragma unroll
        for (int j = 0; j < max_per_thread; ++j) {
          const std::int64_t d = tid + j * merge_threads;
          if (d < dim) acc[j] += w * src[d];
        }
      } else {
        // Very wide rows accumulate in place: each element is owned by one thread throughout.
        for (std::int64_t d = tid; d < dim; d += merge_threads) out_row[d] += w * src[d];
      }
    }
  }
  if (in_registers) {
#pragma unroll
    for (int j = 0; j < max_per_thread; ++j) {
      const std::int64_t d = tid + j * merge_threads;
      if (d < dim) out_row[d] = acc[j];
    }
  }
}

}  // namespace

status lse_merge(const lse_merge_params& p, stream_handle stream) {
  if (p.num_rows == 0) return ok_status();
  if (p.num_rows > 0x7fffffff) {
    return failed_precondition("lse_merge (cuda): {} rows exceed the grid limit", p.num_rows);
  }
  auto* cu_stream = static_cast<cudaStream_t>(stream);
  lse_merge_kernel<<<static_cast<unsigned>(p.num_rows), merge_threads, 0, cu_stream>>>(
      p.partial_out, p.partial_lse, p.num_partials, p.num_rows, p.dim, p.out, p.lse);
  HELIX_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return ok_status();
}

}  // namespace helix::kernels::cuda
