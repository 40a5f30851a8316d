// The data-plane interface: one `communicator` per rank per group of ranks.
//
// Who calls it: the per-rank layer program in `model/` (all-to-all of attention partials inside a
// KVP group, all-reduce over N after o_proj and the FFN, all-gather / broadcast for sampling and
// control-sized data), always from the worker's compute thread. Backends: `transport/local/`
// (threads of one process), later `ucx` (processes, hosts) and `nccl` (GPUs). Nothing in this
// header assumes shared memory: buffers are raw typed views owned by the caller, and a GPU backend
// receives an opaque stream handle through `call_options`.
//
// Semantics (every backend):
// - Every rank of a group calls the same collectives in the same order (as in NCCL/MPI). A rank
//   whose arguments disagree with its peers' (kind of call, dtype, counts, root) gets
//   invalid_argument, and so does every other rank of that call: never a hang.
// - Non-blocking calls (`i` prefix) return a move-only `request` after posting; the caller must
// keep
//   the buffers (and, for the `v` all-to-all, the count/offset arrays) alive and untouched until
//   `wait()` returned or `test()` returned true. Blocking calls are `i...().wait()`.
// - all_reduce is deterministic: summed in group-rank order 0..size-1, and every rank receives the
//   same bytes.
// - Errors: invalid_argument (bad or mismatched arguments; the message names rank, peer and sizes),
//   failed_precondition (unsupported dtype/op on this backend), deadline_exceeded (the call's
//   timeout passed before all peers arrived), aborted (the fabric was aborted; carries the reason).
//
// Thread-safety: a communicator object belongs to one rank and is used by one thread at a time.
// Different communicators (different ranks or groups) are used concurrently.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "core/dtype.hpp"
#include "core/status.hpp"
#include "core/tensor.hpp"

namespace helix::transport {

/// Element type on the wire. `bytes` moves raw bytes; reductions need a numeric type.
enum class wire_type : std::uint8_t { bytes, f32, bf16, f16, fp8_e4m3, i32, i64 };

[[nodiscard]] constexpr std::size_t wire_type_bytes(wire_type t) noexcept {
  switch (t) {
    case wire_type::bytes:
      return 1;
    case wire_type::f32:
      return 4;
    case wire_type::bf16:
      return 2;
    case wire_type::f16:
      return 2;
    case wire_type::fp8_e4m3:
      return 1;
    case wire_type::i32:
      return 4;
    case wire_type::i64:
      return 8;
  }
  return 0;
}
[[nodiscard]] std::string_view wire_type_name(wire_type t) noexcept;
[[nodiscard]] wire_type to_wire_type(dtype t) noexcept;

template <class T>
inline constexpr wire_type wire_type_of = wire_type::bytes;
template <>
inline constexpr wire_type wire_type_of<float> = wire_type::f32;
template <>
inline constexpr wire_type wire_type_of<std::int32_t> = wire_type::i32;
template <>
inline constexpr wire_type wire_type_of<std::int64_t> = wire_type::i64;
template <>
inline constexpr wire_type wire_type_of<bf16_t> = wire_type::bf16;
template <>
inline constexpr wire_type wire_type_of<f16_t> = wire_type::f16;

/// Read-only view of `count` elements of `type` at `data` (host or device memory; the backend
/// decides what it can reach).
struct send_buf {
  const void* data = nullptr;
  std::size_t count = 0;
  wire_type type = wire_type::bytes;
  [[nodiscard]] std::size_t bytes() const { return count * wire_type_bytes(type); }
};
/// Writable view of `count` elements of `type` at `data`.
struct recv_buf {
  void* data = nullptr;
  std::size_t count = 0;
  wire_type type = wire_type::bytes;
  [[nodiscard]] std::size_t bytes() const { return count * wire_type_bytes(type); }
};

template <class T>
[[nodiscard]] send_buf as_send(std::span<const T> s) {
  return {s.data(), s.size(), wire_type_of<std::remove_cv_t<T>>};
}
template <class T>
[[nodiscard]] send_buf as_send(std::span<T> s) {
  return {s.data(), s.size(), wire_type_of<std::remove_cv_t<T>>};
}
template <class T>
[[nodiscard]] recv_buf as_recv(std::span<T> s) {
  return {s.data(), s.size(), wire_type_of<T>};
}
[[nodiscard]] inline send_buf as_send(const tensor_view& v) {
  return {v.data, static_cast<std::size_t>(v.numel()), to_wire_type(v.type)};
}
[[nodiscard]] inline recv_buf as_recv(const tensor_view& v) {
  return {v.data, static_cast<std::size_t>(v.numel()), to_wire_type(v.type)};
}

enum class reduce_op : std::uint8_t { sum };

/// Per-call options. Defaults suit the decode path.
struct call_options {
  /// Opaque stream (cudaStream_t for NCCL); ignored by host backends.
  stream_handle stream = nullptr;
  /// How long wait() may block for peers, measured from the post; zero means the communicator's
  /// default (which may be "forever"). Expiry fails the call with deadline_exceeded on every rank
  /// that has not completed it.
  std::chrono::milliseconds timeout{0};
};

/// Arguments of the variable-split all-to-all. Counts and offsets are in elements, indexed by
/// group rank (size() entries each); peer j's slice of `send` goes to peer j's recv at the offset
/// that peer gave for this rank. Zero counts are allowed. send_counts[j] on this rank must equal
/// recv_counts[this rank] on rank j.
struct all_to_all_v_args {
  send_buf send;
  std::span<const std::size_t> send_counts;
  std::span<const std::size_t> send_offsets;
  recv_buf recv;
  std::span<const std::size_t> recv_counts;
  std::span<const std::size_t> recv_offsets;
};

/// Backend side of a request. Implemented by backends; callers use `request`.
class request_impl {
 public:
  virtual ~request_impl() = default;
  /// Blocks (never spins) until the operation completed or failed; idempotent.
  [[nodiscard]] virtual status wait() = 0;
  /// True when wait() would return without blocking.
  [[nodiscard]] virtual bool test() = 0;
  /// Called instead of `delete` when its request lets go of it (after wait() returned): a
  /// backend that keeps a pool of these takes it back here, so posting allocates nothing.
  virtual void recycle() noexcept { delete this; }
};

/// Move-only handle of a posted non-blocking operation. A default-constructed request is complete
/// and ok. Destroying an unfinished request waits for it (its buffers may still be in use).
class [[nodiscard]] request {
 public:
  request() = default;
  explicit request(std::unique_ptr<request_impl> impl) : impl_(impl.release()) {}
  /// Takes a pooled impl; it goes back through request_impl::recycle().
  explicit request(request_impl* pooled) : impl_(pooled) {}
  /// A request that is already complete with `st` (used for errors found before posting).
  [[nodiscard]] static request done(status st);
  request(request&&) noexcept = default;
  request& operator=(request&& other) noexcept;
  request(const request&) = delete;
  request& operator=(const request&) = delete;
  ~request();

