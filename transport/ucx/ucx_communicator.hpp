// UCX backend, internal: one rank's communicator on one group. It checks its own arguments,
// numbers its collectives, and hands each call to the fabric's progress thread; requests wait
// on the fabric. The fabric must outlive its communicators and their requests. A call's op_state
// and request come from the communicator's call_pool, so that a warm communicator allocates
// nothing per call.
#pragma once

#include <memory>

#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport::ucx {

// Pooled op_states and requests of one communicator (ucx_communicator.cpp). Shared by the
// communicator, its requests and its live op_states; thread-safe (an op_state's last reference
// may go on the progress thread).
class call_pool;

class ucx_communicator final : public collective_communicator {
 public:
  ucx_communicator(ucx_fabric_impl* fabric, std::shared_ptr<group> g);

  int rank() const override { return group_->me; }
  int size() const override { return static_cast<int>(group_->members.size()); }
  std::span<const int> global_ranks() const override { return group_->members; }

  request isend(send_buf buf, int peer, int tag, const call_options& opts) override;
  request irecv(recv_buf buf, int peer, int tag, const call_options& opts) override;

 protected:
  [[nodiscard]] request post_collective(coll_post post, const call_options& opts) override;
  // Every rank's all_to_all_v counts travel in the message header (so that all ranks validate
  // all of them): the group must fit UCX's largest AM header.
  [[nodiscard]] status backend_check(const coll_post& post) const override;

 private:
  [[nodiscard]] std::optional<clock::time_point> deadline(const call_options& opts) const;

  [[nodiscard]] request post_p2p(std::shared_ptr<op_state> op, const call_options& opts);
  // Hands `op` to the progress thread; its request comes from the pool.
  [[nodiscard]] request post_op(std::shared_ptr<op_state> op);

  ucx_fabric_impl* fabric_;
  std::shared_ptr<group> group_;
  std::shared_ptr<call_pool> pool_;
  std::uint64_t next_seq_ = 0;  // same on every rank of the group for the same call
};

}  // namespace helix::transport::ucx
