// fork_ranks: ranks as child processes of the caller, connected through their UCX fabrics.
//
// Pipes carry the bootstrap: each child writes its UCX address to the parent, the parent sends
// every child the full list, and each child finally writes its body's outcome. Messages are
// framed as [u32 length][bytes]; lengths are bounded so a confused peer cannot make the parent
// allocate much.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "transport/netns.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::transport {
namespace {

using clock = std::chrono::steady_clock;
constexpr std::uint32_t max_frame = 1u << 20;

bool write_all(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t k = ::write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

// Reads exactly n bytes before `until`; false on EOF, error or timeout.
bool read_all(int fd, void* data, std::size_t n, clock::time_point until) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - clock::now());
    if (left.count() <= 0) return false;
    pollfd pfd{fd, POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 1000)));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return false;
    if (r == 0) continue;
    const ssize_t k = ::read(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

bool write_frame(int fd, const void* data, std::size_t n) {
  const auto len = static_cast<std::uint32_t>(n);
  return write_all(fd, &len, sizeof(len)) && write_all(fd, data, n);
}

bool read_frame(int fd, std::vector<std::byte>& out, clock::time_point until) {
  std::uint32_t len = 0;
  if (!read_all(fd, &len, sizeof(len), until) || len > max_frame) return false;
  out.resize(len);
  return read_all(fd, out.data(), len, until);
}

// The child's side; returns its exit code.
int run_child(const fork_ranks_options& opts, int rank, int to_parent, int from_parent,
              const std::function<expected<std::string>(int, ucx_fabric&)>& body) {
  const auto report = [&](const status& st, const std::string& text) {
    const auto code = static_cast<std::uint32_t>(st.code());
    const std::string& msg = st.ok() ? text : st.message();
    (void)(write_all(to_parent, &code, sizeof(code)) &&
           write_frame(to_parent, msg.data(), msg.size()));
    return st.ok() ? 0 : 1;
  };
  if (static_cast<std::size_t>(rank) < opts.netns.size() &&
      !opts.netns[static_cast<std::size_t>(rank)].empty()) {
    // As `ip netns exec` does (UCX finds its devices under /sys/class/net).
    if (status st = enter_netns(opts.netns[static_cast<std::size_t>(rank)]); !st.ok()) {
      return report(make_error(st.code(), "rank {}: {}", rank, st.message()), {});
    }
  }
  ucx_fabric_options fo = opts.fabric;
  fo.rank = rank;
  auto fabric = make_ucx_fabric(fo);
  if (!fabric) return report(fabric.error(), {});
  const auto addr = (*fabric)->address();
  if (!write_frame(to_parent, addr.data(), addr.size())) return 1;
  const auto until = clock::now() + opts.timeout;
  std::vector<std::vector<std::byte>> all(static_cast<std::size_t>(fo.world_size));
  for (auto& a : all) {
    if (!read_frame(from_parent, a, until)) {
      return report(
          make_error(errc::unavailable, "rank {}: no peer addresses from the parent", rank), {});
    }
  }
  if (status st = (*fabric)->connect(all); !st.ok()) return report(st, {});
  expected<std::string> result = body(rank, **fabric);
  // Leave together: a rank that exits while a peer still finishes a call with it makes that
  // call fail there. A peer that died or failed makes this barrier fail, which is fine.
  if (auto world = (*fabric)->make_world(rank); world) {
    call_options last;
    last.timeout = std::chrono::milliseconds(10000);
    (void)(*world)->barrier(last);
  }
  fabric->reset();  // closes the endpoints (flushing) before the outcome is reported
  return result ? report(ok_status(), *result) : report(result.error(), {});
}

std::string describe_exit(int wstatus) {
  if (WIFEXITED(wstatus)) return fmt::format("exited with code {}", WEXITSTATUS(wstatus));
  if (WIFSIGNALED(wstatus)) return fmt::format("killed by signal {}", WTERMSIG(wstatus));
  return "ended";
}

}  // namespace

