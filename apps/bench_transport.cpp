#include "apps/bench_transport.hpp"

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <span>
#include <thread>

#include <unistd.h>

#include <fmt/format.h>

#include "apps/cli_args.hpp"
#include "core/memory.hpp"
#include "core/tensor.hpp"
#include "transport/netns.hpp"
#include "transport/transport.hpp"
#include "transport/ucx_fabric.hpp"

namespace helix::apps {
namespace {

namespace tr = helix::transport;

constexpr const char* bench_usage =
    "usage: helix bench transport [options]\n"
    "  all_to_all (send and receive buffers) and all_to_all_in_place (one buffer from\n"
    "  fabric::allocate; on one host the pairs swap their slices in shared memory) and\n"
    "  all_reduce, 2 ranks, against memcpy on 2 threads.\n"
    "  --iterations N   timed iterations per decode-sized case (default 200; --quick 20)\n"
    "  --quick          20 iterations and 16 MiB as the only large size\n"
    "  --backends LIST  any of local,memcpy,ucx-shm,ucx-shm-no-mm-eh,ucx-tcp,ucx-shm-no-one-copy\n"
    "                   (default all but ucx-shm-no-one-copy; ucx-tcp needs root for its\n"
    "                   network namespaces, else it is skipped)\n"
    "  --json           JSON on stdout instead of a table\n";

constexpr int world_size = 2;
// The order backends run in: every fork_ranks before this process starts a thread of its own.
constexpr const char* backend_order[] = {
    "ucx-shm", "ucx-shm-no-one-copy", "ucx-shm-no-mm-eh", "ucx-tcp", "local", "memcpy"};
// A collective that takes this long is broken, not slow: fail it instead of hanging the bench.
constexpr std::chrono::milliseconds call_timeout{60000};
constexpr std::chrono::milliseconds fork_timeout{600000};
constexpr std::size_t kib = std::size_t{1} << 10;
constexpr std::size_t mib = std::size_t{1} << 20;

enum class bench_op { all_to_all, all_to_all_in_place, all_reduce, memcpy };

std::string_view op_name(bench_op op) {
  switch (op) {
    case bench_op::all_to_all:
      return "all_to_all";
    case bench_op::all_to_all_in_place:
      return "all_to_all_in_place";
    case bench_op::all_reduce:
      return "all_reduce";
    case bench_op::memcpy:
      return "memcpy";
  }
  return "?";
}

std::string size_label(std::size_t bytes) {
  if (bytes >= mib && bytes % mib == 0) return fmt::format("{} MiB", bytes / mib);
  if (bytes >= kib && bytes % kib == 0) return fmt::format("{} KiB", bytes / kib);
  return fmt::format("{} B", bytes);
}

struct case_spec {
  bench_op op = bench_op::all_to_all;
  std::size_t bytes = 0;  // one rank's (thread's) buffer
  int iterations = 0;
  int warmup = 0;
};

// One rank's (or thread's) timed iterations, in nanoseconds: [case][iteration].
using rank_times = std::vector<std::vector<std::int64_t>>;

std::int64_t elapsed_ns(std::chrono::steady_clock::time_point t0,
                        std::chrono::steady_clock::time_point t1) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count();
}

// What rank `rank` of `size` must hold after the last iteration (see measure_rank's fill). In
// place, each call swaps the slices back: after an even number of calls the buffer holds its
// own fill again.
status check_received(const case_spec& c, int rank, int size, const unsigned char* recv) {
  if (c.op == bench_op::all_reduce) {
    const auto* v = reinterpret_cast<const float*>(recv);
    const std::size_t n = c.bytes / sizeof(float);
    const auto want = static_cast<float>(size * (size + 1) / 2);
    if (v[0] != want || v[n - 1] != want) {
      return internal_error("rank {}: all_reduce of {} gave {} and {}, expected {}", rank,
                            size_label(c.bytes), v[0], v[n - 1], want);
    }
    return ok_status();
  }
  const std::size_t slice = c.bytes / static_cast<std::size_t>(size);
  const unsigned char* b = recv;
  const bool swapped_back =
      c.op == bench_op::all_to_all_in_place && (c.warmup + c.iterations) % 2 == 0;
  for (int peer = 0; peer < size; ++peer) {
    const std::size_t first = static_cast<std::size_t>(peer) * slice;
    const auto want = static_cast<unsigned char>((swapped_back ? rank : peer) + 1);
    if (b[first] != want || b[first + slice - 1] != want) {
      return internal_error("rank {}: all_to_all of {}: slice from rank {} holds {}, expected {}",
                            rank, size_label(c.bytes), peer, b[first], want);
    }
  }
  return ok_status();
}

// Runs every case on one rank: each iteration is a barrier, then the timed call. Send buffers
// hold rank + 1 (bytes, or f32 for all_reduce) so that the result can be checked. In place: one
// buffer from the fabric (fabric::allocate), send and receive at once.
expected<rank_times> measure_rank(tr::fabric& fab, tr::communicator& comm,
                                  std::span<const case_spec> cases) {
  const int rank = comm.rank();
  const int size = comm.size();
  rank_times out;
  for (const case_spec& c : cases) {
    const bool in_place = c.op == bench_op::all_to_all_in_place;
    HELIX_ASSIGN_OR_RETURN(buffer send, buffer::try_host(in_place ? 0 : c.bytes));
    HELIX_ASSIGN_OR_RETURN(buffer recv, buffer::try_host(in_place ? 0 : c.bytes));
    HELIX_ASSIGN_OR_RETURN(tr::fabric_buffer shared, fab.allocate(in_place ? c.bytes : 0));
    tr::send_buf sb{send.data(), c.bytes, tr::wire_type::bytes};
    tr::recv_buf rb{recv.data(), c.bytes, tr::wire_type::bytes};
    if (in_place) {
      sb.data = shared.data();
      rb.data = shared.data();
      std::memset(shared.data(), rank + 1, c.bytes);
    } else if (c.op == bench_op::all_reduce) {
      std::fill_n(send.as<float>(), c.bytes / sizeof(float), static_cast<float>(rank + 1));
      sb = {send.data(), c.bytes / sizeof(float), tr::wire_type::f32};
      rb = {recv.data(), c.bytes / sizeof(float), tr::wire_type::f32};
    } else {
      std::memset(send.data(), rank + 1, c.bytes);
    }
    std::vector<std::int64_t> ns;
    ns.reserve(static_cast<std::size_t>(c.iterations));
    for (int i = 0; i < c.warmup + c.iterations; ++i) {
      HELIX_RETURN_IF_ERROR(comm.barrier());
      const auto t0 = std::chrono::steady_clock::now();
      const status st =
          c.op == bench_op::all_reduce ? comm.all_reduce(sb, rb) : comm.all_to_all(sb, rb);
      const auto t1 = std::chrono::steady_clock::now();
      if (!st.ok()) {
        return st.with_context(
            fmt::format("rank {}: {} of {}", rank, op_name(c.op), size_label(c.bytes)));
      }
      if (i >= c.warmup) ns.push_back(elapsed_ns(t0, t1));
    }
    HELIX_RETURN_IF_ERROR(check_received(
        c, rank, size,
        static_cast<const unsigned char*>(in_place ? static_cast<void*>(shared.data())
                                                   : recv.data())));
    out.push_back(std::move(ns));
  }
  return out;
}

// Per iteration the slowest rank's time; then p50, p99 (nearest rank) and the rate.
transport_case_result summarize(const std::string& backend, const case_spec& c,
                                const std::vector<rank_times>& ranks, std::size_t case_idx) {
  std::vector<double> us(static_cast<std::size_t>(c.iterations), 0.0);
  for (const rank_times& r : ranks) {
    const std::vector<std::int64_t>& t = r[case_idx];
    for (std::size_t i = 0; i < us.size() && i < t.size(); ++i) {
      us[i] = std::max(us[i], static_cast<double>(t[i]) / 1e3);
    }
  }
  std::sort(us.begin(), us.end());
  transport_case_result res;
  res.backend = backend;
  res.op = std::string(op_name(c.op));
  res.bytes = c.bytes;
  res.iterations = c.iterations;
  const std::size_t n = us.size();
  res.p50_us = n % 2 == 1 ? us[n / 2] : 0.5 * (us[n / 2 - 1] + us[n / 2]);
  res.p99_us = us[static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(n))) - 1];
  const double p50_s = res.p50_us / 1e6;
  const auto w = static_cast<double>(world_size);
  const auto bytes = static_cast<double>(c.bytes);
  if (p50_s > 0.0 && (c.op == bench_op::all_to_all || c.op == bench_op::all_to_all_in_place)) {
    res.bytes_per_s = w * bytes * (w - 1) / w / p50_s;
  } else if (p50_s > 0.0 && c.op == bench_op::memcpy) {
    res.bytes_per_s = w * bytes / p50_s;
  }
  return res;
}

