// Recovery from a worker failure (engine_config::recovery): a data-plane fault injected on one
// rank mid-run (transport/fault) makes the engine rebuild its workers on a layout of the members
// that remain and rebuild the KV that is gone, either every running request's by full replay or
// only the lost blocks (survivors keep theirs); every request's tokens equal the fault-free run's,
// none is lost and no token comes twice.
#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <caf/all.hpp>

#include "actors/control_faults.hpp"
#include "actors/engine.hpp"
#include "actors/worker_source.hpp"
#include "tests/support/model_fixtures.hpp"
#include "transport/fault/fault_fabric.hpp"

namespace helix::actors {
namespace {

namespace fault = transport::fault;

engine_config recovery_config(std::int64_t workers, const std::string& layout,
                              const std::string& mode = "full_replay") {
  engine_config c;
  c.model = "tiny-llama";
  c.num_workers = workers;
  c.layout = layout;
  c.kv_capacity_tokens_per_worker = 4096;
  c.max_batch_tokens = 128;
  c.prefill_chunk_tokens = 16;
  c.recovery = mode;
  return c;
}

// In-process workers whose first data plane fails rank `rank` at its nth all_reduce (the fault
// fires once: the rebuilt workers get a plain fabric).
std::unique_ptr<worker_source> failing_workers(
    int rank, std::uint64_t nth, fault::fault_action action = fault::fault_action::fail,
    fault::call_kind kind = fault::call_kind::all_reduce) {
  in_process_options o;
  auto first = std::make_shared<std::atomic<bool>>(true);
  o.wrap_fabric = [=](std::unique_ptr<transport::fabric> f) -> std::unique_ptr<transport::fabric> {
    if (!first->exchange(false)) return f;
    fault::fault_schedule s;
    s.faults.push_back({.action = action, .rank = rank, .kind = kind, .nth = nth});
    auto wrapped = fault::make_fault_fabric(std::move(f), s);
    EXPECT_TRUE(wrapped.has_value()) << wrapped.error().to_string();
    return std::move(*wrapped);
  };
  return in_process_workers(std::move(o));
}

struct run_result {
  std::vector<std::vector<std::int32_t>> tokens;  // per request, in submission order
  std::vector<finish_reason> reasons;
  engine_stats stats;
};

// Greedy and seeded-sampling requests, one of them over a synthetic context, all submitted at
// once; every request's tokens.
run_result serve(engine& eng, bool expect_ok = true) {
  run_result out;
  std::vector<request_handle> handles;
  for (int i = 0; i < 5; ++i) {
    request_options r;
    r.prompt =
        test_support::random_tokens(6 + 9 * i, eng.vocab(), 300 + static_cast<std::uint64_t>(i));
    r.max_tokens = 14;
    if (i % 2 == 1) r.sampling = {0.8f, 30, 0.9f, 11 + static_cast<std::uint64_t>(i)};
    if (i == 4) {
      r.synthetic_context_tokens = 200;
      r.synthetic_seed = 5;
    }
    auto h = eng.submit(r);
    EXPECT_TRUE(h.has_value()) << h.error().to_string();
    if (h) handles.push_back(*h);
  }
  for (auto& h : handles) {
    std::vector<std::int32_t> tokens;
    finish_reason reason = finish_reason::none;
    while (auto e = h.stream->next()) {
      if (e->token >= 0) {
        EXPECT_EQ(e->index, static_cast<std::int64_t>(tokens.size())) << "a token came twice";
        tokens.push_back(e->token);
      }
      if (e->last) {
        reason = e->reason;
        if (expect_ok) {
          EXPECT_TRUE(e->error.ok()) << e->error.to_string();
        }
      }
    }
    out.tokens.push_back(std::move(tokens));
    out.reasons.push_back(reason);
  }
  out.stats = eng.stats();
  return out;
}

// `mode` asked for; `used` the rebuild the engine chose (lost_blocks falls back to full_replay
// when no KVP member keeps its blocks).
recovery_stats expect_recovery_matches_fault_free(std::int64_t workers, const std::string& layout,
                                                  int rank, std::uint64_t nth,
                                                  std::int64_t ranks_after,
                                                  const std::string& mode = "full_replay",
                                                  const std::string& used = "full_replay",
                                                  bool rebuilds = true) {
  auto clean = engine::create(recovery_config(workers, layout));
  EXPECT_TRUE(clean.has_value()) << clean.error().to_string();
  if (!clean) return {};
  const run_result want = serve(**clean);
  EXPECT_TRUE(want.stats.recoveries.empty());

  auto faulty = engine::create(recovery_config(workers, layout, mode), failing_workers(rank, nth));
  EXPECT_TRUE(faulty.has_value()) << faulty.error().to_string();
  if (!faulty) return {};
  const run_result got = serve(**faulty);
  EXPECT_EQ(got.tokens, want.tokens) << layout << " rank " << rank << " call " << nth;
  for (finish_reason r : got.reasons) EXPECT_EQ(r, finish_reason::length);
  EXPECT_EQ(got.stats.health, engine_health::serving) << got.stats.failure.to_string();
  EXPECT_EQ(got.stats.completed, 5);
  EXPECT_EQ(got.stats.failed, 0);
  EXPECT_EQ(got.stats.recoveries.size(), 1u);
  if (got.stats.recoveries.size() != 1) return {};
  const recovery_stats& rec = got.stats.recoveries[0];
  EXPECT_EQ(rec.rank, rank);
  EXPECT_NE(rec.why.find("injected fault"), std::string::npos) << rec.why;
  EXPECT_EQ(rec.layout_before, layout::parse(layout)->to_string());
  auto after = layout::parse(rec.layout_after);
  EXPECT_TRUE(after.has_value()) << rec.layout_after;
  if (!after) return rec;
  EXPECT_EQ(after->num_ranks, ranks_after) << rec.layout_after;
  EXPECT_EQ(got.stats.layout, rec.layout_after);
  EXPECT_EQ(rec.mode, used);
  if (!rebuilds) {  // every block moved (a re-slice from the heads' other holders)
    EXPECT_EQ(rec.requests_replayed, 0);
    EXPECT_EQ(rec.tokens_replayed, 0);
    EXPECT_EQ(rec.blocks_rebuilt, 0);
    EXPECT_EQ(rec.blocks_kept, 0);
    EXPECT_GT(rec.blocks_moved, 0);
  } else if (used == "lost_blocks") {
    EXPECT_GT(rec.requests_replayed, 0);
    EXPECT_GT(rec.tokens_replayed, 0);
    EXPECT_GT(rec.blocks_rebuilt, 0);
    EXPECT_GT(rec.blocks_kept, 0) << "survivors keep their blocks";
  } else {
    EXPECT_GT(rec.requests_replayed, 0);
    EXPECT_GT(rec.tokens_replayed, 0);
    EXPECT_GT(rec.blocks_rebuilt, 0);
    EXPECT_EQ(rec.blocks_kept, 0);
    EXPECT_EQ(rec.blocks_moved, 0);
  }
  EXPECT_GT(rec.reload_ms, 0.0) << "the workers were rebuilt (weights seeded again)";
  EXPECT_GT(rec.rebuild_ms, 0.0) << "every replay finished, so the rebuild time is known";
  // Every sequence closed: no KV left behind on the rebuilt workers (the closes of the last
  // requests reach the workers just after their last tokens).
  std::int64_t used = -1;
  for (int tries = 0; tries < 200 && used != 0; ++tries) {
    used = 0;
    for (const worker_stats& w : (*faulty)->stats().workers) used += w.kv_used_blocks;
    if (used != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(used, 0);
  return rec;
}

// 4 ranks -> 3 remain; tiny-llama's 8 query heads have no 3-rank helix layout, so the engine
// continues on 2 of them (the third waits).
TEST(EngineRecovery, FailedWorkerMidDecodeIsReplayedOnTheRest) {
  expect_recovery_matches_fault_free(4, "helix:kvp=2,tpa=2", 1, 60, 2);
}

// A failure during the first steps, while requests still prefill.
TEST(EngineRecovery, FailedWorkerWhilePrefillingIsReplayed) {
  expect_recovery_matches_fault_free(4, "helix:kvp=4,tpa=1", 3, 3, 2);
}

TEST(EngineRecovery, TensorParallelLayoutRecoversToo) {
  expect_recovery_matches_fault_free(2, "tp:tp=2", 0, 25, 1);
}

// Lost blocks only: the survivors keep their KV and only what the dead rank (and the rank the
// smaller layout leaves without a place) held is computed again.
TEST(EngineRecovery, LostBlocksMidDecodeKeepTheSurvivorsKv) {
  const recovery_stats rec = expect_recovery_matches_fault_free(4, "helix:kvp=4,tpa=1", 2, 60, 2,
                                                                "lost_blocks", "lost_blocks");
  // 4 -> 2: the survivor left without a rank hands its blocks over instead of them being rebuilt.
  EXPECT_GT(rec.blocks_moved, 0);
  EXPECT_LT(rec.blocks_rebuilt, rec.blocks_kept);
}

// Two TPA columns: the survivors are ordered so that member 0 keeps its blocks in both columns.
TEST(EngineRecovery, LostBlocksKeepAMemberWhoseColumnsAllSurvived) {
  expect_recovery_matches_fault_free(4, "helix:kvp=2,tpa=2", 1, 60, 2, "lost_blocks",
                                     "lost_blocks");
}

TEST(EngineRecovery, LostBlocksWhilePrefilling) {
  expect_recovery_matches_fault_free(4, "helix:kvp=4,tpa=1", 3, 14, 2, "lost_blocks",
                                     "lost_blocks");
}

// A rank fails inside a KV migration (its first point-to-point send: only migrations send): the
// ranks' tables and the placement record may disagree, so nothing kept is trusted and the
// engine replays in full; every request still matches.
TEST(EngineRecovery, FailureDuringAMigrationFallsBackToFullReplay) {
  engine_config c = recovery_config(4, "helix:kvp=4,tpa=1", "lost_blocks");
  c.rebalance_min_blocks = 2;
  c.rebalance_threshold = 0.01;  // tight: the planner acts at this small scale
  // Requests that end at different steps, so that the ones left behind are rebalanced.
  const auto staggered = [](engine& eng) {
    std::vector<request_handle> handles;
    for (int i = 0; i < 10; ++i) {
      request_options r;
      r.prompt = test_support::random_tokens(40 + 23 * i, eng.vocab(),
                                             500 + static_cast<std::uint64_t>(i));
      r.max_tokens = i % 3 == 0 ? 1 : 10 + 7 * i;
      auto h = eng.submit(r);
      EXPECT_TRUE(h.has_value()) << h.error().to_string();
      if (h) handles.push_back(*h);
    }
    run_result out;
    for (auto& h : handles) out.tokens.push_back(h.stream->wait_all());
    out.stats = eng.stats();
    return out;
  };
  auto clean = engine::create(c);
  ASSERT_TRUE(clean.has_value()) << clean.error().to_string();
  const run_result want = staggered(**clean);
  ASSERT_GT(want.stats.migrations, 0) << "the workload must migrate blocks for this test";
  // Every rank fails at its first send, so the first migration that moves anything fails.
  in_process_options o;
  auto first = std::make_shared<std::atomic<bool>>(true);
  o.wrap_fabric = [=](std::unique_ptr<transport::fabric> f) -> std::unique_ptr<transport::fabric> {
    if (!first->exchange(false)) return f;
    fault::fault_schedule sched;
    for (int r = 0; r < 4; ++r) {
      sched.faults.push_back({.action = fault::fault_action::fail,
                              .rank = r,
                              .kind = fault::call_kind::send,
                              .nth = 1});
    }
    auto wrapped = fault::make_fault_fabric(std::move(f), sched);
    EXPECT_TRUE(wrapped.has_value()) << wrapped.error().to_string();
    return std::move(*wrapped);
  };
  auto faulty = engine::create(c, in_process_workers(std::move(o)));
  ASSERT_TRUE(faulty.has_value()) << faulty.error().to_string();
  const run_result got = staggered(**faulty);
  EXPECT_EQ(got.tokens, want.tokens);
  EXPECT_EQ(got.stats.completed, 10);
  ASSERT_EQ(got.stats.recoveries.size(), 1u);
  EXPECT_EQ(got.stats.recoveries[0].mode, "full_replay");
  EXPECT_EQ(got.stats.health, engine_health::serving) << got.stats.failure.to_string();
}

// tp=2 -> tp=1 changes the head slices: nothing survives, the engine replays in full.
TEST(EngineRecovery, LostBlocksFallBackToFullReplayWhenNothingIsKept) {
  expect_recovery_matches_fault_free(2, "tp:tp=2", 0, 25, 1, "lost_blocks", "full_replay");
}

// tp=4 on tiny-llama's 2 KV heads holds each head twice: after rank 3 dies every head still has
// a holder, so tp=2 gets all of its KV re-sliced by head from the survivors; nothing is rebuilt.
TEST(EngineRecovery, TensorParallelWithDuplicatedHeadsLosesNothing) {
  const recovery_stats rec = expect_recovery_matches_fault_free(
      4, "tp:tp=4", 3, 25, 2, "lost_blocks", "lost_blocks", false);
  EXPECT_EQ(rec.layout_after, "tp:tp=2");
}

// A rank that hangs in a collective (it never makes the call) holds its peers only until the
// peer timeout; the engine then recovers as from any failure.
TEST(EngineRecovery, HungWorkerIsNoticedAtThePeerTimeoutAndReplayed) {
  engine_config c = recovery_config(4, "helix:kvp=2,tpa=2");
  auto clean = engine::create(c);
  ASSERT_TRUE(clean.has_value()) << clean.error().to_string();
  const run_result want = serve(**clean);
  c.peer_timeout_ms = 200;
  auto eng = engine::create(c, failing_workers(2, 40, fault::fault_action::hang));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const run_result got = serve(**eng);
  EXPECT_EQ(got.tokens, want.tokens);
  ASSERT_EQ(got.stats.recoveries.size(), 1u);
  EXPECT_NE(got.stats.recoveries[0].why.find("deadline_exceeded"), std::string::npos)
      << got.stats.recoveries[0].why;
  // Its peers time out waiting for it: the hung rank is the one dropped, whoever reported first.
  EXPECT_EQ(got.stats.recoveries[0].rank, 2) << got.stats.recoveries[0].why;
  EXPECT_EQ(got.stats.completed, 5);
}

// Control-plane faults (control_faults.hpp): a message to one worker delayed, dropped, sent
// twice or held back, or the worker actor killed. Duplicates are run once; a lost or reordered
// message becomes a recovery through the peer timeout; every request's tokens stay those of the
// fault-free run, and nothing is left in the KV.
TEST(EngineRecovery, ControlPlaneFaultsNeverChangeTheOutputs) {
  engine_config c = recovery_config(4, "helix:kvp=2,tpa=2");
  auto clean = engine::create(c);
  ASSERT_TRUE(clean.has_value()) << clean.error().to_string();
  const run_result want = serve(**clean);
  c.peer_timeout_ms = 200;
  control_fault_counts counts;
  std::int64_t recoveries = 0;
  for (std::uint64_t seed = 1; seed <= 12; ++seed) {
    in_process_options o;
    // The first workers only: those a recovery rebuilds run without faults.
    auto started = std::make_shared<int>(0);
    o.wrap_worker = [&, seed, started](caf::actor_system& sys, std::int64_t rank, caf::actor w) {
      if ((*started)++ >= 4) return w;
      control_fault_options f;
      f.seed = seed;
      f.delay = 0.02;
      f.drop = 0.01;
      f.duplicate = 0.02;
      f.reorder = 0.01;
      f.kill = 0.005;
      return spawn_control_fault_proxy(sys, std::move(w), rank, f, &counts);
    };
    auto eng = engine::create(c, in_process_workers(std::move(o)));
    ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
    const run_result got = serve(**eng);
    EXPECT_EQ(got.tokens, want.tokens) << "seed " << seed;
    EXPECT_EQ(got.stats.completed, 5) << "seed " << seed;
    recoveries += static_cast<std::int64_t>(got.stats.recoveries.size());
    std::int64_t used = -1;
    for (int tries = 0; tries < 200 && used != 0; ++tries) {
      used = 0;
      for (const worker_stats& w : (*eng)->stats().workers) used += w.kv_used_blocks;
      if (used != 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(used, 0) << "seed " << seed;
  }
  EXPECT_GT(counts.delayed + counts.dropped + counts.duplicated + counts.reordered + counts.killed,
            0);
  EXPECT_GT(counts.duplicated, 0);
  EXPECT_GT(recoveries, 0) << "no lost message or killed worker in 12 seeds";
}

TEST(EngineRecovery, ControlFaultOptionsAreChecked) {
  control_fault_options f;
  f.drop = 1.5;
  EXPECT_NE(validate(f).message().find("drop"), std::string::npos);
  f.drop = 0.6;
  f.delay = 0.6;
  EXPECT_NE(validate(f).message().find("sum"), std::string::npos);
}

TEST(EngineRecovery, PeerTimeoutOutOfRangeIsRefusedNamingIt) {
  engine_config c = recovery_config(2, "helix:kvp=2,tpa=1");
  c.peer_timeout_ms = 0;
  auto eng = engine::create(c);
  ASSERT_FALSE(eng.has_value());
  EXPECT_NE(eng.error().message().find("peer_timeout_ms"), std::string::npos)
      << eng.error().message();
}

// An engine configured without a recovery mode recovers by lost blocks.
TEST(EngineRecovery, DefaultRecoversByLostBlocks) {
  engine_config c = recovery_config(4, "helix:kvp=2,tpa=2");
  c.recovery = engine_config{}.recovery;
  auto eng = engine::create(c, failing_workers(1, 10));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const run_result got = serve(**eng);
  for (finish_reason r : got.reasons) EXPECT_EQ(r, finish_reason::length);
  EXPECT_EQ(got.stats.health, engine_health::serving) << got.stats.failure.to_string();
  ASSERT_EQ(got.stats.recoveries.size(), 1u);
  EXPECT_EQ(got.stats.recoveries[0].mode, "lost_blocks");
}

// With recovery off the same fault fails the engine, naming the worker.
TEST(EngineRecovery, OffFailsTheEngine) {
  engine_config c = recovery_config(4, "helix:kvp=2,tpa=2");
  c.recovery = "off";
  auto eng = engine::create(c, failing_workers(1, 10));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const run_result got = serve(**eng, /*expect_ok=*/false);
  for (finish_reason r : got.reasons) EXPECT_EQ(r, finish_reason::error);
  EXPECT_EQ(got.stats.health, engine_health::failed);
  EXPECT_NE(got.stats.failure.to_string().find("worker 1"), std::string::npos)
      << got.stats.failure.to_string();
  EXPECT_TRUE(got.stats.recoveries.empty());
}

TEST(EngineRecovery, UnknownModeIsRefused) {
  engine_config c = recovery_config(2, "helix:kvp=2,tpa=1");
  c.recovery = "lost_blocks_someday";
  auto eng = engine::create(c);
  ASSERT_FALSE(eng.has_value());
  EXPECT_NE(eng.error().message().find("recovery"), std::string::npos) << eng.error().message();
}

}  // namespace
}  // namespace helix::actors
