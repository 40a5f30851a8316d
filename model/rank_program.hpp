// The per-rank layer program of Helix parallelism (ARCHITECTURE.md section 2, steps 1-9): what one
// rank of an N-rank layout computes for one batched step, talking to its peers through
// transport/ communicators.
//
// GQA and MLA (absorbed) attention, dense and MoE FFNs, for every layout family (helix, tp,
// medha). Per layer, every rank
//   1. RMSNorms the replicated x [rows, H];
//   2. projects its TPA column's queries (GQA q [rows, Q/TPA, D], k,v [rows, K/TPA, D]; MLA: the
//      latent row [rows, kv_lora + rope] and the absorbed queries of its heads, all Q when
//      TPA = 1) and applies RoPE at the tokens' global positions;
//   3. writes each new token's KV only on the KVP member that owns the token's block. Ownership
//      comes from the sequence's block table. The owners of the blocks a step opens are decided
//      by the caller (the engine, with planner::placement_book) and handed to every rank with the
//      step, so all ranks hold the same table view (rank of each block, positions); a block's
//      slot is meaningful only on its owner (other ranks record slot 0). model/ never places;
//   4. runs partial attention over the blocks it holds (none: lse = -inf, out = 0);
//   5. all-to-alls the partials inside its KVP group along the head axis: member j receives the
//      out and lse of head slice j (Q/N heads) from every peer, in one packed buffer per peer
//      (MLA: in latent space, kv_lora wide). With HOP-B (options.hopb) each item is a micro-batch
//      whose all-to-all is in flight while the next item's partial attention runs;
//   6. merges them exactly (kernels::lse_merge, peers in kvp order);
//   7. (MLA: W_UV for its Q/N heads,) multiplies by its o_proj column slice, all-reduces the
//      [rows, H] partial over the world and adds it to the residual;
//   8. FFN: its slice of the dense FFN, or of the routed experts of its EP group that its tokens
//      chose plus its slice of the shared expert (the router is replicated); all-reduce; residual.
//   9. After the last layer: final norm and its LM-head rows [v0, v1); then, as the step asks,
//      an all-gather of the vocabulary shards (full logits on every rank) and/or exact sampling
//      from per-shard candidate summaries (kernels/sharded_sampling.hpp), with a second
//      all-gather of the full shards only for the rows the summaries leave undecided.
//
// Collectives are called in the same order on every rank, and every error a rank can detect on
// its own (bad items, validation) is a pure function of the step's inputs, so all ranks fail
// together before any collective. KV capacity differs per rank (each holds different blocks), so
// forward() agrees on it with one small all-reduce before changing anything: either every rank
// reserves the step's blocks or every rank returns resource_exhausted.
//
// One rank_program per rank, each driven by its own thread (the communicators block without
// spinning). Owns its weight shard and KV store; not thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/block_table.hpp"
#include "core/layout.hpp"
#include "core/thread_pool.hpp"
#include "kernels/exec.hpp"
#include "kernels/rope.hpp"
#include "kernels/sampling.hpp"
#include "kernels/sharded_sampling.hpp"
#include "model/batch.hpp"
#include "model/kv_store.hpp"
#include "model/sharding.hpp"
#include "model/weights.hpp"
#include "transport/communicator.hpp"

