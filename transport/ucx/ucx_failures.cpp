// UCX backend: everything that fails a call on the progress thread: deadlines, peers that died or
// exited, transfers that UCX never gives back, and abort (protocol in ucx_protocol.cpp, the
// worker and its thread in ucx_fabric.cpp).
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>

#include "core/log.hpp"
#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport::ucx {
namespace {

// How long a failed call waits for UCX to give back its buffers before they are abandoned.
constexpr auto stuck_grace = std::chrono::seconds(1);

}  // namespace

void ucx_fabric_impl::check_deadlines() {
  const auto now = clock::now();
  while (!deadlines_.empty() && deadlines_.earliest() <= now) {
    std::shared_ptr<op_state> op = deadlines_.pop();
    if (op->done.load(std::memory_order_acquire)) continue;
    group& g = *op->g;
    if (op->is_coll) {
      coll_slot* open = find_slot(g, op->seq);
      if (open == nullptr || open->decided) continue;
      coll_slot& s = *open;
      std::string missing;
      for (std::size_t r = 0; r < s.got[s.phase].size(); ++r) {
        if (static_cast<int>(r) != g.me && s.got[s.phase][r] == 0) {
          missing += fmt::format("{}{}", missing.empty() ? "" : ",", r);
          suspects_.name(g.members[r]);
        }
      }
      const status st = make_error(errc::deadline_exceeded,
                                   "{} #{}: rank {} (global {}) timed out waiting for ranks [{}]",
                                   op_kind_name(op->args.kind), s.seq, g.me,
                                   g.members[static_cast<std::size_t>(g.me)], missing);
      fail_slot_everywhere(g, s, st);
      continue;
    }
    if (op->decided) continue;
    const int peer_global = g.members[static_cast<std::size_t>(op->peer)];
    const status st = make_error(
        errc::deadline_exceeded, "{} rank {} (global {}) -> peer {} (global {}) tag {}: timed out",
        op->is_send ? "send" : "recv", g.me, g.members[static_cast<std::size_t>(g.me)], op->peer,
        peer_global, op->tag);
    if (op->is_send) {
      wire_header h;
      h.type = msg_type::p2p_cancel;
      h.group_id = g.id;
      h.src = g.me;
      h.root_or_tag = op->tag;
      h.seq = op->send_id;
      send_notice(peer_global, h, st);
    } else {
      if (op->matched) continue;  // its data is arriving: completes soon
      auto& q = g.posted_recvs[{op->peer, op->tag}];
      std::erase(q, op);
    }
    op->decided = true;
    op->outcome = st;
    advance_p2p(g, *op);
  }
}

void ucx_fabric_impl::fail_slot_everywhere(group& g, coll_slot& s, const status& st) {
  wire_header h;
  h.type = msg_type::coll_fail;
  h.group_id = g.id;
  h.src = g.me;
  h.seq = s.seq;
  for (std::size_t r = 0; r < g.members.size(); ++r) {
    if (static_cast<int>(r) != g.me) send_notice(g.members[r], h, st);
  }
  fail_slot(g, s, st);
}

status ucx_fabric_impl::member_failure(const group& g) const {
  if (!aborted_pt_.ok()) return aborted_pt_;
  for (int m : g.members) {
    if (!peer_failed_[static_cast<std::size_t>(m)].ok()) {
      return peer_failed_[static_cast<std::size_t>(m)];
    }
  }
  return ok_status();
}

void ucx_fabric_impl::peer_exited(int global_peer) {
  const auto it = std::find_if(pidfds_.begin(), pidfds_.end(),
                               [&](const pid_watch& w) { return w.rank == global_peer; });
  if (it == pidfds_.end()) return;
  const int pid = it->pid;
  (void)epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, it->fd, nullptr);
  ::close(it->fd);
  pidfds_.erase(it);
  fail_peer(global_peer,
            make_error(errc::unavailable, "peer rank {} (pid {}) exited", global_peer, pid));
}

void ucx_fabric_impl::fail_peer(int global_peer, const status& st) {
  if (global_peer < 0 || global_peer >= opts_.world_size) return;
  auto& slot = peer_failed_[static_cast<std::size_t>(global_peer)];
  if (!slot.ok()) return;
  slot = st;
  suspects_.name(global_peer);
  module_logger("transport")->warn("ucx fabric rank {}: {}", opts_.rank, st);
  ucp_ep_h& ep = eps_[static_cast<std::size_t>(global_peer)];
  if (ep != nullptr) {
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t req = ucp_ep_close_nbx(ep, &p);
    if (req != nullptr && UCS_PTR_IS_PTR(req)) closing_.push_back(req);
    ep = nullptr;
  }
  // UCX may never complete what it still holds for the dead peer: count it out now (the
  // completions, if they come, are ignored) so that the calls waiting on it can end.
  std::vector<std::pair<group*, std::uint64_t>> touched;
  std::vector<std::pair<group*, std::shared_ptr<op_state>>> touched_ops;
  std::vector<send_token*> to_abandon;
  for (const auto& t : tokens_) {
    if (t->in_flight && t->peer == global_peer && !t->abandoned &&
        t->what != send_token::kind::notice) {
      to_abandon.push_back(t.get());
    }
  }
  for (send_token* t : to_abandon) abandon(t, touched, touched_ops);
  for (auto& [id, gp] : groups_) {
    group& g = *gp;
    const auto it = std::find(g.members.begin(), g.members.end(), global_peer);
    if (it == g.members.end()) continue;
    const int grank = static_cast<int>(it - g.members.begin());
    std::vector<coll_slot*> open;
    for (coll_slot* s : g.slots) {
      if (!s->decided) open.push_back(s);
    }
    for (coll_slot* s : open) {
      // A slot that only peers' messages made yet: this rank's call is still to come.
      const std::string_view what = s->op ? op_kind_name(s->op->args.kind) : "collective";
      fail_slot(g, *s,
                make_error(errc::unavailable, "{} #{}: peer rank {} (global {}) failed: {}", what,
                           s->seq, grank, global_peer, st.message()));
    }
    std::vector<std::shared_ptr<op_state>> p2p;
    for (auto& [key, q] : g.posted_recvs) {
      if (key.first != grank) continue;
      p2p.insert(p2p.end(), q.begin(), q.end());
      q.clear();
    }
    for (const auto& op : g.sends) {
      if (op->peer == grank) p2p.push_back(op);
    }
    for (auto& op : p2p) {
      if (op->decided) continue;
      op->decided = true;
      op->outcome =
          make_error(errc::unavailable, "{} rank {} -> peer {} (global {}): {}",
                     op->is_send ? "send" : "recv", g.me, grank, global_peer, st.message());
      advance_p2p(g, *op);
    }
  }
  advance_abandoned(touched, touched_ops, st);
}

