#include "kernels/sharded_sampling.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>

#include "core/rng.hpp"

namespace helix::kernels {

static_assert(std::is_trivially_copyable_v<shard_summary> &&
                  std::is_standard_layout_v<shard_summary>,
              "shard_summary travels through an all_gather as raw bytes");

namespace {

constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr double inf_d = std::numeric_limits<double>::infinity();

// The merge keeps its per-shard state on the stack (no allocation per row on the decode path).
constexpr std::size_t max_merge_shards = 1024;

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

/// Relative slack of the top-p normaliser bounds (see the header): over 8 times the worst
/// rounding of the sampler's f64 sum and of the shards' masses together.
double top_p_margin(std::int64_t vocab) {
  return static_cast<double>(vocab + 4096) * 0x1p-48;
}

void summarise_row(const float* logits, std::int64_t begin, std::int64_t end,
                   const sampling_options& o, std::uint64_t request_id, std::int64_t position,
                   std::int32_t k_max, shard_summary& s) {
  s.vocab_begin = begin;
  s.vocab_end = end;
  s.mass = 0.0;
  s.argmax_value = 0.0f;
  s.argmax_id = -1;
  s.gumbel_value = 0.0f;
  s.gumbel_id = -1;
  s.bad_id = -1;
  s.bad_logit = 0.0f;
  s.has_finite = 0;
  s.count = 0;
  const std::int64_t n = end - begin;
  if (n == 0) return;
  // NaN or +inf make the row unsampleable; the merge reports the lowest such id of all shards.
  for (std::int64_t t = 0; t < n; ++t) {
    if (std::isnan(logits[t]) || logits[t] == inf_f) {
      s.bad_id = static_cast<std::int32_t>(begin + t);
      s.bad_logit = logits[t];
      return;
    }
    if (logits[t] != -inf_f) s.has_finite = 1;
  }
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
  // One pass in id order: argmax (strict > keeps the lowest id on ties) and a sorted insertion
  // list of the top k (a new equal value ranks after the ones already held: its id is larger).
  float z_max = 0.0f;
  std::int64_t argmax = -1;
  for (std::int64_t t = 0; t < n; ++t) {
    const float z = logits[t] / o.temperature;
    if (argmax < 0 || z > z_max) {
      z_max = z;
      argmax = t;
    }
    if (k > 0 && (s.count < k || z > s.values[static_cast<std::size_t>(s.count - 1)])) {
      std::int32_t j = s.count < k ? s.count++ : k - 1;
      while (j > 0 && z > s.values[static_cast<std::size_t>(j - 1)]) {
        s.values[static_cast<std::size_t>(j)] = s.values[static_cast<std::size_t>(j - 1)];
        s.ids[static_cast<std::size_t>(j)] = s.ids[static_cast<std::size_t>(j - 1)];
        --j;
      }
      s.values[static_cast<std::size_t>(j)] = z;
      s.ids[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(begin + t);
    }
  }
  s.argmax_value = z_max;
  s.argmax_id = static_cast<std::int32_t>(begin + argmax);
  if (o.top_p >= 1.0f) {
    // The Gumbel winner, needed only without top-p. The argmax's value is a lower bound of the
    // winning one, so tokens with fl(z + gumbel_noise_bound) below the best value so far cannot
    // win or tie and skip their noise (as the optimised sampler does).
    std::int64_t best = -1;
    float best_value = z_max + gumbel(o, request_id, position, begin + argmax);
    for (std::int64_t t = 0; t < n; ++t) {
      const float z = logits[t] / o.temperature;
      if (z + gumbel_noise_bound < best_value) continue;
      const float v = z + gumbel(o, request_id, position, begin + t);
      if (best < 0 ? v >= best_value : v > best_value) {
        best = t;
        best_value = v;
      }
    }
    s.gumbel_value = best_value;
    s.gumbel_id = static_cast<std::int32_t>(begin + best);
    return;
  }
  // Top-p's normaliser: the mass relative to the shard max, in f64 like the sampler's sums.
  if (z_max == -inf_f) return;  // every z is -inf: no mass
  double sum = 0.0;
  for (std::int64_t t = 0; t < n; ++t) {
    sum += std::exp(static_cast<double>(logits[t] / o.temperature) - static_cast<double>(z_max));
  }
  s.mass = sum;
}

struct candidate {
  float value;
  std::int32_t id;
};

/// The k-way merge of the shards' sorted candidate lists into the global order. Once a truncated
/// shard (one that sent fewer candidates than it has tokens) has given its last candidate, its
/// unsent tokens could rank before anything later, so the merged list is only known to be the
/// true global prefix up to and including that candidate: the merge ends there. Every token not
/// returned ranks after the last one returned.
class merged_order {
 public:
  explicit merged_order(std::span<const shard_summary> shards) : shards_(shards) {
    std::fill_n(cursor_.begin(), shards.size(), 0);
  }

  [[nodiscard]] std::optional<candidate> next() {
    if (done_) return std::nullopt;
    std::size_t pick = shards_.size();
    for (std::size_t a = 0; a < shards_.size(); ++a) {
      if (cursor_[a] >= shards_[a].count) continue;
      if (pick == shards_.size() || ranks_before(value(a), id(a), value(pick), id(pick))) pick = a;
    }
    if (pick == shards_.size()) {
      done_ = true;
      return std::nullopt;
    }
    const candidate c{value(pick), id(pick)};
    const shard_summary& s = shards_[pick];
    if (++cursor_[pick] == s.count && s.count < s.vocab_end - s.vocab_begin) done_ = true;
    return c;
  }
  /// Candidates of shard a returned so far.
  [[nodiscard]] std::int32_t taken(std::size_t a) const { return cursor_[a]; }

 private:
  [[nodiscard]] float value(std::size_t a) const {
    return shards_[a].values[static_cast<std::size_t>(cursor_[a])];
  }
  [[nodiscard]] std::int32_t id(std::size_t a) const {
    return shards_[a].ids[static_cast<std::size_t>(cursor_[a])];
  }

  std::span<const shard_summary> shards_;
  std::array<std::int32_t, max_merge_shards> cursor_;
  bool done_ = false;
};

/// The sampler's top-p normaliser when the merge knows the whole pre-top-p set (the first
/// `kept` candidates in the global order): their mass summed in token-id order, exactly as the
/// sampler sums it, so the boundary decision is bit-identical. Shards are disjoint ranges, so id
/// order is shard order by range, then id order inside each shard.
double exact_kept_mass(std::span<const shard_summary> shards, std::int64_t kept, double z_max) {
  merged_order order(shards);
  for (std::int64_t j = 0; j < kept; ++j) (void)order.next();
  std::array<std::uint32_t, max_merge_shards> by_range;
  for (std::size_t a = 0; a < shards.size(); ++a) by_range[a] = static_cast<std::uint32_t>(a);
  std::sort(by_range.begin(), by_range.begin() + static_cast<std::ptrdiff_t>(shards.size()),
            [&](std::uint32_t a, std::uint32_t b) {
              return shards[a].vocab_begin < shards[b].vocab_begin;
            });
  std::array<candidate, shard_summary_capacity> mine;
  double total = 0.0;
  for (std::size_t i = 0; i < shards.size(); ++i) {
    const std::size_t a = by_range[i];
    const auto n = static_cast<std::size_t>(order.taken(a));
    for (std::size_t c = 0; c < n; ++c) mine[c] = {shards[a].values[c], shards[a].ids[c]};
    std::sort(mine.begin(), mine.begin() + static_cast<std::ptrdiff_t>(n),
              [](const candidate& x, const candidate& y) { return x.id < y.id; });
    for (std::size_t c = 0; c < n; ++c)
      total += std::exp(static_cast<double>(mine[c].value) - z_max);
  }
  return total;
}

shard_merge sampled(std::int32_t token) {
  return {merge_outcome::sampled, token, 0.0f};
}

/// Checks that the ranges tile [0, vocab) and the counts fit; returns vocab.
expected<std::int64_t> check_tiling(std::span<const shard_summary> per_rank) {
  if (per_rank.size() > max_merge_shards) {
    return invalid_argument("merge_shard_candidates: {} shards, at most {}", per_rank.size(),
                            max_merge_shards);
  }
  std::int64_t vocab = 0;
  std::int64_t max_end = 0;
  for (std::size_t a = 0; a < per_rank.size(); ++a) {
    const shard_summary& s = per_rank[a];
    const std::int64_t n = s.vocab_end - s.vocab_begin;
    if (s.vocab_begin < 0 || n < 0 || s.count < 0 || s.count > shard_summary_capacity ||
        s.count > n || (s.bad_id >= 0 && (s.bad_id < s.vocab_begin || s.bad_id >= s.vocab_end))) {
      return invalid_argument(
          "merge_shard_candidates: rank {} has range [{}, {}), count {} and bad id {}", a,
          s.vocab_begin, s.vocab_end, s.count, s.bad_id);
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
  return vocab;
}

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

expected<shard_merge> merge_shard_candidates(std::span<const shard_summary> per_rank,
                                             const sampling_options& o, std::uint64_t request_id,
                                             std::int64_t position) {
  HELIX_RETURN_IF_ERROR(validate(o));
  HELIX_ASSIGN_OR_RETURN(const std::int64_t vocab, check_tiling(per_rank));

  // Bad logits first: the lowest NaN / +inf id of all shards, or no finite logit anywhere.
  shard_merge bad{merge_outcome::bad_logits, -1, -inf_f};
  bool any_finite = false;
  for (const shard_summary& s : per_rank) {
    if (s.vocab_end == s.vocab_begin) continue;
    if (s.bad_id >= 0 && (bad.token < 0 || s.bad_id < bad.token)) {
      bad.token = s.bad_id;
      bad.bad_logit = s.bad_logit;
    }
    any_finite = any_finite || s.has_finite != 0;
  }
  if (bad.token >= 0 || !any_finite) return bad;

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
    return sampled(best);
  }
  // The pre-top-p set, as the sampler defines it: the top_k highest, or the whole vocabulary.
  const std::int64_t kept_cap = o.top_k > 0 ? std::min<std::int64_t>(o.top_k, vocab) : vocab;
  if (kept_cap == vocab && o.top_p >= 1.0f) {
    std::int32_t best = -1;
    float best_value = 0.0f;
    for (const shard_summary& s : per_rank) {
      if (s.vocab_end == s.vocab_begin) continue;
      if (s.gumbel_id < 0) {
        return invalid_argument("merge_shard_candidates: shard [{}, {}) has no Gumbel winner",
                                s.vocab_begin, s.vocab_end);
      }
      if (best < 0 || ranks_before(s.gumbel_value, s.gumbel_id, best_value, best)) {
        best = s.gumbel_id;
        best_value = s.gumbel_value;
      }
    }
    return sampled(best);
  }
  for (const shard_summary& s : per_rank) {
    if (s.vocab_end > s.vocab_begin && s.count == 0) {
      return invalid_argument("merge_shard_candidates: shard [{}, {}) sent no candidates",
                              s.vocab_begin, s.vocab_end);
    }
  }

  // The known prefix of the global order: its length, first (z_max) and last values, and mass.
  const bool top_p = o.top_p < 1.0f;
  std::int64_t known = 0;
  float z_first = 0.0f;
  float z_last = 0.0f;
  double known_mass = 0.0;
  {
    merged_order order(per_rank);
    while (const std::optional<candidate> c = order.next()) {
      if (known++ == 0) z_first = c->value;
      z_last = c->value;
      if (top_p)
        known_mass += std::exp(static_cast<double>(c->value) - static_cast<double>(z_first));
    }
  }
  const auto z_max = static_cast<double>(z_first);
  const bool whole_set = known >= kept_cap;
  // Exact set: stop as soon as mass >= target. Otherwise the sampler's target lies in
  // [t_lo, t_hi]: stop when mass >= t_hi, go on while mass < t_lo, undecided in between.
  double target = inf_d;
  double t_lo = inf_d;
  double t_hi = inf_d;
  if (top_p && whole_set) {
    target = static_cast<double>(o.top_p) * exact_kept_mass(per_rank, kept_cap, z_max);
  } else if (top_p) {
    double shards_mass = 0.0;
    for (const shard_summary& s : per_rank) {
      if (s.vocab_end == s.vocab_begin) continue;
      shards_mass += s.mass * std::exp(static_cast<double>(s.argmax_value) - z_max);
    }
    double lo = known_mass;
    double hi = shards_mass;
    if (kept_cap == vocab) {
      lo = std::max(lo, shards_mass);
    } else {
      // The unknown members of the top_k set rank after the last known candidate.
      const double tail =
          static_cast<double>(kept_cap - known) * std::exp(static_cast<double>(z_last) - z_max);
      hi = std::min(hi, known_mass + tail);
    }
    const double m = top_p_margin(vocab);
    t_lo = static_cast<double>(o.top_p) * lo * (1.0 - m);
    t_hi = static_cast<double>(o.top_p) * hi * (1.0 + m);
  }

  // Walk the kept prefix in the global order, as the sampler does, drawing the Gumbel-max winner
  // as it goes. Candidates come in descending z: once fl(z + gumbel_noise_bound) is below the
  // best value, no later candidate (kept or not, known or not) can win or tie.
  merged_order order(per_rank);
  const std::int64_t limit = whole_set ? kept_cap : known;
  std::int32_t best = -1;
  float best_value = 0.0f;
  double mass = 0.0;
  for (std::int64_t j = 0; j < limit;) {
    const candidate c = *order.next();
    if (best >= 0 && c.value + gumbel_noise_bound < best_value) return sampled(best);
    const float v = c.value + gumbel(o, request_id, position, c.id);
    if (best < 0 || ranks_before(v, c.id, best_value, best)) {
      best = c.id;
      best_value = v;
    }
    mass += std::exp(static_cast<double>(c.value) - z_max);
    ++j;
    if (!top_p) continue;
    if (whole_set) {
      if (mass >= target) return sampled(best);
    } else if (mass >= t_hi) {
      return sampled(best);
    } else if (!(mass < t_lo)) {
      return shard_merge{};  // too close to the boundary to call (or not finite)
    }
  }
  if (whole_set) return sampled(best);
  // Every known candidate is kept, and so are some unknown ones, each with z <= z_last.
  if (z_last + gumbel_noise_bound < best_value) return sampled(best);
  return shard_merge{};
}

}  // namespace helix::kernels
