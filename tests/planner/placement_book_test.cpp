// The engine's placement record: offsets chosen at join spread newcomers, plans follow the rule
// block by block, plan() changes nothing until commit(), and bad calls are clear errors.
#include "planner/placement_book.hpp"

#include <set>

#include <gtest/gtest.h>

#include "planner/kv_placement.hpp"

namespace helix::planner {
namespace {

layout helix_layout(std::int64_t kvp, std::int64_t tpa) {
  layout l;
  l.kvp = kvp;
  l.tpa = tpa;
  l.tpf = kvp * tpa;
  l.num_ranks = kvp * tpa;
  return l;
}

TEST(PlacementBook, JoinsInOneStepGetDistinctOffsets) {
  placement_book book(helix_layout(4, 2), 16);
  std::set<std::int64_t> offsets;
  for (std::uint64_t id = 1; id <= 4; ++id) {
    ASSERT_TRUE(book.join(id).ok());
    std::vector<std::int64_t> owners;
    ASSERT_TRUE(book.plan(id, 1, owners).ok());
    ASSERT_TRUE(book.commit(id, 1).ok());
    offsets.insert(book.offset(id));
  }
  EXPECT_EQ(offsets.size(), 4u);
}

TEST(PlacementBook, PlansFollowTheRuleAndCommitRecords) {
  placement_book book(helix_layout(4, 1), 16);
  ASSERT_TRUE(book.join(7).ok());
  const std::int64_t off = book.offset(7);
  std::vector<std::int64_t> owners;
  ASSERT_TRUE(book.plan(7, 40, owners).ok());  // 3 blocks: 16 + 16 + 8
  ASSERT_EQ(owners.size(), 3u);
  for (std::int64_t b = 0; b < 3; ++b) EXPECT_EQ(owners[b], kv_block_owner(off, b, 4));
  // plan() records nothing: the same question gets the same answer.
  std::vector<std::int64_t> again;
  ASSERT_TRUE(book.plan(7, 40, again).ok());
  EXPECT_EQ(again, owners);
  EXPECT_EQ(book.table(7).num_tokens(), 0);

  ASSERT_TRUE(book.commit(7, 40).ok());
  EXPECT_EQ(book.table(7).num_tokens(), 40);
  ASSERT_EQ(book.table(7).blocks().size(), 3u);
  EXPECT_EQ(book.table(7).blocks()[2].rank, owners[2]);
  owners.clear();
  ASSERT_TRUE(book.plan(7, 8, owners).ok());  // fills the open block: nothing new
  EXPECT_TRUE(owners.empty());
  ASSERT_TRUE(book.plan(7, 9, owners).ok());  // one more token opens block 3
  ASSERT_EQ(owners.size(), 1u);
  EXPECT_EQ(owners[0], kv_block_owner(off, 3, 4));
  book.tick();
  EXPECT_EQ(book.step(), 1);
}

TEST(PlacementBook, BadCallsAreErrors) {
  placement_book book(helix_layout(2, 2), 16);
  std::vector<std::int64_t> owners;
  EXPECT_EQ(book.plan(1, 1, owners).code(), errc::not_found);
  EXPECT_EQ(book.commit(1, 1).code(), errc::not_found);
  EXPECT_EQ(book.leave(1).code(), errc::not_found);
  ASSERT_TRUE(book.join(1).ok());
  EXPECT_EQ(book.join(1).code(), errc::invalid_argument);
  EXPECT_EQ(book.plan(1, -1, owners).code(), errc::invalid_argument);
  ASSERT_TRUE(book.leave(1).ok());
  EXPECT_FALSE(book.contains(1));
}

}  // namespace
}  // namespace helix::planner