expected<std::vector<rank_outcome>> fork_ranks(
    const fork_ranks_options& opts,
    const std::function<expected<std::string>(int rank, ucx_fabric& fabric)>& body) {
  const int n = opts.fabric.world_size;
  if (n < 1 || n > 1024) return invalid_argument("fork_ranks: world_size {} not in [1, 1024]", n);
  struct child {
    pid_t pid = -1;
    int to_parent = -1;    // parent reads
    int from_parent = -1;  // parent writes
  };
  std::vector<child> kids(static_cast<std::size_t>(n));
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t parent = ::getpid();
  const auto cleanup = [&](bool kill_them) {
    for (auto& k : kids) {
      if (kill_them && k.pid > 0) ::kill(k.pid, SIGKILL);
      if (k.to_parent >= 0) ::close(k.to_parent);
      if (k.from_parent >= 0) ::close(k.from_parent);
      k.to_parent = k.from_parent = -1;
    }
    if (kill_them) {
      for (auto& k : kids) {
        if (k.pid > 0) ::waitpid(k.pid, nullptr, 0);
      }
    }
  };
  for (int r = 0; r < n; ++r) {
    int up[2], down[2];
    if (::pipe2(up, O_CLOEXEC) != 0) {
      cleanup(true);
      return make_error(errc::resource_exhausted, "fork_ranks: pipe: {}", std::strerror(errno));
    }
    if (::pipe2(down, O_CLOEXEC) != 0) {
      ::close(up[0]);
      ::close(up[1]);
      cleanup(true);
      return make_error(errc::resource_exhausted, "fork_ranks: pipe: {}", std::strerror(errno));
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      for (int fd : {up[0], up[1], down[0], down[1]}) ::close(fd);
      cleanup(true);
      return make_error(errc::resource_exhausted, "fork_ranks: fork: {}", std::strerror(errno));
    }
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      for (auto& k : kids) {  // earlier siblings' pipe ends are not ours
        if (k.to_parent >= 0) ::close(k.to_parent);
        if (k.from_parent >= 0) ::close(k.from_parent);
      }
      ::close(up[0]);
      ::close(down[1]);
      const int code = run_child(opts, r, up[1], down[0], body);
      std::fflush(stdout);
      std::fflush(stderr);
      ::_exit(code);
    }
    ::close(up[1]);
    ::close(down[0]);
    kids[static_cast<std::size_t>(r)] = {pid, up[0], down[1]};
  }

  const auto until = clock::now() + opts.timeout;
  std::vector<rank_outcome> out(static_cast<std::size_t>(n));
  std::vector<std::vector<std::byte>> addresses(static_cast<std::size_t>(n));
  bool bootstrap_ok = true;
  for (int r = 0; r < n; ++r) {
    out[static_cast<std::size_t>(r)].rank = r;
    out[static_cast<std::size_t>(r)].pid = kids[static_cast<std::size_t>(r)].pid;
    if (!read_frame(kids[static_cast<std::size_t>(r)].to_parent,
                    addresses[static_cast<std::size_t>(r)], until)) {
      bootstrap_ok = false;
    }
  }
  if (bootstrap_ok) {
    // A child that already failed and exited must not kill the caller with SIGPIPE: block it
    // here, let the write fail with EPIPE, and drop the pending signal before unblocking.
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
    for (auto& k : kids) {
      for (const auto& a : addresses) {
        if (!write_frame(k.from_parent, a.data(), a.size())) break;
      }
    }
    const timespec zero{};
    while (sigtimedwait(&pipe_set, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  } else {
    for (auto& k : kids) {  // children waiting for addresses see EOF and report
      ::close(k.from_parent);
      k.from_parent = -1;
    }
  }
  for (int r = 0; r < n; ++r) {
    auto& k = kids[static_cast<std::size_t>(r)];
    auto& o = out[static_cast<std::size_t>(r)];
    std::uint32_t code = 0;
    std::vector<std::byte> text;
    if (read_all(k.to_parent, &code, sizeof(code), until) && read_frame(k.to_parent, text, until)) {
      std::string s(reinterpret_cast<const char*>(text.data()), text.size());
      if (code == 0) {
        o.text = std::move(s);
      } else {
        o.result = status(static_cast<errc>(code), std::move(s));
      }
    } else {
      o.result = make_error(errc::unavailable, "rank {} (pid {}) reported nothing", r, k.pid);
    }
  }
  // Every child has reported or timed out; collect them, killing the ones past the limit.
  for (int r = 0; r < n; ++r) {
    auto& k = kids[static_cast<std::size_t>(r)];
    auto& o = out[static_cast<std::size_t>(r)];
    int wstatus = 0;
    for (;;) {
      const pid_t w = ::waitpid(k.pid, &wstatus, WNOHANG);
      if (w == k.pid) break;
      if (w < 0 && errno != EINTR) break;
      if (clock::now() >= until) {
        ::kill(k.pid, SIGKILL);
        ::waitpid(k.pid, &wstatus, 0);
        if (o.result.ok() && o.text.empty()) {
          o.result = make_error(errc::deadline_exceeded, "rank {} (pid {}) ran past {} ms", r,
                                k.pid, opts.timeout.count());
        }
        break;
      }
      ::usleep(2000);
    }
    const bool clean = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
    if (!clean && o.result.ok()) {
      o.result =
          make_error(errc::unavailable, "rank {} (pid {}) {}", r, k.pid, describe_exit(wstatus));
    } else if (!o.result.ok() && o.result.code() == errc::unavailable &&
               o.result.message().find("reported nothing") != std::string::npos) {
      o.result = make_error(errc::unavailable, "rank {} (pid {}) {} without reporting", r, k.pid,
                            describe_exit(wstatus));
    }
    k.pid = -1;
  }
  cleanup(false);
  return out;
}

}  // namespace helix::transport
