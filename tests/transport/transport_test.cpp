// The transport test suite, run against every host backend: `local` (8 ranks as 8 threads of
// this process, one fabric), `ucx` (8 ranks as 8 forked processes, one UCX fabric each,
// connected through fork_ranks; messages of 16 KiB and more are read by the receiver from the
// sender's memory, one copy) and `ucx_two_copy` (the same with one copy off: every byte through
// UCX, as between hosts or where process_vm_readv is not permitted). Rank bodies use GoogleTest
// assertions; a forked rank reports its failures by its exit status, which the parent checks.
// State the ranks share lives in MAP_SHARED memory so it is shared by threads and processes
// alike.
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <new>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "transport/transport.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::transport {
namespace {

using namespace std::chrono_literals;
constexpr int num_ranks = 8;

enum class backend { local, ucx, ucx_two_copy };

std::string backend_name(const testing::TestParamInfo<backend>& info) {
  switch (info.param) {
    case backend::local:
      return "local";
    case backend::ucx:
      return "ucx";
    case backend::ucx_two_copy:
      return "ucx_two_copy";
  }
  return "?";
}

// An object in memory shared with forked ranks (placement-new in an anonymous shared mapping).
template <class T>
class shared {
 public:
  shared() {
    void* p = mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    HELIX_CHECK(p != MAP_FAILED, "mmap failed");
    ptr_ = new (p) T();
  }
  ~shared() {
    ptr_->~T();
    munmap(ptr_, sizeof(T));
  }
  shared(const shared&) = delete;
  shared& operator=(const shared&) = delete;
  T& operator*() const { return *ptr_; }
  T* operator->() const { return ptr_; }

 private:
  T* ptr_;
};

std::unique_ptr<communicator> world_comm(fabric& f, int rank) {
  auto c = f.make_world(rank);
  HELIX_CHECK(c.has_value(), "{}", c.error().to_string());
  return std::move(c).value();
}

class Transport : public testing::TestWithParam<backend> {
 protected:
  // Runs body(global_rank, fabric) on n ranks and checks that every rank passed. `timeout`
  // bounds a forked run; `expect_ok(rank)` says which ranks must end cleanly.
  void run_ranks(int n, const std::function<void(int, fabric&)>& body,
                 std::chrono::milliseconds default_timeout = 0ms,
                 const std::function<bool(int)>& expect_ok = {}) {
    if (GetParam() == backend::local) {
      local_fabric_options o;
      o.world_size = n;
      o.default_timeout = default_timeout;
      auto f = make_local_fabric(o);
      ASSERT_TRUE(f.has_value()) << f.error().to_string();
      std::vector<std::thread> threads;
      for (int r = 0; r < n; ++r) threads.emplace_back(body, r, std::ref(**f));
      for (auto& t : threads) t.join();
      return;
    }
    fork_ranks_options o;
    o.fabric.world_size = n;
    o.fabric.default_timeout = default_timeout;
    o.fabric.one_copy = GetParam() == backend::ucx;
    o.timeout = 60s;
    auto outcomes = fork_ranks(o, [&](int rank, ucx_fabric& f) -> expected<std::string> {
      body(rank, f);
      if (testing::Test::HasFailure()) return make_error(errc::internal, "assertions failed");
      return std::string("ok");
    });
    ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
    for (const auto& o2 : *outcomes) {
      if (expect_ok && !expect_ok(o2.rank)) continue;
      EXPECT_TRUE(o2.result.ok()) << "rank " << o2.rank << ": " << o2.result.to_string();
    }
  }
};

#define ASSERT_OK(expr)                                         \
  do {                                                          \
    const status assert_ok_st = (expr);                         \
    ASSERT_TRUE(assert_ok_st.ok()) << assert_ok_st.to_string(); \
  } while (false)

std::span<float> f32(std::vector<float>& v) {
  return v;
}
std::span<const float> cf32(const std::vector<float>& v) {
  return v;
}

TEST_P(Transport, AllToAllEqualSplits) {
  constexpr std::size_t c = 3;
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    std::vector<float> send(num_ranks * c), recv(num_ranks * c, -1.f);
    for (std::size_t j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < c; ++k)
        send[j * c + k] = static_cast<float>(rank * 1000 + j * 10 + k);
    ASSERT_OK(comm->all_to_all(as_send(cf32(send)), as_recv(f32(recv))));
    for (std::size_t j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < c; ++k)
        EXPECT_EQ(recv[j * c + k], static_cast<float>(j * 1000 + rank * 10 + k)) << rank;
  });
}

