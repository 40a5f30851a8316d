#include "transport/ucx/ucx_communicator.hpp"

namespace helix::transport::ucx {
namespace {

class ucx_request final : public request_impl {
 public:
  ucx_request(ucx_fabric_impl* fabric, std::shared_ptr<op_state> op)
      : fabric_(fabric), op_(std::move(op)) {}
  status wait() override { return fabric_->wait(*op_); }
  bool test() override { return op_->done.load(std::memory_order_acquire); }

 private:
  ucx_fabric_impl* fabric_;
  std::shared_ptr<op_state> op_;
};

}  // namespace

std::optional<clock::time_point> ucx_communicator::deadline(const call_options& opts) const {
  const auto timeout = opts.timeout.count() > 0 ? opts.timeout : fabric_->default_timeout();
  if (timeout.count() <= 0) return std::nullopt;
  return clock::now() + timeout;
}

request ucx_communicator::post_collective(coll_post post, const call_options& opts) {
  auto op = std::make_shared<op_state>();
  op->is_coll = true;
  op->args = std::move(post);
  op->seq = next_seq_++;  // taken even on error so ranks stay in step
  op->deadline = deadline(opts);
  op->g = group_;
  fabric_->post(op);
  return request(std::make_unique<ucx_request>(fabric_, std::move(op)));
}

status ucx_communicator::backend_check(const coll_post& post) const {
  if (post.kind != op_kind::all_to_all_v) return ok_status();
  const std::size_t header =
      sizeof(wire_header) + 2 * post.v.send_counts.size() * sizeof(std::uint64_t);
  if (header <= fabric_->max_am_header()) return ok_status();
  return failed_precondition(
      "all_to_all_v over ucx: a group of {} needs a {}-byte message header, UCX allows {}", size(),
      header, fabric_->max_am_header());
}

request ucx_communicator::post_p2p(std::shared_ptr<op_state> op, const call_options& opts) {
  if (op->peer < 0 || op->peer >= size()) {
    return request::done(invalid_argument("{} rank {}: peer {} outside group of {}",
                                          op->is_send ? "send" : "recv", rank(), op->peer, size()));
  }
  op->is_coll = false;
  op->deadline = deadline(opts);
  op->g = group_;
  fabric_->post(op);
  return request(std::make_unique<ucx_request>(fabric_, std::move(op)));
}

request ucx_communicator::isend(send_buf buf, int peer, int tag, const call_options& opts) {
  auto op = std::make_shared<op_state>();
  op->is_send = true;
  op->peer = peer;
  op->tag = tag;
  op->sbuf = buf;
  return post_p2p(std::move(op), opts);
}

request ucx_communicator::irecv(recv_buf buf, int peer, int tag, const call_options& opts) {
  auto op = std::make_shared<op_state>();
  op->peer = peer;
  op->tag = tag;
  op->rbuf = buf;
  return post_p2p(std::move(op), opts);
}

}  // namespace helix::transport::ucx
