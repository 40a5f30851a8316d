// KV rebalancing: which KV blocks move between the KVP members of a column so that every member's
// block count stays within a threshold of the mean (issue 4 item 2).
//
// Pure policy (ARCHITECTURE.md section 2, step 3: "migration ... edit[s] the table"). The engine
// calls plan_rebalance() between steps, typically after requests left; it hands the moves to every
// worker (model::rank_program::migrate_blocks moves the pages over the data plane) and, when they
// succeeded, records them with placement_book::relocate(). A block lives on the same kvp_idx in
// every TPA column (each column holds its own KV heads of the same tokens), so one plan over kvp
// indices balances every column at once.
//
// The metric is kv_placement.hpp's: kv_imbalance = (max - mean) / mean over the KVP members'
// block counts. Rebalancing acts only when the column is loaded enough to matter: the mean is at
// least `min_blocks_per_rank` blocks per member.
//
// The algorithm (T blocks resident over K members, counts c_j, mean m = T / K):
//   1. cap = the largest integer count c with (c - m) / m <= threshold, raised to ceil(m) when
//      that is smaller (no placement has a maximum below ceil(m)).
//   2. Greedy, one block per move: the source is the member with the largest count above cap that
//      still holds a movable block, the destination the member with the smallest count (ties: the
//      lower kvp index, for both). Stop when no member is above cap, no source has a movable block
//      left, or max_moves moves were planned.
//   3. The block: among the requests holding a movable block on the source, the one with the
//      largest (its blocks on the source - its blocks on the destination), ties the smaller id;
//      its lowest-indexed movable block there. This also evens each request's own spread, so that
//      a request leaving later takes about as many blocks from every member.
//   Movable: every block but a request's open block (its last block while partially filled),
//   which keeps receiving the request's appends: leaving it in place keeps the appends of a step
//   where the placement rule spread them. Later blocks still follow the rule (the offset never
//   changes).
// Guarantee: every move takes a block from a member above cap to a member below cap (one exists
// while any member is above cap, since K * cap >= T), so each move lowers the total excess
// sum_j max(0, c_j - cap) by exactly one and no block is moved twice (destinations never rise
// above cap, so never become sources). Hence, when every member holds at least its excess in
// movable blocks and max_moves allows, the plan has exactly sum_j max(0, c_j - cap) moves (the
// minimum any plan can have, since a move lowers one member's count by one) and afterwards
// max <= cap: kv_imbalance <= threshold whenever ceil(m) meets the threshold, else the smallest
// maximum any placement has. A plan truncated by max_moves is a prefix of the full plan: the next
// call (after applying it) continues where it stopped. The same input gives the same moves.
//
// Everything here is a pure, deterministic function of its arguments; thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/block_table.hpp"
#include "core/status.hpp"
#include "planner/placement_book.hpp"

namespace helix::planner {

struct rebalance_options {
  /// Target: kv_imbalance = (max - mean) / mean <= threshold; >= 0.
  double threshold = 0.10;
  /// No moves unless the mean is at least this many blocks per member; >= 0.
  std::int64_t min_blocks_per_rank = 64;
  /// At most this many moves per plan (each moves a whole block, every layer, over the data
  /// plane; bounds one migration pause); >= 0.
  std::int64_t max_moves = 4096;
};

/// One block to move: block `block_idx` of request `request_id` goes from member `from_kvp` to
/// member `to_kvp` of every column's KVP group.
struct planned_move {
  std::uint64_t request_id = 0;
  std::int64_t block_idx = 0;
  std::int64_t from_kvp = 0;
  std::int64_t to_kvp = 0;
  friend bool operator==(const planned_move&, const planned_move&) = default;
};

/// One live request as the rebalancer sees it: its id and its block table, whose block ranks are
/// kvp indices (placement_book's tables). The table is not owned and must outlive the call.
struct rebalance_request {
  std::uint64_t request_id = 0;
  const block_table* table = nullptr;
};

/// The moves (algorithm and guarantee in the header comment), in the order they were chosen;
/// empty when the column is balanced or too lightly loaded. invalid_argument for kvp < 1, a
/// negative or non-finite threshold, a negative min_blocks_per_rank or max_moves, a null table,
/// a duplicate request id or a block rank outside [0, kvp).
[[nodiscard]] expected<std::vector<planned_move>> plan_rebalance(
    std::int64_t kvp, std::span<const rebalance_request> requests, const rebalance_options& o);

/// plan_rebalance over every live request of the engine's record. Errors as above.
[[nodiscard]] expected<std::vector<planned_move>> plan_rebalance(const placement_book& book,
                                                                 const rebalance_options& o);

}  // namespace helix::planner
