// Reference partial attention: the oracle. One query head at a time, two passes over the keys
// (max, then exp-weighted sums) in double, straight from kv_page_layout's offsets. Slow on
// purpose: nothing here is clever, so nothing here can be subtly wrong.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/reference.hpp"

namespace helix::kernels::reference {
namespace {

// Value dims accumulated per pass; a fixed stack array keeps the oracle allocation-free.
constexpr std::int64_t value_chunk = 256;

struct head_view {
  const float* q;
  std::int64_t query_pos;
  std::int64_t kv_head;
};

// Number of leading tokens of `b` visible to a query at `query_pos` (keys are consecutive
// positions from first_pos, so the visible ones are a prefix).
std::int64_t visible_tokens(const attention_partial_params& p, const kv_block_ref& b,
                            std::int64_t query_pos) {
  if (!p.causal) return b.num_tokens;
  return std::clamp<std::int64_t>(query_pos - b.first_pos + 1, 0, b.num_tokens);
}

const std::byte* page_of(const attention_partial_params& p, const kv_block_ref& b) {
  return static_cast<const std::byte*>(p.kv_pool) +
         static_cast<std::size_t>(b.slot) * p.layout.page_bytes();
}

double score(const attention_partial_params& p, const head_view& h, const std::byte* page,
             std::int64_t token) {
  const std::int64_t base = p.layout.key_offset(h.kv_head, token);
  double acc = 0.0;
  for (std::int64_t d = 0; d < p.layout.key_dim; ++d) {
    const double k =
        static_cast<double>(load_as_f32(page, p.layout.type, static_cast<std::size_t>(base + d))) *
        p.k_scale;
    acc += static_cast<double>(h.q[d]) * k;
  }
  return acc * p.softmax_scale;
}

void attend_one_head(const attention_partial_params& p, const head_view& h, float* out,
                     float* lse) {
  const kv_page_layout& l = p.layout;
  double max_score = -std::numeric_limits<double>::infinity();
  for (std::int64_t b = 0; b < p.num_blocks; ++b) {
    const kv_block_ref& blk = p.blocks[b];
    const std::int64_t n = visible_tokens(p, blk, h.query_pos);
    for (std::int64_t t = 0; t < n; ++t)
      max_score = std::max(max_score, score(p, h, page_of(p, blk), t));
  }
  if (max_score == -std::numeric_limits<double>::infinity()) {
    std::fill(out, out + l.value_dim, 0.0f);
    *lse = -std::numeric_limits<float>::infinity();
    return;
  }
  double sum = 0.0;
  for (std::int64_t d0 = 0; d0 < l.value_dim; d0 += value_chunk) {
    const std::int64_t nd = std::min(value_chunk, l.value_dim - d0);
    double acc[value_chunk] = {};
    double chunk_sum = 0.0;
    for (std::int64_t b = 0; b < p.num_blocks; ++b) {
      const kv_block_ref& blk = p.blocks[b];
      const std::byte* page = page_of(p, blk);
      const std::int64_t n = visible_tokens(p, blk, h.query_pos);
      for (std::int64_t t = 0; t < n; ++t) {
        const double w = std::exp(score(p, h, page, t) - max_score);
        chunk_sum += w;
        const std::int64_t base = l.value_offset(h.kv_head, t);
        for (std::int64_t d = 0; d < nd; ++d) {
          acc[d] += w *
                    static_cast<double>(
                        load_as_f32(page, l.type, static_cast<std::size_t>(base + d0 + d))) *
                    p.v_scale;
        }
      }
    }
    sum = chunk_sum;  // the same in every chunk
    for (std::int64_t d = 0; d < nd; ++d) out[d0 + d] = static_cast<float>(acc[d] / chunk_sum);
  }
  *lse = static_cast<float>(max_score + std::log(sum));
}

}  // namespace

status attention_partial(const attention_partial_params& p) {
  const std::int64_t group = p.num_q_heads / p.layout.num_kv_heads;
  for (std::int64_t qi = 0; qi < p.num_queries; ++qi) {
    for (std::int64_t h = 0; h < p.num_q_heads; ++h) {
      const std::int64_t row = qi * p.num_q_heads + h;
      const head_view view{p.q + row * p.layout.key_dim, p.causal ? p.query_pos[qi] : 0, h / group};
      attend_one_head(p, view, p.out + row * p.layout.value_dim, p.lse + row);
    }
  }
  return ok_status();
}

}  // namespace helix::kernels::reference
