// UTF-8 helpers shared by the tokenizers and the streaming detokenizer.
//
// Tokens are byte strings: a byte-level or byte-fallback token can end in the middle of a
// character. These helpers validate text, find where an incomplete character starts, and turn
// arbitrary bytes into valid UTF-8 the way HF tokenizers' decoders do (each maximal invalid
// subsequence becomes one U+FFFD, as Rust's `String::from_utf8_lossy` and the Unicode standard's
// "substitution of maximal subparts" say). All functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.hpp"

namespace helix::text {

/// U+FFFD REPLACEMENT CHARACTER, UTF-8 encoded.
inline constexpr std::string_view replacement_char = "\xEF\xBF\xBD";

/// Length of the valid UTF-8 sequence at `s[pos]`, or 0 when the bytes there are not a complete,
/// valid sequence (invalid, overlong, surrogate, above U+10FFFF, or cut off by the end of `s`).
[[nodiscard]] std::size_t utf8_sequence_length(std::string_view s, std::size_t pos) noexcept;

/// ok, or invalid_argument naming `what` and the byte offset of the first invalid sequence.
[[nodiscard]] status validate_utf8(std::string_view s, std::string_view what);

/// Number of bytes at the end of `s` that are a valid but incomplete start of a sequence (0 to 3):
/// bytes that one more chunk could complete. The detokenizer holds them back.
[[nodiscard]] std::size_t incomplete_utf8_tail(std::string_view s) noexcept;

/// Appends `bytes` to `out`, replacing each maximal invalid subsequence with U+FFFD.
void append_utf8_lossy(std::string_view bytes, std::string& out);

/// `bytes` as valid UTF-8 (see append_utf8_lossy).
[[nodiscard]] std::string utf8_lossy(std::string_view bytes);

/// Appends the UTF-8 encoding of code point `cp` (must be a scalar value) to `out`.
void append_code_point(char32_t cp, std::string& out);

/// Decodes the code point at `s[pos]`, which must start a valid sequence of `len` bytes.
[[nodiscard]] char32_t decode_code_point(std::string_view s, std::size_t pos,
                                         std::size_t len) noexcept;

/// Unicode NFC of valid UTF-8 `s` (utf8proc). resource_exhausted when the library cannot allocate.
[[nodiscard]] expected<std::string> nfc(std::string_view s);

/// True for code points with the Unicode White_Space property.
[[nodiscard]] bool is_unicode_space(char32_t cp) noexcept;

/// True for letters and numbers (general categories L* and N*), as single_word tokens check.
[[nodiscard]] bool is_alphanumeric(char32_t cp) noexcept;

}  // namespace helix::text
