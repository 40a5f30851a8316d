// Exact token sampling over a vocabulary split into shards, without gathering the logits.
//
// Who calls it: the vocabulary-parallel LM head of the multi-worker layer program (ARCHITECTURE.md
// section 2 step 9). Each rank computes logits only for its vocabulary range [vocab_begin,
// vocab_end) (ranges may be uneven, even empty), calls shard_candidates() to reduce every row to a
// fixed-size POD shard_summary, the summaries travel through an all_gather, and every rank calls
// merge_shard_candidates() on the same summaries to pick the same token. The result is the token
// that helix::kernels::sample (kernels/sampling.hpp) would pick on the full row: same
// z = logit / T (f32), same counter-based Gumbel noise keyed by the GLOBAL token id, same tie and
// top-p boundary rules.
//
// Why it is exact:
//   greedy: the global argmax is the best of the shards' argmaxes (lowest global id on ties);
//   temperature: argmax_i z_i + g_i over the union is the best of the shards' Gumbel winners;
//   top-k: the global top-k is contained in the union of the shards' top-k lists;
//   top-p: the nucleus is a prefix of the globally sorted candidates; a merged prefix is known to
//     be the true global prefix as long as no shard that was truncated (sent fewer candidates than
//     it has tokens) has run out of sent candidates before that point. If the kept prefix needs
//     more than that, merge returns failed_precondition (never a silently different answer).
//
// What k_max must cover: with top_k > 0, k_max >= top_k (then top-k, and top-p inside it, always
// succeed). With top-p alone, k_max must be at least the number of nucleus tokens that fall into
// any one shard; a shard of at most k_max tokens always sends all of them, so k_max >= the largest
// shard makes top-p always exact. k_max <= shard_summary_capacity.
//
// Numerics: for top-p the reference normalises by the mass of the pre-top-p set summed in token-id
// order in double. When that whole set is among the merged candidates (top_k > 0, or every shard
// sent all its tokens) merge sums exactly that way and is bit-identical. Otherwise (top-p alone
// with truncated shards) the mass comes from the shards' log-sum-exps (double), which differs from
// the reference's sum by a few ulps: the kept set can only differ when the cumulative mass lands
// within ~1e-15 relative of top_p * total, i.e. on a floating-point tie of the boundary.
#pragma once

#include <array>
#include <cstdint>
#include <span>

#include "core/status.hpp"
#include "kernels/sampling.hpp"

namespace helix::kernels {

/// Most candidates one shard can send per row. Fixed so that shard_summary is POD of a fixed size
/// (about 2 KiB) and can be all_gathered as raw bytes.
inline constexpr std::int32_t shard_summary_capacity = 256;

/// One rank's reduction of one row of its logits shard. Values are in units of z = logit / T
/// (T > 0) or raw logits (greedy); ids are GLOBAL token ids.
struct shard_summary {
  std::int64_t vocab_begin = 0;  // the shard's global range [vocab_begin, vocab_end)
  std::int64_t vocab_end = 0;
  // Natural-log log-sum-exp of z over the shard (double, for top-p's normaliser); -inf for an
  // empty shard; unused (-inf) for greedy.
  double lse = 0.0;
  float argmax_value = 0.0f;    // max z (greedy: max logit)
  std::int32_t argmax_id = -1;  // lowest global id on ties; -1 for an empty shard
  float gumbel_value = 0.0f;    // max over the shard of z_i + g_i (T > 0 only)
  std::int32_t gumbel_id = -1;  // its global id, lowest on ties; -1 for greedy or empty shard
  // Top candidates: the shard's largest z, sorted descending, lower id first on ties. count =
  // min(k, shard size) with k = min(top_k, k_max) if top_k > 0, else k_max if top_p < 1, else 0.
  std::int32_t count = 0;
  std::array<float, shard_summary_capacity> values{};
  std::array<std::int32_t, shard_summary_capacity> ids{};
};

struct shard_candidates_params {
  // [rows, vocab_end - vocab_begin] f32 logits of this shard, row stride logits_stride (0 = shard
  // width). May be null when the shard is empty.
  const float* logits = nullptr;
  std::int64_t logits_stride = 0;
  std::int64_t rows = 0;
  std::int64_t vocab_begin = 0;  // global id of this shard's first token
  std::int64_t vocab_end = 0;    // one past its last; == vocab_begin for an empty shard
  const sampling_options* options = nullptr;    // [rows]
  const std::uint64_t* request_ids = nullptr;   // [rows]
  const std::int64_t* positions = nullptr;      // [rows]
  std::int32_t k_max = shard_summary_capacity;  // in [1, shard_summary_capacity]
  shard_summary* summaries = nullptr;           // [rows] out
};

/// Fills summaries[r] for every row. invalid_argument on bad shapes, options or k_max.
[[nodiscard]] status shard_candidates(const shard_candidates_params& p);

/// Merges one row's summaries (one per rank, any order; their ranges must be disjoint and tile
/// [0, vocab)) into the sampled GLOBAL token id. options, request_id and position must be the ones
/// the shards used. failed_precondition when k_max was too small to be exact (see above);
/// invalid_argument on inconsistent summaries.
[[nodiscard]] expected<std::int32_t> merge_shard_candidates(std::span<const shard_summary> per_rank,
                                                            const sampling_options& options,
                                                            std::uint64_t request_id,
                                                            std::int64_t position);

}  // namespace helix::kernels