void print_case(std::ostream& progress, const transport_case_result& r) {
  progress << fmt::format(
      "  {:<10} {:>7}: p50 {:.1f} us, p99 {:.1f} us{}\n", r.op, size_label(r.bytes), r.p50_us,
      r.p99_us, r.bytes_per_s ? fmt::format(", {:.2f} GB/s", *r.bytes_per_s / 1e9) : std::string());
  progress.flush();
}

// Ranks as threads of this process.
expected<std::vector<rank_times>> run_local(std::span<const case_spec> cases) {
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<tr::fabric> fab,
                         tr::make_local_fabric({world_size, call_timeout}));
  std::vector<rank_times> times(world_size);
  std::vector<status> results(world_size);
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      auto comm = fab->make_world(r);
      if (!comm) {
        results[static_cast<std::size_t>(r)] = comm.error();
        fab->abort(comm.error());
        return;
      }
      auto t = measure_rank(*fab, **comm, cases);
      if (!t) {
        results[static_cast<std::size_t>(r)] = t.error();
        fab->abort(t.error());  // the other rank must not wait for this one
        return;
      }
      times[static_cast<std::size_t>(r)] = std::move(*t);
    });
  }
  for (std::thread& t : threads) t.join();
  for (const status& st : results) HELIX_RETURN_IF_ERROR(st);
  return times;
}

