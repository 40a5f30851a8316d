// The UCX fabric allocates nothing per call once a communicator is warm: the decode step's calls
// at decode sizes, and a larger all_reduce / all_to_all that takes the one-copy path. Ranks are
// forked processes (fork_ranks); each counts every allocation of its process, on all its threads
// (the progress thread does most of the work), over 100 rounds after 20 warm-up rounds, and
// reports the count (counting_new.hpp: this binary replaces the global operator new).
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "tests/transport_alloc/counting_new.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::transport {
namespace {

using namespace std::chrono_literals;

// Element counts of the decode-sized calls (f32: 1, 4, 16 and 64 KiB) and of the large one
// (512 KiB: at 2 and 4 ranks every peer's share is past one_copy_min_bytes).
constexpr std::size_t decode_counts[] = {256, 1024, 4096, 16384};
constexpr std::size_t large_count = 128 * 1024;

struct round_buffers {
  explicit round_buffers(std::size_t n)
      : ones(large_count, 1.f),
        sum(large_count),
        inplace(large_count),
        a2a_out(large_count),
        gathered(decode_counts[3] * n),
        p2p_out(decode_counts[3], 2.f),
        p2p_in(decode_counts[3]) {}
  std::vector<float> ones, sum, inplace, a2a_out, gathered, p2p_out, p2p_in;
};

std::span<float> first(std::vector<float>& v, std::size_t count) {
  return std::span<float>(v).first(count);
}
std::span<const float> cfirst(const std::vector<float>& v, std::size_t count) {
  return std::span<const float>(v).first(count);
}

void check(const status& st, const char* what) {
  HELIX_CHECK(st.ok(), "{}: {}", what, st.to_string());
}

// One decode step's worth of every call the decode path makes, blocking and non-blocking, with
// two calls in flight at once, and point-to-point pairs around the ring.
void one_round(communicator& comm, round_buffers& b) {
  const auto n = static_cast<std::size_t>(comm.size());
  const float fn = static_cast<float>(n);
  for (const std::size_t c : decode_counts) {
    check(comm.all_reduce(as_send(cfirst(b.ones, c)), as_recv(first(b.sum, c))), "all_reduce");
    HELIX_CHECK(b.sum[c - 1] == fn, "all_reduce sum {}", b.sum[c - 1]);
    std::fill_n(b.inplace.begin(), c, 1.f);
    request r = comm.iall_reduce(as_send(cfirst(b.inplace, c)), as_recv(first(b.inplace, c)));
    request g = comm.iall_gather(as_send(cfirst(b.ones, c / n)), as_recv(first(b.gathered, c)));
    check(r.wait(), "iall_reduce in place");
    check(g.wait(), "iall_gather");
    HELIX_CHECK(b.inplace[0] == fn, "in-place all_reduce sum {}", b.inplace[0]);
    check(comm.all_to_all(as_send(cfirst(b.ones, c)), as_recv(first(b.a2a_out, c))), "all_to_all");
    check(comm.all_to_all(as_send(cfirst(b.inplace, c)), as_recv(first(b.inplace, c))),
          "in-place all_to_all");
    check(comm.all_gather(as_send(cfirst(b.ones, c)), as_recv(first(b.gathered, c * n))),
          "all_gather");
    check(comm.broadcast(as_recv(first(b.sum, c)), 0), "broadcast");
  }
  check(comm.all_reduce(as_send(cfirst(b.ones, large_count)), as_recv(first(b.sum, large_count))),
        "large all_reduce");
  request a = comm.iall_to_all(as_send(cfirst(b.ones, large_count)),
                               as_recv(first(b.a2a_out, large_count)));
  check(a.wait(), "large iall_to_all");
  check(comm.barrier(), "barrier");
  const int right = (comm.rank() + 1) % comm.size();
  const int left = (comm.rank() + comm.size() - 1) % comm.size();
  for (const std::size_t c : {decode_counts[1], decode_counts[3]}) {  // eager and one copy
    request in = comm.irecv(as_recv(first(b.p2p_in, c)), left, 7);
    request out = comm.isend(as_send(cfirst(b.p2p_out, c)), right, 7);
    check(out.wait(), "isend");
    check(in.wait(), "irecv");
    HELIX_CHECK(b.p2p_in[c - 1] == 2.f, "received {}", b.p2p_in[c - 1]);
  }
}

fork_ranks_options ranks(int n) {
  fork_ranks_options o;
  o.fabric.world_size = n;
  o.fabric.default_timeout = 30s;  // deadlines on, as in the engine
  o.timeout = 120s;
  return o;
}

// Every rank's count of allocations over 100 warm rounds.
void expect_no_allocations(int n) {
  const auto outcomes = fork_ranks(ranks(n), [](int rank, ucx_fabric& f) -> expected<std::string> {
    HELIX_ASSIGN_OR_RETURN(auto comm, f.make_world(rank));
    round_buffers b(static_cast<std::size_t>(comm->size()));
    for (int round = 0; round < 20; ++round) one_round(*comm, b);
    test_alloc::count_all_threads(true);
    for (int round = 0; round < 100; ++round) one_round(*comm, b);
    test_alloc::count_all_threads(false);
    // No peer gets past this before every rank stopped counting: what a peer does next (its
    // fork_ranks barrier opens a new group, whose early message this rank holds) is not counted.
    check(comm->barrier(), "closing barrier");
    return std::to_string(test_alloc::all_thread_allocations());
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  ASSERT_EQ(outcomes->size(), static_cast<std::size_t>(n));
  for (const rank_outcome& o : *outcomes) {
    ASSERT_TRUE(o.result.ok()) << "rank " << o.rank << ": " << o.result.to_string();
    EXPECT_EQ(o.text, "0") << "rank " << o.rank << " allocated " << o.text
                           << " times in 100 warm rounds";
  }
}

TEST(UcxFabric, WarmCallsAllocateNothingAtTwoRanks) {
  expect_no_allocations(2);
}

TEST(UcxFabric, WarmCallsAllocateNothingAtFourRanks) {
  expect_no_allocations(4);
}

// The counter itself works: it sees another thread's allocations, and a fresh communicator's
// first calls (group creation, pools filling up, on the caller's and the progress thread) are
// seen allocating.
TEST(UcxFabric, ColdCallsAreCountedAllocating) {
  test_alloc::count_all_threads(true);
  const long before = test_alloc::all_thread_allocations();
  std::thread([] { std::vector<int> v(16); }).join();
  test_alloc::count_all_threads(false);
  EXPECT_GT(test_alloc::all_thread_allocations(), before);

  const auto outcomes = fork_ranks(ranks(2), [](int rank, ucx_fabric& f) -> expected<std::string> {
    const long start = test_alloc::all_thread_allocations();
    test_alloc::count_all_threads(true);
    HELIX_ASSIGN_OR_RETURN(auto comm, f.make_world(rank));
    round_buffers b(static_cast<std::size_t>(comm->size()));
    one_round(*comm, b);
    test_alloc::count_all_threads(false);
    return std::to_string(test_alloc::all_thread_allocations() - start);
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  for (const rank_outcome& o : *outcomes) {
    ASSERT_TRUE(o.result.ok()) << "rank " << o.rank << ": " << o.result.to_string();
    EXPECT_GT(std::stol(o.text), 0) << "rank " << o.rank;
  }
}

}  // namespace
}  // namespace helix::transport
