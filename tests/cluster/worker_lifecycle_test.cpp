// Workers started by hand (not children of the engine, so no parent-death signal) end when their
// engine goes away, with an error naming it: no orphan process serving nobody.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace helix {
namespace {

using namespace std::chrono_literals;

// A port nobody listens on right now (the kernel's choice for an ephemeral bind).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

// Starts HELIX_CLI with `args`, stdout and stderr into `log`.
pid_t start(const std::vector<std::string>& args, const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>("helix"));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(HELIX_CLI, argv.data());
    ::_exit(127);
  }
  return pid;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Waits for `pid` up to `limit`; its wait status, or -1 (then it is killed) when it is still
// running.
int wait_for(pid_t pid, std::chrono::seconds limit) {
  const auto until = std::chrono::steady_clock::now() + limit;
  int st = 0;
  while (::waitpid(pid, &st, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() >= until) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      return -1;
    }
    std::this_thread::sleep_for(20ms);
  }
  return st;
}

TEST(WorkerLifecycle, HandStartedWorkerEndsWhenItsEngineDies) {
  const std::string dir = testing::TempDir();
  const std::string engine_log = dir + "/lifecycle_engine.log";
  const std::string worker_log = dir + "/lifecycle_worker.log";
  const std::string at = "127.0.0.1:" + std::to_string(free_port());
  // A long workload on one listening engine, and one worker joined to it by hand.
  const pid_t engine = start(
      {"run", "--listen", at, "--expect-workers", "1", "--requests", "1000000", "--rate", "50"},
      engine_log);
  std::this_thread::sleep_for(300ms);
  const pid_t worker = start({"worker", "--join", at, "--name", "lonely"}, worker_log);
  // Serving: the engine prints its first progress line once requests complete.
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (read_file(engine_log).find("[run]") == std::string::npos &&
         std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_NE(read_file(engine_log).find("[run]"), std::string::npos)
      << "engine:\n"
      << read_file(engine_log) << "\nworker:\n"
      << read_file(worker_log);
  // Both still serve: the engine has not failed and the worker runs.
  EXPECT_EQ(read_file(engine_log).find("error"), std::string::npos) << read_file(engine_log);
  ASSERT_EQ(::waitpid(worker, nullptr, WNOHANG), 0) << read_file(worker_log);
  const auto killed_at = std::chrono::steady_clock::now();
  ::kill(engine, SIGKILL);
  ::waitpid(engine, nullptr, 0);
  const int st = wait_for(worker, 20s);
  ASSERT_NE(st, -1) << "the worker outlived its engine by 20 s:\n" << read_file(worker_log);
  ASSERT_TRUE(WIFEXITED(st)) << read_file(worker_log);
  EXPECT_EQ(WEXITSTATUS(st), 1) << read_file(worker_log);
  EXPECT_NE(read_file(worker_log).find("went away"), std::string::npos) << read_file(worker_log);
  // The worker waits out the engine's silence (4 s without heartbeats) before it gives up.
  EXPECT_GE(std::chrono::steady_clock::now() - killed_at, 3s);
}

}  // namespace
}  // namespace helix
