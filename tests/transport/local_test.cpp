// Tests of the local transport backend: 8 ranks as 8 std::threads of this process.
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "transport/transport.hpp"

namespace helix::transport {
namespace {

using namespace std::chrono_literals;
constexpr int num_ranks = 8;

std::unique_ptr<fabric> new_fabric(int n = num_ranks) {
  auto f = make_local_fabric(n);
  HELIX_CHECK(f.has_value(), "{}", f.error().to_string());
  return std::move(f).value();
}

std::unique_ptr<communicator> world_comm(fabric& f, int rank) {
  auto c = f.make_world(rank);
  HELIX_CHECK(c.has_value(), "{}", c.error().to_string());
  return std::move(c).value();
}

// Runs body(global_rank) on one thread per rank and joins them.
void run_ranks(int n, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
}

std::span<float> f32(std::vector<float>& v) {
  return v;
}
std::span<const float> cf32(const std::vector<float>& v) {
  return v;
}

TEST(LocalTransport, AllToAllEqualSplits) {
  auto fab = new_fabric();
  constexpr std::size_t c = 3;
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    std::vector<float> send(num_ranks * c), recv(num_ranks * c, -1.f);
    for (std::size_t j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < c; ++k)
        send[j * c + k] = static_cast<float>(rank * 1000 + j * 10 + k);
    ASSERT_TRUE(comm->all_to_all(as_send(cf32(send)), as_recv(f32(recv))).ok());
    for (std::size_t j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < c; ++k)
        EXPECT_EQ(recv[j * c + k], static_cast<float>(j * 1000 + rank * 10 + k)) << rank;
  });
}

TEST(LocalTransport, AllToAllVariableSplitsWithZeroSizePeers) {
  auto fab = new_fabric();
  // Rank i sends (2i + j) % 4 elements to rank j: zero for some pairs, and not symmetric.
  auto count = [](int from, int to) { return static_cast<std::size_t>((2 * from + to) % 4); };
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    std::vector<std::size_t> sc(num_ranks), so(num_ranks), rc(num_ranks), ro(num_ranks);
    std::size_t st = 0, rt = 0;
    for (int j = 0; j < num_ranks; ++j) {
      sc[j] = count(rank, j);
      so[j] = st;
      st += sc[j];
      rc[j] = count(j, rank);
      ro[j] = rt;
      rt += rc[j];
    }
    std::vector<std::int32_t> send(st), recv(rt, -1);
    for (int j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < sc[j]; ++k)
        send[so[j] + k] = rank * 1000 + j * 10 + static_cast<int>(k);
    all_to_all_v_args args{as_send(std::span<const std::int32_t>(send)), sc, so,
                           as_recv(std::span<std::int32_t>(recv)),       rc, ro};
    ASSERT_TRUE(comm->all_to_all_v(args).ok());
    for (int j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < rc[j]; ++k)
        EXPECT_EQ(recv[ro[j] + k], j * 1000 + rank * 10 + static_cast<int>(k));
  });
}

// Inputs where the summation order changes the result, so "rank order" is actually tested.
float reduce_input(int rank, std::size_t i) {
  const float mags[] = {1e8f, 1.f, -1e8f, 3.14159f, 1e-3f, -2.5f, 7e7f, 0.1f};
  return mags[(static_cast<std::size_t>(rank) + i) % 8] *
         (1.f + 0.01f * static_cast<float>(i % 13));
}

