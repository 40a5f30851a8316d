// `helix bench attention`: how close decode attention on the CPU comes to the memory bandwidth.
//
// Decodes one query token (one layer, all of the model's query and KV heads on one worker) against
// a KV cache of --context tokens filled with seeded synthetic values (rng_purpose::synthetic_kv;
// reported as "kv_fill": "synthetic"), for each (kv dtype, thread count). Each case times the
// optimised CPU attention kernel and, in the same run and alternating with it, a vectorised
// streaming read (an integer sum; with 512-bit and with 256-bit loads, the faster median counts)
// of the same bytes on the same number of threads; it reports the medians, the achieved KV
// bytes/s, the stream's bytes/s and their ratio.
//
// Flags: --model NAME (default small-llama), --context N (default 1M; K/M/G suffixes),
// --kv-dtype LIST (default bf16,fp8_e4m3), --threads LIST (default 1,all), --repeats N (default 5),
// --mla-context N (default 16K) or --no-mla, --json, --help.
//
// MLA (compute-bound): one deepseek-r1 case (bf16 KV, --mla-context tokens) per thread setting,
// each appended to "results" with "model": "deepseek-r1" and "flops_per_s"; the "mla" key holds
// the case with the most threads. JSON shape:
//   {"kv_fill":"synthetic","context":N,"block_tokens":16,"isa":"avx512",
//    "results":[{"model","kv_dtype","threads","context","kv_bytes","kv_bytes_per_s",
//                "stream_bytes_per_s","ratio","ms"[,"flops_per_s"]}, ...],
//    "mla":{...one result...}}
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace helix::apps {

/// Runs the benchmark with its arguments (after "bench attention"). Returns the exit code:
/// 0 ok, 2 bad usage (an `error: ...` line on `err`), 1 a kernel failure. Results go to `out`,
/// progress lines to `err`.
int run_bench_attention(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

/// The same on std::cout / std::cerr.
int run_bench_attention(const std::vector<std::string>& args);

}  // namespace helix::apps
