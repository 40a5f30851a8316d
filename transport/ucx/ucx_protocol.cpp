// UCX backend: the collective and point-to-point protocol, run on the progress thread (see the
// protocol paragraph of ucx_fabric_impl.hpp), and the messages it sends and releases.
#include <algorithm>
#include <cstring>

#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport::ucx {
namespace {

struct target {
  void* data = nullptr;
  std::size_t bytes = 0;
};

std::byte* at(void* base, std::size_t elems, std::size_t elem_bytes) {
  return static_cast<std::byte*>(base) + elems * elem_bytes;
}
const std::byte* at(const void* base, std::size_t elems, std::size_t elem_bytes) {
  return static_cast<const std::byte*>(base) + elems * elem_bytes;
}

std::string text_of(const held_msg& m) {
  if (m.rndv || m.length == 0) return {};
  return std::string(reinterpret_cast<const char*>(m.eager_bytes()), m.length);
}

status status_of(const held_msg& m) {
  const auto code = static_cast<errc>(m.hdr.error_code);
  if (code == errc::ok) return ok_status();
  return status(code, text_of(m));
}

// Where rank r's phase-p message lands in this rank's buffers (this rank's own arguments).
target destination(const group& g, const coll_slot& s, int phase, int r) {
  const coll_post& own = s.op->args;
  const std::size_t n = g.members.size();
  const auto ur = static_cast<std::size_t>(r);
  const std::size_t es = wire_type_bytes(own.recv.type);
  switch (own.kind) {
    case op_kind::all_to_all: {
      const std::size_t c = own.recv.count / n;
      return {at(own.recv.data, ur * c, es), c * es};
    }
    case op_kind::all_to_all_v:
      return {at(own.recv.data, own.v.recv_offsets[ur], es), own.v.recv_counts[ur] * es};
    case op_kind::all_gather:
      return {at(own.recv.data, ur * own.send.count, es), own.send.bytes()};
    case op_kind::broadcast:
      if (r == own.root) return {own.recv.data, own.recv.bytes()};
      return {};
    case op_kind::barrier:
      return {};
    case op_kind::all_reduce: {
      if (phase == 0) {
        const chunk mine = chunk_of(own.send.count, n, static_cast<std::size_t>(g.me));
        return {at(const_cast<std::byte*>(s.scratch.data()), ur * mine.count, sizeof(float)),
                mine.count * sizeof(float)};
      }
      const chunk theirs = chunk_of(own.send.count, n, ur);
      return {at(own.recv.data, theirs.offset, sizeof(float)), theirs.count * sizeof(float)};
    }
  }
  return {};
}

// What this rank sends to rank j in phase 0.
target phase0_payload(const coll_post& own, std::size_t n, std::size_t j, int me) {
  const std::size_t es = wire_type_bytes(own.send.type);
  switch (own.kind) {
    case op_kind::all_to_all: {
      const std::size_t c = own.send.count / n;
      return {const_cast<std::byte*>(at(own.send.data, j * c, es)), c * es};
    }
    case op_kind::all_to_all_v:
      return {const_cast<std::byte*>(at(own.send.data, own.v.send_offsets[j], es)),
              own.v.send_counts[j] * es};
    case op_kind::all_gather:
      return {const_cast<void*>(own.send.data), own.send.bytes()};
    case op_kind::broadcast:
      if (me == own.root) return {own.recv.data, own.recv.bytes()};
      return {};
    case op_kind::barrier:
      return {};
    case op_kind::all_reduce: {
      const chunk c = chunk_of(own.send.count, n, j);
      return {const_cast<std::byte*>(at(own.send.data, c.offset, sizeof(float))),
              c.count * sizeof(float)};
    }
  }
  return {};
}

// This rank's own slice, which never crosses the wire.
void copy_own_slice(const coll_post& own, std::size_t n, int me) {
  const auto um = static_cast<std::size_t>(me);
  const std::size_t es = wire_type_bytes(own.send.type);
  switch (own.kind) {
    case op_kind::all_to_all: {
      if (own.in_place) break;  // it stays where it is
      const std::size_t c = own.send.count / n;
      std::memcpy(at(own.recv.data, um * c, es), at(own.send.data, um * c, es), c * es);
      break;
    }
    case op_kind::all_to_all_v:
      if (own.v.send_counts[um] == own.v.recv_counts[um] && own.v.send_counts[um] > 0) {
        std::memcpy(at(own.recv.data, own.v.recv_offsets[um], es),
                    at(own.send.data, own.v.send_offsets[um], es), own.v.send_counts[um] * es);
      }
      break;
    case op_kind::all_gather: {
      std::byte* dst = at(own.recv.data, um * own.send.count, es);
      if (dst != own.send.data && own.send.count > 0) {
        std::memcpy(dst, own.send.data, own.send.bytes());
      }
      break;
    }
    case op_kind::all_reduce:
      if (n == 1 && own.send.data != own.recv.data && own.send.count > 0) {
        std::memcpy(own.recv.data, own.send.data, own.send.bytes());
      }
      break;
    case op_kind::broadcast:
    case op_kind::barrier:
      break;
  }
}

}  // namespace

