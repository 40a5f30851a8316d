// A `fabric` decorator that wraps every communicator it makes in a fault_communicator, so that an
// engine, a worker or a test can be handed a world with faults injected from a schedule.
//
// Who calls it: tests and the chaos harness (`helix chaos`), around the local fabric (ranks as
// threads) or a ucx fabric (one per rank process; CRASH needs processes). What each fault does is
// in fault_communicator.hpp. All ranks of one fault_fabric share one fault_injector: the record of
// injected faults is the world's. With one fabric per process (ucx), every process holds its own
// fault_fabric with the same schedule; each injects only its own rank's faults.
//
// Ownership: the owning form (make_fault_fabric) owns the wrapped fabric; the borrowing
// constructor needs `inner` to outlive it. Either must outlive the communicators it made.
// Thread-safety: as `fabric`: every method is thread-safe.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "core/status.hpp"
#include "transport/fabric.hpp"
#include "transport/fault/fault_communicator.hpp"
#include "transport/fault/schedule.hpp"

namespace helix::transport::fault {

class fault_fabric final : public fabric {
 public:
  /// Borrows `inner`. `schedule` must pass validate(schedule, inner.world_size()) (HELIX_CHECK;
  /// make_fault_fabric returns the error instead).
  fault_fabric(fabric& inner, fault_schedule schedule, fault_options options = {});
  /// Owns `inner` (not null); otherwise as above.
  fault_fabric(std::unique_ptr<fabric> inner, fault_schedule schedule, fault_options options = {});

  int world_size() const override { return inner_.world_size(); }
  /// The wrapped fabric's communicator, decorated; the wrapped fabric's errors unchanged.
  expected<std::unique_ptr<communicator>> make_communicator(int global_rank,
                                                            std::span<const int> group) override;
  expected<std::unique_ptr<communicator>> make_world(int global_rank) override;
  /// Aborts the wrapped fabric and ends every HANG with the same reason.
  void abort(status reason) override;
  status abort_status() const override { return inner_.abort_status(); }
  std::vector<int> suspects() const override { return inner_.suspects(); }
  expected<fabric_buffer> allocate(std::size_t bytes) override { return inner_.allocate(bytes); }

  /// Tags global rank `rank`'s calls from now on (faults tied to a step or layer).
  void set_tag(int rank, call_tag tag) { injector_->set_tag(rank, tag); }
  /// Every fault injected so far (by this process's ranks), in injection order.
  [[nodiscard]] std::vector<injected_fault> injected() const { return injector_->injected(); }
  /// Calls of `kind` made by global rank `rank` through this fabric's communicators so far.
  [[nodiscard]] std::uint64_t calls(int rank, call_kind kind) const {
    return injector_->calls(rank, kind);
  }
  [[nodiscard]] const fault_schedule& schedule() const { return injector_->schedule(); }
  [[nodiscard]] fabric& inner() { return inner_; }

 private:
  expected<std::unique_ptr<communicator>> wrap(expected<std::unique_ptr<communicator>> made);

  std::unique_ptr<fabric> owned_;
  fabric& inner_;
  std::shared_ptr<fault_injector> injector_;
};

/// Owning form with validation: invalid_argument when `inner` is null or `schedule` fails
/// validate(schedule, inner->world_size()).
[[nodiscard]] expected<std::unique_ptr<fault_fabric>> make_fault_fabric(
    std::unique_ptr<fabric> inner, fault_schedule schedule, fault_options options = {});

}  // namespace helix::transport::fault
