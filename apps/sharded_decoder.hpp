// An N-rank Helix decoder in one process: one model::rank_program per rank, each on its own
// thread, connected by the local fabric (transport/local). It offers the single-worker decoder's
// interface (open, forward, close), so callers can run the sharded program and the reference side
// by side: `helix verify`, `helix bench decode`, the demo and the tests. It plays the engine's
// part for placement: a planner::placement_book decides the owner of every new KV block, and the
// decisions go to every rank with the step (model/ never places). The actor runtime replaces the
// thread-per-rank driving with worker actors; the per-rank program underneath is the same.
//
// Every call is dispatched to all ranks and returns when all of them have finished. Errors that
// every rank detects identically (bad items, KV exhaustion, unknown sequences) come back as they
// are and leave the decoder usable. Any other rank failure (a transport or kernel error) aborts
// the fabric so no rank waits forever; the decoder is then broken and every later call returns
// failed_precondition naming the first error.
//
// Not thread-safe: one caller at a time (the ranks' threads are internal).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/layout.hpp"
#include "model/rank_program.hpp"
#include "model/weights.hpp"
#include "planner/placement_book.hpp"

namespace helix::apps {

struct sharded_decoder_options {
  helix::layout layout;              // validated against the model by create()
  model::rank_program_options rank;  // per rank (kv_capacity_tokens is per rank)
};

/// Per-rank figures after the last call.
struct rank_stats {
  std::int64_t rank = 0;
  std::int64_t kv_used_slots = 0;
  std::int64_t kv_num_slots = 0;
  std::int64_t kv_bytes_used = 0;            // used slots * bytes per slot (all layers)
  std::int64_t kv_bytes_read_last_step = 0;  // see model::rank_program::kv_bytes_read_last_step
};

class sharded_decoder {
 public:
  using batch_item = model::decoder::batch_item;

  /// Starts N rank threads, each sharding `full` for its rank (the shards are copies: `full` may
  /// be released afterwards). Errors of model::rank_program::create (the first rank's) are
  /// returned.
  [[nodiscard]] static expected<std::unique_ptr<sharded_decoder>> create(
      const model::model_weights& full, const sharded_decoder_options& options);
  ~sharded_decoder();
  sharded_decoder(const sharded_decoder&) = delete;
  sharded_decoder& operator=(const sharded_decoder&) = delete;

  [[nodiscard]] const helix::layout& grid() const;
  [[nodiscard]] const model_spec& spec() const;
  [[nodiscard]] std::int64_t num_ranks() const;

  [[nodiscard]] expected<std::uint64_t> open_sequence();
  [[nodiscard]] status close_sequence(std::uint64_t seq);
  [[nodiscard]] expected<std::int64_t> sequence_length(std::uint64_t seq) const;
  [[nodiscard]] status append_synthetic(std::uint64_t seq, std::int64_t num_tokens,
                                        std::uint64_t seed);

  /// One step on every rank; full logits (rank 0's copy; all ranks hold the same bytes).
  [[nodiscard]] status forward(std::span<const batch_item> items, std::span<float> logits);
  /// One step with model::rank_program's step_output (logits and/or sharded sampling), rank 0's
  /// copy.
  [[nodiscard]] status forward(std::span<const batch_item> items, const model::step_output& out);

  [[nodiscard]] std::vector<rank_stats> stats() const;

  /// Aborts the data plane, as a failing rank would (a caller's watchdog, fault tests): the next
  /// call's collectives fail on every rank and the decoder is broken from then on.
  void abort(const status& reason);

 private:
  struct impl;
  struct passkey {};

 public:
  explicit sharded_decoder(passkey, std::unique_ptr<impl> p);

 private:
  std::unique_ptr<impl> p_;
};

}  // namespace helix::apps