void ucx_fabric_impl::dispatch(held_msg m) {
  if (m.hdr.type == msg_type::abort) {
    status st = status_of(m);
    if (st.ok()) st = status(errc::aborted, "a peer aborted the transport");
    release(m);
    if (aborted_pt_.ok()) {
      {
        std::lock_guard lk(mu_);
        if (abort_reason_.ok()) abort_reason_ = st;
      }
      fail_everything(st);
    }
    return;
  }
  if (m.hdr.type == msg_type::pull_ready) {
    if (m.hdr.src >= 0 && m.hdr.src < opts_.world_size && opts_.one_copy) {
      pull_ready_[static_cast<std::size_t>(m.hdr.src)] = 1;
    }
    release(m);
    return;
  }
  if (m.hdr.type == msg_type::pulled) {
    on_pulled(m);
    release(m);
    return;
  }
  if (m.hdr.type == msg_type::region_freed) {
    on_region_freed(m);
    release(m);
    return;
  }
  const auto it = groups_.find(m.hdr.group_id);
  if (it == groups_.end()) {
    orphans_[m.hdr.group_id].push_back(std::move(m));
    return;
  }
  group& g = *it->second;
  if (m.hdr.src < 0 || static_cast<std::size_t>(m.hdr.src) >= g.members.size()) {
    release(m);
    return;
  }
  switch (m.hdr.type) {
    case msg_type::coll:
      on_coll(g, std::move(m));
      return;
    case msg_type::coll_fail:
      on_coll_fail(g, m);
      break;
    case msg_type::p2p:
      on_p2p(g, std::move(m));
      return;
    case msg_type::p2p_ack:
      on_ack(g, m);
      break;
    case msg_type::p2p_cancel:
      on_cancel(g, m);
      break;
    case msg_type::abort:
    case msg_type::pull_ready:
    case msg_type::pulled:
    case msg_type::region_freed:
      break;
  }
  release(m);
}

// ---- collectives ----

void ucx_fabric_impl::reconsider_held(group& g, coll_slot& s, bool phase0_only) {
  // consume() may hold messages again (into s.held), never touches s.held_taken.
  s.held_taken.swap(s.held);
  for (auto& m : s.held_taken) {
    if (!phase0_only || m.hdr.phase == 0) {
      consume(g, s, std::move(m));
    } else {
      s.held.push_back(std::move(m));
    }
  }
  s.held_taken.clear();
}

