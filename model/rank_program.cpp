// The per-rank layer program: setup, sequences and KV placement, the step driver and the
// vocabulary-parallel LM head with sharded sampling. Attention is in rank_attention.cpp, the FFN in
// rank_ffn.cpp. See model/rank_program.hpp for the step order and the agreement rules between
// ranks; the single-rank math mirrors model/layer_program.cpp.
#include "model/rank_program.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/memory.hpp"
#include "kernels/attention.hpp"
#include "kernels/embedding.hpp"
#include "kernels/gemm.hpp"
#include "kernels/merge.hpp"
#include "kernels/rmsnorm.hpp"
#include "kernels/sharded_sampling.hpp"
#include "kernels/swiglu.hpp"
#include "model/step_ops.hpp"

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

// Rows whose sampling the shard summaries leave undecided are gathered in full this many at a
// time, which bounds the second round's buffers to world * full_row_chunk * vmax floats.
constexpr std::int64_t full_row_chunk = 8;

}  // namespace

status rank_program::check_options(const rank_program_options& options) {
  const dtype kt = options.kv_type;
  if (kt != dtype::f32 && kt != dtype::bf16 && kt != dtype::f16 && kt != dtype::fp8_e4m3) {
    return invalid_argument("rank_program: kv_type {} is not a KV storage dtype", dtype_name(kt));
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
  if (options.backend == kernels::backend::cuda) {
    return failed_precondition("rank_program: runs on the CPU backends (reference, cpu)");
  }
  return ok_status();
}

expected<std::unique_ptr<rank_program>> rank_program::create(
    const model_weights& full, const helix::layout& l, std::int64_t rank,
    std::unique_ptr<transport::communicator> world,
    std::unique_ptr<transport::communicator> kvp_group, const rank_program_options& options) {
  HELIX_RETURN_IF_ERROR(full.spec.validate());
  HELIX_RETURN_IF_ERROR(check_options(options));
  // shard_weights validates the layout against the model and the rank range.
  HELIX_ASSIGN_OR_RETURN(rank_weights w, shard_weights(full, l, rank));
  return create(std::move(w), std::move(world), std::move(kvp_group), options);
}

expected<std::unique_ptr<rank_program>> rank_program::create(
    rank_weights w, std::unique_ptr<transport::communicator> world,
    std::unique_ptr<transport::communicator> kvp_group, const rank_program_options& options) {
  return create(std::move(w), std::move(world), std::move(kvp_group), options, nullptr);
}

expected<std::unique_ptr<rank_program>> rank_program::create(
    rank_weights w, std::unique_ptr<transport::communicator> world,
    std::unique_ptr<transport::communicator> kvp_group, const rank_program_options& options,
    std::unique_ptr<carried_kv> carried) {
  const model_spec s = w.spec;
  const helix::layout l = w.layout;
  const std::int64_t rank = w.rank;
  HELIX_RETURN_IF_ERROR(check_options(options));
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
  page.type = options.kv_type;
  if (s.is_mla()) {
    page.num_kv_heads = 1;  // the latent and the rope key, shared by all heads
    page.key_dim = s.kv_key_dim();
    page.value_dim = s.kv_value_dim();
    page.value_in_key = true;
  } else {
    page.num_kv_heads = w.layers.front().kv_heads.count;  // the column's K/TPA heads
    page.key_dim = s.head_dim;
    page.value_dim = s.head_dim;
  }
  const std::int64_t slots =
      (options.kv_capacity_tokens + options.block_tokens - 1) / options.block_tokens;
  // A carried store is taken over when it holds the same heads in the same pages (the rank keeps
  // its TPA column) and as many slots; else it goes before the new one is allocated.
  bool take_over = false;
  if (carried != nullptr) {
    const kv_page_layout& had = carried->store.layout();
    const bool same_heads = had.key_dim == page.key_dim && had.value_dim == page.value_dim &&
                            had.block_tokens == page.block_tokens && had.type == page.type &&
                            had.value_in_key == page.value_in_key &&
                            carried->store.num_layers() == s.num_layers;
    const bool same_pages =
        same_heads && had.num_kv_heads == page.num_kv_heads && carried->store.num_slots() == slots;
    const bool same_column = carried->grid.tpa == l.tpa && carried->rank >= 0 &&
                             carried->rank < carried->grid.num_ranks &&
                             carried->grid.attention_coords(carried->rank).tpa_idx == c.tpa_idx;
    take_over = same_pages && same_column;
    // Another TPA size or column: a re-slice may read it (kv_reslice.hpp), so the old store
    // stays beside the new one until restore() (which drops it either way).
    if (!take_over && !same_heads) carried.reset();
  }
  if (carried != nullptr && !take_over) {
    // Both stores at once must fit with room to spare (the new one is zero-filled, so it is
    // committed memory); else the old KV goes first and the restore refuses the re-slice.
    const std::uint64_t need = static_cast<std::uint64_t>(page.page_bytes()) *
                               static_cast<std::uint64_t>(slots) *
                               static_cast<std::uint64_t>(s.num_layers);
    if (available_memory().bytes < need + need / 4 + (std::uint64_t{256} << 20)) carried.reset();
  }
  kv_store kv;
  if (take_over) {
    kv = std::move(carried->store);
  } else {
    auto fresh = kv_store::create(page, s.num_layers, slots);
    if (!fresh && carried != nullptr) {  // no room for both: the old KV goes (restore refuses)
      carried.reset();
      fresh = kv_store::create(page, s.num_layers, slots);
    }
    if (!fresh) return fresh.error();
    kv = std::move(fresh).value();
  }
  auto program = std::make_unique<rank_program>(passkey{}, std::move(w), std::move(world),
                                                std::move(kvp_group), options, std::move(kv));
  program->carried_store_ = carried != nullptr && !take_over;
  program->carried_ = std::move(carried);
  return program;
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
  if (opt_.num_threads != 1) {
    pool_ = std::make_unique<thread_pool>(opt_.num_threads, opt_.spin_threads);
  }
  rope_ = kernels::make_rope_table(s.rope, s.is_mla() ? s.mla.qk_rope_head_dim : s.head_dim);
  const attention_coord c = w_.layout.attention_coords(w_.rank);
  tpa_idx_ = c.tpa_idx;
  kvp_idx_ = c.kvp_idx;
  if (s.is_mla()) {
    // Absorption multiplies q_nope by W_UK[h]^T; the shard's w_uk holds W_UK [nope, kv_lora] per
    // head (the rank's query heads), transposed here once to the [kv_lora, nope] a GEMM wants.
    const mla_spec& m = s.mla;
    for (const rank_layer_weights& L : w_.layers) {
      const std::int64_t heads = L.q_heads.count;
      // FP8 weights: dequantized (as an f32 load of the checkpoint would give them).
      const dtype type = w_.weight_type == dtype::fp8_e4m3 ? dtype::f32 : w_.weight_type;
      tensor t(type, {heads * m.kv_lora_rank, m.qk_nope_head_dim});
      for (std::int64_t h = 0; h < heads; ++h) {
        for (std::int64_t i = 0; i < m.qk_nope_head_dim; ++i) {
          for (std::int64_t col = 0; col < m.kv_lora_rank; ++col) {
            const float v = L.w_uk.element((h * m.qk_nope_head_dim + i) * m.kv_lora_rank + col);
            store_from_f32(t.data(), t.type(),
                           sz((h * m.kv_lora_rank + col) * m.qk_nope_head_dim + i), v);
          }
        }
      }
      w_uk_t_.push_back(std::move(t));
    }
  }
  allocate_workspace();
}

void rank_program::allocate_workspace() {
  const model_spec& s = w_.spec;
  const std::int64_t r = opt_.max_batch_tokens;
  const rank_layer_weights& L = w_.layers.front();
  const std::int64_t qc = L.q_heads.count;  // heads this rank attends with (its column's)
  const std::int64_t qn = L.o_heads.count;  // heads it owns after the all-to-all
  const std::int64_t kvp = w_.layout.kvp;
  // Widths of what attention reads and produces per head: GQA D and D; MLA the latent plus the
  // rope key, and the latent.
  const std::int64_t key_dim = s.is_mla() ? s.kv_key_dim() : s.head_dim;
  const std::int64_t val_dim = s.is_mla() ? s.kv_value_dim() : s.head_dim;
  const std::int64_t out_dim = s.is_mla() ? s.mla.v_head_dim : s.head_dim;

  std::int64_t f = 1;
  for (const rank_layer_weights& layer : w_.layers) {
    f = std::max({f, layer.mlp.ffn.count, layer.shared.ffn.count});
    for (const expert_shard& e : layer.experts) f = std::max(f, e.mlp.ffn.count);
  }
  x_.resize(sz(r * s.hidden));
  xn_.resize(sz(r * s.hidden));
  partial_.resize(sz(r * s.hidden));
  if (s.is_mla()) {
    const mla_spec& m = s.mla;
    q_.resize(sz(r * qc * m.qk_head_dim()));
    qa_.resize(sz(r * std::max<std::int64_t>(1, m.q_lora_rank)));
    kva_.resize(sz(r * key_dim));
    attn_v_.resize(sz(r * qn * out_dim));
  } else {
    const std::int64_t kc = L.kv_heads.count;
    q_.resize(sz(r * qc * s.head_dim));
    v_.resize(sz(r * kc * s.head_dim));
  }
  // GQA: the column's keys [r, K/TPA, D]; MLA: the absorbed queries [r, qc, key_dim].
  k_.resize(sz(r * std::max(qc * key_dim, L.kv_heads.count * s.head_dim)));
  part_out_.resize(sz(r * qc * val_dim));
  part_lse_.resize(sz(r * qc));
  send_.resize(sz(kvp * r * qn * (val_dim + 1)));
  recv_.resize(sz(kvp * r * qn * (val_dim + 1)));
  merge_out_.resize(sz(kvp * r * qn * val_dim));
  merge_lse_.resize(sz(kvp * r * qn));
  attn_.resize(sz(r * qn * val_dim));
  gate_.resize(sz(r * f));
  up_.resize(sz(r * f));
  if (s.is_moe()) {
    const moe_spec& e = s.moe;
    router_logits_.resize(sz(r * e.num_experts));
    expert_ids_.resize(sz(r * e.experts_per_token));
    expert_w_.resize(sz(r * e.experts_per_token));
    expert_rows_.resize(sz(r * e.experts_per_token));
    expert_in_.resize(sz(r * s.hidden));
    expert_tmp_.resize(sz(r * s.hidden));
  }
  const std::int64_t world = w_.layout.num_ranks;
  const std::int64_t vmax = max_vocab_shard(s, world);
  shard_logits_.resize(sz(r * vmax));
  gathered_.resize(sz(world * r * vmax));
  summaries_.resize(sz(r));
  gathered_summaries_.resize(sz(world * r));
  per_rank_.resize(sz(world));
  undecided_.resize(sz(r));
  const std::int64_t chunk = std::min(r, full_row_chunk);
  full_send_.resize(sz(chunk * vmax));
  full_recv_.resize(sz(world * chunk * vmax));
  full_row_.resize(sz(s.vocab));
  sample_workspace_.resize(kernels::sampling_workspace_bytes(s.vocab));
  token_ids_.resize(sz(r));
  positions_.resize(sz(r));
  logit_positions_.resize(sz(r));
  rows_.resize(sz(r));
  micro_batches_.reserve(sz(r));
  exchanges_.reserve(sz(r));
}

kernels::exec_context rank_program::ctx() const {
  return {opt_.backend, opt_.backend == kernels::backend::cpu ? pool_.get() : nullptr, nullptr};
}

std::uint64_t rank_program::open_sequence() {
  const std::uint64_t id = next_seq_++;
  seqs_.emplace(id, sequence{block_table(opt_.block_tokens, w_.rank)});
  return id;
}

status rank_program::close_sequence(std::uint64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return not_found("rank_program: unknown sequence {}", seq);
  for (const kv_block_ref& b : it->second.table.local_blocks()) {
    HELIX_RETURN_IF_ERROR(kv_.release(b.slot));
  }
  seqs_.erase(it);
  return ok_status();
}

const block_table& rank_program::table(std::uint64_t seq) const {
  auto it = seqs_.find(seq);
  HELIX_CHECK(it != seqs_.end(), "unknown sequence {}", seq);
  return it->second.table;
}

std::int64_t rank_program::blocks_opened(std::span<const batch_item> items) const {
  std::int64_t opened = 0;
  for (const batch_item& it : items) {
    auto s = seqs_.find(it.seq);
    if (s == seqs_.end() || it.rewrite_from >= 0) continue;
    opened += s->second.table.blocks_opened_by(static_cast<std::int64_t>(it.tokens.size()));
  }
  return opened;
}

expected<std::int64_t> rank_program::sequence_length(std::uint64_t seq) const {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return not_found("rank_program: unknown sequence {}", seq);
  return it->second.table.num_tokens();
}

// The owners handed in must name exactly the `opened` new blocks, each a member of the column.
status rank_program::check_owners(std::int64_t opened,
                                  std::span<const std::int64_t> new_block_kvp) const {
  if (opened != static_cast<std::int64_t>(new_block_kvp.size())) {
    return invalid_argument("rank_program: {} new KV blocks but {} owners were given", opened,
                            new_block_kvp.size());
  }
  for (std::int64_t j : new_block_kvp) {
    if (j < 0 || j >= w_.layout.kvp) {
      return invalid_argument("rank_program: block owner kvp_idx {} outside [0, {})", j,
                              w_.layout.kvp);
    }
  }
  return ok_status();
}

// KV capacity differs per rank (each holds different blocks), so the ranks agree with one small
// all-reduce that every one of them has the slots it needs: either all go on or all fail with the
// tables unchanged.
status rank_program::agree_on_slots(std::int64_t needed, std::string_view what) {
  float short_of_slots = needed > kv_.free_slots() ? 1.0f : 0.0f;
  HELIX_RETURN_IF_ERROR(
      world_->all_reduce(transport::as_send(std::span<const float>(&short_of_slots, 1)),
                         transport::as_recv(std::span<float>(&short_of_slots, 1))));
  if (short_of_slots > 0.0f) {
    return resource_exhausted(
        "rank_program: {} needs KV blocks that {} rank(s) lack (rank {}: {} needed, {} of {} "
        "free)",
        what, short_of_slots, w_.rank, needed, kv_.free_slots(), kv_.num_slots());
  }
  return ok_status();
}

// Opens the table's next block on member `owner_kvp` of this rank's column; only the owner
// allocates a slot (other ranks record slot 0, never read).
status rank_program::open_block(block_table& t, std::int64_t owner_kvp) {
  const auto owner = static_cast<std::int32_t>(w_.layout.attention_rank(tpa_idx_, owner_kvp));
  std::int32_t slot = 0;
  if (owner == w_.rank) {
    HELIX_ASSIGN_OR_RETURN(slot, kv_.allocate());
  }
  return t.open_block(owner, slot);
}

// Records the step's new blocks where the caller placed them and reserves this rank's share.
status rank_program::reserve_kv(std::span<const batch_item> items,
                                std::span<const std::int64_t> new_block_kvp) {
  const std::int64_t opened = blocks_opened(items);
  HELIX_RETURN_IF_ERROR(check_owners(opened, new_block_kvp));
  const auto mine = std::count(new_block_kvp.begin(), new_block_kvp.end(), kvp_idx_);
  HELIX_RETURN_IF_ERROR(agree_on_slots(mine, "step"));
  std::size_t next_owner = 0;
  std::int64_t row = 0;
  for (const batch_item& it : items) {
    block_table& t = seqs_.at(it.seq).table;
    if (it.rewrite_from >= 0) {  // positions already in the table (check_rewrites)
      for (std::size_t i = 0; i < it.tokens.size(); ++i, ++row) {
        const std::int64_t pos = it.rewrite_from + static_cast<std::int64_t>(i);
        const kv_block_ref& b = t.blocks()[sz(pos / opt_.block_tokens)];
        rows_[sz(row)] = {b.rank == w_.rank ? b.slot : -1,
                          static_cast<std::int32_t>(pos - b.first_pos)};
        positions_[sz(row)] = pos;
        token_ids_[sz(row)] = it.tokens[i];
      }
      continue;
    }
    for (std::size_t i = 0; i < it.tokens.size(); ++i, ++row) {
      if (t.needs_block()) HELIX_RETURN_IF_ERROR(open_block(t, new_block_kvp[next_owner++]));
      const kv_block_ref& b = t.last();
      rows_[sz(row)] = {b.rank == w_.rank ? b.slot : -1, b.num_tokens};
      positions_[sz(row)] = t.next_pos();
      token_ids_[sz(row)] = it.tokens[i];
      HELIX_RETURN_IF_ERROR(t.append_tokens(1));
    }
  }
  return ok_status();
}

status rank_program::append_synthetic(std::uint64_t seq, std::int64_t num_tokens,
                                      std::uint64_t seed,
                                      std::span<const std::int64_t> new_block_kvp) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return not_found("rank_program: unknown sequence {}", seq);
  if (num_tokens < 0) return invalid_argument("rank_program: {} synthetic tokens", num_tokens);
  block_table& t = it->second.table;
  HELIX_RETURN_IF_ERROR(check_owners(t.blocks_opened_by(num_tokens), new_block_kvp));
  const auto mine = std::count(new_block_kvp.begin(), new_block_kvp.end(), kvp_idx_);
  HELIX_RETURN_IF_ERROR(agree_on_slots(mine, "synthetic KV"));
  std::size_t next_owner = 0;
  const std::int64_t bt = opt_.block_tokens;
  std::vector<std::pair<std::int32_t, std::int64_t>> pages;  // (slot, block idx) to fill
  for (std::int64_t left = num_tokens; left > 0;) {
    if (t.needs_block()) HELIX_RETURN_IF_ERROR(open_block(t, new_block_kvp[next_owner++]));
    const kv_block_ref& b = t.last();
    if (b.rank == w_.rank && (pages.empty() || pages.back().first != b.slot)) {
      pages.emplace_back(b.slot, static_cast<std::int64_t>(t.blocks().size()) - 1);
    }
    const std::int64_t n = std::min(left, bt - b.num_tokens);
    HELIX_RETURN_IF_ERROR(t.append_tokens(n));
    left -= n;
  }
  // Whole pages (entries past a block's tokens are never read), keyed by the seed, layer and
  // block, each head by its global index: the fill depends neither on which rank holds the block,
  // nor on how the heads are split, nor on the sequence's id (every layout, and a sequence rebuilt
  // after a recovery, sees the same context; the caller's seed tells contexts apart).
  fill_synthetic(pages, seed);
  return ok_status();
}

