// What every backend checks about collective calls, written once: the kinds of collective, one
// rank's arguments, the checks one rank makes alone, and the cross-rank check that refuses a call
// whose ranks disagree. Internal to transport/ (backends include it; callers never do).
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "core/status.hpp"
#include "transport/communicator.hpp"

namespace helix::transport {

enum class op_kind : std::uint8_t {
  all_to_all,
  all_to_all_v,
  all_reduce,
  all_gather,
  broadcast,
  barrier
};
[[nodiscard]] std::string_view op_kind_name(op_kind k) noexcept;

// One rank's arguments to one collective call.
struct coll_post {
  op_kind kind = op_kind::barrier;
  send_buf send;
  recv_buf recv;
  all_to_all_v_args v;  // only for all_to_all_v; spans valid until the call completes
  int root = 0;
  reduce_op op = reduce_op::sum;
  bool in_place = false;  // all_to_all with send.data == recv.data (every rank must agree)
  status local_error;     // argument error found by this rank alone; fails the call on every rank
};

// The checks one rank makes on its own arguments (`rank` of `size`); ok or invalid_argument /
// failed_precondition. The call still takes part in the collective (so ranks stay in step) and
// fails on every rank.
[[nodiscard]] status check_all_to_all(send_buf send, recv_buf recv, std::size_t size);
[[nodiscard]] status check_all_to_all_v(const all_to_all_v_args& args, std::size_t size);
[[nodiscard]] status check_all_reduce(send_buf send, recv_buf recv);
[[nodiscard]] status check_all_gather(send_buf send, recv_buf recv, std::size_t size, int rank);
[[nodiscard]] status check_broadcast(int root, int size);

// Checks that every rank's arguments agree (posts indexed by group rank; members are their
// global ranks). Every rank that runs it on the same posts gets the same verdict.
[[nodiscard]] status validate_collective(const std::vector<coll_post>& posts, std::uint64_t seq,
                                         const std::vector<int>& members);

// Elements [offset, offset + count) of chunk `j` when `total` elements split over `n` ranks as
// evenly as possible (the first total % n chunks one longer).
struct chunk {
  std::size_t offset = 0;
  std::size_t count = 0;
};
[[nodiscard]] constexpr chunk chunk_of(std::size_t total, std::size_t n, std::size_t j) noexcept {
  const std::size_t base = total / n;
  const std::size_t rem = total % n;
  return {j * base + (j < rem ? j : rem), base + (j < rem ? 1 : 0)};
}

// Checks a group's list of global ranks as every fabric does (non-empty, inside the world, no
// duplicates, the caller a member) and returns the caller's rank in it; invalid_argument naming
// the problem, prefixed with `who` (e.g. "local_fabric").
[[nodiscard]] expected<int> group_rank_of(std::string_view who, int global_rank,
                                          std::span<const int> group, int world_size);

// Exchanges the n bytes at a and b (which must not overlap), through a small stack block: each
// byte is read once and written once, as fast as a copy of the same bytes.
void swap_bytes(void* a, void* b, std::size_t n) noexcept;

[[nodiscard]] bool buffers_overlap(const void* a, std::size_t a_bytes, const void* b,
                                   std::size_t b_bytes) noexcept;

// The collective calls of every backend: each checks this rank's arguments, records them in a
// coll_post (local_error set when they are bad: the call still runs, so ranks stay in step, and
// fails on every rank) and hands it to the backend's post_collective.
class collective_communicator : public communicator {
 public:
  request iall_to_all(send_buf send, recv_buf recv, const call_options& opts) override;
  request iall_to_all_v(const all_to_all_v_args& args, const call_options& opts) override;
  request iall_reduce(send_buf send, recv_buf recv, reduce_op op,
                      const call_options& opts) override;
  request iall_gather(send_buf send, recv_buf recv, const call_options& opts) override;
  request ibroadcast(recv_buf buf, int root, const call_options& opts) override;
  request ibarrier(const call_options& opts) override;

 protected:
  [[nodiscard]] virtual request post_collective(coll_post post, const call_options& opts) = 0;
  /// A backend's own limits on arguments that passed the common checks (default: none).
  [[nodiscard]] virtual status backend_check(const coll_post& post) const {
    (void)post;
    return ok_status();
  }

 private:
  [[nodiscard]] request post_checked(coll_post post, const call_options& opts);
};

}  // namespace helix::transport