void ucx_fabric_impl::start_coll(const std::shared_ptr<op_state>& op) {
  group& g = *op->g;
  g.posted_end = op->seq + 1;
  coll_slot& s = slot_for(g, op->seq);
  s.op = op;
  if (!s.decided) {
    const status failure = member_failure(g);
    if (!failure.ok()) {
      fail_slot(g, s, failure);
      return;
    }
  }
  if (s.decided) {  // failed by a peer's notice before this rank posted
    advance(g, s);
    return;
  }
  const coll_post& own = op->args;
  const std::size_t n = g.members.size();
  const int me = g.me;
  s.posts[static_cast<std::size_t>(me)] = own;
  if (op->deadline) deadlines_.push(op);
  if (own.local_error.ok()) {
    if (own.kind == op_kind::all_reduce && n > 1) {
      const chunk mine = chunk_of(own.send.count, n, static_cast<std::size_t>(me));
      take_scratch(g, s, (n + 1) * mine.count * sizeof(float));
    }
  }
  // In place: phase 0 carries the arguments and, where the pair can swap, where the peer's slice
  // lies in this rank's fabric buffer; the data moves in phase 1 (start_swap_phase).
  const bool in_place = own.local_error.ok() && own.kind == op_kind::all_to_all && own.in_place;
  const std::optional<swap_desc> region =
      in_place ? region_of(own.recv.data, own.recv.bytes()) : std::nullopt;
  for (std::size_t j = 0; j < n; ++j) {
    if (static_cast<int>(j) == me) continue;
    wire_header h;
    h.type = msg_type::coll;
    h.kind = own.kind;
    h.send_type = own.send.type;
    h.recv_type = own.recv.type;
    h.src = me;
    h.root_or_tag = own.root;
    h.group_id = g.id;
    h.seq = s.seq;
    h.send_count = own.send.count;
    h.recv_count = own.recv.count;
    auto* token = new_token(send_token::kind::slot_send, &g, &s, nullptr, g.members[j]);
    target payload;
    if (!own.local_error.ok()) {
      h.error_code = static_cast<std::uint8_t>(own.local_error.code());
      write_header(token->header, h, {}, {}, own.local_error.message());
    } else {
      if (own.kind == op_kind::all_to_all_v) {
        write_header(token->header, h, own.v.send_counts, own.v.recv_counts);
      } else {
        write_header(token->header, h);
      }
      payload = phase0_payload(own, n, j, me);
    }
    const std::size_t header_bytes =
        own.local_error.ok() ? token->header.size() : sizeof(wire_header);
    if (in_place) {
      payload = {};
      h.flags |= wire_flag_in_place;
      const auto gj = static_cast<std::size_t>(g.members[j]);
      if (region && pull_ready_[gj] != 0 && can_pull_from_[gj] != 0) {
        h.flags |= wire_flag_swap;
        swap_desc d = *region;
        d.bytes = own.recv.bytes() / n;
        d.offset += j * d.bytes;
        write_header(token->header, h);
        token->header.resize(header_bytes + sizeof(d));
        std::memcpy(token->header.data() + header_bytes, &d, sizeof(d));
        s.swap_to[j] = 1;
      } else {
        write_header(token->header, h);
      }
    }
    ++s.sends_in_flight;
    if (payload.data == nullptr || payload.bytes == 0) {
      // Header (and error text) only. With no text, send an empty payload from the header.
      send_msg(g.members[j], token, header_bytes, nullptr, 0);
    } else {
      send_payload(g.members[j], token, header_bytes, payload.data, payload.bytes);
    }
  }
  // After the sends, so that peers (reading this rank's memory, one copy) start meanwhile.
  if (own.local_error.ok()) copy_own_slice(own, n, me);
  reconsider_held(g, s, /*phase0_only=*/true);
  advance(g, s);
}

void ucx_fabric_impl::on_coll(group& g, held_msg m) {
  const std::uint64_t seq = m.hdr.seq;
  if (find_slot(g, seq) == nullptr && seq < g.posted_end) {
    release(m);  // a call this rank already finished (a peer that timed out sent it late)
    return;
  }
  coll_slot& s = slot_for(g, seq);
  if (s.decided) {
    release(m);
    return;
  }
  if (!s.op || m.hdr.phase > s.phase) {
    s.held.push_back(std::move(m));
    return;
  }
  consume(g, s, std::move(m));
  advance(g, s);
}