// The baseline: `world_size` threads, each copying its own buffer; an iteration starts on a
// barrier and lasts as long as the slower copy.
expected<std::vector<rank_times>> run_memcpy(std::span<const case_spec> cases) {
  std::vector<rank_times> times(world_size);
  for (const case_spec& c : cases) {
    std::vector<buffer> src;
    std::vector<buffer> dst;
    for (int t = 0; t < world_size; ++t) {
      HELIX_ASSIGN_OR_RETURN(buffer s, buffer::try_host(c.bytes));
      HELIX_ASSIGN_OR_RETURN(buffer d, buffer::try_host(c.bytes));
      std::memset(s.data(), t + 1, c.bytes);
      src.push_back(std::move(s));
      dst.push_back(std::move(d));
    }
    std::barrier sync(world_size);
    std::vector<std::thread> threads;
    for (int t = 0; t < world_size; ++t) {
      threads.emplace_back([&, t] {
        const auto ti = static_cast<std::size_t>(t);
        std::vector<std::int64_t> ns;
        ns.reserve(static_cast<std::size_t>(c.iterations));
        for (int i = 0; i < c.warmup + c.iterations; ++i) {
          sync.arrive_and_wait();
          const auto t0 = std::chrono::steady_clock::now();
          std::memcpy(dst[ti].data(), src[ti].data(), c.bytes);
          const auto t1 = std::chrono::steady_clock::now();
          if (i >= c.warmup) ns.push_back(elapsed_ns(t0, t1));
        }
        times[ti].push_back(std::move(ns));
      });
    }
    for (std::thread& th : threads) th.join();
    for (int t = 0; t < world_size; ++t) {
      const auto* d = dst[static_cast<std::size_t>(t)].as<const unsigned char>();
      if (d[0] != t + 1 || d[c.bytes - 1] != t + 1) {
        return internal_error("memcpy thread {}: {} copied wrongly", t, size_label(c.bytes));
      }
    }
  }
  return times;
}

