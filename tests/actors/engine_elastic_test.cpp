// Elastic workers (engine::add_workers, engine::drain_worker): workers join and leave a running
// engine at a step boundary; KV blocks move to their owners under the new layout over the data
// plane (not recomputed) and every request's tokens equal the static run's.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "actors/engine.hpp"
#include "core/layout.hpp"
#include "tests/support/model_fixtures.hpp"

namespace helix::actors {
namespace {

engine_config elastic_config(std::int64_t workers, const std::string& layout,
                             const std::string& model = "tiny-llama") {
  engine_config c;
  c.model = model;
  c.num_workers = workers;
  c.layout = layout;
  c.kv_capacity_tokens_per_worker = 4096;
  c.max_batch_tokens = 128;
  c.prefill_chunk_tokens = 16;
  c.block_tokens = 16;
  return c;
}

// A change made once the engine ran `at_step` steps: join (count > 0) or leave (rank).
struct change {
  std::int64_t at_step = 0;
  bool join = true;
  std::int64_t count = 1;
  std::int64_t rank = -1;
  errc expect = errc::ok;
};

struct run_result {
  std::vector<std::vector<std::int32_t>> tokens;  // per request, in submission order
  engine_stats stats;
  std::vector<status> outcomes;  // per change
};

// Holds the engine where a change is due until the changer thread has asked for it: a token
// callback (on the engine's thread, between steps) waits there, so the change lands while the
// requests still run however late the changer thread is scheduled on a loaded machine.
struct change_gate {
  std::mutex mu;
  std::condition_variable cv;
  std::size_t due = 0;    // changes whose step came
  std::size_t asked = 0;  // changes the changer thread is asking for
  bool ended = false;     // every request ended
  bool in_call = false;   // the changer thread is inside add_workers / drain_worker
};

// Greedy and seeded-sampling requests (one over a synthetic context), all submitted at once;
// the changes run from another thread as the steps pass.
run_result serve(engine& eng, const std::vector<change>& changes, int requests = 5,
                 std::int64_t max_tokens = 24) {
  run_result out;
  std::vector<request_handle> handles;
  change_gate gate;
  const auto hold = [&](const token_event&) {
    std::unique_lock lk(gate.mu);
    // Not while a change is being made: it may need the engine's thread to finish.
    if (gate.due >= changes.size() || gate.in_call ||
        eng.stats().steps < changes[gate.due].at_step) {
      return;
    }
    const std::size_t mine = gate.due++;
    gate.cv.notify_all();
    // Bounded: a changer that never asks only loses the hold.
    gate.cv.wait_for(lk, std::chrono::seconds(10), [&] { return gate.asked > mine; });
    lk.unlock();
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // its message reaches the engine
  };
  for (int i = 0; i < requests; ++i) {
    request_options r;
    r.prompt =
        test_support::random_tokens(6 + 9 * i, eng.vocab(), 300 + static_cast<std::uint64_t>(i));
    r.max_tokens = max_tokens;
    if (i % 2 == 1) r.sampling = {0.8f, 30, 0.9f, 11 + static_cast<std::uint64_t>(i)};
    if (i == 4) {
      r.synthetic_context_tokens = 200;
      r.synthetic_seed = 5;
    }
    auto h = changes.empty() ? eng.submit(r) : eng.submit(r, hold);
    EXPECT_TRUE(h.has_value()) << h.error().to_string();
    if (h) handles.push_back(*h);
  }
  std::thread changer([&] {
    for (std::size_t j = 0; j < changes.size(); ++j) {
      const change& c = changes[j];
      {
        // Released by the hold, or by the end of the run when no token came after the step.
        // (Never stats() here: it waits for the engine's thread, which a hold may be keeping.)
        std::unique_lock lk(gate.mu);
        gate.cv.wait_for(lk, std::chrono::seconds(60), [&] { return gate.due > j || gate.ended; });
        gate.asked = j + 1;
        gate.in_call = true;
        gate.cv.notify_all();
      }
      out.outcomes.push_back(c.join ? eng.add_workers(c.count) : eng.drain_worker(c.rank));
      std::lock_guard lk(gate.mu);
      gate.in_call = false;
    }
  });
  for (auto& h : handles) {
    std::vector<std::int32_t> tokens;
    while (auto e = h.stream->next()) {
      if (e->token >= 0) {
        EXPECT_EQ(e->index, static_cast<std::int64_t>(tokens.size())) << "a token came twice";
        tokens.push_back(e->token);
      }
      if (e->last) {
        EXPECT_TRUE(e->error.ok()) << e->error.to_string();
        EXPECT_EQ(e->reason, finish_reason::length);
      }
    }
    out.tokens.push_back(std::move(tokens));
  }
  {
    std::lock_guard lk(gate.mu);
    gate.ended = true;
  }
  gate.cv.notify_all();
  changer.join();
  for (std::size_t i = 0; i < changes.size() && i < out.outcomes.size(); ++i) {
    EXPECT_EQ(out.outcomes[i].code(), changes[i].expect) << out.outcomes[i].to_string();
  }
  out.stats = eng.stats();
  return out;
}

// The epochs of `s` with `reason`.
std::vector<epoch_stats> epochs_of(const engine_stats& s, const std::string& reason) {
  std::vector<epoch_stats> out;
  for (const epoch_stats& e : s.epochs) {
    if (e.reason == reason) out.push_back(e);
  }
  return out;
}

// Runs the workload without changes and with them; the tokens must match. Returns the elastic
// run's stats.
engine_stats expect_same_tokens(std::int64_t workers, const std::string& grid,
                                const std::vector<change>& changes,
                                const std::string& model = "tiny-llama") {
  auto fixed = engine::create(elastic_config(workers, grid, model));
  EXPECT_TRUE(fixed.has_value()) << fixed.error().to_string();
  if (!fixed) return {};
  const run_result want = serve(**fixed, {});
  auto elastic = engine::create(elastic_config(workers, grid, model));
  EXPECT_TRUE(elastic.has_value()) << elastic.error().to_string();
  if (!elastic) return {};
  const run_result got = serve(**elastic, changes);
  EXPECT_EQ(got.tokens, want.tokens) << grid;
  EXPECT_EQ(got.stats.health, engine_health::serving) << got.stats.failure.to_string();
  EXPECT_TRUE(got.stats.recoveries.empty());
  EXPECT_FALSE(got.stats.epochs.empty());
  if (!got.stats.epochs.empty()) {
    EXPECT_EQ(got.stats.epochs.front().reason, "initial");
    if (auto l = layout::parse(grid)) {
      EXPECT_EQ(got.stats.epochs.front().layout_after, l->to_string());
    }
  }
  return got.stats;
}

TEST(EngineElastic, JoinMidDecodeMovesBlocksToTheNewMembers) {
  const engine_stats s = expect_same_tokens(2, "helix:kvp=2,tpa=1", {{.at_step = 12, .count = 2}});
  const auto joins = epochs_of(s, "join");
  ASSERT_EQ(joins.size(), 1u);
  EXPECT_EQ(joins[0].layout_before, "helix:kvp=2,tpa=1,tpf=2,ep=1");
  EXPECT_EQ(joins[0].layout_after, "helix:kvp=4,tpa=1,tpf=4,ep=1");
  EXPECT_EQ(s.layout, joins[0].layout_after);
  EXPECT_GT(joins[0].blocks_moved, 0) << "the new members take blocks over";
  EXPECT_EQ(joins[0].kv_bytes_moved % joins[0].blocks_moved, 0);
  EXPECT_GT(joins[0].kv_bytes_moved, 0);
  EXPECT_EQ(joins[0].blocks_rebuilt, 0) << "nothing is recomputed";
  EXPECT_GT(joins[0].pause_ms, 0.0);
  EXPECT_EQ(s.workers.size(), 4u);
}

TEST(EngineElastic, LeaveMidDecodeHandsTheBlocksOver) {
  const engine_stats s =
      expect_same_tokens(4, "helix:kvp=4,tpa=1", {{.at_step = 10, .join = false}});
  const auto leaves = epochs_of(s, "leave");
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_EQ(leaves[0].layout_before, "helix:kvp=4,tpa=1,tpf=4,ep=1");
  // tiny-llama has no 3-rank helix layout: 2 ranks serve and the third member stands by.
  EXPECT_EQ(leaves[0].layout_after, "helix:kvp=2,tpa=1,tpf=2,ep=1");
  EXPECT_GT(leaves[0].blocks_moved, 0) << "the leaver's blocks move";
  EXPECT_EQ(leaves[0].blocks_rebuilt, 0) << "nothing is recomputed";
  EXPECT_EQ(s.standbys, 1);
}

TEST(EngineElastic, LeaveWhilePrefillingAndJoinBack) {
  const engine_stats s = expect_same_tokens(
      2, "helix:kvp=2,tpa=1", {{.at_step = 1, .join = false}, {.at_step = 8, .count = 1}});
  EXPECT_EQ(epochs_of(s, "leave").size(), 1u);
  const auto joins = epochs_of(s, "join");
  ASSERT_EQ(joins.size(), 1u);
  EXPECT_EQ(joins[0].layout_after, "helix:kvp=2,tpa=1,tpf=2,ep=1");
}

TEST(EngineElastic, JoinAndLeaveKeepTwoTpaColumns) {
  const engine_stats s = expect_same_tokens(
      4, "helix:kvp=2,tpa=2", {{.at_step = 6, .count = 4}, {.at_step = 16, .join = false}});
  const auto joins = epochs_of(s, "join");
  ASSERT_EQ(joins.size(), 1u);
  EXPECT_EQ(joins[0].layout_after, "helix:kvp=4,tpa=2,tpf=8,ep=1");
  EXPECT_EQ(joins[0].blocks_rebuilt, 0);
  EXPECT_GT(joins[0].blocks_moved, 0);
  // 7 members have no helix layout for tiny-llama; 4 of them serve (kvp=2), the leaver and the
  // members left without a rank hand their blocks over, column for column.
  const auto leaves = epochs_of(s, "leave");
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_EQ(leaves[0].layout_after, "helix:kvp=2,tpa=2,tpf=4,ep=1");
  EXPECT_EQ(leaves[0].blocks_rebuilt, 0);
  EXPECT_GT(leaves[0].blocks_moved, 0);
  EXPECT_EQ(s.standbys, 3);
}

// Rebalancing migrates blocks after every request that leaves; joins and leaves queued meanwhile
// wait for the migration in flight and the tokens still match.
TEST(EngineElastic, ChangesWaitForMigrationsInFlight) {
  auto tuned = [] {
    engine_config c = elastic_config(4, "helix:kvp=4,tpa=1");
    c.rebalance_min_blocks = 1;
    c.rebalance_threshold = 0.05;
    return c;
  };
  auto fixed = engine::create(tuned());
  ASSERT_TRUE(fixed.has_value()) << fixed.error().to_string();
  const run_result want = serve(**fixed, {}, 8, 40);
  auto elastic = engine::create(tuned());
  ASSERT_TRUE(elastic.has_value()) << elastic.error().to_string();
  const run_result got = serve(
      **elastic,
      {{.at_step = 20, .join = false}, {.at_step = 30, .count = 2}, {.at_step = 45, .join = false}},
      8, 40);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_GT(got.stats.migrations, 0);
  EXPECT_FALSE(epochs_of(got.stats, "rebalance").empty());
  EXPECT_EQ(epochs_of(got.stats, "leave").size(), 2u);
  EXPECT_EQ(epochs_of(got.stats, "join").size(), 1u);
  for (const epoch_stats& e : got.stats.epochs) {
    if (e.reason != "initial") {
      EXPECT_EQ(e.blocks_rebuilt, 0) << e.reason << " " << e.note;
    }
  }
}

// Joins and leaves at seeded random steps, over every layout family: the tokens never change.
TEST(EngineElastic, RandomStepsOverEveryFamilyKeepTheTokens) {
  struct family_case {
    std::int64_t workers;
    const char* layout;
    const char* model;
  };
  const family_case cases[] = {{2, "helix:kvp=2,tpa=1", "tiny-llama"},
                               {4, "helix:kvp=2,tpa=2", "tiny-llama"},
                               {2, "medha:kvp=2,tpa=1", "tiny-llama"},
                               {2, "tp:tp=2", "tiny-llama"},
                               {2, "helix:kvp=2,tpa=1", "tiny-deepseek"}};
  std::mt19937 rng(12);
  for (const family_case& f : cases) {
    // Within the workload's ~30 steps (5 requests, 24 tokens each, prefill chunks before).
    const std::int64_t join_at = 1 + static_cast<std::int64_t>(rng() % 14);
    const std::int64_t leave_at = join_at + 1 + static_cast<std::int64_t>(rng() % 12);
    const std::int64_t count = f.workers;  // doubles the members: every family has that layout
    SCOPED_TRACE(fmt::format("{} {}: join {} at step {}, leave at step {}", f.model, f.layout,
                             count, join_at, leave_at));
    const engine_stats s = expect_same_tokens(
        f.workers, f.layout,
        {{.at_step = join_at, .count = count}, {.at_step = leave_at, .join = false}}, f.model);
    EXPECT_EQ(epochs_of(s, "join").size(), 1u);
    EXPECT_EQ(epochs_of(s, "leave").size(), 1u);
  }
}

TEST(EngineElastic, MedhaLayoutsJoinAndLeave) {
  const engine_stats s = expect_same_tokens(
      2, "medha:kvp=2,tpa=1", {{.at_step = 6, .count = 2}, {.at_step = 14, .join = false}});
  ASSERT_EQ(epochs_of(s, "join").size(), 1u);
  EXPECT_EQ(epochs_of(s, "join")[0].blocks_rebuilt, 0);
  ASSERT_EQ(epochs_of(s, "leave").size(), 1u);
  EXPECT_EQ(epochs_of(s, "leave")[0].blocks_rebuilt, 0);
}

TEST(EngineElastic, MixtureOfExpertsModelJoinsAndLeaves) {
  const engine_stats s = expect_same_tokens(
      2, "helix:kvp=2,tpa=1", {{.at_step = 6, .count = 2}, {.at_step = 14, .join = false}},
      "tiny-deepseek");
  ASSERT_EQ(epochs_of(s, "join").size(), 1u);
  EXPECT_EQ(epochs_of(s, "join")[0].blocks_rebuilt, 0)
      << epochs_of(s, "join")[0].layout_before << " -> " << epochs_of(s, "join")[0].layout_after;
  EXPECT_EQ(epochs_of(s, "leave").size(), 1u);
}

// The tp family changes its TPA size with every member count: the KV moves re-sliced by head.
// tiny-llama has 2 KV heads: tp=1 -> 2 splits each page, 2 -> 4 copies each head onto two
// ranks, and the leave (4 -> 3 members: tp=2, one stands by) joins them again.
TEST(EngineElastic, TensorParallelChangesMoveKvHeadsNotRecompute) {
  const engine_stats s = expect_same_tokens(
      1, "tp:tp=1",
      {{.at_step = 5, .count = 1}, {.at_step = 10, .count = 2}, {.at_step = 16, .join = false}});
  const auto joins = epochs_of(s, "join");
  ASSERT_EQ(joins.size(), 2u);
  EXPECT_EQ(joins[0].layout_after, "tp:tp=2");
  EXPECT_EQ(joins[1].layout_after, "tp:tp=4");
  const auto leaves = epochs_of(s, "leave");
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_EQ(leaves[0].layout_after, "tp:tp=2");
  for (const auto& e : {joins[0], joins[1], leaves[0]}) {
    EXPECT_EQ(e.blocks_rebuilt, 0) << e.layout_before << " -> " << e.layout_after << ": " << e.note;
    EXPECT_GT(e.blocks_moved, 0) << e.layout_before << " -> " << e.layout_after;
    EXPECT_NE(e.note.find("re-sliced"), std::string::npos) << e.note;
  }
}

// A helix layout whose TPA size changes (kvp=1,tpa=2 on 2 -> one member left: tpa=1): the
// leaver sends its heads as a donor and the survivor's pages take both heads.
TEST(EngineElastic, HelixLeaveThatChangesTpaMovesKvHeads) {
  const engine_stats s =
      expect_same_tokens(2, "helix:kvp=1,tpa=2", {{.at_step = 7, .join = false}});
  const auto leaves = epochs_of(s, "leave");
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_EQ(leaves[0].layout_after, "helix:kvp=1,tpa=1,tpf=1,ep=1");
  EXPECT_EQ(leaves[0].blocks_rebuilt, 0) << leaves[0].note;
  EXPECT_GT(leaves[0].blocks_moved, 0);
}

// Two TPA columns and a standby that takes the leaver's rank: the leaver's KVP member still has
// a serving holder in the other column, so it cannot donate whole (donor_ranks); its blocks move
// as head pieces from both holders instead of being rebuilt.
TEST(EngineElastic, LeaveReplacedByAStandbyOnTwoColumnsRebuildsNothing) {
  const engine_stats s = expect_same_tokens(
      4, "helix:kvp=2,tpa=2", {{.at_step = 4, .count = 1}, {.at_step = 10, .join = false}});
  const auto leaves = epochs_of(s, "leave");
  ASSERT_EQ(leaves.size(), 1u);
  EXPECT_EQ(leaves[0].layout_after, "helix:kvp=2,tpa=2,tpf=4,ep=1");
  EXPECT_EQ(leaves[0].blocks_rebuilt, 0) << leaves[0].note;
  EXPECT_GT(leaves[0].blocks_moved, 0) << leaves[0].note;
}

TEST(EngineElastic, LeaveThatLeavesTooLittleKvIsRefused) {
  engine_config c = elastic_config(2, "helix:kvp=2,tpa=1");
  c.kv_capacity_tokens_per_worker = 512;
  auto eng = engine::create(c);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  // Five requests of up to 24 + 248 tokens fit on two members, not on one.
  const run_result r =
      serve(**eng, {{.at_step = 3, .join = false, .expect = errc::resource_exhausted}});
  ASSERT_EQ(r.outcomes.size(), 1u);
  EXPECT_NE(r.outcomes[0].message().find("refused"), std::string::npos)
      << r.outcomes[0].to_string();
  EXPECT_EQ(r.stats.completed, 5);
  EXPECT_EQ(r.stats.layout, "helix:kvp=2,tpa=1,tpf=2,ep=1");
  EXPECT_TRUE(epochs_of(r.stats, "leave").empty());
}

TEST(EngineElastic, LeaveThatWaitsRunsOnceTheRequestsFit) {
  engine_config c = elastic_config(2, "helix:kvp=2,tpa=1");
  c.kv_capacity_tokens_per_worker = 512;
  c.elastic_leave = "wait";
  auto eng = engine::create(c);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const run_result r = serve(**eng, {{.at_step = 3, .join = false}});
  EXPECT_EQ(r.stats.completed, 5);
  EXPECT_EQ(epochs_of(r.stats, "leave").size(), 1u);
  EXPECT_EQ(r.stats.layout, "helix:kvp=1,tpa=1,tpf=1,ep=1");
}

TEST(EngineElastic, BadArgumentsAreRefusedNamingThem) {
  auto eng = engine::create(elastic_config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const status zero = (*eng)->add_workers(0);
  EXPECT_EQ(zero.code(), errc::invalid_argument);
  EXPECT_NE(zero.message().find("count"), std::string::npos) << zero.to_string();
  const status far = (*eng)->drain_worker(7);
  EXPECT_EQ(far.code(), errc::invalid_argument);
  EXPECT_NE(far.message().find("rank 7"), std::string::npos) << far.to_string();
  ASSERT_TRUE((*eng)->drain_worker(-1).ok());
  const status last = (*eng)->drain_worker(-1);
  EXPECT_EQ(last.code(), errc::failed_precondition) << last.to_string();
  engine_config bad = elastic_config(2, "helix:kvp=2,tpa=1");
  bad.elastic_leave = "sometimes";
  const auto refused = engine::create(bad);
  ASSERT_FALSE(refused.has_value());
  EXPECT_NE(refused.error().message().find("elastic_leave"), std::string::npos);
}

}  // namespace
}  // namespace helix::actors
