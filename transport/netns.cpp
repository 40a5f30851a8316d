#include "transport/netns.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "core/log.hpp"

namespace helix::transport {
namespace {

constexpr int max_hosts = 64;
constexpr const char* host_device = "helix0";
constexpr const char* bridge_device = "br0";
constexpr const char* netns_dir = "/var/run/netns";
// A veth link normally reports carrier within milliseconds; this bounds a slow kernel.
constexpr std::chrono::milliseconds link_up_limit{3000};

// The names derive from the pid, so a second live set in this process would collide.
std::atomic<bool> set_alive{false};

void close_fd(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Writes `text` to fd 2 with write(2) only: safe in a child between fork and exec.
void child_write(const char* text) {
  std::size_t left = std::strlen(text);
  while (left > 0) {
    const ssize_t n = ::write(2, text, left);
    if (n <= 0) return;
    text += n;
    left -= static_cast<std::size_t>(n);
  }
}

// Reads both pipes until the child closed them (it may fill either one first).
void drain(int out_fd, int err_fd, std::string& out, std::string& err) {
  pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  std::string* sinks[2] = {&out, &err};
  int open_fds = 2;
  char chunk[4096];
  while (open_fds > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = ::read(fds[i].fd, chunk, sizeof(chunk));
      if (n > 0) {
        sinks[i]->append(chunk, static_cast<std::size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        fds[i].fd = -1;  // poll ignores negative descriptors
        --open_fds;
      }
    }
  }
}

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// Runs `ip args...`; ok, or `code` with the command line and ip's stderr.
status run_ip(const std::vector<std::string>& args, errc code) {
  std::vector<std::string> argv{"ip"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto res = run_process(argv);
  std::string line = "ip";
  for (const std::string& a : args) line += " " + a;
  if (!res) return res.error().with_context(line);
  if (res->exit_code == 0) return ok_status();
  return status(code, fmt::format("`{}` failed (exit code {}): {}", line, res->exit_code,
                                  trimmed(res->errors)));
}

// The pid in a name this code makes (`helix-<pid>-<suffix>`), if `name` is one.
std::optional<int> owner_pid(const std::string& name) {
  constexpr std::string_view prefix = "helix-";
  if (name.rfind(prefix, 0) != 0) return std::nullopt;
  const std::size_t dash = name.find('-', prefix.size());
  if (dash == std::string::npos || dash == prefix.size()) return std::nullopt;
  int pid = 0;
  const char* first = name.data() + prefix.size();
  const auto [ptr, err] = std::from_chars(first, name.data() + dash, pid);
  if (err != std::errc() || ptr != name.data() + dash || pid <= 0) return std::nullopt;
  return pid;
}

// Polls until `device` in namespace `ns` reports carrier (LOWER_UP).
status wait_link_up(const std::string& ns, const std::string& device) {
  const auto deadline = std::chrono::steady_clock::now() + link_up_limit;
  std::string last;
  while (true) {
    auto res = run_process({"ip", "-n", ns, "-o", "link", "show", "dev", device});
    if (!res) return res.error();
    if (res->exit_code == 0 && res->output.find("LOWER_UP") != std::string::npos) {
      return ok_status();
    }
    last = trimmed(res->exit_code == 0 ? res->output : res->errors);
    if (std::chrono::steady_clock::now() > deadline) {
      return internal_error("{} in namespace {} has no carrier after {} ms: {}", device, ns,
                            link_up_limit.count(), last);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

expected<process_result> run_process(const std::vector<std::string>& argv) {
  if (argv.empty()) return invalid_argument("run_process: empty argv");
  // Everything the child needs is built before fork: the child only calls async-signal-safe
  // functions.
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (const std::string& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const std::string exec_failed = fmt::format("cannot execute {}: ", argv[0]);

  int out_pipe[2] = {-1, -1};
  int err_pipe[2] = {-1, -1};
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) {
    return internal_error("run_process {}: pipe: {}", argv[0], std::strerror(errno));
  }
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    const int e = errno;
    close_fd(out_pipe[0]);
    close_fd(out_pipe[1]);
    return internal_error("run_process {}: pipe: {}", argv[0], std::strerror(e));
  }
  std::fflush(nullptr);  // buffered output would otherwise be written twice
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    for (int* fd : {&out_pipe[0], &out_pipe[1], &err_pipe[0], &err_pipe[1]}) close_fd(*fd);
    return internal_error("run_process {}: fork: {}", argv[0], std::strerror(e));
  }
  if (pid == 0) {
    const int null_fd = ::open("/dev/null", O_RDONLY);
    if (null_fd >= 0) ::dup2(null_fd, 0);
    ::dup2(out_pipe[1], 1);
    ::dup2(err_pipe[1], 2);
    ::execvp(cargv[0], cargv.data());
    const int e = errno;
    child_write(exec_failed.c_str());
    child_write(strerrordesc_np(e));  // a static string: safe here, unlike strerror
    child_write("\n");
    ::_exit(127);
  }
  close_fd(out_pipe[1]);
  close_fd(err_pipe[1]);
  process_result res;
  drain(out_pipe[0], err_pipe[0], res.output, res.errors);
  close_fd(out_pipe[0]);
  close_fd(err_pipe[0]);
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0) {
    if (errno != EINTR) {
      return internal_error("run_process {}: waitpid: {}", argv[0], std::strerror(errno));
    }
  }
  res.exit_code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 128 + WTERMSIG(wstatus);
  return res;
}

status enter_netns(const std::string& netns) {
  const std::string path = std::string(netns_dir) + "/" + netns;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) return not_found("network namespace {} does not exist ({})", netns, path);
    return failed_precondition("cannot open {}: {}", path, std::strerror(e));
  }
  const int rc = ::setns(fd, CLONE_NEWNET);
  const int setns_errno = errno;
  ::close(fd);
  if (rc != 0) {
    return failed_precondition("setns into network namespace {}: {}", netns,
                               std::strerror(setns_errno));
  }
  // As iproute2's netns_switch(): a mount namespace of our own whose mounts do not propagate
  // back, with /sys remounted so that it describes the new network namespace.
  if (::unshare(CLONE_NEWNS) != 0) {
    return failed_precondition("unshare(CLONE_NEWNS) after entering {}: {}", netns,
                               std::strerror(errno));
  }
  if (::mount("", "/", "none", MS_SLAVE | MS_REC, nullptr) != 0) {
    return failed_precondition("making / a slave mount in {}: {}", netns, std::strerror(errno));
  }
  unsigned long flags = 0;
  struct statvfs sys_stat {};
  if (::statvfs("/sys", &sys_stat) == 0 && (sys_stat.f_flag & ST_RDONLY) != 0) flags = MS_RDONLY;
  ::umount2("/sys", MNT_DETACH);  // may not be mounted at all: then there is nothing to hide
  if (::mount(netns.c_str(), "/sys", "sysfs", flags, nullptr) != 0) {
    return failed_precondition("mounting sysfs of network namespace {} on /sys: {}", netns,
                               std::strerror(errno));
  }
  return ok_status();
}

expected<netns_hosts> netns_hosts::create(int num_hosts) {
  if (num_hosts < 2 || num_hosts > max_hosts) {
    return invalid_argument("netns_hosts: {} hosts requested; 2 to {} are supported", num_hosts,
                            max_hosts);
  }
  if (::geteuid() != 0) {
    return failed_precondition(
        "network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); running as uid {}",
        ::geteuid());
  }
  if (set_alive.exchange(true)) {
    return failed_precondition(
        "a netns_hosts set already exists in this process (names derive from the pid)");
  }
  netns_hosts set;  // from here on its destructor removes whatever exists and frees the slot
  set.alive_ = true;
  const int pid = static_cast<int>(::getpid());
  const std::string prefix = fmt::format("helix-{}-", pid);
  const int subnet = 1 + pid % 254;

  // A set's namespaces outlive a process killed before its destructor ran. Those of a pid that
  // no longer runs (or is ours now, so reused) are left over: remove them, so that crashed runs
  // do not accumulate and a reused pid finds its names free.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(netns_dir, ec)) {
    const std::string name = entry.path().filename().string();
    const std::optional<int> owner = owner_pid(name);
    if (!owner || (*owner != pid && (::kill(*owner, 0) == 0 || errno != ESRCH))) continue;
    module_logger("transport")->warn("removing left-over network namespace {}", name);
    const status st = run_ip({"netns", "del", name}, errc::internal);
    if (!st.ok()) module_logger("transport")->warn("{}", st.message());
  }

