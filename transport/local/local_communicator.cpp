#include "transport/local/local_communicator.hpp"

#include <algorithm>
#include <cstring>

namespace helix::transport::local {

void group_state::abort(const status& reason) {
  std::lock_guard lk(mu);
  if (!aborted.ok()) return;
  aborted = reason;
  const auto fail = [&](coll_slot& slot) {
    if (slot.in_use && slot.phase == op_phase::pending) {
      slot.phase = op_phase::done;
      slot.result = reason;
    }
  };
  for (auto& slot : ring) fail(*slot);
  for (auto& [seq, slot] : extra) fail(*slot);
  for (auto* queue : {&unmatched_sends, &unmatched_recvs}) {
    for (auto& op : *queue) {
      op->phase = op_phase::done;
      op->result = reason;
    }
    queue->clear();
  }
  cv.notify_all();
}

group_state::group_state(std::vector<int> global_ranks, status abort_reason,
                         std::shared_ptr<suspect_book> book)
    : members(std::move(global_ranks)),
      free_requests(members.size()),
      aborted(std::move(abort_reason)),
      suspects(std::move(book)) {
  ring.reserve(ring_slots);
  for (std::size_t i = 0; i < ring_slots; ++i) {
    ring.push_back(std::make_unique<coll_slot>(members.size()));
  }
}

void coll_slot::open(std::uint64_t call) {
  seq = call;
  in_use = true;
  std::fill(arrived.begin(), arrived.end(), 0);
  std::fill(claimed.begin(), claimed.end(), 0);
  num_arrived = 0;
  holders = 0;
  shares_done = 0;
  validated = false;
  phase = op_phase::pending;
  result = ok_status();
}

coll_slot& group_state::slot_for(std::uint64_t seq) {
  coll_slot& home = *ring[seq % ring_slots];
  if (home.in_use && home.seq == seq) return home;
  if (const auto it = extra.find(seq); it != extra.end()) return *it->second;
  coll_slot* slot = &home;
  if (home.in_use) {  // an older call still holds it (a rank has not let go of it yet)
    slot = (extra[seq] = std::make_unique<coll_slot>(members.size())).get();
  }
  slot->open(seq);
  return *slot;
}

void group_state::release(coll_slot& slot) {
  --slot.holders;
  if (slot.holders > 0 || slot.num_arrived < static_cast<int>(members.size())) return;
  if (&slot == ring[slot.seq % ring_slots].get()) {
    slot.in_use = false;
  } else {
    extra.erase(slot.seq);
  }
}

namespace {

using clock = std::chrono::steady_clock;

// Below this many bytes moved, the last arriver moves a collective alone (see the header).
constexpr std::size_t share_min_bytes = 256 * 1024;

[[nodiscard]] std::byte* at(void* base, std::size_t elems, std::size_t elem_bytes) {
  return static_cast<std::byte*>(base) + elems * elem_bytes;
}
[[nodiscard]] const std::byte* at(const void* base, std::size_t elems, std::size_t elem_bytes) {
  return static_cast<const std::byte*>(base) + elems * elem_bytes;
}

// Bytes a validated collective moves in all (decides whether waiters are woken to share it).
std::size_t bytes_moved(const coll_slot& slot) {
  const coll_post& p0 = slot.posts[0];
  switch (p0.kind) {
    case op_kind::all_to_all_v: {
      std::size_t total = 0;
      for (const coll_post& p : slot.posts) total += p.send.bytes();
      return total;
    }
    case op_kind::all_gather:
      return p0.send.bytes() * slot.posts.size() * slot.posts.size();
    case op_kind::broadcast:
    case op_kind::all_to_all:
    case op_kind::all_reduce:
      return p0.recv.bytes() * slot.posts.size();
    case op_kind::barrier:
      return 0;
  }
  return 0;
}

// Moves share `j` of a validated collective, without the group lock (the slot is `copying` and
// share j is claimed by this thread alone). The shares of one call write disjoint bytes: share j
// fills rank j's receive buffer, except in-place all_to_all (share j swaps the slice pairs (a, b),
// a < b, with a + b = j mod n) and all_reduce (share j reduces element chunk j in rank order and
// writes it to every rank: identical bytes everywhere, whoever runs it).
void execute_share(const coll_slot& slot, std::size_t j) {
  const auto n = slot.posts.size();
  const coll_post& p0 = slot.posts[0];
  const coll_post& mine = slot.posts[j];
  switch (p0.kind) {
    case op_kind::all_to_all: {
      const std::size_t es = wire_type_bytes(p0.send.type);
      const std::size_t c = p0.send.count / n;
      if (p0.in_place) {  // every rank in place: swap each pair's two slices once
        for (std::size_t a = 0; a < n; ++a) {
          const std::size_t b = (j + n - a) % n;
          if (b <= a) continue;
          swap_bytes(at(slot.posts[a].recv.data, b * c, es), at(slot.posts[b].recv.data, a * c, es),
                     c * es);
        }
        break;
      }
      for (std::size_t i = 0; i < n; ++i) {
        std::memcpy(at(mine.recv.data, i * c, es), at(slot.posts[i].send.data, j * c, es), c * es);
      }
      break;
    }
    case op_kind::all_to_all_v: {
      const std::size_t es = wire_type_bytes(p0.send.type);
      for (std::size_t i = 0; i < n; ++i) {
        const all_to_all_v_args& src = slot.posts[i].v;
        const std::size_t c = src.send_counts[j];
        if (c == 0) continue;
        std::memcpy(at(mine.v.recv.data, mine.v.recv_offsets[i], es),
                    at(src.send.data, src.send_offsets[j], es), c * es);
      }
      break;
    }
    case op_kind::all_reduce: {
      // Fixed order r = 0..n-1 per element, then the same float to every rank: bit-identical and
      // independent of arrival order and of who reduces. Blocked through a small stack buffer so
      // that in-place calls (send == recv) read every input of a block before writing any of it.
      constexpr std::size_t block = 512;
      float sum[block];
      const chunk part = chunk_of(p0.send.count, n, j);
      for (std::size_t base = part.offset; base < part.offset + part.count; base += block) {
        const std::size_t m = std::min(block, part.offset + part.count - base);
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
      for (std::size_t i = 0; i < n; ++i) {
        std::byte* dst = static_cast<std::byte*>(mine.recv.data) + i * bytes;
        if (dst != slot.posts[i].send.data) std::memcpy(dst, slot.posts[i].send.data, bytes);
      }
      break;
    }
    case op_kind::broadcast: {
      const recv_buf& src = slot.posts[static_cast<std::size_t>(p0.root)].recv;
      if (mine.recv.data != src.data) std::memcpy(mine.recv.data, src.data, src.bytes());
      break;
    }
    case op_kind::barrier:
      break;
  }
}

// Takes an unclaimed share of a copying slot, this rank's own first; -1 when none is left.
// Called under the group lock.
int claim_share(coll_slot& slot, int rank) {
  // Copying starts before the arguments are checked (so that no timeout fails the call while the
  // last arriver checks them); nothing moves until they passed.
  if (slot.phase != op_phase::copying || !slot.validated) return -1;
  const auto me = static_cast<std::size_t>(rank);
  if (slot.claimed[me] == 0) {
    slot.claimed[me] = 1;
    return rank;
  }
  for (std::size_t j = 0; j < slot.claimed.size(); ++j) {
    if (slot.claimed[j] == 0) {
      slot.claimed[j] = 1;
      return static_cast<int>(j);
    }
  }
  return -1;
}

// Moves shares of a copying slot until none is left unclaimed; `lk` holds the group lock on entry
// and on return. The thread that finishes the last share marks the call done and wakes the group.
void move_shares(group_state& g, coll_slot& slot, int rank, std::unique_lock<std::mutex>& lk) {
  for (int j = claim_share(slot, rank); j >= 0; j = claim_share(slot, rank)) {
    lk.unlock();
    execute_share(slot, static_cast<std::size_t>(j));
    lk.lock();
    if (++slot.shares_done == static_cast<int>(slot.claimed.size())) {
      slot.phase = op_phase::done;
      g.cv.notify_all();
    }
  }
}

// A deadline_exceeded naming the ranks a collective still waits for (called under the group
// lock once the deadline passed with the call still pending).
status collective_timeout(group_state& g, const coll_slot& slot, int rank) {
  std::string missing;
  for (std::size_t r = 0; r < slot.arrived.size(); ++r) {
    if (slot.arrived[r] != 0) continue;
    missing += fmt::format("{}{}", missing.empty() ? "" : ",", r);
    g.suspects->name(g.members[r]);
  }
  return make_error(errc::deadline_exceeded,
                    "{} #{}: rank {} (global {}) timed out waiting for ranks [{}]",
                    op_kind_name(slot.posts[static_cast<std::size_t>(rank)].kind), slot.seq, rank,
                    g.members[static_cast<std::size_t>(rank)], missing);
}

// One rank's handle on a posted collective; pooled per rank in the group (see the header).
// Waiting helps move the call's shares.
class coll_request final : public request_impl {
 public:
  void arm(std::shared_ptr<group_state> group, coll_slot* slot,
           std::optional<clock::time_point> deadline, int rank) {
    group_ = std::move(group);
    slot_ = slot;
    deadline_ = deadline;
    rank_ = rank;
  }

  status wait() override {
    std::unique_lock lk(group_->mu);
    while (slot_->phase != op_phase::done) {
      if (slot_->phase == op_phase::copying) {
        move_shares(*group_, *slot_, rank_, lk);
        if (slot_->phase != op_phase::done) group_->cv.wait(lk);  // others finish theirs: bounded
        continue;
      }
      if (!deadline_) {
        group_->cv.wait(lk);
      } else if (group_->cv.wait_until(lk, *deadline_) == std::cv_status::timeout &&
                 slot_->phase == op_phase::pending) {
        slot_->result = collective_timeout(*group_, *slot_, rank_);
        slot_->phase = op_phase::done;
        group_->cv.notify_all();
      }
    }
    return slot_->result;
  }

  bool test() override {
    std::lock_guard lk(group_->mu);
    return slot_->phase == op_phase::done;
  }

  // Back to this rank's free list; the group may go with the last reference, so nothing of this
  // object is touched after the lock is released.
  void recycle() noexcept override {
    const std::shared_ptr<group_state> group = std::move(group_);
    std::lock_guard lk(group->mu);
    group->release(*slot_);
    slot_ = nullptr;
    group->free_requests[static_cast<std::size_t>(rank_)].push_back(this);
  }

 private:
  std::shared_ptr<group_state> group_;
  coll_slot* slot_ = nullptr;
  std::optional<clock::time_point> deadline_;
  int rank_ = 0;
};

// One rank's handle on a posted point-to-point operation (allocated per call: these carry KV
// migrations and re-slices, not the decode step).
class p2p_request final : public request_impl {
 public:
  p2p_request(std::shared_ptr<group_state> group, std::shared_ptr<p2p_op> op,
              std::optional<clock::time_point> deadline, int rank)
      : group_(std::move(group)), op_(std::move(op)), deadline_(deadline), rank_(rank) {}

  status wait() override {
    std::unique_lock lk(group_->mu);
    const auto is_done = [&] { return op_->phase == op_phase::done; };
    if (deadline_ && !group_->cv.wait_until(lk, *deadline_, is_done)) {
      if (op_->phase == op_phase::pending) {
        fail_on_timeout();
        group_->cv.notify_all();
      }
    }
    group_->cv.wait(lk, is_done);  // copying in progress: bounded, the copier finishes it
    return op_->result;
  }

  bool test() override {
    std::lock_guard lk(group_->mu);
    return op_->phase == op_phase::done;
  }

 private:
  void fail_on_timeout() {
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

request local_communicator::collective_request(coll_slot& slot,
                                               std::optional<clock::time_point> dl) {
  auto& pool = group_->free_requests[static_cast<std::size_t>(rank_)];
  coll_request* req = nullptr;
  if (pool.empty()) {
    auto fresh = std::make_unique<coll_request>();
    req = fresh.get();
    group_->requests.push_back(std::move(fresh));
  } else {
    req = static_cast<coll_request*>(pool.back());
    pool.pop_back();
  }
  ++slot.holders;
  req->arm(group_, &slot, dl, rank_);
  return request(static_cast<request_impl*>(req));
}

request local_communicator::post_collective(coll_post post, const call_options& opts) {
  const auto n = static_cast<std::size_t>(size());
  const auto me = static_cast<std::size_t>(rank_);
  const std::uint64_t seq = next_seq_++;  // taken even on error so ranks stay in step
  const auto dl = deadline(opts);
  std::unique_lock lk(group_->mu);
  if (!group_->aborted.ok()) return request::done(group_->aborted);
  coll_slot& slot = group_->slot_for(seq);
  slot.posts[me] = std::move(post);
  slot.arrived[me] = 1;
  ++slot.num_arrived;
  request req = collective_request(slot, dl);
  if (slot.num_arrived == static_cast<int>(n) && slot.phase == op_phase::pending) {
    slot.phase = op_phase::copying;  // nobody may fail it now: the posts are this thread's
    lk.unlock();
    status st = validate_collective(slot.posts, slot.seq, group_->members);
    const bool shared = st.ok() && bytes_moved(slot) >= share_min_bytes;
    lk.lock();
    if (!st.ok()) {
      slot.result = std::move(st);
      slot.phase = op_phase::done;
      group_->cv.notify_all();
    } else {
      slot.validated = true;
      if (shared) group_->cv.notify_all();  // waiters come and take their shares
      move_shares(*group_, slot, rank_, lk);
    }
  }
  return req;
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
    return request(std::make_unique<p2p_request>(group_, std::move(op), dl, rank_));
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
  return request(std::make_unique<p2p_request>(group_, std::move(op), dl, rank_));
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
