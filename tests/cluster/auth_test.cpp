// Mutual TLS of the control plane (cluster/tls.hpp): `helix cluster certs` makes a cluster's
// credentials; an engine with --tls-dir admits only workers whose certificate its CA signed.
// Workers without credentials, with a certificate of another CA or an expired one, and peers that
// send garbage instead of a TLS handshake are refused with a message naming authentication on
// both sides, and the engine goes on to serve with the workers that prove membership.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <future>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "cluster/cluster.hpp"
#include "cluster/tls.hpp"
#include "tests/support/cli.hpp"

namespace helix::cluster {
namespace {

namespace fs = std::filesystem;

// A fresh directory under the test's temporary directory.
std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / fmt::format("helix-auth-{}-{}", ::getpid(), name);
  fs::remove_all(p);
  return p.string();
}

std::string certs(const std::string& dir, const std::string& more = "") {
  int rc = -1;
  const std::string out =
      test_support::run_cli(HELIX_CLI, "cluster certs --out " + dir + " " + more, rc);
  EXPECT_EQ(rc, 0) << out;
  return out;
}

TEST(ClusterAuth, CertsCommandWritesACaAndANodeCertificate) {
  const std::string a = temp_dir("certs-a");
  certs(a);
  for (const char* f : {"ca.pem", "ca.key", "cert.pem", "key.pem"}) {
    EXPECT_TRUE(fs::is_regular_file(a + "/" + f)) << f;
  }
  for (const char* secret : {"ca.key", "key.pem"}) {
    struct stat st {};
    ASSERT_EQ(::stat((a + "/" + secret).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << secret;
  }
  EXPECT_TRUE(tls_context::load(a, tls_context::role::server).has_value());
  EXPECT_TRUE(tls_context::load(a, tls_context::role::client).has_value());
  // A second node of the same cluster: the CA copied, a new key and certificate.
  const std::string b = temp_dir("certs-b");
  certs(b, "--ca " + a);
  int same = -1;
  EXPECT_EQ(test_support::run_cli("cmp", a + "/ca.pem " + b + "/ca.pem", same), "");
  EXPECT_EQ(same, 0);
  // Missing files and bad flags are named.
  const auto missing = tls_context::load(temp_dir("nothing"), tls_context::role::client);
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message().find("ca.pem is missing"), std::string::npos)
      << missing.error().to_string();
  for (const char* bad :
       {"cluster certs", "cluster certs --out", "cluster certs --out x --days 0",
        "cluster certs --out x --days soon", "cluster certs --out x --ca /none", "cluster bless"}) {
    int rc = -1;
    const std::string out = test_support::run_cli(HELIX_CLI, bad, rc);
    EXPECT_NE(rc, 0) << bad;
    EXPECT_NE(out.find("error"), std::string::npos) << bad << ": " << out;
  }
}

// Worker processes with --tls-dir serve exactly as without it, joins of an elastic run included.
TEST(ClusterAuth, WorkerProcessesOverTlsMatchThreads) {
  const std::string a = temp_dir("procs");
  certs(a);
  const std::string workload =
      "run --requests 12 --context 128 --max-tokens 16 --seed 4 --layout helix:kvp=2,tpa=1 --json";
  int rc = -1;
  const auto threads =
      test_support::last_json(test_support::run_cli(HELIX_CLI, workload + " --workers 2", rc));
  ASSERT_EQ(rc, 0);
  const std::string text = test_support::run_cli(
      HELIX_CLI, workload + " --processes 2 --tls-dir " + a + " --elastic join:2@step6", rc);
  ASSERT_EQ(rc, 0) << text;
  const auto got = test_support::last_json(text);
  EXPECT_EQ(got["requests_completed"], 12) << text;
  EXPECT_EQ(got["output_digest"], threads["output_digest"]);
  EXPECT_EQ(got["layout"], "helix:kvp=4,tpa=1,tpf=4,ep=1") << "the joined workers authenticated";
}

// Connects to 127.0.0.1:port and sends `bytes`; whether the peer closed the connection after.
bool send_garbage(std::uint16_t port, const std::string& bytes) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return false;
  }
  (void)::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  timeval tv{15, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  char buf[256];
  ssize_t n = 0;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
  }
  const bool reset = n < 0 && errno == ECONNRESET;  // closed with our bytes unread
  ::close(fd);
  return n == 0 || reset;  // closed, not timed out
}

// The check, and more: an engine listening with --tls-dir refuses workers without
// credentials, with another CA's certificate or an expired one, and peers sending random bytes;
// each refused worker exits non-zero naming authentication, the engine logs each refusal, and its
// requests complete once two workers of its cluster joined.
TEST(ClusterAuth, OnlyWorkersOfTheClusterJoin) {
  const std::string a = temp_dir("listen-a");
  const std::string a2 = temp_dir("listen-a2");
  const std::string other = temp_dir("listen-other");
  const std::string expired = temp_dir("listen-expired");
  certs(a);
  certs(a2, "--ca " + a);
  certs(other);
  certs(expired, "--ca " + a + " --days -1");
  const auto port = static_cast<std::uint16_t>(20000 + (::getpid() % 20000));
  const std::string join = fmt::format("127.0.0.1:{}", port);
  auto engine = std::async(std::launch::async, [&] {
    int rc = -1;
    std::string out = test_support::run_cli(
        HELIX_CLI,
        fmt::format("run --listen {} --expect-workers 2 --tls-dir {} --requests 8 --context 128 "
                    "--max-tokens 8 --json",
                    join, a),
        rc);
    return std::make_pair(rc, out);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // listening by then
  for (const std::string& creds : {std::string(), other, expired}) {
    int rc = -1;
    const std::string out =
        test_support::run_cli(HELIX_CLI,
                              fmt::format("worker --join {} --timeout-ms 5000{}", join,
                                          creds.empty() ? std::string() : " --tls-dir " + creds),
                              rc);
    EXPECT_NE(rc, 0) << out;
    EXPECT_NE(out.find("authentication"), std::string::npos) << out;
  }
  // A fuzzed handshake: random bytes, a truncated ClientHello, a BASP handshake in clear.
  std::mt19937 rng(7);
  for (int i = 0; i < 8; ++i) {
    std::string bytes(1 + rng() % 600, '\0');
    for (char& c : bytes) c = static_cast<char>(rng());
    if (i == 1) bytes = std::string("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
    if (i == 2) bytes = std::string(32, '\0');
    EXPECT_TRUE(send_garbage(port, bytes)) << "try " << i << ": the door kept it open";
  }
  auto good1 = std::async(std::launch::async, [&] {
    int rc = -1;
    return test_support::run_cli(HELIX_CLI, "worker --join " + join + " --tls-dir " + a, rc);
  });
  auto good2 = std::async(std::launch::async, [&] {
    int rc = -1;
    return test_support::run_cli(HELIX_CLI, "worker --join " + join + " --tls-dir " + a2, rc);
  });
  const auto [rc, out] = engine.get();
  good1.get();
  good2.get();
  ASSERT_EQ(rc, 0) << out;
  const auto report = test_support::last_json(out);
  EXPECT_EQ(report["requests_completed"], 8) << out;
  std::size_t refusals = 0;
  for (std::size_t at = out.find("authentication failed"); at != std::string::npos;
       at = out.find("authentication failed", at + 1)) {
    ++refusals;
  }
  EXPECT_GE(refusals, 3u + 8u) << out;
}

}  // namespace
}  // namespace helix::cluster
