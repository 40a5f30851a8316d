#include "model/decoder.hpp"

#include <algorithm>

#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/rmsnorm.hpp"
#include "model/step_ops.hpp"

namespace helix::model {
namespace {

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

// Bounds that keep every size computation far from overflow (block offsets are int32, slots are
// int32); memory itself is checked when the KV pool is allocated.
constexpr std::int64_t max_block_tokens = 1 << 16;
constexpr std::int64_t max_capacity_tokens = std::int64_t{1} << 40;
constexpr std::int64_t max_step_tokens = 1 << 20;

kv_page_layout page_layout(const model_spec& s, const decoder_options& o) {
  kv_page_layout l;
  l.block_tokens = o.block_tokens;
  l.type = o.kv_type;
  if (s.is_mla()) {
    l.num_kv_heads = 1;
    l.key_dim = s.kv_key_dim();
    l.value_dim = s.kv_value_dim();
    l.value_in_key = true;
  } else {
    l.num_kv_heads = s.num_kv_heads;
    l.key_dim = s.head_dim;
    l.value_dim = s.head_dim;
  }
  return l;
}

}  // namespace

expected<std::unique_ptr<decoder>> decoder::create(const model_weights& weights,
                                                   const decoder_options& options) {
  const model_spec& s = weights.spec;
  HELIX_RETURN_IF_ERROR(s.validate());
  if (options.block_tokens <= 0 || options.block_tokens > max_block_tokens ||
      options.kv_capacity_tokens <= 0 || options.kv_capacity_tokens > max_capacity_tokens ||
      options.max_batch_tokens <= 0 || options.max_batch_tokens > max_step_tokens) {
    return invalid_argument(
        "decoder: block_tokens {} must be in [1, {}], kv_capacity_tokens {} in "
        "[1, {}] and max_batch_tokens {} in [1, {}]",
        options.block_tokens, max_block_tokens, options.kv_capacity_tokens, max_capacity_tokens,
        options.max_batch_tokens, max_step_tokens);
  }
  if (options.backend == kernels::backend::cuda) {
    return failed_precondition(
        "decoder: the single-worker decoder runs on the CPU backends "
        "(reference, cpu); CUDA covers attention and merge kernels only");
  }
  if (static_cast<std::int64_t>(weights.layers.size()) != s.num_layers) {
    return invalid_argument("decoder: weights have {} layers, spec {}", weights.layers.size(),
                            s.num_layers);
  }
  const kv_page_layout layout = page_layout(s, options);
  const std::int64_t slots =
      (options.kv_capacity_tokens + options.block_tokens - 1) / options.block_tokens;
  HELIX_ASSIGN_OR_RETURN(kv_store kv, kv_store::create(layout, s.num_layers, slots));
  return std::make_unique<decoder>(passkey{}, weights, options, std::move(kv));
}

decoder::decoder(passkey, const model_weights& weights, const decoder_options& options, kv_store kv)
    : w_(weights),
      opt_(options),
      kv_(std::move(kv)),
      pool_(std::make_unique<thread_pool>(options.num_threads)) {
  const model_spec& s = w_.spec;
  rope_ = kernels::make_rope_table(s.rope, s.is_mla() ? s.mla.qk_rope_head_dim : s.head_dim);
  if (s.is_mla()) {
    // Absorption needs W_UK^T per head: q_latent = W_UK[h]^T q_nope. kv_b_proj rows of head h are
    // [W_UK (qk_nope rows) ; W_UV (v_head_dim rows)], each kv_lora_rank wide.
    const mla_spec& m = s.mla;
    for (const layer_weights& L : w_.layers) {
      tensor t(w_.weight_type, {s.num_q_heads * m.kv_lora_rank, m.qk_nope_head_dim});
      for (std::int64_t h = 0; h < s.num_q_heads; ++h) {
        for (std::int64_t i = 0; i < m.qk_nope_head_dim; ++i) {
          const std::int64_t src_row = h * (m.qk_nope_head_dim + m.v_head_dim) + i;
          for (std::int64_t c = 0; c < m.kv_lora_rank; ++c) {
            const float v = load_as_f32(L.kv_b_proj.data(), L.kv_b_proj.type(),
                                        sz(src_row * m.kv_lora_rank + c));
            store_from_f32(t.data(), t.type(),
                           sz((h * m.kv_lora_rank + c) * m.qk_nope_head_dim + i), v);
          }
        }
      }
      w_uk_t_.push_back(std::move(t));
    }
  }
  allocate_workspace();
}

void decoder::allocate_workspace() {
  const model_spec& s = w_.spec;
  const std::int64_t r = opt_.max_batch_tokens;
  const std::int64_t nq = s.num_q_heads;
  x_.resize(sz(r * s.hidden));
  xn_.resize(sz(r * s.hidden));
  rows_.resize(sz(r));
  positions_.resize(sz(r));
  token_ids_.resize(sz(r));
  lse_.resize(sz(r * nq));
  std::int64_t ffn = s.ffn;
  if (s.is_moe()) {
    const moe_spec& e = s.moe;
    ffn = std::max(ffn, std::max<std::int64_t>(1, e.num_shared_experts) * e.expert_ffn);
    router_logits_.resize(sz(r * e.num_experts));
    expert_ids_.resize(sz(r * e.experts_per_token));
    expert_w_.resize(sz(r * e.experts_per_token));
    expert_out_.resize(sz(r * e.experts_per_token * s.hidden));
    expert_in_.resize(sz(r * s.hidden));
    expert_tmp_.resize(sz(r * s.hidden));
    expert_rows_.resize(sz(r * e.experts_per_token));
  }
  gate_.resize(sz(r * ffn));
  up_.resize(sz(r * ffn));
  if (s.is_mla()) {
    const mla_spec& m = s.mla;
    q_.resize(sz(r * nq * m.qk_head_dim()));
    qa_.resize(sz(r * std::max<std::int64_t>(1, m.q_lora_rank)));
    kva_.resize(sz(r * s.kv_key_dim()));
    k_.resize(sz(r * nq * s.kv_key_dim()));  // absorbed queries [r, Q, kv_lora + rope]
    lat_.resize(sz(r * nq * m.kv_lora_rank));
    attn_.resize(sz(r * nq * m.v_head_dim));
  } else {
    q_.resize(sz(r * nq * s.head_dim));
    k_.resize(sz(r * s.num_kv_heads * s.head_dim));
    v_.resize(sz(r * s.num_kv_heads * s.head_dim));
    attn_.resize(sz(r * nq * s.head_dim));
  }
}

kernels::exec_context decoder::ctx() const {
  return {opt_.backend, opt_.backend == kernels::backend::cpu ? pool_.get() : nullptr, nullptr};
}

std::uint64_t decoder::open_sequence() {
  const std::uint64_t id = next_seq_++;
  seqs_.emplace(id, sequence{block_table(opt_.block_tokens)});
  return id;
}

status decoder::close_sequence(std::uint64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return not_found("decoder: unknown sequence {}", seq);
  for (const kv_block_ref& b : it->second.table.blocks())
    HELIX_RETURN_IF_ERROR(kv_.release(b.slot));
  seqs_.erase(it);
  return ok_status();
}

expected<std::int64_t> decoder::sequence_length(std::uint64_t seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return not_found("decoder: unknown sequence {}", seq);
  return it->second.table.num_tokens();
}

const block_table& decoder::table(std::uint64_t seq) const {
  auto it = seqs_.find(seq);
  HELIX_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  return it->second.table;
}

status decoder::append_synthetic(std::uint64_t seq, std::int64_t num_tokens, std::uint64_t seed) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return not_found("decoder: unknown sequence {}", seq);
  if (num_tokens < 0) return invalid_argument("decoder: {} synthetic tokens", num_tokens);
  block_table& t = it->second.table;
  const std::int64_t bt = opt_.block_tokens;
  const std::int64_t room = t.needs_block() ? 0 : bt - t.last().num_tokens;
  const std::int64_t new_blocks = std::max<std::int64_t>(0, (num_tokens - room + bt - 1) / bt);
  if (new_blocks > kv_.free_slots()) {
    return resource_exhausted("decoder: {} synthetic tokens need {} KV blocks, {} of {} free",
                              num_tokens, new_blocks, kv_.free_slots(), kv_.num_slots());
  }
  std::vector<std::int32_t> slots;  // pages to fill: every page the new tokens touch
  for (std::int64_t left = num_tokens; left > 0;) {
    if (t.needs_block()) {
      HELIX_ASSIGN_OR_RETURN(const std::int32_t slot, kv_.allocate());
      HELIX_RETURN_IF_ERROR(t.open_block(0, slot));
    }
    if (slots.empty() || slots.back() != t.last().slot) slots.push_back(t.last().slot);
    const std::int64_t n = std::min(left, bt - t.last().num_tokens);
    HELIX_RETURN_IF_ERROR(t.append_tokens(n));
    left -= n;
  }
  // Whole pages are filled (entries past a block's tokens are never read); one task per page.
  const std::int64_t layers = kv_.num_layers();
  pool_->parallel_for(static_cast<std::int64_t>(slots.size()) * layers, [&](std::int64_t task) {
    const std::int64_t layer_idx = task % layers;
    const std::int32_t slot = slots[sz(task / layers)];
    const auto stream =
        static_cast<std::uint64_t>(layer_idx) << 32 | static_cast<std::uint32_t>(slot);
    fill_synthetic_page(kv_.page(layer_idx, slot), kv_.layout(), seed, stream);
  });
  return ok_status();
}