// The JSON a rank process sends back: {"transports":{"<peer>":"..."},"ns":[[...],...]}. The
// transports are read before the run, while every endpoint is certainly up; the closing barrier
// keeps a rank that finished first from closing its endpoints under a peer still measuring.
expected<std::string> ucx_rank_body(int rank, tr::ucx_fabric& fab,
                                    std::span<const case_spec> cases) {
  nlohmann::json j = {{"transports", nlohmann::json::object()}};
  for (int peer = 0; peer < fab.world_size(); ++peer) {
    if (peer != rank) j["transports"][std::to_string(peer)] = fab.transports_to(peer);
  }
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<tr::communicator> comm, fab.make_world(rank));
  HELIX_ASSIGN_OR_RETURN(rank_times t, measure_rank(fab, *comm, cases));
  HELIX_RETURN_IF_ERROR(comm->barrier());
  j["ns"] = std::move(t);
  return j.dump();
}

// Parses one rank's text into its times and its links; internal for malformed text.
status parse_rank_text(const tr::rank_outcome& o, std::size_t num_cases, rank_times& times,
                       transport_backend_result& br) {
  const nlohmann::json j = nlohmann::json::parse(o.text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object() || !j.contains("ns") || !j["ns"].is_array() ||
      j["ns"].size() != num_cases) {
    return internal_error("rank {} (pid {}) sent malformed timings: {}", o.rank, o.pid,
                          o.text.substr(0, 200));
  }
  for (const nlohmann::json& per_case : j["ns"]) {
    std::vector<std::int64_t> ns;
    for (const nlohmann::json& v : per_case) {
      if (!v.is_number_integer()) return internal_error("rank {}: non-integer timing", o.rank);
      ns.push_back(v.get<std::int64_t>());
    }
    times.push_back(std::move(ns));
  }
  if (j.contains("transports") && j["transports"].is_object()) {
    for (const auto& [peer, tls] : j["transports"].items()) {
      br.transports.push_back(
          {o.rank, std::atoi(peer.c_str()), tls.is_string() ? tls.get<std::string>() : ""});
    }
  }
  return ok_status();
}

// UCX prints its log lines on stdout unless told otherwise; in the rank processes they would mix
// with the report on our stdout. The ranks inherit this process's descriptors, so while they are
// forked and run, descriptor 1 is a copy of descriptor 2. This process itself prints nothing on
// stdout meanwhile (its report comes at the end).
class ranks_stdout_to_stderr {
 public:
  ranks_stdout_to_stderr() {
    std::cout.flush();
    std::fflush(stdout);
    saved_ = ::dup(1);
    if (saved_ >= 0) ::dup2(2, 1);
  }
  ranks_stdout_to_stderr(const ranks_stdout_to_stderr&) = delete;
  ranks_stdout_to_stderr& operator=(const ranks_stdout_to_stderr&) = delete;
  ~ranks_stdout_to_stderr() {
    if (saved_ < 0) return;
    std::fflush(stdout);
    ::dup2(saved_, 1);
    ::close(saved_);
  }

 private:
  int saved_ = -1;
};

// Ranks as child processes through fork_ranks (in `netns` when given).
expected<std::vector<rank_times>> run_ucx(const tr::ucx_fabric_options& fabric,
                                          const std::vector<std::string>& netns,
                                          std::span<const case_spec> cases,
                                          transport_backend_result& br) {
  tr::fork_ranks_options fo;
  fo.fabric = fabric;
  fo.fabric.world_size = world_size;
  fo.fabric.default_timeout = call_timeout;
  fo.netns = netns;
  fo.timeout = fork_timeout;
  expected<std::vector<tr::rank_outcome>> forked = internal_error("fork_ranks did not run");
  {
    const ranks_stdout_to_stderr redirect;
    forked = tr::fork_ranks(
        fo, [cases](int rank, tr::ucx_fabric& fab) { return ucx_rank_body(rank, fab, cases); });
  }
  HELIX_ASSIGN_OR_RETURN(const std::vector<tr::rank_outcome> outcomes, std::move(forked));
  std::vector<rank_times> times(world_size);
  std::vector<bool> seen(world_size, false);
  for (const tr::rank_outcome& o : outcomes) {
    if (o.rank < 0 || o.rank >= world_size) return internal_error("outcome of rank {}", o.rank);
    if (!o.result.ok()) {
      return o.result.with_context(fmt::format("rank {} (pid {})", o.rank, o.pid));
    }
    const auto r = static_cast<std::size_t>(o.rank);
    HELIX_RETURN_IF_ERROR(parse_rank_text(o, cases.size(), times[r], br));
    seen[r] = true;
  }
  for (int r = 0; r < world_size; ++r) {
    if (!seen[static_cast<std::size_t>(r)]) return internal_error("rank {} reported nothing", r);
  }
  std::sort(br.transports.begin(), br.transports.end(),
            [](const auto& a, const auto& b) { return a.rank < b.rank; });
  return times;
}

