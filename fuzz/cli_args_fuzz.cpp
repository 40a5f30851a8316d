// Fuzz target: the CLI parser (apps/cli_args.hpp), with the input split into arguments at NUL
// bytes and newlines, and the typed accessors and list/size parsers on every value.
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "apps/cli_args.hpp"
#include "fuzz/fuzz_check.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args(1);
  for (std::size_t i = 0; i < size; ++i) {
    const char ch = static_cast<char>(data[i]);
    if (ch == '\0' || ch == '\n') {
      args.emplace_back();
    } else {
      args.back().push_back(ch);
    }
  }
  for (const std::string& a : args) {
    const auto s = helix::apps::parse_size(a);
    if (s.has_value()) HELIX_FUZZ_CHECK(*s >= 0);
    (void)helix::apps::parse_int_list(a);
  }
  // The flags of `helix run` and `helix plan`, as the commands declare them.
  static const std::set<std::string> switches = {"json", "help", "quick", "no-hopb", "calibrate"};
  static const std::set<std::string> known = {"config", "model", "workers", "layout",   "context",
                                              "steps",  "seed",  "rate",    "batch",    "json",
                                              "help",   "quick", "no-hopb", "calibrate"};
  const auto cli = helix::apps::cli_args::parse(args, switches);
  if (!cli.has_value()) {
    HELIX_FUZZ_CHECK(cli.error().code() == helix::errc::invalid_argument);
    return 0;
  }
  const helix::status st = cli->check_known(known);
  HELIX_FUZZ_CHECK(st.ok() || st.code() == helix::errc::invalid_argument);
  for (const std::string& name : known) {
    (void)cli->has(name);
    (void)cli->get_or(name, "");
    (void)cli->get_int(name, 0);
    (void)cli->get_size(name, 0);
    (void)cli->get_double(name, 0.0);
  }
  return 0;
}
