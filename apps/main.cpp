// helix: the command-line program. Subcommands print human-readable output by default and JSON
// with --json; errors go to stderr with a non-zero exit code.
#include <iostream>
#include <string>
#include <vector>

#include "apps/bench_attention.hpp"
#include "apps/bench_decode.hpp"
#include "apps/bench_recovery.hpp"
#include "apps/bench_serve.hpp"
#include "apps/bench_transport.hpp"
#include "apps/chaos_cmd.hpp"
#include "apps/demo_cmd.hpp"
#include "apps/generate_cmd.hpp"
#include "apps/plan_cmd.hpp"
#include "apps/run_cmd.hpp"
#include "apps/serve_cmd.hpp"
#include "apps/verify_cmd.hpp"
#include "cluster/cluster.hpp"
#include "core/log.hpp"

namespace {

constexpr const char* usage =
    "usage: helix <command> [options]\n"
    "commands:\n"
    "  generate          decode tokens on one worker (built-in seeded or HF checkpoint)\n"
    "  verify            sharded decode against the single-worker reference, per layout\n"
    "  bench attention   attention decode bandwidth against a streaming-read baseline\n"
    "  bench decode      decode steps on N simulated workers, layouts side by side\n"
    "  bench recovery    a worker killed: lost-blocks recovery against full replay\n"
    "  bench serve       load on an OpenAI-compatible server: TTFT, TPOT, ITL, goodput\n"
    "  bench transport   collectives per backend (local, UCX shm/tcp) against memcpy\n"
    "  run               a multi-agent workload on the embedded engine: latency, tokens/s, KV\n"
    "  serve             an OpenAI-compatible HTTP server (completions, SSE streams, metrics)\n"
    "  worker            one worker process of an engine: helix worker --join HOST:PORT\n"
    "  cluster certs     a CA and node certificates for mutual TLS (--tls-dir)\n"
    "  chaos             seeded fault schedules on the engine: recovery, exactness, no hang\n"
    "  demo              the default job of `make run`: exactness, agents and a long decode\n"
    "  plan              layout search: Pareto frontiers, Helix's headline ratios, --ttl-ms query\n"
    "  calibrate         measure this machine for the planner's cpu preset\n"
    "  help              this text\n"
    "Run `helix <command> --help` for a command's options.\n"
    "Every command takes --log-level LEVEL (trace, debug, info, warn, error, off; default warn):\n"
    "logs go to stderr.\n";

// --log-level LEVEL (anywhere on the line) sets every module's logger; the rest goes to the
// command.
int run(std::vector<std::string> args) {
  for (auto it = args.begin(); it != args.end(); ++it) {
    if (*it != "--log-level") continue;
    if (it + 1 == args.end()) {
      std::cerr << "error: --log-level needs a value (trace, debug, info, warn, error, off)\n";
      return 2;
    }
    if (const helix::status st = helix::set_log_level(*(it + 1)); !st.ok()) {
      std::cerr << "error: --log-level: " << st.message() << "\n";
      return 2;
    }
    args.erase(it, it + 2);
    break;
  }
  if (args.empty() || args[0] == "help" || args[0] == "--help" || args[0] == "-h") {
    std::cout << usage;
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  std::vector<std::string> rest(args.begin() + 1, args.end());
  if (cmd == "generate") return helix::apps::run_generate(rest, std::cout, std::cerr);
  if (cmd == "verify") return helix::apps::run_verify(rest, std::cout, std::cerr);
  if (cmd == "run") return helix::apps::run_workload(rest, std::cout, std::cerr);
  if (cmd == "serve") return helix::apps::run_serve(rest, std::cout, std::cerr);
  if (cmd == "chaos") return helix::apps::run_chaos_cmd(rest, std::cout, std::cerr);
  if (cmd == "demo") return helix::apps::run_demo(rest, std::cout, std::cerr);
  if (cmd == "plan") return helix::apps::run_plan(rest, std::cout, std::cerr);
  if (cmd == "calibrate") return helix::apps::run_calibrate(rest, std::cout, std::cerr);
  if (cmd == "cluster") return helix::cluster::run_cluster_cmd(rest, std::cout, std::cerr);
  if (cmd == "worker") {
    return helix::cluster::run_worker(std::vector<std::string>(rest.begin(), rest.end()), std::cout,
                                      std::cerr);
  }
  if (cmd == "bench") {
    if (!rest.empty() && rest[0] == "attention") {
      return helix::apps::run_bench_attention(
          std::vector<std::string>(rest.begin() + 1, rest.end()));
    }
    if (!rest.empty() && rest[0] == "decode") {
      return helix::apps::run_bench_decode(std::vector<std::string>(rest.begin() + 1, rest.end()),
                                           std::cout, std::cerr);
    }
    if (!rest.empty() && rest[0] == "recovery") {
      return helix::apps::run_bench_recovery(std::vector<std::string>(rest.begin() + 1, rest.end()),
                                             std::cout, std::cerr);
    }
    if (!rest.empty() && rest[0] == "serve") {
      return helix::apps::run_bench_serve(std::vector<std::string>(rest.begin() + 1, rest.end()),
                                          std::cout, std::cerr);
    }
    if (!rest.empty() && rest[0] == "transport") {
      return helix::apps::run_bench_transport(
          std::vector<std::string>(rest.begin() + 1, rest.end()), std::cout, std::cerr);
    }
    std::cerr
        << "error: unknown benchmark (available: bench attention, bench decode, bench recovery, "
           "bench serve, bench transport)\n";
    return 2;
  }
  std::cerr << "error: unknown command '" << cmd << "'\n" << usage;
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  // The last line of defence: an allocation the commands' own checks did not foresee ends the
  // command with an error message, not an abort.
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::bad_alloc&) {
    std::cerr << "error: out of memory\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
  }
  return 1;
}
