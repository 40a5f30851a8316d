// Command-line parsing for the helix subcommands: `--flag value`, `--flag=value` and switches,
// with typed accessors that return clear errors. Sizes accept K/M/G suffixes (binary: 1M =
// 1,048,576).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.hpp"

namespace helix::apps {

/// Parses "131072", "128K", "1M", "2G" (binary multiples). invalid_argument otherwise.
[[nodiscard]] expected<std::int64_t> parse_size(std::string_view text);
/// This program's own path (/proc/self/exe), for spawning `helix worker` processes.
[[nodiscard]] expected<std::string> this_program_path();
/// Parses "HOST:PORT" (port 1 to 65535; the host non-empty). invalid_argument naming `flag`.
[[nodiscard]] expected<std::pair<std::string, std::uint16_t>> parse_host_port(
    std::string_view text, std::string_view flag);
/// Parses a comma-separated list of integers ("3,14,15").
[[nodiscard]] expected<std::vector<std::int64_t>> parse_int_list(std::string_view text);

class cli_args {
 public:
  /// `switches` are flags without a value (e.g. "json"); every other --flag takes one value, the
  /// next argument or `--flag=value`. invalid_argument for a positional argument or a value
  /// given to a switch (`--json=false` would otherwise mean true). A last flag with no value
  /// after it is not an error here, because parse() cannot tell an unknown flag (`--bogus`) from
  /// a known one missing its value: check_known() reports it, so every command must call
  /// check_known() before it reads values.
  [[nodiscard]] static expected<cli_args> parse(const std::vector<std::string>& args,
                                                const std::set<std::string>& switches);

  [[nodiscard]] bool has(const std::string& name) const;
  [[nodiscard]] std::optional<std::string> get(const std::string& name) const;
  [[nodiscard]] std::string get_or(const std::string& name, const std::string& fallback) const;
  [[nodiscard]] expected<std::int64_t> get_int(const std::string& name,
                                               std::int64_t fallback) const;
  [[nodiscard]] expected<std::int64_t> get_size(const std::string& name,
                                                std::int64_t fallback) const;
  [[nodiscard]] expected<double> get_double(const std::string& name, double fallback) const;
  /// invalid_argument "unknown flag --x" naming the first flag not in `known` (a last flag
  /// given without a value included); then "flag --x needs a value" if that last flag is known.
  [[nodiscard]] status check_known(const std::set<std::string>& known) const;

 private:
  std::map<std::string, std::string> values_;
  std::optional<std::string> missing_value_;  // a last non-switch flag with no value after it
};

/// A command's flags, parsed and checked: cli_args::parse() with `switches`, then check_known()
/// with `known` ("help" is added to both). On a bad flag it writes "error: ..." and `usage` to
/// `err` and sets `exit_code` to 2; on --help it writes `usage` to `out` and sets it to 0; in both
/// cases it returns nullopt and the command returns `exit_code`.
[[nodiscard]] std::optional<cli_args> parse_command(const std::vector<std::string>& args,
                                                    std::set<std::string> switches,
                                                    std::set<std::string> known,
                                                    std::string_view usage, std::ostream& out,
                                                    std::ostream& err, int& exit_code);

}  // namespace helix::apps