namespace helix::model {

namespace reslice {  // model/kv_reslice.hpp
struct held_kv;
struct piece;
}  // namespace reslice

struct rank_program_options {
  dtype kv_type = dtype::f32;  // KV storage dtype: f32, bf16, f16 or fp8_e4m3
  std::int64_t block_tokens = default_block_tokens;
  std::int64_t kv_capacity_tokens = 1 << 14;  // this rank's store, rounded up to whole blocks
  std::int64_t max_batch_tokens = 256;        // rows per forward(); sizes the workspaces
  int num_threads = 1;  // cpu kernel threads of this rank; 1 = the calling thread only
  /// The kernel threads look for the next kernel briefly before they sleep (thread_pool's
  /// spin): for ranks whose threads have cores of their own, never when ranks share cores.
  bool spin_threads = false;
  /// HOP-B: each item of a step is its own micro-batch; its all-to-all is in flight while the
  /// next item's partial attention runs. Results are bit-identical either way.
  bool hopb = false;
  /// cpu (the optimised kernels) or reference (the plain ones, the oracle); not cuda.
  kernels::backend backend = kernels::backend::cpu;
};

/// One KV block to move (rebalancing): block `block_idx` of sequence `seq` goes to member
/// `to_kvp` of every column's KVP group (a block lives on the same kvp_idx in every column).
struct block_move {
  std::uint64_t seq = 0;
  std::int64_t block_idx = 0;
  std::int64_t to_kvp = 0;
};

/// A rank's KV outliving its program (recovery, lost blocks only): the store and the block tables
/// it was written under, handed to the rank's next program (create(..., carried)) so that the
/// blocks survive a change of layout without being copied. Tables name global ranks of `grid`.
struct carried_kv {
  helix::layout grid;     // the layout the KV was written under
  std::int64_t rank = 0;  // the rank that held it
  kv_store store;
  std::unordered_map<std::uint64_t, block_table> tables;
  model_spec spec;  // the model (which KV heads a column holds; a re-slice needs it)
};

/// One sequence as it is after a recovery (rank_program::restore), the same on every rank.
struct restored_sequence {
  std::uint64_t seq = 0;
  std::int64_t num_tokens = 0;  // positions in the KV (committed before the failure)
  /// Per block, in position order: the KVP member (kvp_idx, new layout) that holds it now.
  std::vector<std::int64_t> owner_kvp;
  /// Per block: the KVP member of the old layout whose members kept it (they stay its holders,
  /// as owner_kvp of the new layout, column for column), or -1: lost, its owner gets a fresh slot
  /// and the block is rebuilt (synthetic positions refilled here, the others by rewrite steps).
  std::vector<std::int64_t> kept_kvp;
  std::int64_t synthetic_tokens = 0;  // leading positions of seeded synthetic KV
  std::uint64_t synthetic_seed = 0;
  /// Per block (or empty: none): the donor that sends it, or -1. A donor is a KVP member of the
  /// old layout left without a rank whose holders still hold its blocks (carried_kv), one per
  /// TPA column (the new layout has the same TPA size): donor d's holder in column c is rank
  /// N + d * TPA + c of the handoff communicator (N = the new layout's ranks) and sends that
  /// column's pages to the new owner's holder in the same column. The blocks move over the
  /// data plane, not rebuilt (their kept_kvp is -1).
  /// With a re-slice (kv_reslice), the old KVP member instead: every old holder of the block
  /// sends its heads to the new holders that need them.
  std::vector<std::int64_t> donor;
};

/// A restore after a planned change of TPA size (model/kv_reslice.hpp): KV heads move to the
/// new columns that hold them (every block of every sequence, none rebuilt). Each member of the
/// restore's communicator (the handoff, else the world) that carried KV of `before` sends the
/// head runs it holds; donor[b] names the block's old KVP member.
struct kv_reslice {
  helix::layout before;  // the layout the carried KV was written under
  /// Per rank of `before`: its member in the restore's communicator, or -1 (gone).
  std::vector<std::int64_t> holders;
};

/// The donor's half of rank_program::restore: sends every block whose donor holder is
/// `donor_idx` (d * TPA + this member's column, as above) from
/// `kv` (the KV this member carried) to its new owner over `handoff` (new ranks 0..N-1, donors
/// from N on), one message per block and layer, after the same agreement as restore() (a block
/// this donor does not hold fails the restore on every rank). `after` is the new layout.
/// With `reslice`, the donor's part of a re-slice instead (its handoff rank is N + donor_idx).
[[nodiscard]] status donate_kv(carried_kv& kv, transport::communicator& handoff,
                               const helix::layout& after, std::int64_t donor_idx,
                               std::span<const restored_sequence> seqs,
                               const kv_reslice* reslice = nullptr);

/// What one step returns. Both parts are optional; the collectives each needs run only when it
/// is asked for, and every rank must ask for the same parts.
struct step_output {
  /// Full logits, logits_rows(items) * vocab floats, rows in item order, on every rank
  /// (an all-gather of the vocabulary shards). Empty: not gathered.
  std::span<float> logits;
  /// Exact sampling over the sharded vocabulary (kernels/sharded_sampling.hpp): one options entry
  /// and one request id per logits row; the chosen token of every row lands in `tokens`
  /// (identical on every rank, and equal to kernels::sample on the full row for every top_k and
  /// top_p). Empty `tokens`: no sampling. The row's position for the counter-based noise is the
  /// position of the token being sampled (one past the token whose logits the row holds), as
  /// model::generate does.
  std::span<const kernels::sampling_options> sampling;
  std::span<const std::uint64_t> request_ids;
  std::span<std::int32_t> tokens;
  /// Optional, one entry per logits row when not empty: each sampled row's own outcome. A row
  /// whose logits hold NaN or +inf, or only -inf, gets kernels::bad_logits_row (invalid_argument
  /// naming the row and the first bad token id) and token -1, while the other rows are sampled
  /// and get ok: forward() returns ok. Empty: such a row fails forward() with that status.
  std::span<status> row_status;
  /// Candidates each shard sends per row in the one-round summaries
  /// (kernels::shard_candidates_params::k_max, in [1, kernels::shard_summary_capacity]). Any value
  /// is exact; it only decides how many rows finish in one round: rows the summaries cannot
  /// decide (top_k > k_max, or a top-p nucleus with more than k_max tokens in one shard) take a
  /// second all-gather of just their shards' logits. The summary's size does not depend on it,
  /// so the largest value costs only the shards' selection time.
  std::int32_t k_max = kernels::shard_summary_capacity;
};

class rank_program {
 public:
  using batch_item = model::batch_item;