void ucx_fabric_impl::abandon(send_token* t, std::vector<std::pair<group*, std::uint64_t>>& slots,
                              std::vector<std::pair<group*, std::shared_ptr<op_state>>>& ops) {
  t->abandoned = true;
  const bool is_recv =
      t->what == send_token::kind::slot_recv || t->what == send_token::kind::op_recv;
  if (is_recv && t->request != nullptr) ucp_request_cancel(worker_, t->request);
  switch (t->what) {
    case send_token::kind::slot_send:
      --t->slot->sends_in_flight;
      slots.emplace_back(t->g, t->slot->seq);
      break;
    case send_token::kind::slot_recv:
      --t->slot->recvs_in_flight;
      slots.emplace_back(t->g, t->slot->seq);
      break;
    case send_token::kind::op_send:
    case send_token::kind::op_recv:
      --t->op->ucx_in_flight;
      ops.emplace_back(t->g, t->op);
      break;
    case send_token::kind::notice:
      break;
  }
  if (t->pull_id != 0) {  // no UCX request holds a pull token: it goes now
    std::erase(pulls_out_, t);
    recycle_token(t);
  }
}

void ucx_fabric_impl::advance_abandoned(
    std::vector<std::pair<group*, std::uint64_t>>& slots,
    std::vector<std::pair<group*, std::shared_ptr<op_state>>>& ops, const status& why) {
  for (auto& [g, seq] : slots) {
    coll_slot* open = find_slot(*g, seq);
    if (open == nullptr) continue;
    coll_slot& s = *open;
    if (!s.decided) {
      fail_slot(*g, s, why);
    } else {
      advance(*g, s);
    }
  }
  for (auto& [g, op] : ops) {
    if (!op->decided) {
      op->decided = true;
      op->outcome = why;
    }
    advance_p2p(*g, *op);
  }
}

void ucx_fabric_impl::abandon_stuck() {
  const auto now = clock::now();
  std::vector<send_token*> stuck;
  for (const auto& owned : tokens_) {
    send_token* t = owned.get();
    if (!t->in_flight || t->abandoned || t->what == send_token::kind::notice) continue;
    const bool decided = t->slot != nullptr ? t->slot->decided : t->op->decided;
    const bool failed = t->slot != nullptr ? !t->slot->result.ok() : !t->op->outcome.ok();
    if (!decided || !failed) {
      t->stuck_since.reset();
      continue;
    }
    if (!t->stuck_since) t->stuck_since = now;
    if (now - *t->stuck_since >= stuck_grace) stuck.push_back(t);
  }
  if (stuck.empty()) return;
  module_logger("transport")
      ->warn("ucx fabric rank {}: abandoning {} transfers of failed calls", opts_.rank,
             stuck.size());
  std::vector<std::pair<group*, std::uint64_t>> slots;
  std::vector<std::pair<group*, std::shared_ptr<op_state>>> ops;
  for (send_token* t : stuck) abandon(t, slots, ops);
  advance_abandoned(slots, ops, make_error(errc::aborted, "transfer abandoned"));
}

void ucx_fabric_impl::fail_everything(const status& st) {
  if (aborted_pt_.ok()) aborted_pt_ = st;
  for (auto& [id, gp] : groups_) {
    group& g = *gp;
    std::vector<coll_slot*> open;
    for (coll_slot* s : g.slots) {
      if (!s->decided) open.push_back(s);
    }
    for (coll_slot* s : open) fail_slot(g, *s, aborted_pt_);
    std::vector<std::shared_ptr<op_state>> p2p;
    for (auto& [key, q] : g.posted_recvs) {
      p2p.insert(p2p.end(), q.begin(), q.end());
      q.clear();
    }
    p2p.insert(p2p.end(), g.sends.begin(), g.sends.end());
    for (auto& op : p2p) {
      if (op->decided) continue;
      op->decided = true;
      op->outcome = aborted_pt_;
      advance_p2p(g, *op);
    }
    for (auto& [key, q] : g.unexpected) {
      for (auto& m : q) release(m);
      q.clear();
    }
  }
}

}  // namespace helix::transport::ucx
