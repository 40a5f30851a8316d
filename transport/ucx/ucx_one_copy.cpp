// UCX backend: one copy between processes on one machine (see the protocol paragraph of
// ucx_fabric_impl.hpp). Runs on the progress thread.
//
// Why: under error mode PEER, UCX 1.13 selects no zero-copy lane between processes (its cma
// transport has no memory invalidation, which PEER requires of a rendezvous lane), so a large
// message goes through its shared-memory FIFO in 8 KiB fragments, copied twice. Here the receiver
// reads the sender's buffer itself with process_vm_readv: one copy, done by the receiver's
// progress thread a chunk at a time between rounds of its loop, so that UCX messages and other
// calls still flow meanwhile. The copy never waits for another process, so ranks that share few
// cores cannot deadlock on it.
//
// What it buys (2 ranks, 2 cores, a shared VM; `helix bench transport --backends
// ucx-shm,ucx-shm-no-one-copy,memcpy`): all_to_all of 16 MiB 9.9-11.8 GB/s against 7.3-9.1 with
// UCX's two copies, 256 MiB 7.1-9.2 against 6.7-8.1; on a busy machine UCX's fragment pipeline
// often stalls (0.13-0.5 GB/s at 1-16 MiB per peer) where one copy does not; from 16 KiB per
// peer one copy is also the lower latency (one message and a read, against RTS, RTR and data).
// The kernel's copy runs at about 60% of memcpy here (page pinning per 4 KiB), and every rank
// also copies its own slice, so all_to_all stays near 0.3 of memcpy on 2 threads; no copying
// design gets above 0.5 of it at 2 ranks.
//
// Failures: the sender's call holds its buffer (a pull token) until the receiver answers
// `pulled`; a dead receiver is a dead peer like any other (fail_peer abandons the token). A
// sender that is gone makes process_vm_readv fail with ESRCH: a peer failure. Any other read
// error (the sender's buffer no longer mapped, no permission) fails the call on every rank: the
// receiver tells the group, as a rank that timed out does.
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "core/log.hpp"
#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport::ucx {
namespace {

// One process_vm_readv call, and what a round of the progress loop reads at most: a few hundred
// microseconds of copying before UCX and the other calls get their turn again.
constexpr std::size_t pull_chunk_bytes = std::size_t{1} << 20;
constexpr std::size_t pull_round_bytes = std::size_t{4} << 20;

}  // namespace

status ucx_fabric_impl::enable_one_copy(int peer, int pid, std::uint64_t probe_address,
                                        std::uint64_t probe_value) {
  std::uint64_t got = 0;
  iovec local{&got, sizeof(got)};
  iovec remote{reinterpret_cast<void*>(static_cast<std::uintptr_t>(probe_address)), sizeof(got)};
  const ssize_t n = ::process_vm_readv(pid, &local, 1, &remote, 1, 0);
  if (n < 0) return make_error(errc::unavailable, "process_vm_readv: {}", std::strerror(errno));
  if (n != static_cast<ssize_t>(sizeof(got)) || got != probe_value) {
    return make_error(errc::unavailable, "process_vm_readv read a wrong probe value");
  }
  same_host_pid_[static_cast<std::size_t>(peer)] = pid;
  can_pull_from_[static_cast<std::size_t>(peer)] = 1;
  return ok_status();
}

void ucx_fabric_impl::announce_one_copy(const std::string& refused) {
  std::string from;
  for (int r = 0; r < opts_.world_size; ++r) {
    if (can_pull_from_[static_cast<std::size_t>(r)] == 0) continue;
    from += fmt::format("{}{}", from.empty() ? "" : ",", r);
    wire_header h;
    h.type = msg_type::pull_ready;
    h.src = opts_.rank;
    send_notice(r, h, ok_status());
  }
  module_logger("transport")
      ->info("ucx fabric rank {}: one copy (process_vm_readv) from ranks [{}]{}{}", opts_.rank,
             from, refused.empty() ? "" : "; UCX only from", refused);
}

bool ucx_fabric_impl::read_pull_desc(held_msg& m, const void* data) const {
  if (m.rndv || m.length != sizeof(pull_desc)) return false;
  pull_desc d;
  std::memcpy(&d, data, sizeof(d));
  if (d.sender < 0 || d.sender >= opts_.world_size) return false;
  m.length = d.bytes;
  m.pull = d;
  return true;
}

void ucx_fabric_impl::send_payload(int global_peer, send_token* token, std::size_t header_bytes,
                                   const void* data, std::size_t bytes) {
  const auto up = static_cast<std::size_t>(global_peer);
  if (pull_ready_[up] == 0 || bytes < opts_.one_copy_min_bytes) {
    send_msg(global_peer, token, header_bytes, data, bytes);
    return;
  }
  // The descriptor goes as the token's own payload (after its header); a second token, counted in
  // the same call, stands for the peer's read until its `pulled` comes back.
  send_token* pull = new_token(token->what, token->g, token->slot, token->op, global_peer);
  pull->pull_id = next_pull_id_++;
  pulls_out_.push_back(pull);
  if (token->slot != nullptr) {
    ++token->slot->sends_in_flight;
  } else {
    ++token->op->ucx_in_flight;
  }
  wire_header h;
  std::memcpy(&h, token->header.data(), sizeof(h));
  h.flags |= wire_flag_pull;
  std::memcpy(token->header.data(), &h, sizeof(h));
  pull_desc d;
  d.address = reinterpret_cast<std::uintptr_t>(data);
  d.bytes = bytes;
  d.pull_id = pull->pull_id;
  d.sender = opts_.rank;
  token->header.resize(header_bytes + sizeof(d));
  std::memcpy(token->header.data() + header_bytes, &d, sizeof(d));
  send_msg(global_peer, token, header_bytes, nullptr, 0);
}

