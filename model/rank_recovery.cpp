// Recovery of the per-rank layer program, lost blocks only (ARCHITECTURE.md, recovery): a rank's
// KV outlives its program when the layout changes after a failure (release_kv, then create with
// it), the new programs agree on every sequence's table (restore), members left without a rank
// send the blocks they held to their new owners (donate_kv), and the lost positions are computed
// again by forward() items that rewrite positions already in the table.
//
// Donated blocks travel over the handoff communicator (new ranks, then donors) in chunks of up
// to handoff_chunk_bytes: the donor packs whole blocks (every layer's page) into a staging
// buffer, the owner unpacks them into its fresh slots. One message per (block, layer) would be
// thousands of small messages, each waiting for the transport's progress thread to wake. Both
// sides walk the sequences in the order given, blocks in position order; a donor serves its
// owners in rank order and an owner its donors in donor order, one chunk at a time (by_peer), so
// the pairs match in post order (one tag) and no cycle of waits can form.
#include <algorithm>
#include <cstring>
#include <set>

#include "model/kv_reslice.hpp"
#include "model/rank_program.hpp"

namespace helix::model {
namespace {

constexpr int handoff_tag = 0x4b48;  // "KH"
constexpr std::size_t handoff_chunk_bytes = std::size_t{1} << 20;

// Blocks per chunk: whole blocks (every layer), at least one.
std::size_t blocks_per_chunk(std::size_t block_bytes) {
  return std::max<std::size_t>(1, handoff_chunk_bytes / std::max<std::size_t>(1, block_bytes));
}

// (slot, peer) pairs grouped by peer, peers ascending, each peer's slots in walk order: the order
// in which a donor and an owner both walk their chunks.
template <class Peer>
std::vector<std::pair<Peer, std::vector<std::int32_t>>> by_peer(
    const std::vector<std::pair<std::int32_t, Peer>>& items) {
  std::vector<Peer> peers;
  for (const auto& item : items) peers.push_back(item.second);
  std::sort(peers.begin(), peers.end());
  peers.erase(std::unique(peers.begin(), peers.end()), peers.end());
  std::vector<std::pair<Peer, std::vector<std::int32_t>>> out;
  for (const Peer p : peers) {
    out.emplace_back(p, std::vector<std::int32_t>{});
    for (const auto& [slot, peer] : items) {
      if (peer == p) out.back().second.push_back(slot);
    }
  }
  return out;
}

std::int64_t donor_of(const restored_sequence& r, std::size_t b) {
  return r.donor.empty() ? -1 : r.donor[b];
}

}  // namespace

reslice::held_kv rank_program::held_kv() {
  if (carried_ == nullptr) return {};
  return {carried_store_ ? &carried_->store : &kv_, &carried_->tables, carried_->rank};
}

std::unique_ptr<carried_kv> rank_program::release_kv() {
  if (carried_ != nullptr && carried_store_) {  // released before a re-slice: the old KV itself
    carried_store_ = false;
    kv_ = kv_store{};
    seqs_.clear();
    return std::move(carried_);
  }
  auto out = std::make_unique<carried_kv>();
  out->spec = w_.spec;
  if (carried_ != nullptr) {  // released again before any restore(): the tables still carried
    out->grid = carried_->grid;
    out->rank = carried_->rank;
    out->tables = std::move(carried_->tables);
    carried_.reset();
  } else {
    out->grid = w_.layout;
    out->rank = w_.rank;
    for (auto& [id, s] : seqs_) out->tables.emplace(id, std::move(s.table));
  }
  out->store = std::move(kv_);
  kv_ = kv_store{};
  seqs_.clear();
  return out;
}

// Rewrite items name positions already in their sequence (validated identically on every rank,
// before any collective).
status rank_program::check_rewrites(std::span<const batch_item> items) const {
  for (const batch_item& it : items) {
    if (it.rewrite_from < 0) continue;
    const std::int64_t have = seqs_.at(it.seq).table.num_tokens();
    const auto n = static_cast<std::int64_t>(it.tokens.size());
    if (it.rewrite_from > have - n) {
      return invalid_argument(
          "rank_program: sequence {} rewrites positions [{}, {}) but holds {} positions", it.seq,
          it.rewrite_from, it.rewrite_from + n, have);
    }
  }
  return ok_status();
}

status rank_program::restore(std::span<const restored_sequence> seqs, std::uint64_t next_seq,
                             transport::communicator* handoff, const kv_reslice* reslice) {
  const std::int64_t bt = opt_.block_tokens;
  if (handoff != nullptr && (handoff->size() < w_.layout.num_ranks || handoff->rank() != w_.rank)) {
    return invalid_argument("rank_program: rank {}'s handoff communicator is rank {} of {}",
                            w_.rank, handoff->rank(), handoff->size());
  }
  const std::int64_t kvp = w_.layout.kvp;
  // Identical on every rank: the entries alone decide.
  std::set<std::uint64_t> ids;
  for (const restored_sequence& r : seqs) {
    const std::int64_t blocks = (r.num_tokens + bt - 1) / bt;
    if (r.seq == 0 || r.seq >= next_seq || !ids.insert(r.seq).second || r.num_tokens < 0 ||
        static_cast<std::int64_t>(r.owner_kvp.size()) != blocks ||
        r.kept_kvp.size() != r.owner_kvp.size() || r.synthetic_tokens < 0 ||
        r.synthetic_tokens > r.num_tokens) {
      return invalid_argument(
          "rank_program: restore of sequence {} ({} positions, {} owners, {} kept, {} synthetic, "
          "next id {}) is inconsistent",
          r.seq, r.num_tokens, r.owner_kvp.size(), r.kept_kvp.size(), r.synthetic_tokens, next_seq);
    }
    if (!r.donor.empty() && r.donor.size() != r.owner_kvp.size()) {
      return invalid_argument("rank_program: restore of sequence {}: {} donors for {} blocks",
                              r.seq, r.donor.size(), r.owner_kvp.size());
    }
    for (std::size_t b = 0; b < r.owner_kvp.size(); ++b) {
      const std::int64_t d = donor_of(r, b);
      const std::int64_t donors =
          handoff != nullptr ? handoff->size() - w_.layout.num_ranks : std::int64_t{0};
      // A re-slice names old KVP members; a donation, donors of the handoff communicator.
      const bool donor_ok =
          reslice != nullptr ? d < reslice->before.kvp : (d + 1) * w_.layout.tpa <= donors;
      if (r.owner_kvp[b] < 0 || r.owner_kvp[b] >= kvp || r.kept_kvp[b] < -1 || d < -1 ||
          (d >= 0 && !donor_ok) || (d >= 0 && r.kept_kvp[b] >= 0)) {
        return invalid_argument(
            "rank_program: restore of sequence {}: block {} owner {} kept {} donor {} ({} donors)",
            r.seq, b, r.owner_kvp[b], r.kept_kvp[b], d, donors);
      }
    }
  }
  transport::communicator& agree = handoff != nullptr ? *handoff : *world_;
  std::vector<reslice::piece> pieces;
  if (reslice != nullptr) {
    HELIX_ASSIGN_OR_RETURN(pieces, reslice::plan(w_.spec, w_.layout, *reslice, seqs));
  }
  // Whatever this program held itself goes first (a restore replaces every sequence).
  for (const auto& [id, s] : seqs_) {
    for (const kv_block_ref& b : s.table.blocks()) {
      if (b.rank == w_.rank) HELIX_RETURN_IF_ERROR(kv_.release(b.slot));
    }
  }
  seqs_.clear();
  next_seq_ = next_seq;
  // The member of the old layout this rank was, and which of its carried slots stay.
  // A carried store of another column layout is only a source (re-slice): nothing kept from it.
  const bool carried_here = carried_ != nullptr && !carried_store_;
  const std::int64_t old_kvp =
      carried_here ? carried_->grid.attention_coords(carried_->rank).kvp_idx : -1;
  std::int64_t missing = 0;  // blocks to keep here that this rank did not carry
  std::int64_t fresh = 0;    // lost blocks this rank now owns
  std::set<std::int32_t> kept_slots;
  for (const restored_sequence& r : seqs) {
    const block_table* had = nullptr;
    if (carried_here) {
      auto it = carried_->tables.find(r.seq);
      if (it != carried_->tables.end()) had = &it->second;
    }
    for (std::size_t b = 0; b < r.owner_kvp.size(); ++b) {
      if (r.owner_kvp[b] != kvp_idx_) continue;
      if (r.kept_kvp[b] < 0) {
        ++fresh;
        continue;
      }
      const bool held = r.kept_kvp[b] == old_kvp && had != nullptr && b < had->blocks().size() &&
                        had->blocks()[b].rank == carried_->rank &&
                        had->blocks()[b].first_pos == static_cast<std::int64_t>(b) * bt;
      if (held) {
        kept_slots.insert(had->blocks()[b].slot);
      } else {
        ++missing;
      }
    }
  }
  // Carried slots that do not stay go now, or after a re-slice read them (stale).
  std::vector<std::int32_t> stale;
  if (carried_here) {
    for (const auto& [id, t] : carried_->tables) {
      for (const kv_block_ref& b : t.blocks()) {
        if (b.rank == carried_->rank && kept_slots.count(b.slot) == 0) stale.push_back(b.slot);
      }
    }
  }
  if (reslice == nullptr) {
    for (const std::int32_t slot : stale) HELIX_RETURN_IF_ERROR(kv_.release(slot));
    stale.clear();
  } else {
    const reslice::held_kv held = held_kv();
    missing += reslice::missing(pieces, agree.rank(), carried_ ? &held : nullptr, seqs, bt);
  }
  // One all-reduce: every rank goes on, or every rank fails (and holds nothing).
  float trouble[2] = {fresh > kv_.free_slots() ? 1.0f : 0.0f, missing > 0 ? 1.0f : 0.0f};
  HELIX_RETURN_IF_ERROR(agree.all_reduce(transport::as_send(std::span<const float>(trouble, 2)),
                                         transport::as_recv(std::span<float>(trouble, 2))));
  if (trouble[0] > 0.0f || trouble[1] > 0.0f) {
    for (const std::int32_t slot : kept_slots) HELIX_RETURN_IF_ERROR(kv_.release(slot));
    for (const std::int32_t slot : stale) HELIX_RETURN_IF_ERROR(kv_.release(slot));
    carried_.reset();
    carried_store_ = false;
    if (trouble[1] > 0.0f) {
      return failed_precondition(
          "rank_program: restore: {} rank(s) lack KV blocks they were to keep (rank {}: {})",
          trouble[1], w_.rank, missing);
    }
    return resource_exhausted(
        "rank_program: restore needs KV blocks that {} rank(s) lack (rank {}: {} needed, {} of {} "
        "free)",
        trouble[0], w_.rank, fresh, kv_.free_slots(), kv_.num_slots());
  }
  return restore_tables(seqs, old_kvp, carried_here, handoff, reslice, pieces, stale);
}

// The tables of restore(), once every rank agreed: kept blocks keep their slots, lost blocks this
// rank owns get fresh ones (synthetic positions refilled), other ranks' blocks are slot 0.
status rank_program::restore_tables(std::span<const restored_sequence> seqs, std::int64_t old_kvp,
                                    bool carried_here, transport::communicator* handoff,
                                    const kv_reslice* reslice,
                                    const std::vector<reslice::piece>& pieces,
                                    const std::vector<std::int32_t>& stale) {
  const std::int64_t bt = opt_.block_tokens;
  std::vector<std::pair<std::int32_t, std::int64_t>> incoming;  // (slot, donor) in walk order
  struct refill_set {
    std::uint64_t seed = 0;
    std::vector<std::pair<std::int32_t, std::int64_t>> pages;  // (slot, block idx)
  };
  std::vector<refill_set> refills;
  std::vector<std::vector<std::int32_t>> resliced;  // [sequence][block]: fresh slot, or -1
  for (const restored_sequence& r : seqs) {
    const block_table* had = nullptr;
    if (carried_here) {
      auto it = carried_->tables.find(r.seq);
      if (it != carried_->tables.end()) had = &it->second;
    }
    block_table t(bt, w_.rank);
    refills.push_back({r.synthetic_seed, {}});
    resliced.emplace_back(r.owner_kvp.size(), -1);
    for (std::size_t b = 0; b < r.owner_kvp.size(); ++b) {
      const auto owner =
          static_cast<std::int32_t>(w_.layout.attention_rank(tpa_idx_, r.owner_kvp[b]));
      std::int32_t slot = 0;
      if (owner == w_.rank) {
        if (r.kept_kvp[b] >= 0 && r.kept_kvp[b] == old_kvp && had != nullptr) {
          slot = had->blocks()[b].slot;
        } else {
          HELIX_ASSIGN_OR_RETURN(slot, kv_.allocate());
          if (donor_of(r, b) >= 0 && reslice != nullptr) {
            resliced.back()[b] = slot;
          } else if (donor_of(r, b) >= 0) {  // the donor's member, this column's holder of it
            incoming.emplace_back(slot, donor_of(r, b) * w_.layout.tpa + tpa_idx_);
          } else if (static_cast<std::int64_t>(b) * bt < r.synthetic_tokens) {
            refills.back().pages.emplace_back(slot, static_cast<std::int64_t>(b));
          }
        }
      }
      HELIX_RETURN_IF_ERROR(t.open_block(owner, slot));
      HELIX_RETURN_IF_ERROR(
          t.append_tokens(std::min(bt, r.num_tokens - static_cast<std::int64_t>(b) * bt)));
    }
    seqs_.emplace(r.seq, sequence{std::move(t)});
  }
  if (reslice != nullptr) {
    transport::communicator& comm = handoff != nullptr ? *handoff : *world_;
    for (const refill_set& r : refills) fill_synthetic(r.pages, r.seed);
    const reslice::held_kv held = held_kv();
    const status st = reslice::exchange(w_.spec, w_.layout, *reslice, pieces, seqs, comm,
                                        carried_ ? &held : nullptr, &kv_, tpa_idx_, resliced);
    // Read: the old layout's store goes, or its slots that did not stay (even after a failure:
    // the full replay that follows frees only what the tables name).
    for (const std::int32_t slot : stale) HELIX_RETURN_IF_ERROR(kv_.release(slot));
    carried_.reset();
    carried_store_ = false;
    return st;
  }
  carried_.reset();
  carried_store_ = false;
  // Refilling first and receiving after measured faster than overlapping them on a host whose
  // cores the ranks, the donors and their progress threads share. Then the donated blocks, donor
  // by donor, one chunk at a time. Measured with `helix bench recovery` (4 processes on 2 cores,
  // UCX shared memory): 1 MiB chunks one at a time restored in 130 ms where 16 MiB chunks took
  // 245 ms and 64 MiB of 4 MiB receives in flight 300 ms. A failure leaves the slots allocated;
  // the engine then replays in full, whose restore frees them.
  for (const refill_set& r : refills) fill_synthetic(r.pages, r.seed);
  const auto layers = static_cast<std::size_t>(kv_.num_layers());
  const std::size_t page_bytes = kv_.layout().page_bytes();
  const std::size_t per_chunk = blocks_per_chunk(layers * page_bytes);
  std::vector<std::byte> staging(std::min(per_chunk, incoming.size()) * layers * page_bytes);
  for (const auto& [donor, slots] : by_peer(incoming)) {
    for (std::size_t first = 0; first < slots.size(); first += per_chunk) {
      const std::size_t n = std::min(per_chunk, slots.size() - first);
      const status st = handoff->recv(
          transport::recv_buf{staging.data(), n * layers * page_bytes, transport::wire_type::bytes},
          static_cast<int>(w_.layout.num_ranks + donor), handoff_tag);
      if (!st.ok()) {
        return st.with_context(fmt::format("rank {} KV handoff from donor {}", w_.rank, donor));
      }
      for (std::size_t b = 0; b < n; ++b) {
        for (std::size_t l = 0; l < layers; ++l) {
          std::memcpy(kv_.page(static_cast<std::int64_t>(l), slots[first + b]),
                      staging.data() + (b * layers + l) * page_bytes, page_bytes);
        }
      }
    }
  }
  return ok_status();
}

status donate_kv(carried_kv& kv, transport::communicator& handoff, const helix::layout& after,
                 std::int64_t donor_idx, std::span<const restored_sequence> seqs,
                 const kv_reslice* reslice) {
  if (reslice != nullptr) {  // the same plan, agreement and exchange as restore(), sending only
    std::vector<reslice::piece> pieces;
    std::int64_t missing = 1;  // nothing carried: the agreement refuses
    if (kv.store.num_layers() > 0) {
      HELIX_ASSIGN_OR_RETURN(pieces, reslice::plan(kv.spec, after, *reslice, seqs));
      const reslice::held_kv held{&kv.store, &kv.tables, kv.rank};
      missing =
          reslice::missing(pieces, handoff.rank(), &held, seqs, kv.store.layout().block_tokens);
    }
    float trouble[2] = {0.0f, missing > 0 ? 1.0f : 0.0f};
    HELIX_RETURN_IF_ERROR(handoff.all_reduce(transport::as_send(std::span<const float>(trouble, 2)),
                                             transport::as_recv(std::span<float>(trouble, 2))));
    if (trouble[0] > 0.0f || trouble[1] > 0.0f) {
      return failed_precondition(
          "donor {}: the re-slice was refused ({} of its pieces missing here)", donor_idx, missing);
    }
    const reslice::held_kv held{&kv.store, &kv.tables, kv.rank};
    return reslice::exchange(kv.spec, after, *reslice, pieces, seqs, handoff, &held, nullptr, 0,
                             {});
  }
  // The same agreement as restore(): slots are the owners' business; a block this donor was to
  // send but does not hold fails the restore everywhere.
  const std::int64_t bt = kv.store.layout().block_tokens;
  const std::int64_t column = kv.grid.attention_coords(kv.rank).tpa_idx;
  std::int64_t missing = 0;
  std::vector<std::pair<std::int32_t, int>> outgoing;  // (slot, new owner's rank) in walk order
  for (const restored_sequence& r : seqs) {
    auto it = kv.tables.find(r.seq);
    for (std::size_t b = 0; b < r.owner_kvp.size(); ++b) {
      if (donor_of(r, b) < 0 || donor_of(r, b) * after.tpa + column != donor_idx) continue;
      const bool held = it != kv.tables.end() && b < it->second.blocks().size() &&
                        it->second.blocks()[b].rank == kv.rank &&
                        it->second.blocks()[b].first_pos == static_cast<std::int64_t>(b) * bt;
      if (!held) {
        ++missing;
        continue;
      }
      outgoing.emplace_back(it->second.blocks()[b].slot,
                            static_cast<int>(after.attention_rank(column, r.owner_kvp[b])));
    }
  }
  // Donor d's holder in column c is donor d * TPA + c: one in another column would leave its
  // owners waiting for pages it never sends, so it refuses (everyone then refuses together).
  const bool misplaced = donor_idx % after.tpa != column;
  float trouble[2] = {0.0f, missing > 0 || misplaced ? 1.0f : 0.0f};
  HELIX_RETURN_IF_ERROR(handoff.all_reduce(transport::as_send(std::span<const float>(trouble, 2)),
                                           transport::as_recv(std::span<float>(trouble, 2))));
  if (trouble[0] > 0.0f || trouble[1] > 0.0f) {
    return failed_precondition(
        "donor {}: the restore was refused ({} of its blocks missing here{})", donor_idx, missing,
        misplaced ? fmt::format("; it holds column {}, not {}", column, donor_idx % after.tpa)
                  : "");
  }
  const auto layers = static_cast<std::size_t>(kv.store.num_layers());
  const std::size_t page_bytes = kv.store.layout().page_bytes();
  const std::size_t per_chunk = blocks_per_chunk(layers * page_bytes);
  std::vector<std::byte> staging(std::min(per_chunk, outgoing.size()) * layers * page_bytes);
  for (const auto& [to, slots] : by_peer(outgoing)) {
    for (std::size_t first = 0; first < slots.size(); first += per_chunk) {
      const std::size_t n = std::min(per_chunk, slots.size() - first);
      for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t l = 0; l < layers; ++l) {
          std::memcpy(staging.data() + (i * layers + l) * page_bytes,
                      kv.store.page(static_cast<std::int64_t>(l), slots[first + i]), page_bytes);
        }
      }
      const status st = handoff.send(
          transport::send_buf{staging.data(), n * layers * page_bytes, transport::wire_type::bytes},
          to, handoff_tag);
      if (!st.ok()) {
        return st.with_context(fmt::format("donor {} KV handoff to rank {}", donor_idx, to));
      }
    }
  }
  return ok_status();
}

}  // namespace helix::model
