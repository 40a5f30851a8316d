// UCX backend: the pools and sized-once queues that keep a warm communicator's calls free of
// allocations (see the last paragraph of ucx_fabric_impl.hpp's header comment). Progress thread
// only, except group::prepare (before the group is shared).
#include <algorithm>
#include <limits>

#include "transport/ucx/ucx_fabric_impl.hpp"

namespace helix::transport::ucx {

coll_slot::coll_slot(std::size_t group_size)
    : posts(group_size), counts(group_size), swap_from(group_size), swap_to(group_size) {
  for (auto& c : got) c.resize(group_size);
  held.reserve(2 * group_size);  // a message per peer and phase
  held_taken.reserve(2 * group_size);
}

void group::prepare(std::size_t num_slots) {
  const std::size_t n = members.size();
  slots.reserve(num_slots);
  free_slots.reserve(num_slots);
  slot_store.reserve(num_slots);
  scratch_pool.reserve(num_slots);
  sends.reserve(num_slots);
  for (std::size_t i = 0; i < num_slots; ++i) {
    slot_store.push_back(std::make_unique<coll_slot>(n));
    free_slots.push_back(slot_store.back().get());
  }
}

void ucx_fabric_impl::size_pools() {
  const auto world = static_cast<std::size_t>(opts_.world_size);
  // What one round of the progress loop may queue (messages and completions of a few calls with
  // every peer), and the transfers a few calls keep in flight with every peer; bounded, so that
  // a large world does not reserve much. Beyond these, the pools grow when needed.
  const std::size_t burst = std::clamp<std::size_t>(16 * world, 256, 4096);
  for (auto* v : {&incoming_, &dispatching_}) v->reserve(burst);
  for (auto* v : {&events_, &handling_}) v->reserve(burst);
  // A header and a descriptor (all_to_all_v's counts grow a token's buffer on first use).
  token_header_bytes_ = sizeof(wire_header) + std::max(sizeof(pull_desc), sizeof(swap_desc));
  tokens_.reserve(burst);
  free_tokens_.reserve(burst);
  for (std::size_t i = 0; i < burst; ++i) {
    tokens_.push_back(std::make_unique<send_token>());
    tokens_.back()->fabric = this;
    tokens_.back()->header.reserve(token_header_bytes_);
    free_tokens_.push_back(tokens_.back().get());
  }
  pulls_.reserve(burst);
  pulls_out_.reserve(burst);
  swaps_.reserve(burst);
  copy_pool_.reserve(burst);
  deadlines_.reserve(burst);
  starting_.reserve(burst);
  std::lock_guard lk(mu_);
  posted_.reserve(burst);
}

void coll_slot::open(std::uint64_t call, std::size_t group_size) {
  seq = call;
  op.reset();
  posts.resize(group_size);
  for (coll_post& p : posts) p = coll_post{};
  counts.resize(group_size);
  for (auto& c : got) c.assign(group_size, 0);
  got_count[0] = got_count[1] = 0;
  held.clear();
  held_taken.clear();
  swap_from.assign(group_size, std::nullopt);
  swap_to.assign(group_size, 0);
  phase = 0;
  recvs_in_flight = 0;
  sends_in_flight = 0;
  decided = false;
  result = ok_status();
}

coll_slot* ucx_fabric_impl::find_slot(group& g, std::uint64_t seq) {
  for (coll_slot* s : g.slots) {
    if (s->seq == seq) return s;
  }
  return nullptr;
}

coll_slot& ucx_fabric_impl::slot_for(group& g, std::uint64_t seq) {
  if (coll_slot* open = find_slot(g, seq)) return *open;
  coll_slot* s = nullptr;
  if (g.free_slots.empty()) {
    g.slot_store.push_back(std::make_unique<coll_slot>(g.members.size()));
    s = g.slot_store.back().get();
  } else {
    s = g.free_slots.back();
    g.free_slots.pop_back();
  }
  s->open(seq, g.members.size());
  const auto at = std::upper_bound(g.slots.begin(), g.slots.end(), seq,
                                   [](std::uint64_t q, const coll_slot* o) { return q < o->seq; });
  g.slots.insert(at, s);
  return *s;
}

void ucx_fabric_impl::close_slot(group& g, coll_slot& s) {
  for (auto& m : s.held) release(m);
  s.held.clear();
  s.op.reset();
  if (s.scratch.capacity() > 0) g.scratch_pool.push_back(std::move(s.scratch));
  std::erase(g.slots, &s);
  g.free_slots.push_back(&s);
}

void ucx_fabric_impl::take_scratch(group& g, coll_slot& s, std::size_t bytes) {
  if (s.scratch.capacity() == 0 && !g.scratch_pool.empty()) {
    auto& pool = g.scratch_pool;
    const auto fits = [&](std::size_t i) { return pool[i].capacity() >= bytes; };
    std::size_t best = 0;
    for (std::size_t i = 1; i < pool.size(); ++i) {
      const bool better = fits(i) ? (!fits(best) || pool[i].capacity() < pool[best].capacity())
                                  : (!fits(best) && pool[i].capacity() > pool[best].capacity());
      if (better) best = i;
    }
    s.scratch = std::move(pool[best]);
    if (best + 1 != pool.size()) pool[best] = std::move(pool.back());
    pool.pop_back();
  }
  // Never shrunk: a buffer's bytes beyond `bytes` stay as they are (no zeroing on each use).
  if (s.scratch.size() < bytes) s.scratch.resize(std::max(bytes, s.scratch.capacity()));
}

std::vector<std::byte> ucx_fabric_impl::take_copy_buffer() {
  if (copy_pool_.empty()) return {};
  std::vector<std::byte> b = std::move(copy_pool_.back());
  copy_pool_.pop_back();
  return b;
}

send_token* ucx_fabric_impl::new_token(send_token::kind what, group* g, coll_slot* slot,
                                       std::shared_ptr<op_state> op, int peer) {
  send_token* t = nullptr;
  if (free_tokens_.empty()) {
    tokens_.push_back(std::make_unique<send_token>());
    t = tokens_.back().get();
    t->fabric = this;
    t->header.reserve(token_header_bytes_);
  } else {
    t = free_tokens_.back();
    free_tokens_.pop_back();
  }
  t->what = what;
  t->g = g;
  t->slot = slot;
  t->op = std::move(op);
  t->header.clear();
  t->peer = peer;
  t->abandoned = false;
  t->request = nullptr;
  t->pull_id = 0;
  t->stuck_since.reset();
  t->in_flight = true;
  return t;
}

void ucx_fabric_impl::recycle_token(send_token* t) {
  t->in_flight = false;
  ++t->generation;  // a completion still queued for its last use is ignored
  t->op.reset();
  t->g = nullptr;
  t->slot = nullptr;
  free_tokens_.push_back(t);
}

void deadline_heap::push(std::shared_ptr<op_state> op) {
  const clock::time_point at = *op->deadline;
  heap_.push_back({at, std::move(op)});
  heap_.back().op->deadline_idx = heap_.size() - 1;
  sift_up(heap_.size() - 1);
}

std::shared_ptr<op_state> deadline_heap::pop() {
  return remove_at(0);
}

std::shared_ptr<op_state> deadline_heap::remove(op_state& op) {
  if (op.deadline_idx >= heap_.size() || heap_[op.deadline_idx].op.get() != &op) return nullptr;
  return remove_at(op.deadline_idx);
}

std::shared_ptr<op_state> deadline_heap::remove_at(std::size_t i) {
  const std::size_t last = heap_.size() - 1;
  if (i != last) swap_entries(i, last);
  std::shared_ptr<op_state> op = std::move(heap_.back().op);
  heap_.pop_back();
  op->deadline_idx = std::numeric_limits<std::size_t>::max();
  if (i < heap_.size()) {
    sift_down(i);
    sift_up(i);
  }
  return op;
}

void deadline_heap::swap_entries(std::size_t a, std::size_t b) {
  std::swap(heap_[a], heap_[b]);
  heap_[a].op->deadline_idx = a;
  heap_[b].op->deadline_idx = b;
}

void deadline_heap::sift_up(std::size_t i) {
  while (i > 0) {
    const std::size_t parent = (i - 1) / 2;
    if (!(heap_[i].at < heap_[parent].at)) return;
    swap_entries(i, parent);
    i = parent;
  }
}

void deadline_heap::sift_down(std::size_t i) {
  for (;;) {
    std::size_t least = i;
    for (const std::size_t c : {2 * i + 1, 2 * i + 2}) {
      if (c < heap_.size() && heap_[c].at < heap_[least].at) least = c;
    }
    if (least == i) return;
    swap_entries(i, least);
    i = least;
  }
}

}  // namespace helix::transport::ucx
