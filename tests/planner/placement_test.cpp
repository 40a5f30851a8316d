// KV placement and staggering (planner/kv_placement.hpp): the rule, the join offset, chunk plans
// and the imbalance metric, driven through a small deterministic decode simulation.
#include "planner/kv_placement.hpp"

#include <algorithm>
#include <vector>

#include <gtest/gtest.h>

namespace helix::planner {
namespace {

layout parsed(const char* text) {
  auto l = layout::parse(text);
  EXPECT_TRUE(l.has_value()) << text;
  return *l;
}

std::int64_t spread(const std::vector<std::int64_t>& v) {
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return *hi - *lo;
}

// Per-member block counts of one table, indexed by kvp_idx.
std::vector<std::int64_t> member_counts(const layout& l, const block_table& t) {
  std::vector<std::int64_t> c(static_cast<std::size_t>(l.kvp), 0);
  for (const auto& b : t.blocks())
    ++c[static_cast<std::size_t>(l.attention_coords(b.rank).kvp_idx)];
  return c;
}

// A column of live requests, stepped in decode lockstep (one token per live request per step).
// The engine's role in miniature: it owns the tables and the offsets and applies the plans.
struct column_sim {
  layout l;
  std::int64_t tpa_idx = 0;
  std::int64_t block_tokens = 16;
  std::vector<block_table> tables;
  std::vector<std::int64_t> offsets;
  std::vector<std::int64_t> remaining;  // tokens left to append
  std::int32_t next_slot = 0;

  std::vector<request_placement> live() const {
    std::vector<request_placement> out;
    for (std::size_t i = 0; i < tables.size(); ++i) {
      if (remaining[i] > 0) out.push_back({offsets[i], &tables[i]});
    }
    return out;
  }

  void join(std::int64_t step, std::int64_t length) {
    const auto lv = live();
    auto load = measure_column_load(l, lv);
    ASSERT_TRUE(load.has_value()) << load.error().to_string();
    auto off = choose_join_offset({.step = step,
                                   .kvp = l.kvp,
                                   .first_block_idx = 0,
                                   .appenders = load->appenders,
                                   .stored_blocks = load->stored_blocks});
    ASSERT_TRUE(off.has_value()) << off.error().to_string();
    // The newcomer's first block goes to a member with the fewest appenders.
    EXPECT_EQ(load->appenders[static_cast<std::size_t>(*off)],
              *std::min_element(load->appenders.begin(), load->appenders.end()));
    tables.emplace_back(block_tokens);
    offsets.push_back(*off);
    remaining.push_back(length);
  }

  void apply(block_table& t, std::int64_t offset, std::int64_t n) {
    auto plan = plan_append(l, tpa_idx, offset, t, n);
    ASSERT_TRUE(plan.has_value()) << plan.error().to_string();
    for (const planned_block& p : *plan) {
      if (p.opens_block) {
        ASSERT_TRUE(t.open_block(static_cast<std::int32_t>(p.rank), next_slot++).ok());
      }
      ASSERT_EQ(p.first_pos, t.next_pos());
      ASSERT_TRUE(t.append_tokens(p.num_tokens).ok());
      ASSERT_EQ(t.last().rank, p.rank);
    }
  }

  // Appenders of this step, per member (before appending).
  std::vector<std::int64_t> step_appenders() const {
    auto load = measure_column_load(l, live());
    EXPECT_TRUE(load.has_value());
    return load->appenders;
  }

  void step() {
    for (std::size_t i = 0; i < tables.size(); ++i) {
      if (remaining[i] == 0) continue;
      apply(tables[i], offsets[i], 1);
      --remaining[i];
    }
  }