  /// `world`: this rank's communicator over all N ranks (group rank == global rank).
  /// `kvp_group`: its communicator over layout.kvp_group(tpa_idx), in kvp_idx order.
  /// invalid_argument for a layout that breaks a rule for the model, a rank outside [0, N),
  /// communicators whose size or members do not match the layout, or bad options;
  /// failed_precondition for the cuda backend.
  [[nodiscard]] static expected<std::unique_ptr<rank_program>> create(
      const model_weights& full, const helix::layout& l, std::int64_t rank,
      std::unique_ptr<transport::communicator> world,
      std::unique_ptr<transport::communicator> kvp_group, const rank_program_options& options);
  /// The same from weights already sharded for their rank (w.layout, w.rank), e.g. by
  /// seeded_rank_weights, so that the full model need never exist in this process.
  [[nodiscard]] static expected<std::unique_ptr<rank_program>> create(
      rank_weights w, std::unique_ptr<transport::communicator> world,
      std::unique_ptr<transport::communicator> kvp_group, const rank_program_options& options);
  /// The same, keeping `carried` (a previous program's KV, release_kv()) until restore(): its
  /// store is taken over when its page layout and slot count are this program's (same column);
  /// otherwise, with pages of the same head size and dtype, it stays beside the new store as the
  /// source of a re-slice until restore() (dropped at once when both do not fit in memory);
  /// else it is dropped (restore() then finds nothing kept here). Null: as above.
  [[nodiscard]] static expected<std::unique_ptr<rank_program>> create(
      rank_weights w, std::unique_ptr<transport::communicator> world,
      std::unique_ptr<transport::communicator> kvp_group, const rank_program_options& options,
      std::unique_ptr<carried_kv> carried);

  /// The checks create() makes on `options` (bounds, KV dtype, backend), for callers that want
  /// them before building weights. invalid_argument or failed_precondition as create().
  [[nodiscard]] static status check_options(const rank_program_options& options);

