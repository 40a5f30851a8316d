// `helix bench transport`: the data plane the engine uses, backend against backend, in one run.
//
// Who calls it: apps/main.cpp (`helix bench transport`) and tests/apps/bench_transport_test.cpp.
//
// What it measures, on a world of 2 ranks:
//   local            ranks as threads of this process (make_local_fabric)
//   ucx-shm          ranks as 2 child processes (fork_ranks), UCX choosing its transports
//                    (shared memory on one host), shm_error_handling on, and the fabric's one
//                    copy for large messages: the receiver reads the sender's buffer with
//                    process_vm_readv (transport/ucx_fabric.hpp)
//   ucx-shm-no-one-copy  the same with one copy off: large messages go through UCX's
//                    shared-memory pipeline (two copies). Only when named in --backends.
//   ucx-shm-no-mm-eh the same with shm_error_handling off, to show what UCX 1.13 gives up when
//                    error handling mode PEER drops its shared-memory transports
//   ucx-tcp          2 child processes in 2 network namespaces joined by a veth pair
//                    (transport/netns.hpp), transports "tcp", net_devices the hosts' veth device;
//                    skipped with the reason where namespaces cannot be made (not root)
//   memcpy           2 threads, each copying its own buffer of the message size: the baseline
// Every UCX fabric runs with UCP error handling mode PEER (dead peers are detected, never a hang).
//
// Cases. "Size" is one rank's buffer: all_to_all sends and receives `size` bytes per rank (its
// own slice of size / 2 stays local), all_reduce sums size / 4 f32 values; all_to_all_in_place
// is the same exchange on one buffer from fabric::allocate (send == recv; between processes on
// one host the pair swaps its slices in shared memory). Decode-sized messages (1, 4, 16,
// 64 KiB): all_to_all (both forms) and all_reduce latency, p50 and p99 over --iterations
// (default 200; --quick 20) after a warm-up of a tenth of that (at least 2). Large messages (16,
// 64, 256 MiB; --quick 16 MiB only): all_to_all bandwidth, both forms, over max(3, iterations /
// 20) iterations after one warm-up. Each iteration starts with a barrier; its time is the
// slowest rank's (thread's) time for the call alone, and the percentiles are over iterations.
// Every rank checks the data it received after the last iteration.
//
// Rates. all_to_all (both forms): bytes received from peers per second, summed over ranks (each
// rank's own slice excluded): world_size * size * (world_size - 1) / world_size / p50. memcpy:
// bytes copied per second summed over the 2 threads: 2 * size / p50. large_all_to_all_vs_memcpy
// is ucx-shm's in-place all_to_all rate over memcpy's at the largest size both measured;
// large_all_to_all_out_of_place_vs_memcpy the same for the out-of-place form (at 2 ranks each
// rank also copies its own half there, which the rate excludes: at most about 0.5). These are
// ratios measured on a shared machine: reported, never asserted by tests.
//
// Memory: before a large size runs, the 4 buffers of that size (2 ranks x send + recv, or 2
// threads x source + destination) plus a quarter must fit in available_memory(); sizes that do
// not are skipped with a note.
//
// Processes: the UCX backends fork their ranks before this command starts any thread of its own
// (local and memcpy run after them), as fork_ranks requires. Rank processes send their timings
// back as the text their fork_ranks body returns (JSON, integer nanoseconds). Their stdout is
// this process's stderr, because UCX logs on stdout and would break the --json report.
//
// Flags: --json, --quick, --iterations N, --backends LIST (default
// local,memcpy,ucx-shm,ucx-shm-no-mm-eh,ucx-tcp; ucx-shm-no-one-copy on request), --help. Table on
// stdout by default, JSON with
// --json, progress lines on stderr. JSON shape:
//   {"world_size":2,"iterations","large_iterations","ucx_error_handling":"peer",
//    "backends":[{"name","status":"ok"|"skipped"|"failed","reason","shm_error_handling"?,"one_copy"?,
//                 "ucx_tls"?,"net_devices"?,"netns"?,"transports":[{"rank","peer","transports"}]}],
//    "results":[{"backend","op":"all_to_all"|"all_to_all_in_place"|"all_reduce"|"memcpy","bytes","iterations",
//                "p50_us","p99_us","bytes_per_s"(null for all_reduce),"vs_memcpy"(null or a
//                ratio, large all_to_all only)}],
//    "skipped_sizes":[{"bytes","reason"}],
//    "large_all_to_all_bytes": N or null, "large_all_to_all_vs_memcpy": ratio or null,
//    "large_all_to_all_out_of_place_vs_memcpy": ratio or null}
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.hpp"