// One rank's all_to_all_v arguments when rank i sends count(i, j) elements to rank j, packed
// from `first_send` and `first_recv`; send_end and recv_end are the buffer sizes they need.
struct v_layout {
  std::vector<std::size_t> sc, so, rc, ro;
  std::size_t send_end = 0, recv_end = 0;
};

v_layout layout_of(int rank, const std::function<std::size_t(int, int)>& count,
                   std::size_t first_send = 0, std::size_t first_recv = 0) {
  v_layout l{std::vector<std::size_t>(num_ranks),
             std::vector<std::size_t>(num_ranks),
             std::vector<std::size_t>(num_ranks),
             std::vector<std::size_t>(num_ranks),
             first_send,
             first_recv};
  for (int j = 0; j < num_ranks; ++j) {
    l.sc[j] = count(rank, j);
    l.so[j] = l.send_end;
    l.send_end += l.sc[j];
    l.rc[j] = count(j, rank);
    l.ro[j] = l.recv_end;
    l.recv_end += l.rc[j];
  }
  return l;
}

TEST_P(Transport, AllToAllVariableSplitsWithZeroSizePeers) {
  // Rank i sends (2i + j) % 4 elements to rank j: zero for some pairs, and not symmetric.
  auto count = [](int from, int to) { return static_cast<std::size_t>((2 * from + to) % 4); };
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    const auto [sc, so, rc, ro, st, rt] = layout_of(rank, count);
    std::vector<std::int32_t> send(st), recv(rt, -1);
    for (int j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < sc[j]; ++k)
        send[so[j] + k] = rank * 1000 + j * 10 + static_cast<int>(k);
    all_to_all_v_args args{as_send(std::span<const std::int32_t>(send)), sc, so,
                           as_recv(std::span<std::int32_t>(recv)),       rc, ro};
    ASSERT_OK(comm->all_to_all_v(args));
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

TEST_P(Transport, AllReduceIsRankOrderedAndBitIdentical) {
  // 1500: more than one internal block (local) and chunks of unequal length (ucx); 300000: a
  // message large enough for UCX's rendezvous protocol.
  for (const std::size_t n : {std::size_t{1500}, std::size_t{300000}}) {
    std::vector<float> expect(n);
    for (std::size_t i = 0; i < n; ++i) {
      float s = reduce_input(0, i);
      for (int r = 1; r < num_ranks; ++r) s += reduce_input(r, i);
      expect[i] = s;
    }
    run_ranks(num_ranks, [&](int rank, fabric& fab) {
      auto comm = world_comm(fab, rank);
      std::vector<float> send(n), result(n, 0.f);
      for (std::size_t i = 0; i < n; ++i) send[i] = reduce_input(rank, i);
      ASSERT_OK(comm->all_reduce(as_send(cf32(send)), as_recv(f32(result))));
      EXPECT_EQ(0, std::memcmp(result.data(), expect.data(), n * sizeof(float))) << rank;
      std::vector<float> in_place = send;
      ASSERT_OK(comm->all_reduce(as_send(cf32(in_place)), as_recv(f32(in_place))));
      EXPECT_EQ(0, std::memcmp(in_place.data(), expect.data(), n * sizeof(float))) << rank;
    });
  }
}

TEST_P(Transport, LargeAllToAllMovesEveryByte) {
  // 1 MiB per peer slice: UCX moves it by rendezvous straight into the receive buffer.
  constexpr std::size_t per_peer = (1u << 20) / sizeof(std::int32_t);
  run_ranks(4, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    std::vector<std::int32_t> send(4 * per_peer), recv(4 * per_peer, -1);
    for (std::size_t j = 0; j < 4; ++j)
      for (std::size_t k = 0; k < per_peer; ++k)
        send[j * per_peer + k] = static_cast<std::int32_t>(rank * 100000000 + j * 1000000 + k);
    ASSERT_OK(comm->all_to_all(as_send(std::span<const std::int32_t>(send)),
                               as_recv(std::span<std::int32_t>(recv))));
    for (std::size_t j = 0; j < 4; ++j)
      for (std::size_t k = 0; k < per_peer; ++k)
        ASSERT_EQ(recv[j * per_peer + k],
                  static_cast<std::int32_t>(j * 100000000 + rank * 1000000 + k))
            << rank;
  });
}

