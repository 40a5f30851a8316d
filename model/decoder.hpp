// Single-worker decoder: the layer program of ARCHITECTURE.md section 2 on one rank (KVP = TPA =
// TPF = 1), over a paged KV cache with block tables.
//
// Sequences are opened, fed tokens (a prefill chunk of many tokens, or one decode token) and
// closed. forward() runs one batched step over several sequences: every item's tokens are
// appended at the sequence's next global positions, attention of each item is computed by the
// partial-attention kernel over the item's own blocks (chunks use causal masking by global
// position), and logits come back for the last token of each item (or all its tokens). Results
// of an item do not depend on the other items of the batch (every kernel is batch-invariant).
//
// The weights are borrowed and must outlive the decoder. Not thread-safe: one caller at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/block_table.hpp"
#include "core/thread_pool.hpp"
#include "kernels/exec.hpp"
#include "kernels/rope.hpp"
#include "model/kv_store.hpp"
#include "model/weights.hpp"

namespace helix::model {

struct decoder_options {
  dtype kv_type = dtype::f32;  // KV storage dtype
  std::int64_t block_tokens = default_block_tokens;
  std::int64_t kv_capacity_tokens = 1 << 16;  // store size, rounded up to whole blocks
  std::int64_t max_batch_tokens = 256;        // rows per forward(); sizes the workspaces
  kernels::backend backend = kernels::backend::cpu;
  int num_threads = 0;  // cpu backend; 0 = all hardware threads
};

class decoder {
 public:
  struct batch_item {
    std::uint64_t seq = 0;
    std::span<const std::int32_t> tokens;
    bool all_logits = false;  // logits for every token instead of the last only
  };

  /// invalid_argument for bad options (kv_type must be f32/bf16/f16/fp8_e4m3, positive sizes);
  /// failed_precondition for a backend this build lacks.
  [[nodiscard]] static expected<std::unique_ptr<decoder>> create(const model_weights& weights,
                                                                 const decoder_options& options);

  [[nodiscard]] const model_spec& spec() const { return w_.spec; }
  [[nodiscard]] const decoder_options& options() const { return opt_; }
  [[nodiscard]] const kv_store& kv() const { return kv_; }

  /// A new, empty sequence.
  [[nodiscard]] std::uint64_t open_sequence();
  /// Frees the sequence's KV blocks; not_found for an unknown id.
  [[nodiscard]] status close_sequence(std::uint64_t seq);
  /// Tokens cached for the sequence; not_found for an unknown id.
  [[nodiscard]] expected<std::int64_t> sequence_length(std::uint64_t seq) const;
  /// The sequence's block table (for inspection); HELIX_CHECKs that it exists.
  [[nodiscard]] const block_table& table(std::uint64_t seq) const;

  /// Appends `num_tokens` positions of seeded synthetic KV (uniform in [-1, 1), every layer) to
  /// the sequence without running the model: a long context for benchmarks and demos, labelled
  /// synthetic wherever it is reported. resource_exhausted (sequence unchanged) if the blocks do
  /// not fit; not_found for an unknown sequence.
  [[nodiscard]] status append_synthetic(std::uint64_t seq, std::int64_t num_tokens,
                                        std::uint64_t seed);

  /// Rows of logits forward() writes for these items.
  [[nodiscard]] static std::int64_t logits_rows(std::span<const batch_item> items);

  /// One step. `logits` must hold logits_rows(items) * vocab floats; rows in item order.
  /// invalid_argument for an unknown or repeated sequence, an empty item, a token id outside
  /// [0, vocab), more than max_batch_tokens rows, or a short logits span; resource_exhausted when
  /// the KV store lacks the blocks. Those errors leave every sequence unchanged; an internal
  /// kernel failure after validation leaves the step's tokens appended.
  [[nodiscard]] status forward(std::span<const batch_item> items, std::span<float> logits);

 private:
  struct passkey {};

 public:
  /// Use create(); public only for std::make_unique.
  decoder(passkey, const model_weights& weights, const decoder_options& options, kv_store kv);

 private:
  struct sequence {
    block_table table;
  };
  // Per-row bookkeeping of the current step.
  struct row_info {
    std::int64_t pos = 0;
    std::int32_t slot = 0;
    std::int32_t slot_offset = 0;
  };

  [[nodiscard]] kernels::exec_context ctx() const;
  void allocate_workspace();
  [[nodiscard]] status reserve_kv(std::span<const batch_item> items);
  [[nodiscard]] status attention_gqa(std::int64_t layer_idx, std::span<const batch_item> items,
                                     std::int64_t rows);
  [[nodiscard]] status attention_mla(std::int64_t layer_idx, std::span<const batch_item> items,
                                     std::int64_t rows);
  [[nodiscard]] status attend(std::int64_t layer_idx, std::span<const batch_item> items,
                              const float* q, float* out);
  [[nodiscard]] status ffn_dense(const mlp_weights& mlp, const float* in, float* out,
                                 std::int64_t rows, bool accumulate);
  [[nodiscard]] status ffn_moe(std::int64_t layer_idx, std::int64_t rows);
  [[nodiscard]] status linear(const float* x, std::int64_t x_stride, const tensor& w, float* y,
                              std::int64_t y_stride, std::int64_t rows, bool accumulate = false);
  [[nodiscard]] status lm_head(std::span<const batch_item> items, std::span<float> logits);

  const model_weights& w_;
  decoder_options opt_;
  kv_store kv_;
  std::unique_ptr<thread_pool> pool_;
  kernels::rope_table rope_;
  std::vector<tensor> w_uk_t_;  // MLA: per layer [Q * kv_lora_rank, qk_nope] (W_UK transposed)
  std::unordered_map<std::uint64_t, sequence> seqs_;
  std::uint64_t next_seq_ = 1;

  // Workspaces, sized once for max_batch_tokens rows (attention scratch grows with context).
  std::vector<float> x_, xn_, q_, k_, v_, attn_, attn_v_, gate_, up_, lat_, kva_, qa_;
  std::vector<float> lse_, router_logits_, expert_w_, expert_out_, expert_in_, expert_tmp_;
  std::vector<std::int32_t> expert_ids_, token_ids_;
  std::vector<std::int64_t> positions_;
  std::vector<row_info> rows_;
  std::vector<std::uint8_t> attn_workspace_;
  std::vector<std::int64_t> expert_rows_;
};

}  // namespace helix::model
