// Attention of the per-rank layer program (ARCHITECTURE.md section 2, steps 2-7, and MLA): the
// column's projections, owner-only KV append, partial attention over the blocks this rank holds,
// the all-to-all of head slices inside the KVP group, the exact merge, the o_proj slice and the
// all-reduce. With HOP-B every item is its own micro-batch: its all-to-all is posted as soon as its
// partials exist and travels while the next item's partial attention runs. Every row's math is the
// same either way (the merge and the projections are row-wise), so HOP-B changes no bit.
#include <algorithm>
#include <chrono>

#include "kernels/attention.hpp"
#include "kernels/merge.hpp"
#include "kernels/rope.hpp"
#include "model/rank_program.hpp"
#include "model/step_ops.hpp"

namespace helix::model {
namespace {
std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}
}  // namespace

// Partial attention of the micro-batch's items over the blocks this rank holds (any subset of
// positions: the causal mask uses each block's global positions). q: [rows, qc, key_dim] for the
// whole step; writes part_out_ [rows, qc, val_dim] and part_lse_ [rows, qc] of the micro-batch
// rows.
status rank_program::partial_attention(std::int64_t layer_idx, std::span<const batch_item> items,
                                       const micro_batch& mb, const float* q) {
  const kv_page_layout& page = kv_.layout();
  const std::int64_t qc = w_.layers[sz(layer_idx)].q_heads.count;
  std::int64_t row = mb.first_row;
  for (std::size_t i = mb.first_item; i < mb.first_item + mb.num_items; ++i) {
    const batch_item& it = items[i];
    const block_table& t = seqs_.at(it.seq).table;
    HELIX_CHECK(t.local_rank() == w_.rank,
                "sequence {}: its table lists rank {}'s blocks, not {}'s", it.seq, t.local_rank(),
                w_.rank);
    const std::span<const kv_block_ref> local = t.local_blocks();
    kernels::attention_partial_params a;
    a.num_queries = static_cast<std::int64_t>(it.tokens.size());
    a.q = q + row * qc * page.key_dim;
    a.query_pos = positions_.data() + row;
    a.num_q_heads = qc;
    a.layout = page;
    a.kv_pool = kv_.layer_pool(layer_idx);
    a.blocks = local.data();
    a.num_blocks = static_cast<std::int64_t>(local.size());
    a.softmax_scale = static_cast<float>(w_.spec.softmax_scale());
    a.causal = true;
    a.out = part_out_.data() + row * qc * page.value_dim;
    a.lse = part_lse_.data() + row * qc;
    const std::size_t need = kernels::attention_workspace_bytes(a, ctx());
    // Grows with the longest context seen, so steady-state decoding does not allocate.
    if (attn_workspace_.size() < need) attn_workspace_.resize(need);
    a.workspace = attn_workspace_.data();
    a.workspace_bytes = attn_workspace_.size();
    HELIX_RETURN_IF_ERROR(kernels::attention_partial(a, ctx()));
    kv_bytes_read_ += a.num_blocks * static_cast<std::int64_t>(page.page_bytes());
    row += a.num_queries;
  }
  return ok_status();
}

// Steps 4-6 for the whole step: partials, all-to-all over the KVP group (one per micro-batch),
// merge. out: [rows, qn, val_dim], the heads rank_q_heads(rank) in order.
status rank_program::attend_and_exchange(std::int64_t layer_idx, std::span<const batch_item> items,
                                         const float* q, float* out) {
  const rank_layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t vd = kv_.layout().value_dim;
  const std::int64_t qc = L.q_heads.count;
  const std::int64_t qn = L.o_heads.count;
  const std::int64_t kvp = w_.layout.kvp;

  micro_batches_.clear();
  std::int64_t row = 0;
  for (std::size_t i = 0; i < items.size(); ++i) {
    const auto n = static_cast<std::int64_t>(items[i].tokens.size());
    if (opt_.hopb || micro_batches_.empty()) {
      micro_batches_.push_back({i, 1, row, n});
    } else {
      ++micro_batches_.back().num_items;
      micro_batches_.back().num_rows += n;
    }
    row += n;
  }

  // Post: micro-batch m's exchange is in flight while m+1's partial attention runs. Its region of
  // send_/recv_ starts at kvp * first_row * qn * (vd + 1); per peer j it packs out [mrows, qn, vd]
  // of the column's head slice j, then lse [mrows, qn]: a payload independent of the context.
  exchanges_.clear();
  for (const micro_batch& mb : micro_batches_) {
    HELIX_RETURN_IF_ERROR(partial_attention(layer_idx, items, mb, q));
    const std::int64_t mr = mb.num_rows;
    const std::int64_t chunk = mr * qn * (vd + 1);
    float* base = send_.data() + kvp * mb.first_row * qn * (vd + 1);
    for (std::int64_t j = 0; j < kvp; ++j) {
      float* o = base + j * chunk;
      float* lse = o + mr * qn * vd;
      for (std::int64_t i = 0; i < mr; ++i) {
        const std::int64_t r = mb.first_row + i;
        std::copy_n(part_out_.data() + (r * qc + j * qn) * vd, qn * vd, o + i * qn * vd);
        std::copy_n(part_lse_.data() + r * qc + j * qn, qn, lse + i * qn);
      }
    }
    const std::size_t n = sz(kvp * chunk);
    exchanges_.push_back(
        kvp_->iall_to_all(transport::as_send(std::span<const float>(base, n)),
                          transport::as_recv(std::span<float>(
                              recv_.data() + kvp * mb.first_row * qn * (vd + 1), n))));
  }

  // Complete: unpack every micro-batch into [kvp][mrows*qn, vd] and [kvp][mrows*qn], the layout
  // lse_merge wants, and merge exactly (peers in kvp order).
  status first_error = ok_status();
  const auto wait_start = std::chrono::steady_clock::now();
  for (std::size_t m = 0; m < micro_batches_.size(); ++m) {
    // Every posted exchange is waited for, even after a failure: its buffers are ours.
    const status st = exchanges_[m].wait();
    if (!st.ok() && first_error.ok()) first_error = st;
  }
  phases_.all_to_all_s +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count();
  exchanges_.clear();
  HELIX_RETURN_IF_ERROR(first_error);
  for (const micro_batch& mb : micro_batches_) {
    const std::int64_t mr = mb.num_rows;
    const std::int64_t chunk = mr * qn * (vd + 1);
    const float* base = recv_.data() + kvp * mb.first_row * qn * (vd + 1);
    float* mo = merge_out_.data() + kvp * mb.first_row * qn * vd;
    float* ml = merge_lse_.data() + kvp * mb.first_row * qn;
    for (std::int64_t j = 0; j < kvp; ++j) {
      const float* in = base + j * chunk;
      std::copy_n(in, mr * qn * vd, mo + j * mr * qn * vd);
      std::copy_n(in + mr * qn * vd, mr * qn, ml + j * mr * qn);
    }
    kernels::lse_merge_params p;
    p.partial_out = mo;
    p.partial_lse = ml;
    p.num_partials = kvp;
    p.num_rows = mr * qn;
    p.dim = vd;
    p.out = out + mb.first_row * qn * vd;
    HELIX_RETURN_IF_ERROR(kernels::lse_merge(p, ctx()));
  }
  return ok_status();
}