void ucx_fabric_impl::consume(group& g, coll_slot& s, held_msg m) {
  const int r = m.hdr.src;
  const int phase = m.hdr.phase;
  const auto ur = static_cast<std::size_t>(r);
  if (r == g.me || phase > 1 || s.got[phase][ur] != 0) {
    release(m);
    return;
  }
  s.got[phase][ur] = 1;
  ++s.got_count[phase];
  const coll_post& own = s.op->args;
  if (phase == 0) {
    coll_post& p = s.posts[ur];
    p.kind = m.hdr.kind;
    p.send = {nullptr, m.hdr.send_count, m.hdr.send_type};
    p.recv = {nullptr, m.hdr.recv_count, m.hdr.recv_type};
    p.root = m.hdr.root_or_tag;
    p.in_place = (m.hdr.flags & wire_flag_in_place) != 0;
    if (m.hdr.error_code != 0) {
      p.local_error = status_of(m);
      release(m);
      return;
    }
    if (p.in_place || own.in_place) {  // no data in phase 0 (a mismatch fails validation)
      if (p.in_place && own.in_place && (m.hdr.flags & wire_flag_swap) != 0 && !m.rndv &&
          m.length == sizeof(swap_desc)) {
        swap_desc d;
        std::memcpy(&d, m.eager_bytes(), sizeof(d));
        s.swap_from[ur] = d;
      }
      release(m);
      return;
    }
    if (p.kind == op_kind::all_to_all_v) {
      const std::size_t n = g.members.size();
      if (m.hdr.n_counts != n) {
        p.local_error = invalid_argument("sent {} counts for a group of {}", m.hdr.n_counts, n);
      } else {
        s.counts[ur].assign(m.counts.begin(), m.counts.end());
        p.v.send_counts = std::span<const std::size_t>(s.counts[ur]).first(n);
        p.v.recv_counts = std::span<const std::size_t>(s.counts[ur]).subspan(n, n);
      }
    }
  }
  if (!own.local_error.ok() || m.length == 0) {
    release(m);
    return;
  }
  const target dst = destination(g, s, phase, r);
  if (dst.data == nullptr || dst.bytes != m.length) {
    release(m);  // disagreeing arguments: validation fails the call on every rank
    return;
  }
  receive(g, s, m, dst.data);
}

void ucx_fabric_impl::receive(group& g, coll_slot& s, held_msg& m, void* dst) {
  if (m.pull) {
    start_pull(g, &s, nullptr, m, dst);
    return;
  }
  if (!m.rndv) {
    std::memcpy(dst, m.eager_bytes(), m.length);
    release(m);
    return;
  }
  auto* token = new_token(send_token::kind::slot_recv, &g, &s, nullptr,
                          g.members[static_cast<std::size_t>(m.hdr.src)]);
  ucp_request_param_t p{};
  p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  p.cb.recv_am = &ucx_fabric_impl::on_recv_done;
  p.user_data = token;
  ++s.recvs_in_flight;
  ucs_status_ptr_t req = ucp_am_recv_data_nbx(worker_, m.data, dst, m.length, &p);
  m.data = nullptr;  // UCP owns the descriptor now
  m.ucx_owned = false;
  if (UCS_PTR_IS_PTR(req)) token->request = req;
  if (req == nullptr) {
    complete(token, UCS_OK);
  } else if (UCS_PTR_IS_ERR(req)) {
    complete(token, UCS_PTR_STATUS(req));
  }
}

