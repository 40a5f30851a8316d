// Exact token sampling over a vocabulary split into shards, mostly without gathering the logits.
//
// Who calls it: the vocabulary-parallel LM head of the multi-worker layer program (ARCHITECTURE.md
// section 2 step 9, model/rank_program.cpp). Each rank computes logits only for its vocabulary
// range [vocab_begin, vocab_end) (ranges may be uneven, even empty), calls shard_candidates() to
// reduce every row to a fixed-size POD shard_summary, the summaries travel through one
// all_gather, and every rank calls merge_shard_candidates() on the same summaries. The merge
// either decides the token, or says the row is undecided, or that its logits are bad; since every
// rank merges the same bytes, all ranks agree on each row's outcome. The caller then samples the
// undecided rows on their full logits (a second all_gather of just those rows' shards, then
// helix::kernels::sample). Either way the token is the one kernels::sample (kernels/sampling.hpp)
// picks on the full row: same z = logit / T (f32), same counter-based Gumbel noise keyed by the
// GLOBAL token id, same tie and top-p boundary rules; every top_k and top_p is exact.
//
// When the summaries decide (why it is exact):
//   greedy: the global argmax is the best of the shards' argmaxes (lowest global id on ties);
//   temperature alone (or top_k >= vocab): argmax_i z_i + g_i over the union is the best of the
//     shards' Gumbel winners;
//   top-k / top-p: the shards' sorted candidate lists merge into the global order, and the merged
//     list is the true global prefix up to the point where some truncated shard (one that sent
//     fewer candidates than it has tokens) runs out. Every token not in that prefix ranks after
//     its last candidate (value z_last). Then
//     - if the prefix holds the whole pre-top-p set (the top_k best, or every token), top-p sums
//       that set's mass in token-id order exactly as the sampler does: bit-identical;
//     - otherwise the top-p normaliser is only bounded: from below by the known prefix's mass (or
//       the shards' masses when there is no top_k), from above by the shards' masses (and, with
//       top_k, the prefix plus (top_k - known) * exp(z_last - z_max)). The boundary is decided
//       only where the prefix mass clears those bounds by a relative margin of
//       (vocab + 4096) * 2^-48 (1.3e-10 for 32000 tokens). The sampler's own normaliser is an
//       f64 sum of at most vocab terms, each exp(z - z_max) with |z - z_max| <= 745 where it is
//       not 0, so it is within (vocab + 750) * 2^-53 relative of the exact sum; the shards'
//       masses within (shard + 1500 + shards) * 2^-53: the margin is over 8 times the sum of both
//       (assuming exp and log within 1 ulp, as glibc's are), so no rounding can flip a decided
//       boundary. Inside the margin the row is undecided;
//     - when every known candidate is surely kept but the kept set reaches past them, the best
//       known z + g is the winner if fl(z_last + gumbel_noise_bound) is below it (no unknown
//       token can reach or tie it); otherwise the row is undecided.
//
// What k_max covers: nothing about exactness, only how often a row is decided in one round.
// Every row with top_k <= k_max is decided; with top-p it suffices that each shard's share of
// the nucleus (or of the top_k set) fits in k_max; a shard of at most k_max tokens always sends
// all of them. k_max <= shard_summary_capacity; the summary's size does not depend on it.
//
// Bad logits: a row holding NaN or +inf in any shard, or only -inf in all of them, merges to
// merge_outcome::bad_logits naming the lowest such global id (kernels::bad_logits_row formats the
// same message as kernels::sample). -inf alone masks a token.
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
  // sum over the shard of exp(z - argmax_value), f64 in token-id order: the shard's softmax mass
  // relative to its own max (top-p's normaliser bounds); 0 when every z is -inf, when the shard
  // is empty, or when top_p == 1 (not needed).
  double mass = 0.0;
  float argmax_value = 0.0f;    // max z (greedy: max logit)
  std::int32_t argmax_id = -1;  // lowest global id on ties; -1 for an empty shard
  float gumbel_value = 0.0f;    // max over the shard of z_i + g_i (T > 0 and top_p == 1 only)
  std::int32_t gumbel_id = -1;  // its global id, lowest on ties; -1 when not computed or empty
  // Bad logits: the lowest global id whose logit is NaN or +inf (-1: none) and that logit. When
  // set, nothing else in the summary is meaningful.
  std::int32_t bad_id = -1;
  float bad_logit = 0.0f;
  // 1 when some logit of the shard is finite (not -inf), else 0 (an int for a fixed layout).
  std::int32_t has_finite = 0;
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

/// Fills summaries[r] for every row (a row with bad logits gets bad_id / has_finite, not an
/// error). invalid_argument on bad shapes, options or k_max.
[[nodiscard]] status shard_candidates(const shard_candidates_params& p);

/// What the summaries say about one row.
enum class merge_outcome : std::uint8_t {
  sampled,     // token is the sampled GLOBAL id, the one kernels::sample picks on the full row
  undecided,   // the summaries do not pin the token down: sample the row's full logits instead
  bad_logits,  // the row cannot be sampled: report bad_logits_row(row, token, bad_logit)
};

/// The merge of one row. token: the sampled id (sampled), or the lowest global id whose logit is
/// NaN or +inf, -1 when every logit is -inf (bad_logits); -1 when undecided.
struct shard_merge {
  merge_outcome outcome = merge_outcome::undecided;
  std::int32_t token = -1;
  float bad_logit = 0.0f;  // bad_logits with token >= 0: that token's logit
};

/// Merges one row's summaries (one per rank, any order; their ranges must be disjoint and tile
/// [0, vocab)). options, request_id and position must be the ones the shards used. A pure
/// function of its inputs, so every rank merging the same summaries gets the same result.
/// invalid_argument on invalid options or inconsistent summaries (overlapping ranges, a gap, no
/// tokens at all, a count out of range).
[[nodiscard]] expected<shard_merge> merge_shard_candidates(std::span<const shard_summary> per_rank,
                                                           const sampling_options& options,
                                                           std::uint64_t request_id,
                                                           std::int64_t position);

}  // namespace helix::kernels
