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

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#include "core/status.hpp"
#include "transport/communicator.hpp"

namespace helix::transport {

/// Memory from fabric::allocate: move-only, freed on destruction. It must not outlive the fabric
/// that made it. Aligned to 64 bytes; contents start zeroed.
class fabric_buffer {
 public:
  using releaser = std::function<void(std::byte* data, std::size_t bytes)>;
  fabric_buffer() = default;
  fabric_buffer(std::byte* data, std::size_t bytes, releaser release)
      : data_(data), bytes_(bytes), release_(std::move(release)) {}
  fabric_buffer(fabric_buffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        bytes_(std::exchange(o.bytes_, 0)),
        release_(std::move(o.release_)) {}
  fabric_buffer& operator=(fabric_buffer&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = std::exchange(o.data_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
      release_ = std::move(o.release_);
    }
    return *this;
  }
  fabric_buffer(const fabric_buffer&) = delete;
  fabric_buffer& operator=(const fabric_buffer&) = delete;
  ~fabric_buffer() { reset(); }

  [[nodiscard]] std::byte* data() const { return data_; }
  [[nodiscard]] std::size_t size() const { return bytes_; }
  /// The buffer as `count` elements of T (count * sizeof(T) <= size()).
  template <class T>
  [[nodiscard]] std::span<T> as(std::size_t count) const {
    HELIX_CHECK(count <= bytes_ / sizeof(T), "fabric_buffer of {} bytes holds fewer than {} x {}",
                bytes_, count, sizeof(T));
    return {reinterpret_cast<T*>(data_), count};
  }
  void reset() {
    if (data_ != nullptr && release_) release_(data_, bytes_);
    data_ = nullptr;
    bytes_ = 0;
    release_ = nullptr;
  }

 private:
  std::byte* data_ = nullptr;
  std::size_t bytes_ = 0;
  releaser release_;
};

/// Plain process memory as a fabric_buffer (what fabric::allocate gives by default):
/// resource_exhausted when `bytes` does not fit in available_memory() or the allocation fails.
[[nodiscard]] expected<fabric_buffer> allocate_host_buffer(std::size_t bytes);

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

  /// Who a failure points at: the global ranks that calls through this fabric (in this process)
  /// timed out waiting for, or saw fail, most often named first. Recovery drops these rather
  /// than the rank that happened to report first. Default: none known.
  [[nodiscard]] virtual std::vector<int> suspects() const { return {}; }

  /// Memory for the buffers of large collective calls of this process's ranks. Where peers on
  /// this machine can reach it directly (UCX backend: a shared-memory mapping), an in-place
  /// all_to_all on it moves every byte once: each pair of ranks swaps its two slices in place,
  /// each rank doing half (see communicator::iall_to_all). Any memory works in every call; this
  /// is only faster. Default: plain process memory (allocate_host_buffer). resource_exhausted
  /// when it does not fit.
  [[nodiscard]] virtual expected<fabric_buffer> allocate(std::size_t bytes) {
    return allocate_host_buffer(bytes);
  }
};

/// The record behind fabric::suspects(). Thread-safe.
class suspect_book {
 public:
  /// Counts one more call that waited in vain for `global_rank`.
  void name(int global_rank) {
    std::lock_guard lk(mu_);
    ++counts_[global_rank];
  }
  /// Every rank named, most often first (ties: lower rank first).
  [[nodiscard]] std::vector<int> ranked() const {
    std::vector<std::pair<int, int>> v;
    {
      std::lock_guard lk(mu_);
      v.assign(counts_.begin(), counts_.end());
    }
    std::stable_sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second > b.second; });
    std::vector<int> out;
    for (const auto& [rank, count] : v) out.push_back(rank);
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::map<int, int> counts_;
};

}  // namespace helix::transport
