// Reference kernels for the dense ops: gemm, rmsnorm, rope, swiglu, router, embedding, sampling.
//
// Plain loops on one thread, written to be read against the op contracts in kernels/<op>.hpp and
// the HF transformers code they mirror. Dot products and sums accumulate in double where that is
// the obvious choice; element-wise formulas use exactly the f32 operations HF uses (so that the
// optimised kernels can match them bit for bit where they choose to).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "kernels/cpu/reference.hpp"

namespace helix::kernels::reference {

namespace {

std::size_t idx(std::int64_t i) {
  return static_cast<std::size_t>(i);
}

}  // namespace

status gemm(const gemm_params& p) {
  const std::int64_t x_stride = p.x_stride == 0 ? p.k : p.x_stride;
  const std::int64_t y_stride = p.y_stride == 0 ? p.n : p.y_stride;
  for (std::int64_t r = 0; r < p.m; ++r) {
    const float* x = p.x + r * x_stride;
    float* y = p.y + r * y_stride;
    for (std::int64_t c = 0; c < p.n; ++c) {
      double acc = 0.0;
      for (std::int64_t i = 0; i < p.k; ++i) {
        float w = load_as_f32(p.w, p.w_type, idx(c * p.k + i));
        if (p.w_type == dtype::fp8_e4m3) {  // weight-only dequantization, rounded to f32
          w *= p.w_scales[c * p.w_scale_stride + (i + p.w_scale_phase) / p.w_block_k];
        }
        acc += static_cast<double>(x[i]) * static_cast<double>(w);
      }
      y[c] = p.accumulate ? y[c] + static_cast<float>(acc) : static_cast<float>(acc);
    }
  }
  return ok_status();
}

status rmsnorm(const rmsnorm_params& p) {
  const std::int64_t x_stride = p.x_stride == 0 ? p.dim : p.x_stride;
  const std::int64_t out_stride = p.out_stride == 0 ? p.dim : p.out_stride;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* x = p.x + r * x_stride;
    float* out = p.out + r * out_stride;
    double sum_sq = 0.0;
    for (std::int64_t i = 0; i < p.dim; ++i) sum_sq += static_cast<double>(x[i]) * x[i];
    // HF: variance = mean(x^2) in f32, x * rsqrt(variance + eps), then weight * (that).
    const float variance = static_cast<float>(sum_sq / static_cast<double>(p.dim));
    const float inv_rms = 1.0f / std::sqrt(variance + p.eps);
    for (std::int64_t i = 0; i < p.dim; ++i) {
      out[i] = load_as_f32(p.weight, p.w_type, idx(i)) * (x[i] * inv_rms);
    }
  }
  return ok_status();
}

status rope(const rope_params& p) {
  const std::int64_t half = p.rot_dim / 2;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    // HF: freqs = inv_freq.float() @ position_ids.float() (one f32 product), cos/sin of that,
    // times attention_scaling.
    const float pos = static_cast<float>(p.positions[r]);
    for (std::int64_t h = 0; h < p.num_heads; ++h) {
      float* v = p.x + r * p.row_stride + h * p.head_stride + p.rot_offset;
      for (std::int64_t i = 0; i < half; ++i) {
        const float angle = pos * p.inv_freq[i];
        const float c = std::cos(angle) * p.attention_factor;
        const float s = std::sin(angle) * p.attention_factor;
        float* a = p.interleave ? v + 2 * i : v + i;
        float* b = p.interleave ? v + 2 * i + 1 : v + i + half;
        // q * cos + rotate_half(q) * sin, with rotate_half(a, b) = (-b, a).
        const float a0 = *a;
        const float b0 = *b;
        *a = a0 * c - b0 * s;
        *b = b0 * c + a0 * s;
      }
    }
  }
  return ok_status();
}