void ucx_fabric_impl::advance(group& g, coll_slot& s) {
  if (!s.op) return;
  const std::size_t n = g.members.size();
  const auto others = static_cast<int>(n) - 1;
  if (!s.decided && s.phase == 0 && s.got_count[0] == others && s.recvs_in_flight == 0) {
    status st = validate_collective(s.posts, s.seq, g.members);
    if (!st.ok()) {
      s.decided = true;
      s.result = std::move(st);
    } else if (s.op->args.kind == op_kind::all_reduce && n > 1) {
      start_phase1(g, s);
    } else if (s.op->args.kind == op_kind::all_to_all && s.op->args.in_place && n > 1) {
      start_swap_phase(g, s);  // advances the slot itself: it may be gone now
      return;
    } else {
      s.decided = true;
    }
  }
  if (!s.decided && s.phase == 1 && s.got_count[1] == others && s.recvs_in_flight == 0) {
    s.decided = true;
  }
  if (!s.decided || s.sends_in_flight > 0 || s.recvs_in_flight > 0) return;
  std::shared_ptr<op_state> op = s.op;
  status result = s.result;
  close_slot(g, s);  // `s` is gone from here on
  finish(*op, std::move(result));
}

void ucx_fabric_impl::start_phase1(group& g, coll_slot& s) {
  s.phase = 1;
  const coll_post& own = s.op->args;
  const std::size_t n = g.members.size();
  const auto me = static_cast<std::size_t>(g.me);
  const chunk mine = chunk_of(own.send.count, n, me);
  auto* scratch = reinterpret_cast<float*>(s.scratch.data());
  const auto input = [&](std::size_t r) -> const float* {
    if (r == me) return static_cast<const float*>(own.send.data) + mine.offset;
    return scratch + r * mine.count;
  };
  // Rank order 0..n-1 for every element, as the local backend sums: identical bytes.
  float* out = static_cast<float*>(own.recv.data) + mine.offset;
  if (mine.count > 0) {
    float* sum = scratch + n * mine.count;
    const float* first = input(0);
    std::copy(first, first + mine.count, sum);
    for (std::size_t r = 1; r < n; ++r) {
      const float* in = input(r);
      for (std::size_t i = 0; i < mine.count; ++i) sum[i] += in[i];
    }
    std::memcpy(out, sum, mine.count * sizeof(float));
  }
  for (std::size_t j = 0; j < n; ++j) {
    if (j != me) send_phase1_msg(g, s, j, out, mine.count * sizeof(float), 0);
  }
  reconsider_held(g, s, /*phase0_only=*/false);
}

void ucx_fabric_impl::send_phase1_msg(group& g, coll_slot& s, std::size_t j, const void* data,
                                      std::size_t bytes, std::uint32_t flags) {
  const coll_post& own = s.op->args;
  wire_header h;
  h.type = msg_type::coll;
  h.kind = own.kind;
  h.send_type = own.send.type;
  h.recv_type = own.recv.type;
  h.phase = 1;
  h.flags = flags;
  h.src = g.me;
  h.group_id = g.id;
  h.seq = s.seq;
  h.send_count = own.send.count;
  h.recv_count = own.recv.count;
  auto* token = new_token(send_token::kind::slot_send, &g, &s, nullptr, g.members[j]);
  write_header(token->header, h);
  ++s.sends_in_flight;
  if (bytes == 0) {
    send_msg(g.members[j], token, token->header.size(), nullptr, 0);
  } else {
    send_payload(g.members[j], token, token->header.size(), data, bytes);
  }
}

void ucx_fabric_impl::fail_slot(group& g, coll_slot& s, status st) {
  if (s.decided) return;
  s.decided = true;
  s.result = std::move(st);
  for (auto& m : s.held) release(m);
  s.held.clear();
  advance(g, s);
}

void ucx_fabric_impl::on_coll_fail(group& g, held_msg& m) {
  const std::uint64_t seq = m.hdr.seq;
  if (find_slot(g, seq) == nullptr && seq < g.posted_end) return;  // finished here
  status st = status_of(m);
  if (st.ok()) st = status(errc::aborted, "a peer failed the call");
  fail_slot(g, slot_for(g, seq), std::move(st));
}

// ---- point to point ----

