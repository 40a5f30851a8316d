#include "apps/cli_args.hpp"

#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <ostream>
#include <utility>

#include <unistd.h>

namespace helix::apps {

expected<std::int64_t> parse_size(std::string_view text) {
  if (text.empty()) return invalid_argument("empty size");
  std::int64_t mult = 1;
  std::string_view digits = text;
  switch (text.back()) {
    case 'k':
    case 'K':
      mult = std::int64_t{1} << 10;
      digits.remove_suffix(1);
      break;
    case 'm':
    case 'M':
      mult = std::int64_t{1} << 20;
      digits.remove_suffix(1);
      break;
    case 'g':
    case 'G':
      mult = std::int64_t{1} << 30;
      digits.remove_suffix(1);
      break;
    default:
      break;
  }
  std::int64_t v = 0;
  const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc() || ptr != digits.data() + digits.size() || digits.empty()) {
    return invalid_argument("'{}' is not a size (examples: 4096, 128K, 1M)", text);
  }
  if (v < 0 || v > std::numeric_limits<std::int64_t>::max() / mult) {
    return invalid_argument("size '{}' is out of range", text);
  }
  return v * mult;
}

expected<std::pair<std::string, std::uint16_t>> parse_host_port(std::string_view text,
                                                                std::string_view flag) {
  const auto colon = text.rfind(':');
  const std::string port_text(colon == std::string_view::npos ? "" : text.substr(colon + 1));
  char* end = nullptr;
  const long port = port_text.empty() ? -1 : std::strtol(port_text.c_str(), &end, 10);
  if (colon == std::string_view::npos || colon == 0 || end == nullptr || *end != '\0' || port < 1 ||
      port > 65535) {
    return invalid_argument("--{} takes HOST:PORT, got '{}'", flag, text);
  }
  return std::pair<std::string, std::uint16_t>{std::string(text.substr(0, colon)),
                                               static_cast<std::uint16_t>(port)};
}

expected<std::vector<std::int64_t>> parse_int_list(std::string_view text) {
  std::vector<std::int64_t> out;
  while (!text.empty()) {
    const std::size_t comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    std::int64_t v = 0;
    const auto [ptr, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (ec != std::errc() || ptr != item.data() + item.size() || item.empty()) {
      return invalid_argument("'{}' is not an integer in list '{}'", item, text);
    }
    out.push_back(v);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
    if (text.empty()) return invalid_argument("trailing comma in integer list");
  }
  return out;
}

expected<cli_args> cli_args::parse(const std::vector<std::string>& args,
                                   const std::set<std::string>& switches) {
  cli_args out;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0 || a.size() == 2) {
      return invalid_argument("unexpected argument '{}' (flags are --name value)", a);
    }
    std::string name = a.substr(2);
    const std::size_t eq = name.find('=');
    if (eq != std::string::npos) {
      std::string key = name.substr(0, eq);
      if (switches.count(key) != 0) {
        return invalid_argument("switch --{} takes no value (got '{}')", key, a);
      }
      out.values_[std::move(key)] = name.substr(eq + 1);
      continue;
    }
    if (switches.count(name) != 0) {
      out.values_[name] = "true";
      continue;
    }
    if (i + 1 >= args.size()) {
      // Unknown or missing its value: only check_known() can tell which (see the header).
      out.missing_value_ = std::move(name);
      break;
    }
    out.values_[name] = args[++i];
  }
  return out;
}

bool cli_args::has(const std::string& name) const {
  return values_.count(name) != 0;
}

std::optional<std::string> cli_args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) return std::nullopt;
  return it->second;
}

std::string cli_args::get_or(const std::string& name, const std::string& fallback) const {
  return get(name).value_or(fallback);
}

expected<std::int64_t> cli_args::get_int(const std::string& name, std::int64_t fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  std::int64_t out = 0;
  const auto [ptr, ec] = std::from_chars(v->data(), v->data() + v->size(), out);
  if (ec != std::errc() || ptr != v->data() + v->size() || v->empty()) {
    return invalid_argument("--{} expects an integer, got '{}'", name, *v);
  }
  return out;
}

expected<std::int64_t> cli_args::get_size(const std::string& name, std::int64_t fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  auto parsed = parse_size(*v);
  if (!parsed) return parsed.error().with_context("--" + name);
  return parsed;
}

expected<double> cli_args::get_double(const std::string& name, double fallback) const {
  auto v = get(name);
  if (!v) return fallback;
  errno = 0;
  char* end = nullptr;
  const double out = std::strtod(v->c_str(), &end);
  if (v->empty() || end != v->c_str() + v->size() || errno != 0 || !std::isfinite(out)) {
    return invalid_argument("--{} expects a number, got '{}'", name, *v);
  }
  return out;
}

status cli_args::check_known(const std::set<std::string>& known) const {
  for (const auto& [name, value] : values_) {
    if (known.count(name) == 0) return invalid_argument("unknown flag --{}", name);
  }
  if (missing_value_) {
    if (known.count(*missing_value_) == 0) {
      return invalid_argument("unknown flag --{}", *missing_value_);
    }
    return invalid_argument("flag --{} needs a value", *missing_value_);
  }
  return ok_status();
}

std::optional<cli_args> parse_command(const std::vector<std::string>& args,
                                      std::set<std::string> switches, std::set<std::string> known,
                                      std::string_view usage, std::ostream& out, std::ostream& err,
                                      int& exit_code) {
  switches.insert("help");
  known.insert("help");
  auto a = cli_args::parse(args, switches);
  const status st = a ? a->check_known(known) : a.error();
  if (!st.ok()) {
    err << "error: " << st.message() << "\n" << usage;
    exit_code = 2;
    return std::nullopt;
  }
  if (a->has("help")) {
    out << usage;
    exit_code = 0;
    return std::nullopt;
  }
  return std::move(*a);
}

expected<std::string> this_program_path() {
  char path[4096] = {};
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
  if (n <= 0) return internal_error("cannot find this program's path (/proc/self/exe)");
  return std::string(path, static_cast<std::size_t>(n));
}

}  // namespace helix::apps
