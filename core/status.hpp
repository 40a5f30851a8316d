// Status and expected<T>: how every recoverable failure in Helix is reported.
//
// Our code does not throw. Functions that can fail return `[[nodiscard]] status` or `expected<T>`.
// A status is a small value (code + message); messages name the rank, peer and sizes involved.
// Broken invariants are not statuses: they are HELIX_CHECK (always on) and HELIX_DCHECK (debug).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <fmt/format.h>

namespace helix {

/// The error codes of the house style. `ok` is the only success code.
enum class errc : int {
  ok = 0,
  invalid_argument,
  failed_precondition,
  not_found,
  resource_exhausted,
  unavailable,
  deadline_exceeded,
  aborted,
  cancelled,
  internal,
  unauthenticated,  // a peer that could not prove membership (mutual TLS)
};

/// Stable lower-case name of a code ("invalid_argument"), used in logs and JSON.
[[nodiscard]] std::string_view errc_name(errc code) noexcept;

/// A recoverable outcome: ok, or a code with a human-readable message. Cheap to copy when ok.
class [[nodiscard]] status {
 public:
  status() = default;
  status(errc code, std::string message) : code_(code), message_(std::move(message)) {}

  [[nodiscard]] bool ok() const noexcept { return code_ == errc::ok; }
  [[nodiscard]] errc code() const noexcept { return code_; }
  [[nodiscard]] const std::string& message() const noexcept { return message_; }
  /// "invalid_argument: message", or "ok".
  [[nodiscard]] std::string to_string() const;

  /// Returns a copy whose message is prefixed with `context: `.
  [[nodiscard]] status with_context(std::string_view context) const;

 private:
  errc code_ = errc::ok;
  std::string message_;
};

[[nodiscard]] inline status ok_status() {
  return {};
}

template <class... Args>
[[nodiscard]] status make_error(errc code, fmt::format_string<Args...> fmt_str, Args&&... args) {
  return status(code, fmt::format(fmt_str, std::forward<Args>(args)...));
}
template <class... Args>
[[nodiscard]] status invalid_argument(fmt::format_string<Args...> f, Args&&... args) {
  return make_error(errc::invalid_argument, f, std::forward<Args>(args)...);
}
template <class... Args>
[[nodiscard]] status failed_precondition(fmt::format_string<Args...> f, Args&&... args) {
  return make_error(errc::failed_precondition, f, std::forward<Args>(args)...);
}
template <class... Args>
[[nodiscard]] status not_found(fmt::format_string<Args...> f, Args&&... args) {
  return make_error(errc::not_found, f, std::forward<Args>(args)...);
}
template <class... Args>
[[nodiscard]] status resource_exhausted(fmt::format_string<Args...> f, Args&&... args) {
  return make_error(errc::resource_exhausted, f, std::forward<Args>(args)...);
}
template <class... Args>
[[nodiscard]] status deadline_exceeded(fmt::format_string<Args...> f, Args&&... args) {
  return make_error(errc::deadline_exceeded, f, std::forward<Args>(args)...);
}
template <class... Args>
[[nodiscard]] status unavailable(fmt::format_string<Args...> f, Args&&... args) {
  return make_error(errc::unavailable, f, std::forward<Args>(args)...);
}
template <class... Args>
[[nodiscard]] status internal_error(fmt::format_string<Args...> f, Args&&... args) {
  return make_error(errc::internal, f, std::forward<Args>(args)...);
}

/// Either a value or a non-ok status. Construct from a T (success) or a status (failure; an ok
/// status here is a programming error and is turned into `internal`).
template <class T>
class [[nodiscard]] expected {
 public:
  expected(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  expected(status error) : v_(std::move(error)) {  // NOLINT(google-explicit-constructor)
    if (std::get<status>(v_).ok()) v_ = status(errc::internal, "expected built from an ok status");
  }

  [[nodiscard]] bool has_value() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return checked(); }
  const T& value() const& { return const_cast<expected*>(this)->checked(); }
  T&& value() && { return std::move(checked()); }
  T& operator*() & { return checked(); }
  const T& operator*() const& { return const_cast<expected*>(this)->checked(); }
  T* operator->() { return &checked(); }
  const T* operator->() const { return &const_cast<expected*>(this)->checked(); }

  /// The error; ok_status() when a value is held.
  [[nodiscard]] status error() const { return has_value() ? status{} : std::get<status>(v_); }

 private:
  T& checked() {
    if (!has_value()) {
      std::fprintf(stderr, "helix: value() on error: %s\n",
                   std::get<status>(v_).to_string().c_str());
      std::abort();
    }
    return std::get<0>(v_);
  }
  std::variant<T, status> v_;
};

namespace detail {
[[noreturn]] void check_failed(const char* expr, const char* file, int line,
                               const std::string& msg);
}  // namespace detail

}  // namespace helix

/// `{}` in fmt and spdlog prints a status as to_string() does ("code: message").
template <>
struct fmt::formatter<helix::status> : fmt::formatter<std::string_view> {
  template <class FormatContext>
  auto format(const helix::status& st, FormatContext& ctx) const {
    const std::string text = st.to_string();
    return fmt::formatter<std::string_view>::format(std::string_view(text), ctx);
  }
};

/// Always-on invariant check. Aborts with file, line and the optional formatted message.
#define HELIX_CHECK(cond, ...)                                                                 \
  do {                                                                                         \
    if (!(cond)) [[unlikely]]                                                                  \
      ::helix::detail::check_failed(#cond, __FILE__, __LINE__, ::fmt::format("" __VA_ARGS__)); \
  } while (0)

#ifdef NDEBUG
#define HELIX_DCHECK(cond, ...) \
  do {                          \
  } while (0)
#else
#define HELIX_DCHECK(cond, ...) HELIX_CHECK(cond, __VA_ARGS__)
#endif

/// Propagates a non-ok status to the caller.
#define HELIX_RETURN_IF_ERROR(expr)     \
  do {                                  \
    ::helix::status helix_st_ = (expr); \
    if (!helix_st_.ok()) [[unlikely]]   \
      return helix_st_;                 \
  } while (0)

#define HELIX_CONCAT_INNER_(a, b) a##b
#define HELIX_CONCAT_(a, b) HELIX_CONCAT_INNER_(a, b)
/// `HELIX_ASSIGN_OR_RETURN(auto x, f());` assigns the value of an expected or returns its error.
#define HELIX_ASSIGN_OR_RETURN(lhs, expr) \
  HELIX_ASSIGN_OR_RETURN_IMPL_(HELIX_CONCAT_(helix_exp_, __LINE__), lhs, expr)
#define HELIX_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.has_value()) [[unlikely]]                 \
    return tmp.error();                              \
  lhs = std::move(tmp).value()
