// `helix serve`: the OpenAI-compatible HTTP server over an engine (cpp-httplib from Debian's
// libcpp-httplib-dev; one connection per pool thread, so a slow client holds one thread and no
// more, and reads and writes time out).
//
//   POST /v1/completions   text or token-id prompts, streaming (server-sent events ending with
//                          `data: [DONE]`) or not; serve/openai.hpp says what is accepted
//   GET  /v1/models        the model served
//   GET  /health           200 while the process runs
//   GET  /ready            200 while the engine can generate and the server is not draining,
//                          503 otherwise
//   GET  /metrics          Prometheus text (serve/metrics.hpp; the families are listed in
//                          server.cpp)
//
// With a tokenizer (text/), text prompts are encoded (with the tokenizer's BOS), generated ids
// are streamed as text through a detokenizer (never a broken UTF-8 character in a chunk; special
// tokens skipped, as vLLM does by default), stop strings apply, and generation also stops at the
// tokenizer's EOS token.
//
// Errors are OpenAI-style bodies: 400 naming the field, 404 for another model or path, 413 for
// a body over the limit, 429 when the engine's queue is full, 503 while draining or when the
// engine failed. A client that disconnects mid-stream has its request cancelled (its KV freed at
// the engine's next step).
//
// drain() stops accepting completions, lets running ones finish within a grace period, cancels
// the rest and stops the listener; the process then exits 0 (apps/serve_cmd.cpp does that on
// SIGTERM).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "actors/engine.hpp"
#include "core/status.hpp"
#include "serve/metrics.hpp"
#include "serve/openai.hpp"
#include "text/tokenizer.hpp"

namespace helix::serve {

struct server_options {
  std::string host = "127.0.0.1";
  int port = 8000;         // 0: a free port (server::port() says which)
  std::string model_name;  // the id clients name in `model` (empty: any)
  request_limits limits;
  std::size_t max_body_bytes = 8u << 20;  // larger bodies get 413
  std::size_t threads = 256;              // connections served at once
  std::chrono::seconds read_timeout{10};  // a client that sends nothing for this long is cut
  std::chrono::seconds write_timeout{10};
  std::chrono::milliseconds keepalive_interval{1000};  // SSE comment while no token arrives
};

class server {
 public:
  /// Binds host:port and starts serving on its own threads. `engine` (and `tok`, the model's
  /// tokenizer, which may be null: prompts are then token ids only) must outlive the server.
  /// unavailable when the address cannot be bound.
  [[nodiscard]] static expected<std::unique_ptr<server>> start(actors::engine& engine,
                                                               const text::tokenizer* tok,
                                                               server_options options);
  /// Stops at once (drain(0) first when requests may still run).
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// The port bound (useful with options.port = 0).
  [[nodiscard]] int port() const;
  /// Stops accepting completions (503), waits up to `grace` for the running ones, cancels the
  /// rest and waits (bounded) for their streams to end, then stops the listener. Idempotent.
  void drain(std::chrono::milliseconds grace);
  /// Completions running now (accepted, not yet answered).
  [[nodiscard]] std::int64_t in_flight() const;
  /// The Prometheus registry (refreshed from the engine on every scrape of /metrics).
  [[nodiscard]] std::string metrics_text();

  struct impl;

 private:
  explicit server(std::unique_ptr<impl> p);
  std::unique_ptr<impl> p_;
};

}  // namespace helix::serve