// Uneven splits from nothing to 1.3 MiB per pair, at odd offsets: below and above the one-copy
// threshold (ucx), so descriptors and UCX messages mix in one call. Every byte is checked.
TEST_P(Transport, LargeAllToAllVWithUnevenSizesMovesEveryByte) {
  const auto count = [](int from, int to) -> std::size_t {
    const auto f = static_cast<std::size_t>(from);
    const auto t = static_cast<std::size_t>(to);
    return (f * 5 + t * 3) % 7 * 200003 + (f + t) % 3 * 4099;
  };
  const auto byte_at = [](int from, int to, std::size_t k) {
    return static_cast<std::uint8_t>(from * 131 + to * 71 + k * 13 + (k >> 12));
  };
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    // Odd starts: nothing is page- or word-aligned.
    const auto [sc, so, rc, ro, st, rt] = layout_of(rank, count, 1, 3);
    std::vector<std::uint8_t> send(st), recv(rt, 0xee);
    for (int j = 0; j < num_ranks; ++j)
      for (std::size_t k = 0; k < sc[j]; ++k) send[so[j] + k] = byte_at(rank, j, k);
    for (int round = 0; round < 2; ++round) {  // twice: buffers and slots are reused cleanly
      std::fill(recv.begin(), recv.end(), std::uint8_t{0xee});
      all_to_all_v_args args{send_buf{send.data(), send.size(), wire_type::bytes}, sc, so,
                             recv_buf{recv.data(), recv.size(), wire_type::bytes}, rc, ro};
      ASSERT_OK(comm->all_to_all_v(args));
      std::size_t wrong = 0;
      for (int j = 0; j < num_ranks; ++j)
        for (std::size_t k = 0; k < rc[j]; ++k) wrong += recv[ro[j] + k] != byte_at(j, rank, k);
      EXPECT_EQ(wrong, 0u) << "rank " << rank << " round " << round;
      EXPECT_EQ(recv.front(), 0xee);  // nothing written outside the slices
      EXPECT_EQ(recv[1], 0xee);
    }
    // A large message whose sizes disagree: both sides fail, and stay in step.
    const int to = (rank + 1) % num_ranks;
    const int from = (rank + num_ranks - 1) % num_ranks;
    std::vector<float> big(300000, 1.f), small(299999);
    request bad = comm->isend(as_send(cf32(big)), to, 21);
    EXPECT_EQ(comm->recv(as_recv(f32(small)), from, 21).code(), errc::invalid_argument);
    EXPECT_EQ(bad.wait().code(), errc::invalid_argument);
    ASSERT_OK(comm->barrier());
  });
}

// Fabric buffers mapped in this process (own and peers'), from /proc/self/maps.
int fabric_mappings() {
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (f == nullptr) return -1;
  int n = 0;
  char line[512];
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    n += std::strstr(line, "memfd:helix-fabric-") != nullptr;
  }
  std::fclose(f);
  return n;
}

