// Shared by the worker-process tests (label multiproc): engine configs, spawned workers, a
// long greedy and sampled workload, process checks. HELIX_CLI is the helix binary (the tests'
// compile definition).
#pragma once

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "actors/engine.hpp"
#include "actors/worker_source.hpp"
#include "cluster/cluster.hpp"
#include "tests/support/model_fixtures.hpp"
#include "transport/netns.hpp"

namespace helix::cluster::fixtures {

using actors::engine;
using actors::engine_config;
using actors::finish_reason;
using actors::request_options;

inline engine_config config_for(const std::string& model, const std::string& layout, int workers) {
  engine_config c;
  c.model = model;
  c.num_workers = workers;
  c.layout = layout;
  c.kv_capacity_tokens_per_worker = 1024;
  c.max_batch_tokens = 64;
  c.prefill_chunk_tokens = 16;
  return c;
}

inline std::unique_ptr<actors::worker_source> processes(
    std::chrono::milliseconds join = std::chrono::seconds(60)) {
  spawned_workers_options o;
  o.worker_binary = HELIX_CLI;
  o.join_timeout = join;
  return spawned_workers(o);
}

inline bool alive(std::int64_t pid) {
  return ::kill(static_cast<pid_t>(pid), 0) == 0;
}

// Greedy and seeded-sampling requests long enough to be decoding when `during` runs (after the
// first token of the first request); every request's tokens and last event.
struct long_run {
  std::vector<std::vector<std::int32_t>> tokens;
  std::vector<actors::token_event> last;
};
inline long_run serve_long(engine& eng, const std::function<void(std::size_t)>& during = {}) {
  std::vector<actors::request_handle> handles;
  for (int i = 0; i < 4; ++i) {
    request_options r;
    r.prompt =
        test_support::random_tokens(9 + 11 * i, eng.vocab(), 40 + static_cast<std::uint64_t>(i));
    r.max_tokens = 48;
    if (i % 2 == 1) r.sampling = {0.9f, 40, 0.95f, 3 + static_cast<std::uint64_t>(i)};
    auto h = eng.submit(r);
    EXPECT_TRUE(h.has_value()) << h.error().to_string();
    if (h) handles.push_back(*h);
  }
  long_run out;
  for (std::size_t i = 0; i < handles.size(); ++i) {
    std::vector<std::int32_t> tokens;
    actors::token_event last;
    while (auto e = handles[i].stream->next_for(std::chrono::seconds(60))) {
      if (e->token >= 0) {
        EXPECT_EQ(e->index, static_cast<std::int64_t>(tokens.size())) << "a token came twice";
        tokens.push_back(e->token);
      }
      if (i == 0 && e->token >= 0 && during) during(tokens.size());
      if (e->last) {
        last = *e;
        break;
      }
    }
    out.tokens.push_back(std::move(tokens));
    out.last.push_back(std::move(last));
  }
  return out;
}

// serve_long on in-process workers of `c`, for the tokens a run with faults must reproduce; empty
// (with a test failure) when the engine cannot be built.
inline long_run fault_free_run(const engine_config& c) {
  auto clean = engine::create(c);
  EXPECT_TRUE(clean.has_value()) << clean.error().to_string();
  if (!clean) return {};
  return serve_long(**clean);
}

// The pids of the processes whose parent is `parent` and whose command line contains `part`.
inline std::vector<pid_t> children_of(pid_t parent, const std::string& part) {
  std::vector<pid_t> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != parent) continue;
    std::ifstream cmd(entry.path() / "cmdline");
    std::string args((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
    std::replace(args.begin(), args.end(), '\0', ' ');
    if (args.find(part) != std::string::npos) out.push_back(static_cast<pid_t>(std::stol(name)));
  }
  return out;
}

// Forks a child that enters network namespace `ns`, sets `env` and runs the CLI with `args`;
// its stdout goes to `out_fd` and its stderr to `err_fd` when >= 0.
inline pid_t spawn_in(const std::string& ns, const std::vector<std::string>& env,
                      std::vector<std::string> args, int out_fd = -1, int err_fd = -1) {
  std::vector<char*> argv;
  args.insert(args.begin(), "helix");
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (!transport::enter_netns(ns).ok()) ::_exit(126);
    for (const auto& e : env) ::putenv(const_cast<char*>(e.c_str()));
    if (out_fd >= 0) ::dup2(out_fd, 1);
    if (err_fd >= 0) ::dup2(err_fd, 2);
    ::execv(HELIX_CLI, argv.data());
    ::_exit(127);
  }
  return pid;
}

// Waits for a child up to `limit`, then kills it: a test never hangs on a worker. With
// HELIX_DEBUG_REAP set, a child that overran is first dumped (every thread's stack, by gdb) to
// /tmp/reap_PID.txt: how a hang at exit is diagnosed.
inline void reap(pid_t pid, std::chrono::seconds limit = std::chrono::seconds(20)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (::waitpid(pid, nullptr, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() >= until) {
      if (std::getenv("HELIX_DEBUG_REAP") != nullptr) {
        const std::string id = std::to_string(pid);
        const std::string dump =
            "gdb -batch -p " + id + " -ex 'thread apply all bt' > /tmp/reap_" + id + ".txt 2>&1";
        [[maybe_unused]] const int rc = std::system(dump.c_str());
      }
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      ADD_FAILURE() << "pid " << pid << " did not exit in time";
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

// Reads `fd` to its end (a `helix run` child's stdout or stderr) and closes it; sets `running`
// (may be null) once a progress line shows the run serving.
inline std::string drain_run_output(int fd, std::atomic<bool>* running) {
  std::string text;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof(buf))) > 0;) {
    text.append(buf, static_cast<std::size_t>(n));
    if (running != nullptr && text.find("[run]") != std::string::npos) *running = true;
  }
  ::close(fd);
  return text;
}

// A listening engine built on another thread on a port the engine picks itself (a port chosen
// beforehand could be taken meanwhile by a test running beside this one).
struct listening_engine {
  std::promise<std::uint16_t> listening;
  expected<std::unique_ptr<engine>> eng = internal_error("not built");
  std::thread builder;

  explicit listening_engine(int workers, int standbys = 0) {
    listening_workers_options lo;
    lo.join_timeout = std::chrono::seconds(30);
    lo.standbys = standbys;
    lo.on_listening = [this](std::uint16_t p) { listening.set_value(p); };
    builder = std::thread([this, workers, lo] {
      eng = engine::create(config_for("tiny-llama", "helix:kvp=2,tpa=1", workers),
                           listening_workers(lo));
      if (!eng) {
        try {
          listening.set_value(0);  // never listened
        } catch (const std::future_error&) {
        }
      }
    });
  }
  ~listening_engine() {
    if (builder.joinable()) builder.join();
  }
};

// `helix worker --join 127.0.0.1:PORT --name NAME [--standby]`, a child of this process.
inline pid_t start_worker(std::uint16_t port, const std::string& name, bool standby = false) {
  const std::string join = "127.0.0.1:" + std::to_string(port);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::execl(HELIX_CLI, "helix", "worker", "--join", join.c_str(), "--name", name.c_str(),
            standby ? "--standby" : static_cast<char*>(nullptr), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

}  // namespace helix::cluster::fixtures
