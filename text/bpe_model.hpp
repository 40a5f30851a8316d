// The BPE model of HF tokenizer.json: a vocabulary, ranked merges, and the word -> ids algorithm.
//
// A word (one pre-tokenizer piece, already byte-level mapped where the tokenizer does that) starts
// as one symbol per character; the adjacent pair with the lowest merge rank is merged, leftmost
// first, until no pair has a merge. `ignore_merges` (Llama 3) first looks the whole word up in the
// vocabulary. A character missing from the vocabulary becomes byte tokens "<0xAB>" with
// `byte_fallback`, else the unknown token (consecutive ones fused with `fuse_unk`), else nothing,
// as HF does. Immutable after construction; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.hpp"

namespace helix::text {

/// Hash for string-keyed maps looked up by string_view without a copy.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept {
    return std::hash<std::string_view>{}(s);
  }
};
using token_map = std::unordered_map<std::string, std::int32_t, string_hash, std::equal_to<>>;

struct bpe_options {
  bool ignore_merges = false;
  bool byte_fallback = false;
  bool fuse_unk = false;
  std::optional<std::string> unk_token;
};

class bpe_model {
 public:
  bpe_model() = default;

  /// `vocab`: token -> id (ids unique, non-negative). `merges`: pairs of tokens in rank order; both
  /// sides and their concatenation must be in `vocab`. invalid_argument naming the first bad
  /// merge (by index) or the unknown unk_token.
  [[nodiscard]] static expected<bpe_model> create(
      token_map vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      bpe_options options);

  /// Appends the ids of `word` to `ids` (appending avoids a vector per word on long prompts).
  void encode_word(std::string_view word, std::vector<std::int32_t>& ids) const;

  [[nodiscard]] const token_map& vocab() const noexcept { return vocab_; }
  [[nodiscard]] std::optional<std::int32_t> byte_token(std::uint8_t b) const noexcept;
  [[nodiscard]] bool byte_fallback() const noexcept { return options_.byte_fallback; }

 private:
  struct merge {
    std::int32_t rank;
    std::int32_t new_id;
  };
  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) noexcept {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) |
           static_cast<std::uint32_t>(b);
  }

  token_map vocab_;
  std::unordered_map<std::uint64_t, merge> merges_;
  bpe_options options_;
  std::optional<std::int32_t> unk_id_;
  std::vector<std::int32_t> byte_ids_;  // "<0xAB>" ids, -1 where absent; empty without fallback
};

}  // namespace helix::text