// In place (send == recv): every rank's slice j ends up as rank j's slice `rank`, its own
// slice untouched. On fabric buffers (ucx: shared memory, the pairs swap directly: this process
// maps its peers' buffers), on plain memory (ucx: staged and sent), for slices that are not a
// whole number of cache lines, small and large (1 MiB per peer), the same buffer twice, and a
// buffer freed and another allocated (peers unmap the old one: nothing stays mapped at the end).
// Nothing outside the buffer is written.
TEST_P(Transport, InPlaceAllToAllMovesEveryByte) {
  const auto value = [](int from, std::size_t slot, std::size_t k) {
    return static_cast<std::int32_t>(from * 100000000 + slot * 1000000 + k);
  };
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    const auto n = static_cast<std::size_t>(num_ranks);
    for (const std::size_t per_peer : {std::size_t{5}, std::size_t{4099}, std::size_t{262144}}) {
      for (const bool shared_buffer : {true, false}) {
        const std::size_t count = n * per_peer;
        std::vector<std::int32_t> plain;
        fabric_buffer fb;
        std::int32_t* buf = nullptr;
        if (shared_buffer) {
          auto got = fab.allocate((count + 1) * sizeof(std::int32_t));
          ASSERT_TRUE(got.has_value()) << got.error().to_string();
          fb = std::move(*got);
          buf = fb.as<std::int32_t>(count + 1).data();
        } else {
          plain.resize(count + 1);
          buf = plain.data();
        }
        for (int round = 0; round < 2; ++round) {
          for (std::size_t j = 0; j < n; ++j)
            for (std::size_t k = 0; k < per_peer; ++k)
              buf[j * per_peer + k] = value(rank, j, k) + static_cast<std::int32_t>(round);
          buf[count] = 0x7eedface;
          const std::span<std::int32_t> all(buf, count);
          ASSERT_OK(comm->all_to_all(as_send(std::span<const std::int32_t>(all)), as_recv(all)));
          std::size_t wrong = 0;
          for (std::size_t j = 0; j < n; ++j)
            for (std::size_t k = 0; k < per_peer; ++k)
              wrong += buf[j * per_peer + k] !=
                       value(static_cast<int>(j), static_cast<std::size_t>(rank), k) +
                           static_cast<std::int32_t>(round);
          EXPECT_EQ(wrong, 0u) << "rank " << rank << " per_peer " << per_peer << " shared "
                               << shared_buffer << " round " << round;
          EXPECT_EQ(buf[count], 0x7eedface);
        }
        if (shared_buffer) {  // own buffer, plus the peers' where the pairs swap
          const int expected = GetParam() == backend::local ? 0
                               : GetParam() == backend::ucx ? num_ranks
                                                            : 1;
          EXPECT_EQ(fabric_mappings(), expected) << "rank " << rank;
        }
        ASSERT_OK(comm->barrier());  // every peer is done with this buffer before it goes
      }
    }
    // Every buffer is gone: peers' mappings go as their region_freed notices arrive.
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (fabric_mappings() > 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(5ms);
    }
    EXPECT_EQ(fabric_mappings(), 0) << "rank " << rank;
  });
}

// In place on some ranks and out of place on others: refused on every rank, which stay in step.
TEST_P(Transport, InPlaceOnSomeRanksOnlyFailsOnEveryRank) {
  run_ranks(4, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    std::vector<float> a(4 * 1024, 1.f), b(4 * 1024);
    const status st = rank == 1 ? comm->all_to_all(as_send(cf32(a)), as_recv(f32(a)))
                                : comm->all_to_all(as_send(cf32(a)), as_recv(f32(b)));
    EXPECT_EQ(st.code(), errc::invalid_argument) << st.to_string();
    EXPECT_NE(st.message().find("in place"), std::string::npos) << st.message();
    // Partly overlapping buffers are refused too; then a good call goes through.
    const status overlap = comm->all_to_all(as_send(std::span<const float>(a).first(2048)),
                                            as_recv(std::span<float>(a).subspan(1024, 2048)));
    EXPECT_EQ(overlap.code(), errc::invalid_argument) << overlap.to_string();
    ASSERT_OK(comm->all_to_all(as_send(cf32(a)), as_recv(f32(b))));
  });
}

