#include "planner/kv_placement.hpp"

#include <algorithm>
#include <tuple>

namespace helix::planner {

std::int64_t kv_block_owner(std::int64_t request_offset, std::int64_t block_idx, std::int64_t kvp) {
  HELIX_CHECK(kvp >= 1, "kvp {} < 1", kvp);
  HELIX_CHECK(request_offset >= 0 && request_offset < kvp, "offset {} out of [0, {})",
              request_offset, kvp);
  HELIX_CHECK(block_idx >= 0, "block_idx {} < 0", block_idx);
  return (request_offset + block_idx) % kvp;
}

expected<std::int64_t> choose_join_offset(const join_view& view) {
  if (view.kvp < 1) return invalid_argument("choose_join_offset: kvp {} < 1", view.kvp);
  if (view.first_block_idx < 0) {
    return invalid_argument("choose_join_offset: first_block_idx {} < 0", view.first_block_idx);
  }
  const auto kvp = static_cast<std::size_t>(view.kvp);
  if (view.appenders.size() != kvp || view.stored_blocks.size() != kvp) {
    return invalid_argument(
        "choose_join_offset: appenders [{}] and stored_blocks [{}] must be [{}]",
        view.appenders.size(), view.stored_blocks.size(), kvp);
  }
  for (std::size_t j = 0; j < kvp; ++j) {
    if (view.appenders[j] < 0 || view.stored_blocks[j] < 0) {
      return invalid_argument("choose_join_offset: negative load on member {}", j);
    }
  }
  // Rotation distance from the step clock's slot; non-negative even for a negative step.
  const std::int64_t clock_slot = ((view.step % view.kvp) + view.kvp) % view.kvp;
  auto key = [&](std::int64_t j) {
    const auto u = static_cast<std::size_t>(j);
    return std::tuple(view.appenders[u], view.stored_blocks[u],
                      (j - clock_slot + view.kvp) % view.kvp);
  };
  std::int64_t best = 0;
  for (std::int64_t j = 1; j < view.kvp; ++j) {
    if (key(j) < key(best)) best = j;
  }
  // The next block (index first_block_idx) must land on `best`.
  return ((best - view.first_block_idx) % view.kvp + view.kvp) % view.kvp;
}

namespace {

expected<std::int64_t> member_of(const layout& l, std::int64_t rank) {
  if (rank < 0 || rank >= l.num_ranks) {
    return invalid_argument("block on rank {} outside layout {} (N = {})", rank, l.to_string(),
                            l.num_ranks);
  }
  return l.attention_coords(rank).kvp_idx;
}

}  // namespace

expected<column_load> measure_column_load(const layout& l,
                                          std::span<const request_placement> requests) {
  column_load load;
  load.appenders.assign(static_cast<std::size_t>(l.kvp), 0);
  load.stored_blocks.assign(static_cast<std::size_t>(l.kvp), 0);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const request_placement& r = requests[i];
    if (r.table == nullptr)
      return invalid_argument("measure_column_load: request {} has no table", i);
    if (r.offset < 0 || r.offset >= l.kvp) {
      return invalid_argument("measure_column_load: request {} offset {} out of [0, {})", i,
                              r.offset, l.kvp);
    }
    for (const kv_block_ref& b : r.table->blocks()) {
      HELIX_ASSIGN_OR_RETURN(const std::int64_t j, member_of(l, b.rank));
      ++load.stored_blocks[static_cast<std::size_t>(j)];
    }
    std::int64_t next = 0;
    if (r.table->needs_block()) {
      next = kv_block_owner(r.offset, static_cast<std::int64_t>(r.table->blocks().size()), l.kvp);
    } else {
      HELIX_ASSIGN_OR_RETURN(next, member_of(l, r.table->last().rank));
    }
    ++load.appenders[static_cast<std::size_t>(next)];
  }
  return load;
}

expected<std::vector<planned_block>> plan_append(const layout& l, std::int64_t tpa_idx,
                                                 std::int64_t request_offset,
                                                 const block_table& table,
                                                 std::int64_t num_tokens) {
  if (num_tokens < 0) return invalid_argument("plan_append: num_tokens {} < 0", num_tokens);
  if (tpa_idx < 0 || tpa_idx >= l.tpa) {
    return invalid_argument("plan_append: tpa_idx {} out of [0, {})", tpa_idx, l.tpa);
  }
  if (request_offset < 0 || request_offset >= l.kvp) {
    return invalid_argument("plan_append: offset {} out of [0, {})", request_offset, l.kvp);
  }
  const std::int64_t block_tokens = table.block_tokens();
  if (block_tokens < 1) return invalid_argument("plan_append: block_tokens {} < 1", block_tokens);

  std::vector<planned_block> plan;
  std::int64_t pos = table.next_pos();
  std::int64_t left = num_tokens;
  auto block_idx = static_cast<std::int64_t>(table.blocks().size());
  if (left > 0 && !table.needs_block()) {
    const kv_block_ref& open = table.last();
    HELIX_ASSIGN_OR_RETURN(const std::int64_t j, member_of(l, open.rank));
    const std::int64_t n = std::min(left, block_tokens - open.num_tokens);
    plan.push_back({.block_idx = block_idx - 1,
                    .kvp_idx = j,
                    .rank = l.attention_rank(tpa_idx, j),
                    .first_pos = pos,
                    .num_tokens = n,
                    .opens_block = false});
    pos += n;
    left -= n;
  }
  while (left > 0) {
    const std::int64_t j = kv_block_owner(request_offset, block_idx, l.kvp);
    const std::int64_t n = std::min(left, block_tokens);
    plan.push_back({.block_idx = block_idx,
                    .kvp_idx = j,
                    .rank = l.attention_rank(tpa_idx, j),
                    .first_pos = pos,
                    .num_tokens = n,
                    .opens_block = true});
    ++block_idx;
    pos += n;
    left -= n;
  }
  return plan;
}

std::vector<std::int64_t> blocks_per_rank(std::span<const block_table> tables,
                                          std::int64_t num_ranks) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(std::max<std::int64_t>(0, num_ranks)),
                                   0);
  for (const block_table& t : tables) {
    for (const kv_block_ref& b : t.blocks()) {
      if (b.rank >= 0 && b.rank < num_ranks) ++counts[static_cast<std::size_t>(b.rank)];
    }
  }
  return counts;
}

double kv_imbalance(std::span<const block_table> tables, std::span<const std::int64_t> ranks) {
  if (ranks.empty()) return 0.0;
  std::int64_t max_rank = -1;
  for (std::int64_t r : ranks) max_rank = std::max(max_rank, r);
  // Blocks on ranks outside `ranks` (other columns) are simply not counted.
  const std::vector<std::int64_t> counts = blocks_per_rank(tables, max_rank + 1);
  std::int64_t total = 0;
  std::int64_t max_count = 0;
  for (std::int64_t r : ranks) {
    const std::int64_t c = r >= 0 ? counts[static_cast<std::size_t>(r)] : 0;
    total += c;
    max_count = std::max(max_count, c);
  }
  if (total == 0) return 0.0;
  const double mean = static_cast<double>(total) / static_cast<double>(ranks.size());
  return (static_cast<double>(max_count) - mean) / mean;
}

}  // namespace helix::planner
