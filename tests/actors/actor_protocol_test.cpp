// The actors' protocol under CAF's deterministic scheduler (no threads, no sleeps): requests join
// and leave between steps, cancellation takes effect at the next step boundary, stale epochs are
// dropped, and the engine's bookkeeping (opens, closes, KV admission) is what it should be.
//
// The workers here run a compute of the test's own: the real one (rank_compute) blocks in
// collectives that need every rank's thread, which a single-threaded scheduler cannot give. Its
// tokens are a fixed function of (sequence, position) so every expectation is exact.
#include <caf/scheduler/test_coordinator.hpp>

#include <map>

#include <gtest/gtest.h>

#include "actors/runtime.hpp"

namespace helix::actors {
namespace {

constexpr std::int64_t vocab = 97;

// Token sampled after `pos` tokens of sequence `seq`.
std::int32_t scripted_token(std::uint64_t seq, std::int64_t pos) {
  return static_cast<std::int32_t>((seq * 31 + static_cast<std::uint64_t>(pos) * 7) % vocab);
}

// A deterministic compute that records what it was asked to do.
class scripted_compute final : public worker_compute {
 public:
  explicit scripted_compute(std::int64_t rank) : rank_(rank) {}
  std::int64_t rank() const override { return rank_; }
  expected<std::uint64_t> open_sequence() override {
    const std::uint64_t id = next_++;
    lengths_[id] = 0;
    log_.push_back(fmt::format("open {}", id));
    return id;
  }
  status close_sequence(std::uint64_t seq) override {
    if (lengths_.erase(seq) == 0) return not_found("no sequence {}", seq);
    log_.push_back(fmt::format("close {}", seq));
    return ok_status();
  }
  status step(const step_msg& m, step_outcome& out) override {
    std::vector<std::int32_t>& tokens = out.tokens;
    std::vector<status>& item_errors = out.item_errors;
    tokens.clear();
    item_errors.clear();
    if (fail_step_) return internal_error("rank {}: the data plane broke", rank_);
    std::string line = "step";
    for (const step_item& it : m.items) {
      auto len = lengths_.find(it.seq);
      if (len == lengths_.end()) return invalid_argument("unknown sequence {}", it.seq);
      len->second += static_cast<std::int64_t>(it.tokens.size()) + it.synthetic_tokens;
      const bool poisoned =
          it.sample && std::find(it.tokens.begin(), it.tokens.end(), poison) != it.tokens.end();
      if (poisoned) {
        item_errors.resize(m.items.size(), ok_status());
        item_errors[tokens.size()] = invalid_argument("logits row is not finite");
      }
      tokens.push_back(it.sample && !poisoned ? scripted_token(it.seq, len->second) : -1);
      line += fmt::format(" {}:{}", it.seq, it.tokens.size());
    }
    log_.push_back(line);
    return ok_status();
  }
  status migrate(std::span<const move_item> moves) override {
    log_.push_back(fmt::format("migrate {}", moves.size()));
    return ok_status();
  }
  std::int64_t kv_used_blocks() const override {
    return static_cast<std::int64_t>(lengths_.size());
  }
  std::int64_t kv_capacity_blocks() const override { return 1000; }

  const std::vector<std::string>& log() const { return log_; }
  void fail_steps() { fail_step_ = true; }
  /// A sampled item holding this token reports an error of its own (as non-finite logits do).
  static constexpr std::int32_t poison = 96;

 private:
  std::int64_t rank_;
  std::uint64_t next_ = 1;
  std::map<std::uint64_t, std::int64_t> lengths_;
  std::vector<std::string> log_;
  bool fail_step_ = false;
};

struct ActorProtocol : ::testing::Test {
  caf::actor_system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  caf::scheduler::test_coordinator* sched = nullptr;
  std::vector<std::shared_ptr<scripted_compute>> computes;
  std::vector<caf::actor> workers;
  caf::actor planner;
  caf::actor engine;
  std::shared_ptr<stream_registry> registry = std::make_shared<stream_registry>();

