// Shared by the tests that run the `helix` binary (HELIX_CLI, defined for the cluster tests).
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

namespace helix::test_support {

/// Runs `cli` with `args` through the shell (stderr merged into stdout); its output, with the
/// exit status in `rc` (-1 when it could not start).
inline std::string run_cli(const std::string& cli, const std::string& args, int& rc) {
  rc = -1;
  FILE* p = ::popen((cli + " " + args + " 2>&1").c_str(), "r");
  std::string out;
  if (p == nullptr) return out;
  char buf[4096];
  while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  rc = WEXITSTATUS(::pclose(p));
  return out;
}

/// The JSON object at the end of `out` (progress lines before it are skipped); discarded when
/// there is none.
inline nlohmann::json last_json(const std::string& out) {
  const auto at = out.find("\n{");
  const std::string text = out.rfind('{', 0) == 0    ? out
                           : at == std::string::npos ? ""
                                                     : out.substr(at + 1);
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

}  // namespace helix::test_support
