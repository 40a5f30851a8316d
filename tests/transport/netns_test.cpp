// Tests of netns_hosts: namespaces appear, host 0 reaches host 1 over TCP from inside its own
// namespace, and everything is gone afterwards. Skipped (with the reason) where namespaces cannot
// be made: not root, or a container without the capabilities.
#include "transport/netns.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace helix::transport {
namespace {

using namespace std::chrono_literals;

bool netns_exists(const std::string& name) {
  return std::filesystem::exists(std::filesystem::path("/var/run/netns") / name);
}

// Creates the hosts or skips the test when this machine does not allow namespaces.
#define HELIX_CREATE_OR_SKIP(var, n)                                                      \
  auto var##_made = netns_hosts::create(n);                                               \
  if (!var##_made && var##_made.error().code() == errc::failed_precondition) {            \
    GTEST_SKIP() << "network namespaces not available: " << var##_made.error().message(); \
  }                                                                                       \
  ASSERT_TRUE(var##_made.has_value()) << var##_made.error().to_string();                  \
  netns_hosts& var = *var##_made

// Runs fn() in a forked child that first enters network namespace `ns` (enter_netns); returns
// the child's pid. The child exits with fn's result, or 100 when it cannot enter the namespace.
pid_t fork_in_netns(const std::string& ns, const std::function<int()>& fn) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid != 0) return pid;
  if (!enter_netns(ns).ok()) ::_exit(100);
  ::_exit(fn());
}

int wait_exit_code(pid_t pid) {
  int wstatus = 0;
  if (::waitpid(pid, &wstatus, 0) != pid) return -1;
  return WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
}

sockaddr_in ipv4(const std::string& address, std::uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  ::inet_pton(AF_INET, address.c_str(), &sa.sin_addr);
  return sa;
}