  void start(std::int64_t kvp, std::int64_t capacity_blocks, std::int64_t max_batch_tokens = 64) {
    cfg.add_message_types<caf::id_block::helix_actors>();
    cfg.set("scheduler.policy", caf::atom("testing"));
    cfg.set("logger.verbosity", caf::atom("quiet"));
    sys = std::make_unique<caf::actor_system>(cfg);
    sched = &dynamic_cast<caf::scheduler::test_coordinator&>(sys->scheduler());
    layout l;
    l.kvp = kvp;
    l.tpa = 1;
    l.tpf = kvp;
    l.num_ranks = kvp;
    for (std::int64_t r = 0; r < kvp; ++r) {
      computes.push_back(std::make_shared<scripted_compute>(r));
      workers.push_back(sys->spawn(worker_actor, std::shared_ptr<worker_compute>(computes.back()),
                                   suspects_fn{}));
    }
    planner = sys->spawn(planner_actor, l, std::int64_t{4}, 0.1, std::int64_t{64});
    engine_setup setup;
    setup.config.block_tokens = 4;
    setup.config.max_batch_tokens = max_batch_tokens;
    setup.config.prefill_chunk_tokens = 8;
    setup.grid = l;
    setup.vocab = vocab;
    setup.capacity_blocks_per_worker = capacity_blocks;
    engine = spawn_engine(*sys, setup, workers, planner, registry);
  }