TEST(LocalTransport, AllReduceIsRankOrderedAndBitIdentical) {
  auto fab = new_fabric();
  constexpr std::size_t n = 1500;  // more than one internal block
  std::vector<float> expect(n);
  for (std::size_t i = 0; i < n; ++i) {
    float s = reduce_input(0, i);
    for (int r = 1; r < num_ranks; ++r) s += reduce_input(r, i);
    expect[i] = s;
  }
  std::vector<std::vector<float>> results(num_ranks), in_place(num_ranks);
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    std::vector<float> send(n);
    for (std::size_t i = 0; i < n; ++i) send[i] = reduce_input(rank, i);
    results[rank].assign(n, 0.f);
    ASSERT_TRUE(comm->all_reduce(as_send(cf32(send)), as_recv(f32(results[rank]))).ok());
    in_place[rank] = send;
    ASSERT_TRUE(comm->all_reduce(as_send(cf32(in_place[rank])), as_recv(f32(in_place[rank]))).ok());
  });
  for (int r = 0; r < num_ranks; ++r) {
    EXPECT_EQ(0, std::memcmp(results[r].data(), expect.data(), n * sizeof(float))) << r;
    EXPECT_EQ(0, std::memcmp(in_place[r].data(), expect.data(), n * sizeof(float))) << r;
  }
}

TEST(LocalTransport, AllGatherAndBroadcast) {
  auto fab = new_fabric();
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    std::vector<float> send = {static_cast<float>(rank), static_cast<float>(rank * 10)};
    std::vector<float> recv(2 * num_ranks, -1.f);
    ASSERT_TRUE(comm->all_gather(as_send(cf32(send)), as_recv(f32(recv))).ok());
    for (int j = 0; j < num_ranks; ++j) {
      EXPECT_EQ(recv[2 * j], static_cast<float>(j));
      EXPECT_EQ(recv[2 * j + 1], static_cast<float>(j * 10));
    }
    std::vector<std::byte> buf(5, std::byte{0});
    if (rank == 3) buf = {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}, std::byte{5}};
    ASSERT_TRUE(comm->broadcast(recv_buf{buf.data(), buf.size(), wire_type::bytes}, 3).ok());
    for (int k = 0; k < 5; ++k) EXPECT_EQ(buf[k], std::byte(k + 1)) << rank;
  });
}

TEST(LocalTransport, BarrierSeparatesPhases) {
  auto fab = new_fabric();
  std::atomic<int> arrived{0};
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    for (int phase = 1; phase <= 20; ++phase) {
      if ((rank + phase) % 5 == 0) std::this_thread::sleep_for(1ms);
      arrived.fetch_add(1);
      ASSERT_TRUE(comm->barrier().ok());
      EXPECT_GE(arrived.load(), phase * num_ranks) << "rank " << rank << " left barrier early";
      ASSERT_TRUE(comm->barrier().ok());  // nobody starts the next phase before all checked
    }
  });
}

TEST(LocalTransport, SendRecvTagsOutOfOrderAndFifoPerTag) {
  auto fab = new_fabric();
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    const int to = (rank + 1) % num_ranks;
    const int from = (rank + num_ranks - 1) % num_ranks;
    std::vector<float> a = {static_cast<float>(rank)}, b = {static_cast<float>(rank + 100)};
    std::vector<float> c1 = {1.f, 2.f}, c2 = {3.f, 4.f};
    request ra = comm->isend(as_send(cf32(a)), to, /*tag=*/1);
    request rb = comm->isend(as_send(cf32(b)), to, /*tag=*/2);
    request rc1 = comm->isend(as_send(cf32(c1)), to, /*tag=*/7);
    request rc2 = comm->isend(as_send(cf32(c2)), to, /*tag=*/7);
    std::vector<float> got_b(1), got_a(1), got_c(2);
    ASSERT_TRUE(comm->recv(as_recv(f32(got_b)), from, 2).ok());  // tag 2 before tag 1
    ASSERT_TRUE(comm->recv(as_recv(f32(got_a)), from, 1).ok());
    EXPECT_EQ(got_a[0], static_cast<float>(from));
    EXPECT_EQ(got_b[0], static_cast<float>(from + 100));
    ASSERT_TRUE(comm->recv(as_recv(f32(got_c)), from, 7).ok());
    EXPECT_EQ(got_c, (std::vector<float>{1.f, 2.f}));  // same tag: post order
    ASSERT_TRUE(comm->recv(as_recv(f32(got_c)), from, 7).ok());
    EXPECT_EQ(got_c, (std::vector<float>{3.f, 4.f}));
    for (request* r : {&ra, &rb, &rc1, &rc2}) EXPECT_TRUE(r->wait().ok());
    // Size mismatch: both sides get invalid_argument.
    std::vector<float> three(3), two(2);
    request bad = comm->isend(as_send(cf32(three)), to, 9);
    status rs = comm->recv(as_recv(f32(two)), from, 9);
    EXPECT_EQ(rs.code(), errc::invalid_argument) << rs.to_string();
    EXPECT_EQ(bad.wait().code(), errc::invalid_argument);
  });
}