TEST_P(Transport, AllGatherAndBroadcast) {
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    std::vector<float> send = {static_cast<float>(rank), static_cast<float>(rank * 10)};
    std::vector<float> recv(2 * num_ranks, -1.f);
    ASSERT_OK(comm->all_gather(as_send(cf32(send)), as_recv(f32(recv))));
    for (int j = 0; j < num_ranks; ++j) {
      EXPECT_EQ(recv[2 * j], static_cast<float>(j));
      EXPECT_EQ(recv[2 * j + 1], static_cast<float>(j * 10));
    }
    std::vector<std::byte> buf(5, std::byte{0});
    if (rank == 3) buf = {std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}, std::byte{5}};
    ASSERT_OK(comm->broadcast(recv_buf{buf.data(), buf.size(), wire_type::bytes}, 3));
    for (int k = 0; k < 5; ++k) EXPECT_EQ(buf[k], std::byte(k + 1)) << rank;
  });
}

TEST_P(Transport, BarrierSeparatesPhases) {
  shared<std::atomic<int>> arrived;
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    for (int phase = 1; phase <= 20; ++phase) {
      if ((rank + phase) % 5 == 0) std::this_thread::sleep_for(1ms);
      arrived->fetch_add(1);
      ASSERT_OK(comm->barrier());
      EXPECT_GE(arrived->load(), phase * num_ranks) << "rank " << rank << " left barrier early";
      ASSERT_OK(comm->barrier());  // nobody starts the next phase before all checked
    }
  });
}

TEST_P(Transport, SendRecvTagsOutOfOrderAndFifoPerTag) {
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    const int to = (rank + 1) % num_ranks;
    const int from = (rank + num_ranks - 1) % num_ranks;
    std::vector<float> a = {static_cast<float>(rank)}, b = {static_cast<float>(rank + 100)};
    std::vector<float> c1 = {1.f, 2.f}, c2 = {3.f, 4.f};
    request ra = comm->isend(as_send(cf32(a)), to, /*tag=*/1);
    request rb = comm->isend(as_send(cf32(b)), to, /*tag=*/2);
    request rc1 = comm->isend(as_send(cf32(c1)), to, /*tag=*/7);
    request rc2 = comm->isend(as_send(cf32(c2)), to, /*tag=*/7);
    std::vector<float> got_b(1), got_a(1), got_c(2);
    ASSERT_OK(comm->recv(as_recv(f32(got_b)), from, 2));  // tag 2 before tag 1
    ASSERT_OK(comm->recv(as_recv(f32(got_a)), from, 1));
    EXPECT_EQ(got_a[0], static_cast<float>(from));
    EXPECT_EQ(got_b[0], static_cast<float>(from + 100));
    ASSERT_OK(comm->recv(as_recv(f32(got_c)), from, 7));
    EXPECT_EQ(got_c, (std::vector<float>{1.f, 2.f}));  // same tag: post order
    ASSERT_OK(comm->recv(as_recv(f32(got_c)), from, 7));
    EXPECT_EQ(got_c, (std::vector<float>{3.f, 4.f}));
    for (request* r : {&ra, &rb, &rc1, &rc2}) EXPECT_TRUE(r->wait().ok());
    // Size mismatch: both sides get invalid_argument.
    std::vector<float> three(3), two(2);
    request bad = comm->isend(as_send(cf32(three)), to, 9);
    status rs = comm->recv(as_recv(f32(two)), from, 9);
    EXPECT_EQ(rs.code(), errc::invalid_argument) << rs.to_string();
    EXPECT_EQ(bad.wait().code(), errc::invalid_argument);
    // A large message (rendezvous over UCX) and a message to itself.
    std::vector<float> big(200000), big_in(200000);
    for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(rank + i);
    request rbig = comm->isend(as_send(cf32(big)), to, 11);
    ASSERT_OK(comm->recv(as_recv(f32(big_in)), from, 11));
    ASSERT_OK(rbig.wait());
    for (std::size_t i = 0; i < big.size(); i += 997) {
      ASSERT_EQ(big_in[i], static_cast<float>(from + i));
    }
    std::vector<float> self_out = {42.f}, self_in(1);
    request rself = comm->isend(as_send(cf32(self_out)), rank, 3);
    ASSERT_OK(comm->recv(as_recv(f32(self_in)), rank, 3));
    ASSERT_OK(rself.wait());
    EXPECT_EQ(self_in[0], 42.f);
  });
}