// The cases of one backend: decode-sized latency cases, then the large sizes that fit.
std::vector<case_spec> backend_cases(const bench_transport_options& o, bool memcpy_op,
                                     const std::vector<std::size_t>& large) {
  const int warmup = std::max(2, o.iterations / 10);
  std::vector<case_spec> cases;
  for (const std::size_t s : o.small_sizes) {
    if (memcpy_op) {
      cases.push_back({bench_op::memcpy, s, o.iterations, warmup});
    } else {
      cases.push_back({bench_op::all_to_all, s, o.iterations, warmup});
      cases.push_back({bench_op::all_to_all_in_place, s, o.iterations, warmup});
      cases.push_back({bench_op::all_reduce, s, o.iterations, warmup});
    }
  }
  for (const std::size_t s : large) {
    if (memcpy_op) {
      cases.push_back({bench_op::memcpy, s, o.large_iterations, 1});
    } else {
      cases.push_back({bench_op::all_to_all, s, o.large_iterations, 1});
      cases.push_back({bench_op::all_to_all_in_place, s, o.large_iterations, 1});
    }
  }
  return cases;
}

// One backend, start to finish: its runner, the outcome in `br`, its cases into `report`.
void run_backend(const std::string& name, const bench_transport_options& o,
                 const std::vector<std::size_t>& large, bench_transport_report& report,
                 std::ostream& progress) {
  transport_backend_result br;
  br.name = name;
  const std::vector<case_spec> cases = backend_cases(o, name == "memcpy", large);
  expected<std::vector<rank_times>> times = internal_error("backend {} did not run", name);
  if (name == "local") {
    progress << "local: 2 ranks as threads (make_local_fabric)\n";
    progress.flush();
    times = run_local(cases);
  } else if (name == "memcpy") {
    progress << "memcpy: 2 threads, each copying its own buffer\n";
    progress.flush();
    times = run_memcpy(cases);
  } else {
    tr::ucx_fabric_options fabric;
    fabric.shm_error_handling = name != "ucx-shm-no-mm-eh";
    fabric.one_copy = name != "ucx-shm-no-one-copy";
    br.shm_error_handling = fabric.shm_error_handling;
    br.one_copy = fabric.one_copy;
    std::optional<tr::netns_hosts> hosts;
    if (name == "ucx-tcp") {
      auto made = tr::netns_hosts::create(world_size);
      if (!made) {
        br.status = made.error().code() == errc::failed_precondition ? "skipped" : "failed";
        br.reason = made.error().message();
        progress << fmt::format("{}: {}: {}\n", name, br.status, br.reason);
        progress.flush();
        report.backends.push_back(std::move(br));
        return;
      }
      hosts.emplace(std::move(*made));
      fabric.transports = "tcp";
      fabric.net_devices = hosts->host(0).device;  // every host's device has the same name
      br.netns = hosts->netns_names();
    }
    br.ucx_tls = fabric.transports;
    br.net_devices = fabric.net_devices;
    progress << fmt::format(
        "{}: 2 ranks as processes (fork_ranks){}, UCX transports {}, error handling mode PEER, "
        "shm_error_handling {}, one copy {}\n",
        name, hosts ? fmt::format(" in namespaces {} and {}", br.netns[0], br.netns[1]) : "",
        fabric.transports.empty() ? "chosen by UCX" : fabric.transports,
        fabric.shm_error_handling ? "on" : "off", fabric.one_copy ? "on" : "off");
    progress.flush();
    times = run_ucx(fabric, br.netns, cases, br);
    for (const auto& l : br.transports) {
      progress << fmt::format("  rank {} -> {}: {}\n", l.rank, l.peer, l.transports);
    }
  }
  if (!times) {
    br.status = "failed";
    br.reason = times.error().to_string();
    progress << fmt::format("{}: failed: {}\n", name, br.reason);
    progress.flush();
    report.backends.push_back(std::move(br));
    return;
  }
  for (std::size_t i = 0; i < cases.size(); ++i) {
    report.results.push_back(summarize(name, cases[i], *times, i));
    print_case(progress, report.results.back());
  }
  report.backends.push_back(std::move(br));
}

