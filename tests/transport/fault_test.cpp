// The fault-injecting communicator and fabric (transport/fault/) and seeded fault schedules.
// DELAY, FAIL and HANG run on the local fabric with ranks as threads; CRASH kills a forked rank
// of a ucx world. Calls carry ~200 ms deadlines: what is checked is that the faulty rank gets
// what the fault says and its peers end by their own deadline, never later.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "proto/fault.pb.h"
#include "transport/fault/fault_fabric.hpp"
#include "transport/fault/schedule.hpp"
#include "transport/transport.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::transport::fault {
namespace {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;
constexpr auto deadline = 200ms;

double ms_since(clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(clock::now() - t0).count();
}

fault_spec spec(fault_action action, std::optional<int> rank, call_kind kind, std::uint64_t nth) {
  fault_spec f;
  f.action = action;
  f.rank = rank;
  f.kind = kind;
  f.nth = nth;
  return f;
}

std::unique_ptr<fault_fabric> local_faults(int n, std::vector<fault_spec> faults,
                                           fault_options options = {}) {
  auto inner = make_local_fabric(n);
  HELIX_CHECK(inner.has_value(), "{}", inner.error().to_string());
  auto f = make_fault_fabric(std::move(inner).value(), {0, n, std::move(faults)}, options);
  HELIX_CHECK(f.has_value(), "{}", f.error().to_string());
  return std::move(f).value();
}

std::unique_ptr<communicator> world(fabric& f, int rank) {
  auto c = f.make_world(rank);
  HELIX_CHECK(c.has_value(), "{}", c.error().to_string());
  return std::move(c).value();
}

// Runs body(rank, its world communicator) on every rank as a thread.
void run_threads(fabric& f, const std::function<void(int, communicator&)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < f.world_size(); ++r) {
    threads.emplace_back([&f, &body, r] {
      auto comm = world(f, r);
      body(r, *comm);
    });
  }
  for (auto& t : threads) t.join();
}

call_options with_deadline() {
  call_options o;
  o.timeout = deadline;
  return o;
}

status one_all_reduce(communicator& c, float& x, const call_options& opts = {}) {
  return c.all_reduce(send_buf{&x, 1, wire_type::f32}, recv_buf{&x, 1, wire_type::f32},
                      reduce_op::sum, opts);
}

TEST(FaultInjection, DelaySleepsThenForwards) {
  fault_spec d = spec(fault_action::delay, 1, call_kind::all_reduce, 2);
  d.delay = 80ms;
  auto fab = local_faults(2, {d});
  std::vector<double> took(2, 0.0);
  run_threads(*fab, [&](int rank, communicator& c) {
    for (int i = 0; i < 3; ++i) {
      float x = static_cast<float>(rank + 1);
      const auto t0 = clock::now();
      EXPECT_TRUE(one_all_reduce(c, x).ok());
      EXPECT_EQ(x, 3.f);  // the delayed call still moves the data
      if (i == 1) took[static_cast<std::size_t>(rank)] = ms_since(t0);
    }
  });
  EXPECT_GE(took[1], 80.0);  // the faulty rank slept
  EXPECT_GE(took[0], 60.0);  // its peer waited for it
  const std::vector<injected_fault> want = {{1, call_kind::all_reduce, 2, fault_action::delay, 0}};
  EXPECT_EQ(fab->injected(), want);
}

TEST(FaultInjection, FailReturnsTheErrorAndPeersEndAtTheirDeadline) {
  fault_spec f = spec(fault_action::fail, 2, call_kind::barrier, 2);
  f.error = errc::internal;
  auto fab = local_faults(4, {f});
  run_threads(*fab, [&](int rank, communicator& c) {
    ASSERT_TRUE(c.barrier(with_deadline()).ok());
    const auto t0 = clock::now();
    const status st = c.barrier(with_deadline());
    const double took = ms_since(t0);
    if (rank == 2) {
      EXPECT_EQ(st.code(), errc::internal) << st.to_string();
      EXPECT_NE(st.message().find("injected fault 0 (FAIL rank 2 barrier #2"), std::string::npos)
          << st.message();
      EXPECT_LT(took, 50.0);  // returned without waiting for anyone
    } else {
      EXPECT_EQ(st.code(), errc::deadline_exceeded) << rank << ": " << st.to_string();
      EXPECT_GE(took, 150.0);
      EXPECT_LT(took, 1000.0);
    }
  });
  ASSERT_EQ(fab->injected().size(), 1u);
  EXPECT_EQ(fab->injected()[0].action, fault_action::fail);
}

