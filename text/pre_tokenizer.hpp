// Pre-tokenizers of HF tokenizer.json: split text into the words BPE runs on.
//
// Supported steps (what Llama 3, DeepSeek-V3, Qwen, GPT-2 and Mistral use): `Split` with a regex or
// literal pattern and any behaviour, `ByteLevel` (optionally with GPT-2's regex and a prefix space;
// it maps every byte to the printable character of GPT-2's byte-to-unicode table), `Digits`,
// `Metaspace`, and `Sequence` of those. Regexes are PCRE2 with Unicode properties (\p{L}, \p{N}),
// which reads the Oniguruma patterns of those models unchanged; matching has a backtracking limit
// so a hostile pattern cannot hang the caller. Immutable after construction; thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "core/status.hpp"

namespace helix::text {

/// GPT-2's pre-tokenizer pattern (ByteLevel with use_regex=true).
inline constexpr std::string_view gpt2_split_pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

/// A compiled PCRE2 pattern (UTF + Unicode properties). Move-only.
class regex {
 public:
  /// `literal`: the pattern is a plain string to find (tokenizer.json's {"String": ...}).
  /// invalid_argument with PCRE2's message and offset for a bad pattern.
  [[nodiscard]] static expected<regex> compile(std::string_view pattern, bool literal);

  /// Non-empty, non-overlapping matches [begin, end) of valid UTF-8 `text`, left to right.
  /// resource_exhausted when the match limit is hit.
  [[nodiscard]] expected<std::vector<std::pair<std::size_t, std::size_t>>> find_all(
      std::string_view text) const;

 private:
  struct deleter {
    void operator()(void* code) const noexcept;
  };
  std::unique_ptr<void, deleter> code_;
};

enum class split_behavior { removed, isolated, merged_with_previous, merged_with_next, contiguous };

struct split_step {
  regex pattern;
  split_behavior behavior = split_behavior::isolated;
  bool invert = false;
};
struct byte_level_step {
  bool add_prefix_space = false;
  bool use_regex = true;
};
struct digits_step {
  bool individual_digits = false;
};
/// SentencePiece-style: spaces become `replacement` ("▁"), which is also prepended (always, or
/// only to the text at the start of the input); `split` starts a word at each replacement.
struct metaspace_step {
  enum class prepend { always, first, never };
  std::string replacement = "\xE2\x96\x81";
  prepend scheme = prepend::always;
  bool split = true;
};
using pre_tokenizer_step = std::variant<split_step, byte_level_step, digits_step, metaspace_step>;

/// GPT-2's table: the printable character each byte stands for in byte-level vocabularies.
[[nodiscard]] const std::array<char32_t, 256>& byte_to_unicode() noexcept;

class pre_tokenizer {
 public:
  pre_tokenizer() = default;
  /// Fails only when the GPT-2 regex of a ByteLevel step cannot be compiled (internal).
  [[nodiscard]] static expected<pre_tokenizer> create(std::vector<pre_tokenizer_step> steps);

  /// The words of `text` (valid UTF-8), in order; byte-level steps map bytes to their characters.
  /// `at_start`: `text` begins the input (no added token before it), for Metaspace's "first".
  [[nodiscard]] expected<std::vector<std::string>> split(std::string_view text,
                                                         bool at_start = true) const;

  [[nodiscard]] bool empty() const noexcept { return steps_.empty(); }

 private:
  std::vector<pre_tokenizer_step> steps_;
  std::shared_ptr<const regex> gpt2_;  // compiled once when a ByteLevel step uses it
};

}  // namespace helix::text
