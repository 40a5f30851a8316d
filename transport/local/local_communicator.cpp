#include "transport/local/local_communicator.hpp"

#include <algorithm>
#include <cstring>

namespace helix::transport::local {

void group_state::abort(const status& reason) {
  std::lock_guard lk(mu);
  if (!aborted.ok()) return;
  aborted = reason;
  for (auto& [seq, slot] : slots) {
    if (slot->phase == op_phase::pending) {
      slot->phase = op_phase::done;
      slot->result = reason;
    }
  }
  for (auto* queue : {&unmatched_sends, &unmatched_recvs}) {
    for (auto& op : *queue) {
      op->phase = op_phase::done;
      op->result = reason;
    }
    queue->clear();
  }
  cv.notify_all();
}

namespace {

using clock = std::chrono::steady_clock;

[[nodiscard]] std::byte* at(void* base, std::size_t elems, std::size_t elem_bytes) {
  return static_cast<std::byte*>(base) + elems * elem_bytes;
}
[[nodiscard]] const std::byte* at(const void* base, std::size_t elems, std::size_t elem_bytes) {
  return static_cast<const std::byte*>(base) + elems * elem_bytes;
}

// Moves the data of a validated collective; runs on the last arriver, without the group lock
// (the slot is `copying`, so nobody else touches these buffers).
void execute(const coll_slot& slot) {
  const auto n = slot.posts.size();
  const coll_post& p0 = slot.posts[0];
  switch (p0.kind) {
    case op_kind::all_to_all: {
      const std::size_t es = wire_type_bytes(p0.send.type);
      const std::size_t c = p0.send.count / n;
      if (p0.in_place) {  // every rank in place: swap each pair's two slices once
        for (std::size_t r = 0; r < n; ++r) {
          for (std::size_t j = r + 1; j < n; ++j) {
            swap_bytes(at(slot.posts[r].recv.data, j * c, es),
                       at(slot.posts[j].recv.data, r * c, es), c * es);
          }
        }
        break;
      }
      for (std::size_t r = 0; r < n; ++r) {
        for (std::size_t j = 0; j < n; ++j) {
          std::memcpy(at(slot.posts[r].recv.data, j * c, es),
                      at(slot.posts[j].send.data, r * c, es), c * es);
        }
      }
      break;
    }
    case op_kind::all_to_all_v: {
      const std::size_t es = wire_type_bytes(p0.send.type);
      for (std::size_t i = 0; i < n; ++i) {
        const all_to_all_v_args& src = slot.posts[i].v;
        for (std::size_t j = 0; j < n; ++j) {
          const all_to_all_v_args& dst = slot.posts[j].v;
          const std::size_t c = src.send_counts[j];
          if (c == 0) continue;
          std::memcpy(at(dst.recv.data, dst.recv_offsets[i], es),
                      at(src.send.data, src.send_offsets[j], es), c * es);
        }
      }
      break;
    }
    case op_kind::all_reduce: {
      // Fixed order r = 0..n-1 per element, then the same float to every rank: bit-identical and
      // independent of arrival order. Blocked through a small stack buffer so that in-place calls
      // (send == recv) read every input of a block before writing any output of it.
      constexpr std::size_t block = 512;
      float sum[block];
      const std::size_t count = p0.send.count;
      for (std::size_t base = 0; base < count; base += block) {
        const std::size_t m = std::min(block, count - base);
        const auto* s0 = static_cast<const float*>(slot.posts[0].send.data) + base;
        std::copy(s0, s0 + m, sum);
        for (std::size_t r = 1; r < n; ++r) {
          const auto* s = static_cast<const float*>(slot.posts[r].send.data) + base;
          for (std::size_t i = 0; i < m; ++i) sum[i] += s[i];
        }
        for (std::size_t r = 0; r < n; ++r) {
          std::memcpy(static_cast<float*>(slot.posts[r].recv.data) + base, sum, m * sizeof(float));
        }
      }
      break;
    }
    case op_kind::all_gather: {
      const std::size_t bytes = p0.send.bytes();
      for (std::size_t r = 0; r < n; ++r) {
        for (std::size_t j = 0; j < n; ++j) {
          std::byte* dst = static_cast<std::byte*>(slot.posts[r].recv.data) + j * bytes;
          if (dst != slot.posts[j].send.data) std::memcpy(dst, slot.posts[j].send.data, bytes);
        }
      }
      break;
    }
    case op_kind::broadcast: {
      const auto root = static_cast<std::size_t>(p0.root);
      const recv_buf& src = slot.posts[root].recv;
      for (std::size_t r = 0; r < n; ++r) {
        if (r != root && slot.posts[r].recv.data != src.data) {
          std::memcpy(slot.posts[r].recv.data, src.data, src.bytes());
        }
      }
      break;
    }
    case op_kind::barrier:
      break;
  }
}

// One rank's handle on a posted collective or point-to-point operation. `phase` and `result`
// point into the shared slot or p2p op; `on_timeout` runs under the group lock when the deadline
// passed while the op was still pending.
class local_request final : public request_impl {
 public:
  local_request(std::shared_ptr<group_state> group, std::shared_ptr<coll_slot> slot,
                std::optional<clock::time_point> deadline, int rank)
      : group_(std::move(group)), slot_(std::move(slot)), deadline_(deadline), rank_(rank) {}
  local_request(std::shared_ptr<group_state> group, std::shared_ptr<p2p_op> op,
                std::optional<clock::time_point> deadline, int rank)
      : group_(std::move(group)), op_(std::move(op)), deadline_(deadline), rank_(rank) {}

