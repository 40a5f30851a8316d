// KV rebalancing (planner/rebalance.hpp): hand-built skews and requests leaving the engine's record
// end within the threshold after the moves, with the fewest moves; nothing moves below
// min_blocks_per_rank; open blocks stay; the same input gives the same moves; bad input is an
// error; placement_book::relocate records moves without changing where later blocks go.
#include "planner/rebalance.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include <gtest/gtest.h>

#include "planner/kv_placement.hpp"

namespace helix::planner {
namespace {

constexpr std::int64_t block_tokens = 16;

std::size_t sz(std::int64_t n) {
  return static_cast<std::size_t>(n);
}

layout helix_layout(std::int64_t kvp, std::int64_t tpa) {
  layout l;
  l.kvp = kvp;
  l.tpa = tpa;
  l.tpf = kvp * tpa;
  l.num_ranks = kvp * tpa;
  return l;
}

// A table whose block i lives on members[i]; every block full but the last, which holds
// `last_tokens` tokens.
block_table make_table(const std::vector<std::int32_t>& members,
                       std::int64_t last_tokens = block_tokens) {
  block_table t(block_tokens);
  for (std::size_t i = 0; i < members.size(); ++i) {
    EXPECT_TRUE(t.open_block(members[i], 0).ok());
    EXPECT_TRUE(t.append_tokens(i + 1 == members.size() ? last_tokens : block_tokens).ok());
  }
  return t;
}

// `n` full blocks, all on member `j`.
std::vector<std::int32_t> all_on(std::int32_t j, std::int64_t n) {
  return std::vector<std::int32_t>(sz(n), j);
}

// Blocks per member of `tables` (ranks are kvp indices).
std::vector<std::int64_t> counts_of(const std::vector<block_table>& tables, std::int64_t kvp) {
  return blocks_per_rank(tables, kvp);
}

double imbalance_of(const std::vector<block_table>& tables, std::int64_t kvp) {
  std::vector<std::int64_t> members;
  for (std::int64_t j = 0; j < kvp; ++j) members.push_back(j);
  return kv_imbalance(tables, members);
}

// The fewest moves any plan needs to bring every member to at most the target maximum: the
// largest count within the threshold (by kv_imbalance's arithmetic), at least ceil(mean).
std::int64_t minimal_moves(const std::vector<std::int64_t>& counts, double threshold) {
  std::int64_t total = 0;
  for (std::int64_t c : counts) total += c;
  const auto kvp = static_cast<std::int64_t>(counts.size());
  const double mean = static_cast<double>(total) / static_cast<double>(kvp);
  std::int64_t cap = (total + kvp - 1) / kvp;
  for (std::int64_t c = 0; c <= total; ++c) {
    if ((static_cast<double>(c) - mean) / mean <= threshold) cap = std::max(cap, c);
  }
  std::int64_t excess = 0;
  for (std::int64_t c : counts) excess += std::max<std::int64_t>(0, c - cap);
  return excess;
}

std::vector<rebalance_request> view_of(const std::vector<block_table>& tables) {
  std::vector<rebalance_request> v;
  for (std::size_t i = 0; i < tables.size(); ++i) v.push_back({100 + i, &tables[i]});
  return v;
}

// Applies `moves` to tables viewed by view_of(), checking that each move names where the block is
// and that no block moves twice.
void apply_moves(std::vector<block_table>& tables, const std::vector<planned_move>& moves) {
  std::set<std::pair<std::uint64_t, std::int64_t>> seen;
  for (const planned_move& m : moves) {
    ASSERT_GE(m.request_id, 100u);
    const std::size_t r = m.request_id - 100;
    ASSERT_LT(r, tables.size());
    ASSERT_TRUE(seen.insert({m.request_id, m.block_idx}).second) << "block moved twice";
    ASSERT_GE(m.block_idx, 0);
    ASSERT_LT(m.block_idx, static_cast<std::int64_t>(tables[r].blocks().size()));
    EXPECT_EQ(tables[r].blocks()[sz(m.block_idx)].rank, m.from_kvp);
    EXPECT_NE(m.from_kvp, m.to_kvp);
    ASSERT_TRUE(tables[r].relocate(sz(m.block_idx), static_cast<std::int32_t>(m.to_kvp), 0).ok());
  }
}

TEST(Rebalance, HandBuiltSkewEndsWithinThresholdWithFewestMoves) {
  // Member 3 lost most of its blocks (its requests left): counts {100, 100, 100, 20}.
  std::vector<block_table> tables;
  for (std::int32_t j = 0; j < 3; ++j) tables.push_back(make_table(all_on(j, 100)));
  tables.push_back(make_table(all_on(3, 20)));
  const std::int64_t kvp = 4;
  const auto before = counts_of(tables, kvp);
  ASSERT_GT(imbalance_of(tables, kvp), 0.1);
  rebalance_options o;
  auto moves = plan_rebalance(kvp, view_of(tables), o);
  ASSERT_TRUE(moves.has_value()) << moves.error().to_string();
  // mean 80, cap 88: 12 blocks leave each of members 0..2, all for member 3.
  EXPECT_EQ(static_cast<std::int64_t>(moves->size()), minimal_moves(before, o.threshold));
  EXPECT_EQ(moves->size(), 36u);
  for (const planned_move& m : *moves) EXPECT_EQ(m.to_kvp, 3);
  apply_moves(tables, *moves);
  EXPECT_LE(imbalance_of(tables, kvp), 0.1);
  EXPECT_EQ(counts_of(tables, kvp), (std::vector<std::int64_t>{88, 88, 88, 56}));
  // Balanced now: planning again moves nothing.
  auto again = plan_rebalance(kvp, view_of(tables), o);
  ASSERT_TRUE(again.has_value());
  EXPECT_TRUE(again->empty());
}

TEST(Rebalance, SeveralOverloadedMembersAndSeveralDestinations) {
  // Skew over 8 members spread across mixed requests; every request holds blocks on several
  // members. Counts {150, 40, 130, 64, 90, 10, 70, 66}.
  const std::vector<std::int64_t> want = {150, 40, 130, 64, 90, 10, 70, 66};
  std::vector<block_table> tables;
  for (std::int64_t r = 0; r < 5; ++r) {
    std::vector<std::int32_t> members;
    for (std::int32_t j = 0; j < 8; ++j) {
      // Request r holds a fifth of member j's blocks (the remainder on the last request).
      const std::int64_t n = r < 4 ? want[sz(j)] / 5 : want[sz(j)] - 4 * (want[sz(j)] / 5);
      for (std::int64_t i = 0; i < n; ++i) members.push_back(j);
    }
    // Interleave so that blocks of one member are not contiguous in the table.
    std::stable_sort(members.begin(), members.end(),
                     [](std::int32_t a, std::int32_t b) { return (a * 7) % 8 < (b * 7) % 8; });
    tables.push_back(make_table(members));
  }
  const std::int64_t kvp = 8;
  const auto before = counts_of(tables, kvp);
  ASSERT_EQ(before, want);
  rebalance_options o;
  auto moves = plan_rebalance(kvp, view_of(tables), o);
  ASSERT_TRUE(moves.has_value()) << moves.error().to_string();
  EXPECT_EQ(static_cast<std::int64_t>(moves->size()), minimal_moves(before, o.threshold));
  apply_moves(tables, *moves);
  EXPECT_LE(imbalance_of(tables, kvp), o.threshold);
  // Sources only lose, destinations only gain: no member is both.
  std::set<std::int64_t> from;
  std::set<std::int64_t> to;
  for (const planned_move& m : *moves) {
    from.insert(m.from_kvp);
    to.insert(m.to_kvp);
  }
  for (std::int64_t j : from) EXPECT_EQ(to.count(j), 0u) << "member " << j;
}

TEST(Rebalance, RequestsLeavingTheBookAreRebalanced) {
  // Four long requests spread evenly, then 64 one-block requests; the short requests placed on
  // members 1..3 leave, so member 0 keeps the extra blocks.
  const layout l = helix_layout(4, 2);
  placement_book book(l, block_tokens);
  std::uint64_t id = 1;
  for (; id <= 4; ++id) {
    ASSERT_TRUE(book.join(id).ok());
    ASSERT_TRUE(book.commit(id, 64 * block_tokens - 5).ok());  // 64 blocks, the last open
  }
  std::vector<std::uint64_t> shorts;
  for (; id <= 68; ++id) {
    ASSERT_TRUE(book.join(id).ok());
    ASSERT_TRUE(book.commit(id, block_tokens).ok());
    shorts.push_back(id);
    book.tick();
  }
  for (std::uint64_t s : shorts) {
    if (book.table(s).blocks()[0].rank != 0) {
      ASSERT_TRUE(book.leave(s).ok());
    }
  }
  auto tables_of = [&] {
    std::vector<block_table> t;
    for (std::uint64_t r : book.live_ids()) t.push_back(book.table(r));
    return t;
  };
  const auto before = counts_of(tables_of(), 4);
  ASSERT_GT(imbalance_of(tables_of(), 4), 0.1) << before[0] << " " << before[1];
  std::vector<std::pair<std::uint64_t, std::int64_t>> open_blocks;
  for (std::uint64_t r : book.live_ids()) {
    const block_table& t = book.table(r);
    if (!t.needs_block()) {
      open_blocks.emplace_back(r, static_cast<std::int64_t>(t.blocks().size()) - 1);
    }
  }
  ASSERT_EQ(open_blocks.size(), 4u);

  rebalance_options o;
  auto moves = plan_rebalance(book, o);
  ASSERT_TRUE(moves.has_value()) << moves.error().to_string();
  EXPECT_EQ(static_cast<std::int64_t>(moves->size()), minimal_moves(before, o.threshold));
  std::vector<std::int64_t> offsets;
  for (std::uint64_t r = 1; r <= 4; ++r) offsets.push_back(book.offset(r));
  for (const planned_move& m : *moves) {
    for (const auto& ob : open_blocks) {
      EXPECT_FALSE(m.request_id == ob.first && m.block_idx == ob.second) << "open block moved";
    }
    EXPECT_EQ(book.table(m.request_id).blocks()[sz(m.block_idx)].rank, m.from_kvp);
    ASSERT_TRUE(book.relocate(m.request_id, m.block_idx, m.to_kvp).ok());
    EXPECT_EQ(book.table(m.request_id).blocks()[sz(m.block_idx)].rank, m.to_kvp);
  }
  EXPECT_LE(imbalance_of(tables_of(), 4), o.threshold);

  // Appends keep the rule for new blocks: the offsets did not change, and the open block still
  // takes its request's next tokens (plan() opens no block for them).
  for (std::uint64_t r = 1; r <= 4; ++r) {
    EXPECT_EQ(book.offset(r), offsets[r - 1]);
    std::vector<std::int64_t> owners;
    ASSERT_TRUE(book.plan(r, 5, owners).ok());
    EXPECT_TRUE(owners.empty());
    ASSERT_TRUE(book.plan(r, 5 + 2 * block_tokens, owners).ok());
    ASSERT_EQ(owners.size(), 2u);
    EXPECT_EQ(owners[0], kv_block_owner(book.offset(r), 64, 4));
    EXPECT_EQ(owners[1], kv_block_owner(book.offset(r), 65, 4));
  }
}

TEST(Rebalance, NoMovesBelowMinBlocksPerRank) {
  // Same shape as the hand-built skew but ten times smaller: mean 8 < 64.
  std::vector<block_table> tables;
  for (std::int32_t j = 0; j < 3; ++j) tables.push_back(make_table(all_on(j, 10)));
  tables.push_back(make_table(all_on(3, 2)));
  ASSERT_GT(imbalance_of(tables, 4), 0.1);
  rebalance_options o;
  auto moves = plan_rebalance(4, view_of(tables), o);
  ASSERT_TRUE(moves.has_value());
  EXPECT_TRUE(moves->empty());
  // Exactly at the limit it acts (mean 8, min_blocks_per_rank 8); one above it does not.
  o.min_blocks_per_rank = 8;
  moves = plan_rebalance(4, view_of(tables), o);
  ASSERT_TRUE(moves.has_value());
  EXPECT_FALSE(moves->empty());
  o.min_blocks_per_rank = 9;
  moves = plan_rebalance(4, view_of(tables), o);
  ASSERT_TRUE(moves.has_value());
  EXPECT_TRUE(moves->empty());
  // No requests at all, even with no minimum.
  o.min_blocks_per_rank = 0;
  moves = plan_rebalance(4, {}, o);
  ASSERT_TRUE(moves.has_value());
  EXPECT_TRUE(moves->empty());
}

TEST(Rebalance, DeterministicAndIndependentOfRequestOrder) {
  std::vector<block_table> tables;
  tables.push_back(make_table({0, 0, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0}, 3));
  tables.push_back(make_table({0, 1, 0, 0, 0, 0, 2, 0, 0}));
  tables.push_back(make_table({2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}, 9));
  rebalance_options o;
  o.min_blocks_per_rank = 1;
  auto a = plan_rebalance(3, view_of(tables), o);
  auto b = plan_rebalance(3, view_of(tables), o);
  ASSERT_TRUE(a.has_value() && b.has_value());
  ASSERT_FALSE(a->empty());
  EXPECT_EQ(*a, *b);
  auto reversed = view_of(tables);
  std::reverse(reversed.begin(), reversed.end());
  auto c = plan_rebalance(3, reversed, o);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(*a, *c);
  // Each move takes from the request with the most blocks on the source relative to the
  // destination, so the requests' own spreads even out too.
  apply_moves(tables, *a);
  EXPECT_LE(imbalance_of(tables, 3), o.threshold);
}

TEST(Rebalance, OpenBlocksStayWhereTheyAre) {
  // Member 0 holds 40 full blocks and 30 open (partially filled last) blocks of 30 one-block
  // requests; members 1 and 2 hold 10 each. Only the full blocks may move.
  std::vector<block_table> tables;
  tables.push_back(make_table(all_on(0, 40)));
  for (int i = 0; i < 30; ++i) tables.push_back(make_table({0}, 5));
  tables.push_back(make_table(all_on(1, 10)));
  tables.push_back(make_table(all_on(2, 10)));
  rebalance_options o;
  o.min_blocks_per_rank = 0;
  auto moves = plan_rebalance(3, view_of(tables), o);
  ASSERT_TRUE(moves.has_value());
  // mean 30, cap 33: 37 blocks must leave member 0, but only the 40 full ones are movable.
  EXPECT_EQ(moves->size(), 37u);
  for (const planned_move& m : *moves) EXPECT_EQ(m.request_id, 100u) << "open block moved";
  apply_moves(tables, *moves);
  EXPECT_LE(imbalance_of(tables, 3), o.threshold);

  // When the overloaded member holds only open blocks, nothing can move.
  std::vector<block_table> opens;
  for (int i = 0; i < 12; ++i) opens.push_back(make_table({0}, 7));
  opens.push_back(make_table({1}));
  moves = plan_rebalance(2, view_of(opens), o);
  ASSERT_TRUE(moves.has_value());
  EXPECT_TRUE(moves->empty());
  // A full last block is not open: it may move.
  std::vector<block_table> full;
  for (int i = 0; i < 12; ++i) full.push_back(make_table({0}));
  full.push_back(make_table({1}));
  moves = plan_rebalance(2, view_of(full), o);
  ASSERT_TRUE(moves.has_value());
  EXPECT_EQ(static_cast<std::int64_t>(moves->size()),
            minimal_moves(counts_of(full, 2), o.threshold));
}

TEST(Rebalance, ThresholdZeroReachesCeilMean) {
  // 10 blocks over 3 members: the best any placement does is {4, 3, 3}.
  std::vector<block_table> tables = {make_table(all_on(0, 10))};
  rebalance_options o;
  o.threshold = 0.0;
  o.min_blocks_per_rank = 0;
  auto moves = plan_rebalance(3, view_of(tables), o);
  ASSERT_TRUE(moves.has_value());
  EXPECT_EQ(moves->size(), 6u);
  apply_moves(tables, *moves);
  EXPECT_EQ(counts_of(tables, 3), (std::vector<std::int64_t>{4, 3, 3}));
}

TEST(Rebalance, MaxMovesGivesAPrefixThatTheNextCallContinues) {
  std::vector<block_table> tables;
  for (std::int32_t j = 0; j < 3; ++j) tables.push_back(make_table(all_on(j, 100)));
  tables.push_back(make_table(all_on(3, 20)));
  rebalance_options o;
  auto full = plan_rebalance(4, view_of(tables), o);
  ASSERT_TRUE(full.has_value());
  o.max_moves = 10;
  auto first = plan_rebalance(4, view_of(tables), o);
  ASSERT_TRUE(first.has_value());
  ASSERT_EQ(first->size(), 10u);
  EXPECT_TRUE(std::equal(first->begin(), first->end(), full->begin()));
  apply_moves(tables, *first);
  o.max_moves = std::numeric_limits<std::int64_t>::max();
  auto rest = plan_rebalance(4, view_of(tables), o);
  ASSERT_TRUE(rest.has_value());
  EXPECT_EQ(rest->size() + first->size(), full->size());
  apply_moves(tables, *rest);
  EXPECT_LE(imbalance_of(tables, 4), o.threshold);
  o.max_moves = 0;
  auto none = plan_rebalance(4, view_of(tables), o);
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
}

TEST(Rebalance, BadInputIsAnError) {
  std::vector<block_table> tables = {make_table({0, 1})};
  const rebalance_options ok;
  EXPECT_EQ(plan_rebalance(0, view_of(tables), ok).error().code(), errc::invalid_argument);
  for (double t : {-0.1, std::nan(""), std::numeric_limits<double>::infinity()}) {
    rebalance_options o;
    o.threshold = t;
    EXPECT_EQ(plan_rebalance(2, view_of(tables), o).error().code(), errc::invalid_argument) << t;
  }
  rebalance_options neg_min;
  neg_min.min_blocks_per_rank = -1;
  EXPECT_EQ(plan_rebalance(2, view_of(tables), neg_min).error().code(), errc::invalid_argument);
  rebalance_options neg_moves;
  neg_moves.max_moves = -1;
  EXPECT_EQ(plan_rebalance(2, view_of(tables), neg_moves).error().code(), errc::invalid_argument);
  const std::vector<rebalance_request> null_table = {{1, nullptr}};
  EXPECT_EQ(plan_rebalance(2, null_table, ok).error().code(), errc::invalid_argument);
  const std::vector<rebalance_request> twice = {{1, &tables[0]}, {1, &tables[0]}};
  EXPECT_EQ(plan_rebalance(2, twice, ok).error().code(), errc::invalid_argument);
  // Block on member 1 of a one-member column.
  EXPECT_EQ(plan_rebalance(1, view_of(tables), ok).error().code(), errc::invalid_argument);
}

TEST(PlacementBookRelocate, RecordsMovesAndRejectsBadOnes) {
  placement_book book(helix_layout(4, 1), block_tokens);
  ASSERT_TRUE(book.join(3).ok());
  ASSERT_TRUE(book.commit(3, 3 * block_tokens).ok());
  const std::int64_t off = book.offset(3);
  EXPECT_EQ(book.kvp(), 4);
  EXPECT_EQ(book.live_ids(), (std::vector<std::uint64_t>{3}));
  const std::int64_t to = (kv_block_owner(off, 1, 4) + 2) % 4;
  ASSERT_TRUE(book.relocate(3, 1, to).ok());
  EXPECT_EQ(book.table(3).blocks()[1].rank, to);
  EXPECT_EQ(book.table(3).blocks()[1].first_pos, block_tokens);
  EXPECT_EQ(book.table(3).blocks()[0].rank, kv_block_owner(off, 0, 4));
  EXPECT_EQ(book.offset(3), off);
  EXPECT_EQ(book.relocate(4, 0, 0).code(), errc::not_found);
  EXPECT_EQ(book.relocate(3, 3, 0).code(), errc::invalid_argument);
  EXPECT_EQ(book.relocate(3, -1, 0).code(), errc::invalid_argument);
  EXPECT_EQ(book.relocate(3, 0, 4).code(), errc::invalid_argument);
  EXPECT_EQ(book.relocate(3, 0, -1).code(), errc::invalid_argument);
  EXPECT_EQ(book.table(3).blocks()[0].rank, kv_block_owner(off, 0, 4));
  // The next block still follows the rule.
  std::vector<std::int64_t> owners;
  ASSERT_TRUE(book.plan(3, 1, owners).ok());
  ASSERT_EQ(owners.size(), 1u);
  EXPECT_EQ(owners[0], kv_block_owner(off, 3, 4));
}

}  // namespace
}  // namespace helix::planner