TEST(LocalTransport, DisjointSubgroupsRunConcurrently) {
  auto fab = new_fabric();
  const std::vector<int> even = {0, 2, 4, 6}, odd = {7, 5, 3, 1};  // odd listed in reverse
  run_ranks(num_ranks, [&](int rank) {
    const auto& members = rank % 2 == 0 ? even : odd;
    auto made = fab->make_communicator(rank, members);
    ASSERT_TRUE(made.has_value()) << made.error().to_string();
    auto& comm = *made;
    ASSERT_EQ(comm->size(), 4);
    EXPECT_EQ(comm->global_ranks()[static_cast<std::size_t>(comm->rank())], rank);
    for (int it = 0; it < 200; ++it) {
      std::vector<float> v = {static_cast<float>(rank + it)};
      ASSERT_TRUE(comm->all_reduce(as_send(cf32(v)), as_recv(f32(v))).ok());
      float expect = 0;
      for (int m : members) expect += static_cast<float>(m + it);
      ASSERT_EQ(v[0], expect);
      std::vector<float> send(4), recv(4);
      for (int j = 0; j < 4; ++j) send[j] = static_cast<float>(rank * 100 + j + it);
      ASSERT_TRUE(comm->all_to_all(as_send(cf32(send)), as_recv(f32(recv))).ok());
      for (int j = 0; j < 4; ++j) {
        ASSERT_EQ(recv[j], static_cast<float>(members[j] * 100 + comm->rank() + it));
      }
    }
  });
}

TEST(LocalTransport, ThousandConsecutiveSmallCollectivesDoNotMix) {
  auto fab = new_fabric();
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    for (int it = 0; it < 1000; ++it) {
      // Alternate kinds and sizes; a rank running ahead must not feed the next call's data.
      if (it % 2 == 0) {
        std::vector<float> v = {static_cast<float>(it * (rank + 1))};
        ASSERT_TRUE(comm->all_reduce(as_send(cf32(v)), as_recv(f32(v))).ok());
        ASSERT_EQ(v[0], static_cast<float>(it * 36));
      } else {
        std::vector<float> s = {static_cast<float>(it + rank)}, r(num_ranks);
        ASSERT_TRUE(comm->all_gather(as_send(cf32(s)), as_recv(f32(r))).ok());
        for (int j = 0; j < num_ranks; ++j) {
          ASSERT_EQ(r[j], static_cast<float>(it + j));
        }
      }
    }
  });
}

TEST(LocalTransport, NonBlockingAllToAllOverlapsCompute) {
  auto fab = new_fabric();
  std::atomic<bool> rank0_checked{false};
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    if (rank == num_ranks - 1) {  // the last peer posts only after rank 0 saw its call pending
      while (!rank0_checked.load()) std::this_thread::sleep_for(1ms);
    }
    std::vector<float> send(num_ranks), recv(num_ranks, -1.f);
    for (int j = 0; j < num_ranks; ++j) send[j] = static_cast<float>(rank * 10 + j);
    request req = comm->iall_to_all(as_send(cf32(send)), as_recv(f32(recv)));
    if (rank == 0) {
      EXPECT_FALSE(req.test()) << "completed before the late peer posted";
      rank0_checked.store(true);
    }
    // Compute while the exchange is in flight.
    double acc = 0;
    for (int i = 0; i < 200000; ++i) acc += static_cast<double>(i % 7) * 0.5;
    EXPECT_GT(acc, 0.0);
    // Completion does not need this rank's wait(): once all posted, test() turns true.
    const auto until = std::chrono::steady_clock::now() + 2s;
    while (!req.test() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(1ms);
    EXPECT_TRUE(req.test());
    ASSERT_TRUE(req.wait().ok());
    for (int j = 0; j < num_ranks; ++j) EXPECT_EQ(recv[j], static_cast<float>(j * 10 + rank));
  });
}

