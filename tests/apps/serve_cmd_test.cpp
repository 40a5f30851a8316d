// `helix serve` as a process: it prints where it listens, serves, and on SIGTERM lets a running
// streamed completion finish, refuses nothing already accepted, and exits 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <httplib.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace {

using namespace std::chrono_literals;

TEST(ServeCommand, SigtermFinishesTheRunningStreamAndExitsZero) {
  int out[2];
  ASSERT_EQ(::pipe(out), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::dup2(out[1], STDOUT_FILENO);
    ::close(out[0]);
    ::close(out[1]);
    ::execl(HELIX_CLI, HELIX_CLI, "serve", "--port", "0", "--workers", "2", "--grace", "30",
            static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(out[1]);
  // "helix serve: ... listening on http://127.0.0.1:PORT"
  std::string banner;
  char c = 0;
  const auto until = std::chrono::steady_clock::now() + 60s;
  while (banner.find("listening on") == std::string::npos ||
         banner.find('\n', banner.find("listening on")) == std::string::npos) {
    ASSERT_LT(std::chrono::steady_clock::now(), until) << banner;
    ASSERT_EQ(::read(out[0], &c, 1), 1) << "helix serve ended early: " << banner;
    banner += c;
  }
  std::smatch m;
  ASSERT_TRUE(std::regex_search(banner, m, std::regex(R"(http://127\.0\.0\.1:(\d+))"))) << banner;
  const int port = std::stoi(m[1]);

  std::string body;
  int status = 0;
  std::thread client([&] {
    httplib::Client cli("127.0.0.1", port);
    cli.set_read_timeout(60, 0);
    auto res = cli.Post("/v1/completions",
                        R"({"prompt": [3, 14, 15], "max_tokens": 3000, "stream": true})",
                        "application/json");
    if (res) {
      status = res->status;
      body = res->body;
    }
  });
  // Once the stream has started, ask the server to stop.
  httplib::Client probe("127.0.0.1", port);
  for (int i = 0; i < 500; ++i) {
    auto metrics = probe.Get("/metrics");
    if (metrics && metrics->body.find("helix_requests_running 1") != std::string::npos) break;
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  client.join();
  int wstatus = 0;
  ASSERT_EQ(::waitpid(pid, &wstatus, 0), pid);
  ::close(out[0]);
  EXPECT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << wstatus;
  EXPECT_EQ(status, 200);
  EXPECT_NE(body.find("\"finish_reason\":\"length\""), std::string::npos);
  EXPECT_TRUE(body.ends_with("data: [DONE]\n\n"))
      << body.substr(body.size() > 200 ? body.size() - 200 : 0);
}

}  // namespace