  status wait() override {
    std::unique_lock lk(group_->mu);
    const auto is_done = [&] { return phase() == op_phase::done; };
    if (deadline_ && !group_->cv.wait_until(lk, *deadline_, is_done)) {
      if (phase() == op_phase::pending) {
        fail_on_timeout();
        group_->cv.notify_all();
      }
    }
    group_->cv.wait(lk, is_done);  // copying in progress: bounded, the copier finishes it
    return slot_ ? slot_->result : op_->result;
  }

  bool test() override {
    std::lock_guard lk(group_->mu);
    return phase() == op_phase::done;
  }

 private:
  op_phase phase() const { return slot_ ? slot_->phase : op_->phase; }

  void fail_on_timeout() {
    if (slot_) {
      std::string missing;
      for (std::size_t r = 0; r < slot_->arrived.size(); ++r) {
        if (slot_->arrived[r]) continue;
        missing += fmt::format("{}{}", missing.empty() ? "" : ",", r);
        group_->suspects->name(group_->members[r]);
      }
      slot_->phase = op_phase::done;
      slot_->result = make_error(
          errc::deadline_exceeded, "{} #{}: rank {} (global {}) timed out waiting for ranks [{}]",
          op_kind_name(slot_->posts[static_cast<std::size_t>(rank_)].kind), slot_->seq, rank_,
          group_->members[static_cast<std::size_t>(rank_)], missing);
      return;
    }
    auto& queue = op_->is_send ? group_->unmatched_sends : group_->unmatched_recvs;
    std::erase(queue, op_);
    op_->phase = op_phase::done;
    const int peer = op_->is_send ? op_->dst : op_->src;
    op_->result = make_error(
        errc::deadline_exceeded, "{} rank {} (global {}) -> peer {} (global {}) tag {}: timed out",
        op_->is_send ? "send" : "recv", rank_, group_->members[static_cast<std::size_t>(rank_)],
        peer, group_->members[static_cast<std::size_t>(peer)], op_->tag);
  }

