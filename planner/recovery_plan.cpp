// Which KV blocks survive a change of layout after a failure; see recovery_plan.hpp.
#include "planner/recovery_plan.hpp"

#include <algorithm>

#include "planner/kv_placement.hpp"

namespace helix::planner {

std::vector<std::int64_t> order_survivors(const layout& before, const layout& after,
                                          std::span<const std::int64_t> alive) {
  std::vector<std::int64_t> left(alive.begin(), alive.end());
  std::sort(left.begin(), left.end());
  const auto valid = [&](std::int64_t r) { return r >= 0 && r < before.num_ranks; };
  std::vector<std::int64_t> out(static_cast<std::size_t>(after.num_ranks), -1);
  // Whole members first (same TPA size, enough members for every rank): an old member whose
  // holder survived in every column moves, column for column, onto the next free new member.
  if (before.tpa == after.tpa && static_cast<std::int64_t>(left.size()) >= after.num_ranks &&
      std::all_of(left.begin(), left.end(), valid)) {
    std::int64_t next = 0;
    for (std::int64_t k = 0; k < before.kvp && next < after.kvp; ++k) {
      bool whole = true;
      for (std::int64_t t = 0; t < before.tpa && whole; ++t) {
        whole = std::binary_search(left.begin(), left.end(), before.attention_rank(t, k));
      }
      if (!whole) continue;
      for (std::int64_t t = 0; t < before.tpa; ++t) {
        const std::int64_t r = before.attention_rank(t, k);
        out[static_cast<std::size_t>(after.attention_rank(t, next))] = r;
        left.erase(std::find(left.begin(), left.end(), r));
      }
      ++next;
    }
  }
  // The rest: new rank i takes an alive old rank of its own TPA column (the lowest), else the
  // lowest left.
  for (std::int64_t i = 0; i < after.num_ranks && !left.empty(); ++i) {
    if (out[static_cast<std::size_t>(i)] >= 0) continue;
    const std::int64_t column = after.attention_coords(i).tpa_idx;
    auto pick = std::find_if(left.begin(), left.end(), [&](std::int64_t r) {
      return before.tpa == after.tpa && valid(r) && before.attention_coords(r).tpa_idx == column;
    });
    if (pick == left.end()) pick = left.begin();
    out[static_cast<std::size_t>(i)] = *pick;
    left.erase(pick);
  }
  // Survivors are a prefix of the ranks (standbys take the rest).
  while (!out.empty() && out.back() < 0) out.pop_back();
  return out;
}

expected<std::vector<std::int64_t>> kept_members(const layout& before, const layout& after,
                                                 std::span<const std::int64_t> survivors) {
  if (static_cast<std::int64_t>(survivors.size()) > after.num_ranks) {
    return invalid_argument("kept_members: {} survivors for {} ranks", survivors.size(),
                            after.num_ranks);
  }
  std::vector<std::int64_t> new_rank(static_cast<std::size_t>(before.num_ranks), -1);
  for (std::size_t i = 0; i < survivors.size(); ++i) {
    const std::int64_t r = survivors[i];
    if (r == -1) continue;  // a fresh member takes new rank i
    if (r < 0 || r >= before.num_ranks) {
      return invalid_argument("kept_members: survivor {} outside the {} ranks of {}", r,
                              before.num_ranks, before.to_string());
    }
    new_rank[static_cast<std::size_t>(r)] = static_cast<std::int64_t>(i);
  }
  std::vector<std::int64_t> kept(static_cast<std::size_t>(before.kvp), -1);
  if (before.tpa != after.tpa) return kept;
  for (std::int64_t k = 0; k < before.kvp; ++k) {
    std::int64_t to = -1;
    bool ok = true;
    for (std::int64_t t = 0; t < before.tpa && ok; ++t) {
      const std::int64_t now = new_rank[static_cast<std::size_t>(before.attention_rank(t, k))];
      if (now < 0) {
        ok = false;
        break;
      }
      const attention_coord c = after.attention_coords(now);
      ok = c.tpa_idx == t && (to < 0 || to == c.kvp_idx);
      to = c.kvp_idx;
    }
    if (ok) kept[static_cast<std::size_t>(k)] = to;
  }
  return kept;
}

std::int64_t recovered_request::lost_blocks() const {
  std::int64_t n = 0;
  for (std::size_t b = 0; b < kept_kvp.size(); ++b) {
    n += kept_kvp[b] < 0 && (b >= donor.size() || donor[b] < 0) ? 1 : 0;
  }
  return n;
}

std::int64_t recovered_request::donated_blocks() const {
  return static_cast<std::int64_t>(
      std::count_if(donor.begin(), donor.end(), [](std::int64_t d) { return d >= 0; }));
}

std::vector<recovered_request> plan_recovery(const placement_book& book, const layout& after,
                                             std::span<const std::int64_t> kept,
                                             std::span<const std::int64_t> donated) {
  std::vector<recovered_request> out;
  for (const std::uint64_t id : book.live_ids()) {
    const block_table& t = book.table(id);
    recovered_request r;
    r.id = id;
    r.offset = book.offset(id) % after.kvp;
    r.num_tokens = t.num_tokens();
    const auto blocks = t.blocks();
    // Kept blocks stay; each lost one goes to the member holding the fewest of the request's
    // blocks so far (ties: the placement rule's owner first, then the members after it).
    std::vector<std::int64_t> held(static_cast<std::size_t>(after.kvp), 0);
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      const std::int64_t old = blocks[b].rank;
      const std::int64_t to = old >= 0 && old < static_cast<std::int64_t>(kept.size())
                                  ? kept[static_cast<std::size_t>(old)]
                                  : -1;
      r.kept_kvp.push_back(to >= 0 ? old : -1);
      r.donor.push_back(to < 0 && old >= 0 && old < static_cast<std::int64_t>(donated.size())
                            ? donated[static_cast<std::size_t>(old)]
                            : -1);
      r.owner_kvp.push_back(to);
      if (to >= 0) ++held[static_cast<std::size_t>(to)];
    }
    // Lost blocks first, then donated ones: each kind spread on its own (their work differs:
    // rebuilding and receiving), the totals even.
    for (const bool donated_pass : {false, true}) {
      for (std::size_t b = 0; b < blocks.size(); ++b) {
        if (r.owner_kvp[b] >= 0 || (r.donor[b] >= 0) != donated_pass) continue;
        const std::int64_t rule = kv_block_owner(r.offset, static_cast<std::int64_t>(b), after.kvp);
        std::int64_t best = rule;
        for (std::int64_t i = 1; i < after.kvp; ++i) {
          const std::int64_t m = (rule + i) % after.kvp;
          if (held[static_cast<std::size_t>(m)] < held[static_cast<std::size_t>(best)]) best = m;
        }
        r.owner_kvp[b] = best;
        ++held[static_cast<std::size_t>(best)];
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

expected<placement_book> recovered_book(const layout& after, std::int64_t block_tokens,
                                        std::span<const recovered_request> requests,
                                        std::int64_t step) {
  placement_book book(after, block_tokens);
  book.set_step(step);
  for (const recovered_request& r : requests) {
    block_table t(block_tokens);
    for (std::size_t b = 0; b < r.owner_kvp.size(); ++b) {
      HELIX_RETURN_IF_ERROR(t.open_block(static_cast<std::int32_t>(r.owner_kvp[b]), 0));
      HELIX_RETURN_IF_ERROR(t.append_tokens(
          std::min(block_tokens, r.num_tokens - static_cast<std::int64_t>(b) * block_tokens)));
    }
    HELIX_RETURN_IF_ERROR(book.restore(r.id, r.offset, std::move(t)));
  }
  return book;
}

}  // namespace helix::planner
