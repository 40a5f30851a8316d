#include "text/utf8.hpp"

#include <cstdlib>

#include <utf8proc.h>

namespace helix::text {
namespace {

std::uint8_t byte_at(std::string_view s, std::size_t i) noexcept {
  return static_cast<std::uint8_t>(s[i]);
}

// Expected length of a sequence whose lead byte is `b`, 0 for a byte that cannot lead.
std::size_t lead_length(std::uint8_t b) noexcept {
  if (b < 0x80) return 1;
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// Valid range of the second byte after lead `b` (the first continuation carries the overlong,
// surrogate and > U+10FFFF restrictions); the later continuations are always 80..BF.
bool second_byte_ok(std::uint8_t lead, std::uint8_t b) noexcept {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return b >= 0x80 && b <= 0xBF;
  }
}

// Number of bytes from `pos` that form a valid prefix of a sequence (at least 1 when the lead is
// valid), and whether that prefix is the whole sequence.
struct prefix_info {
  std::size_t valid_bytes;
  bool complete;
};

prefix_info valid_prefix(std::string_view s, std::size_t pos) noexcept {
  const std::uint8_t lead = byte_at(s, pos);
  const std::size_t need = lead_length(lead);
  if (need == 0) return {0, false};
  std::size_t have = 1;
  while (have < need && pos + have < s.size()) {
    const std::uint8_t b = byte_at(s, pos + have);
    const bool ok = have == 1 ? second_byte_ok(lead, b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return {have, false};
    ++have;
  }
  return {have, have == need};
}

}  // namespace

std::size_t utf8_sequence_length(std::string_view s, std::size_t pos) noexcept {
  if (pos >= s.size()) return 0;
  const prefix_info p = valid_prefix(s, pos);
  return p.complete ? p.valid_bytes : 0;
}

status validate_utf8(std::string_view s, std::string_view what) {
  std::size_t pos = 0;
  while (pos < s.size()) {
    if (byte_at(s, pos) < 0x80) {
      ++pos;
      continue;
    }
    const std::size_t len = utf8_sequence_length(s, pos);
    if (len == 0) {
      return invalid_argument("{} is not valid UTF-8 (byte offset {} of {})", what, pos, s.size());
    }
    pos += len;
  }
  return ok_status();
}

std::size_t incomplete_utf8_tail(std::string_view s) noexcept {
  // A sequence is at most 4 bytes: the incomplete start, if any, is among the last 3 bytes.
  const std::size_t n = s.size();
  for (std::size_t back = 1; back <= 3 && back <= n; ++back) {
    const std::size_t pos = n - back;
    const std::uint8_t b = byte_at(s, pos);
    if (b >= 0x80 && b <= 0xBF) continue;  // a continuation byte: look further back
    const prefix_info p = valid_prefix(s, pos);
    // Incomplete only when every byte up to the end belongs to the valid prefix.
    if (!p.complete && p.valid_bytes == back) return back;
    return 0;
  }
  return 0;
}

void append_utf8_lossy(std::string_view bytes, std::string& out) {
  std::size_t pos = 0;
  while (pos < bytes.size()) {
    const std::uint8_t b = byte_at(bytes, pos);
    if (b < 0x80) {
      out.push_back(static_cast<char>(b));
      ++pos;
      continue;
    }
    const prefix_info p = valid_prefix(bytes, pos);
    if (p.complete) {
      out.append(bytes.substr(pos, p.valid_bytes));
      pos += p.valid_bytes;
    } else {
      // The maximal subpart: the valid prefix (at least the lead byte) becomes one U+FFFD.
      out.append(replacement_char);
      pos += p.valid_bytes == 0 ? 1 : p.valid_bytes;
    }
  }
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  append_utf8_lossy(bytes, out);
  return out;
}

void append_code_point(char32_t cp, std::string& out) {
  const auto u = static_cast<std::uint32_t>(cp);
  if (u < 0x80) {
    out.push_back(static_cast<char>(u));
  } else if (u < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (u >> 6)));
    out.push_back(static_cast<char>(0x80 | (u & 0x3F)));
  } else if (u < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (u >> 12)));
    out.push_back(static_cast<char>(0x80 | ((u >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (u & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (u >> 18)));
    out.push_back(static_cast<char>(0x80 | ((u >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((u >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (u & 0x3F)));
  }
}

char32_t decode_code_point(std::string_view s, std::size_t pos, std::size_t len) noexcept {
  const std::uint32_t b0 = byte_at(s, pos);
  switch (len) {
    case 1:
      return static_cast<char32_t>(b0);
    case 2:
      return static_cast<char32_t>(((b0 & 0x1F) << 6) | (byte_at(s, pos + 1) & 0x3Fu));
    case 3:
      return static_cast<char32_t>(((b0 & 0x0F) << 12) | ((byte_at(s, pos + 1) & 0x3Fu) << 6) |
                                   (byte_at(s, pos + 2) & 0x3Fu));
    default:
      return static_cast<char32_t>(((b0 & 0x07) << 18) | ((byte_at(s, pos + 1) & 0x3Fu) << 12) |
                                   ((byte_at(s, pos + 2) & 0x3Fu) << 6) |
                                   (byte_at(s, pos + 3) & 0x3Fu));
  }
}

expected<std::string> nfc(std::string_view s) {
  if (s.empty()) return std::string();
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(
      reinterpret_cast<const utf8proc_uint8_t*>(s.data()), static_cast<utf8proc_ssize_t>(s.size()),
      &mapped, static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) {
    return n == UTF8PROC_ERROR_NOMEM
               ? resource_exhausted("NFC of {} bytes: out of memory", s.size())
               : invalid_argument("NFC of {} bytes: {}", s.size(), utf8proc_errmsg(n));
  }
  std::string out(reinterpret_cast<const char*>(mapped), static_cast<std::size_t>(n));
  std::free(mapped);
  return out;
}

bool is_unicode_space(char32_t cp) noexcept {
  switch (static_cast<std::uint32_t>(cp)) {
    case 0x09:
    case 0x0A:
    case 0x0B:
    case 0x0C:
    case 0x0D:
    case 0x20:
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

bool is_alphanumeric(char32_t cp) noexcept {
  switch (utf8proc_category(static_cast<utf8proc_int32_t>(cp))) {
    case UTF8PROC_CATEGORY_LU:
    case UTF8PROC_CATEGORY_LL:
    case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO:
    case UTF8PROC_CATEGORY_ND:
    case UTF8PROC_CATEGORY_NL:
    case UTF8PROC_CATEGORY_NO:
      return true;
    default:
      return false;
  }
}

}  // namespace helix::text
