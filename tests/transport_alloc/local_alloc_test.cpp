// The local fabric allocates nothing per call once a group is warm (issue 13: collectives without
// waste). Each rank thread counts its own allocations (counting_new.hpp: this binary replaces the
// global operator new; it is its own executable so that no other test runs with the
// replacement).
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/transport_alloc/counting_new.hpp"
#include "transport/transport.hpp"

namespace helix::transport {
namespace {

using namespace std::chrono_literals;

// One round of every collective the decode step uses (small, and large enough to be moved in
// shares by every waiting rank), blocking and non-blocking.
void one_round(communicator& comm, std::vector<float>& small, std::vector<float>& large,
               std::vector<float>& a2a_out, std::vector<float>& gathered) {
  const auto n = static_cast<std::size_t>(comm.size());
  HELIX_CHECK(
      comm.all_reduce(as_send(std::span<const float>(small)), as_recv(std::span<float>(small)))
          .ok(),
      "all_reduce");
  HELIX_CHECK(
      comm.all_reduce(as_send(std::span<const float>(large)), as_recv(std::span<float>(large)))
          .ok(),
      "large all_reduce");
  request r =
      comm.iall_to_all(as_send(std::span<const float>(large)), as_recv(std::span<float>(a2a_out)));
  HELIX_CHECK(r.wait().ok(), "iall_to_all");
  HELIX_CHECK(
      comm.all_to_all(as_send(std::span<const float>(small)), as_recv(std::span<float>(small)))
          .ok(),
      "in-place all_to_all");
  HELIX_CHECK(comm.all_gather(as_send(std::span<const float>(small.data(), small.size() / n)),
                              as_recv(std::span<float>(gathered)))
                  .ok(),
              "all_gather");
  HELIX_CHECK(comm.broadcast(as_recv(std::span<float>(small)), 0).ok(), "broadcast");
  HELIX_CHECK(comm.barrier().ok(), "barrier");
}

TEST(LocalFabric, WarmCollectivesAllocateNothingPerCall) {
  constexpr int ranks = 4;
  local_fabric_options o;
  o.world_size = ranks;
  o.default_timeout = 30s;  // deadlines on, as in the engine
  auto fab = make_local_fabric(o);
  ASSERT_TRUE(fab.has_value()) << fab.error().to_string();
  std::vector<long> counted(ranks, -1);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < ranks; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = (*fab)->make_world(rank);
      HELIX_CHECK(comm.has_value(), "make_world");
      std::vector<float> small(1024, 1.f), large(128 * 1024, 0.5f);  // 4 KiB, 512 KiB
      std::vector<float> a2a_out(large.size()), gathered(small.size());
      for (int round = 0; round < 20; ++round) one_round(**comm, small, large, a2a_out, gathered);
      test_alloc::count_this_thread(true);
      for (int round = 0; round < 100; ++round) one_round(**comm, small, large, a2a_out, gathered);
      test_alloc::count_this_thread(false);
      counted[static_cast<std::size_t>(rank)] = test_alloc::this_thread_allocations();
    });
  }
  for (auto& t : threads) t.join();
  for (int rank = 0; rank < ranks; ++rank) {
    EXPECT_EQ(counted[static_cast<std::size_t>(rank)], 0) << "rank " << rank;
  }
}

// The counter itself works: a call that has to take an extra slot (more calls outstanding than
// the ring holds) is seen allocating.
TEST(LocalFabric, CallsBeyondTheRingAreCountedAllocating) {
  local_fabric_options o;
  o.world_size = 2;
  auto fab = make_local_fabric(o);
  ASSERT_TRUE(fab.has_value()) << fab.error().to_string();
  std::vector<long> counted(2, -1);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      auto comm = (*fab)->make_world(rank);
      HELIX_CHECK(comm.has_value(), "make_world");
      std::vector<std::vector<float>> bufs(24, std::vector<float>(16, 1.f));
      std::vector<request> reqs;
      reqs.reserve(bufs.size());
      for (int round = 0; round < 2; ++round) {  // the first round fills the request pool
        test_alloc::count_this_thread(round == 1);
        for (auto& b : bufs) {
          reqs.push_back(comm.value()->iall_reduce(as_send(std::span<const float>(b)),
                                                   as_recv(std::span<float>(b))));
        }
        test_alloc::count_this_thread(false);
        for (auto& r : reqs) HELIX_CHECK(r.wait().ok(), "iall_reduce");
        reqs.clear();
      }
      for (auto& b : bufs) HELIX_CHECK(b[0] == 4.f, "sum");
      counted[static_cast<std::size_t>(rank)] = test_alloc::this_thread_allocations();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_GT(counted[0] + counted[1], 0);
}

}  // namespace
}  // namespace helix::transport