// GQA: column QKV, RoPE at global positions, owner-only append, attention and exchange, o_proj
// slice of the rank's Q/N heads, all-reduce, residual.
status rank_program::attention_gqa(std::int64_t layer_idx, std::span<const batch_item> items,
                                   std::int64_t rows) {
  const model_spec& s = w_.spec;
  const rank_layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t d = s.head_dim;
  const std::int64_t kc = L.kv_heads.count;
  HELIX_RETURN_IF_ERROR(project_gqa(ctx(), s, rope_, L.q_proj, L.k_proj, L.v_proj, xn_.data(),
                                    positions_.data(), rows, q_.data(), k_.data(), v_.data()));
  for (std::int64_t i = 0; i < rows; ++i) {
    const row_info& ri = rows_[sz(i)];
    if (ri.slot < 0) continue;  // another KVP member of the column stores this token
    kv_.write_token(layer_idx, ri.slot, ri.slot_offset, k_.data() + i * kc * d,
                    v_.data() + i * kc * d);
  }
  HELIX_RETURN_IF_ERROR(attend_and_exchange(layer_idx, items, q_.data(), attn_.data()));
  HELIX_RETURN_IF_ERROR(linear(attn_.data(), 0, L.o_proj, partial_.data(), 0, rows));
  return all_reduce_add(rows);
}

// MLA (absorbed): every rank projects the latent row and the queries of its heads (all of them
// when TPA = 1), the owner caches the row, attention and the exchange run in latent space
// (partials kv_lora_rank wide), then W_UV and the o_proj slice for the rank's Q/N heads.
status rank_program::attention_mla(std::int64_t layer_idx, std::span<const batch_item> items,
                                   std::int64_t rows) {
  const model_spec& s = w_.spec;
  const mla_spec& m = s.mla;
  const rank_layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t key_dim = s.kv_key_dim();
  const mla_projection proj{&L.q_a_proj, &L.q_a_norm,  &L.q_b_proj,
                            &L.q_proj,   &L.kv_a_proj, &L.kv_a_norm};
  HELIX_RETURN_IF_ERROR(project_mla(ctx(), s, rope_, proj, xn_.data(), positions_.data(), rows,
                                    qa_.data(), q_.data(), kva_.data()));
  for (std::int64_t i = 0; i < rows; ++i) {
    const row_info& ri = rows_[sz(i)];
    if (ri.slot < 0) continue;
    kv_.write_token(layer_idx, ri.slot, ri.slot_offset, kva_.data() + i * key_dim, nullptr);
  }
  float* q_abs = k_.data();  // [rows, qc, kv_lora | rope]
  HELIX_RETURN_IF_ERROR(absorb_mla_queries(ctx(), s, rope_, w_uk_t_[sz(layer_idx)], q_.data(),
                                           positions_.data(), rows, L.q_heads.count, q_abs));
  HELIX_RETURN_IF_ERROR(attend_and_exchange(layer_idx, items, q_abs, attn_.data()));
  // The shard's w_uv holds exactly the rank's heads, v_head_dim rows each.
  HELIX_RETURN_IF_ERROR(mla_values(ctx(), s, L.w_uv, m.v_head_dim, 0, attn_.data(), rows,
                                   L.o_heads.count, attn_v_.data()));
  HELIX_RETURN_IF_ERROR(linear(attn_v_.data(), 0, L.o_proj, partial_.data(), 0, rows));
  return all_reduce_add(rows);
}

}  // namespace helix::model
