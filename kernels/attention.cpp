#include "kernels/attention.hpp"

#include "kernels/cpu/optimized.hpp"
#include "kernels/cpu/reference.hpp"
#if HELIX_HAVE_CUDA
#include "kernels/cuda/cuda_ops.hpp"
#endif

namespace helix::kernels {
namespace {

status validate(const attention_partial_params& p) {
  const kv_page_layout& l = p.layout;
  if (p.num_queries <= 0 || p.num_q_heads <= 0) {
    return invalid_argument("attention: num_queries {} and num_q_heads {} must be positive",
                            p.num_queries, p.num_q_heads);
  }
  if (l.num_kv_heads <= 0 || p.num_q_heads % l.num_kv_heads != 0) {
    return invalid_argument("attention: num_q_heads {} is not a multiple of num_kv_heads {}",
                            p.num_q_heads, l.num_kv_heads);
  }
  if (l.key_dim <= 0 || l.value_dim <= 0 || l.block_tokens <= 0) {
    return invalid_argument("attention: key_dim {}, value_dim {}, block_tokens {} must be positive",
                            l.key_dim, l.value_dim, l.block_tokens);
  }
  if (l.value_in_key && l.value_dim > l.key_dim) {
    return invalid_argument("attention: value_dim {} exceeds key_dim {} with value_in_key",
                            l.value_dim, l.key_dim);
  }
  if (p.q == nullptr || p.out == nullptr || p.lse == nullptr ||
      (p.causal && p.query_pos == nullptr)) {
    return invalid_argument("attention: null q, out, lse or query_pos");
  }
  if (p.num_blocks < 0 || (p.num_blocks > 0 && (p.blocks == nullptr || p.kv_pool == nullptr))) {
    return invalid_argument("attention: {} blocks but null blocks or kv_pool", p.num_blocks);
  }
  return ok_status();
}

}  // namespace

status validate_blocks(const attention_partial_params& p) {
  for (std::int64_t b = 0; b < p.num_blocks; ++b) {
    const kv_block_ref& blk = p.blocks[b];
    if (blk.num_tokens < 0 || blk.num_tokens > p.layout.block_tokens || blk.slot < 0) {
      return invalid_argument("attention: block {} has {} tokens in slot {} (block_tokens {})", b,
                              blk.num_tokens, blk.slot, p.layout.block_tokens);
    }
  }
  return ok_status();
}

std::size_t attention_workspace_bytes(const attention_partial_params& p, const exec_context& ctx) {
  switch (ctx.backend) {
    case backend::reference:
      return 0;
    case backend::cpu:
      return cpu::attention_workspace_bytes(p);
    case backend::cuda:
#if HELIX_HAVE_CUDA
      return cuda::attention_workspace_bytes(p);
#else
      return 0;
#endif
  }
  return 0;
}

status attention_partial(const attention_partial_params& p, const exec_context& ctx) {
  HELIX_RETURN_IF_ERROR(validate(p));
  if (ctx.backend != backend::cuda) HELIX_RETURN_IF_ERROR(validate_blocks(p));
  const std::size_t need = attention_workspace_bytes(p, ctx);
  if (need > 0 && (p.workspace == nullptr || p.workspace_bytes < need)) {
    return failed_precondition("attention: workspace of {} bytes given, {} needed",
                               p.workspace_bytes, need);
  }
  switch (ctx.backend) {
    case backend::reference:
      return reference::attention_partial(p);
    case backend::cpu:
      return cpu::attention_partial(p, ctx.pool);
    case backend::cuda:
#if HELIX_HAVE_CUDA
      return cuda::attention_partial(p, ctx.stream);
#else
      return failed_precondition("attention: this build has no CUDA kernels");
#endif
  }
  return internal_error("attention: unknown backend");
}

}  // namespace helix::kernels
