// The fault-injecting communicator: a decorator over any `communicator` that delays, fails, hangs
// or crashes the calls a fault schedule (schedule.hpp) names, and records every fault it injected.
//
// Who calls it: fault_fabric (fault_fabric.hpp) wraps every communicator it makes, so an engine or
// a test is handed faults without knowing; tests may also wrap one communicator directly. The
// shared state (the schedule, per-rank call counters, tags, the record of injected faults) is a
// `fault_injector`, one per world, shared by every decorated communicator of that world.
//
// On the call a fault hits, on the faulty rank (peers are untouched; they see the consequence):
// - DELAY sleeps `delay`, then makes the call: peers wait that much longer.
// - FAIL returns the fault's error code, naming the injected fault, without making the call.
//   Peers of a collective (or of a send/recv) that this rank skipped wait in vain and end with
//   deadline_exceeded at their own deadline, or when the fabric is aborted: never a hang, as
//   long as they have a deadline.
// - HANG makes no call and ends with deadline_exceeded at the call's deadline (its timeout, else
//   fault_options::default_timeout, else fault_options::max_hang: never forever), or earlier with
//   the abort reason when the fabric is aborted (fault_fabric::abort, or the wrapped fabric's own
//   abort, which is seen within fault_options::abort_poll). Peers end as for FAIL.
// - CRASH kills this process with SIGKILL at once: only meaningful where ranks are processes
//   (fork_ranks, `helix worker`); with ranks as threads it kills them all. Peers see a dead rank
//   (ucx: unavailable naming it).
// Calls are counted per global rank over all of its communicators: the n-th call of a kind is the
// rank's n-th of that kind in program order, whichever group it went to.
// When several faults hit one call, their delays add up and the first FAIL, HANG or CRASH in
// schedule order acts; later ones are dropped and not recorded.
//
// Thread-safety: a fault_communicator is as thread-safe as the communicator it wraps (one thread
// at a time); a fault_injector is thread-safe (one mutex; a call takes it once, briefly).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <vector>

#include "core/status.hpp"
#include "transport/communicator.hpp"
#include "transport/fabric.hpp"
#include "transport/fault/schedule.hpp"

namespace helix::transport::fault {

struct fault_options {
  /// The wrapped communicators' default per-call timeout: a HANG on a call without a timeout of
  /// its own ends then. Zero: such a HANG ends at max_hang.
  std::chrono::milliseconds default_timeout{0};
  /// The longest a HANG lasts when neither the call nor default_timeout gives a deadline.
  std::chrono::milliseconds max_hang{10000};
  /// How often a HANG checks the wrapped fabric's abort_status() (an abort that did not go
  /// through fault_fabric::abort, e.g. a UCX peer's).
  std::chrono::milliseconds abort_poll{10};
};

/// What the caller is doing, for faults tied to a step or a layer. -1: untagged.
struct call_tag {
  std::int64_t step = -1;
  std::int64_t layer = -1;

  friend bool operator==(const call_tag&, const call_tag&) = default;
};

/// One fault that was injected, for reports.
struct injected_fault {
  int rank = 0;  // global rank of the faulty call
  call_kind kind = call_kind::any;
  std::uint64_t call_idx = 0;  // 1-based: the rank's call_idx-th call of `kind`
  fault_action action = fault_action::fail;
  std::size_t fault_idx = 0;  // index of the spec in the schedule
  call_tag tag;               // the rank's tag at the call

  friend bool operator==(const injected_fault&, const injected_fault&) = default;
};

/// What a call must do, as decided by fault_injector::on_call.
struct fault_decision {
  std::chrono::milliseconds delay{0};  // sum of every DELAY that hit the call; sleep it first
  std::optional<fault_action> action;  // then fail, hang or crash (the first such fault), if set
  status error;                        // fail: the error; hang/crash: names the fault
};

/// The shared state of one world's fault injection. Thread-safe.
class fault_injector {
 public:
  /// `schedule` must pass validate() (checked: HELIX_CHECK).
  explicit fault_injector(fault_schedule schedule, fault_options options = {});