  for (int i = 0; i < num_hosts; ++i) {
    netns_host h;
    h.netns = prefix + std::to_string(i);
    h.address = fmt::format("10.200.{}.{}", subnet, i + 1);
    h.device = host_device;
    // The first failure means namespaces do not work here at all: a precondition, not a bug.
    HELIX_RETURN_IF_ERROR(run_ip({"netns", "add", h.netns},
                                 set.owned_.empty() ? errc::failed_precondition : errc::internal));
    set.owned_.push_back(h.netns);
    set.hosts_.push_back(std::move(h));
  }

  // Each veth end is created directly inside its namespace, so the caller's namespace never
  // holds one and every host's end can carry the same name.
  if (num_hosts == 2) {
    HELIX_RETURN_IF_ERROR(
        run_ip({"link", "add", host_device, "netns", set.hosts_[0].netns, "type", "veth", "peer",
                "name", host_device, "netns", set.hosts_[1].netns},
               errc::failed_precondition));
  } else {
    const std::string bridge_ns = prefix + "br";
    HELIX_RETURN_IF_ERROR(run_ip({"netns", "add", bridge_ns}, errc::internal));
    set.owned_.push_back(bridge_ns);
    HELIX_RETURN_IF_ERROR(
        run_ip({"-n", bridge_ns, "link", "add", bridge_device, "type", "bridge"}, errc::internal));
    HELIX_RETURN_IF_ERROR(
        run_ip({"-n", bridge_ns, "link", "set", bridge_device, "up"}, errc::internal));
    for (int i = 0; i < num_hosts; ++i) {
      const std::string port = fmt::format("p{}", i);
      HELIX_RETURN_IF_ERROR(run_ip(
          {"link", "add", host_device, "netns", set.hosts_[static_cast<std::size_t>(i)].netns,
           "type", "veth", "peer", "name", port, "netns", bridge_ns},
          errc::failed_precondition));
      HELIX_RETURN_IF_ERROR(run_ip(
          {"-n", bridge_ns, "link", "set", port, "master", bridge_device, "up"}, errc::internal));
    }
  }
  for (const netns_host& h : set.hosts_) {
    HELIX_RETURN_IF_ERROR(
        run_ip({"-n", h.netns, "addr", "add", h.address + "/24", "dev", h.device}, errc::internal));
    HELIX_RETURN_IF_ERROR(run_ip({"-n", h.netns, "link", "set", h.device, "up"}, errc::internal));
    HELIX_RETURN_IF_ERROR(run_ip({"-n", h.netns, "link", "set", "lo", "up"}, errc::internal));
  }
  for (const netns_host& h : set.hosts_) HELIX_RETURN_IF_ERROR(wait_link_up(h.netns, h.device));
  return set;
}

netns_hosts::netns_hosts(netns_hosts&& other) noexcept
    : hosts_(std::move(other.hosts_)), owned_(std::move(other.owned_)), alive_(other.alive_) {
  other.hosts_.clear();
  other.owned_.clear();
  other.alive_ = false;
}

netns_hosts& netns_hosts::operator=(netns_hosts&& other) noexcept {
  if (this != &other) {
    destroy();
    hosts_ = std::move(other.hosts_);
    owned_ = std::move(other.owned_);
    alive_ = other.alive_;
    other.hosts_.clear();
    other.owned_.clear();
    other.alive_ = false;
  }
  return *this;
}

netns_hosts::~netns_hosts() {
  destroy();
}

void netns_hosts::destroy() noexcept {
  for (auto it = owned_.rbegin(); it != owned_.rend(); ++it) {
    const status st = run_ip({"netns", "del", *it}, errc::internal);
    if (!st.ok()) module_logger("transport")->warn("netns_hosts: {}", st.message());
  }
  owned_.clear();
  hosts_.clear();
  if (alive_) set_alive.store(false);
  alive_ = false;
}

const netns_host& netns_hosts::host(int host_idx) const {
  HELIX_CHECK(host_idx >= 0 && host_idx < size(), "host {} of {}", host_idx, size());
  return hosts_[static_cast<std::size_t>(host_idx)];
}

std::vector<std::string> netns_hosts::netns_names() const {
  std::vector<std::string> out;
  out.reserve(hosts_.size());
  for (const netns_host& h : hosts_) out.push_back(h.netns);
  return out;
}

}  // namespace helix::transport