  std::vector<std::int64_t> live_totals() const {
    std::vector<std::int64_t> c(static_cast<std::size_t>(l.kvp), 0);
    for (std::size_t i = 0; i < tables.size(); ++i) {
      if (remaining[i] == 0) continue;
      const auto m = member_counts(l, tables[i]);
      for (std::size_t j = 0; j < c.size(); ++j) c[j] += m[j];
    }
    return c;
  }
};

TEST(KvPlacement, RuleIsOffsetPlusBlockModKvp) {
  EXPECT_EQ(kv_block_owner(0, 0, 4), 0);
  EXPECT_EQ(kv_block_owner(3, 1, 4), 0);
  EXPECT_EQ(kv_block_owner(2, 7, 4), 1);
  EXPECT_EQ(kv_block_owner(0, 123, 1), 0);
  for (std::int64_t kvp : {1, 2, 3, 4, 8}) {
    for (std::int64_t off = 0; off < kvp; ++off) {
      for (std::int64_t start = 0; start < 2 * kvp; ++start) {
        std::vector<int> seen(static_cast<std::size_t>(kvp), 0);
        for (std::int64_t b = start; b < start + kvp; ++b)
          ++seen[static_cast<std::size_t>(kv_block_owner(off, b, kvp))];
        for (int s : seen) EXPECT_EQ(s, 1);  // any KVP consecutive blocks hit every member once
      }
    }
  }
}

TEST(KvPlacement, SingleRequestCyclesAndStaysWithinOneBlock) {
  column_sim sim{.l = parsed("helix:kvp=4,tpa=2"), .tpa_idx = 1, .block_tokens = 4};
  sim.join(/*step=*/5, /*length=*/200);
  ASSERT_EQ(sim.offsets[0], 5 % 4);  // idle column: the step clock's slot
  for (int s = 0; s < 200; ++s) {
    sim.step();
    EXPECT_LE(spread(member_counts(sim.l, sim.tables[0])), 1) << "step " << s;
  }
  const auto blocks = sim.tables[0].blocks();
  ASSERT_EQ(blocks.size(), 50u);
  for (std::size_t b = 0; b < blocks.size(); ++b) {
    // Column 1 = ranks 4..7; consecutive blocks cycle through all of them.
    EXPECT_EQ(blocks[b].rank, 4 + static_cast<std::int32_t>((1 + b) % 4));
    EXPECT_EQ(blocks[b].first_pos, static_cast<std::int64_t>(b) * 4);
  }
}

TEST(KvPlacement, AlignedJoinsKeepEveryStepsAppendsWithinOne) {
  // B requests joining at different block-boundary steps, equal lengths, decode lockstep.
  for (std::int64_t b : {2, 3, 4, 6, 9}) {
    column_sim sim{.l = parsed("helix:kvp=4,tpa=1,tpf=4,ep=1"), .block_tokens = 8};
    const std::int64_t length = 8 * 25;
    for (std::int64_t step = 0; step < 8 * 45; ++step) {
      if (step % 8 == 0 && step / 8 < b * 2 && step / 8 % 2 == 0) sim.join(step, length);
      const auto app = sim.step_appenders();
      EXPECT_LE(spread(app), 1) << "B=" << b << " step " << step;
      sim.step();
      for (const auto& t : sim.tables) EXPECT_LE(spread(member_counts(sim.l, t)), 1);
    }
  }
}

TEST(KvPlacement, SameStepJoinsOfEqualLengthStayWithinOneBlockTotal) {
  // Requests joining together get distinct consecutive offsets (appenders first): their appends
  // stay within 1 per member; with B a multiple of KVP every member starts the same number of
  // equal arcs, so the totals stay within 1 too; otherwise they are bounded by min(B, KVP).
  for (std::int64_t kvp : {2, 4, 8}) {
    for (std::int64_t b : {1, 2, 3, 5, 8, 11, 16}) {
      column_sim sim{.l = parsed(kvp == 2   ? "helix:kvp=2,tpa=1"
                                 : kvp == 4 ? "helix:kvp=4,tpa=1"
                                            : "helix:kvp=8,tpa=1"),
                     .block_tokens = 3};
      for (std::int64_t i = 0; i < b; ++i) sim.join(/*step=*/7, /*length=*/100);
      for (int s = 0; s < 100; ++s) {
        EXPECT_LE(spread(sim.step_appenders()), 1) << "B=" << b << " kvp=" << kvp << " step " << s;
        sim.step();
        const std::int64_t limit = b % kvp == 0 ? 1 : std::min(b, kvp);
        EXPECT_LE(spread(sim.live_totals()), limit) << "B=" << b << " kvp=" << kvp << " step " << s;
      }
    }
  }
}

TEST(KvPlacement, StaggeredJoinsStayBoundedAndDeterministic) {
  // Joins mid-block at arbitrary steps: every request stays within 1 of itself; the column's
  // totals over live requests never differ by more than the number of live requests.
  auto run = [] {
    column_sim sim{.l = parsed("helix:kvp=4,tpa=2"), .tpa_idx = 0, .block_tokens = 5};
    const std::vector<std::int64_t> joins = {0, 3, 4, 11, 17, 18, 40, 41, 77};
    for (std::int64_t step = 0; step < 300; ++step) {
      for (std::int64_t j : joins) {
        if (j == step) sim.join(step, 120);
      }
      sim.step();
      std::int64_t live = 0;
      for (std::int64_t r : sim.remaining) live += r > 0 ? 1 : 0;
      EXPECT_LE(spread(sim.live_totals()), std::max<std::int64_t>(live, 1));
      for (const auto& t : sim.tables) EXPECT_LE(spread(member_counts(sim.l, t)), 1);
    }
    return sim;
  };
  const column_sim a = run();
  const column_sim b = run();
  ASSERT_EQ(a.tables.size(), b.tables.size());
  EXPECT_EQ(a.offsets, b.offsets);
  for (std::size_t i = 0; i < a.tables.size(); ++i) {
    const auto x = a.tables[i].blocks();
    const auto y = b.tables[i].blocks();
    EXPECT_TRUE(std::equal(x.begin(), x.end(), y.begin(), y.end()));
  }
}

TEST(KvPlacement, ShortContextsLeaveMembersEmpty) {
  const layout l = parsed("helix:kvp=8,tpa=1");
  block_table t(16);
  column_sim sim{.l = l, .block_tokens = 16};
  sim.apply(t, /*offset=*/6, /*n=*/20);  // 2 blocks < KVP
  EXPECT_EQ(member_counts(l, t), (std::vector<std::int64_t>{0, 0, 0, 0, 0, 0, 1, 1}));
  const std::vector<block_table> tables = {t};
  const auto group = l.kvp_group(0);
  // counts {0,0,0,0,0,0,1,1}: mean 0.25, max 1 -> 3.
  EXPECT_DOUBLE_EQ(kv_imbalance(tables, group), 3.0);
}

TEST(KvPlacement, PrefillChunkFillsOpenBlockThenFollowsTheRule) {
  const layout l = parsed("helix:kvp=4,tpa=2");
  block_table t(16);
  ASSERT_TRUE(t.open_block(/*rank=*/5, /*slot=*/0).ok());  // migrated: not where the rule says
  ASSERT_TRUE(t.append_tokens(10).ok());
  auto plan = plan_append(l, /*tpa_idx=*/1, /*request_offset=*/2, t, /*num_tokens=*/40);
  ASSERT_TRUE(plan.has_value()) << plan.error().to_string();
  const std::vector<planned_block> want = {
      {.block_idx = 0,
       .kvp_idx = 1,
       .rank = 5,
       .first_pos = 10,
       .num_tokens = 6,
       .opens_block = false},
      {.block_idx = 1,
       .kvp_idx = 3,
       .rank = 7,
       .first_pos = 16,
       .num_tokens = 16,
       .opens_block = true},
      {.block_idx = 2,
       .kvp_idx = 0,
       .rank = 4,
       .first_pos = 32,
       .num_tokens = 16,
       .opens_block = true},
      {.block_idx = 3,
       .kvp_idx = 1,
       .rank = 5,
       .first_pos = 48,
       .num_tokens = 2,
       .opens_block = true},
  };
  EXPECT_EQ(*plan, want);
  auto none = plan_append(l, 1, 2, t, 0);
  ASSERT_TRUE(none.has_value());
  EXPECT_TRUE(none->empty());
  // A decode step is a chunk of one token: same rule.
  block_table full(4);
  ASSERT_TRUE(full.open_block(4, 0).ok());
  ASSERT_TRUE(full.append_tokens(4).ok());
  auto one = plan_append(l, 1, 3, full, 1);
  ASSERT_TRUE(one.has_value());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].kvp_idx, kv_block_owner(3, 1, 4));
  EXPECT_TRUE((*one)[0].opens_block);
}