void ucx_fabric_impl::start_pull(group& g, coll_slot* slot, std::shared_ptr<op_state> op,
                                 held_msg& m, void* dst) {
  pull_job job;
  job.g = &g;
  job.slot = slot;
  job.desc = *m.pull;
  job.dst = static_cast<std::byte*>(dst);
  m.pull.reset();  // answered when the job ends
  release(m);
  if (slot != nullptr) {
    ++slot->recvs_in_flight;
  } else {
    ++op->ucx_in_flight;
    job.op = std::move(op);
  }
  pulls_.push_back(std::move(job));
}

bool ucx_fabric_impl::run_pulls() {
  std::size_t budget = pull_round_bytes;
  while (!pulls_.empty() && budget > 0) {
    pull_job& j = pulls_.front();
    const auto sender = static_cast<int>(j.desc.sender);
    const auto us = static_cast<std::size_t>(sender);
    // A call that failed meanwhile (a peer, a deadline, abort) needs its data no more.
    status drop = aborted_pt_;
    if (drop.ok()) drop = peer_failed_[us];
    if (drop.ok() && j.slot != nullptr && j.slot->decided) drop = j.slot->result;
    if (!drop.ok()) {
      pull_job job = std::move(j);
      pulls_.erase(pulls_.begin());
      finish_pull(std::move(job), drop, /*tell_group=*/false);
      continue;
    }
    const std::size_t n = std::min({pull_chunk_bytes, budget, j.desc.bytes - j.done});
    iovec local{j.dst + j.done, n};
    iovec remote{reinterpret_cast<void*>(static_cast<std::uintptr_t>(j.desc.address + j.done)), n};
    const int pid = same_host_pid_[us];
    const ssize_t got = pid > 0 ? ::process_vm_readv(pid, &local, 1, &remote, 1, 0) : -1;
    const int err = got < 0 ? (pid > 0 ? errno : EPERM) : (got == 0 ? EFAULT : 0);
    if (err == 0) {
      j.done += static_cast<std::size_t>(got);
      budget -= std::min(budget, static_cast<std::size_t>(got));
      if (j.done == j.desc.bytes) {
        pull_job job = std::move(j);
        pulls_.erase(pulls_.begin());
        finish_pull(std::move(job), ok_status(), false);
      }
      continue;
    }
    pull_job job = std::move(j);
    pulls_.erase(pulls_.begin());
    if (err == ESRCH) {  // a peer failure: every call that needs it fails, this one included
      fail_peer(sender, make_error(errc::unavailable, "peer rank {} (pid {}) exited", sender, pid));
      finish_pull(std::move(job), peer_failed_[us], false);
      continue;
    }
    finish_pull(std::move(job),
                make_error(errc::unavailable,
                           "rank {} reading {} bytes at offset {} from peer rank {} (pid {}): {}",
                           opts_.rank, job.desc.bytes, job.done, sender, pid, std::strerror(err)),
                /*tell_group=*/true);
  }
  return !pulls_.empty();
}

void ucx_fabric_impl::finish_pull(pull_job job, const status& st, bool tell_group) {
  const int sender = static_cast<int>(job.desc.sender);
  send_pulled(sender, job.desc.pull_id);
  group& g = *job.g;
  if (job.slot != nullptr) {
    coll_slot& s = *job.slot;
    --s.recvs_in_flight;
    if (st.ok() || s.decided) {
      advance(g, s);
      return;
    }
    if (tell_group) {  // every rank fails the call, as when a rank times out
      fail_slot_everywhere(g, s, st);
    } else {
      fail_slot(g, s, st);
    }
    return;
  }
  op_state& op = *job.op;
  --op.ucx_in_flight;
  if (!op.decided) {
    op.decided = true;
    op.outcome = st;
  }
  wire_header ack;  // the sender's call ends with the receiver's outcome
  ack.type = msg_type::p2p_ack;
  ack.group_id = g.id;
  ack.src = g.me;
  ack.seq = op.send_id;
  send_notice(sender, ack, op.outcome);
  advance_p2p(g, op);
}

void ucx_fabric_impl::send_pulled(int global_peer, std::uint64_t pull_id) {
  if (global_peer < 0 || global_peer >= opts_.world_size) return;
  wire_header h;
  h.type = msg_type::pulled;
  h.src = opts_.rank;
  h.seq = pull_id;
  send_notice(global_peer, h, ok_status());
}

void ucx_fabric_impl::on_pulled(const held_msg& m) {
  const auto it = std::find_if(pulls_out_.begin(), pulls_out_.end(),
                               [&](const send_token* t) { return t->pull_id == m.hdr.seq; });
  if (it == pulls_out_.end()) return;  // its call gave up on it already
  send_token* t = *it;
  pulls_out_.erase(it);
  complete(t, UCS_OK);
}

}  // namespace helix::transport::ucx
