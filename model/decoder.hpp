// Single-worker decoder: the rank program (model/rank_program.hpp) on a layout of one rank, over
// a one-rank in-process fabric, driven like a plain decoder. There is one layer program: this is
// it with KVP = TPA = TPF = EP = 1; model::reference_forward stays the independent oracle.
//
// Sequences are opened, fed tokens (a prefill chunk of many tokens, or one decode token) and
// closed. forward() runs one batched step over several sequences: every item's tokens are
// appended at the sequence's next global positions, attention of each item is computed by the
// partial-attention kernel over the item's own blocks (chunks use causal masking by global
// position), and logits come back for the last token of each item (or all its tokens). Results
// of an item do not depend on the other items of the batch (every kernel is batch-invariant).
//
// The decoder holds its own copy of the weights (create() from an rvalue moves them instead).
// Not thread-safe: one caller at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/block_table.hpp"
#include "kernels/exec.hpp"
#include "model/batch.hpp"
#include "model/kv_store.hpp"
#include "model/rank_program.hpp"
#include "model/weights.hpp"
#include "transport/fabric.hpp"

namespace helix::model {

struct decoder_options {
  dtype kv_type = dtype::f32;  // KV storage dtype
  std::int64_t block_tokens = default_block_tokens;
  std::int64_t kv_capacity_tokens = 1 << 16;         // store size, rounded up to whole blocks
  std::int64_t max_batch_tokens = 256;               // rows per forward(); sizes the workspaces
  kernels::backend backend = kernels::backend::cpu;  // cpu or reference
  int num_threads = 0;                               // cpu backend; 0 = all hardware threads
};

class decoder {
 public:
  using batch_item = model::batch_item;

  /// invalid_argument for bad options (kv_type must be f32/bf16/f16/fp8_e4m3, positive sizes);
  /// failed_precondition for a backend this build lacks. Copies `weights`.
  [[nodiscard]] static expected<std::unique_ptr<decoder>> create(const model_weights& weights,
                                                                 const decoder_options& options);
  /// As above, taking the weights over (no copy).
  [[nodiscard]] static expected<std::unique_ptr<decoder>> create(model_weights&& weights,
                                                                 const decoder_options& options);

  [[nodiscard]] const model_spec& spec() const { return program_->spec(); }
  [[nodiscard]] const decoder_options& options() const { return opt_; }
  [[nodiscard]] const kv_store& kv() const { return program_->kv(); }

  /// A new, empty sequence.
  [[nodiscard]] std::uint64_t open_sequence() { return program_->open_sequence(); }
  /// Frees the sequence's KV blocks; not_found for an unknown id.
  [[nodiscard]] status close_sequence(std::uint64_t seq) { return program_->close_sequence(seq); }
  /// Tokens cached for the sequence; not_found for an unknown id.
  [[nodiscard]] expected<std::int64_t> sequence_length(std::uint64_t seq) const {
    return program_->sequence_length(seq);
  }
  /// The sequence's block table (for inspection); HELIX_CHECKs that it exists.
  [[nodiscard]] const block_table& table(std::uint64_t seq) const { return program_->table(seq); }

  /// Appends `num_tokens` positions of seeded synthetic KV (uniform in [-1, 1), every layer) to
  /// the sequence without running the model: a long context for benchmarks and demos, labelled
  /// synthetic wherever it is reported. resource_exhausted (sequence unchanged) if the blocks do
  /// not fit; not_found for an unknown sequence.
  [[nodiscard]] status append_synthetic(std::uint64_t seq, std::int64_t num_tokens,
                                        std::uint64_t seed);

  /// Rows of logits forward() writes for these items.
  [[nodiscard]] static std::int64_t logits_rows(std::span<const batch_item> items) {
    return model::logits_rows(items);
  }

  /// One step. `logits` must hold logits_rows(items) * vocab floats; rows in item order.
  /// invalid_argument for an unknown or repeated sequence, an empty item, a token id outside
  /// [0, vocab), more than max_batch_tokens rows, or a short logits span; resource_exhausted when
  /// the KV store lacks the blocks. Those errors leave every sequence unchanged; an internal
  /// kernel failure after validation leaves the step's tokens appended.
  [[nodiscard]] status forward(std::span<const batch_item> items, std::span<float> logits);

 private:
  struct passkey {};
  template <class Weights>
  [[nodiscard]] static expected<std::unique_ptr<decoder>> build(Weights&& weights,
                                                                const decoder_options& options);

 public:
  /// Use create(); public only for std::make_unique.
  decoder(passkey, const decoder_options& options, std::unique_ptr<transport::fabric> fabric,
          std::unique_ptr<rank_program> program);

 private:
  decoder_options opt_;
  std::unique_ptr<transport::fabric> fabric_;  // one rank; outlives the program's communicators
  std::unique_ptr<rank_program> program_;
  std::vector<std::int64_t> owners_;  // every new block on the one KVP member (0)
};

}  // namespace helix::model
