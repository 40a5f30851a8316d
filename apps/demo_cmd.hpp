// `helix demo`: the default job of `make run`. Checks exactness of cached decoding against a
// cache-free forward pass on both tiny models, generates tokens, and measures a long-context
// attention decode against a streaming-read baseline; prints a short report (or --json).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// Returns the process exit code (0 ok, 1 an exactness check failed or a runtime error, 2 usage).
int run_demo(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
