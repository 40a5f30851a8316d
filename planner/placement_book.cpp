#include "planner/placement_book.hpp"

#include "planner/kv_placement.hpp"

namespace helix::planner {

placement_book::placement_book(const layout& l, std::int64_t block_tokens)
    : block_tokens_(block_tokens) {
  HELIX_CHECK(l.kvp >= 1 && block_tokens >= 1, "placement_book: kvp {} block_tokens {}", l.kvp,
              block_tokens);
  // One column of KVP members, so that table ranks are kvp indices.
  grid_.family = layout_family::helix;
  grid_.kvp = l.kvp;
  grid_.tpa = 1;
  grid_.tpf = l.kvp;
  grid_.ep = 1;
  grid_.num_ranks = l.kvp;
}

status placement_book::join(std::uint64_t id) {
  if (requests_.count(id) > 0) return invalid_argument("placement_book: request {} is live", id);
  std::vector<request_placement> live;
  live.reserve(requests_.size());
  for (const auto& [rid, r] : requests_) live.push_back({r.offset, &r.table});
  HELIX_ASSIGN_OR_RETURN(const column_load load, measure_column_load(grid_, live));
  join_view view;
  view.step = step_;
  view.kvp = grid_.kvp;
  view.first_block_idx = 0;
  view.appenders = load.appenders;
  view.stored_blocks = load.stored_blocks;
  HELIX_ASSIGN_OR_RETURN(const std::int64_t offset, choose_join_offset(view));
  requests_.emplace(id, request{offset, block_table(block_tokens_)});
  return ok_status();
}

status placement_book::restore(std::uint64_t id, std::int64_t offset, block_table table) {
  if (requests_.count(id) > 0) return invalid_argument("placement_book: request {} is live", id);
  if (offset < 0 || offset >= grid_.kvp || table.block_tokens() != block_tokens_) {
    return invalid_argument(
        "placement_book: restore of request {}: offset {} of {}, {} tokens a block", id, offset,
        grid_.kvp, table.block_tokens());
  }
  for (const kv_block_ref& b : table.blocks()) {
    if (b.rank < 0 || b.rank >= grid_.kvp) {
      return invalid_argument("placement_book: restore of request {}: a block on member {} of {}",
                              id, b.rank, grid_.kvp);
    }
  }
  requests_.emplace(id, request{offset, std::move(table)});
  return ok_status();
}

status placement_book::leave(std::uint64_t id) {
  if (requests_.erase(id) == 0) return not_found("placement_book: unknown request {}", id);
  return ok_status();
}

status placement_book::plan(std::uint64_t id, std::int64_t num_tokens,
                            std::vector<std::int64_t>& new_block_kvp) const {
  auto it = requests_.find(id);
  if (it == requests_.end()) return not_found("placement_book: unknown request {}", id);
  const request& r = it->second;
  HELIX_ASSIGN_OR_RETURN(const std::vector<planned_block> blocks,
                         plan_append(grid_, 0, r.offset, r.table, num_tokens));
  for (const planned_block& b : blocks) {
    if (b.opens_block) new_block_kvp.push_back(b.kvp_idx);
  }
  return ok_status();
}

status placement_book::commit(std::uint64_t id, std::int64_t num_tokens) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return not_found("placement_book: unknown request {}", id);
  request& r = it->second;
  HELIX_ASSIGN_OR_RETURN(const std::vector<planned_block> blocks,
                         plan_append(grid_, 0, r.offset, r.table, num_tokens));
  for (const planned_block& b : blocks) {
    if (b.opens_block) {
      HELIX_RETURN_IF_ERROR(r.table.open_block(static_cast<std::int32_t>(b.kvp_idx), 0));
    }
    HELIX_RETURN_IF_ERROR(r.table.append_tokens(b.num_tokens));
  }
  return ok_status();
}

status placement_book::relocate(std::uint64_t id, std::int64_t block_idx, std::int64_t to_kvp) {
  auto it = requests_.find(id);
  if (it == requests_.end()) return not_found("placement_book: unknown request {}", id);
  block_table& t = it->second.table;
  const auto num_blocks = static_cast<std::int64_t>(t.blocks().size());
  if (block_idx < 0 || block_idx >= num_blocks || to_kvp < 0 || to_kvp >= grid_.kvp) {
    return invalid_argument(
        "placement_book: relocate of request {} block {} (of {}) to member {} (of {})", id,
        block_idx, num_blocks, to_kvp, grid_.kvp);
  }
  return t.relocate(static_cast<std::size_t>(block_idx), static_cast<std::int32_t>(to_kvp), 0);
}

std::vector<std::uint64_t> placement_book::live_ids() const {
  std::vector<std::uint64_t> ids;
  ids.reserve(requests_.size());
  for (const auto& entry : requests_) ids.push_back(entry.first);
  return ids;
}

std::int64_t placement_book::offset(std::uint64_t id) const {
  auto it = requests_.find(id);
  HELIX_CHECK(it != requests_.end(), "placement_book: unknown request {}", id);
  return it->second.offset;
}

const block_table& placement_book::table(std::uint64_t id) const {
  auto it = requests_.find(id);
  HELIX_CHECK(it != requests_.end(), "placement_book: unknown request {}", id);
  return it->second.table;
}

}  // namespace helix::planner