TEST(FaultInjection, FailedSendLeavesTheReceiverToItsDeadline) {
  auto fab = local_faults(2, {spec(fault_action::fail, 0, call_kind::send, 1)});
  run_threads(*fab, [&](int rank, communicator& c) {
    float x = 1.f;
    const auto t0 = clock::now();
    if (rank == 0) {
      EXPECT_EQ(c.send(send_buf{&x, 1, wire_type::f32}, 1, 7, with_deadline()).code(),
                errc::unavailable);  // the default error of a FAIL
    } else {
      EXPECT_EQ(c.recv(recv_buf{&x, 1, wire_type::f32}, 0, 7, with_deadline()).code(),
                errc::deadline_exceeded);
      EXPECT_GE(ms_since(t0), 150.0);
      EXPECT_LT(ms_since(t0), 1000.0);
    }
  });
}

TEST(FaultInjection, HangEndsAtTheCallsDeadlineOnEveryRank) {
  auto fab = local_faults(3, {spec(fault_action::hang, 0, call_kind::all_gather, 1)});
  run_threads(*fab, [&](int rank, communicator& c) {
    std::vector<float> in = {static_cast<float>(rank)}, out(3);
    const auto t0 = clock::now();
    const status st = c.all_gather(send_buf{in.data(), 1, wire_type::f32},
                                   recv_buf{out.data(), 3, wire_type::f32}, with_deadline());
    const double took = ms_since(t0);
    EXPECT_EQ(st.code(), errc::deadline_exceeded) << rank << ": " << st.to_string();
    EXPECT_GE(took, 190.0);
    EXPECT_LT(took, 1000.0);
    if (rank == 0) {
      EXPECT_NE(st.message().find("injected fault 0 (HANG rank 0 all_gather #1)"),
                std::string::npos)
          << st.message();
    }
  });
}

TEST(FaultInjection, HangWithoutATimeoutEndsAtTheDefaultAndIsNonBlockingToTest) {
  fault_options o;
  o.default_timeout = 120ms;  // what the wrapped communicators default to
  auto fab = local_faults(1, {spec(fault_action::hang, 0, call_kind::barrier, 1)}, o);
  auto c = world(*fab, 0);
  const auto t0 = clock::now();
  request r = c->ibarrier();
  EXPECT_FALSE(r.test());
  const status st = r.wait();
  EXPECT_EQ(st.code(), errc::deadline_exceeded);
  EXPECT_GE(ms_since(t0), 110.0);
  EXPECT_LT(ms_since(t0), 1000.0);
  EXPECT_TRUE(r.test());
  EXPECT_EQ(r.wait().code(), errc::deadline_exceeded);  // idempotent
  EXPECT_TRUE(c->barrier().ok());                       // the next call is not hit

  fault_options bounded;
  bounded.max_hang = 100ms;  // no timeout anywhere: still never forever
  auto fab2 = local_faults(1, {spec(fault_action::hang, 0, call_kind::any, 1)}, bounded);
  auto c2 = world(*fab2, 0);
  const auto t1 = clock::now();
  EXPECT_EQ(c2->barrier().code(), errc::deadline_exceeded);
  EXPECT_GE(ms_since(t1), 90.0);
  EXPECT_LT(ms_since(t1), 1000.0);
}

