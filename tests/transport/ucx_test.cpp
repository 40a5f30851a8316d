// What only the UCX backend has: ranks that die, transports, and hosts in network namespaces.
// The shared semantics (collectives, errors, timeouts) are in transport_test.cpp, run against
// every backend.
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "transport/netns.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::transport {
namespace {

using namespace std::chrono_literals;
using clock = std::chrono::steady_clock;

// Body result: ok unless an assertion failed in this (forked) rank.
expected<std::string> verdict(std::string text = "ok") {
  if (testing::Test::HasFailure()) return make_error(errc::internal, "assertions failed");
  return text;
}

std::unique_ptr<communicator> world(fabric& f, int rank) {
  auto c = f.make_world(rank);
  HELIX_CHECK(c.has_value(), "{}", c.error().to_string());
  return std::move(c).value();
}

// Options for `n` ranks with a generous limit on the whole run.
fork_ranks_options ranks(int n) {
  fork_ranks_options o;
  o.fabric.world_size = n;
  o.timeout = 60s;
  return o;
}

void expect_survivors_ok(const std::vector<rank_outcome>& outcomes, int dead) {
  for (const auto& o : outcomes) {
    if (o.rank == dead) {
      EXPECT_FALSE(o.result.ok());
      EXPECT_NE(o.result.message().find("signal 9"), std::string::npos) << o.result.to_string();
    } else {
      EXPECT_TRUE(o.result.ok()) << "rank " << o.rank << ": " << o.result.to_string();
    }
  }
}

// A rank killed before a collective: every survivor's call fails with unavailable naming it,
// within a few keepalive intervals, and the survivors can go on in a group without it.
TEST(UcxTransport, DeadPeerFailsTheCallOnEverySurvivor) {
  const fork_ranks_options o = ranks(4);
  auto outcomes = fork_ranks(o, [](int rank, ucx_fabric& f) -> expected<std::string> {
    auto comm = world(f, rank);
    EXPECT_TRUE(comm->barrier().ok());
    if (rank == 3) std::raise(SIGKILL);
    const auto t0 = clock::now();
    const status st = comm->barrier();
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    EXPECT_EQ(st.code(), errc::unavailable) << st.to_string();
    // Named by whichever detector saw it first: UCX's peer error ("... (global 3)") or the
    // fabric's pidfd watcher ("peer rank 3 (pid P) exited"; fabric ranks are global).
    EXPECT_TRUE(st.message().find("global 3") != std::string::npos ||
                st.message().find("peer rank 3 ") != std::string::npos)
        << st.message();
    EXPECT_LT(s, 10.0) << "detection took " << s << " s";
    const std::vector<int> rest = {0, 1, 2};
    auto sub = f.make_communicator(rank, rest);
    EXPECT_TRUE(sub.has_value());
    if (sub) {
      std::vector<float> v = {1.f};
      EXPECT_TRUE((*sub)
                      ->all_reduce(as_send(std::span<const float>(v)), as_recv(std::span<float>(v)))
                      .ok());
      EXPECT_EQ(v[0], 3.f);
    }
    // A new call that needs the dead rank fails at once.
    EXPECT_EQ(comm->barrier().code(), errc::unavailable);
    return verdict(fmt::format("{:.3f}", s));
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  expect_survivors_ok(*outcomes, 3);
  for (const auto& oc : *outcomes) {
    if (oc.rank != 3)
      std::printf("rank %d saw the dead peer after %s s\n", oc.rank, oc.text.c_str());
  }
}

// A survivor's call `req`, posted at t0, while rank 2 is killed: it completed before the kill or
// failed within 10 s naming rank 2 (unavailable), and the group's next barrier fails.
status expect_outlived_rank_2(request& req, communicator& comm, clock::time_point t0) {
  const status st = req.wait();
  const double s = std::chrono::duration<double>(clock::now() - t0).count();
  if (!st.ok()) {
    EXPECT_EQ(st.code(), errc::unavailable) << st.to_string();
    EXPECT_NE(st.message().find("2"), std::string::npos) << st.message();
  }
  EXPECT_LT(s, 10.0);
  EXPECT_EQ(comm.barrier().code(), errc::unavailable);
  return st;
}

// A rank killed while its large (rendezvous) all-to-all is in flight.
TEST(UcxTransport, PeerKilledDuringLargeAllToAll) {
  const fork_ranks_options o = ranks(4);
  auto outcomes = fork_ranks(o, [](int rank, ucx_fabric& f) -> expected<std::string> {
    auto comm = world(f, rank);
    constexpr std::size_t n = 4 * (4u << 20);  // 4 MiB per peer
    std::vector<std::byte> send(n, std::byte{1}), recv(n);
    request req = comm->iall_to_all(send_buf{send.data(), n, wire_type::bytes},
                                    recv_buf{recv.data(), n, wire_type::bytes});
    if (rank == 3) {
      std::this_thread::sleep_for(2ms);
      std::raise(SIGKILL);
    }
    const status st = req.wait();
    // Either the exchange completed before rank 3 died or it failed naming the dead peer.
    if (!st.ok()) {
      EXPECT_EQ(st.code(), errc::unavailable) << st.to_string();
    }
    EXPECT_EQ(comm->barrier().code(), errc::unavailable);
    return verdict();
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  expect_survivors_ok(*outcomes, 3);
}

// A rank killed while the pairs swap their slices in shared memory (in-place all_to_all on
// fabric buffers): the survivors' call completes or fails naming the dead peer (its mapping stays
// valid, so no survivor faults), no survivor hangs, and the survivors still swap among themselves.
TEST(UcxTransport, PeerKilledDuringInPlaceSwap) {
  const fork_ranks_options o = ranks(3);
  auto outcomes = fork_ranks(o, [](int rank, ucx_fabric& f) -> expected<std::string> {
    auto comm = world(f, rank);
    constexpr std::size_t per_peer = 32u << 20;  // milliseconds of swapping per pair
    auto buf = f.allocate(3 * per_peer);
    EXPECT_TRUE(buf.has_value());
    if (!buf) return verdict();
    std::memset(buf->data(), rank + 1, buf->size());
    EXPECT_TRUE(comm->barrier().ok());
    const auto t0 = clock::now();
    request req = comm->iall_to_all(send_buf{buf->data(), buf->size(), wire_type::bytes},
                                    recv_buf{buf->data(), buf->size(), wire_type::bytes});
    if (rank == 2) {
      std::this_thread::sleep_for(3ms);  // the pairs are swapping
      std::raise(SIGKILL);
    }
    const status st = expect_outlived_rank_2(req, *comm, t0);
    const std::vector<int> rest = {0, 1};
    auto sub = f.make_communicator(rank, rest);
    EXPECT_TRUE(sub.has_value());
    if (sub) {
      auto small = f.allocate(2 * per_peer);
      EXPECT_TRUE(small.has_value());
      if (!small) return verdict();
      std::memset(small->data(), rank + 1, small->size());
      EXPECT_TRUE((*sub)
                      ->all_to_all(send_buf{small->data(), small->size(), wire_type::bytes},
                                   recv_buf{small->data(), small->size(), wire_type::bytes})
                      .ok());
      const auto* b = reinterpret_cast<const unsigned char*>(small->data());
      const std::size_t other = 1 - static_cast<std::size_t>(rank);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < 2 * per_peer; ++i) {
        wrong += b[i] != (i / per_peer == other ? other + 1 : static_cast<std::size_t>(rank) + 1);
      }
      EXPECT_EQ(wrong, 0u);
    }
    return verdict(st.ok() ? "completed before the kill" : st.message());
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  expect_survivors_ok(*outcomes, 2);
  for (const auto& oc : *outcomes) {
    if (oc.rank != 2) std::printf("rank %d: %s\n", oc.rank, oc.text.c_str());
  }
}

TEST(UcxTransport, ReportsSharedMemoryTransportsUnderPeerErrorHandling) {
  for (const bool one_copy : {true, false}) {
    fork_ranks_options o = ranks(2);
    o.fabric.one_copy = one_copy;
    auto outcomes = fork_ranks(o, [](int rank, ucx_fabric& f) -> expected<std::string> {
      auto comm = world(f, rank);
      EXPECT_TRUE(comm->barrier().ok());
      return verdict(f.transports_to(1 - rank));
    });
    ASSERT_TRUE(outcomes.has_value());
    for (const auto& oc : *outcomes) {
      ASSERT_TRUE(oc.result.ok()) << oc.result.to_string();
      std::printf("one_copy %d: rank %d -> peer: %s\n", one_copy, oc.rank, oc.text.c_str());
      // MM_ERROR_HANDLING keeps shared memory with error mode PEER (else UCX falls back to tcp).
      EXPECT_TRUE(oc.text.find("posix") != std::string::npos ||
                  oc.text.find("sysv") != std::string::npos)
          << oc.text;
      // Processes on one host may read each other's memory here (root, same namespaces).
      EXPECT_EQ(oc.text.find("one-copy/process_vm_readv") != std::string::npos, one_copy)
          << oc.text;
    }
  }
}

// A sender killed while its peers read large slices straight from its memory: process_vm_readv
// (or the pid watch, whichever sees it first) fails the call on every survivor, naming it; no
// survivor hangs, and its own pulls from the others still complete or fail cleanly.
TEST(UcxTransport, SenderKilledDuringOneCopyAllToAll) {
  const fork_ranks_options o = ranks(3);
  auto outcomes = fork_ranks(o, [](int rank, ucx_fabric& f) -> expected<std::string> {
    auto comm = world(f, rank);
    for (int peer = 0; peer < 3; ++peer) {
      if (peer != rank) {
        EXPECT_NE(f.transports_to(peer).find("one-copy"), std::string::npos)
            << f.transports_to(peer);
      }
    }
    constexpr std::size_t per_peer = 32u << 20;  // milliseconds of copying per peer
    std::vector<std::byte> send(3 * per_peer, std::byte{1}), recv(3 * per_peer);
    EXPECT_TRUE(comm->barrier().ok());
    const auto t0 = clock::now();
    request req = comm->iall_to_all(send_buf{send.data(), send.size(), wire_type::bytes},
                                    recv_buf{recv.data(), recv.size(), wire_type::bytes});
    if (rank == 2) {
      std::this_thread::sleep_for(4ms);  // its descriptors are out; the peers are reading
      std::raise(SIGKILL);
    }
    const status st = expect_outlived_rank_2(req, *comm, t0);
    // The survivors still exchange large messages between themselves, byte for byte.
    const std::vector<int> rest = {0, 1};
    auto sub = f.make_communicator(rank, rest);
    EXPECT_TRUE(sub.has_value());
    if (sub) {
      const auto pattern = [](std::size_t from, std::size_t i) {
        return static_cast<std::uint8_t>(from * 7 + i * 13 + (i >> 12));
      };
      std::vector<std::uint8_t> a(2 * per_peer), b(2 * per_peer);
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = pattern(rank, i);
      EXPECT_TRUE((*sub)
                      ->all_to_all(send_buf{a.data(), a.size(), wire_type::bytes},
                                   recv_buf{b.data(), b.size(), wire_type::bytes})
                      .ok());
      // Slice `other` of b is the other's slice `rank`: its bytes rank * per_peer + i.
      const std::size_t other = 1 - static_cast<std::size_t>(rank);
      std::size_t wrong = 0;
      for (std::size_t i = 0; i < per_peer; ++i) {
        wrong += b[other * per_peer + i] != pattern(other, rank * per_peer + i);
      }
      EXPECT_EQ(wrong, 0u);
    }
    return verdict(st.ok() ? "completed before the kill" : st.message());
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  expect_survivors_ok(*outcomes, 2);
  for (const auto& oc : *outcomes) {
    if (oc.rank != 2) std::printf("rank %d: %s\n", oc.rank, oc.text.c_str());
  }
}

// A sender whose call times out before the receiver took its descriptor gets its buffer back at
// once: the receiver answers the descriptor it drops (p2p_cancel, coll_fail), so the sender
// does not wait for the 1 s after which unanswered transfers are abandoned.
TEST(UcxTransport, OneCopySenderThatTimesOutIsReleasedAtOnce) {
  const fork_ranks_options o = ranks(2);
  auto outcomes = fork_ranks(o, [](int rank, ucx_fabric& f) -> expected<std::string> {
    auto comm = world(f, rank);
    std::vector<std::byte> send(2u << 20, std::byte{3}), recv(2u << 20);
    EXPECT_TRUE(comm->barrier().ok());
    call_options opts;
    opts.timeout = 50ms;
    if (rank == 0) {
      auto t0 = clock::now();
      const status sent = comm->send(send_buf{send.data(), send.size(), wire_type::bytes}, 1,
                                     /*tag=*/5, opts);
      EXPECT_EQ(sent.code(), errc::deadline_exceeded) << sent.to_string();
      EXPECT_LT(std::chrono::duration<double>(clock::now() - t0).count(), 0.9);
      t0 = clock::now();
      const status a2a =
          comm->all_to_all(send_buf{send.data(), send.size(), wire_type::bytes},
                           recv_buf{recv.data(), recv.size(), wire_type::bytes}, opts);
      EXPECT_EQ(a2a.code(), errc::deadline_exceeded) << a2a.to_string();
      EXPECT_LT(std::chrono::duration<double>(clock::now() - t0).count(), 0.9);
    } else {
      std::this_thread::sleep_for(400ms);  // posts nothing while rank 0 times out twice
      EXPECT_EQ(comm->all_to_all(send_buf{send.data(), send.size(), wire_type::bytes},
                                 recv_buf{recv.data(), recv.size(), wire_type::bytes})
                    .code(),
                errc::deadline_exceeded);
    }
    EXPECT_TRUE(comm->barrier().ok());  // both still in step
    return verdict();
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  for (const auto& oc : *outcomes) {
    EXPECT_TRUE(oc.result.ok()) << "rank " << oc.rank << ": " << oc.result.to_string();
  }
}

// Two "hosts" (network namespaces joined by a veth pair): UCX runs over tcp between them, and a
// killed host is seen by the other.
TEST(UcxTransport, TcpBetweenNamespaces) {
  auto hosts = netns_hosts::create(2);
  if (!hosts) GTEST_SKIP() << "network namespaces unavailable: " << hosts.error().to_string();
  fork_ranks_options o = ranks(2);
  o.fabric.transports = "tcp";
  o.fabric.net_devices = hosts->host(0).device;
  o.netns = hosts->netns_names();
  auto outcomes = fork_ranks(o, [](int rank, ucx_fabric& f) -> expected<std::string> {
    auto comm = world(f, rank);
    std::vector<float> v(100000, static_cast<float>(rank + 1));
    EXPECT_TRUE(
        comm->all_reduce(as_send(std::span<const float>(v)), as_recv(std::span<float>(v))).ok());
    EXPECT_EQ(v[99999], 3.f);
    const std::string tls = f.transports_to(1 - rank);
    EXPECT_NE(tls.find("tcp"), std::string::npos) << tls;
    EXPECT_EQ(tls.find("one-copy"), std::string::npos) << tls;  // other "hosts": never
    EXPECT_TRUE(comm->barrier().ok());
    if (rank == 1) std::raise(SIGKILL);
    const auto t0 = clock::now();
    EXPECT_EQ(comm->barrier().code(), errc::unavailable);
    EXPECT_LT(std::chrono::duration<double>(clock::now() - t0).count(), 10.0);
    return verdict(tls);
  });
  ASSERT_TRUE(outcomes.has_value()) << outcomes.error().to_string();
  expect_survivors_ok(*outcomes, 1);
}

}  // namespace
}  // namespace helix::transport
