// Local backend, internal: the shared state of one group and the communicator of one rank in it.
//
// Only local_fabric.cpp and local_communicator.cpp include this. A group's state lives as long as
// any communicator or request of the group (shared_ptr). Everything in group_state is guarded by
// its mutex; waiters block on its condition variable (never spin).
//
// Rendezvous: every collective call of a rank takes the next sequence number of that rank's
// communicator; the slot for that number (opened by the first arriver) collects each rank's
// arguments. The last arriver validates the arguments of all ranks against each other; the data
// then moves in shares that write disjoint bytes (share j: rank j's receive buffer, or slice j of
// an all_reduce, reduced in rank order and written to every rank). Every rank waiting on the call
// takes its own share first, then any share left; the last arriver takes whatever is left, so
// completion never needs a rank that is busy elsewhere: a non-blocking call overlaps with whatever
// its thread does until wait(). Below `share_min_bytes` the last arriver moves everything without
// waking the waiters (a wake-up costs more than the copy).
//
// Nothing is allocated per call once a group is warm: slots come from a ring of `ring_slots`
// reused ones (a call whose ring slot is still held by an older call takes an extra slot), and
// requests from a pool per rank.
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
// once copying started, the copiers own the peers' buffers until the op is marked done.
enum class op_phase : std::uint8_t { pending, copying, done };

struct coll_slot {
  explicit coll_slot(std::size_t group_size)
      : posts(group_size), arrived(group_size), claimed(group_size) {}
  /// Starts holding call `seq` (its arrays keep their size: nothing is allocated).
  void open(std::uint64_t call);

  std::uint64_t seq = 0;
  bool in_use = false;
  std::vector<coll_post> posts;       // [group size]
  std::vector<std::uint8_t> arrived;  // [group size]
  std::vector<std::uint8_t> claimed;  // [group size]: share j taken by some rank
  int num_arrived = 0;
  int holders = 0;  // requests not yet recycled
  int shares_done = 0;
  bool validated = false;  // every rank's arguments checked: shares may be taken
  op_phase phase = op_phase::pending;  // copying: the shares are being moved
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
              std::shared_ptr<suspect_book> book);

  /// Fails every pending operation with `reason` and wakes all waiters.
  void abort(const status& reason);

  /// The slot holding call `seq`, opened by its first arriver.
  [[nodiscard]] coll_slot& slot_for(std::uint64_t seq);
  /// One holder of `slot` let go; the slot is reused once every rank arrived and let go.
  void release(coll_slot& slot);

  static constexpr std::size_t ring_slots = 8;

  const std::vector<int> members;  // global ranks by group rank
  std::mutex mu;
  std::condition_variable cv;
  std::vector<std::unique_ptr<coll_slot>> ring;  // slot of call s: ring[s % ring_slots]
  std::map<std::uint64_t, std::unique_ptr<coll_slot>> extra;  // calls whose ring slot was held
  std::vector<std::vector<request_impl*>> free_requests;      // per rank, owned by `requests`
  std::vector<std::unique_ptr<request_impl>> requests;
  std::vector<std::shared_ptr<p2p_op>> unmatched_sends;  // in post order
  std::vector<std::shared_ptr<p2p_op>> unmatched_recvs;  // in post order
  status aborted;                                        // ok unless the fabric aborted
  const std::shared_ptr<suspect_book> suspects;          // the fabric's (never null)
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

  /// This rank's pooled request for `slot` (taken under the group lock).
  [[nodiscard]] request collective_request(coll_slot& slot,
                                           std::optional<std::chrono::steady_clock::time_point> dl);
  [[nodiscard]] request post_p2p(std::shared_ptr<p2p_op> op, const call_options& opts);

  std::shared_ptr<group_state> group_;
  int rank_;
  std::chrono::milliseconds default_timeout_;
  std::uint64_t next_seq_ = 0;  // same on every rank of the group for the same call
};

}  // namespace helix::transport::local