TEST(FaultInjection, AbortWakesAHang) {
  for (bool through_decorator : {true, false}) {
    auto fab = local_faults(1, {spec(fault_action::hang, 0, call_kind::barrier, 1)});
    auto c = world(*fab, 0);
    call_options long_wait;
    long_wait.timeout = 10s;
    std::thread aborter([&] {
      std::this_thread::sleep_for(50ms);
      const status why = make_error(errc::unavailable, "rank 3 died");
      // The wrapped fabric's own abort (a UCX peer's, say) is seen by polling.
      if (through_decorator) {
        fab->abort(why);
      } else {
        fab->inner().abort(why);
      }
    });
    const auto t0 = clock::now();
    const status st = c->barrier(long_wait);
    aborter.join();
    EXPECT_EQ(st.code(), errc::unavailable) << through_decorator << ": " << st.to_string();
    EXPECT_EQ(st.message(), "rank 3 died");
    EXPECT_LT(ms_since(t0), 1000.0) << through_decorator;
  }
}

// One rank alone: every collective completes at once, so which call a fault hits is all that
// shows.
TEST(FaultInjection, NthCallCountsPerKindAcrossTheRanksGroups) {
  fault_spec third_reduce = spec(fault_action::fail, 0, call_kind::all_reduce, 3);
  third_reduce.error = errc::internal;
  fault_spec ninth_call = spec(fault_action::fail, 0, call_kind::any, 9);
  fault_spec at_step = spec(fault_action::fail, 0, call_kind::barrier, 2);
  at_step.step = 5;
  at_step.error = errc::aborted;
  auto fab = local_faults(1, {third_reduce, ninth_call, at_step});
  auto c = world(*fab, 0);
  const std::vector<int> solo = {0};
  auto sub = fab->make_communicator(0, solo);
  ASSERT_TRUE(sub.has_value());
  float x = 1.f;
  // The rank's calls, numbered over both of its groups.
  EXPECT_TRUE(one_all_reduce(*c, x).ok());
  EXPECT_TRUE(c->barrier().ok());
  EXPECT_TRUE(one_all_reduce(**sub, x).ok());
  EXPECT_TRUE((*sub)->barrier().ok());
  EXPECT_TRUE(c->barrier().ok());
  EXPECT_EQ(one_all_reduce(*c, x).code(), errc::internal);  // the third all_reduce
  EXPECT_TRUE(one_all_reduce(*c, x).ok());
  EXPECT_TRUE(c->barrier().ok());
  EXPECT_EQ(c->barrier().code(), errc::unavailable);  // the ninth call, of any kind
  // Tagged: only barriers at step 5 count toward the third fault.
  fab->set_tag(0, {5, 0});
  EXPECT_TRUE(c->barrier().ok());
  fab->set_tag(0, {6, 0});
  EXPECT_TRUE(c->barrier().ok());
  fab->set_tag(0, {5, 1});
  EXPECT_EQ(c->barrier().code(), errc::aborted);
  EXPECT_TRUE(c->barrier().ok());

  const std::vector<injected_fault> want = {
      {0, call_kind::all_reduce, 3, fault_action::fail, 0, {}},
      {0, call_kind::barrier, 5, fault_action::fail, 1, {}},
      {0, call_kind::barrier, 8, fault_action::fail, 2, {5, 1}},
  };
  EXPECT_EQ(fab->injected(), want);
}

// calls() counts every call a rank made, per kind and in all, the faulty ones included; ranks
// that made none count 0.
TEST(FaultInjection, CallsAreCountedPerRankAndKind) {
  auto fab = local_faults(1, {spec(fault_action::fail, 0, call_kind::barrier, 2)});
  auto c = world(*fab, 0);
  float x = 1.f;
  EXPECT_TRUE(one_all_reduce(*c, x).ok());
  EXPECT_TRUE(c->barrier().ok());
  EXPECT_EQ(c->barrier().code(), errc::unavailable);
  EXPECT_TRUE(one_all_reduce(*c, x).ok());
  EXPECT_TRUE(one_all_reduce(*c, x).ok());
  EXPECT_EQ(fab->calls(0, call_kind::all_reduce), 3u);
  EXPECT_EQ(fab->calls(0, call_kind::barrier), 2u);
  EXPECT_EQ(fab->calls(0, call_kind::any), 5u);
  EXPECT_EQ(fab->calls(0, call_kind::all_gather), 0u);
  EXPECT_EQ(fab->calls(1, call_kind::any), 0u);
  EXPECT_EQ(fab->calls(-1, call_kind::any), 0u);
}