std::int64_t decoder::logits_rows(std::span<const batch_item> items) {
  std::int64_t n = 0;
  for (const batch_item& it : items) {
    n += it.all_logits ? static_cast<std::int64_t>(it.tokens.size()) : 1;
  }
  return n;
}

// Validates the whole step and reserves KV blocks for every new token before anything changes,
// so that a failed step leaves every sequence as it was.
status decoder::reserve_kv(std::span<const batch_item> items) {
  const std::int64_t bt = opt_.block_tokens;
  std::int64_t blocks_needed = 0;
  for (const batch_item& it : items) {
    const block_table& t = seqs_.at(it.seq).table;
    const std::int64_t room = t.needs_block() ? 0 : bt - t.last().num_tokens;
    const std::int64_t extra = static_cast<std::int64_t>(it.tokens.size()) - room;
    if (extra > 0) blocks_needed += (extra + bt - 1) / bt;
  }
  if (blocks_needed > kv_.free_slots()) {
    return resource_exhausted("decoder: step needs {} KV blocks, {} of {} free", blocks_needed,
                              kv_.free_slots(), kv_.num_slots());
  }
  std::int64_t row = 0;
  for (const batch_item& it : items) {
    block_table& t = seqs_.at(it.seq).table;
    for (std::size_t i = 0; i < it.tokens.size(); ++i, ++row) {
      if (t.needs_block()) {
        HELIX_ASSIGN_OR_RETURN(const std::int32_t slot, kv_.allocate());
        HELIX_RETURN_IF_ERROR(t.open_block(0, slot));
      }
      const kv_block_ref& b = t.last();
      rows_[sz(row)] = {t.next_pos(), b.slot, b.num_tokens};
      positions_[sz(row)] = t.next_pos();
      token_ids_[sz(row)] = it.tokens[i];
      HELIX_RETURN_IF_ERROR(t.append_tokens(1));
    }
  }
  return ok_status();
}

