// Several "hosts" on this machine: Linux network namespaces joined by veth links, so that
// multi-host transport code (UCX over tcp) can be tested and measured on one machine with real
// network stacks in between and without sending a packet off the machine.
//
// Who calls it: transport tests and `helix bench transport` (the ucx-tcp backend), which hand
// netns_names() to fork_ranks_options::netns and device() to ucx_fabric_options::net_devices.
//
// Topology: host i is the namespace `helix-<pid>-<i>` (pid of the creating process) with one
// interface `helix0` holding 10.200.<x>.<i+1>/24, where x = 1 + pid % 254, so that concurrent
// runs do not share a subnet. Two hosts are joined by one veth pair; more hosts each get a veth
// pair to one bridge that lives in a namespace of its own, `helix-<pid>-br`. Nothing is created
// in the caller's own namespace, and `lo` is up in every host. Every interface carries the same
// name because each lives in its own namespace: one net_devices string fits every rank.
//
// The `ip` tool (iproute2) does the work; it runs as a child process (fork + execvp, no shell).
// Creation needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and a writable /var/run/netns.
//
// Ownership: a netns_hosts owns its namespaces; its destructor deletes them (the veth and bridge
// devices vanish with them). A process killed before its destructor ran leaves them behind:
// create() removes every `helix-<pid>-...` namespace whose pid no longer runs. Move-only. One set
// may exist per process at a time, because the names are derived from the pid. Thread-safety: const
// methods are safe from any thread; create() and the destructor fork, so call them while no other
// thread of this process takes locks that a child would need (in practice: from the main thread,
// before worker threads start).
#pragma once

#include <string>
#include <vector>

#include "core/status.hpp"

namespace helix::transport {

/// One host of a netns_hosts set.
struct netns_host {
  /// The namespace's name under /var/run/netns (fork_ranks_options::netns takes it).
  std::string netns;
  /// The host's IPv4 address on the shared link, e.g. "10.200.37.1" (prefix /24).
  std::string address;
  /// The host's interface on the link, e.g. "helix0" (ucx_fabric_options::net_devices).
  std::string device;
};

class netns_hosts {
 public:
  /// Creates `num_hosts` (2..64) connected hosts. Errors: invalid_argument for a count out of
  /// range; failed_precondition when namespaces or veth links cannot be made here (not root, no
  /// `ip`, another live set in this process, or the kernel or a container refused), with `ip`'s
  /// own message; internal for any later failure. Whatever was made before a failure is removed.
  [[nodiscard]] static expected<netns_hosts> create(int num_hosts);

  netns_hosts(netns_hosts&& other) noexcept;
  netns_hosts& operator=(netns_hosts&& other) noexcept;
  netns_hosts(const netns_hosts&) = delete;
  netns_hosts& operator=(const netns_hosts&) = delete;
  /// Deletes every namespace this set created; failures are logged, not reported.
  ~netns_hosts();

  [[nodiscard]] int size() const { return static_cast<int>(hosts_.size()); }
  /// Host `host_idx` in [0, size()).
  [[nodiscard]] const netns_host& host(int host_idx) const;
  /// Every host's namespace name, in host order (for fork_ranks_options::netns).
  [[nodiscard]] std::vector<std::string> netns_names() const;
  /// Every namespace this set made, the bridge's included, for checks that they are gone later.
  [[nodiscard]] const std::vector<std::string>& owned_namespaces() const { return owned_; }

 private:
  netns_hosts() = default;
  void destroy() noexcept;

  std::vector<netns_host> hosts_;
  std::vector<std::string> owned_;  // in creation order; deleted in reverse
  bool alive_ = false;              // this object holds the process's one live set
};

/// Moves the calling process into the network namespace `netns` (a name under /var/run/netns)
/// the way `ip netns exec` does: setns() into it, then a private mount namespace in which /sys is
/// that network namespace's sysfs. The second half matters: UCX (and other libraries) list
/// interfaces in /sys/class/net, which after a bare setns() still shows the old namespace's
/// devices, so UCX_NET_DEVICES=helix0 would find no such device. Call it in a single-threaded
/// process (a freshly forked child) before any library starts threads: setns() moves only the
/// calling thread and unshare(CLONE_NEWNS) refuses a threaded process. Errors: not_found when
/// the namespace does not exist; failed_precondition when the kernel refuses (errno's text).
[[nodiscard]] status enter_netns(const std::string& netns);

/// What a finished child process left behind.
struct process_result {
  int exit_code = 0;   // the exit status, or 128 + signal number when killed by a signal
  std::string output;  // its stdout
  std::string errors;  // its stderr
};

/// Runs argv[0] (looked up in PATH) with `argv` as a child process, no shell involved, and waits
/// for it; stdin is /dev/null. Errors: invalid_argument for an empty argv; internal when the
/// pipes or the fork fail. A program that cannot be executed is a result with exit code 127 and
/// the reason in `errors`.
[[nodiscard]] expected<process_result> run_process(const std::vector<std::string>& argv);

}  // namespace helix::transport