  std::shared_ptr<group_state> group_;
  std::shared_ptr<coll_slot> slot_;
  std::shared_ptr<p2p_op> op_;
  std::optional<clock::time_point> deadline_;
  int rank_;
};

}  // namespace

local_communicator::local_communicator(std::shared_ptr<group_state> group, int rank,
                                       std::chrono::milliseconds default_timeout)
    : group_(std::move(group)), rank_(rank), default_timeout_(default_timeout) {}

std::optional<clock::time_point> local_communicator::deadline(const call_options& opts) const {
  const auto timeout = opts.timeout.count() > 0 ? opts.timeout : default_timeout_;
  if (timeout.count() <= 0) return std::nullopt;
  return clock::now() + timeout;
}

request local_communicator::post_collective(coll_post post, const call_options& opts) {
  const auto n = static_cast<std::size_t>(size());
  const auto me = static_cast<std::size_t>(rank_);
  const std::uint64_t seq = next_seq_++;  // taken even on error so ranks stay in step
  const auto dl = deadline(opts);
  std::unique_lock lk(group_->mu);
  if (!group_->aborted.ok()) return request::done(group_->aborted);
  auto& entry = group_->slots[seq];
  if (!entry) {
    entry = std::make_shared<coll_slot>();
    entry->seq = seq;
    entry->posts.resize(n);
    entry->arrived.assign(n, false);
  }
  std::shared_ptr<coll_slot> slot = entry;
  slot->posts[me] = std::move(post);
  slot->arrived[me] = true;
  ++slot->num_arrived;
  const bool last = slot->num_arrived == static_cast<int>(n);
  if (last) group_->slots.erase(seq);
  if (last && slot->phase == op_phase::pending) {
    slot->phase = op_phase::copying;
    lk.unlock();
    status st = validate_collective(slot->posts, slot->seq, group_->members);
    if (st.ok()) execute(*slot);
    lk.lock();
    slot->result = std::move(st);
    slot->phase = op_phase::done;
    group_->cv.notify_all();
  }
  return request(std::make_unique<local_request>(group_, std::move(slot), dl, rank_));
}

request local_communicator::post_p2p(std::shared_ptr<p2p_op> op, const call_options& opts) {
  const int peer = op->is_send ? op->dst : op->src;
  if (peer < 0 || peer >= size()) {
    return request::done(invalid_argument("{} rank {}: peer {} outside group of {}",
                                          op->is_send ? "send" : "recv", rank_, peer, size()));
  }
  const auto dl = deadline(opts);
  std::unique_lock lk(group_->mu);
  if (!group_->aborted.ok()) return request::done(group_->aborted);
  // Match the oldest opposite operation of the same (src, dst, tag): per-triple FIFO order.
  auto& others = op->is_send ? group_->unmatched_recvs : group_->unmatched_sends;
  const auto it = std::find_if(others.begin(), others.end(), [&](const auto& o) {
    return o->src == op->src && o->dst == op->dst && o->tag == op->tag;
  });
  if (it == others.end()) {
    (op->is_send ? group_->unmatched_sends : group_->unmatched_recvs).push_back(op);
    return request(std::make_unique<local_request>(group_, std::move(op), dl, rank_));
  }
  std::shared_ptr<p2p_op> other = *it;
  others.erase(it);
  p2p_op& s = op->is_send ? *op : *other;
  p2p_op& r = op->is_send ? *other : *op;
  op->phase = other->phase = op_phase::copying;
  lk.unlock();
  status st;
  if (s.send.count != r.recv.count || s.send.type != r.recv.type) {
    st = invalid_argument(
        "send rank {} (global {}) -> rank {} (global {}) tag {}: sends {} {} but "
        "recv expects {} {}",
        s.src, group_->members[static_cast<std::size_t>(s.src)], s.dst,
        group_->members[static_cast<std::size_t>(s.dst)], s.tag, s.send.count,
        wire_type_name(s.send.type), r.recv.count, wire_type_name(r.recv.type));
  } else if (s.send.bytes() > 0) {
    std::memcpy(r.recv.data, s.send.data, s.send.bytes());
  }
  lk.lock();
  op->result = other->result = st;
  op->phase = other->phase = op_phase::done;
  group_->cv.notify_all();
  return request(std::make_unique<local_request>(group_, std::move(op), dl, rank_));
}

request local_communicator::isend(send_buf buf, int peer, int tag, const call_options& opts) {
  auto op = std::make_shared<p2p_op>();
  op->src = rank_;
  op->dst = peer;
  op->tag = tag;
  op->is_send = true;
  op->send = buf;
  return post_p2p(std::move(op), opts);
}

request local_communicator::irecv(recv_buf buf, int peer, int tag, const call_options& opts) {
  auto op = std::make_shared<p2p_op>();
  op->src = peer;
  op->dst = rank_;
  op->tag = tag;
  op->recv = buf;
  return post_p2p(std::move(op), opts);
}

}  // namespace helix::transport::local
