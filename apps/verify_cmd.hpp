// `helix verify`: runs the single-worker decoder and the engine on an N-rank layout (its workers
// threads of this process, or `helix worker` processes with --processes) on the same seeded
// weights and prompts, each decoding greedily on its own, and checks that both produce the same
// tokens with logits within tolerance (f32 1e-4, bf16 2e-2): the engine returns each token's
// logits row (request_options::return_logits). Called by apps/main.cpp and the tests; prints a
// report (or --json).
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// `args` are the flags after `verify` (run with --help for the list). Writes the report to `out`
/// and diagnostics to `err`. Returns the process exit code: 0 the runs agree, 1 they do not or a
/// run failed (an `error: ...` line on `err`), 2 a usage error (an `error: ...` line and the usage
/// on `err`; a layout that breaks a rule for the model shows the layout rule's message).
/// Thread-safe as far as its streams are (each call runs an engine of its own).
int run_verify(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
