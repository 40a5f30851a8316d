// KV block migration between the KVP members of each column (rebalancing, issue 4 item 2): the
// data-plane half of planner/rebalance.hpp. See rank_program::migrate_blocks in
// model/rank_program.hpp for the contract.
//
// Every rank walks the same moves against the same table view, so validation and the decision
// whether to communicate at all are identical everywhere; the only per-rank fact, free KV slots,
// is agreed with agree_on_slots() before any table or slot changes. Inside each column the member
// holding a block sends its page of every layer to the destination member over the KVP-group
// communicator (group rank == kvp_idx), one message per (block, layer), straight from and into the
// paged store (no staging copy). All messages share one tag: between a pair of members they match
// in post order, and both sides post them in move order, then layer order. Every rank posts all of
// its receives, then all of its sends, without blocking, and then waits for all of them, so no
// order of moves can deadlock. Only then do the tables change (on every rank of the column: the
// destination records its new slot, other ranks slot 0) and the sources free their slots.
//
// A transport failure is returned as is; the failing rank frees the slots it had reserved and
// keeps its tables and source pages, but its peers may have completed: the layout must be
// rebuilt, as after a failed forward().
#include <algorithm>
#include <utility>
#include <vector>

#include "model/rank_program.hpp"

namespace helix::model {
namespace {

constexpr int migration_tag = 0x4b56;  // "KV"

// One validated move that changes something.
struct resolved_move {
  block_table* table = nullptr;
  std::size_t block_idx = 0;
  std::int64_t from_kvp = 0;
  std::int64_t to_kvp = 0;
  std::int32_t from_slot = 0;  // meaningful on the source only
  std::int32_t to_slot = 0;    // meaningful on the destination only (allocated below)
};

}  // namespace

status rank_program::migrate_blocks(std::span<const block_move> moves) {
  const std::int64_t kvp = w_.layout.kvp;
  // Validation: a pure function of the moves and the table view every rank shares.
  std::vector<std::pair<std::uint64_t, std::int64_t>> seen;
  seen.reserve(moves.size());
  std::vector<resolved_move> todo;
  for (std::size_t i = 0; i < moves.size(); ++i) {
    const block_move& m = moves[i];
    auto it = seqs_.find(m.seq);
    if (it == seqs_.end()) {
      return invalid_argument("rank_program: rank {} migration move {} names unknown sequence {}",
                              w_.rank, i, m.seq);
    }
    block_table& t = it->second.table;
    const auto num_blocks = static_cast<std::int64_t>(t.blocks().size());
    if (m.block_idx < 0 || m.block_idx >= num_blocks) {
      return invalid_argument(
          "rank_program: rank {} migration move {}: block {} of sequence {} outside [0, {})",
          w_.rank, i, m.block_idx, m.seq, num_blocks);
    }
    if (m.to_kvp < 0 || m.to_kvp >= kvp) {
      return invalid_argument("rank_program: rank {} migration move {}: to_kvp {} outside [0, {})",
                              w_.rank, i, m.to_kvp, kvp);
    }
    seen.emplace_back(m.seq, m.block_idx);
    const kv_block_ref& b = t.blocks()[static_cast<std::size_t>(m.block_idx)];
    const std::int64_t from = w_.layout.attention_coords(b.rank).kvp_idx;
    if (from == m.to_kvp) continue;  // already there
    todo.push_back({&t, static_cast<std::size_t>(m.block_idx), from, m.to_kvp, b.slot, 0});
  }
  std::sort(seen.begin(), seen.end());
  const auto dup = std::adjacent_find(seen.begin(), seen.end());
  if (dup != seen.end()) {
    return invalid_argument("rank_program: rank {} migration moves block {} of sequence {} twice",
                            w_.rank, dup->second, dup->first);
  }
  if (todo.empty()) return ok_status();

  const auto incoming = std::count_if(todo.begin(), todo.end(),
                                      [&](const resolved_move& m) { return m.to_kvp == kvp_idx_; });
  HELIX_RETURN_IF_ERROR(agree_on_slots(incoming, "migration"));
  for (resolved_move& m : todo) {
    if (m.to_kvp != kvp_idx_) continue;
    expected<std::int32_t> slot = kv_.allocate();
    // Every rank has just agreed that it has `incoming` free slots.
    HELIX_CHECK(slot.has_value(), "rank {}: {}", w_.rank, slot.error().to_string());
    m.to_slot = *slot;
  }

  const std::int64_t layers = kv_.num_layers();
  const std::size_t page_bytes = kv_.layout().page_bytes();
  std::vector<transport::request> pending;
  pending.reserve(todo.size() * static_cast<std::size_t>(layers));
  for (const resolved_move& m : todo) {
    if (m.to_kvp != kvp_idx_) continue;
    for (std::int64_t l = 0; l < layers; ++l) {
      pending.push_back(kvp_->irecv(
          transport::recv_buf{kv_.page(l, m.to_slot), page_bytes, transport::wire_type::bytes},
          static_cast<int>(m.from_kvp), migration_tag));
    }
  }
  for (const resolved_move& m : todo) {
    if (m.from_kvp != kvp_idx_) continue;
    for (std::int64_t l = 0; l < layers; ++l) {
      pending.push_back(kvp_->isend(
          transport::send_buf{kv_.page(l, m.from_slot), page_bytes, transport::wire_type::bytes},
          static_cast<int>(m.to_kvp), migration_tag));
    }
  }
  status failed = ok_status();
  for (transport::request& r : pending) {
    status st = r.wait();
    if (failed.ok() && !st.ok()) failed = std::move(st);
  }
  if (!failed.ok()) {
    for (const resolved_move& m : todo) {
      if (m.to_kvp == kvp_idx_) HELIX_RETURN_IF_ERROR(kv_.release(m.to_slot));
    }
    return failed.with_context(fmt::format("rank {} KV migration", w_.rank));
  }

  for (const resolved_move& m : todo) {
    const auto to_rank = static_cast<std::int32_t>(w_.layout.attention_rank(tpa_idx_, m.to_kvp));
    HELIX_RETURN_IF_ERROR(
        m.table->relocate(m.block_idx, to_rank, m.to_kvp == kvp_idx_ ? m.to_slot : 0));
    if (m.from_kvp == kvp_idx_) HELIX_RETURN_IF_ERROR(kv_.release(m.from_slot));
  }
  return ok_status();
}

}  // namespace helix::model