status swiglu(const swiglu_params& p) {
  const std::int64_t gate_stride = p.gate_stride == 0 ? p.dim : p.gate_stride;
  const std::int64_t up_stride = p.up_stride == 0 ? p.dim : p.up_stride;
  const std::int64_t out_stride = p.out_stride == 0 ? p.dim : p.out_stride;
  for (std::int64_t r = 0; r < p.rows; ++r) {
    for (std::int64_t i = 0; i < p.dim; ++i) {
      const float g = p.gate[r * gate_stride + i];
      const float u = p.up[r * up_stride + i];
      p.out[r * out_stride + i] = g / (1.0f + std::exp(-g)) * u;
    }
  }
  return ok_status();
}

status route_experts(const router_params& p) {
  const std::int64_t e_count = p.num_experts;
  const std::int64_t per_group = e_count / p.num_groups;
  std::vector<float> score(idx(e_count));
  std::vector<float> choice(idx(e_count));
  std::vector<char> allowed(idx(e_count));
  std::vector<std::int64_t> order(idx(e_count));
  std::vector<float> group_score(idx(p.num_groups));
  std::vector<std::int64_t> group_order(idx(p.num_groups));
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* logits = p.logits + r * e_count;
    if (p.scoring == router_scoring::sigmoid) {
      for (std::int64_t e = 0; e < e_count; ++e) {
        score[idx(e)] = 1.0f / (1.0f + std::exp(-logits[e]));
      }
    } else {
      float max_logit = -std::numeric_limits<float>::infinity();
      for (std::int64_t e = 0; e < e_count; ++e) max_logit = std::max(max_logit, logits[e]);
      double sum = 0.0;
      for (std::int64_t e = 0; e < e_count; ++e) sum += std::exp(logits[e] - max_logit);
      for (std::int64_t e = 0; e < e_count; ++e) {
        score[idx(e)] = static_cast<float>(std::exp(logits[e] - max_logit) / sum);
      }
    }
    for (std::int64_t e = 0; e < e_count; ++e) {
      choice[idx(e)] = p.bias != nullptr ? score[idx(e)] + p.bias[e] : score[idx(e)];
    }
    // Descending value, lower index first on ties.
    auto by_value = [](const std::vector<float>& v) {
      return [&v](std::int64_t a, std::int64_t b) {
        return v[idx(a)] > v[idx(b)] || (v[idx(a)] == v[idx(b)] && a < b);
      };
    };
    std::fill(allowed.begin(), allowed.end(), 1);
    if (p.num_groups > 1) {
      for (std::int64_t g = 0; g < p.num_groups; ++g) {
        std::vector<float> members(choice.begin() + g * per_group,
                                   choice.begin() + (g + 1) * per_group);
        std::sort(members.begin(), members.end(), std::greater<>());
        group_score[idx(g)] = p.bias != nullptr ? members[0] + members[1] : members[0];
      }
      std::iota(group_order.begin(), group_order.end(), 0);
      std::sort(group_order.begin(), group_order.end(), by_value(group_score));
      std::fill(allowed.begin(), allowed.end(), 0);
      for (std::int64_t j = 0; j < p.topk_groups; ++j) {
        const std::int64_t g = group_order[idx(j)];
        std::fill(allowed.begin() + g * per_group, allowed.begin() + (g + 1) * per_group, 1);
      }
    }
    order.clear();
    for (std::int64_t e = 0; e < e_count; ++e) {
      if (allowed[idx(e)] != 0) order.push_back(e);
    }
    std::sort(order.begin(), order.end(), by_value(choice));
    double weight_sum = 0.0;
    for (std::int64_t j = 0; j < p.top_k; ++j) weight_sum += score[idx(order[idx(j)])];
    for (std::int64_t j = 0; j < p.top_k; ++j) {
      const std::int64_t e = order[idx(j)];
      float w = score[idx(e)];
      if (p.norm_topk_prob) w = static_cast<float>(w / (weight_sum + 1e-20));
      p.expert_ids[r * p.top_k + j] = static_cast<std::int32_t>(e);
      p.expert_weights[r * p.top_k + j] = w * p.routed_scaling_factor;
    }
  }
  return ok_status();
}

