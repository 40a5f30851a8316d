// Block tables: where each request's KV lives.
//
// For every KV block of a request the table records the rank that holds it, its slot in that
// rank's paged KV store, and the global positions it covers (a block covers consecutive positions
// [first_pos, first_pos + num_tokens)). Every lookup of KV goes through the table, never through a
// placement formula: the placement rule (planner/) fills it, migration and recovery edit it.
// A table may keep, beside it, the list of blocks one rank holds (`local_rank`), kept in position
// order through every append, open and relocation, so that a rank's attention takes its own
// blocks without scanning the whole table of a long sequence at every layer.
// Not thread-safe; one owner per table.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/status.hpp"

namespace helix {

struct kv_block_ref {
  std::int32_t rank = 0;        // worker rank holding the block
  std::int32_t slot = 0;        // page slot in that rank's KV store
  std::int64_t first_pos = 0;   // global position of the block's first token
  std::int32_t num_tokens = 0;  // tokens filled, <= block_tokens
  friend bool operator==(const kv_block_ref&, const kv_block_ref&) = default;
};

class block_table {
 public:
  explicit block_table(std::int64_t block_tokens = 16) : block_tokens_(block_tokens) {}
  /// A table that also keeps the list of the blocks `local_rank` holds (local_blocks()).
  block_table(std::int64_t block_tokens, std::int32_t local_rank)
      : block_tokens_(block_tokens), local_rank_(local_rank) {}

  [[nodiscard]] std::int64_t block_tokens() const { return block_tokens_; }
  [[nodiscard]] std::span<const kv_block_ref> blocks() const { return blocks_; }
  [[nodiscard]] std::int64_t num_tokens() const { return num_tokens_; }
  /// Position the next appended token gets.
  [[nodiscard]] std::int64_t next_pos() const { return num_tokens_; }
  /// Whether the next token needs a new block (the last block is full or there is none).
  [[nodiscard]] bool needs_block() const;
  /// Blocks that appending `num_tokens` more tokens opens.
  [[nodiscard]] std::int64_t blocks_opened_by(std::int64_t num_tokens) const;

  /// Opens a new block on (rank, slot) starting at next_pos(). failed_precondition if the last
  /// block still has room (blocks fill in order).
  [[nodiscard]] status open_block(std::int32_t rank, std::int32_t slot);
  /// Records `n` tokens appended into the last block; failed_precondition if they do not fit.
  [[nodiscard]] status append_tokens(std::int64_t n);
  /// The last block (HELIX_CHECKs that one exists).
  [[nodiscard]] const kv_block_ref& last() const;
  /// Moves block `block_idx` to (rank, slot): migration. invalid_argument if out of range.
  [[nodiscard]] status relocate(std::size_t block_idx, std::int32_t rank, std::int32_t slot);
  /// Blocks held by `rank`, in position order (a scan of the whole table).
  [[nodiscard]] std::vector<kv_block_ref> blocks_on(std::int32_t rank) const;
  /// The rank whose blocks local_blocks() lists; -1 when the table keeps no such list.
  [[nodiscard]] std::int32_t local_rank() const { return local_rank_; }
  /// Blocks held by local_rank(), in position order: equal to blocks_on(local_rank()), kept up
  /// to date by open_block, append_tokens and relocate. Empty when local_rank() is -1.
  [[nodiscard]] std::span<const kv_block_ref> local_blocks() const { return local_; }

 private:
  std::int64_t block_tokens_;
  std::int64_t num_tokens_ = 0;
  std::vector<kv_block_ref> blocks_;
  std::int32_t local_rank_ = -1;
  std::vector<kv_block_ref> local_;  // blocks_ entries with rank == local_rank_, in order
};

}  // namespace helix
