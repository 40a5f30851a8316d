// Overflow-checked integer arithmetic for sizes that come from users (request lengths, config
// fields, tensor shapes): every place such sizes meet goes through these, so a value near
// INT64_MAX is refused instead of wrapping around into a small, "valid" number.
#pragma once

#include <cstdint>
#include <optional>

namespace helix {

/// a + b, or nullopt on overflow.
[[nodiscard]] inline std::optional<std::int64_t> checked_add(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// a * b, or nullopt on overflow.
[[nodiscard]] inline std::optional<std::int64_t> checked_mul(std::int64_t a, std::int64_t b) {
  std::int64_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

/// ceil(a / b) for a >= 0, b > 0, without forming a + b - 1 (which can overflow).
[[nodiscard]] inline std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return a / b + (a % b != 0 ? 1 : 0);
}

}  // namespace helix
