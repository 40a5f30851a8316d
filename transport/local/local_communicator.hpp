// Local backend, internal: the shared state of one group and the communicator of one rank in it.
//
// Only local_fabric.cpp and local_communicator.cpp include this. A group's state lives as long as
// any communicator or request of the group (shared_ptr). Everything in group_state is guarded by
// its mutex; waiters block on its condition variable (never spin).
//
// Rendezvous: every collective call of a rank takes the next sequence number of that rank's
// communicator; the slot for that number (created by the first arriver) collects each rank's
// arguments. The last arriver validates the arguments of all ranks against each other and moves
// all the data (memcpy between the ranks' buffers, or the rank-ordered sum), then marks the slot
// done and wakes the group. So completion needs no cooperation from ranks that already posted:
// a non-blocking call overlaps with whatever its thread does until wait().
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "core/status.hpp"
#include "transport/collective.hpp"
#include "transport/communicator.hpp"
#include "transport/fabric.hpp"

namespace helix::transport::local {

// pending -> copying -> done. Only a pending operation may be failed by a timeout or an abort:
// once copying started, the copier owns the peers' buffers until it marks the op done.
enum class op_phase : std::uint8_t { pending, copying, done };

struct coll_slot {
  std::uint64_t seq = 0;
  std::vector<coll_post> posts;  // [group size]
  std::vector<bool> arrived;     // [group size]
  int num_arrived = 0;
  op_phase phase = op_phase::pending;
  status result;
};

struct p2p_op {
  int src = 0;  // group ranks
  int dst = 0;
  int tag = 0;
  bool is_send = false;
  send_buf send;
  recv_buf recv;
  op_phase phase = op_phase::pending;
  status result;
};

struct group_state {
  group_state(std::vector<int> global_ranks, status abort_reason,
              std::shared_ptr<suspect_book> book)
      : members(std::move(global_ranks)),
        aborted(std::move(abort_reason)),
        suspects(std::move(book)) {}

  /// Fails every pending operation with `reason` and wakes all waiters.
  void abort(const status& reason);

  const std::vector<int> members;  // global ranks by group rank
  std::mutex mu;
  std::condition_variable cv;
  std::map<std::uint64_t, std::shared_ptr<coll_slot>> slots;  // in flight, by sequence number
  std::vector<std::shared_ptr<p2p_op>> unmatched_sends;       // in post order
  std::vector<std::shared_ptr<p2p_op>> unmatched_recvs;       // in post order
  status aborted;                                             // ok unless the fabric aborted
  const std::shared_ptr<suspect_book> suspects;               // the fabric's (never null)
};

class local_communicator final : public collective_communicator {
 public:
  local_communicator(std::shared_ptr<group_state> group, int rank,
                     std::chrono::milliseconds default_timeout);

  int rank() const override { return rank_; }
  int size() const override { return static_cast<int>(group_->members.size()); }
  std::span<const int> global_ranks() const override { return group_->members; }

  request isend(send_buf buf, int peer, int tag, const call_options& opts) override;
  request irecv(recv_buf buf, int peer, int tag, const call_options& opts) override;

 protected:
  [[nodiscard]] request post_collective(coll_post post, const call_options& opts) override;

 private:
  [[nodiscard]] std::optional<std::chrono::steady_clock::time_point> deadline(
      const call_options& opts) const;

  [[nodiscard]] request post_p2p(std::shared_ptr<p2p_op> op, const call_options& opts);

  std::shared_ptr<group_state> group_;
  int rank_;
  std::chrono::milliseconds default_timeout_;
  std::uint64_t next_seq_ = 0;  // same on every rank of the group for the same call
};

}  // namespace helix::transport::local
