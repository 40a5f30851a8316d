#include "kernels/embedding.hpp"

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels {

status embedding(const embedding_params& p, const exec_context& ctx) {
  if (p.rows < 0 || p.dim <= 0 || p.vocab_end < p.vocab_begin || p.ids == nullptr ||
      p.table == nullptr || p.out == nullptr) {
    return invalid_argument("embedding: rows {}, dim {}, vocab [{}, {}) or null pointers", p.rows,
                            p.dim, p.vocab_begin, p.vocab_end);
  }
  for (std::int64_t r = 0; r < p.rows; ++r) {
    if (p.ids[r] < 0)
      return invalid_argument("embedding: token id {} at row {} is negative", p.ids[r], r);
  }
  switch (ctx.backend) {
    case backend::reference:
      return reference::embedding(p);
    case backend::cpu:
      return cpu::embedding(p, ctx.pool);
    case backend::cuda:
      return failed_precondition("embedding: no CUDA implementation yet");
  }
  return internal_error("embedding: unknown backend");
}

}  // namespace helix::kernels
