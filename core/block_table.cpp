#include "core/block_table.hpp"

#include <algorithm>

namespace helix {

bool block_table::needs_block() const {
  return blocks_.empty() || blocks_.back().num_tokens >= block_tokens_;
}

std::int64_t block_table::blocks_opened_by(std::int64_t num_tokens) const {
  const std::int64_t room = needs_block() ? 0 : block_tokens_ - blocks_.back().num_tokens;
  return std::max<std::int64_t>(0, (num_tokens - room + block_tokens_ - 1) / block_tokens_);
}

status block_table::open_block(std::int32_t rank, std::int32_t slot) {
  if (!needs_block()) {
    return failed_precondition("block table: last block has {} of {} tokens; cannot open another",
                               blocks_.back().num_tokens, block_tokens_);
  }
  if (rank < 0 || slot < 0) return invalid_argument("block table: rank {} slot {}", rank, slot);
  blocks_.push_back({rank, slot, num_tokens_, 0});
  if (rank == local_rank_) local_.push_back(blocks_.back());
  return ok_status();
}

status block_table::append_tokens(std::int64_t n) {
  if (blocks_.empty()) return failed_precondition("block table: append with no open block");
  kv_block_ref& b = blocks_.back();
  if (n < 0 || b.num_tokens + n > block_tokens_) {
    return failed_precondition("block table: {} tokens do not fit in a block with {} of {}", n,
                               b.num_tokens, block_tokens_);
  }
  b.num_tokens += static_cast<std::int32_t>(n);
  num_tokens_ += n;
  if (b.rank == local_rank_) local_.back().num_tokens = b.num_tokens;  // the last local block
  return ok_status();
}

const kv_block_ref& block_table::last() const {
  HELIX_CHECK(!blocks_.empty(), "block table is empty");
  return blocks_.back();
}

status block_table::relocate(std::size_t block_idx, std::int32_t rank, std::int32_t slot) {
  if (block_idx >= blocks_.size()) {
    return invalid_argument("block table: block {} of {}", block_idx, blocks_.size());
  }
  kv_block_ref& b = blocks_[block_idx];
  const bool was_local = b.rank == local_rank_;
  b.rank = rank;
  b.slot = slot;
  if (local_rank_ < 0 || (!was_local && rank != local_rank_)) return ok_status();
  // The list is in position order: find where this block's first position sits in it.
  const auto it =
      std::lower_bound(local_.begin(), local_.end(), b.first_pos,
                       [](const kv_block_ref& l, std::int64_t pos) { return l.first_pos < pos; });
  if (was_local && rank == local_rank_) {
    it->slot = slot;
  } else if (was_local) {
    local_.erase(it);
  } else {
    local_.insert(it, b);
  }
  return ok_status();
}

std::vector<kv_block_ref> block_table::blocks_on(std::int32_t rank) const {
  std::vector<kv_block_ref> out;
  for (const kv_block_ref& b : blocks_) {
    if (b.rank == rank) out.push_back(b);
  }
  return out;
}

}  // namespace helix