void ucx_fabric_impl::start_p2p(const std::shared_ptr<op_state>& op) {
  group& g = *op->g;
  const int peer_global = g.members[static_cast<std::size_t>(op->peer)];
  status failure = aborted_pt_;
  if (failure.ok()) failure = peer_failed_[static_cast<std::size_t>(peer_global)];
  if (!failure.ok()) {
    op->decided = true;
    op->outcome = std::move(failure);
    finish(*op, op->outcome);
    return;
  }
  if (op->deadline) deadlines_.push(op);
  if (op->is_send) {
    op->send_id = g.next_send_id++;
    g.sends.push_back(op);
    wire_header h;
    h.type = msg_type::p2p;
    h.send_type = op->sbuf.type;
    h.src = g.me;
    h.root_or_tag = op->tag;
    h.group_id = g.id;
    h.seq = op->send_id;
    h.send_count = op->sbuf.count;
    auto* token = new_token(send_token::kind::op_send, &g, nullptr, op, peer_global);
    write_header(token->header, h);
    ++op->ucx_in_flight;
    if (op->sbuf.bytes() == 0) {
      send_msg(peer_global, token, token->header.size(), nullptr, 0);
    } else {
      send_payload(peer_global, token, token->header.size(), op->sbuf.data, op->sbuf.bytes());
    }
    return;
  }
  auto& waiting = group::queue_of(g.unexpected, op->peer, op->tag);
  if (!waiting.empty()) {
    held_msg m = std::move(waiting.front());
    waiting.erase(waiting.begin());
    match(g, op, std::move(m));
    return;
  }
  group::queue_of(g.posted_recvs, op->peer, op->tag).push_back(op);
}

void ucx_fabric_impl::on_p2p(group& g, held_msg m) {
  auto& posted = group::queue_of(g.posted_recvs, m.hdr.src, m.hdr.root_or_tag);
  if (posted.empty()) {
    group::queue_of(g.unexpected, m.hdr.src, m.hdr.root_or_tag).push_back(std::move(m));
    return;
  }
  std::shared_ptr<op_state> op = std::move(posted.front());
  posted.erase(posted.begin());
  match(g, op, std::move(m));
}

void ucx_fabric_impl::match(group& g, const std::shared_ptr<op_state>& op, held_msg m) {
  op->matched = true;
  op->send_id = m.hdr.seq;
  const int src_global = g.members[static_cast<std::size_t>(m.hdr.src)];
  wire_header ack;
  ack.type = msg_type::p2p_ack;
  ack.group_id = g.id;
  ack.src = g.me;
  ack.seq = m.hdr.seq;
  if (m.hdr.send_count != op->rbuf.count || m.hdr.send_type != op->rbuf.type) {
    status st = invalid_argument(
        "send rank {} (global {}) -> rank {} (global {}) tag {}: sends {} {} but recv expects {} "
        "{}",
        m.hdr.src, src_global, g.me, g.members[static_cast<std::size_t>(g.me)], op->tag,
        m.hdr.send_count, wire_type_name(m.hdr.send_type), op->rbuf.count,
        wire_type_name(op->rbuf.type));
    release(m);
    send_notice(src_global, ack, st);
    op->decided = true;
    op->outcome = std::move(st);
    advance_p2p(g, *op);
    return;
  }
  if (m.pull) {
    start_pull(g, nullptr, op, m, op->rbuf.data);
    return;  // the ack goes out when the data is in (finish_pull)
  }
  if (m.rndv && m.length > 0) {
    auto* token = new_token(send_token::kind::op_recv, &g, nullptr, op, src_global);
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = &ucx_fabric_impl::on_recv_done;
    p.user_data = token;
    ++op->ucx_in_flight;
    ucs_status_ptr_t req = ucp_am_recv_data_nbx(worker_, m.data, op->rbuf.data, m.length, &p);
    m.data = nullptr;
    m.ucx_owned = false;
    if (UCS_PTR_IS_PTR(req)) token->request = req;
    if (req == nullptr) {
      complete(token, UCS_OK);
    } else if (UCS_PTR_IS_ERR(req)) {
      complete(token, UCS_PTR_STATUS(req));
    }
    return;  // the ack goes out when the data is in (handle_events)
  }
  if (m.length > 0) std::memcpy(op->rbuf.data, m.eager_bytes(), m.length);
  release(m);
  send_notice(src_global, ack, ok_status());
  op->decided = true;
  op->outcome = ok_status();
  advance_p2p(g, *op);
}

