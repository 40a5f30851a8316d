// Recovery, lost blocks only (ARCHITECTURE.md, recovery): which KV blocks survive a change of
// layout after a worker failure, and where every block lives afterwards.
//
// A block lives on one KVP member in every TPA column. After a failure the members of the new
// layout are the survivors (new rank i is old rank survivors[i]) and fresh members (standbys).
// An old member k is *kept* when every column's holder of k survived, keeps its column and sits
// on the same new member k' in every column: k's blocks then stay where they are, now as member
// k'. Every other block is lost (its owner in the new layout rebuilds it) or donated (a member
// left without a rank sends it): it goes to the member holding the fewest of the request's blocks
// at that point (kept ones counted first, then lost ones placed, then donated ones), the
// placement rule's owner (kv_placement.hpp) among equals. Plain round-robin would not do: when
// the lost members share a residue (members 1 and 3 of 4 going to 2), every lost block would land
// on one member, and so would all of the rebuild's work. Survivors are ordered so that as many
// members as possible are kept (order_survivors).
//
// Pure, deterministic functions; thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/layout.hpp"
#include "core/status.hpp"
#include "planner/placement_book.hpp"

namespace helix::planner {

/// The surviving old ranks `alive` in the order that keeps most members: with the same TPA size
/// and at least as many survivors as new ranks, every old member whose holders all survived
/// moves whole onto the next new member (column for column); then each remaining new rank i
/// takes an alive old rank of its own TPA column (the lowest), else the lowest left. At most
/// after.num_ranks of them (the others stand by); with fewer, the rest of the new ranks are
/// fresh (standbys).
[[nodiscard]] std::vector<std::int64_t> order_survivors(const layout& before, const layout& after,
                                                        std::span<const std::int64_t> alive);

/// Per old KVP member (kvp_idx of `before`): the member of `after` that keeps its blocks, or -1.
/// `survivors[i]` is the old rank that becomes new rank i, or -1 where a fresh member (a standby,
/// a joining worker) takes it. Nothing is kept when the TPA sizes differ. invalid_argument for a
/// survivor outside `before` or more survivors than new ranks.
[[nodiscard]] expected<std::vector<std::int64_t>> kept_members(
    const layout& before, const layout& after, std::span<const std::int64_t> survivors);

/// One live request after the recovery.
struct recovered_request {
  std::uint64_t id = 0;
  std::int64_t offset = 0;              // its placement offset in the new layout
  std::int64_t num_tokens = 0;          // positions in its table
  std::vector<std::int64_t> owner_kvp;  // per block: the member of `after` that holds it
  std::vector<std::int64_t> kept_kvp;   // per block: the old member that kept it, or -1
  std::vector<std::int64_t> donor;      // per block: the donor that sends it, or -1
  /// Blocks neither kept nor donated: rebuilt.
  [[nodiscard]] std::int64_t lost_blocks() const;
  [[nodiscard]] std::int64_t donated_blocks() const;
};

/// Every live request of `book` (the old layout's record) under `after`: kept blocks on their
/// keeping member, lost ones on the least-loaded member as above (the request's offset taken
/// modulo the new KVP size). `kept` as kept_members() returns it.
/// `donated` (per old member, may be empty): the donor index of a member left without a rank
/// whose blocks move to their new owners instead of being rebuilt, or -1.
[[nodiscard]] std::vector<recovered_request> plan_recovery(
    const placement_book& book, const layout& after, std::span<const std::int64_t> kept,
    std::span<const std::int64_t> donated = {});

/// The record of the new layout holding `requests` (as plan_recovery returns them), its step
/// clock at `step`.
[[nodiscard]] expected<placement_book> recovered_book(const layout& after,
                                                      std::int64_t block_tokens,
                                                      std::span<const recovered_request> requests,
                                                      std::int64_t step);

}  // namespace helix::planner