TEST_P(Transport, DisjointSubgroupsRunConcurrently) {
  const std::vector<int> even = {0, 2, 4, 6}, odd = {7, 5, 3, 1};  // odd listed in reverse
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    const auto& members = rank % 2 == 0 ? even : odd;
    auto made = fab.make_communicator(rank, members);
    ASSERT_TRUE(made.has_value()) << made.error().to_string();
    auto& comm = *made;
    ASSERT_EQ(comm->size(), 4);
    EXPECT_EQ(comm->global_ranks()[static_cast<std::size_t>(comm->rank())], rank);
    for (int it = 0; it < 200; ++it) {
      std::vector<float> v = {static_cast<float>(rank + it)};
      ASSERT_OK(comm->all_reduce(as_send(cf32(v)), as_recv(f32(v))));
      float expect = 0;
      for (int m : members) expect += static_cast<float>(m + it);
      ASSERT_EQ(v[0], expect);
      std::vector<float> send(4), recv(4);
      for (int j = 0; j < 4; ++j) send[j] = static_cast<float>(rank * 100 + j + it);
      ASSERT_OK(comm->all_to_all(as_send(cf32(send)), as_recv(f32(recv))));
      for (int j = 0; j < 4; ++j) {
        ASSERT_EQ(recv[j], static_cast<float>(members[j] * 100 + comm->rank() + it));
      }
    }
  });
}

TEST_P(Transport, ThousandConsecutiveSmallCollectivesDoNotMix) {
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    for (int it = 0; it < 1000; ++it) {
      // Alternate kinds and sizes; a rank running ahead must not feed the next call's data.
      if (it % 2 == 0) {
        std::vector<float> v = {static_cast<float>(it * (rank + 1))};
        ASSERT_OK(comm->all_reduce(as_send(cf32(v)), as_recv(f32(v))));
        ASSERT_EQ(v[0], static_cast<float>(it * 36));
      } else {
        std::vector<float> s = {static_cast<float>(it + rank)}, r(num_ranks);
        ASSERT_OK(comm->all_gather(as_send(cf32(s)), as_recv(f32(r))));
        for (int j = 0; j < num_ranks; ++j) {
          ASSERT_EQ(r[j], static_cast<float>(it + j));
        }
      }
    }
  });
}

// More calls outstanding than the local fabric's slot ring holds (8), some large enough to be
// moved in shares, with the ranks waiting in different orders: every result is exact.
TEST_P(Transport, ManyOutstandingCollectivesCompleteInAnyWaitOrder) {
  constexpr std::size_t calls = 20;
  const auto size_of = [](std::size_t c) -> std::size_t { return c % 3 == 0 ? 100000 : 64 + c; };
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    std::vector<std::vector<float>> bufs(calls);
    std::vector<request> reqs;
    for (std::size_t c = 0; c < calls; ++c) {
      bufs[c].resize(size_of(c));
      for (std::size_t i = 0; i < bufs[c].size(); ++i) bufs[c][i] = reduce_input(rank, i + c);
      reqs.push_back(comm->iall_reduce(as_send(cf32(bufs[c])), as_recv(f32(bufs[c]))));
    }
    for (std::size_t k = 0; k < calls; ++k) {  // odd ranks wait newest first
      const std::size_t c = rank % 2 == 0 ? k : calls - 1 - k;
      ASSERT_OK(reqs[c].wait());
    }
    for (std::size_t c = 0; c < calls; ++c) {
      for (std::size_t i = 0; i < bufs[c].size(); ++i) {
        float expect = reduce_input(0, i + c);
        for (int r = 1; r < num_ranks; ++r) expect += reduce_input(r, i + c);
        ASSERT_EQ(bufs[c][i], expect) << "call " << c << " element " << i << " rank " << rank;
      }
    }
  });
}

