// KV placement and staggering: which KVP rank receives each new KV block of a request.
//
// Pure policy (ARCHITECTURE.md section 2, step 3). The engine calls it when a request joins, when
// a prefill chunk is scheduled and when a decode step crosses a block boundary, and writes the
// answer into the request's block_table; workers and model/ only ever read the table. Migration
// and recovery edit the table afterwards, so nothing may recompute a location from this rule.
//
// The rule, exactly:
//   * Blocks of `block_tokens` tokens, in position order, block_idx = 0, 1, 2, ...
//   * owner(block_idx) = (request_offset + block_idx) mod KVP       -- kv_block_owner()
//     i.e. round-robin over the KVP members of the request's TPA column, starting at the
//     request's offset. A block lives on the same kvp_idx in every TPA column (each column holds
//     its own KV heads of the same tokens), so the global rank in column c is
//     layout.attention_rank(c, owner).
//   * The offset is chosen once, at join (choose_join_offset()): the request's next block goes to
//     the member j minimising, in order,
//       1. appenders[j]      live requests whose next token is written on j this step,
//       2. stored_blocks[j]  blocks the column's live requests hold on j,
//       3. (j - step) mod KVP  rotation on the global step clock, so that ties (e.g. an idle
//                              system) do not pile every newcomer onto member 0,
//     and offset = (j - first_block_idx) mod KVP.
// Consequences (tested in tests/planner/placement_test.cpp):
//   * one request's per-member block counts differ by at most 1 at all times and its consecutive
//     blocks cycle through all KVP members;
//   * requests joining in the same step get distinct, consecutive offsets: their appends stay
//     within 1 per member, and when B is a multiple of KVP their per-member totals stay within 1
//     (every member starts the same number of equal arcs). For other B the totals of equal-length
//     requests differ by up to min(B, KVP) mid-round: no rule that gives each request its own
//     round-robin can do better for every length without knowing B in advance;
//   * in decode with one token per step and joins on block boundaries (the step clock's epochs),
//     all requests cross block boundaries together and the appends of every step stay within 1
//     per member (as even as the batch allows);
//   * otherwise (joins mid-block, uneven lengths, finished requests freeing blocks) the appends are
//     balanced at join and drift by a bounded amount; kv_imbalance() measures it and the
//     rebalancing policy (later) migrates blocks to correct it.
// Contexts shorter than KVP * block_tokens leave some members without blocks: allowed (their
// partial attention is empty, lse = -inf, and merges as a no-op).
//
// Everything here is a pure, deterministic function of its arguments (no clocks, no randomness);
// thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/block_table.hpp"
#include "core/layout.hpp"
#include "core/status.hpp"

namespace helix::planner {

/// THE placement rule: (request_offset + block_idx) mod kvp. HELIX_CHECKs kvp >= 1,
/// 0 <= request_offset < kvp and block_idx >= 0.
[[nodiscard]] std::int64_t kv_block_owner(std::int64_t request_offset, std::int64_t block_idx,
                                          std::int64_t kvp);

/// What choose_join_offset() looks at: the state of one TPA column's KVP group at a step.
struct join_view {
  std::int64_t step = 0;                        // global step clock
  std::int64_t kvp = 1;                         // KVP members in the column
  std::int64_t first_block_idx = 0;             // block_idx of the request's next new block
  std::span<const std::int64_t> appenders;      // [kvp] live requests appending to member j
  std::span<const std::int64_t> stored_blocks;  // [kvp] blocks held on member j
};

/// The offset of a joining request (rule in the header comment), in [0, kvp). invalid_argument if
/// kvp < 1, first_block_idx < 0, a span's size is not kvp or a count is negative.
[[nodiscard]] expected<std::int64_t> choose_join_offset(const join_view& view);

/// A live request of a column: its offset and its block table (not owned; must outlive the call).
struct request_placement {
  std::int64_t offset = 0;
  const block_table* table = nullptr;
};

/// Per-member load of a column, indexed by kvp_idx: shapes [kvp].
struct column_load {
  std::vector<std::int64_t> appenders;
  std::vector<std::int64_t> stored_blocks;
};

/// Measures the load of the KVP group from the live requests' block tables (the truth, so migrated
/// blocks count where they are now). A block's member is attention_coords(rank).kvp_idx, whichever
/// column the table records. A request's appender is the member of its open block if it has room,
/// else kv_block_owner(offset, num_blocks). invalid_argument for a null table, an offset outside
/// [0, kvp) or a rank outside the layout.
[[nodiscard]] expected<column_load> measure_column_load(
    const layout& l, std::span<const request_placement> requests);

/// One block touched by a chunk of appended tokens.
struct planned_block {
  std::int64_t block_idx = 0;   // index in the request's block table
  std::int64_t kvp_idx = 0;     // member of the column's KVP group
  std::int64_t rank = 0;        // global rank: l.attention_rank(tpa_idx, kvp_idx)
  std::int64_t first_pos = 0;   // global position of the first token this chunk writes there
  std::int64_t num_tokens = 0;  // tokens this chunk writes there
  bool opens_block = false;     // true: a new block (needs a slot); false: fills the open one
  friend bool operator==(const planned_block&, const planned_block&) = default;
};

/// Plans where `num_tokens` appended tokens go (a prefill chunk; a decode step is num_tokens = 1):
/// first the room left in the table's open block (on whatever rank holds it now), then new blocks
/// placed by kv_block_owner(request_offset, block_idx). Does not modify the table. invalid_argument
/// if num_tokens < 0, tpa_idx or request_offset is out of range, or the open block's rank is not in
/// the layout.
[[nodiscard]] expected<std::vector<planned_block>> plan_append(const layout& l,
                                                               std::int64_t tpa_idx,
                                                               std::int64_t request_offset,
                                                               const block_table& table,
                                                               std::int64_t num_tokens);

/// Blocks per rank over `tables`: shape [num_ranks]. Blocks whose rank is outside
/// [0, num_ranks) are not counted.
[[nodiscard]] std::vector<std::int64_t> blocks_per_rank(std::span<const block_table> tables,
                                                        std::int64_t num_ranks);

/// Imbalance of `tables` over `ranks`: (max - mean) / mean of the block counts of those ranks
/// (0 when perfectly even or when there are no blocks). E.g. counts {3, 1} -> (3 - 2) / 2 = 0.5.
/// Pass a KVP group to measure one column, or all ranks.
[[nodiscard]] double kv_imbalance(std::span<const block_table> tables,
                                  std::span<const std::int64_t> ranks);

}  // namespace helix::planner
