// UCX backend, internal: one rank's communicator on one group. It checks its own arguments,
// numbers its collectives, and hands each call to the fabric's progress thread; requests wait
// on the fabric. The fabric must outlive its communicators and their requests.
#pragma once

#include <memory>

#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport::ucx {

class ucx_communicator final : public collective_communicator {
 public:
  ucx_communicator(ucx_fabric_impl* fabric, std::shared_ptr<group> g)
      : fabric_(fabric), group_(std::move(g)) {}

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

  ucx_fabric_impl* fabric_;
  std::shared_ptr<group> group_;
  std::uint64_t next_seq_ = 0;  // same on every rank of the group for the same call
};

}  // namespace helix::transport::ucx