TEST(LocalTransport, MismatchedArgumentsFailOnEveryRankAndStayInStep) {
  auto fab = new_fabric();
  run_ranks(num_ranks, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    std::vector<float> v(rank == 5 ? 3 : 4, 1.f);
    status st = comm->all_reduce(as_send(cf32(v)), as_recv(f32(v)));
    EXPECT_EQ(st.code(), errc::invalid_argument) << rank << ": " << st.to_string();
    EXPECT_NE(st.message().find("rank 5"), std::string::npos) << st.message();
    // A local argument error (indivisible count) on one rank also fails every rank.
    std::vector<float> s(rank == 2 ? 9 : 8), r(s.size());
    st = comm->all_to_all(as_send(cf32(s)), as_recv(f32(r)));
    EXPECT_EQ(st.code(), errc::invalid_argument) << rank << ": " << st.to_string();
    // Different collectives at the same point.
    st = rank == 0 ? comm->barrier() : comm->broadcast(as_recv(f32(v)), 0);
    EXPECT_EQ(st.code(), errc::invalid_argument) << rank << ": " << st.to_string();
    // The group is still usable.
    std::vector<float> one = {1.f};
    ASSERT_TRUE(comm->all_reduce(as_send(cf32(one)), as_recv(f32(one))).ok());
    EXPECT_EQ(one[0], static_cast<float>(num_ranks));
  });
}

TEST(LocalTransport, AbortWakesBlockedRanks) {
  auto fab = new_fabric();
  std::vector<status> got(num_ranks);
  std::thread aborter([&] {
    std::this_thread::sleep_for(50ms);
    fab->abort(make_error(errc::unavailable, "rank 7 failed"));
  });
  run_ranks(num_ranks - 1, [&](int rank) {
    auto comm = world_comm(*fab, rank);
    got[rank] = comm->barrier();
  });
  aborter.join();
  for (int r = 0; r < num_ranks - 1; ++r) {
    EXPECT_EQ(got[r].code(), errc::unavailable) << got[r].to_string();
    EXPECT_EQ(got[r].message(), "rank 7 failed");
  }
  EXPECT_EQ(fab->abort_status().code(), errc::unavailable);
  EXPECT_EQ(fab->make_world(0).error().code(), errc::unavailable);  // no new groups after abort
}

TEST(LocalTransport, TimeoutGivesDeadlineExceeded) {
  auto fab = new_fabric(2);
  auto c0 = world_comm(*fab, 0);
  auto c1 = world_comm(*fab, 1);
  call_options opts;
  opts.timeout = 30ms;
  status st = c0->barrier(opts);
  EXPECT_EQ(st.code(), errc::deadline_exceeded) << st.to_string();
  EXPECT_NE(st.message().find("[1]"), std::string::npos) << st.message();
  // The late rank finds the call failed instead of hanging.
  EXPECT_EQ(c1->barrier().code(), errc::deadline_exceeded);
  std::vector<float> x(1);
  EXPECT_EQ(c0->recv(as_recv(f32(x)), 1, 0, opts).code(), errc::deadline_exceeded);
}