  [[nodiscard]] std::int64_t rank() const { return w_.rank; }
  [[nodiscard]] const helix::layout& grid() const { return w_.layout; }
  [[nodiscard]] const model_spec& spec() const { return w_.spec; }
  [[nodiscard]] const rank_weights& weights() const { return w_; }
  [[nodiscard]] const kv_store& kv() const { return kv_; }

  /// A new, empty sequence. Ids count up from 1 identically on every rank, so ranks that open
  /// sequences in the same order agree on them.
  [[nodiscard]] std::uint64_t open_sequence();
  /// Frees the blocks this rank holds for the sequence; not_found for an unknown id.
  [[nodiscard]] status close_sequence(std::uint64_t seq);
  /// The sequence's block table (same view on every rank); HELIX_CHECKs that it exists.
  [[nodiscard]] const block_table& table(std::uint64_t seq) const;

  /// One step, collectively with every other rank (same items and owners on all).
  /// `new_block_kvp`: the KVP member (kvp_idx) of every block the step's tokens open, in item
  /// order then position order (what planner::placement_book::plan returns); a block lives on
  /// that member of this rank's column. `out` asks for full logits and/or sampled tokens (see
  /// step_output; neither, e.g. for a non-final prefill chunk, skips the LM head).
  /// invalid_argument for an unknown or repeated sequence, an empty item, a token id outside
  /// [0, vocab), more than max_batch_tokens rows or a short logits span; resource_exhausted when
  /// the KV stores lack the blocks; invalid_argument for owners of the wrong count or out of
  /// [0, KVP), output spans of the wrong size (row_status: empty or one per logits row) or
  /// invalid sampling options: all identical on every rank and leaving every sequence unchanged.
  /// A transport failure is returned as is and leaves the step's tokens appended; so does a row
  /// with bad logits when row_status is empty (invalid_argument, identical on every rank).
  [[nodiscard]] status forward(std::span<const batch_item> items,
                               std::span<const std::int64_t> new_block_kvp, const step_output& out);
  /// forward() asking for full logits only.
  [[nodiscard]] status forward(std::span<const batch_item> items,
                               std::span<const std::int64_t> new_block_kvp,
                               std::span<float> logits);

  /// Appends `num_tokens` positions of seeded synthetic KV to the sequence on every rank (each
  /// fills only the blocks it owns; owners as in forward()); for benchmarks, labelled synthetic
  /// wherever reported. The values depend on `seed` and the block's position only (not on the
  /// sequence id, the layout or the owner). Collective (agrees on capacity like forward()).
  [[nodiscard]] status append_synthetic(std::uint64_t seq, std::int64_t num_tokens,
                                        std::uint64_t seed,
                                        std::span<const std::int64_t> new_block_kvp);

  /// Moves KV blocks between the members of each column's KVP group over the data plane
  /// (rank_migration.cpp). Collective: every rank gets the same moves. In each column the member
  /// holding a block sends its pages (every layer) to member to_kvp, which stores them in a fresh
  /// slot; every rank of the column updates the block's table entry; the source frees its slot.
  /// invalid_argument (identical on every rank, nothing moved) for an unknown sequence, a block
  /// index out of range, to_kvp outside [0, KVP) or a block moved twice; resource_exhausted
  /// (agreed by all ranks, nothing moved) when a destination lacks free slots. A move to the
  /// member that already holds the block is a no-op. Output after migration stays exact.
  [[nodiscard]] status migrate_blocks(std::span<const block_move> moves);