  void TearDown() override {
    if (!sys) return;
    for (const caf::actor& w : workers) caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(planner, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(engine, caf::exit_reason::user_shutdown);
    sched->run();
  }

  std::shared_ptr<token_stream> submit(std::uint64_t id, std::vector<std::int32_t> prompt,
                                       std::int64_t max_tokens) {
    auto stream = std::make_shared<token_stream>();
    registry->add(id, stream, {});
    submit_msg m;
    m.request_id = id;
    m.prompt = std::move(prompt);
    m.max_tokens = max_tokens;
    caf::anon_send(engine, std::move(m));
    return stream;
  }

  // Events available without blocking.
  static std::vector<token_event> drain(token_stream& s) {
    std::vector<token_event> out;
    while (auto e = s.next_for(std::chrono::milliseconds(0))) out.push_back(*e);
    return out;
  }
};

TEST_F(ActorProtocol, RequestsJoinAndLeaveBetweenSteps) {
  start(2, 100);
  auto a = submit(1, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 3);  // two prefill chunks (8 + 2)
  sched->run();
  auto b = submit(2, {4, 4}, 2);  // joins while a decodes
  sched->run();
  const auto ea = drain(*a);
  const auto eb = drain(*b);
  ASSERT_EQ(ea.size(), 3u);
  ASSERT_EQ(eb.size(), 2u);
  // Sequence 1 sampled after 10, 11, 12 tokens; sequence 2 after 2 and 3.
  EXPECT_EQ(ea[0].token, scripted_token(1, 10));
  EXPECT_EQ(ea[2].token, scripted_token(1, 12));
  EXPECT_TRUE(ea[2].last);
  EXPECT_EQ(ea[2].reason, finish_reason::length);
  EXPECT_EQ(eb[0].token, scripted_token(2, 2));
  EXPECT_EQ(eb[1].token, scripted_token(2, 3));
  for (const auto& c : computes) {
    const std::vector<std::string> want = {"open 1",   "step 1:8", "step 1:2", "step 1:1",
                                           "step 1:1", "close 1",  "open 2",   "step 2:2",
                                           "step 2:1", "close 2"};
    EXPECT_EQ(c->log(), want);
    EXPECT_EQ(c->kv_used_blocks(), 0);
  }
}

TEST_F(ActorProtocol, ConcurrentRequestsShareSteps) {
  start(2, 100);
  auto a = submit(1, {1, 2}, 2);
  auto b = submit(2, {3}, 3);
  sched->run();
  EXPECT_EQ(drain(*a).size(), 2u);
  EXPECT_EQ(drain(*b).size(), 3u);
  // a's first step runs alone (b arrives while it is in flight); then both share steps, decode
  // tokens first, and b goes on alone once a has left.
  const std::vector<std::string> want = {"open 1",  "step 1:2", "open 2",   "step 1:1 2:1",
                                         "close 1", "step 2:1", "step 2:1", "close 2"};
  EXPECT_EQ(computes[0]->log(), want);
}

TEST_F(ActorProtocol, CancelTakesEffectAtTheNextStepBoundary) {
  start(2, 100);
  auto a = submit(1, {1, 2, 3}, 50);
  caf::anon_send(engine, cancel_atom::value, std::uint64_t{1});  // arrives during the first step
  sched->run();
  const auto ev = drain(*a);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].token, scripted_token(1, 3));
  EXPECT_TRUE(ev[1].last);
  EXPECT_EQ(ev[1].reason, finish_reason::cancelled);
  EXPECT_EQ(computes[1]->log().back(), "close 1");
}

TEST_F(ActorProtocol, KvAdmissionQueuesUntilRoomIsFreed) {
  // 12 + 4 tokens = 4 blocks over 2 members: 2 per member + 1 slack = 3 reserved; capacity 4 lets
  // one such request run at a time.
  start(2, 4);
  auto a = submit(1, std::vector<std::int32_t>(12, 1), 4);
  auto b = submit(2, std::vector<std::int32_t>(12, 2), 4);
  sched->run();
  EXPECT_EQ(drain(*a).size(), 4u);
  EXPECT_EQ(drain(*b).size(), 4u);
  const auto& log = computes[0]->log();
  const auto close1 = std::find(log.begin(), log.end(), "close 1");
  const auto open2 = std::find(log.begin(), log.end(), "open 2");
  ASSERT_NE(close1, log.end());
  ASSERT_NE(open2, log.end());
  EXPECT_LT(close1 - log.begin(), open2 - log.begin());  // b waited for a's KV to be freed
}

// Admission leaves room for rebalancing: (capacity - 1) / (1 + threshold) blocks per member.
TEST(Admission, KeepsRoomForRebalancing) {
  EXPECT_EQ(admission_blocks(16, 0.10), 13);
  EXPECT_EQ(admission_blocks(4097, 0.10), 3723);
  EXPECT_EQ(admission_blocks(1, 0.10), 0);
  EXPECT_EQ(blocks_reserved_per_member(12, 4, 4, 2), 3);  // 4 blocks over 2 members, + 1
  EXPECT_EQ(blocks_reserved_per_member(1, 1, 16, 8), 2);
}

TEST_F(ActorProtocol, StaleEpochsAreDropped) {
  start(2, 100);
  migrate_msg mig;
  mig.epoch = 3;
  mig.op_id = 1;  // the engine numbers operations from 1
  caf::anon_send(workers[0], mig);
  step_msg old;
  old.epoch = 2;
  old.step_id = 1;
  caf::anon_send(workers[0], old);
  caf::anon_send(workers[0], open_seq_msg{1, 2, 1});
  sched->run();
  caf::scoped_actor self{*sys};
  self->send(workers[0], wstate_atom::value);
  sched->run();
  self->receive([&](std::int64_t epoch, std::int64_t dropped, std::int64_t used) {
    EXPECT_EQ(epoch, 3);
    EXPECT_EQ(dropped, 2);
    EXPECT_EQ(used, 0);
  });
  EXPECT_EQ(computes[0]->log(), (std::vector<std::string>{"migrate 0"}));
}

// A control message delivered twice (or after a later one) runs once: the engine numbers steps
// and operations in increasing order.
TEST_F(ActorProtocol, RepeatedStepsAndOperationsRunOnce) {
  start(2, 100);
  caf::anon_send(workers[0], open_seq_msg{0, 1, 1});
  caf::anon_send(workers[0], open_seq_msg{0, 1, 1});
  caf::anon_send(workers[0], close_seq_msg{0, 2, 1});
  caf::anon_send(workers[0], open_seq_msg{0, 1, 1});  // older than the close: late
  sched->run();
  caf::scoped_actor self{*sys};
  self->send(workers[0], wstate_atom::value);
  sched->run();
  self->receive([&](std::int64_t, std::int64_t dropped, std::int64_t) { EXPECT_EQ(dropped, 2); });
  EXPECT_EQ(computes[0]->log(), (std::vector<std::string>{"open 1", "close 1"}));
}

TEST_F(ActorProtocol, StatsCountWhatHappened) {
  start(2, 100);
  auto a = submit(1, {1, 2, 3}, 2);
  auto b = submit(2, {1}, 50);
  caf::anon_send(engine, cancel_atom::value, std::uint64_t{2});
  sched->run();
  caf::scoped_actor self{*sys};
  self->send(engine, stats_atom::value);
  sched->run();
  self->receive([&](engine_stats& s) {
    EXPECT_EQ(s.submitted, 2);
    EXPECT_EQ(s.completed, 1);
    EXPECT_EQ(s.cancelled, 1);
    EXPECT_EQ(s.active, 0);
    EXPECT_EQ(s.queued, 0);
  });
}

// A request's own failure (here a poisoned logits row) ends that request only; the others in the
// same steps go on, and its KV is freed.
TEST_F(ActorProtocol, AnItemErrorEndsOnlyThatRequest) {
  start(2, 100);
  auto good = submit(1, {1, 2, 3}, 4);
  auto bad = submit(2, {4, scripted_compute::poison}, 4);
  sched->run();
  const auto eg = drain(*good);
  const auto eb = drain(*bad);
  ASSERT_EQ(eg.size(), 4u);
  EXPECT_EQ(eg.back().reason, finish_reason::length);
  ASSERT_EQ(eb.size(), 1u);
  EXPECT_EQ(eb[0].reason, finish_reason::error);
  EXPECT_EQ(eb[0].token, -1);
  EXPECT_NE(eb[0].error.message().find("request 2"), std::string::npos) << eb[0].error.to_string();
  EXPECT_NE(eb[0].error.message().find("not finite"), std::string::npos);
  EXPECT_EQ(computes[0]->kv_used_blocks(), 0);  // both sequences closed
  EXPECT_TRUE(registry->failure().ok());
  auto later = submit(3, {5}, 2);
  sched->run();
  EXPECT_EQ(drain(*later).size(), 2u);
}

// A failed step is a worker failure: every request ends with it, the failure is recorded where
// the API refuses new requests, and stats say which worker failed.
TEST_F(ActorProtocol, AStepFailureFailsTheEngineAndSaysWhichWorker) {
  start(2, 100);
  computes[1]->fail_steps();
  auto a = submit(1, {1, 2, 3}, 4);
  sched->run();
  const auto ea = drain(*a);
  ASSERT_EQ(ea.size(), 1u);
  EXPECT_EQ(ea[0].reason, finish_reason::error);
  EXPECT_NE(ea[0].error.message().find("worker 1"), std::string::npos) << ea[0].error.to_string();
  const status failure = registry->failure();
  EXPECT_FALSE(failure.ok());
  EXPECT_NE(failure.message().find("data plane broke"), std::string::npos);
  auto b = submit(2, {1}, 2);  // reaches the actor despite the API's check: ends with the cause
  sched->run();
  const auto eb = drain(*b);
  ASSERT_EQ(eb.size(), 1u);
  EXPECT_EQ(eb[0].reason, finish_reason::error);
  caf::scoped_actor self{*sys};
  self->send(engine, stats_atom::value);
  sched->run();
  self->receive([&](engine_stats& st) {
    EXPECT_EQ(st.health, engine_health::failed);
    EXPECT_EQ(st.failed, 2);
  });
}

// Control messages cross process and host boundaries as bytes: every field survives CAF's binary
// serialisation.
TEST_F(ActorProtocol, MessagesSurviveSerialisation) {
  start(1, 10);
  step_msg m;
  m.epoch = 7;
  m.step_id = 42;
  m.new_block_kvp = {0, 3, 1};
  step_item it;
  it.seq = 5;
  it.tokens = {1, 2, 3};
  it.sample = true;
  it.temperature = 0.7f;
  it.top_k = 20;
  it.top_p = 0.9f;
  it.seed = 99;
  it.request_id = 1234;
  m.items = {it, it};
  m.items[1].seq = 6;
  std::vector<char> buf;
  caf::binary_serializer sink{*sys, buf};
  ASSERT_FALSE(sink(m));
  step_msg back;
  caf::binary_deserializer source{*sys, buf};
  ASSERT_FALSE(source(back));
  EXPECT_EQ(back.epoch, 7);
  EXPECT_EQ(back.step_id, 42);
  EXPECT_EQ(back.new_block_kvp, m.new_block_kvp);
  ASSERT_EQ(back.items.size(), 2u);
  EXPECT_EQ(back.items[1].seq, 6u);
  EXPECT_EQ(back.items[0].tokens, it.tokens);
  EXPECT_EQ(back.items[0].top_k, 20);
  EXPECT_FLOAT_EQ(back.items[0].top_p, 0.9f);
  EXPECT_EQ(back.items[0].request_id, 1234u);

  engine_stats st;
  st.layout = "helix:kvp=2,tpa=1,tpf=2,ep=1";
  st.migrations = 3;
  st.kv_imbalance_max = 0.25;
  st.workers = {{0, 5, 10}, {1, 6, 10}};
  buf.clear();
  caf::binary_serializer sink2{*sys, buf};
  ASSERT_FALSE(sink2(st));
  engine_stats st_back;
  caf::binary_deserializer source2{*sys, buf};
  ASSERT_FALSE(source2(st_back));
  EXPECT_EQ(st_back.layout, st.layout);
  EXPECT_EQ(st_back.migrations, 3);
  EXPECT_DOUBLE_EQ(st_back.kv_imbalance_max, 0.25);
  ASSERT_EQ(st_back.workers.size(), 2u);
  EXPECT_EQ(st_back.workers[1].kv_used_blocks, 6);
}

}  // namespace
}  // namespace helix::actors
