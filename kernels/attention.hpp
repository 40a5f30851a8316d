// Partial attention with log-sum-exp over a paged KV shard (GQA and MLA in absorbed form).
//
// Called by the model's layer program for each request: the rank's queries attend to the KV
// blocks the rank holds (which may be any subset of the request's positions), producing a partial
// output and its LSE, which kernels/merge.hpp combines exactly with the other ranks' partials.
//
// Shapes (all row-major, f32 unless said):
//   q         [num_queries, num_q_heads, layout.key_dim]. For MLA in absorbed form each head's
//             query is [q_nope absorbed through W_UK (kv_lora_rank) | rotated q_rope].
//   query_pos [num_queries] global positions (int64); causal: key position <= query position.
//   kv_pool   base of the layer's page pool; block b's page is at kv_pool + slot * page_bytes.
//   blocks    [num_blocks] the request's blocks on this rank (rank field ignored), any order.
//   out       [num_queries, num_q_heads, layout.value_dim]
//   lse       [num_queries, num_q_heads], natural log of sum_j exp(scale * q.k_j).
// GQA grouping: query head h reads KV head h / (num_q_heads / layout.num_kv_heads).
// A query that sees no key gets lse = -inf and out = 0 (merges as a no-op).
// Scores are scale * (q . k) with k dequantised as stored * k_scale; values as stored * v_scale.
//
// Batch invariance: the result for a request depends only on its own inputs; the optimised CPU
// kernel splits the KV into fixed-size chunks (never by thread count), so results are also
// independent of the number of threads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/block_table.hpp"
#include "core/kv_layout.hpp"
#include "kernels/exec.hpp"

namespace helix::kernels {

struct attention_partial_params {
  const float* q = nullptr;
  const std::int64_t* query_pos = nullptr;
  std::int64_t num_queries = 1;
  std::int64_t num_q_heads = 0;
  kv_page_layout layout;
  const void* kv_pool = nullptr;
  const kv_block_ref* blocks = nullptr;
  std::int64_t num_blocks = 0;
  float softmax_scale = 1.0f;
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  bool causal = true;
  float* out = nullptr;
  float* lse = nullptr;
  /// Caller-owned scratch of at least attention_workspace_bytes() bytes (may be null if that is 0).
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
};

/// Scratch bytes the chosen backend needs for these params (0 for the reference).
[[nodiscard]] std::size_t attention_workspace_bytes(const attention_partial_params& p,
                                                    const exec_context& ctx);

/// invalid_argument naming the first block entry that is out of range (num_tokens not in
/// [0, block_tokens], negative slot). Reads `blocks`, so host memory only: the dispatcher runs it
/// for the CPU backends; CUDA kernels clamp instead.
[[nodiscard]] status validate_blocks(const attention_partial_params& p);

/// invalid_argument on inconsistent shapes (num_q_heads not a multiple of num_kv_heads, null
/// pointers, key_dim/value_dim mismatch for MLA, block with more tokens than block_tokens);
/// failed_precondition for an unsupported backend or a workspace that is too small.
[[nodiscard]] status attention_partial(const attention_partial_params& p, const exec_context& ctx);

}  // namespace helix::kernels