TEST_P(Transport, NonBlockingAllToAllOverlapsCompute) {
  shared<std::atomic<bool>> rank0_checked;
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    if (rank == num_ranks - 1) {  // the last peer posts only after rank 0 saw its call pending
      while (!rank0_checked->load()) std::this_thread::sleep_for(1ms);
    }
    std::vector<float> send(num_ranks), recv(num_ranks, -1.f);
    for (int j = 0; j < num_ranks; ++j) send[j] = static_cast<float>(rank * 10 + j);
    request req = comm->iall_to_all(as_send(cf32(send)), as_recv(f32(recv)));
    if (rank == 0) {
      EXPECT_FALSE(req.test()) << "completed before the late peer posted";
      rank0_checked->store(true);
    }
    // Compute while the exchange is in flight.
    double acc = 0;
    for (int i = 0; i < 200000; ++i) acc += static_cast<double>(i % 7) * 0.5;
    EXPECT_GT(acc, 0.0);
    // Completion does not need this rank's wait(): once all posted, test() turns true.
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (!req.test() && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(1ms);
    EXPECT_TRUE(req.test());
    ASSERT_OK(req.wait());
    for (int j = 0; j < num_ranks; ++j) EXPECT_EQ(recv[j], static_cast<float>(j * 10 + rank));
  });
}

TEST_P(Transport, MismatchedArgumentsFailOnEveryRankAndStayInStep) {
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    std::vector<float> v(rank == 5 ? 3 : 4, 1.f);
    status st = comm->all_reduce(as_send(cf32(v)), as_recv(f32(v)));
    EXPECT_EQ(st.code(), errc::invalid_argument) << rank << ": " << st.to_string();
    EXPECT_NE(st.message().find("rank 5"), std::string::npos) << st.message();
    // A local argument error (indivisible count) on one rank also fails every rank.
    std::vector<float> s(rank == 2 ? 9 : 8), r(s.size());
    st = comm->all_to_all(as_send(cf32(s)), as_recv(f32(r)));
    EXPECT_EQ(st.code(), errc::invalid_argument) << rank << ": " << st.to_string();
    // Variable splits where one pair disagrees: every rank hears of it, not only that pair.
    std::vector<std::size_t> sc(num_ranks, 1), so(num_ranks), rc(num_ranks, 1), ro(num_ranks);
    for (int j = 0; j < num_ranks; ++j) so[j] = ro[j] = static_cast<std::size_t>(j);
    if (rank == 1) sc[6] = 0;  // rank 6 still expects one element from rank 1
    std::vector<float> vs(num_ranks, 1.f), vr(num_ranks);
    st = comm->all_to_all_v({as_send(cf32(vs)), sc, so, as_recv(f32(vr)), rc, ro});
    EXPECT_EQ(st.code(), errc::invalid_argument) << rank << ": " << st.to_string();
    // Different collectives at the same point.
    st = rank == 0 ? comm->barrier() : comm->broadcast(as_recv(f32(v)), 0);
    EXPECT_EQ(st.code(), errc::invalid_argument) << rank << ": " << st.to_string();
    // The group is still usable.
    std::vector<float> one = {1.f};
    ASSERT_OK(comm->all_reduce(as_send(cf32(one)), as_recv(f32(one))));
    EXPECT_EQ(one[0], static_cast<float>(num_ranks));
  });
}

TEST_P(Transport, AbortWakesBlockedRanks) {
  // Ranks 0..6 block in a barrier that rank 7 never joins; rank 0 aborts its fabric. Every
  // blocked rank gets the abort's status (a ucx fabric tells its peers).
  shared<std::atomic<int>> finished;
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    if (rank == num_ranks - 1) {  // stays alive (a dead peer is another test) until all woke
      const auto until = std::chrono::steady_clock::now() + 20s;
      while (finished->load() < num_ranks - 1 && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(1ms);
      }
      return;
    }
    std::thread aborter;
    if (rank == 0) {
      aborter = std::thread([&fab] {
        std::this_thread::sleep_for(50ms);
        fab.abort(make_error(errc::unavailable, "rank 7 failed"));
      });
    }
    const status got = comm->barrier();
    if (aborter.joinable()) aborter.join();
    EXPECT_EQ(got.code(), errc::unavailable) << got.to_string();
    EXPECT_EQ(got.message(), "rank 7 failed");
    EXPECT_EQ(fab.abort_status().code(), errc::unavailable);
    EXPECT_EQ(fab.make_world(rank).error().code(), errc::unavailable);  // no new groups
    finished->fetch_add(1);
    // Stay alive until every blocked rank woke: a rank process that exits first is a dead peer
    // to those still waiting, which could see its exit before the abort notice.
    const auto until = std::chrono::steady_clock::now() + 20s;
    while (finished->load() < num_ranks - 1 && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(1ms);
    }
  });
}

