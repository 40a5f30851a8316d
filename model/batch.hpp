// One step's batch: which sequences it advances and with which tokens. Shared by the rank program
// (model/rank_program.hpp), the single-worker decoder over it and the step helpers.
#pragma once

#include <cstdint>
#include <span>

namespace helix::model {

struct batch_item {
  std::uint64_t seq = 0;
  std::span<const std::int32_t> tokens;
  bool all_logits = false;  // logits for every token instead of the last only
  /// -1: the tokens are appended at the end of the sequence. Otherwise recovery's rebuild
  /// (rank_program::restore): the tokens are the sequence's tokens at positions [rewrite_from,
  /// rewrite_from + tokens.size()), already in its block table, whose KV is computed again and
  /// written over those positions; their queries attend over every position up to their own.
  std::int64_t rewrite_from = -1;
};

/// Rows of logits a step of these items produces: one per item, or one per token with all_logits.
[[nodiscard]] inline std::int64_t logits_rows(std::span<const batch_item> items) {
  std::int64_t n = 0;
  for (const batch_item& it : items) {
    n += it.all_logits ? static_cast<std::int64_t>(it.tokens.size()) : 1;
  }
  return n;
}

}  // namespace helix::model
