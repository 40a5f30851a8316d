#include "planner/rebalance.hpp"

#include <algorithm>
#include <cmath>

namespace helix::planner {
namespace {

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

// The largest count allowed on one member: the largest integer c with (c - mean) / mean <=
// threshold, evaluated the way kv_imbalance() evaluates it, and at least ceil(mean).
std::int64_t member_cap(std::int64_t total, std::int64_t kvp, double threshold) {
  const double mean = static_cast<double>(total) / static_cast<double>(kvp);
  const auto within = [&](std::int64_t c) {
    return (static_cast<double>(c) - mean) / mean <= threshold;
  };
  const double bound = mean * (1.0 + threshold);
  // No member can hold more than every block: a cap of `total` means nothing moves.
  if (!(bound < static_cast<double>(total))) return total;
  auto cap = static_cast<std::int64_t>(std::floor(bound));
  while (cap < total && within(cap + 1)) ++cap;
  while (cap > 0 && !within(cap)) --cap;
  const std::int64_t ceil_mean = (total + kvp - 1) / kvp;
  return std::max(cap, ceil_mean);
}

// One request's blocks as the greedy loop sees them.
struct request_state {
  std::uint64_t id = 0;
  std::vector<std::int64_t> on_member;             // [kvp] blocks held on each member
  std::vector<std::vector<std::int64_t>> movable;  // [kvp] movable block indices, ascending
  std::vector<std::size_t> next;                   // [kvp] first movable index not yet moved
  [[nodiscard]] std::int64_t movable_left(std::int64_t j) const {
    return static_cast<std::int64_t>(movable[sz(j)].size() - next[sz(j)]);
  }
};

}  // namespace

expected<std::vector<planned_move>> plan_rebalance(std::int64_t kvp,
                                                   std::span<const rebalance_request> requests,
                                                   const rebalance_options& o) {
  if (kvp < 1) return invalid_argument("plan_rebalance: kvp {} < 1", kvp);
  if (!std::isfinite(o.threshold) || o.threshold < 0.0) {
    return invalid_argument("plan_rebalance: threshold {} must be finite and >= 0", o.threshold);
  }
  if (o.min_blocks_per_rank < 0 || o.max_moves < 0) {
    return invalid_argument("plan_rebalance: min_blocks_per_rank {} and max_moves {} must be >= 0",
                            o.min_blocks_per_rank, o.max_moves);
  }
  std::vector<request_state> reqs;
  reqs.reserve(requests.size());
  std::vector<std::int64_t> count(sz(kvp), 0);    // blocks per member
  std::vector<std::int64_t> movable(sz(kvp), 0);  // movable blocks per member
  std::int64_t total = 0;
  for (const rebalance_request& r : requests) {
    if (r.table == nullptr) {
      return invalid_argument("plan_rebalance: request {} has no table", r.request_id);
    }
    request_state s;
    s.id = r.request_id;
    s.on_member.assign(sz(kvp), 0);
    s.movable.resize(sz(kvp));
    s.next.assign(sz(kvp), 0);
    const std::span<const kv_block_ref> blocks = r.table->blocks();
    // The open block (partially filled last block) keeps receiving appends: it stays.
    const std::size_t num_movable = r.table->needs_block() ? blocks.size() : blocks.size() - 1;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const std::int64_t j = blocks[i].rank;
      if (j < 0 || j >= kvp) {
        return invalid_argument("plan_rebalance: request {} block {} on member {} outside [0, {})",
                                r.request_id, i, j, kvp);
      }
      ++s.on_member[sz(j)];
      ++count[sz(j)];
      ++total;
      if (i < num_movable) {
        s.movable[sz(j)].push_back(static_cast<std::int64_t>(i));
        ++movable[sz(j)];
      }
    }
    reqs.push_back(std::move(s));
  }
  std::sort(reqs.begin(), reqs.end(),
            [](const request_state& a, const request_state& b) { return a.id < b.id; });
  for (std::size_t i = 1; i < reqs.size(); ++i) {
    if (reqs[i].id == reqs[i - 1].id) {
      return invalid_argument("plan_rebalance: request {} appears twice", reqs[i].id);
    }
  }

  std::vector<planned_move> moves;
  // Too lightly loaded (mean below min_blocks_per_rank, an integer: floor(mean) compares the
  // same) or empty: nothing to do.
  if (total == 0 || total / kvp < o.min_blocks_per_rank) return moves;
  const std::int64_t cap = member_cap(total, kvp, o.threshold);
  while (static_cast<std::int64_t>(moves.size()) < o.max_moves) {
    std::int64_t src = -1;
    for (std::int64_t j = 0; j < kvp; ++j) {
      if (count[sz(j)] > cap && movable[sz(j)] > 0 && (src < 0 || count[sz(j)] > count[sz(src)])) {
        src = j;
      }
    }
    if (src < 0) break;
    std::int64_t dst = 0;
    for (std::int64_t j = 1; j < kvp; ++j) {
      if (count[sz(j)] < count[sz(dst)]) dst = j;
    }
    // K * cap >= total, so a member above cap leaves another below it.
    HELIX_CHECK(count[sz(dst)] < cap, "plan_rebalance: no member below cap {}", cap);
    request_state* best = nullptr;
    for (request_state& r : reqs) {
      if (r.movable_left(src) == 0) continue;
      if (best == nullptr || r.on_member[sz(src)] - r.on_member[sz(dst)] >
                                 best->on_member[sz(src)] - best->on_member[sz(dst)]) {
        best = &r;
      }
    }
    HELIX_CHECK(best != nullptr, "plan_rebalance: member {} has no movable block", src);
    const std::int64_t block_idx = best->movable[sz(src)][best->next[sz(src)]++];
    --best->on_member[sz(src)];
    ++best->on_member[sz(dst)];
    --count[sz(src)];
    ++count[sz(dst)];
    --movable[sz(src)];
    moves.push_back({best->id, block_idx, src, dst});
  }
  return moves;
}

expected<std::vector<planned_move>> plan_rebalance(const placement_book& book,
                                                   const rebalance_options& o) {
  std::vector<rebalance_request> requests;
  for (const std::uint64_t id : book.live_ids()) requests.push_back({id, &book.table(id)});
  return plan_rebalance(book.kvp(), requests, o);
}

}  // namespace helix::planner
