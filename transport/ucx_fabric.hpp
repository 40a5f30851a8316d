// The UCX backend's public face: a fabric whose ranks are processes, on one host or many.
//
// Each process hosts exactly one rank of the world. It creates its fabric (one UCP context and
// one UCP worker), hands address() to every other rank over the control plane (the cluster's
// join handshake; fork_ranks() below for tests and benchmarks), and calls connect() with every
// rank's address. From then on it behaves as `fabric` says (fabric.hpp, communicator.hpp): the
// same collectives, the same semantics and the same errors as the local backend, with these
// additions:
// - A dead peer fails every pending and later call that needs it with `unavailable`, naming the
//   peer's rank and UCX's reason (UCP error handling mode PEER, keepalive every
//   `keepalive_interval`): never a hang.
// - abort() also tells every connected peer, whose fabrics then abort with the same status.
// - make_communicator() accepts only this process's own rank.
// - A failed collective may leave its receive buffer partly written.
//
// Data between processes on one machine (same boot, pid and network namespaces): a payload of at
// least one_copy_min_bytes is copied once, by the receiver's progress thread straight from the
// sender's buffer into its own (process_vm_readv), when a probe read at connect() showed that the
// receiver may read the sender. Everything else goes through UCX (shared memory within a machine,
// tcp between namespaces and hosts). UCX 1.13 has its own zero-copy lane for this (cma), but
// selects no such lane under error mode PEER (its memory domain cannot invalidate memory), so
// without ours large messages are copied twice, through UCX's shared-memory bounce buffers.
//
// Progress: one thread per fabric owns the UCP worker. It sleeps in epoll on the worker's event
// fd (UCP_FEATURE_WAKEUP + ucp_worker_arm) and on an eventfd that callers signal when they post,
// so a posted i... call advances while its caller computes and an idle rank costs no CPU.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.hpp"
#include "transport/fabric.hpp"

namespace helix::transport {

struct ucx_fabric_options {
  int world_size = 1;
  int rank = 0;
  /// Default per-call timeout (call_options::timeout overrides); zero waits until the peer
  /// answers, fails, or the fabric is aborted.
  std::chrono::milliseconds default_timeout{0};
  /// UCX transports (UCX_TLS syntax, e.g. "tcp" or "posix,cma,self"); empty lets UCX choose.
  std::string transports;
  /// Network devices for tcp (UCX_NET_DEVICES syntax, e.g. "veth1" or "lo"); empty means all.
  std::string net_devices;
  /// Shared-memory transports with peer error handling (MM_ERROR_HANDLING=y). Without it,
  /// UCX 1.13 drops posix/sysv under error mode PEER and shared memory is much slower.
  bool shm_error_handling = true;
  /// How often UCX checks that peers are alive (UCX_KEEPALIVE_INTERVAL); bounds how long a
  /// peer that died without closing its connections goes unnoticed.
  std::chrono::milliseconds keepalive_interval{500};
  /// Payloads of at least one_copy_min_bytes to a peer on this machine are read by the peer
  /// straight from the sender's buffer (process_vm_readv) where it may; off: always UCX. The
  /// default is about where UCX leaves its eager protocol for rendezvous on shared memory, and
  /// where one copy starts to win (measurements in transport/ucx/ucx_one_copy.cpp).
  bool one_copy = true;
  std::size_t one_copy_min_bytes = std::size_t{16} << 10;
};

class ucx_fabric : public fabric {
 public:
  /// This rank's UCP worker address, to give to every other rank.
  [[nodiscard]] virtual std::span<const std::byte> address() const = 0;
  /// Creates the endpoints to every other rank: addresses[r] is rank r's address() (this
  /// rank's own entry is ignored). Call once, before any communicator is used.
  [[nodiscard]] virtual status connect(std::span<const std::vector<std::byte>> addresses) = 0;
  /// The transports to `peer`, for reports: UCX's lanes, e.g. "sysv/memory", then
  /// "one-copy/process_vm_readv" when this rank reads large messages from the peer's memory;
  /// empty before connect().
  [[nodiscard]] virtual std::string transports_to(int peer) const = 0;
};

/// invalid_argument for bad options; unavailable when UCX cannot start (its reason included).
[[nodiscard]] expected<std::unique_ptr<ucx_fabric>> make_ucx_fabric(const ucx_fabric_options& opts);

/// Ranks as child processes of the caller, for tests and benchmarks (the cluster module starts
/// real workers through the control plane instead).
struct fork_ranks_options {
  /// Options of every rank's fabric; world_size ranks are forked, `rank` is set per child.
  ucx_fabric_options fabric;
  /// Per rank, a network namespace (a name under /var/run/netns, as `ip netns add` makes) the
  /// child enters before it starts UCX; empty or missing entries stay in the caller's.
  std::vector<std::string> netns;
  /// The whole run's limit: children still running then are killed (SIGKILL) and reported.
  std::chrono::milliseconds timeout{120000};
};

/// What one child reported: its body's result (ok and its text, or the error), or how it died.
struct rank_outcome {
  int rank = 0;
  int pid = 0;
  status result;     // the body's status, or how the child ended if it did not report
  std::string text;  // the body's text on success
};

/// Forks opts.fabric.world_size children. Child r makes its fabric, exchanges addresses with
/// the others through pipes to the caller, connects, runs body(r, fabric), waits in a world
/// barrier (10 s at most; so that no rank leaves while a peer still finishes a call with it) and
/// exits (_exit, no atexit handlers) with 0 when the body returned a value, 1 otherwise. Children
/// die with the caller (PR_SET_PDEATHSIG). Returns one outcome per rank once every child ended; an
/// error only when the children could not be started. Call it from a process that has not started
/// threads it needs in the children (only the calling thread exists in a child).
[[nodiscard]] expected<std::vector<rank_outcome>> fork_ranks(
    const fork_ranks_options& opts,
    const std::function<expected<std::string>(int rank, ucx_fabric& fabric)>& body);

}  // namespace helix::transport