TEST(KvPlacement, JoinOffsetRules) {
  const std::vector<std::int64_t> zeros = {0, 0, 0, 0};
  // Idle: the step clock rotates the start.
  for (std::int64_t step = 0; step < 9; ++step) {
    auto off =
        choose_join_offset({.step = step, .kvp = 4, .appenders = zeros, .stored_blocks = zeros});
    ASSERT_TRUE(off.has_value());
    EXPECT_EQ(*off, step % 4);
  }
  // Appenders first, then stored blocks, then the clock.
  const std::vector<std::int64_t> app = {1, 0, 1, 0};
  const std::vector<std::int64_t> stored = {0, 5, 0, 3};
  EXPECT_EQ(*choose_join_offset({.step = 0, .kvp = 4, .appenders = app, .stored_blocks = stored}),
            3);
  // A request that already has blocks (re-join): its next block lands on the chosen member.
  auto off = choose_join_offset(
      {.step = 0, .kvp = 4, .first_block_idx = 6, .appenders = app, .stored_blocks = stored});
  ASSERT_TRUE(off.has_value());
  EXPECT_EQ(kv_block_owner(*off, 6, 4), 3);

  auto bad_kvp = choose_join_offset({.step = 0, .kvp = 0});
  ASSERT_FALSE(bad_kvp.has_value());
  EXPECT_EQ(bad_kvp.error().code(), errc::invalid_argument);
  auto bad_size =
      choose_join_offset({.step = 0, .kvp = 3, .appenders = zeros, .stored_blocks = zeros});
  ASSERT_FALSE(bad_size.has_value());
  EXPECT_NE(bad_size.error().message().find("must be [3]"), std::string::npos);
  const std::vector<std::int64_t> negative = {0, -1, 0, 0};
  EXPECT_FALSE(
      choose_join_offset({.kvp = 4, .appenders = negative, .stored_blocks = zeros}).has_value());

  const layout l = parsed("helix:kvp=4,tpa=2");
  block_table t(16);
  EXPECT_FALSE(plan_append(l, 2, 0, t, 1).has_value());   // tpa_idx out of range
  EXPECT_FALSE(plan_append(l, 0, 4, t, 1).has_value());   // offset out of range
  EXPECT_FALSE(plan_append(l, 0, 0, t, -1).has_value());  // negative tokens
  const std::vector<request_placement> null_table = {{0, nullptr}};
  EXPECT_FALSE(measure_column_load(l, null_table).has_value());
}