  /// Blocks until complete; returns the outcome. Calling it again returns the same outcome.
  [[nodiscard]] status wait();
  /// Non-blocking completion check.
  [[nodiscard]] bool test();

 private:
  struct recycler {
    void operator()(request_impl* impl) const noexcept { impl->recycle(); }
  };
  std::unique_ptr<request_impl, recycler> impl_;
};

/// One rank's handle on one group. See the header paragraph for semantics and errors.
class communicator {
 public:
  virtual ~communicator() = default;

  /// This rank's index inside the group, in [0, size()).
  [[nodiscard]] virtual int rank() const = 0;
  [[nodiscard]] virtual int size() const = 0;
  /// Global rank of every group member, indexed by group rank.
  [[nodiscard]] virtual std::span<const int> global_ranks() const = 0;

  /// Equal-split all-to-all: send [size][count] -> recv [size][count]; recv slice j comes from
  /// rank j's send slice rank(). send.count == recv.count, divisible by size(). In place allowed
  /// (send.data == recv.data, then on every rank of the call): the rank's own slice stays where
  /// it is and slice j is exchanged with rank j's slice rank(); on buffers from
  /// fabric::allocate, peers on one machine swap those slices directly. Other overlaps are
  /// refused. After a failure the receive buffer's contents are unspecified.
  [[nodiscard]] virtual request iall_to_all(send_buf send, recv_buf recv,
                                            const call_options& opts = {}) = 0;
  /// Variable-split all-to-all (see all_to_all_v_args).
  [[nodiscard]] virtual request iall_to_all_v(const all_to_all_v_args& args,
                                              const call_options& opts = {}) = 0;
  /// recv = sum over ranks of send, in rank order; send.count == recv.count; in place allowed
  /// (send.data == recv.data). Backends support at least f32 sum.
  [[nodiscard]] virtual request iall_reduce(send_buf send, recv_buf recv,
                                            reduce_op op = reduce_op::sum,
                                            const call_options& opts = {}) = 0;
  /// recv [size][send.count]: slice j is rank j's send. recv.count == size() * send.count.
  [[nodiscard]] virtual request iall_gather(send_buf send, recv_buf recv,
                                            const call_options& opts = {}) = 0;
  /// Root's `buf` is copied into every other rank's `buf` (same count and type everywhere).
  [[nodiscard]] virtual request ibroadcast(recv_buf buf, int root,
                                           const call_options& opts = {}) = 0;
  [[nodiscard]] virtual request ibarrier(const call_options& opts = {}) = 0;
  /// Point to point. Messages between a (source, destination, tag) triple match in post order;
  /// different tags match independently. The send completes once the matching recv is posted and
  /// the data moved (no eager buffering is promised). Counts and types must match exactly.
  [[nodiscard]] virtual request isend(send_buf buf, int peer, int tag,
                                      const call_options& opts = {}) = 0;
  [[nodiscard]] virtual request irecv(recv_buf buf, int peer, int tag,
                                      const call_options& opts = {}) = 0;

  // Blocking forms: post, then wait.
  [[nodiscard]] status all_to_all(send_buf send, recv_buf recv, const call_options& opts = {}) {
    return iall_to_all(send, recv, opts).wait();
  }
  [[nodiscard]] status all_to_all_v(const all_to_all_v_args& args, const call_options& opts = {}) {
    return iall_to_all_v(args, opts).wait();
  }
  [[nodiscard]] status all_reduce(send_buf send, recv_buf recv, reduce_op op = reduce_op::sum,
                                  const call_options& opts = {}) {
    return iall_reduce(send, recv, op, opts).wait();
  }
  [[nodiscard]] status all_gather(send_buf send, recv_buf recv, const call_options& opts = {}) {
    return iall_gather(send, recv, opts).wait();
  }
  [[nodiscard]] status broadcast(recv_buf buf, int root, const call_options& opts = {}) {
    return ibroadcast(buf, root, opts).wait();
  }
  [[nodiscard]] status barrier(const call_options& opts = {}) { return ibarrier(opts).wait(); }
  [[nodiscard]] status send(send_buf buf, int peer, int tag, const call_options& opts = {}) {
    return isend(buf, peer, tag, opts).wait();
  }
  [[nodiscard]] status recv(recv_buf buf, int peer, int tag, const call_options& opts = {}) {
    return irecv(buf, peer, tag, opts).wait();
  }
};

}  // namespace helix::transport