// A listener in `server`'s namespace on its address, a client in `client`'s namespace that
// connects to it and reads the listener's greeting. True when the greeting arrived.
::testing::AssertionResult tcp_reaches(const netns_host& client, const netns_host& server) {
  int port_pipe[2];
  if (::pipe(port_pipe) != 0) return ::testing::AssertionFailure() << "pipe failed";
  const pid_t listener = fork_in_netns(server.netns, [&]() -> int {
    ::close(port_pipe[0]);
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa = ipv4(server.address, 0);
    if (::bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) return 1;
    if (::listen(s, 1) != 0) return 2;
    socklen_t len = sizeof(sa);
    ::getsockname(s, reinterpret_cast<sockaddr*>(&sa), &len);
    const std::uint16_t port = ntohs(sa.sin_port);
    if (::write(port_pipe[1], &port, sizeof(port)) != sizeof(port)) return 3;
    pollfd p{s, POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return 4;  // nobody came
    const int c = ::accept(s, nullptr, nullptr);
    if (c < 0 || ::write(c, "hi", 2) != 2) return 5;
    ::close(c);
    return 0;
  });
  ::close(port_pipe[1]);
  std::uint16_t port = 0;
  pollfd p{port_pipe[0], POLLIN, 0};
  const bool got_port =
      ::poll(&p, 1, 5000) == 1 && ::read(port_pipe[0], &port, sizeof(port)) == sizeof(port);
  ::close(port_pipe[0]);
  if (!got_port) {
    return ::testing::AssertionFailure()
           << "listener in " << server.netns << " gave no port (exit code "
           << wait_exit_code(listener) << ")";
  }
  const pid_t connector = fork_in_netns(client.netns, [&]() -> int {
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    while (true) {
      const int s = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in sa = ipv4(server.address, port);
      if (::connect(s, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) {
        char buf[2] = {};
        const bool ok = ::recv(s, buf, 2, MSG_WAITALL) == 2 && std::memcmp(buf, "hi", 2) == 0;
        return ok ? 0 : 11;
      }
      ::close(s);
      if (std::chrono::steady_clock::now() > deadline) return 10;
      std::this_thread::sleep_for(20ms);
    }
  });
  const int client_rc = wait_exit_code(connector);
  const int server_rc = wait_exit_code(listener);
  if (client_rc != 0 || server_rc != 0) {
    return ::testing::AssertionFailure()
           << client.netns << " -> " << server.address << ":" << port << ": client exit code "
           << client_rc << ", listener exit code " << server_rc;
  }
  return ::testing::AssertionSuccess();
}

TEST(NetnsHosts, TwoHostsReachEachOtherAndVanishAfterwards) {
  std::vector<std::string> names;
  {
    HELIX_CREATE_OR_SKIP(hosts, 2);
    ASSERT_EQ(hosts.size(), 2);
    names = hosts.owned_namespaces();
    EXPECT_EQ(names, hosts.netns_names());  // two hosts: no bridge namespace
    for (int i = 0; i < 2; ++i) {
      const netns_host& h = hosts.host(i);
      EXPECT_EQ(h.netns, fmt::format("helix-{}-{}", ::getpid(), i));
      EXPECT_TRUE(netns_exists(h.netns)) << h.netns;
      EXPECT_EQ(h.device, "helix0");
      EXPECT_EQ(h.address.rfind("10.200.", 0), 0u) << h.address;
      EXPECT_TRUE(h.address.ends_with(fmt::format(".{}", i + 1))) << h.address;
    }
    EXPECT_TRUE(tcp_reaches(hosts.host(0), hosts.host(1)));
    EXPECT_TRUE(tcp_reaches(hosts.host(1), hosts.host(0)));
    // The caller's own namespace got no interface.
    auto link = run_process({"ip", "-o", "link", "show", "dev", "helix0"});
    ASSERT_TRUE(link.has_value()) << link.error().to_string();
    EXPECT_NE(link->exit_code, 0) << link->output;
  }
  ASSERT_EQ(names.size(), 2u);
  for (const std::string& n : names) EXPECT_FALSE(netns_exists(n)) << n << " left behind";
}

// UCX finds its devices in /sys/class/net: inside a host it must list the host's interface.
TEST(NetnsHosts, EnteredHostSeesItsOwnInterfaceInSys) {
  HELIX_CREATE_OR_SKIP(hosts, 2);
  const pid_t child = fork_in_netns(hosts.host(1).netns, [] {
    std::error_code ec;
    if (!std::filesystem::exists("/sys/class/net/helix0", ec)) return 1;
    return std::filesystem::exists("/sys/class/net/lo", ec) ? 0 : 2;
  });
  EXPECT_EQ(wait_exit_code(child), 0) << "exit 100: enter_netns failed; 1: no helix0 in /sys";
  // The child's remount stayed in its own mount namespace.
  EXPECT_FALSE(std::filesystem::exists("/sys/class/net/helix0"));
  EXPECT_EQ(enter_netns("helix-no-such-namespace").code(), errc::not_found);
}

TEST(NetnsHosts, ThreeHostsShareOneBridge) {
  std::vector<std::string> names;
  {
    HELIX_CREATE_OR_SKIP(hosts, 3);
    names = hosts.owned_namespaces();
    EXPECT_EQ(names.size(), 4u);  // three hosts and the bridge's namespace
    EXPECT_TRUE(tcp_reaches(hosts.host(0), hosts.host(2)));
    EXPECT_TRUE(tcp_reaches(hosts.host(2), hosts.host(1)));
  }
  for (const std::string& n : names) EXPECT_FALSE(netns_exists(n)) << n << " left behind";
}

TEST(NetnsHosts, MovedSetDeletesOnce) {
  std::vector<std::string> names;
  {
    HELIX_CREATE_OR_SKIP(hosts, 2);
    names = hosts.owned_namespaces();
    netns_hosts moved = std::move(hosts);
    EXPECT_EQ(moved.owned_namespaces(), names);
    for (const std::string& n : names) EXPECT_TRUE(netns_exists(n)) << n;
  }
  for (const std::string& n : names) EXPECT_FALSE(netns_exists(n)) << n << " left behind";
}

TEST(NetnsHosts, OneLiveSetPerProcess) {
  HELIX_CREATE_OR_SKIP(hosts, 2);
  auto second = netns_hosts::create(2);
  ASSERT_FALSE(second.has_value());
  EXPECT_EQ(second.error().code(), errc::failed_precondition);
  EXPECT_NE(second.error().message().find("already exists"), std::string::npos)
      << second.error().message();
  EXPECT_TRUE(netns_exists(hosts.host(0).netns));  // the failed call did not touch the first
}

TEST(NetnsHosts, LeftOversOfDeadProcessesAreRemoved) {
  // A pid that certainly does not run: a child that has exited and been reaped.
  std::fflush(nullptr);
  const pid_t dead = ::fork();
  if (dead == 0) ::_exit(0);
  ASSERT_EQ(wait_exit_code(dead), 0);
  const std::string stale = fmt::format("helix-{}-0", dead);
  const std::string live = "helix-1-0";  // pid 1 runs: its namespaces are not ours to remove
  auto add = run_process({"ip", "netns", "add", stale});
  ASSERT_TRUE(add.has_value());
  if (add->exit_code != 0) GTEST_SKIP() << "ip netns add: " << add->errors;
  ASSERT_EQ(run_process({"ip", "netns", "add", live})->exit_code, 0);
  {
    HELIX_CREATE_OR_SKIP(hosts, 2);
    EXPECT_EQ(hosts.size(), 2);
    EXPECT_FALSE(netns_exists(stale));
    EXPECT_TRUE(netns_exists(live));
  }
  EXPECT_EQ(run_process({"ip", "netns", "del", live})->exit_code, 0);
  (void)run_process({"ip", "netns", "del", stale});
}

TEST(NetnsHosts, HostCountOutOfRangeIsInvalid) {
  for (const int n : {-1, 0, 1, 65}) {
    auto h = netns_hosts::create(n);
    ASSERT_FALSE(h.has_value()) << n;
    EXPECT_EQ(h.error().code(), errc::invalid_argument) << n;
  }
}

TEST(RunProcess, CapturesOutputErrorsAndExitCode) {
  auto r = run_process({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->output, "out\n");
  EXPECT_EQ(r->errors, "err\n");
}

TEST(RunProcess, MissingProgramIsExitCode127WithTheReason) {
  auto r = run_process({"helix-no-such-program-xyz"});
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  EXPECT_EQ(r->exit_code, 127);
  EXPECT_NE(r->errors.find("cannot execute helix-no-such-program-xyz"), std::string::npos)
      << r->errors;
  EXPECT_FALSE(run_process({}).has_value());
}

}  // namespace
}  // namespace helix::transport
