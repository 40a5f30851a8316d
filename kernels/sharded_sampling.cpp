#include "kernels/sharded_sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "core/rng.hpp"

namespace helix::kernels {

static_assert(std::is_trivially_copyable_v<shard_summary> &&
                  std::is_standard_layout_v<shard_summary>,
              "shard_summary travels through an all_gather as raw bytes");

namespace {

constexpr double neg_inf = -std::numeric_limits<double>::infinity();

/// The single-rank sampler's Gumbel noise, written with the same f32 operations so that
/// z + g is bit-identical to the value it compares.
float gumbel(const sampling_options& o, std::uint64_t request_id, std::int64_t position,
             std::int64_t token) {
  const float u = random_uniform(o.seed, request_id, static_cast<std::uint64_t>(position),
                                 rng_purpose::sampling, static_cast<std::uint64_t>(token));
  return -std::log(-std::log(u));
}

/// The sampler's candidate order: larger value first, lower id first on ties.
bool ranks_before(float va, std::int32_t ia, float vb, std::int32_t ib) {
  return va > vb || (va == vb && ia < ib);
}

/// How many candidates a shard sends for these options (before clamping to its size).
std::int32_t candidates_wanted(const sampling_options& o, std::int32_t k_max) {
  if (o.temperature == 0.0f) return 0;
  if (o.top_k > 0) return std::min(o.top_k, k_max);
  if (o.top_p < 1.0f) return k_max;
  return 0;
}

void summarise_row(const float* logits, std::int64_t begin, std::int64_t end,
                   const sampling_options& o, std::uint64_t request_id, std::int64_t position,
                   std::int32_t k_max, shard_summary& s) {
  s.vocab_begin = begin;
  s.vocab_end = end;
  s.lse = neg_inf;
  s.argmax_value = 0.0f;
  s.argmax_id = -1;
  s.gumbel_value = 0.0f;
  s.gumbel_id = -1;
  s.count = 0;
  const std::int64_t n = end - begin;
  if (n == 0) return;
  if (o.temperature == 0.0f) {
    // Greedy works on raw logits, exactly as the sampler does (strict > keeps the lowest id).
    std::int64_t best = 0;
    for (std::int64_t t = 1; t < n; ++t) {
      if (logits[t] > logits[best]) best = t;
    }
    s.argmax_value = logits[best];
    s.argmax_id = static_cast<std::int32_t>(begin + best);
    return;
  }
  const std::int32_t k =
      static_cast<std::int32_t>(std::min<std::int64_t>(candidates_wanted(o, k_max), n));
  // One pass in id order: argmax and Gumbel winner (strict > keeps the lowest id on ties) and a
  // sorted insertion list of the top k (a new equal value ranks after the ones already held,
  // since its id is larger).
  float z_max = 0.0f;
  std::int64_t argmax = -1;
  for (std::int64_t t = 0; t < n; ++t) {
    const float z = logits[t] / o.temperature;
    const std::int64_t id = begin + t;
    if (argmax < 0 || z > z_max) {
      z_max = z;
      argmax = id;
    }
    const float v = z + gumbel(o, request_id, position, id);
    if (s.gumbel_id < 0 || v > s.gumbel_value) {
      s.gumbel_value = v;
      s.gumbel_id = static_cast<std::int32_t>(id);
    }
    if (k > 0 && (s.count < k || z > s.values[static_cast<std::size_t>(s.count - 1)])) {
      std::int32_t j = s.count < k ? s.count++ : k - 1;
      while (j > 0 && z > s.values[static_cast<std::size_t>(j - 1)]) {
        s.values[static_cast<std::size_t>(j)] = s.values[static_cast<std::size_t>(j - 1)];
        s.ids[static_cast<std::size_t>(j)] = s.ids[static_cast<std::size_t>(j - 1)];
        --j;
      }
      s.values[static_cast<std::size_t>(j)] = z;
      s.ids[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(id);
    }
  }
  s.argmax_value = z_max;
  s.argmax_id = static_cast<std::int32_t>(argmax);
  // Log-sum-exp around the shard max, in double like the sampler's top-p mass.
  if (std::isinf(z_max) && z_max < 0.0f) return;  // every z is -inf: no mass
  double sum = 0.0;
  for (std::int64_t t = 0; t < n; ++t) {
    sum += std::exp(static_cast<double>(logits[t] / o.temperature) - static_cast<double>(z_max));
  }
  s.lse = static_cast<double>(z_max) + std::log(sum);
}

struct candidate {
  float value;
  std::int32_t id;
};

}  // namespace

status shard_candidates(const shard_candidates_params& p) {
  const std::int64_t n = p.vocab_end - p.vocab_begin;
  if (p.rows < 0 || p.vocab_begin < 0 || n < 0 ||
      p.vocab_end > std::numeric_limits<std::int32_t>::max()) {
    return invalid_argument("shard_candidates: rows {} or vocab range [{}, {})", p.rows,
                            p.vocab_begin, p.vocab_end);
  }
  if ((n > 0 && p.logits == nullptr) || p.options == nullptr || p.request_ids == nullptr ||
      p.positions == nullptr || p.summaries == nullptr) {
    return invalid_argument("shard_candidates: null pointers");
  }
  if (p.logits_stride != 0 && p.logits_stride < n) {
    return invalid_argument("shard_candidates: logits_stride {} < shard width {}", p.logits_stride,
                            n);
  }
  if (p.k_max < 1 || p.k_max > shard_summary_capacity) {
    return invalid_argument("shard_candidates: k_max {} must be in [1, {}]", p.k_max,
                            shard_summary_capacity);
  }
  for (std::int64_t r = 0; r < p.rows; ++r) {
    HELIX_RETURN_IF_ERROR(validate(p.options[r]).with_context(fmt::format("row {}", r)));
  }
  const std::int64_t stride = p.logits_stride == 0 ? n : p.logits_stride;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    summarise_row(n > 0 ? p.logits + r * stride : nullptr, p.vocab_begin, p.vocab_end, p.options[r],
                  p.request_ids[r], p.positions[r], p.k_max, p.summaries[r]);
  }
  return ok_status();
}

expected<std::int32_t> merge_shard_candidates(std::span<const shard_summary> per_rank,
                                              const sampling_options& o, std::uint64_t request_id,
                                              std::int64_t position) {
  HELIX_RETURN_IF_ERROR(validate(o));
  // The ranges must tile [0, vocab): non-negative, disjoint, and summing to the largest end.
  std::int64_t vocab = 0;
  std::int64_t max_end = 0;
  for (std::size_t a = 0; a < per_rank.size(); ++a) {
    const shard_summary& s = per_rank[a];
    const std::int64_t n = s.vocab_end - s.vocab_begin;
    if (s.vocab_begin < 0 || n < 0 || s.count < 0 || s.count > shard_summary_capacity ||
        s.count > n) {
      return invalid_argument("merge_shard_candidates: rank {} has range [{}, {}) and count {}", a,
                              s.vocab_begin, s.vocab_end, s.count);
    }
    for (std::size_t b = 0; b < a; ++b) {
      const shard_summary& q = per_rank[b];
      if (n > 0 && q.vocab_end > q.vocab_begin && s.vocab_begin < q.vocab_end &&
          q.vocab_begin < s.vocab_end) {
        return invalid_argument("merge_shard_candidates: ranks {} and {} overlap", b, a);
      }
    }
    vocab += n;
    max_end = std::max(max_end, s.vocab_end);
  }
  if (vocab == 0 || vocab != max_end) {
    return invalid_argument("merge_shard_candidates: shards cover {} tokens of [0, {})", vocab,
                            max_end);
  }

  if (o.temperature == 0.0f) {
    std::int32_t best = -1;
    float best_value = 0.0f;
    for (const shard_summary& s : per_rank) {
      if (s.argmax_id < 0) continue;
      if (best < 0 || ranks_before(s.argmax_value, s.argmax_id, best_value, best)) {
        best = s.argmax_id;
        best_value = s.argmax_value;
      }
    }
    return best;
  }
  if (o.top_k == 0 && o.top_p >= 1.0f) {
    std::int32_t best = -1;
    float best_value = 0.0f;
    for (const shard_summary& s : per_rank) {
      if (s.gumbel_id < 0) continue;
      if (best < 0 || ranks_before(s.gumbel_value, s.gumbel_id, best_value, best)) {
        best = s.gumbel_id;
        best_value = s.gumbel_value;
      }
    }
    return best;
  }

  // k-way merge of the sorted lists into the global order. Once a truncated shard (one that sent
  // fewer candidates than it has tokens) has given its last candidate, its unsent tokens could
  // rank before anything later, so the merged list is only known to be the true global prefix up
  // to and including that candidate: stop there.
  std::vector<std::int32_t> cursor(per_rank.size(), 0);
  std::vector<candidate> merged;
  std::size_t stopper = per_rank.size();  // the truncated shard that ended the merge, if any
  for (;;) {
    std::size_t pick = per_rank.size();
    for (std::size_t a = 0; a < per_rank.size(); ++a) {
      const shard_summary& s = per_rank[a];
      const auto c = static_cast<std::size_t>(cursor[a]);
      if (cursor[a] >= s.count) continue;
      if (pick == per_rank.size()) {
        pick = a;
        continue;
      }
      const shard_summary& q = per_rank[pick];
      const auto d = static_cast<std::size_t>(cursor[pick]);
      if (ranks_before(s.values[c], s.ids[c], q.values[d], q.ids[d])) pick = a;
    }
    if (pick == per_rank.size()) break;
    const shard_summary& s = per_rank[pick];
    const auto c = static_cast<std::size_t>(cursor[pick]++);
    merged.push_back({s.values[c], s.ids[c]});
    if (cursor[pick] == s.count && s.count < s.vocab_end - s.vocab_begin) {
      stopper = pick;
      break;
    }
  }

  // The pre-top-p set, as the sampler defines it: the top_k highest, or the whole vocabulary.
  const std::int64_t kept_cap = o.top_k > 0 ? std::min<std::int64_t>(o.top_k, vocab) : vocab;
  const auto known = static_cast<std::int64_t>(merged.size());
  if (known < kept_cap && stopper == per_rank.size()) {
    // Unreachable: untruncated shards send all their tokens, so the merge knows the vocabulary.
    return internal_error("merge_shard_candidates: {} of {} tokens known, no shard truncated",
                          known, vocab);
  }
  if (o.top_k > 0 && known < kept_cap) {
    const shard_summary& s = per_rank[stopper];
    return failed_precondition(
        "merge_shard_candidates: top_k {} needs more candidates than the {} shard [{}, {}) sent; "
        "k_max must be >= top_k",
        o.top_k, s.count, s.vocab_begin, s.vocab_end);
  }
  std::int64_t kept = std::min(kept_cap, known);
  if (o.top_p < 1.0f) {
    const double z_max = merged.front().value;
    double total = 0.0;
    if (known >= kept_cap) {
      // The whole pre-top-p set is known: sum its mass in token-id order, exactly as the sampler
      // does, so the boundary decision is bit-identical.
      std::vector<candidate> by_id(merged.begin(), merged.begin() + kept_cap);
      std::sort(by_id.begin(), by_id.end(),
                [](const candidate& a, const candidate& b) { return a.id < b.id; });
      for (const candidate& c : by_id) total += std::exp(static_cast<double>(c.value) - z_max);
    } else {
      // top-p alone over truncated shards: the global normaliser from the shards' log-sum-exps.
      for (const shard_summary& s : per_rank) {
        if (s.vocab_end > s.vocab_begin) total += std::exp(s.lse - z_max);
      }
    }
    const double target = static_cast<double>(o.top_p) * total;
    double mass = 0.0;
    std::int64_t j = 0;
    bool reached = false;
    while (j < kept) {
      mass += std::exp(static_cast<double>(merged[static_cast<std::size_t>(j)].value) - z_max);
      ++j;
      if (mass >= target) {
        reached = true;
        break;
      }
    }
    if (!reached && kept < kept_cap) {
      const shard_summary& s = per_rank[stopper];
      return failed_precondition(
          "merge_shard_candidates: the top_p {} nucleus needs more than the {} candidates shard "
          "[{}, {}) sent (k_max too small: it must cover the nucleus tokens of every shard)",
          o.top_p, s.count, s.vocab_begin, s.vocab_end);
    }
    kept = j;
  }
  std::int32_t best = -1;
  float best_value = 0.0f;
  for (std::int64_t j = 0; j < kept; ++j) {
    const candidate& c = merged[static_cast<std::size_t>(j)];
    const float v = c.value + gumbel(o, request_id, position, c.id);
    if (best < 0 || ranks_before(v, c.id, best_value, best)) {
      best = c.id;
      best_value = v;
    }
  }
  return best;
}

}  // namespace helix::kernels
