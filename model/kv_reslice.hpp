// KV re-sliced by head when a planned change alters the TPA size (the tp family always does; a
// helix or medha layout when no layout of the new member count keeps it). A block's page on a
// rank holds the KV heads of that rank's column; under the new layout the same block's page on
// the new column c' needs heads column_kv_heads(c') of the new layout, which the old columns
// hold in other groupings (split when TPA grows, joined when it shrinks, copied when the tp
// family duplicates heads over more ranks than KV heads). So every block moves as head pieces:
// for each new holder, the runs of heads that one old holder sends (the first old column that
// holds a head and is still held by a live member).
//
// Every member of the restore's communicator (survivors, then donors) derives the same list of
// pieces from the restore message, so no plan travels: senders and receivers walk it in the
// same order. Pieces between two members travel in chunks of whole pieces, up to 1 MiB, in
// pairwise rounds (round d: send to member + d, receive from member - d, each receive posted
// before the matching send), so no cycle of waits forms whatever the pattern; a member's pieces
// for itself are copied.
//
// rank_recovery.cpp runs it; the engine plans the same pieces to count the bytes they move.
// A pure plan plus one collective exchange.
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "core/layout.hpp"
#include "core/model_spec.hpp"
#include "model/rank_program.hpp"

namespace helix::model::reslice {

/// One run of KV heads of one block, from one old holder to one new holder.
struct piece {
  std::size_t seq_idx = 0;      // index into the restore's sequences
  std::int64_t block = 0;       // block index (position order)
  std::int64_t old_rank = 0;    // the rank of `before` whose page holds the heads
  int src = 0;                  // its member in the communicator
  int dst = 0;                  // the new holder's member (its rank in the new layout)
  std::int64_t first_head = 0;  // global KV head
  std::int64_t heads = 0;
};

/// What a member holds of the old layout: the store its pages are in (its own carried store, or
/// its program's store when it took the carried one over) and the tables they were written under.
struct held_kv {
  kv_store* store = nullptr;
  const std::unordered_map<std::uint64_t, block_table>* tables = nullptr;
  std::int64_t rank = -1;  // its rank in the old layout
};

/// The pieces of every block whose donor (the old KVP member) is set, in sequence, block, new
/// column, head order. failed_precondition when a head has no live old holder (identical on
/// every member: it depends on the message only).
[[nodiscard]] expected<std::vector<piece>> plan(const model_spec& spec, const helix::layout& after,
                                                const kv_reslice& from,
                                                std::span<const restored_sequence> seqs);

/// Pieces that `me` must send and cannot: its carried KV lacks the block, or is not the old
/// rank the piece names (counted for the restore's agreement).
[[nodiscard]] std::int64_t missing(std::span<const piece> pieces, int me, const held_kv* source,
                                   std::span<const restored_sequence> seqs,
                                   std::int64_t block_tokens);

/// `me`'s part of the exchange over `comm`: sends the pieces it holds (from `source`, the KV of
/// the old layout; its slots are only read, so `dest` may be the same store) and stores the pieces
/// it receives into `dest` at `dest_slots[seq_idx][block]` (pages of the new layout's column
/// `dest_column`). Source or destination may be null where `me` has nothing to send or receive.
/// Call after the agreement (missing() was 0 everywhere).
[[nodiscard]] status exchange(const model_spec& spec, const helix::layout& after,
                              const kv_reslice& from, std::span<const piece> pieces,
                              std::span<const restored_sequence> seqs,
                              transport::communicator& comm, const held_kv* source, kv_store* dest,
                              std::int64_t dest_column,
                              const std::vector<std::vector<std::int32_t>>& dest_slots);

}  // namespace helix::model::reslice
