// Incremental detokenisation for streaming: feed generated ids one at a time, get back the text
// that became complete.
//
// A byte-level or byte-fallback token can end inside a multi-byte character (an emoji is often
// split over two to four tokens). The detokenizer holds such bytes until the character completes
// (byte-level tokenizers) or until a non-byte token follows the run (byte-fallback and
// SentencePiece tokenizers, whose decoders judge a run of byte tokens as a whole), so no returned
// chunk contains a broken UTF-8 sequence, and `flush()` at the end of the stream returns what is
// left (an unfinished character becomes U+FFFD, as decode() does). The concatenation of every
// chunk, flush included, equals `tokenizer.decode(all ids)`.
//
// One detokenizer per stream; it refers to its tokenizer, which must outlive it. Not thread-safe
// (one stream is fed by one thread); different detokenizers may share a tokenizer.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"
#include "text/tokenizer.hpp"

namespace helix::text {

class detokenizer {
 public:
  /// `skip_special`: special tokens contribute no text (as decode(ids, true)).
  explicit detokenizer(const tokenizer& tok, bool skip_special = false);

  /// The text completed by token `id` (possibly empty). Errors: invalid_argument for an id outside
  /// the vocabulary (the detokenizer is unchanged and can go on).
  [[nodiscard]] expected<std::string> add(std::int32_t id);

  /// The rest of the text; the detokenizer is then empty and can start a new stream.
  [[nodiscard]] expected<std::string> flush();

 private:
  expected<std::string> add_bytes(std::int32_t id);
  expected<std::string> add_window(std::int32_t id);
  // Index of the window's last token usable as context (see add_window), or the window size.
  expected<std::size_t> window_anchor() const;

  // A window without an anchor (a long run of byte tokens) is cut here to bound the work per
  // token; a character cut at that point can then come out as U+FFFD.
  static constexpr std::size_t max_window = 256;

  const tokenizer* tok_;
  bool skip_special_;
  // concatenated_bytes: bytes of an unfinished character.
  std::string pending_;
  // window_decode: ids since the start of the last emitted token, and how many of them have
  // already been turned into text (TGI-style prefix / read offsets).
  std::vector<std::int32_t> window_;
  std::size_t read_offset_ = 0;
};

}  // namespace helix::text