TEST(KvPlacement, ImbalanceMetric) {
  std::vector<block_table> tables(2, block_table(1));
  const std::vector<std::int64_t> ranks = {0, 1};
  EXPECT_DOUBLE_EQ(kv_imbalance(tables, ranks), 0.0);  // no blocks
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(tables[0].open_block(0, i).ok());
    ASSERT_TRUE(tables[0].append_tokens(1).ok());
  }
  ASSERT_TRUE(tables[1].open_block(1, 0).ok());
  ASSERT_TRUE(tables[1].append_tokens(1).ok());
  EXPECT_DOUBLE_EQ(kv_imbalance(tables, ranks), 0.5);  // {3, 1}: (3 - 2) / 2
  EXPECT_EQ(blocks_per_rank(tables, 2), (std::vector<std::int64_t>{3, 1}));
  ASSERT_TRUE(tables[1].open_block(1, 1).ok());
  ASSERT_TRUE(tables[1].append_tokens(1).ok());
  ASSERT_TRUE(tables[1].open_block(1, 2).ok());
  ASSERT_TRUE(tables[1].append_tokens(1).ok());
  EXPECT_DOUBLE_EQ(kv_imbalance(tables, ranks), 0.0);
  const std::vector<std::int64_t> one = {0};
  EXPECT_DOUBLE_EQ(kv_imbalance(tables, one), 0.0);
}

}  // namespace
}  // namespace helix::planner