TEST(FaultInjection, AFaultForEveryRankHitsEachAtItsOwnNthCall) {
  auto fab = local_faults(3, {spec(fault_action::fail, std::nullopt, call_kind::barrier, 2)});
  run_threads(*fab, [&](int, communicator& c) {
    EXPECT_TRUE(c.barrier(with_deadline()).ok());
    const auto t0 = clock::now();
    EXPECT_EQ(c.barrier(with_deadline()).code(), errc::unavailable);
    EXPECT_LT(ms_since(t0), 100.0);  // every rank skipped it: nobody waits
    EXPECT_TRUE(c.barrier(with_deadline()).ok());
  });
  EXPECT_EQ(fab->injected().size(), 3u);
}

// A seeded schedule over four ranks: whatever it injects, every call ends by its deadline plus
// the delays, and the record matches what the ranks saw.
TEST(FaultInjection, SeededScheduleNeverHangs) {
  schedule_options so;
  so.kinds = {call_kind::all_reduce, call_kind::all_gather};
  so.max_nth = 4;  // every rank makes 4 of each: every fault is reached
  so.max_delay = 30ms;
  auto sched = generate_schedule(11, 4, 4, so);
  ASSERT_TRUE(sched.has_value());
  auto inner = make_local_fabric(4);
  ASSERT_TRUE(inner.has_value());
  fault_fabric fab(**inner, *sched);
  std::atomic<int> errors{0};
  const auto t0 = clock::now();
  run_threads(fab, [&](int rank, communicator& c) {
    for (int i = 0; i < 8; ++i) {
      float x = 1.f;
      std::vector<float> all(4);
      const auto t = clock::now();
      const status st =
          i % 2 == 0 ? one_all_reduce(c, x, with_deadline())
                     : c.all_gather(send_buf{&x, 1, wire_type::f32},
                                    recv_buf{all.data(), 4, wire_type::f32}, with_deadline());
      if (!st.ok()) errors.fetch_add(1);
      EXPECT_LT(ms_since(t), 1000.0) << "rank " << rank << " call " << i << ": " << st.to_string();
    }
  });
  EXPECT_LT(ms_since(t0), 5000.0);
  const auto injected = fab.injected();
  EXPECT_FALSE(injected.empty()) << describe(*sched);
  std::printf("%s: %zu injected, %d calls failed\n", describe(*sched).c_str(), injected.size(),
              errors.load());
  const bool any_fail_or_hang = std::any_of(injected.begin(), injected.end(), [](const auto& f) {
    return f.action != fault_action::delay;
  });
  if (any_fail_or_hang) {
    EXPECT_GT(errors.load(), 0) << describe(*sched);
  }
  for (const injected_fault& f : injected) {
    EXPECT_EQ(sched->faults[f.fault_idx].rank, f.rank);
    EXPECT_EQ(sched->faults[f.fault_idx].nth, f.call_idx);
  }
}