status decoder::linear(const float* x, std::int64_t x_stride, const tensor& w, float* y,
                       std::int64_t y_stride, std::int64_t rows, bool accumulate) {
  return model::linear(ctx(), x, x_stride, w, y, y_stride, rows, accumulate);
}

status decoder::forward(std::span<const batch_item> items, std::span<float> logits) {
  const model_spec& s = w_.spec;
  HELIX_ASSIGN_OR_RETURN(
      const std::int64_t rows,
      validate_step("decoder", items, seqs_, s.vocab, opt_.max_batch_tokens, logits.size()));
  HELIX_RETURN_IF_ERROR(reserve_kv(items));

  HELIX_RETURN_IF_ERROR(embed_tokens(ctx(), w_.embed, token_ids_.data(), rows, x_.data()));

  for (std::int64_t l = 0; l < s.num_layers; ++l) {
    const layer_weights& L = w_.layers[sz(l)];
    HELIX_RETURN_IF_ERROR(
        rms_norm(ctx(), x_.data(), L.input_norm, xn_.data(), rows, s.rms_norm_eps));
    HELIX_RETURN_IF_ERROR(s.is_mla() ? attention_mla(l, items, rows)
                                     : attention_gqa(l, items, rows));
    HELIX_RETURN_IF_ERROR(
        rms_norm(ctx(), x_.data(), L.post_attn_norm, xn_.data(), rows, s.rms_norm_eps));
    if (s.layer_is_moe(l)) {
      HELIX_RETURN_IF_ERROR(ffn_moe(l, rows));
    } else {
      HELIX_RETURN_IF_ERROR(ffn_dense(L.mlp, xn_.data(), x_.data(), rows, /*accumulate=*/true));
    }
  }
  return lm_head(items, logits);
}

status decoder::lm_head(std::span<const batch_item> items, std::span<float> logits) {
  const model_spec& s = w_.spec;
  const std::int64_t dst = gather_logit_rows(items, x_.data(), s.hidden);
  HELIX_RETURN_IF_ERROR(rms_norm(ctx(), x_.data(), w_.final_norm, xn_.data(), dst, s.rms_norm_eps));
  return linear(xn_.data(), 0, w_.lm_head_or_embed(), logits.data(), 0, dst);
}

}  // namespace helix::model
