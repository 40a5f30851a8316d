#include "apps/serve_cmd.hpp"

#include <atomic>
#include <chrono>
#include <csignal>
#include <thread>

#include <fmt/format.h>

#include "actors/config_file.hpp"
#include "apps/cli_args.hpp"
#include "cluster/cluster.hpp"
#include "serve/server.hpp"
#include "text/tokenizer.hpp"

namespace helix::apps {
namespace {

constexpr const char* usage =
    "usage: helix serve [--host 127.0.0.1] [--port 8000] [--model tiny-llama | --checkpoint DIR]\n"
    "                   [--workers N | --processes N] [--layout auto] [--config FILE] [options]\n"
    "  An OpenAI-compatible server: POST /v1/completions (stream or not), GET /v1/models,\n"
    "  /health, /ready, /metrics (Prometheus). SIGTERM or SIGINT drains it and exits 0.\n"
    "  --host H, --port P      where to listen (default 127.0.0.1:8000; port 0: any free one)\n"
    "  --config FILE           engine config (protobuf text, or JSON when it ends in .json); the\n"
    "                          flags below override it\n"
    "  --model NAME            built-in model (default tiny-llama); --checkpoint DIR instead\n"
    "                          (its tokenizer.json or tokenizer.model, when there, makes text\n"
    "                          prompts, text output and stop strings work)\n"
    "  --tokenizer DIR         take the tokenizer from DIR instead\n"
    "  --workers N             workers, threads of this process (default 2)\n"
    "  --processes N           N workers as `helix worker` processes (UCX data plane)\n"
    "  --listen HOST:PORT --expect-workers N\n"
    "                          N workers started elsewhere join here (helix worker --join)\n"
    "  --layout L              auto or a layout string\n"
    "  --kv-capacity N         KV tokens per worker (K/M suffixes)\n"
    "  --served-model-name S   the id clients send as `model` (default the model's name)\n"
    "  --default-temperature T temperature of requests that give none (default 0: greedy)\n"
    "  --max-body BYTES        larger request bodies get 413 (default 8M)\n"
    "  --threads N             connections served at once (default 256)\n"
    "  --grace S               seconds running completions get to finish at a drain (default 30)\n";

std::atomic<int> stop_signal{0};

}  // namespace

int run_serve(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  int exit_code = 0;
  const auto a =
      parse_command(args, {},
                    {"host", "port", "config", "model", "checkpoint", "workers", "processes",
                     "layout", "kv-capacity", "served-model-name", "default-temperature",
                     "max-body", "threads", "grace", "listen", "expect-workers", "tokenizer"},
                    usage, out, err, exit_code);
  if (!a) return exit_code;
  const auto usage_error = [&err](const std::string& what) {
    err << "error: " << what << "\n" << usage;
    return 2;
  };
  actors::engine_config c;
  c.model = "tiny-llama";
  c.num_workers = 2;
  if (const auto path = a->get("config")) {
    auto loaded = actors::load_engine_config(*path);
    if (!loaded) return usage_error(loaded.error().to_string());
    c = *loaded;
  }
  if (const auto m = a->get("model")) c.model = *m;
  if (const auto dir = a->get("checkpoint")) {
    if (a->has("model")) return usage_error("--model and --checkpoint exclude each other");
    c.checkpoint = *dir;
    c.model.clear();
  }
  if (const auto l = a->get("layout")) c.layout = *l;
  const auto port = a->get_int("port", 8000);
  const auto workers = a->get_int("workers", c.num_workers);
  const auto kv = a->get_size("kv-capacity", c.kv_capacity_tokens_per_worker);
  const auto max_body = a->get_size("max-body", 8 << 20);
  const auto threads = a->get_int("threads", 256);
  const auto grace = a->get_double("grace", 30.0);
  const auto temperature = a->get_double("default-temperature", 0.0);
  for (const auto* e : {&port, &workers, &kv, &max_body, &threads}) {
    if (!*e) return usage_error(e->error().message());
  }
  for (const auto* e : {&grace, &temperature}) {
    if (!*e) return usage_error(e->error().message());
  }
  if (*port < 0 || *port > 65535) return usage_error("--port takes 0 to 65535");
  if (*workers < 1 || *workers > 64) return usage_error("--workers takes 1 to 64");
  if (*max_body < 1024) return usage_error("--max-body must be at least 1K");
  if (*threads < 4 || *threads > 4096) return usage_error("--threads takes 4 to 4096");
  if (!(*grace >= 0 && *grace <= 86400)) return usage_error("--grace takes 0 to 86400 seconds");
  if (*temperature < 0 || *temperature > 100) {
    return usage_error("--default-temperature takes 0 to 100");
  }
  c.num_workers = *workers;
  c.kv_capacity_tokens_per_worker = *kv;
  std::unique_ptr<actors::worker_source> source;
  if (a->has("processes")) {
    const auto procs = a->get_int("processes", 0);
    if (!procs) return usage_error(procs.error().message());
    if (*procs < 1 || *procs > 64) return usage_error("--processes takes 1 to 64");
    auto self = this_program_path();
    if (!self) return usage_error(self.error().message());
    c.num_workers = *procs;
    cluster::spawned_workers_options so;
    so.worker_binary = std::move(*self);
    source = cluster::spawned_workers(so);
  }
  if (const auto listen = a->get("listen")) {
    if (a->has("processes")) return usage_error("--listen and --processes exclude each other");
    const auto expect = a->get_int("expect-workers", 0);
    if (!expect) return usage_error(expect.error().message());
    if (*expect < 1 || *expect > 64) return usage_error("--listen needs --expect-workers 1 to 64");
    const auto hp = parse_host_port(*listen, "listen");
    if (!hp) return usage_error(hp.error().message());
    c.num_workers = *expect;
    cluster::listening_workers_options lo;
    lo.host = hp->first;
    lo.port = hp->second;
    source = cluster::listening_workers(lo);
  } else if (a->has("expect-workers")) {
    return usage_error("--expect-workers goes with --listen");
  }

  // The tokenizer: --tokenizer DIR, else the checkpoint's when it has one (none: token ids only).
  std::unique_ptr<text::tokenizer> tok;
  const std::string tok_dir = a->get_or("tokenizer", c.checkpoint);
  if (!tok_dir.empty()) {
    auto loaded = text::load_tokenizer(tok_dir);
    if (loaded) {
      tok = std::move(*loaded);
    } else if (a->has("tokenizer") || loaded.error().code() != errc::not_found) {
      return usage_error(loaded.error().to_string());
    }
  }
  auto eng = actors::engine::create(c, std::move(source));
  if (!eng) {
    err << "error: " << eng.error().to_string() << "\n";
    return eng.error().code() == errc::invalid_argument ? 2 : 1;
  }
  serve::server_options so;
  so.host = a->get_or("host", "127.0.0.1");
  so.port = static_cast<int>(*port);
  so.model_name = a->get_or("served-model-name", c.checkpoint.empty() ? c.model : c.checkpoint);
  so.max_body_bytes = static_cast<std::size_t>(*max_body);
  so.threads = static_cast<std::size_t>(*threads);
  so.limits.default_temperature = static_cast<float>(*temperature);
  so.limits.max_prompt_tokens = (*eng)->max_request_tokens();
  if (tok && tok->vocab_size() > (*eng)->vocab()) {
    err << fmt::format("error: the tokenizer has {} ids but the model's vocabulary {}\n",
                       tok->vocab_size(), (*eng)->vocab());
    return 2;
  }
  auto srv = serve::server::start(**eng, tok.get(), so);
  if (!srv) {
    err << "error: " << srv.error().to_string() << "\n";
    return 1;
  }
  // SIGTERM / SIGINT only set a flag; this thread notices it and drains.
  stop_signal = 0;
  struct sigaction on_stop {};
  struct sigaction old_term {};
  struct sigaction old_int {};
  on_stop.sa_handler = [](int sig) { stop_signal = sig; };
  sigemptyset(&on_stop.sa_mask);
  sigaction(SIGTERM, &on_stop, &old_term);
  sigaction(SIGINT, &on_stop, &old_int);
  out << fmt::format("helix serve: {} on {} worker(s), layout {}, {}, listening on http://{}:{}\n",
                     so.model_name, c.num_workers, (*eng)->stats().layout,
                     tok ? fmt::format("tokenizer {}", tok->kind()) : std::string("token ids only"),
                     so.host, (*srv)->port())
      << std::flush;
  while (stop_signal == 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  out << fmt::format("helix serve: {} received; draining {} running completion(s) (grace {} s)\n",
                     stop_signal == SIGTERM ? "SIGTERM" : "SIGINT", (*srv)->in_flight(), *grace)
      << std::flush;
  (*srv)->drain(std::chrono::milliseconds(static_cast<std::int64_t>(*grace * 1000)));
  srv->reset();
  eng->reset();
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGINT, &old_int, nullptr);
  out << "helix serve: stopped\n";
  return 0;
}

}  // namespace helix::apps
