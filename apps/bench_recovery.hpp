// `helix bench recovery`: what a worker's death costs, rebuilding only the lost KV blocks against
// a full replay, side by side in one run on the same workload.
//
// Workers are `helix worker` processes (cluster::spawned_workers, --processes N, default 4, plus
// --standby K standbys). Each run: --batch requests, each over --context tokens of seeded
// synthetic KV (the engine's benchmark seam) and a --prompt-token prompt, generate --max-tokens
// greedily; when the first request has generated --kill-after tokens, the worker at rank --victim
// is killed with SIGKILL and the engine recovers (engine_config::recovery). Three runs: without a
// kill (the reference tokens), with recovery = lost_blocks, with recovery = full_replay; every
// request's tokens must equal the reference in both (else the command fails).
//
// Reported per run: the engine's recovery phases (detect, re-plan, weight reload, KV rebuild, in
// ms), the blocks kept and rebuilt and the positions rebuilt. lost_blocks_ms and full_replay_ms
// are the KV rebuild phase of each (from the workers' restore until every request's lost KV is
// back: what the two modes do differently), speedup their ratio; total_speedup compares the
// whole recoveries (detection to rebuilt KV; weight reload is the same work in both).
//
// Flags: --model NAME (default small-llama), --processes N (default 4), --standby K (default 0),
// --layout TEXT (default: helix's default for N ranks), --context N (K/M suffixes, default 16K),
// --batch N (default 2), --prompt N (default 16), --max-tokens N (default 32), --kill-after N
// (default 8), --victim RANK (default 1), --kv-dtype bf16|f32 (default bf16), --json, --help.
//
// JSON: {"model","context","batch","processes","standbys","layout","victim","kill_after_tokens",
//        "kv_fill":"synthetic","lost_blocks":{run},"full_replay":{run},"lost_blocks_ms",
//        "full_replay_ms","speedup","total_speedup","outputs_equal"}; run = {"mode",
//        "layout_after","detect_ms","replan_ms","reload_ms","rebuild_ms","total_ms",
//        "blocks_kept","blocks_moved","blocks_rebuilt","positions_rebuilt","victim_pid",
//        "wall_s"}.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// Exit code: 0 ok, 1 a run failed or the outputs differ, 2 usage errors.
int run_bench_recovery(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