// Large sizes whose buffers fit (4 buffers of the size, plus a quarter); notes for the rest.
std::vector<std::size_t> fitting_large_sizes(const bench_transport_options& o,
                                             bench_transport_report& report,
                                             std::ostream& progress) {
  memory_headroom headroom = available_memory();
  if (o.memory_limit_bytes != 0) headroom = {o.memory_limit_bytes, "memory_limit_bytes"};
  std::vector<std::size_t> fit;
  for (const std::size_t s : o.large_sizes) {
    const std::uint64_t need = std::uint64_t{4} * s + s;
    if (need <= headroom.bytes) {
      fit.push_back(s);
      continue;
    }
    std::string reason = fmt::format("needs {} (4 buffers of {} and a quarter), {} available ({})",
                                     format_bytes(need), size_label(s),
                                     format_bytes(headroom.bytes), headroom.limited_by);
    progress << fmt::format("skipping {}: {}\n", size_label(s), reason);
    report.skipped_sizes.push_back({s, std::move(reason)});
  }
  return fit;
}

nlohmann::json optional_json(const std::optional<double>& v) {
  return v ? nlohmann::json(*v) : nlohmann::json(nullptr);
}

}  // namespace

expected<bench_transport_options> parse_bench_transport_args(const std::vector<std::string>& args) {
  HELIX_ASSIGN_OR_RETURN(const cli_args cli, cli_args::parse(args, {"json", "quick", "help"}));
  HELIX_RETURN_IF_ERROR(cli.check_known({"json", "quick", "iterations", "backends", "help"}));
  bench_transport_options o;
  o.json = cli.has("json");
  o.quick = cli.has("quick");
  HELIX_ASSIGN_OR_RETURN(const std::int64_t iterations,
                         cli.get_int("iterations", o.quick ? 20 : 200));
  if (iterations < 1 || iterations > 1000000) {
    return invalid_argument("--iterations must be in [1, 1000000], got {}", iterations);
  }
  o.iterations = static_cast<int>(iterations);
  o.large_iterations = std::max(3, o.iterations / 20);
  o.small_sizes = {1 * kib, 4 * kib, 16 * kib, 64 * kib};
  o.large_sizes = o.quick ? std::vector<std::size_t>{16 * mib}
                          : std::vector<std::size_t>{16 * mib, 64 * mib, 256 * mib};
  // Selected backends, in run order whatever order they were named in.
  const std::string list = cli.get_or("backends", "local,memcpy,ucx-shm,ucx-shm-no-mm-eh,ucx-tcp");
  std::vector<std::string> named;
  for (std::size_t start = 0; start <= list.size();) {
    const std::size_t comma = std::min(list.find(',', start), list.size());
    std::string name = list.substr(start, comma - start);
    if (std::find(std::begin(backend_order), std::end(backend_order), name) ==
        std::end(backend_order)) {
      return invalid_argument(
          "--backends: '{}' is not one of local, memcpy, ucx-shm, ucx-shm-no-mm-eh, ucx-tcp, "
          "ucx-shm-no-one-copy",
          name);
    }
    named.push_back(std::move(name));
    start = comma + 1;
  }
  for (const char* b : backend_order) {
    if (std::find(named.begin(), named.end(), b) != named.end()) o.backends.emplace_back(b);
  }
  return o;
}

