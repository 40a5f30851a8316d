// `helix serve`: the engine behind the OpenAI-compatible HTTP server (serve/server.hpp), until
// SIGTERM or SIGINT drains it (finish or cancel the running completions within --grace, exit 0).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// Runs the subcommand (arguments after "serve"); returns the exit code (0 after a drain, 2 bad
/// usage, 1 the engine or the listener could not start).
int run_serve(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