  /// Recovery, lost blocks only. Takes this program's KV (store and tables) for its successor;
  /// the program keeps an empty store and no sequences (usable only to be destroyed).
  [[nodiscard]] std::unique_ptr<carried_kv> release_kv();
  /// Recovery, lost blocks only: replaces every sequence by `seqs` (block tables rebuilt from the
  /// owners given), keeping the carried blocks that stay on this rank, giving each lost block
  /// that this rank now owns a fresh slot (synthetic positions refilled from their seed), and
  /// freeing every other carried slot; the next opened sequence gets id `next_seq`. Lost
  /// positions past the synthetic ones are then computed again by forward() items with
  /// rewrite_from, in position order. Collective (one all-reduce): either every rank restores or
  /// every rank fails with failed_precondition (a block to keep that this rank did not carry) or
  /// resource_exhausted (slots), its sequences then all closed. invalid_argument (identical
  /// everywhere) for inconsistent entries.
  /// `handoff`: the communicator over the new ranks and the donors (rank i is new rank i), used
  /// for the agreement and the donated blocks instead of the world when not null; needed when
  /// any block has a donor (invalid_argument otherwise).
  /// `reslice`: the change altered the TPA size; the blocks come as head pieces from the carried
  /// KV of every old holder (this program's own included), see kv_reslice.
  [[nodiscard]] status restore(std::span<const restored_sequence> seqs, std::uint64_t next_seq,
                               transport::communicator* handoff = nullptr,
                               const kv_reslice* reslice = nullptr);

  /// KV blocks a step of `items` opens (what new_block_kvp must name); unknown sequences count 0.
  [[nodiscard]] std::int64_t blocks_opened(std::span<const batch_item> items) const;
  /// Tokens cached for the sequence (same on every rank); not_found for an unknown id.
  [[nodiscard]] expected<std::int64_t> sequence_length(std::uint64_t seq) const;
  /// KV bytes this rank's partial attention read in the last forward(), summed over layers
  /// (whole pages of the blocks it attended over).
  [[nodiscard]] std::int64_t kv_bytes_read_last_step() const { return kv_bytes_read_; }
  /// Seconds the last forward() spent in each phase on this rank: attention (projections,
  /// partial attention, merge, o_proj and its all-reduce) without the time waiting for the
  /// all-to-all, that wait, the FFN (with its collectives), and the LM head with sampling.
  struct step_phases {
    double attention_s = 0.0;
    double all_to_all_s = 0.0;
    double ffn_s = 0.0;
    double sampling_s = 0.0;
  };
  [[nodiscard]] const step_phases& last_step_phases() const { return phases_; }
  /// Rows of the last forward() whose sampled token needed the second, full-row round (the shard
  /// summaries left them undecided); the same on every rank.
  [[nodiscard]] std::int64_t full_row_samples_last_step() const { return full_row_samples_; }

 private:
  struct passkey {};

 public:
  /// Use create(); public only for std::make_unique.
  rank_program(passkey, rank_weights w, std::unique_ptr<transport::communicator> world,
               std::unique_ptr<transport::communicator> kvp_group,
               const rank_program_options& options, kv_store kv);

 private:
  struct sequence {
    block_table table;
  };
  // Where one row's new k,v go; slot < 0 when another KVP member owns the token's block.
  struct row_info {
    std::int32_t slot = -1;
    std::int32_t slot_offset = 0;
  };
  // A run of consecutive items whose partials travel in one all-to-all (HOP-B: one item each).
  struct micro_batch {
    std::size_t first_item = 0;
    std::size_t num_items = 0;
    std::int64_t first_row = 0;
    std::int64_t num_rows = 0;
  };

