#include "core/status.hpp"

namespace helix {

std::string_view errc_name(errc code) noexcept {
  switch (code) {
    case errc::ok:
      return "ok";
    case errc::invalid_argument:
      return "invalid_argument";
    case errc::failed_precondition:
      return "failed_precondition";
    case errc::not_found:
      return "not_found";
    case errc::resource_exhausted:
      return "resource_exhausted";
    case errc::unavailable:
      return "unavailable";
    case errc::deadline_exceeded:
      return "deadline_exceeded";
    case errc::aborted:
      return "aborted";
    case errc::cancelled:
      return "cancelled";
    case errc::internal:
      return "internal";
    case errc::unauthenticated:
      return "unauthenticated";
  }
  return "unknown";
}

std::string status::to_string() const {
  if (ok()) return "ok";
  return fmt::format("{}: {}", errc_name(code_), message_);
}

status status::with_context(std::string_view context) const {
  if (ok()) return *this;
  return status(code_, fmt::format("{}: {}", context, message_));
}

namespace detail {
void check_failed(const char* expr, const char* file, int line, const std::string& msg) {
  std::fprintf(stderr, "helix: check failed at %s:%d: %s%s%s\n", file, line, expr,
               msg.empty() ? "" : ": ", msg.c_str());
  std::fflush(stderr);
  std::abort();
}
}  // namespace detail

}  // namespace helix