TEST(LocalTransport, RecreatedGroupIsAnIndependentInstance) {
  auto fab = new_fabric();
  run_ranks(num_ranks, [&](int rank) {
    auto first = world_comm(*fab, rank);
    auto second = world_comm(*fab, rank);  // k-th creation on every rank -> k-th instance
    std::vector<float> a = {1.f}, b = {static_cast<float>(rank)};
    // Half the ranks post on the second instance first: instances must not share sequencing.
    request ra, rb;
    if (rank % 2 == 0) {
      rb = second->iall_reduce(as_send(cf32(b)), as_recv(f32(b)));
      ra = first->iall_reduce(as_send(cf32(a)), as_recv(f32(a)));
    } else {
      ra = first->iall_reduce(as_send(cf32(a)), as_recv(f32(a)));
      rb = second->iall_reduce(as_send(cf32(b)), as_recv(f32(b)));
    }
    ASSERT_TRUE(ra.wait().ok());
    ASSERT_TRUE(rb.wait().ok());
    EXPECT_EQ(a[0], static_cast<float>(num_ranks));
    EXPECT_EQ(b[0], 28.f);  // 0 + 1 + ... + 7
  });
}

TEST(LocalTransport, GroupOfSizeOne) {
  auto fab = new_fabric();
  const std::vector<int> solo = {5};
  auto made = fab->make_communicator(5, solo);
  ASSERT_TRUE(made.has_value());
  auto& comm = *made;
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->size(), 1);
  std::vector<float> a = {1.f, 2.f}, b(2);
  EXPECT_TRUE(comm->all_reduce(as_send(cf32(a)), as_recv(f32(b))).ok());
  EXPECT_EQ(a, b);
  EXPECT_TRUE(comm->all_to_all(as_send(cf32(a)), as_recv(f32(b))).ok());
  EXPECT_TRUE(comm->all_gather(as_send(cf32(a)), as_recv(f32(b))).ok());
  EXPECT_TRUE(comm->broadcast(as_recv(f32(b)), 0).ok());
  EXPECT_TRUE(comm->barrier().ok());
  EXPECT_EQ(b, a);
}

TEST(LocalTransport, BadGroupsAreRejected) {
  auto fab = new_fabric();
  const std::vector<int> dup = {1, 1}, outside = {0, 8}, others = {1, 2};
  EXPECT_EQ(fab->make_communicator(1, dup).error().code(), errc::invalid_argument);
  EXPECT_EQ(fab->make_communicator(0, outside).error().code(), errc::invalid_argument);
  EXPECT_EQ(fab->make_communicator(0, others).error().code(), errc::invalid_argument);
  EXPECT_EQ(make_local_fabric(0).error().code(), errc::invalid_argument);
}

double process_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

TEST(LocalTransport, BlockedWaitsDoNotSpin) {
  auto fab = new_fabric();
  std::vector<std::unique_ptr<communicator>> comms;
  for (int r = 0; r < num_ranks; ++r) comms.push_back(world_comm(*fab, r));
  std::atomic<int> ready{0};
  double cpu0 = 0, cpu1 = 0;
  std::chrono::steady_clock::time_point t0, t1;
  run_ranks(num_ranks, [&](int rank) {
    if (rank == num_ranks - 1) {
      while (ready.load() < num_ranks - 1) std::this_thread::sleep_for(1ms);
      std::this_thread::sleep_for(5ms);  // let the others reach their wait
      t0 = std::chrono::steady_clock::now();
      cpu0 = process_cpu_seconds();
      std::this_thread::sleep_for(200ms);  // seven ranks are blocked meanwhile
      cpu1 = process_cpu_seconds();
      t1 = std::chrono::steady_clock::now();
    } else {
      ready.fetch_add(1);
    }
    EXPECT_TRUE(comms[rank]->barrier().ok());
  });
  const double wall = std::chrono::duration<double>(t1 - t0).count();
  const double cpu = cpu1 - cpu0;
  // Spinning would cost ~7 x wall (or 2 x wall on two cores); blocking costs ~0.
  EXPECT_LT(cpu, 0.2 * wall) << "cpu " << cpu << " s over wall " << wall << " s";
}

}  // namespace
}  // namespace helix::transport