expected<bench_transport_report> run_bench_transport_cases(const bench_transport_options& o,
                                                           std::ostream& progress) {
  bench_transport_report report;
  memory_headroom headroom = available_memory();
  if (o.memory_limit_bytes != 0) headroom = {o.memory_limit_bytes, "memory_limit_bytes"};
  // Decode-sized cases need a few hundred KiB; refusing here keeps the report meaningful.
  const std::uint64_t small_need = std::uint64_t{4} * o.small_sizes.back() * 2;
  if (headroom.bytes < small_need) {
    return resource_exhausted("only {} available ({}); the decode-sized cases need {}",
                              format_bytes(headroom.bytes), headroom.limited_by,
                              format_bytes(small_need));
  }
  const std::vector<std::size_t> large = fitting_large_sizes(o, report, progress);
  for (const std::string& name : o.backends) run_backend(name, o, large, report, progress);

  // Large all_to_all against memcpy at the same size, per backend; the headline for ucx-shm.
  for (transport_case_result& r : report.results) {
    if (r.op.rfind("all_to_all", 0) != 0 || r.op == "all_to_all_v" || !r.bytes_per_s ||
        std::find(large.begin(), large.end(), r.bytes) == large.end()) {
      continue;
    }
    const auto m = std::find_if(report.results.begin(), report.results.end(), [&](const auto& x) {
      return x.backend == "memcpy" && x.bytes == r.bytes && x.bytes_per_s;
    });
    if (m != report.results.end()) r.vs_memcpy = *r.bytes_per_s / *m->bytes_per_s;
  }
  for (const transport_case_result& r : report.results) {
    if (r.backend != "ucx-shm" || !r.vs_memcpy) continue;
    if (!report.large_all_to_all_bytes || r.bytes > *report.large_all_to_all_bytes) {
      report.large_all_to_all_bytes = r.bytes;
      report.large_all_to_all_vs_memcpy.reset();
      report.large_all_to_all_out_of_place_vs_memcpy.reset();
    }
    if (r.bytes != *report.large_all_to_all_bytes) continue;
    (r.op == "all_to_all_in_place" ? report.large_all_to_all_vs_memcpy
                                   : report.large_all_to_all_out_of_place_vs_memcpy) = r.vs_memcpy;
  }
  return report;
}

nlohmann::json transport_report_json(const bench_transport_options& o,
                                     const bench_transport_report& r) {
  nlohmann::json j = {{"world_size", world_size},
                      {"iterations", o.iterations},
                      {"large_iterations", o.large_iterations},
                      {"ucx_error_handling", "peer"},
                      {"backends", nlohmann::json::array()},
                      {"results", nlohmann::json::array()},
                      {"skipped_sizes", nlohmann::json::array()}};
  for (const transport_backend_result& b : r.backends) {
    nlohmann::json jb = {{"name", b.name}, {"status", b.status}, {"reason", b.reason}};
    if (b.shm_error_handling) {
      jb["shm_error_handling"] = *b.shm_error_handling;
      jb["one_copy"] = b.one_copy.value_or(false);
      jb["ucx_tls"] = b.ucx_tls;
      jb["net_devices"] = b.net_devices;
      jb["netns"] = b.netns;
      jb["transports"] = nlohmann::json::array();
      for (const auto& l : b.transports) {
        jb["transports"].push_back(
            {{"rank", l.rank}, {"peer", l.peer}, {"transports", l.transports}});
      }
    }
    j["backends"].push_back(std::move(jb));
  }
  for (const transport_case_result& c : r.results) {
    j["results"].push_back({{"backend", c.backend},
                            {"op", c.op},
                            {"bytes", c.bytes},
                            {"iterations", c.iterations},
                            {"p50_us", c.p50_us},
                            {"p99_us", c.p99_us},
                            {"bytes_per_s", optional_json(c.bytes_per_s)},
                            {"vs_memcpy", optional_json(c.vs_memcpy)}});
  }
  for (const auto& s : r.skipped_sizes) {
    j["skipped_sizes"].push_back({{"bytes", s.bytes}, {"reason", s.reason}});
  }
  j["large_all_to_all_bytes"] = r.large_all_to_all_bytes ? nlohmann::json(*r.large_all_to_all_bytes)
                                                         : nlohmann::json(nullptr);
  j["large_all_to_all_vs_memcpy"] = optional_json(r.large_all_to_all_vs_memcpy);
  j["large_all_to_all_out_of_place_vs_memcpy"] =
      optional_json(r.large_all_to_all_out_of_place_vs_memcpy);
  return j;
}