void ucx_fabric_impl::advance_p2p(group& g, op_state& op) {
  if (!op.decided || op.ucx_in_flight > 0 || op.done.load(std::memory_order_acquire)) return;
  if (op.is_send) {
    const auto it =
        std::find_if(g.sends.begin(), g.sends.end(), [&](const auto& s) { return s.get() == &op; });
    std::shared_ptr<op_state> keep;
    if (it != g.sends.end()) {
      keep = std::move(*it);
      g.sends.erase(it);
    }
    finish(op, op.outcome);
    return;
  }
  finish(op, op.outcome);
}

void ucx_fabric_impl::on_ack(group& g, held_msg& m) {
  const auto it = std::find_if(g.sends.begin(), g.sends.end(),
                               [&](const auto& s) { return s->send_id == m.hdr.seq; });
  if (it == g.sends.end()) return;
  std::shared_ptr<op_state> op = *it;
  if (op->decided) return;
  op->decided = true;
  op->outcome = status_of(m);
  advance_p2p(g, *op);
}

void ucx_fabric_impl::on_cancel(group& g, held_msg& m) {
  auto& waiting = g.unexpected[{m.hdr.src, m.hdr.root_or_tag}];
  const auto it = std::find_if(waiting.begin(), waiting.end(),
                               [&](const held_msg& w) { return w.hdr.seq == m.hdr.seq; });
  if (it == waiting.end()) return;
  release(*it);
  waiting.erase(it);
}

// ---- received messages ----

void ucx_fabric_impl::release(held_msg& m) {
  if (m.pull) {  // never read: its sender may let go of the buffer
    send_pulled(static_cast<int>(m.pull->sender), m.pull->pull_id);
    m.pull.reset();
  }
  if (m.ucx_owned && m.data != nullptr) ucp_am_data_release(worker_, m.data);
  m.data = nullptr;
  m.ucx_owned = false;
  if (m.copied.capacity() > 0) {
    m.copied.clear();
    copy_pool_.push_back(std::move(m.copied));
  }
}

// ---- message headers ----

void ucx_fabric_impl::write_header(std::vector<std::byte>& out, const wire_header& h,
                                   std::span<const std::size_t> send_counts,
                                   std::span<const std::size_t> recv_counts,
                                   std::string_view text) {
  const std::size_t counts = send_counts.size() + recv_counts.size();
  out.resize(sizeof(wire_header) + counts * sizeof(std::uint64_t) + text.size());
  wire_header hh = h;
  hh.n_counts = static_cast<std::uint16_t>(send_counts.size());
  std::memcpy(out.data(), &hh, sizeof(hh));
  std::byte* c = out.data() + sizeof(wire_header);
  for (auto span : {send_counts, recv_counts}) {
    for (std::size_t v : span) {
      const std::uint64_t w = v;
      std::memcpy(c, &w, sizeof(w));
      c += sizeof(w);
    }
  }
  if (!text.empty()) std::memcpy(c, text.data(), text.size());
}

void ucx_fabric_impl::send_notice(int global_peer, wire_header h, const status& st) {
  if (eps_[static_cast<std::size_t>(global_peer)] == nullptr) return;
  h.error_code = static_cast<std::uint8_t>(st.code());
  auto* token = new_token(send_token::kind::notice, nullptr, nullptr, nullptr, global_peer);
  write_header(token->header, h, {}, {}, st.message());
  send_msg(global_peer, token, sizeof(wire_header), nullptr, 0);
}

}  // namespace helix::transport::ucx