TEST_P(Transport, TimeoutGivesDeadlineExceeded) {
  run_ranks(2, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    call_options opts;
    opts.timeout = 30ms;
    if (rank == 0) {
      status st = comm->barrier(opts);
      EXPECT_EQ(st.code(), errc::deadline_exceeded) << st.to_string();
      EXPECT_NE(st.message().find("[1]"), std::string::npos) << st.message();
      std::vector<float> x(1);
      EXPECT_EQ(comm->recv(as_recv(f32(x)), 1, 0, opts).code(), errc::deadline_exceeded);
    } else {
      std::this_thread::sleep_for(300ms);
      // The late rank finds the call failed instead of hanging.
      EXPECT_EQ(comm->barrier().code(), errc::deadline_exceeded);
    }
    // Both stay in step afterwards.
    EXPECT_TRUE(comm->barrier().ok());
  });
}

TEST_P(Transport, RecreatedGroupIsAnIndependentInstance) {
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto first = world_comm(fab, rank);
    auto second = world_comm(fab, rank);  // k-th creation on every rank -> k-th instance
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
    ASSERT_OK(ra.wait());
    ASSERT_OK(rb.wait());
    EXPECT_EQ(a[0], static_cast<float>(num_ranks));
    EXPECT_EQ(b[0], 28.f);  // 0 + 1 + ... + 7
  });
}

TEST_P(Transport, GroupOfSizeOne) {
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    if (rank != 5) return;
    const std::vector<int> solo = {5};
    auto made = fab.make_communicator(5, solo);
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
  });
}

TEST_P(Transport, BadGroupsAreRejected) {
  run_ranks(2, [&](int rank, fabric& fab) {
    const std::vector<int> dup = {rank, rank}, outside = {rank, 8}, others = {1 - rank};
    EXPECT_EQ(fab.make_communicator(rank, dup).error().code(), errc::invalid_argument);
    EXPECT_EQ(fab.make_communicator(rank, outside).error().code(), errc::invalid_argument);
    EXPECT_EQ(fab.make_communicator(rank, others).error().code(), errc::invalid_argument);
  });
  EXPECT_EQ(make_local_fabric(0).error().code(), errc::invalid_argument);
  ucx_fabric_options bad;
  bad.world_size = 2;
  bad.rank = 2;
  EXPECT_EQ(make_ucx_fabric(bad).error().code(), errc::invalid_argument);
}

double process_cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6;
}

TEST_P(Transport, BlockedWaitsDoNotSpin) {
  // Seven ranks block in a barrier for 200 ms while the last one sleeps. Each measures the CPU
  // its process spent meanwhile (for threads that is the whole process, every rank included).
  run_ranks(num_ranks, [&](int rank, fabric& fab) {
    auto comm = world_comm(fab, rank);
    EXPECT_TRUE(comm->barrier().ok());  // connections are up before anything is measured
    if (rank == num_ranks - 1) {
      std::this_thread::sleep_for(200ms);
      EXPECT_TRUE(comm->barrier().ok());
      return;
    }
    const auto t0 = std::chrono::steady_clock::now();
    const double cpu0 = process_cpu_seconds();
    EXPECT_TRUE(comm->barrier().ok());
    const double cpu = process_cpu_seconds() - cpu0;
    const double wall =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Spinning would cost about the wall time per waiting thread; blocking costs ~0.
    EXPECT_LT(cpu, 0.2 * wall) << "rank " << rank << ": cpu " << cpu << " s over wall " << wall
                               << " s";
  });
}

INSTANTIATE_TEST_SUITE_P(Backends, Transport,
                         testing::Values(backend::local, backend::ucx, backend::ucx_two_copy),
                         backend_name);

}  // namespace
}  // namespace helix::transport