void print_transport_table(std::ostream& out, const bench_transport_options& o,
                           const bench_transport_report& r) {
  out << fmt::format(
      "transport data plane, {} ranks. Latency: p50/p99 over {} iterations (large sizes: {}), "
      "slowest rank per iteration.\nRates: all_to_all = bytes received from peers per second, "
      "summed over ranks; memcpy = bytes copied per second, summed over {} threads.\n"
      "UCX fabrics run with error handling mode PEER; shm_error_handling on unless named "
      "no-mm-eh; one copy (process_vm_readv) for large messages on one host unless named "
      "no-one-copy.\n\n",
      world_size, o.iterations, o.large_iterations, world_size);
  out << fmt::format("{:<18} {:<8} {}\n", "backend", "status", "UCX transports / reason");
  for (const transport_backend_result& b : r.backends) {
    std::string detail = b.reason;
    for (const auto& l : b.transports) {
      if (!detail.empty()) detail += "; ";
      detail += fmt::format("{}->{}: {}", l.rank, l.peer, l.transports);
    }
    out << fmt::format("{:<18} {:<8} {}\n", b.name, b.status, detail.empty() ? "-" : detail);
  }
  out << fmt::format("\n{:<18} {:<19} {:>8} {:>10} {:>10} {:>9} {:>9}\n", "backend", "op", "size",
                     "p50 us", "p99 us", "GB/s", "vs memcpy");
  for (const transport_case_result& c : r.results) {
    out << fmt::format("{:<18} {:<19} {:>8} {:>10.1f} {:>10.1f} {:>9} {:>9}\n", c.backend, c.op,
                       size_label(c.bytes), c.p50_us, c.p99_us,
                       c.bytes_per_s ? fmt::format("{:.2f}", *c.bytes_per_s / 1e9) : "-",
                       c.vs_memcpy ? fmt::format("{:.2f}", *c.vs_memcpy) : "-");
  }
  for (const auto& s : r.skipped_sizes) {
    out << fmt::format("skipped {}: {}\n", size_label(s.bytes), s.reason);
  }
  if (r.large_all_to_all_vs_memcpy) {
    out << fmt::format(
        "\nlarge all_to_all vs memcpy ({}): ucx-shm reaches {:.2f}x memcpy in place on fabric "
        "buffers, {} out of place\n",
        size_label(*r.large_all_to_all_bytes), *r.large_all_to_all_vs_memcpy,
        r.large_all_to_all_out_of_place_vs_memcpy
            ? fmt::format("{:.2f}x", *r.large_all_to_all_out_of_place_vs_memcpy)
            : std::string("-"));
  } else {
    out << "\nlarge all_to_all vs memcpy: not measured (needs ucx-shm and memcpy)\n";
  }
}

int run_bench_transport(const std::vector<std::string>& args, std::ostream& out,
                        std::ostream& err) {
  if (std::find(args.begin(), args.end(), "--help") != args.end()) {
    out << bench_usage;
    return 0;
  }
  auto opts = parse_bench_transport_args(args);
  if (!opts) {
    err << "error: " << opts.error().message() << "\n" << bench_usage;
    return 2;
  }
  auto report = run_bench_transport_cases(*opts, err);
  if (!report) {
    err << "error: " << report.error().to_string() << "\n";
    return report.error().code() == errc::resource_exhausted ? 2 : 1;
  }
  if (opts->json) {
    out << transport_report_json(*opts, *report).dump(2) << "\n";
  } else {
    print_transport_table(out, *opts, *report);
  }
  const bool failed = std::any_of(report->backends.begin(), report->backends.end(),
                                  [](const auto& b) { return b.status == "failed"; });
  return failed ? 1 : 0;
}

}  // namespace helix::apps
