// The per-rank layer program (dense GQA slice); see model/rank_program.hpp for the step order and
// the agreement rules between ranks. The single-rank math mirrors model/layer_program.cpp.
#include "model/rank_program.hpp"

#include <algorithm>
#include <cmath>

#include "kernels/attention.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/merge.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/swiglu.hpp"
#include "model/step_ops.hpp"
#include "planner/kv_placement.hpp"

namespace helix::model {
namespace {

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

constexpr std::int64_t max_block_tokens = 1 << 16;
constexpr std::int64_t max_capacity_tokens = std::int64_t{1} << 40;
constexpr std::int64_t max_step_tokens = 1 << 20;

// Largest vocabulary shard: split_range gives the first vocab % N ranks one extra row.
std::int64_t max_vocab_shard(const model_spec& s, std::int64_t n) {
  return (s.vocab + n - 1) / n;
}

}  // namespace

expected<std::unique_ptr<rank_program>> rank_program::create(
    const model_weights& full, const helix::layout& l, std::int64_t rank,
    std::unique_ptr<transport::communicator> world,
    std::unique_ptr<transport::communicator> kvp_group, const rank_program_options& options) {
  const model_spec& s = full.spec;
  HELIX_RETURN_IF_ERROR(s.validate());
  if (s.is_mla() || s.is_moe()) {
    return failed_precondition(
        "rank_program: model '{}' uses {}; this slice of the multi-worker program runs dense GQA "
        "models only (MLA and MoE come next)",
        s.name, s.is_mla() ? "MLA attention" : "MoE layers");
  }
  if (options.block_tokens <= 0 || options.block_tokens > max_block_tokens ||
      options.kv_capacity_tokens <= 0 || options.kv_capacity_tokens > max_capacity_tokens ||
      options.max_batch_tokens <= 0 || options.max_batch_tokens > max_step_tokens ||
      options.num_threads < 0) {
    return invalid_argument(
        "rank_program: block_tokens {} must be in [1, {}], kv_capacity_tokens {} in [1, {}], "
        "max_batch_tokens {} in [1, {}], num_threads {} >= 0",
        options.block_tokens, max_block_tokens, options.kv_capacity_tokens, max_capacity_tokens,
        options.max_batch_tokens, max_step_tokens, options.num_threads);
  }
  // shard_weights validates the layout against the model and the rank range.
  HELIX_ASSIGN_OR_RETURN(rank_weights w, shard_weights(full, l, rank));
  if (world == nullptr || kvp_group == nullptr) {
    return invalid_argument("rank_program: rank {} needs a world and a KVP-group communicator",
                            rank);
  }
  if (world->size() != l.num_ranks || world->rank() != rank) {
    return invalid_argument("rank_program: world communicator is rank {} of {}, expected {} of {}",
                            world->rank(), world->size(), rank, l.num_ranks);
  }
  const attention_coord c = l.attention_coords(rank);
  const std::vector<std::int64_t> group = l.kvp_group(c.tpa_idx);
  const std::span<const int> members = kvp_group->global_ranks();
  bool same = members.size() == group.size() && kvp_group->rank() == c.kvp_idx;
  for (std::size_t i = 0; same && i < group.size(); ++i) same = members[i] == group[i];
  if (!same) {
    return invalid_argument(
        "rank_program: rank {}'s KVP communicator (rank {} of {}) is not layout.kvp_group({}) in "
        "kvp order",
        rank, kvp_group->rank(), kvp_group->size(), c.tpa_idx);
  }

  kv_page_layout page;
  page.block_tokens = options.block_tokens;
  page.type = dtype::f32;
  page.num_kv_heads = w.layers.front().kv_heads.count;  // the column's K/TPA heads
  page.key_dim = s.head_dim;
  page.value_dim = s.head_dim;
  const std::int64_t slots =
      (options.kv_capacity_tokens + options.block_tokens - 1) / options.block_tokens;
  HELIX_ASSIGN_OR_RETURN(kv_store kv, kv_store::create(page, s.num_layers, slots));
  return std::make_unique<rank_program>(passkey{}, std::move(w), std::move(world),
                                        std::move(kvp_group), options, std::move(kv));
}

rank_program::rank_program(passkey, rank_weights w, std::unique_ptr<transport::communicator> world,
                           std::unique_ptr<transport::communicator> kvp_group,
                           const rank_program_options& options, kv_store kv)
    : w_(std::move(w)),
      world_(std::move(world)),
      kvp_(std::move(kvp_group)),
      opt_(options),
      kv_(std::move(kv)) {
  const model_spec& s = w_.spec;
  // Eight ranks on a two-core machine must not oversubscribe: by default each rank computes on
  // its own thread only.
  if (opt_.num_threads != 1) pool_ = std::make_unique<thread_pool>(opt_.num_threads);
  rope_ = kernels::make_rope_table(s.rope, s.head_dim);
  const attention_coord c = w_.layout.attention_coords(w_.rank);
  tpa_idx_ = c.tpa_idx;
  kvp_idx_ = c.kvp_idx;

  const std::int64_t r = opt_.max_batch_tokens;
  const std::int64_t d = s.head_dim;
  const rank_layer_weights& L = w_.layers.front();
  const std::int64_t qc = L.q_heads.count;   // Q/TPA
  const std::int64_t kc = L.kv_heads.count;  // K/TPA
  const std::int64_t qn = L.o_heads.count;   // Q/N
  const std::int64_t kvp = w_.layout.kvp;
  std::int64_t f = 0;
  for (const rank_layer_weights& layer : w_.layers) f = std::max(f, layer.mlp.ffn.count);
  x_.resize(sz(r * s.hidden));
  xn_.resize(sz(r * s.hidden));
  partial_.resize(sz(r * s.hidden));
  q_.resize(sz(r * qc * d));
  k_.resize(sz(r * kc * d));
  v_.resize(sz(r * kc * d));
  part_out_.resize(sz(r * qc * d));
  part_lse_.resize(sz(r * qc));
  send_.resize(sz(kvp * r * qn * (d + 1)));
  recv_.resize(sz(kvp * r * qn * (d + 1)));
  merge_out_.resize(sz(kvp * r * qn * d));
  merge_lse_.resize(sz(kvp * r * qn));
  attn_.resize(sz(r * qn * d));
  gate_.resize(sz(r * std::max<std::int64_t>(f, 1)));
  up_.resize(sz(r * std::max<std::int64_t>(f, 1)));
  const std::int64_t vmax = max_vocab_shard(s, w_.layout.num_ranks);
  shard_logits_.resize(sz(r * vmax));
  gathered_.resize(sz(w_.layout.num_ranks * r * vmax));
  token_ids_.resize(sz(r));
  positions_.resize(sz(r));
  rows_.resize(sz(r));
}

kernels::exec_context rank_program::ctx() const {
  return {kernels::backend::cpu, pool_.get(), nullptr};
}

expected<std::uint64_t> rank_program::open_sequence() {
  // The column's load as every rank sees it (tables are identical across ranks), so the chosen
  // offset is identical too.
  std::vector<planner::request_placement> live;
  live.reserve(open_order_.size());
  for (std::uint64_t id : open_order_) {
    const sequence& q = seqs_.at(id);
    live.push_back({q.offset, &q.table});
  }
  HELIX_ASSIGN_OR_RETURN(const planner::column_load load,
                         planner::measure_column_load(w_.layout, live));
  planner::join_view view;
  view.step = step_;
  view.kvp = w_.layout.kvp;
  view.first_block_idx = 0;
  view.appenders = load.appenders;
  view.stored_blocks = load.stored_blocks;
  HELIX_ASSIGN_OR_RETURN(const std::int64_t offset, planner::choose_join_offset(view));
  const std::uint64_t id = next_seq_++;
  seqs_.emplace(id, sequence{block_table(opt_.block_tokens), offset});
  open_order_.push_back(id);
  return id;
}

status rank_program::close_sequence(std::uint64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return not_found("rank_program: unknown sequence {}", seq);
  for (const kv_block_ref& b : it->second.table.blocks()) {
    if (b.rank == w_.rank) HELIX_RETURN_IF_ERROR(kv_.release(b.slot));
  }
  seqs_.erase(it);
  open_order_.erase(std::find(open_order_.begin(), open_order_.end(), seq));
  return ok_status();
}

const block_table& rank_program::table(std::uint64_t seq) const {
  auto it = seqs_.find(seq);
  HELIX_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  return it->second.table;
}

// Places the step's new blocks by the planner's rule and reserves this rank's share of them.
// Collective: the ranks first agree that every one of them has the slots it needs, so that either
// all reserve or all fail with the tables unchanged.
status rank_program::reserve_kv(std::span<const batch_item> items) {
  const std::int64_t bt = opt_.block_tokens;
  const std::int64_t kvp = w_.layout.kvp;
  std::int64_t mine = 0;  // new blocks this rank will own
  for (const batch_item& it : items) {
    const sequence& q = seqs_.at(it.seq);
    const block_table& t = q.table;
    const std::int64_t room = t.needs_block() ? 0 : bt - t.last().num_tokens;
    const std::int64_t extra = static_cast<std::int64_t>(it.tokens.size()) - room;
    const auto first = static_cast<std::int64_t>(t.blocks().size());
    for (std::int64_t b = 0; b < (extra + bt - 1) / bt; ++b) {
      if (planner::kv_block_owner(q.offset, first + b, kvp) == kvp_idx_) ++mine;
    }
  }
  float short_of_slots = mine > kv_.free_slots() ? 1.0f : 0.0f;
  HELIX_RETURN_IF_ERROR(
      world_->all_reduce(transport::as_send(std::span<const float>(&short_of_slots, 1)),
                         transport::as_recv(std::span<float>(&short_of_slots, 1))));
  if (short_of_slots > 0.0f) {
    return resource_exhausted(
        "rank_program: step needs KV blocks that {} rank(s) lack (rank {}: {} needed, {} of {} "
        "free)",
        short_of_slots, w_.rank, mine, kv_.free_slots(), kv_.num_slots());
  }
  std::int64_t row = 0;
  for (const batch_item& it : items) {
    sequence& q = seqs_.at(it.seq);
    block_table& t = q.table;
    for (std::size_t i = 0; i < it.tokens.size(); ++i, ++row) {
      if (t.needs_block()) {
        const auto block_idx = static_cast<std::int64_t>(t.blocks().size());
        const std::int64_t owner_kvp = planner::kv_block_owner(q.offset, block_idx, kvp);
        const auto owner = static_cast<std::int32_t>(w_.layout.attention_rank(tpa_idx_, owner_kvp));
        std::int32_t slot = 0;  // not meaningful on non-owners
        if (owner == w_.rank) {
          HELIX_ASSIGN_OR_RETURN(slot, kv_.allocate());
        }
        HELIX_RETURN_IF_ERROR(t.open_block(owner, slot));
      }
      const kv_block_ref& b = t.last();
      rows_[sz(row)] = {b.rank == w_.rank ? b.slot : -1, b.num_tokens};
      positions_[sz(row)] = t.next_pos();
      token_ids_[sz(row)] = it.tokens[i];
      HELIX_RETURN_IF_ERROR(t.append_tokens(1));
    }
  }
  return ok_status();
}

status rank_program::linear(const float* x, std::int64_t x_stride, const tensor& w, float* y,
                            std::int64_t y_stride, std::int64_t rows, bool accumulate) {
  return model::linear(ctx(), x, x_stride, w, y, y_stride, rows, accumulate);
}

// partial_ [rows, H] -> summed over the world (fixed rank order, same bytes everywhere) -> x += .
status rank_program::all_reduce_add(std::int64_t rows) {
  const std::int64_t n = rows * w_.spec.hidden;
  std::span<float> p(partial_.data(), sz(n));
  HELIX_RETURN_IF_ERROR(world_->all_reduce(transport::as_send(p), transport::as_recv(p)));
  for (std::int64_t i = 0; i < n; ++i) x_[sz(i)] += partial_[sz(i)];
  return ok_status();
}

// Steps 2-7: column QKV, RoPE, owner-only KV append, local partial attention, all-to-all of head
// slices in the KVP group, exact merge, o_proj slice, all-reduce, residual.
status rank_program::attention(std::int64_t layer_idx, std::span<const batch_item> items,
                               std::int64_t rows) {
  const model_spec& s = w_.spec;
  const rank_layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t d = s.head_dim;
  const std::int64_t qc = L.q_heads.count;
  const std::int64_t kc = L.kv_heads.count;
  const std::int64_t qn = L.o_heads.count;
  const std::int64_t kvp = w_.layout.kvp;
  HELIX_RETURN_IF_ERROR(linear(xn_.data(), 0, L.q_proj, q_.data(), 0, rows));
  HELIX_RETURN_IF_ERROR(linear(xn_.data(), 0, L.k_proj, k_.data(), 0, rows));
  HELIX_RETURN_IF_ERROR(linear(xn_.data(), 0, L.v_proj, v_.data(), 0, rows));

  kernels::rope_params r = rope_params_for(s, rope_, positions_.data(), rows, d);
  r.head_stride = d;
  r.x = q_.data();
  r.row_stride = qc * d;
  r.num_heads = qc;
  HELIX_RETURN_IF_ERROR(kernels::rope(r, ctx()));
  r.x = k_.data();
  r.row_stride = kc * d;
  r.num_heads = kc;
  HELIX_RETURN_IF_ERROR(kernels::rope(r, ctx()));

  for (std::int64_t i = 0; i < rows; ++i) {
    const row_info& ri = rows_[sz(i)];
    if (ri.slot < 0) continue;  // another KVP member of the column stores this token
    kv_.write_token(layer_idx, ri.slot, ri.slot_offset, k_.data() + i * kc * d,
                    v_.data() + i * kc * d);
  }

  // Partial attention of every item over the blocks this rank holds (any subset of positions;
  // the causal mask uses each block's global positions).
  std::int64_t row = 0;
  for (const batch_item& it : items) {
    const block_table& t = seqs_.at(it.seq).table;
    local_blocks_.clear();
    for (const kv_block_ref& b : t.blocks()) {
      if (b.rank == w_.rank) local_blocks_.push_back(b);
    }
    kernels::attention_partial_params a;
    a.num_queries = static_cast<std::int64_t>(it.tokens.size());
    a.q = q_.data() + row * qc * d;
    a.query_pos = positions_.data() + row;
    a.num_q_heads = qc;
    a.layout = kv_.layout();
    a.kv_pool = kv_.layer_pool(layer_idx);
    a.blocks = local_blocks_.data();
    a.num_blocks = static_cast<std::int64_t>(local_blocks_.size());
    a.softmax_scale = static_cast<float>(s.softmax_scale());
    a.causal = true;
    a.out = part_out_.data() + row * qc * d;
    a.lse = part_lse_.data() + row * qc;
    const std::size_t need = kernels::attention_workspace_bytes(a, ctx());
    if (attn_workspace_.size() < need) attn_workspace_.resize(need);
    a.workspace = attn_workspace_.data();
    a.workspace_bytes = attn_workspace_.size();
    HELIX_RETURN_IF_ERROR(kernels::attention_partial(a, ctx()));
    row += a.num_queries;
  }

  // Pack per peer j: out [rows, qn, d] of the column's head slice j, then lse [rows, qn]. The
  // payload is rows * qn * (d + 1) floats per peer, independent of the context length.
  const std::int64_t chunk = rows * qn * (d + 1);
  for (std::int64_t j = 0; j < kvp; ++j) {
    float* out = send_.data() + j * chunk;
    float* lse = out + rows * qn * d;
    for (std::int64_t i = 0; i < rows; ++i) {
      std::copy_n(part_out_.data() + (i * qc + j * qn) * d, qn * d, out + i * qn * d);
      std::copy_n(part_lse_.data() + i * qc + j * qn, qn, lse + i * qn);
    }
  }
  HELIX_RETURN_IF_ERROR(
      kvp_->all_to_all(transport::as_send(std::span<const float>(send_.data(), sz(kvp * chunk))),
                       transport::as_recv(std::span<float>(recv_.data(), sz(kvp * chunk)))));
  // Unpack into [kvp][rows*qn, d] and [kvp][rows*qn], the layout lse_merge wants.
  for (std::int64_t j = 0; j < kvp; ++j) {
    const float* in = recv_.data() + j * chunk;
    std::copy_n(in, rows * qn * d, merge_out_.data() + j * rows * qn * d);
    std::copy_n(in + rows * qn * d, rows * qn, merge_lse_.data() + j * rows * qn);
  }
  kernels::lse_merge_params m;
  m.partial_out = merge_out_.data();
  m.partial_lse = merge_lse_.data();
  m.num_partials = kvp;
  m.num_rows = rows * qn;
  m.dim = d;
  m.out = attn_.data();
  HELIX_RETURN_IF_ERROR(kernels::lse_merge(m, ctx()));

  // attn_ is [rows, qn * d]: the heads rank_q_heads(rank) in order, matching the o_proj slice.
  HELIX_RETURN_IF_ERROR(linear(attn_.data(), 0, L.o_proj, partial_.data(), 0, rows));
  return all_reduce_add(rows);
}

// Step 8, dense: this rank's [f0, f1) slice of gate/up, SwiGLU, its down columns; all-reduce.
status rank_program::ffn(std::int64_t layer_idx, std::int64_t rows) {
  const rank_layer_weights& L = w_.layers[sz(layer_idx)];
  const std::int64_t h = w_.spec.hidden;
  const std::int64_t f = L.mlp.ffn.count;
  if (!L.has_ffn || f == 0) {
    // A rank without an FFN slice still takes part in the all-reduce, contributing zeros.
    std::fill_n(partial_.data(), rows * h, 0.0f);
  } else {
    HELIX_RETURN_IF_ERROR(linear(xn_.data(), h, L.mlp.gate_proj, gate_.data(), f, rows));
    HELIX_RETURN_IF_ERROR(linear(xn_.data(), h, L.mlp.up_proj, up_.data(), f, rows));
    kernels::swiglu_params sw;
    sw.gate = gate_.data();
    sw.up = up_.data();
    sw.out = gate_.data();
    sw.rows = rows;
    sw.dim = f;
    HELIX_RETURN_IF_ERROR(kernels::swiglu(sw, ctx()));
    HELIX_RETURN_IF_ERROR(linear(gate_.data(), f, L.mlp.down_proj, partial_.data(), h, rows));
  }
  return all_reduce_add(rows);
}

// Step 9: final norm, this rank's vocabulary rows, then an all-gather of the shards (each padded
// to the largest, since shards may be uneven) so every rank returns full logits.
status rank_program::lm_head(std::span<const batch_item> items, std::span<float> logits) {
  const model_spec& s = w_.spec;
  const std::int64_t dst = gather_logit_rows(items, x_.data(), s.hidden);
  HELIX_RETURN_IF_ERROR(rms_norm(ctx(), x_.data(), w_.final_norm, xn_.data(), dst, s.rms_norm_eps));

  const std::int64_t world = w_.layout.num_ranks;
  const std::int64_t vmax = max_vocab_shard(s, world);
  const std::int64_t count = dst * vmax;
  std::fill_n(shard_logits_.data(), count, 0.0f);
  if (w_.vocab.count > 0) {
    HELIX_RETURN_IF_ERROR(linear(xn_.data(), 0, w_.lm_head, shard_logits_.data(), vmax, dst));
  }
  HELIX_RETURN_IF_ERROR(world_->all_gather(
      transport::as_send(std::span<const float>(shard_logits_.data(), sz(count))),
      transport::as_recv(std::span<float>(gathered_.data(), sz(world * count)))));
  for (std::int64_t j = 0; j < world; ++j) {
    const index_range v = split_range(s.vocab, world, j);
    const float* in = gathered_.data() + j * count;
    for (std::int64_t i = 0; i < dst; ++i) {
      std::copy_n(in + i * vmax, v.count, logits.data() + i * s.vocab + v.first);
    }
  }
  return ok_status();
}

status rank_program::forward(std::span<const batch_item> items, std::span<float> logits) {
  const model_spec& s = w_.spec;
  HELIX_ASSIGN_OR_RETURN(
      const std::int64_t rows,
      validate_step("rank_program", items, seqs_, s.vocab, opt_.max_batch_tokens, logits.size()));
  HELIX_RETURN_IF_ERROR(reserve_kv(items));
  ++step_;

  HELIX_RETURN_IF_ERROR(embed_tokens(ctx(), w_.embed, token_ids_.data(), rows, x_.data()));

  for (std::int64_t l = 0; l < s.num_layers; ++l) {
    const rank_layer_weights& L = w_.layers[sz(l)];
    HELIX_RETURN_IF_ERROR(
        rms_norm(ctx(), x_.data(), L.input_norm, xn_.data(), rows, s.rms_norm_eps));
    HELIX_RETURN_IF_ERROR(attention(l, items, rows));
    HELIX_RETURN_IF_ERROR(
        rms_norm(ctx(), x_.data(), L.post_attn_norm, xn_.data(), rows, s.rms_norm_eps));
    HELIX_RETURN_IF_ERROR(ffn(l, rows));
  }
  return lm_head(items, logits);
}

}  // namespace helix::model
