// Optimised CPU MoE router and token sampler.
//
// Both make discrete choices, so both use exactly the reference's arithmetic (same formulas, same
// summation orders) and differ only in how they search: the router keeps a running top-k instead
// of sorting every expert; the sampler selects with nth_element / partial sorts in the caller's
// workspace, spreads full-vocabulary scans over the pool in chunks of fixed size, and skips the
// noise of tokens that provably cannot win. Their outputs therefore equal the reference's exactly,
// on any number of threads.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/rng.hpp"
#include "kernels/cpu/optimized.hpp"

namespace helix::kernels::cpu {

namespace {

// ---------------------------------------------------------------------------------------------
// router

constexpr std::int64_t router_rows_per_task = 16;
// Group scores live on the stack; DeepSeek-V3 has 8 groups.
constexpr std::int64_t max_groups = 256;

/// Whether (va, a) ranks before (vb, b): larger value first, lower index on ties.
bool ranks_before(float va, std::int64_t a, float vb, std::int64_t b) {
  return va > vb || (va == vb && a < b);
}

void route_row(const router_params& p, std::int64_t r) {
  const float* logits = p.logits + r * p.num_experts;
  std::int32_t* ids = p.expert_ids + r * p.top_k;
  float* weights = p.expert_weights + r * p.top_k;  // holds the choice values until the end

  float max_logit = -std::numeric_limits<float>::infinity();
  double sum = 0.0;
  if (p.scoring == router_scoring::softmax) {
    for (std::int64_t e = 0; e < p.num_experts; ++e) max_logit = std::max(max_logit, logits[e]);
    for (std::int64_t e = 0; e < p.num_experts; ++e) sum += std::exp(logits[e] - max_logit);
  }
  auto score = [&](std::int64_t e) {
    if (p.scoring == router_scoring::sigmoid) return 1.0f / (1.0f + std::exp(-logits[e]));
    return static_cast<float>(std::exp(logits[e] - max_logit) / sum);
  };
  auto choice = [&](std::int64_t e) { return p.bias != nullptr ? score(e) + p.bias[e] : score(e); };

  // Group limiting: rank groups by their score, keep the first topk_groups.
  const std::int64_t per_group = p.num_experts / p.num_groups;
  bool group_kept[max_groups];
  if (p.num_groups > 1) {
    float group_score[max_groups];
    for (std::int64_t g = 0; g < p.num_groups; ++g) {
      float first = -std::numeric_limits<float>::infinity();
      float second = -std::numeric_limits<float>::infinity();
      for (std::int64_t e = g * per_group; e < (g + 1) * per_group; ++e) {
        const float v = choice(e);
        if (v > first) {
          second = first;
          first = v;
        } else if (v > second) {
          second = v;
        }
      }
      group_score[g] = p.bias != nullptr ? first + second : first;
    }
    for (std::int64_t g = 0; g < p.num_groups; ++g) {
      std::int64_t better = 0;  // groups ranked before g
      for (std::int64_t o = 0; o < p.num_groups; ++o) {
        if (ranks_before(group_score[o], o, group_score[g], g)) ++better;
      }
      group_kept[g] = better < p.topk_groups;
    }
  }

  // Running top-k, sorted by rank; experts arrive in increasing id, so a strict comparison keeps
  // the lower id first on ties.
  std::int64_t count = 0;
  for (std::int64_t e = 0; e < p.num_experts; ++e) {
    if (p.num_groups > 1 && !group_kept[e / per_group]) continue;
    const float v = choice(e);
    if (count == p.top_k && !(v > weights[count - 1])) continue;
    std::int64_t j = count < p.top_k ? count++ : count - 1;
    for (; j > 0 && weights[j - 1] < v; --j) {
      weights[j] = weights[j - 1];
      ids[j] = ids[j - 1];
    }
    weights[j] = v;
    ids[j] = static_cast<std::int32_t>(e);
  }

  double weight_sum = 0.0;
  for (std::int64_t j = 0; j < p.top_k; ++j) {
    weights[j] = score(ids[j]);
    weight_sum += weights[j];
  }
  for (std::int64_t j = 0; j < p.top_k; ++j) {
    float w = weights[j];
    if (p.norm_topk_prob) w = static_cast<float>(w / (weight_sum + 1e-20));
    weights[j] = w * p.routed_scaling_factor;
  }
}

// ---------------------------------------------------------------------------------------------
// sampling

// Full-vocabulary scans (greedy, or Gumbel-max without top-k / top-p) run in chunks of this many
// tokens; each chunk's winner goes to the workspace, and the winners are merged in chunk order.
constexpr std::int64_t sample_chunk = 8192;
// Rows are checked for NaN / +inf in blocks of this many logits, with a branch-free test per
// block that the compiler can vectorise; only a bad block is searched for its first bad logit.
constexpr std::int64_t check_block = 1024;
// First guess of how many sorted candidates top-p needs; grows by 4x.
constexpr std::int64_t top_p_first_guess = 256;

struct row_ctx {
  const float* logits = nullptr;
  const sampling_options* o = nullptr;
  std::uint64_t request_id = 0;
  std::int64_t position = 0;
  std::int64_t vocab = 0;
  std::int32_t* ids = nullptr;  // workspace [vocab]
  float* values = nullptr;      // workspace [vocab]
};

/// What a row's check found: the lowest index whose logit is NaN or +inf (-1: none), and
/// whether some logit is finite.
struct logits_check {
  std::int64_t bad = -1;
  bool any_finite = false;
};

/// On the f32 bit pattern: exponent all ones is inf or NaN; with the sign bit clear it is +inf or
/// NaN, with it set -inf (a mask, unless every logit is one) or NaN.
logits_check check_logits(const float* logits, std::int64_t vocab) {
  constexpr std::uint32_t exp_mask = 0x7f800000u;
  logits_check c;
  for (std::int64_t begin = 0; begin < vocab; begin += check_block) {
    const std::int64_t end = std::min(vocab, begin + check_block);
    std::uint32_t bad = 0;
    std::uint32_t finite = 0;
    for (std::int64_t t = begin; t < end; ++t) {
      const auto bits = std::bit_cast<std::uint32_t>(logits[t]);
      bad |= static_cast<std::uint32_t>((bits & 0x7fffffffu) > exp_mask || bits == exp_mask);
      finite |= static_cast<std::uint32_t>((bits & exp_mask) != exp_mask);
    }
    c.any_finite = c.any_finite || finite != 0;
    if (bad == 0) continue;
    for (std::int64_t t = begin; t < end; ++t) {
      if (std::isnan(logits[t]) || logits[t] == std::numeric_limits<float>::infinity()) {
        c.bad = t;
        return c;
      }
    }
  }
  return c;
}

/// As the reference. random_uniform is at most 1 - 2^-24, so the noise is finite and at most
/// -log(-log(1 - 2^-24)) = 16.64.
float gumbel(const row_ctx& row, std::int64_t token) {
  const float u =
      random_uniform(row.o->seed, row.request_id, static_cast<std::uint64_t>(row.position),
                     rng_purpose::sampling, static_cast<std::uint64_t>(token));
  return -std::log(-std::log(u));
}

/// Merges the per-chunk winners in ids/values [0, num_chunks): chunks are in increasing id, so a
/// strict comparison keeps the lower id on ties. A chunk whose tokens were all pruned has id -1.
std::int32_t merge_chunks(const row_ctx& row, std::int64_t num_chunks) {
  std::int64_t best = -1;
  for (std::int64_t c = 0; c < num_chunks; ++c) {
    if (row.ids[c] < 0) continue;
    if (best < 0 || row.values[c] > row.values[best]) best = c;
  }
  return row.ids[best];
}

/// Argmax of the logits, lowest id on ties (greedy).
std::int32_t argmax_full(const row_ctx& row, thread_pool* pool) {
  const std::int64_t num_chunks = (row.vocab + sample_chunk - 1) / sample_chunk;
  parallel_for(pool, num_chunks, [&](std::int64_t c) {
    const std::int64_t begin = c * sample_chunk;
    const std::int64_t end = std::min(row.vocab, begin + sample_chunk);
    std::int64_t best = begin;
    for (std::int64_t t = begin + 1; t < end; ++t) {
      if (row.logits[t] > row.logits[best]) best = t;
    }
    row.ids[c] = static_cast<std::int32_t>(best);
    row.values[c] = row.logits[best];
  });
  return merge_chunks(row, num_chunks);
}

/// Gumbel-max over the whole vocabulary. The value drawn for the top logit is a lower bound of the
/// winning value, so tokens whose z + gumbel_noise_bound is below the best value seen so far are
/// pruned without drawing their noise; with real logits (a spread of tens) that is most of the
/// vocabulary.
std::int32_t gumbel_full(const row_ctx& row, thread_pool* pool) {
  const float temperature = row.o->temperature;
  const std::int32_t top = argmax_full(row, pool);  // argmax z too, as T > 0
  const float floor_value = row.logits[top] / temperature + gumbel(row, top);
  const std::int64_t num_chunks = (row.vocab + sample_chunk - 1) / sample_chunk;
  parallel_for(pool, num_chunks, [&](std::int64_t c) {
    const std::int64_t begin = c * sample_chunk;
    const std::int64_t end = std::min(row.vocab, begin + sample_chunk);
    std::int64_t best = -1;
    float best_value = floor_value;
    for (std::int64_t t = begin; t < end; ++t) {
      const float z = row.logits[t] / temperature;
      if (z + gumbel_noise_bound < best_value) continue;  // cannot win, nor tie
      const float v = z + gumbel(row, t);
      if (best < 0 ? v >= best_value : v > best_value) {
        best = t;
        best_value = v;
      }
    }
    row.ids[c] = static_cast<std::int32_t>(best);
    row.values[c] = best_value;
  });
  return merge_chunks(row, num_chunks);
}

/// With top-k and/or top-p: candidates sorted by rank in the workspace, Gumbel-max over the kept
/// prefix. values[t] holds z of token t; ids holds the candidates.
std::int32_t sample_filtered(const row_ctx& row) {
  const sampling_options& o = *row.o;
  const std::int64_t vocab = row.vocab;
  std::int32_t* ids = row.ids;
  const float* z = row.values;
  for (std::int64_t t = 0; t < vocab; ++t) {
    row.values[t] = row.logits[t] / o.temperature;
    ids[t] = static_cast<std::int32_t>(t);
  }
  auto before = [z](std::int32_t a, std::int32_t b) { return ranks_before(z[a], a, z[b], b); };

  std::int64_t kept = vocab;
  std::int64_t sorted = 0;  // ids[0, sorted) hold the best candidates in rank order
  if (o.top_k > 0 && o.top_k < vocab) {
    kept = o.top_k;
    std::nth_element(ids, ids + kept, ids + vocab, before);
    std::sort(ids, ids + kept, before);
    sorted = kept;
  }
  if (o.top_p < 1.0f) {
    if (sorted == 0) {
      // The top candidate, for z_max.
      std::nth_element(ids, ids, ids + vocab, before);
      sorted = 1;
    }
    const double z_max = z[ids[0]];
    // Mass of the kept set, in token-id order (as the reference sums it).
    const std::int32_t last = ids[kept - 1];
    double total = 0.0;
    if (kept == vocab) {
      for (std::int64_t t = 0; t < vocab; ++t) total += std::exp(z[t] - z_max);
    } else {
      for (std::int64_t t = 0; t < vocab; ++t) {
        if (!before(last, static_cast<std::int32_t>(t))) total += std::exp(z[t] - z_max);
      }
    }
    const double target = static_cast<double>(o.top_p) * total;
    double mass = 0.0;
    std::int64_t j = 0;
    std::int64_t guess = std::max(sorted, std::min(kept, top_p_first_guess));
    for (;;) {
      if (sorted < guess) {
        // Extend the sorted prefix to `guess` candidates.
        std::nth_element(ids + sorted, ids + guess - 1, ids + kept, before);
        std::sort(ids + sorted, ids + guess, before);
        sorted = guess;
      }
      bool reached = false;
      while (j < sorted) {
        mass += std::exp(z[ids[j]] - z_max);
        ++j;
        if (mass >= target) {
          reached = true;
          break;
        }
      }
      if (reached || j == kept) break;
      guess = std::min(kept, guess * 4);
    }
    kept = j;
  }
  // Candidates come in descending z: once z + gumbel_noise_bound is below the best value, no later
  // candidate can win or tie.
  std::int64_t best = -1;
  float best_value = 0.0f;
  for (std::int64_t j = 0; j < kept; ++j) {
    const std::int64_t t = ids[j];
    if (best >= 0 && z[t] + gumbel_noise_bound < best_value) break;
    const float v = z[t] + gumbel(row, t);
    if (best < 0 || v > best_value || (v == best_value && t < best)) {
      best = t;
      best_value = v;
    }
  }
  return static_cast<std::int32_t>(best);
}

}  // namespace

status route_experts(const router_params& p, thread_pool* pool) {
  if (p.num_groups > max_groups) {
    return failed_precondition("router: {} groups, the cpu backend supports at most {}",
                               p.num_groups, max_groups);
  }
  const std::int64_t num_tasks = (p.rows + router_rows_per_task - 1) / router_rows_per_task;
  parallel_for(pool, num_tasks, [&](std::int64_t t) {
    const std::int64_t end = std::min(p.rows, (t + 1) * router_rows_per_task);
    for (std::int64_t r = t * router_rows_per_task; r < end; ++r) route_row(p, r);
  });
  return ok_status();
}

status sample(const sample_params& p, thread_pool* pool) {
  const std::int64_t stride = p.logits_stride == 0 ? p.vocab : p.logits_stride;
  // As the reference: refuse a row without a distribution before writing any token.
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* logits = p.logits + r * stride;
    const logits_check c = check_logits(logits, p.vocab);
    if (c.bad >= 0) return bad_logits_row(r, c.bad, logits[c.bad]);
    if (!c.any_finite) return bad_logits_row(r, -1, logits[0]);
  }
  for (std::int64_t r = 0; r < p.rows; ++r) {
    row_ctx row;
    row.logits = p.logits + r * stride;
    row.o = &p.options[r];
    row.request_id = p.request_ids[r];
    row.position = p.positions[r];
    row.vocab = p.vocab;
    row.ids = static_cast<std::int32_t*>(p.workspace);
    row.values = reinterpret_cast<float*>(row.ids + p.vocab);
    const bool filtered = row.o->temperature != 0.0f &&
                          ((row.o->top_k > 0 && row.o->top_k < p.vocab) || row.o->top_p < 1.0f);
    if (filtered) {
      p.tokens[r] = sample_filtered(row);
    } else if (row.o->temperature == 0.0f) {
      p.tokens[r] = argmax_full(row, pool);
    } else {
      p.tokens[r] = gumbel_full(row, pool);
    }
  }
  return ok_status();
}

}  // namespace helix::kernels::cpu
