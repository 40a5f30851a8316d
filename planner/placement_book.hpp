// The engine's record of KV placement: for every live request its placement offset and where
// each of its blocks lives, by KVP member. It turns the pure rule of kv_placement.hpp into the
// per-step decisions that are handed to the workers with each step (ARCHITECTURE.md section 2,
// step 3: "Workers receive table updates with each step; model/ never calls the planner").
//
// Who calls it: whatever drives the ranks through steps (the in-process sharded driver of the
// CLI, later the engine actor). Per step the driver calls plan() for every item in the step's
// order, hands the owners to every rank, and when the step succeeded calls commit() for every item
// and tick() once (a failed step leaves the record untouched); join() when a request arrives and
// leave() when it goes. The record keeps one table per request whose
// block ranks are kvp indices (a block lives on the same kvp_idx in every TPA column); slots are
// the workers' business and are recorded as 0. Migration edits these tables too (relocate()).
//
// Deterministic: the same calls give the same decisions. Not thread-safe (one owner).
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "core/block_table.hpp"
#include "core/layout.hpp"
#include "core/status.hpp"

namespace helix::planner {

class placement_book {
 public:
  /// `l` must be valid for the model (only its KVP size is used); block_tokens >= 1.
  placement_book(const layout& l, std::int64_t block_tokens);

  /// Registers request `id` and chooses its offset by choose_join_offset() from the current
  /// load of the column and the step clock. invalid_argument if the id is already live.
  [[nodiscard]] status join(std::uint64_t id);
  /// Forgets the request and its blocks; not_found for an unknown id.
  [[nodiscard]] status leave(std::uint64_t id);

  /// Appends to `new_block_kvp` the kvp index of every block that appending `num_tokens` tokens to
  /// request `id` opens, in position order (plan_append's opening blocks); records nothing.
  /// not_found for an unknown id, invalid_argument for num_tokens < 0.
  [[nodiscard]] status plan(std::uint64_t id, std::int64_t num_tokens,
                            std::vector<std::int64_t>& new_block_kvp) const;
  /// Records the append that plan() described (same id and count). Errors as plan().
  [[nodiscard]] status commit(std::uint64_t id, std::int64_t num_tokens);
  /// Records a migration (planner/rebalance.hpp): block `block_idx` of request `id` now lives on
  /// member `to_kvp`. The offset does not change, so blocks opened later still follow the rule;
  /// the open block, wherever it lives, keeps receiving its appends. not_found for an unknown id,
  /// invalid_argument for a block index out of range or to_kvp outside [0, KVP).
  [[nodiscard]] status relocate(std::uint64_t id, std::int64_t block_idx, std::int64_t to_kvp);
  /// Registers request `id` with a given offset and table (block ranks are kvp indices): the
  /// record after a recovery (recovery_plan.hpp). invalid_argument if the id is live, the offset
  /// is outside [0, KVP) or a block's member is.
  [[nodiscard]] status restore(std::uint64_t id, std::int64_t offset, block_table table);
  /// Advances the global step clock (once per forward step).
  void tick() { ++step_; }
  /// Sets the step clock (a record rebuilt after a recovery goes on from the old one's).
  void set_step(std::int64_t step) { step_ = step; }

  [[nodiscard]] std::int64_t step() const { return step_; }
  [[nodiscard]] bool contains(std::uint64_t id) const { return requests_.count(id) > 0; }
  /// KVP members of the column (the range of the tables' block ranks).
  [[nodiscard]] std::int64_t kvp() const { return grid_.kvp; }
  /// Ids of the live requests, ascending.
  [[nodiscard]] std::vector<std::uint64_t> live_ids() const;
  /// The request's offset and table (block ranks are kvp indices); HELIX_CHECKs the id.
  [[nodiscard]] std::int64_t offset(std::uint64_t id) const;
  [[nodiscard]] const block_table& table(std::uint64_t id) const;

 private:
  struct request {
    std::int64_t offset = 0;
    block_table table;
  };
  layout grid_;  // KVP x 1 view: a block's rank in the tables is its kvp index
  std::int64_t block_tokens_;
  std::int64_t step_ = 0;
  std::map<std::uint64_t, request> requests_;  // ordered: load measurement is deterministic
};

}  // namespace helix::planner
