// `helix verify`: runs the single-worker decoder and the N-rank sharded decoder (one thread per
// rank over the local fabric) on the same seeded weights and prompts, each decoding greedily on its
// own, and checks that both produce the same tokens with logits within tolerance (f32 1e-4,
// bf16 2e-2). Called by apps/main.cpp and the tests; prints a report (or --json).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// `args` are the flags after `verify` (run with --help for the list). Writes the report to `out`
/// and diagnostics to `err`. Returns the process exit code: 0 the runs agree, 1 they do not or a
/// run failed (an `error: ...` line on `err`), 2 a usage error (an `error: ...` line and the usage
/// on `err`; a layout that breaks a rule for the model shows the layout rule's message).
/// Thread-safe as far as its streams are (it starts and joins its own rank threads).
int run_verify(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