  [[nodiscard]] kernels::exec_context ctx() const;
  void allocate_workspace();
  [[nodiscard]] status agree_on_slots(std::int64_t needed, std::string_view what);
  [[nodiscard]] status check_owners(std::int64_t opened,
                                    std::span<const std::int64_t> new_block_kvp) const;
  [[nodiscard]] status open_block(block_table& t, std::int64_t owner_kvp);
  [[nodiscard]] status reserve_kv(std::span<const batch_item> items,
                                  std::span<const std::int64_t> new_block_kvp);
  [[nodiscard]] status check_rewrites(std::span<const batch_item> items) const;
  [[nodiscard]] status restore_tables(std::span<const restored_sequence> seqs, std::int64_t old_kvp,
                                      bool carried_here, transport::communicator* handoff,
                                      const kv_reslice* reslice,
                                      const std::vector<reslice::piece>& pieces,
                                      const std::vector<std::int32_t>& stale);
  // The carried KV as a re-slice reads it (its own store, or kv_ when taken over).
  [[nodiscard]] reslice::held_kv held_kv();
  void fill_synthetic(std::span<const std::pair<std::int32_t, std::int64_t>> pages,
                      std::uint64_t seed);
  // rank_attention.cpp
  [[nodiscard]] status attention_gqa(std::int64_t layer_idx, std::span<const batch_item> items,
                                     std::int64_t rows);
  [[nodiscard]] status attention_mla(std::int64_t layer_idx, std::span<const batch_item> items,
                                     std::int64_t rows);
  [[nodiscard]] status attend_and_exchange(std::int64_t layer_idx,
                                           std::span<const batch_item> items, const float* q,
                                           float* out);
  [[nodiscard]] status partial_attention(std::int64_t layer_idx, std::span<const batch_item> items,
                                         const micro_batch& mb, const float* q);
  // rank_ffn.cpp
  [[nodiscard]] status ffn(std::int64_t layer_idx, std::int64_t rows);
  [[nodiscard]] status mlp_slice(const mlp_shard& mlp, const float* in, float* out,
                                 std::int64_t rows, bool accumulate);
  [[nodiscard]] status moe(std::int64_t layer_idx, std::int64_t rows);
  // rank_program.cpp
  [[nodiscard]] status lm_head(std::span<const batch_item> items, const step_output& out);
  [[nodiscard]] status sample_sharded(std::int64_t rows, const step_output& out);
  [[nodiscard]] status sample_full_rows(std::int64_t num_rows, const step_output& out);
  [[nodiscard]] status linear(const float* x, std::int64_t x_stride, const tensor& w, float* y,
                              std::int64_t y_stride, std::int64_t rows, bool accumulate = false);
  [[nodiscard]] status all_reduce_add(std::int64_t rows);

  rank_weights w_;
  std::unique_ptr<transport::communicator> world_;
  std::unique_ptr<transport::communicator> kvp_;
  rank_program_options opt_;
  kv_store kv_;
  std::unique_ptr<thread_pool> pool_;  // null: kernels run on the calling thread
  kernels::rope_table rope_;
  std::vector<tensor> w_uk_t_;  // MLA: per layer [q * kv_lora_rank, qk_nope] (W_UK^T per head)
  std::int64_t tpa_idx_ = 0;
  std::int64_t kvp_idx_ = 0;
  std::int64_t kv_bytes_read_ = 0;
  step_phases phases_;
  std::int64_t full_row_samples_ = 0;
  std::unordered_map<std::uint64_t, sequence> seqs_;
  std::uint64_t next_seq_ = 1;
  std::unique_ptr<carried_kv> carried_;  // tables of a previous program's KV, until restore()
  bool carried_store_ = false;  // carried_ keeps its own store (another column layout), not kv_

  // Workspaces, sized once for max_batch_tokens rows (attention scratch grows with context).
  std::vector<float> x_, xn_, q_, k_, v_, qa_, kva_, part_out_, part_lse_, send_, recv_, merge_out_,
      merge_lse_, attn_, attn_v_, partial_, gate_, up_, shard_logits_, gathered_;
  std::vector<float> router_logits_, expert_w_, expert_in_, expert_tmp_;
  std::vector<std::int32_t> token_ids_, expert_ids_;
  std::vector<std::int64_t> positions_, expert_rows_, logit_positions_;
  std::vector<row_info> rows_;
  std::vector<micro_batch> micro_batches_;
  std::vector<transport::request> exchanges_;
  std::vector<std::uint8_t> attn_workspace_;
  // Sharded sampling: summaries [rows], gathered [world, rows], one row's [world]; the rows the
  // summaries leave undecided, and the full-row round's buffers (full_row_chunk rows at a time).
  std::vector<kernels::shard_summary> summaries_, gathered_summaries_, per_rank_;
  std::vector<std::int64_t> undecided_;
  std::vector<float> full_send_, full_recv_, full_row_;
  std::vector<std::uint8_t> sample_workspace_;
};

}  // namespace helix::model