// CRASH needs ranks as processes: rank 2 of a ucx world dies at its second barrier; the others'
// barrier fails naming it, well inside their deadline.
TEST(FaultInjection, CrashKillsTheRankProcess) {
  fork_ranks_options o;
  o.fabric.world_size = 3;
  o.timeout = 30s;
  const fault_schedule sched = {5, 3, {spec(fault_action::crash, 2, call_kind::barrier, 2)}};
  auto outcomes = fork_ranks(o, [&](int rank, ucx_fabric& f) -> expected<std::string> {
    fault_fabric faulty(f, sched);
    auto c = world(faulty, rank);
    call_options opts;
    opts.timeout = 10s;
    EXPECT_TRUE(c->barrier(opts).ok());
    const auto t0 = clock::now();
    const status st = c->barrier(opts);  // rank 2 does not return from this
    EXPECT_TRUE(st.code() == errc::unavailable || st.code() == errc::aborted) << st.to_string();
    // The peer is named either by the failed call (its global rank) or by the fabric's watch
    // of the peer's process, whichever notices first.
    EXPECT_TRUE(st.message().find("global 2") != std::string::npos ||
                st.message().find("peer rank 2") != std::string::npos)
        << st.message();
    EXPECT_LT(ms_since(t0), 8000.0);
    EXPECT_TRUE(faulty.injected().empty());  // the survivors injected nothing
    if (testing::Test::HasFailure()) return make_error(errc::internal, "assertions failed");
    return std::string("ok");
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  ASSERT_EQ(outcomes->size(), 3u);
  for (const rank_outcome& oc : *outcomes) {
    if (oc.rank == 2) {
      EXPECT_NE(oc.result.message().find("signal 9"), std::string::npos) << oc.result.to_string();
    } else {
      EXPECT_TRUE(oc.result.ok()) << "rank " << oc.rank << ": " << oc.result.to_string();
    }
  }
}

TEST(FaultSchedule, SameSeedSameBytesAndOtherSeedsDiffer) {
  schedule_options so;
  so.actions = {fault_action::delay, fault_action::fail, fault_action::hang, fault_action::crash};
  so.num_steps = 100;
  so.num_layers = 4;
  auto a = generate_schedule(42, 8, 20, so);
  auto b = generate_schedule(42, 8, 20, so);
  auto c = generate_schedule(43, 8, 20, so);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(to_bytes(*a), to_bytes(*b));
  EXPECT_NE(to_bytes(*a), to_bytes(*c));
  EXPECT_NE(a->faults, c->faults);
  // Fault i depends on (seed, i) alone: fewer faults are a prefix.
  auto shorter = generate_schedule(42, 8, 5, so);
  ASSERT_TRUE(shorter);
  EXPECT_TRUE(std::equal(shorter->faults.begin(), shorter->faults.end(), a->faults.begin()));
  std::vector<int> per_action(5, 0);
  for (const fault_spec& f : a->faults) {
    ASSERT_TRUE(f.rank.has_value());
    EXPECT_GE(*f.rank, 0);
    EXPECT_LT(*f.rank, 8);
    EXPECT_GE(f.nth, 1u);
    EXPECT_LE(f.nth, so.max_nth);
    EXPECT_NE(std::find(so.kinds.begin(), so.kinds.end(), f.kind), so.kinds.end());
    ASSERT_TRUE(f.step && f.layer);
    EXPECT_LT(*f.step, 100);
    EXPECT_LT(*f.layer, 4);
    if (f.action == fault_action::delay) {
      EXPECT_GE(f.delay, so.min_delay);
      EXPECT_LE(f.delay, so.max_delay);
    }
    ++per_action[static_cast<std::size_t>(f.action)];
  }
  EXPECT_GT(per_action[1] + per_action[2], 0);  // 20 draws over 4 actions: more than one kind
  EXPECT_GT(per_action[3] + per_action[4], 0);
  EXPECT_TRUE(validate(*a, 8).ok());
}

TEST(FaultSchedule, GenerateRejectsBadOptions) {
  EXPECT_EQ(generate_schedule(1, 0, 1).error().code(), errc::invalid_argument);
  EXPECT_EQ(generate_schedule(1, 2, -1).error().code(), errc::invalid_argument);
  schedule_options no_actions;
  no_actions.actions.clear();
  EXPECT_EQ(generate_schedule(1, 2, 1, no_actions).error().code(), errc::invalid_argument);
  schedule_options bad_delay;
  bad_delay.min_delay = 10ms;
  bad_delay.max_delay = 5ms;
  EXPECT_EQ(generate_schedule(1, 2, 1, bad_delay).error().code(), errc::invalid_argument);
  EXPECT_TRUE(generate_schedule(1, 2, 0).has_value());
}

TEST(FaultSchedule, BytesRoundTripThroughTheProto) {
  fault_spec delay = spec(fault_action::delay, 3, call_kind::all_to_all_v, 4);
  delay.delay = 25ms;
  fault_spec fail = spec(fault_action::fail, std::nullopt, call_kind::recv, 1);
  fail.error = errc::resource_exhausted;
  fail.step = 12;
  fault_spec hang = spec(fault_action::hang, 0, call_kind::any, 2);
  hang.layer = 3;
  const fault_schedule sched = {
      99, 4, {delay, fail, hang, spec(fault_action::crash, 1, call_kind::broadcast, 7)}};
  const std::string bytes = to_bytes(sched);
  auto back = parse_schedule(bytes);
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  EXPECT_EQ(*back, sched);
  EXPECT_EQ(to_bytes(*back), bytes);

  // The bytes are a plain FaultSchedule for any other reader.
  proto_v1::FaultSchedule m;
  ASSERT_TRUE(m.ParseFromString(bytes));
  EXPECT_EQ(m.seed(), 99u);
  ASSERT_EQ(m.faults_size(), 4);
  EXPECT_EQ(m.faults(0).action(), proto_v1::FAULT_ACTION_DELAY);
  EXPECT_EQ(m.faults(0).kind(), proto_v1::CALL_KIND_ALL_TO_ALL_V);
  EXPECT_EQ(m.faults(0).delay_ms(), 25);
  EXPECT_FALSE(m.faults(1).has_rank());
  EXPECT_EQ(m.faults(1).error_code(), proto_v1::STATUS_CODE_RESOURCE_EXHAUSTED);
  EXPECT_EQ(m.faults(1).step(), 12);
  EXPECT_FALSE(m.faults(2).has_step());
  EXPECT_EQ(m.faults(3).action(), proto_v1::FAULT_ACTION_CRASH);

  // A hand-written FAIL without a code fails with unavailable.
  proto_v1::FaultSchedule hand;
  auto* f = hand.add_faults();
  f->set_action(proto_v1::FAULT_ACTION_FAIL);
  f->set_nth(1);
  auto parsed = parse_schedule(hand.SerializeAsString());
  ASSERT_TRUE(parsed.has_value()) << parsed.error().to_string();
  EXPECT_EQ(parsed->faults[0].error, errc::unavailable);
  EXPECT_FALSE(parsed->faults[0].rank.has_value());

  EXPECT_EQ(describe(sched.faults[1]), "FAIL every rank recv #1 step 12 resource_exhausted");
}

TEST(FaultSchedule, InvalidSchedulesAreRejected) {
  EXPECT_EQ(parse_schedule("\xff\xff\xff").error().code(), errc::invalid_argument);
  proto_v1::FaultSchedule m;
  m.add_faults()->set_nth(1);  // no action
  EXPECT_EQ(parse_schedule(m.SerializeAsString()).error().code(), errc::invalid_argument);
  m.mutable_faults(0)->set_action(proto_v1::FAULT_ACTION_HANG);
  m.mutable_faults(0)->set_nth(0);
  EXPECT_EQ(parse_schedule(m.SerializeAsString()).error().code(), errc::invalid_argument);

  const fault_schedule wrong_rank = {0, 0, {spec(fault_action::fail, 4, call_kind::any, 1)}};
  EXPECT_TRUE(validate(wrong_rank).ok());  // no world size to check against
  const status st = validate(wrong_rank, 4);
  EXPECT_EQ(st.code(), errc::invalid_argument);
  EXPECT_NE(st.message().find("rank 4"), std::string::npos) << st.message();
  auto inner = make_local_fabric(4);
  ASSERT_TRUE(inner.has_value());
  EXPECT_EQ(make_fault_fabric(std::move(inner).value(), wrong_rank).error().code(),
            errc::invalid_argument);
  const fault_schedule other_world = {0, 8, {}};
  EXPECT_EQ(validate(other_world, 4).code(), errc::invalid_argument);
}

}  // namespace
}  // namespace helix::transport::fault
