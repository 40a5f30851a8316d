// What a worker actor computes, behind an interface: the worker actor (worker_actor.hpp) turns
// control messages into calls on a worker_compute and sends the results back. The real one,
// rank_compute, runs the rank's model::rank_program (its weight shard, KV shard and
// communicators); deterministic actor tests drive the actors with a compute of their own, since
// the real one blocks in collectives that need every rank's thread.
//
// Called from the worker's own thread only; implementations need not be thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "actors/protocol.hpp"
#include "core/layout.hpp"
#include "model/rank_program.hpp"
#include "model/weights.hpp"
#include "transport/communicator.hpp"

namespace helix::actors {

/// What one step gives back (see worker_compute::step).
struct step_outcome {
  /// One entry per item: the sampled token, or -1 when the item is not sampled or failed.
  std::vector<std::int32_t> tokens;
  /// Empty when every item went well, else one entry per item (ok, or why that item alone
  /// failed, e.g. non-finite logits).
  std::vector<status> item_errors;
  /// Rank 0: the full logits row of every sampled item with want_logits, in item order; other
  /// ranks leave it empty.
  std::vector<float> logits;
  /// Seconds of the step's forward pass per phase: attention, all_to_all, ffn, sampling
  /// (model::rank_program::step_phases); empty when the step ran no forward pass.
  std::vector<double> phase_seconds;
};

class worker_compute {
 public:
  virtual ~worker_compute() = default;
  [[nodiscard]] virtual std::int64_t rank() const = 0;
  /// Opens the next sequence; its id (1, 2, ... in open order on every rank).
  [[nodiscard]] virtual expected<std::uint64_t> open_sequence() = 0;
  [[nodiscard]] virtual status close_sequence(std::uint64_t seq) = 0;
  /// Runs one step: its synthetic-KV items first (step_item::synthetic_tokens), then one forward
  /// pass over the others; fills `out` (reused across steps). A non-ok return is a failure of the
  /// step itself (the rank or the data plane).
  [[nodiscard]] virtual status step(const step_msg& m, step_outcome& out) = 0;
  [[nodiscard]] virtual status migrate(std::span<const move_item> moves) = 0;
  /// After a relayout: the sequences as they are now (restore_msg; model::rank_program::restore).
  /// Default: failed_precondition unless there is nothing to restore.
  [[nodiscard]] virtual status restore(const restore_msg& m) {
    return m.seqs.empty() ? ok_status()
                          : failed_precondition("worker {}: cannot restore sequences", rank());
  }
  /// The KV this compute holds, for the compute of the next layout (recovery, lost blocks only);
  /// null when it has none to hand over. Called once its worker actor ended.
  [[nodiscard]] virtual std::unique_ptr<model::carried_kv> release_kv() { return nullptr; }
  [[nodiscard]] virtual std::int64_t kv_used_blocks() const = 0;
  [[nodiscard]] virtual std::int64_t kv_capacity_blocks() const = 0;
};

/// The real compute: one rank of a layout running model::rank_program.
class rank_compute final : public worker_compute {
 public:
  /// Shards `full` for `rank` (copies; `full` may go afterwards). Errors of rank_program::create.
  [[nodiscard]] static expected<std::unique_ptr<rank_compute>> create(
      const model::model_weights& full, const layout& l, std::int64_t rank,
      std::unique_ptr<transport::communicator> world,
      std::unique_ptr<transport::communicator> kvp_group,
      const model::rank_program_options& options);

  [[nodiscard]] std::int64_t rank() const override;
  [[nodiscard]] expected<std::uint64_t> open_sequence() override;
  [[nodiscard]] status close_sequence(std::uint64_t seq) override;
  [[nodiscard]] status step(const step_msg& m, step_outcome& out) override;
  [[nodiscard]] status migrate(std::span<const move_item> moves) override;
  [[nodiscard]] status restore(const restore_msg& m) override;
  [[nodiscard]] std::unique_ptr<model::carried_kv> release_kv() override;
  [[nodiscard]] std::int64_t kv_used_blocks() const override;
  [[nodiscard]] std::int64_t kv_capacity_blocks() const override;

  /// Recovery with donors: the communicator over the new ranks and the donors (restore_msg::
  /// handoff), which restore() uses when the message asks for it.
  void set_handoff(std::unique_ptr<transport::communicator> handoff) {
    handoff_ = std::move(handoff);
  }

  /// The same from weights already sharded for `rank` (model::seeded_rank_weights), keeping the
  /// previous compute's KV when `carried` is not null (model::rank_program::create).
  [[nodiscard]] static expected<std::unique_ptr<rank_compute>> create(
      model::rank_weights w, std::unique_ptr<transport::communicator> world,
      std::unique_ptr<transport::communicator> kvp_group,
      const model::rank_program_options& options,
      std::unique_ptr<model::carried_kv> carried = nullptr);

  explicit rank_compute(std::unique_ptr<model::rank_program> program);

 private:
  std::unique_ptr<model::rank_program> program_;
  std::unique_ptr<transport::communicator> handoff_;  // recovery with donors only
  // Reused across steps (steady-state steps do not allocate once they have grown).
  std::vector<model::batch_item> items_;
  std::vector<kernels::sampling_options> sampling_;
  std::vector<std::uint64_t> request_ids_;
  std::vector<std::int32_t> sampled_;
  std::vector<status> row_status_;
  std::vector<model::block_move> moves_;
  std::vector<float> logits_;  // full rows, gathered only for steps that ask for them
};

/// A member of the old layout left without a rank after a failure, for the one thing it still
/// does: send the KV blocks it carried to their new owners (restore_msg with handoff;
/// model::donate_kv), then hold nothing. Its rank is N + its donor index (N: the new layout's
/// ranks); every other call fails.
class donor_compute final : public worker_compute {
 public:
  donor_compute(std::unique_ptr<model::carried_kv> kv,
                std::unique_ptr<transport::communicator> handoff, layout after, std::int64_t rank);
  [[nodiscard]] std::int64_t rank() const override { return rank_; }
  [[nodiscard]] expected<std::uint64_t> open_sequence() override;
  [[nodiscard]] status close_sequence(std::uint64_t seq) override;
  [[nodiscard]] status step(const step_msg& m, step_outcome& out) override;
  [[nodiscard]] status migrate(std::span<const move_item> moves) override;
  [[nodiscard]] status restore(const restore_msg& m) override;
  [[nodiscard]] std::int64_t kv_used_blocks() const override;
  [[nodiscard]] std::int64_t kv_capacity_blocks() const override;

 private:
  [[nodiscard]] status refuse(std::string_view what) const;
  std::unique_ptr<model::carried_kv> kv_;  // null: nothing carried (or donated already)
  std::unique_ptr<transport::communicator> handoff_;
  layout after_;
  std::int64_t rank_;
};

}  // namespace helix::actors