status embedding(const embedding_params& p) {
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const std::int64_t id = p.ids[r];
    float* out = p.out + r * p.dim;
    const bool here = id >= p.vocab_begin && id < p.vocab_end;
    for (std::int64_t i = 0; i < p.dim; ++i) {
      out[i] =
          here ? load_as_f32(p.table, p.table_type, idx((id - p.vocab_begin) * p.dim + i)) : 0.0f;
    }
  }
  return ok_status();
}

namespace {

/// Gumbel noise of token `token` for a row: -log(-log(u)), u in (0, 1) from the counter.
float gumbel(const sampling_options& o, std::uint64_t request_id, std::int64_t position,
             std::int64_t token) {
  const float u = random_uniform(o.seed, request_id, static_cast<std::uint64_t>(position),
                                 rng_purpose::sampling, static_cast<std::uint64_t>(token));
  return -std::log(-std::log(u));
}

}  // namespace

status sample(const sample_params& p) {
  const std::int64_t stride = p.logits_stride == 0 ? p.vocab : p.logits_stride;
  // A row with NaN or +inf, or only -inf, has no distribution: refuse the batch before writing
  // any token (-inf alone masks a token and is fine).
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* logits = p.logits + r * stride;
    bool any_finite = false;
    for (std::int64_t t = 0; t < p.vocab; ++t) {
      if (std::isnan(logits[t]) || logits[t] == std::numeric_limits<float>::infinity()) {
        return bad_logits_row(r, t, logits[t]);
      }
      any_finite = any_finite || std::isfinite(logits[t]);
    }
    if (!any_finite) return bad_logits_row(r, -1, logits[0]);
  }
  for (std::int64_t r = 0; r < p.rows; ++r) {
    const float* logits = p.logits + r * stride;
    const sampling_options& o = p.options[r];
    if (o.temperature == 0.0f) {
      std::int64_t best = 0;
      for (std::int64_t t = 1; t < p.vocab; ++t) {
        if (logits[t] > logits[best]) best = t;
      }
      p.tokens[r] = static_cast<std::int32_t>(best);
      continue;
    }
    // Workspace: z by token id, then the candidate ids sorted by descending z (lower id first
    // on ties); the kept set is a prefix of that order.
    auto* order = static_cast<std::int32_t*>(p.workspace);
    auto* z = reinterpret_cast<float*>(order + p.vocab);
    for (std::int64_t t = 0; t < p.vocab; ++t) {
      z[t] = logits[t] / o.temperature;
      order[t] = static_cast<std::int32_t>(t);
    }
    std::sort(order, order + p.vocab, [z](std::int32_t a, std::int32_t b) {
      return z[a] > z[b] || (z[a] == z[b] && a < b);
    });
    std::int64_t kept = p.vocab;
    if (o.top_k > 0) kept = std::min<std::int64_t>(kept, o.top_k);
    if (o.top_p < 1.0f) {
      const double z_max = z[order[0]];
      // Mass of the kept set (the tokens ranked at or before the last kept one), summed in
      // token-id order so that a kernel need not sort all of it to reproduce the sum.
      const std::int32_t last = order[kept - 1];
      double total = 0.0;
      for (std::int32_t t = 0; t < p.vocab; ++t) {
        const bool after_last = z[t] < z[last] || (z[t] == z[last] && t > last);
        if (!after_last) total += std::exp(z[t] - z_max);
      }
      const double target = static_cast<double>(o.top_p) * total;
      double mass = 0.0;
      std::int64_t j = 0;
      while (j < kept) {
        mass += std::exp(z[order[j]] - z_max);
        ++j;
        if (mass >= target) break;
      }
      kept = j;
    }
    std::int64_t best = -1;
    float best_value = 0.0f;
    for (std::int64_t j = 0; j < kept; ++j) {
      const std::int64_t t = order[j];
      const float v = z[t] + gumbel(o, p.request_ids[r], p.positions[r], t);
      if (best < 0 || v > best_value || (v == best_value && t < best)) {
        best = t;
        best_value = v;
      }
    }
    p.tokens[r] = static_cast<std::int32_t>(best);
  }
  return ok_status();
}

}  // namespace helix::kernels::reference