namespace helix::apps {

struct bench_transport_options {
  bool json = false;
  bool quick = false;
  int iterations = 200;                  // timed iterations per decode-sized case
  int large_iterations = 10;             // timed iterations per large all_to_all
  std::vector<std::string> backends;     // in the order they run (UCX ones first)
  std::vector<std::size_t> small_sizes;  // bytes per rank
  std::vector<std::size_t> large_sizes;  // bytes per rank
  /// Memory the run may use; 0 means available_memory() (a test seam for the size check).
  std::uint64_t memory_limit_bytes = 0;
};

/// One (backend, op, size) measurement.
struct transport_case_result {
  std::string backend;
  std::string op;  // "all_to_all", "all_to_all_in_place", "all_reduce" or "memcpy"
  std::size_t bytes = 0;
  int iterations = 0;
  double p50_us = 0.0;
  double p99_us = 0.0;
  std::optional<double> bytes_per_s;  // see "Rates" above; none for all_reduce
  std::optional<double> vs_memcpy;    // large all_to_all: bytes_per_s over memcpy's
};

/// What one backend did: ok, skipped (not possible here; reason) or failed (error; reason).
struct transport_backend_result {
  std::string name;
  std::string status = "ok";
  std::string reason;
  std::optional<bool> shm_error_handling;  // UCX backends
  std::optional<bool> one_copy;            // UCX backends: ucx_fabric_options::one_copy
  std::string ucx_tls;                     // UCX backends: the transports asked for ("" = any)
  std::string net_devices;                 // ucx-tcp
  std::vector<std::string> netns;          // ucx-tcp: the ranks' namespaces
  struct link {
    int rank = 0;
    int peer = 0;
    std::string transports;  // ucx_fabric::transports_to(peer) on `rank`
  };
  std::vector<link> transports;
};

struct bench_transport_report {
  std::vector<transport_backend_result> backends;
  std::vector<transport_case_result> results;
  struct skipped_size {
    std::size_t bytes = 0;
    std::string reason;
  };
  std::vector<skipped_size> skipped_sizes;
  std::optional<std::size_t> large_all_to_all_bytes;
  std::optional<double> large_all_to_all_vs_memcpy;  // in place, on fabric buffers
  std::optional<double> large_all_to_all_out_of_place_vs_memcpy;
};

/// Parses the flags (after "bench transport"). invalid_argument naming the flag.
[[nodiscard]] expected<bench_transport_options> parse_bench_transport_args(
    const std::vector<std::string>& args);

/// Runs every backend in order; progress on `progress`. A backend that cannot run here is
/// "skipped", one whose ranks fail is "failed": both are in the report, not errors. Errors:
/// resource_exhausted when not even the decode-sized buffers fit.
[[nodiscard]] expected<bench_transport_report> run_bench_transport_cases(
    const bench_transport_options& o, std::ostream& progress);

[[nodiscard]] nlohmann::json transport_report_json(const bench_transport_options& o,
                                                   const bench_transport_report& r);
void print_transport_table(std::ostream& out, const bench_transport_options& o,
                           const bench_transport_report& r);

/// Runs the benchmark with its arguments (after "bench transport"). Returns the exit code: 0 ok
/// (skipped backends included), 2 bad usage (an `error: ...` line on `err`), 1 when a backend
/// failed (the report is still printed). Results go to `out`, progress lines to `err`.
int run_bench_transport(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace helix::apps
