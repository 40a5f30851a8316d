// `helix bench serve`: a load generator for an OpenAI-compatible completions server (helix
// serve, or any server that streams token_ids as vLLM's return_token_ids does), reporting what
// `vllm bench serve` reports.
//
// Requests arrive as a seeded Poisson process (--rate per second; inf: all at once), at most
// --max-concurrency in flight; each streams a completion of a seeded token-id prompt whose
// length is uniform in [prompt * (1 - spread), prompt * (1 + spread)] (likewise max_tokens, with
// ignore of stop tokens left to the server: none are sent). Times are taken per streamed token
// chunk: TTFT (send to first token), ITL (between tokens), TPOT (per request: (last - first) /
// (tokens - 1)), E2E (send to the last event). Goodput: requests per second that met both SLOs
// (--slo-ttft-ms, --slo-tpot-ms). Errors are counted by kind (HTTP status, connection, stream).
//
// JSON: {"url","model","requests","completed","failed","errors":{kind: n},"duration_s",
//        "request_throughput","output_token_throughput","total_token_throughput",
//        "goodput","slo":{"ttft_ms","tpot_ms"},"ttft_ms":{p},"tpot_ms":{p},"itl_ms":{p},
//        "e2e_ms":{p},"prompt_tokens","output_tokens","seed","rate"}; p = {"p50","p90","p99",
//        "mean","count"}.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// Exit code: 0 every request completed, 1 some failed or the server is unreachable, 2 usage.
int run_bench_serve(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
