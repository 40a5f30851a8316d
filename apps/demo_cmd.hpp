// `helix demo`: the default job of `make run`, the end-to-end Helix decode on one host. Checks
// exactness of cached decoding against a cache-free forward pass on both tiny models and of
// sharded decoders (tiny-llama on helix:kvp=4,tpa=2, tiny-deepseek on helix:kvp=8,tpa=1,tpf=2,
// ep=4) against the single worker; then runs the multi-agent workload of `helix run` on the
// embedded engine (tiny-llama, N workers, helix's default layout: --agent-requests requests from
// agent sessions with ~--agent-context token contexts) and reports TTFT, TPOT, tokens/s,
// per-worker KV use and migrations; then decodes small-llama on N simulated workers (one thread
// per rank) at a long synthetic context (--context, default 64K) with helix's default layout and
// with tp, and reports per-worker KV bytes, KV bytes read per step per worker, tokens/s, per-token
// latency and helix's speedup over tp (or --json: "exactness", "sharded_exactness", "agents" as
// `helix run --json` prints it, "decode" as `helix bench decode --json` prints it,
// "helix_speedup_vs_tp").
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// Returns the process exit code (0 ok, 1 an exactness check or an agent request failed or a
/// runtime error, 2 usage or a context that does not fit in memory). Report on `out`, progress
/// lines on `err`.
int run_demo(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