void rank_program::fill_synthetic(std::span<const std::pair<std::int32_t, std::int64_t>> pages,
                                  std::uint64_t seed) {
  const std::int64_t layers = kv_.num_layers();
  const std::int64_t head0 = w_.spec.is_mla() ? 0 : w_.layers.front().kv_heads.first;
  parallel_for(
      pool_.get(), static_cast<std::int64_t>(pages.size()) * layers, [&](std::int64_t task) {
        const std::int64_t layer_idx = task % layers;
        const auto& [slot, block_idx] = pages[sz(task / layers)];
        const std::uint64_t stream =
            (static_cast<std::uint64_t>(layer_idx) << 56) ^ static_cast<std::uint64_t>(block_idx);
        fill_synthetic_page(kv_.page(layer_idx, slot), kv_.layout(), seed, stream, head0);
      });
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

// Step 9: final norm and this rank's vocabulary rows; then, as asked, an all-gather of the
// shards (each padded to the largest, since shards may be uneven) for full logits, and/or exact
// sampling from per-shard summaries.
status rank_program::lm_head(std::span<const batch_item> items, const step_output& out) {
  const model_spec& s = w_.spec;
  // The position each logits row samples at: one past the token whose logits it holds.
  std::int64_t src = 0;
  std::int64_t dst = 0;
  for (const batch_item& it : items) {
    const auto n = static_cast<std::int64_t>(it.tokens.size());
    for (std::int64_t i = it.all_logits ? 0 : n - 1; i < n; ++i) {
      logit_positions_[sz(dst++)] = positions_[sz(src + i)] + 1;
    }
    src += n;
  }
  HELIX_CHECK(gather_logit_rows(items, x_.data(), s.hidden) == dst, "logit rows");
  HELIX_RETURN_IF_ERROR(rms_norm(ctx(), x_.data(), w_.final_norm, xn_.data(), dst, s.rms_norm_eps));

  const std::int64_t world = w_.layout.num_ranks;
  const std::int64_t vmax = max_vocab_shard(s, world);
  const std::int64_t count = dst * vmax;
  std::fill_n(shard_logits_.data(), count, 0.0f);
  if (w_.vocab.count > 0) {
    HELIX_RETURN_IF_ERROR(linear(xn_.data(), 0, w_.lm_head, shard_logits_.data(), vmax, dst));
  }
  if (!out.tokens.empty()) HELIX_RETURN_IF_ERROR(sample_sharded(dst, out));
  if (out.logits.empty()) return ok_status();
  HELIX_RETURN_IF_ERROR(world_->all_gather(
      transport::as_send(std::span<const float>(shard_logits_.data(), sz(count))),
      transport::as_recv(std::span<float>(gathered_.data(), sz(world * count)))));
  for (std::int64_t j = 0; j < world; ++j) {
    const index_range v = split_range(s.vocab, world, j);
    const float* in = gathered_.data() + j * count;
    for (std::int64_t i = 0; i < dst; ++i) {
      std::copy_n(in + i * vmax, v.count, out.logits.data() + i * s.vocab + v.first);
    }
  }
  return ok_status();
}

// Every rank reduces its shard of each row to a fixed-size summary; one all-gather of the
// summaries; every rank merges the same summaries in the same order, so all ranks reach the same
// outcome for every row: a token, a bad row, or undecided (then sample_full_rows).
status rank_program::sample_sharded(std::int64_t rows, const step_output& out) {
  const std::int64_t world = w_.layout.num_ranks;
  kernels::shard_candidates_params p;
  p.logits = w_.vocab.count > 0 ? shard_logits_.data() : nullptr;
  p.logits_stride = max_vocab_shard(w_.spec, world);
  p.rows = rows;
  p.vocab_begin = w_.vocab.first;
  p.vocab_end = w_.vocab.end();
  p.options = out.sampling.data();
  p.request_ids = out.request_ids.data();
  p.positions = logit_positions_.data();
  p.k_max = out.k_max;
  p.summaries = summaries_.data();
  HELIX_RETURN_IF_ERROR(kernels::shard_candidates(p));
  // The summaries are plain data of a fixed size: they travel as raw bytes.
  const std::size_t bytes = sz(rows) * sizeof(kernels::shard_summary);
  HELIX_RETURN_IF_ERROR(
      world_->all_gather(transport::send_buf{summaries_.data(), bytes, transport::wire_type::bytes},
                         transport::recv_buf{gathered_summaries_.data(), bytes * sz(world),
                                             transport::wire_type::bytes}));
  std::int64_t num_undecided = 0;
  for (std::int64_t i = 0; i < rows; ++i) {
    for (std::int64_t j = 0; j < world; ++j) {
      per_rank_[sz(j)] = gathered_summaries_[sz(j * rows + i)];
    }
    HELIX_ASSIGN_OR_RETURN(
        const kernels::shard_merge m,
        kernels::merge_shard_candidates(per_rank_, out.sampling[sz(i)], out.request_ids[sz(i)],
                                        logit_positions_[sz(i)]));
    out.tokens[sz(i)] = m.token;
    if (!out.row_status.empty()) out.row_status[sz(i)] = ok_status();
    if (m.outcome == kernels::merge_outcome::undecided) {
      undecided_[sz(num_undecided++)] = i;
    } else if (m.outcome == kernels::merge_outcome::bad_logits) {
      // The same on every rank: either all report the row or all fail the step here.
      status bad = kernels::bad_logits_row(i, m.token, m.bad_logit);
      out.tokens[sz(i)] = -1;
      if (out.row_status.empty()) return bad;
      out.row_status[sz(i)] = std::move(bad);
    }
  }
  full_row_samples_ = num_undecided;
  return sample_full_rows(num_undecided, out);
}

// The undecided rows (undecided_[0, num_rows)), full_row_chunk at a time: every rank sends its
// shard of each (padded to the largest shard, as the logits gather does), every rank rebuilds the
// full rows and samples them with kernels::sample, the single-rank sampler, on the same logits.
status rank_program::sample_full_rows(std::int64_t num_rows, const step_output& out) {
  const model_spec& s = w_.spec;
  const std::int64_t world = w_.layout.num_ranks;
  const std::int64_t vmax = max_vocab_shard(s, world);
  const auto chunk_cap = static_cast<std::int64_t>(full_send_.size()) / vmax;
  for (std::int64_t first = 0; first < num_rows; first += chunk_cap) {
    const std::int64_t chunk = std::min(chunk_cap, num_rows - first);
    for (std::int64_t i = 0; i < chunk; ++i) {
      std::copy_n(shard_logits_.data() + undecided_[sz(first + i)] * vmax, vmax,
                  full_send_.data() + i * vmax);
    }
    HELIX_RETURN_IF_ERROR(world_->all_gather(
        transport::as_send(std::span<const float>(full_send_.data(), sz(chunk * vmax))),
        transport::as_recv(std::span<float>(full_recv_.data(), sz(world * chunk * vmax)))));
    for (std::int64_t i = 0; i < chunk; ++i) {
      for (std::int64_t j = 0; j < world; ++j) {
        const index_range v = split_range(s.vocab, world, j);
        std::copy_n(full_recv_.data() + (j * chunk + i) * vmax, v.count,
                    full_row_.data() + v.first);
      }
      const std::int64_t row = undecided_[sz(first + i)];
      kernels::sample_params p;
      p.logits = full_row_.data();
      p.rows = 1;
      p.vocab = s.vocab;
      p.options = &out.sampling[sz(row)];
      p.request_ids = &out.request_ids[sz(row)];
      p.positions = &logit_positions_[sz(row)];
      p.tokens = &out.tokens[sz(row)];
      p.workspace = sample_workspace_.data();
      p.workspace_bytes = sample_workspace_.size();
      HELIX_RETURN_IF_ERROR(
          kernels::sample(p, ctx()).with_context(fmt::format("rank_program: logits row {}", row)));
    }
  }
  return ok_status();
}

status rank_program::forward(std::span<const batch_item> items,
                             std::span<const std::int64_t> new_block_kvp, std::span<float> logits) {
  step_output out;
  out.logits = logits;
  return forward(items, new_block_kvp, out);
}

status rank_program::forward(std::span<const batch_item> items,
                             std::span<const std::int64_t> new_block_kvp, const step_output& out) {
  const model_spec& s = w_.spec;
  HELIX_ASSIGN_OR_RETURN(
      const std::int64_t rows,
      validate_step("rank_program", items, seqs_, s.vocab, opt_.max_batch_tokens, out.logits.size(),
                    /*logits_optional=*/true));
  const auto logit_rows = sz(logits_rows(items));
  if (!out.tokens.empty()) {
    if (out.tokens.size() < logit_rows || out.sampling.size() < logit_rows ||
        out.request_ids.size() < logit_rows) {
      return invalid_argument(
          "rank_program: sampling needs {} rows of tokens, options and request ids (got {}, {}, "
          "{})",
          logit_rows, out.tokens.size(), out.sampling.size(), out.request_ids.size());
    }
    if (!out.row_status.empty() && out.row_status.size() < logit_rows) {
      return invalid_argument("rank_program: row_status has {} entries for {} logits rows",
                              out.row_status.size(), logit_rows);
    }
    if (out.k_max < 1 || out.k_max > kernels::shard_summary_capacity) {
      return invalid_argument("rank_program: k_max {} outside [1, {}]", out.k_max,
                              kernels::shard_summary_capacity);
    }
    for (std::size_t i = 0; i < logit_rows; ++i) {
      HELIX_RETURN_IF_ERROR(kernels::validate(out.sampling[i]));
    }
  }
  HELIX_RETURN_IF_ERROR(check_rewrites(items));
  HELIX_RETURN_IF_ERROR(reserve_kv(items, new_block_kvp));
  kv_bytes_read_ = 0;
  full_row_samples_ = 0;
  phases_ = {};
  using clock = std::chrono::steady_clock;
  const auto seconds_since = [](clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
  };

  auto t = clock::now();
  HELIX_RETURN_IF_ERROR(embed_tokens(ctx(), w_.embed, token_ids_.data(), rows, x_.data()));
  for (std::int64_t l = 0; l < s.num_layers; ++l) {
    const rank_layer_weights& L = w_.layers[sz(l)];
    HELIX_RETURN_IF_ERROR(
        rms_norm(ctx(), x_.data(), L.input_norm, xn_.data(), rows, s.rms_norm_eps));
    HELIX_RETURN_IF_ERROR(s.is_mla() ? attention_mla(l, items, rows)
                                     : attention_gqa(l, items, rows));
    phases_.attention_s += seconds_since(t);
    t = clock::now();
    HELIX_RETURN_IF_ERROR(
        rms_norm(ctx(), x_.data(), L.post_attn_norm, xn_.data(), rows, s.rms_norm_eps));
    HELIX_RETURN_IF_ERROR(ffn(l, rows));
    phases_.ffn_s += seconds_since(t);
    t = clock::now();
  }
  phases_.attention_s -= phases_.all_to_all_s;  // measured inside it
  if (out.logits.empty() && out.tokens.empty()) return ok_status();
  const status st = lm_head(items, out);
  phases_.sampling_s = seconds_since(t);
  return st;
}

}  // namespace helix::model