  [[nodiscard]] const fault_schedule& schedule() const { return schedule_; }
  [[nodiscard]] const fault_options& options() const { return options_; }

  /// Tags the calls global rank `rank` makes from now on (faults with a step or layer match only
  /// calls with that tag). Call from the rank's compute thread between steps or layers.
  void set_tag(int rank, call_tag tag);

  /// Counts a call of `kind` by global rank `rank` and says what to do with it; records every
  /// fault it returns. Used by fault_communicator; public for other decorators (control plane).
  [[nodiscard]] fault_decision on_call(int rank, call_kind kind);

  /// Every fault injected so far, in injection order (across ranks: the order the calls came).
  [[nodiscard]] std::vector<injected_fault> injected() const;
  /// How many calls of `kind` global rank `rank` has made so far (`any`: all its calls), faulty
  /// or not; 0 for a rank that made none. For a chaos harness that sizes nth from a fault-free
  /// run.
  [[nodiscard]] std::uint64_t calls(int rank, call_kind kind) const;

  /// Ends every HANG now and later with `reason` (aborted when ok). Idempotent: the first reason
  /// wins. fault_fabric::abort calls it.
  void abort(status reason);

  /// Waits (never spins) until `deadline`, an abort() of this injector, or a non-ok
  /// abort_status() of `abort_source` (checked every options().abort_poll; may be null), and
  /// returns deadline_exceeded with `what` (from fault_decision::error), or the abort reason.
  [[nodiscard]] status hang(std::chrono::steady_clock::time_point deadline,
                            const fabric* abort_source, const status& what) const;
  /// The abort reason: this injector's, else `abort_source`'s (may be null); ok when none.
  [[nodiscard]] status abort_status(const fabric* abort_source) const;

 private:
  struct rank_state {
    call_tag tag;
    std::vector<std::uint64_t> calls;  // [num_call_kinds], calls[any] counts every call
    std::vector<std::uint64_t> hits;   // [schedule size]: matching calls so far, per fault
  };
  rank_state& state_of(int rank);  // mu_ held

  const fault_schedule schedule_;
  const fault_options options_;
  mutable std::mutex mu_;
  mutable std::condition_variable aborted_cv_;
  status abort_reason_;
  std::vector<rank_state> ranks_;  // indexed by global rank, grown on demand
  std::vector<injected_fault> injected_;
};

/// Decorator: forwards every call to `inner` unless the injector says otherwise (see the header
/// paragraph). Group and rank information is the wrapped communicator's.
class fault_communicator final : public communicator {
 public:
  /// `abort_source`: the fabric whose abort ends a HANG early (may be null; must outlive this).
  fault_communicator(std::unique_ptr<communicator> inner, std::shared_ptr<fault_injector> injector,
                     const fabric* abort_source = nullptr);

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::span<const int> global_ranks() const override { return inner_->global_ranks(); }
  /// This rank's global rank (what fault specs name).
  [[nodiscard]] int global_rank() const { return global_ranks()[static_cast<std::size_t>(rank())]; }

  request iall_to_all(send_buf send, recv_buf recv, const call_options& opts) override;
  request iall_to_all_v(const all_to_all_v_args& args, const call_options& opts) override;
  request iall_reduce(send_buf send, recv_buf recv, reduce_op op,
                      const call_options& opts) override;
  request iall_gather(send_buf send, recv_buf recv, const call_options& opts) override;
  request ibroadcast(recv_buf buf, int root, const call_options& opts) override;
  request ibarrier(const call_options& opts) override;
  request isend(send_buf buf, int peer, int tag, const call_options& opts) override;
  request irecv(recv_buf buf, int peer, int tag, const call_options& opts) override;

 private:
  // The request of a call that a fault hit, or nullopt when the call goes to `inner_` (after
  // any delay).
  [[nodiscard]] std::optional<request> inject(call_kind kind, const call_options& opts);

  std::unique_ptr<communicator> inner_;
  std::shared_ptr<fault_injector> injector_;
  const fabric* abort_source_;
};

}  // namespace helix::transport::fault
