// `helix generate`: load a checkpoint (or seeded built-in weights), run chunked prefill and decode
// on one worker, print the tokens and timings (human-readable, or JSON with --json).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// Runs the subcommand with its arguments (after "generate"); returns the process exit code
/// (0 ok, 2 bad usage or input, 1 runtime failure). Output to `out`, errors to `err`.
int run_generate(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
