// A `fabric` connects the ranks of one world and creates their communicators.
//
// Who calls it: the engine / worker bootstrap creates one fabric per world (see transport.hpp for
// the factory); each worker then asks it for a communicator per group it belongs to (world, its KVP
// group, its TPF group, its EP group, as computed from the layout). Every member of a group must
// create the group with the same list of global ranks; the k-th creation of a list by each member
// yields the same (k-th) group instance, so a layout change may recreate groups.
//
// Ownership: the fabric must outlive every communicator it created. Thread-safety: all methods are
// thread-safe. Errors: invalid_argument for bad rank lists (duplicates, out of range, caller not a
// member); aborted after abort().
#pragma once

#include <chrono>
#include <memory>
#include <span>

#include "core/status.hpp"
#include "transport/communicator.hpp"

namespace helix::transport {

class fabric {
 public:
  virtual ~fabric() = default;

  [[nodiscard]] virtual int world_size() const = 0;

  /// The communicator of `global_rank` for the group `group` (global ranks, in group-rank order).
  [[nodiscard]] virtual expected<std::unique_ptr<communicator>> make_communicator(
      int global_rank, std::span<const int> group) = 0;

  /// The communicator of `global_rank` for the whole world (group rank == global rank).
  [[nodiscard]] virtual expected<std::unique_ptr<communicator>> make_world(int global_rank) = 0;

  /// Fails every pending and future operation of every group with `reason` (code kept if it is
  /// not ok, else `aborted`) and wakes every blocked waiter. Used when a failure is detected.
  /// Idempotent: the first reason wins.
  virtual void abort(status reason) = 0;

  /// ok until abort() was called, then the abort reason.
  [[nodiscard]] virtual status abort_status() const = 0;
};

}  // namespace helix::transport
