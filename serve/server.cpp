#include "serve/server.hpp"

#include <httplib.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>

#include "core/log.hpp"
#include "text/detokenizer.hpp"

namespace helix::serve {
namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

double seconds_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Holds back the end of the text that could still become a stop string; finds the first stop
// string in what was generated. Text before a stop string is emitted, the stop string and what
// follows are not (OpenAI's semantics).
class stop_matcher {
 public:
  explicit stop_matcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  /// Text that is safe to emit after `piece`; sets `matched` when a stop string completed.
  std::string feed(std::string_view piece, bool& matched) {
    held_ += piece;
    if (stops_.empty()) return std::exchange(held_, {});
    std::size_t first = std::string::npos;
    for (const std::string& s : stops_) first = std::min(first, held_.find(s));
    if (first != std::string::npos) {
      matched = true;
      std::string out = held_.substr(0, first);
      held_.clear();
      return out;
    }
    std::size_t keep = 0;  // the longest end of held_ that starts some stop string
    for (const std::string& s : stops_) {
      for (std::size_t k = std::min(s.size() - 1, held_.size()); k > keep; --k) {
        if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
          keep = k;
          break;
        }
      }
    }
    std::string out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return out;
  }
  std::string finish() { return std::exchange(held_, {}); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
};

// JSON for the wire. Strings that are not UTF-8 (a request path, an engine message quoting
// bytes) get U+FFFD instead of making dump() throw: nothing here may throw into cpp-httplib,
// whose worker threads and error handler have no handler for it.
std::string wire(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// A detokenizer's text; an id the tokenizer has no spelling for (a model vocabulary padded past
// the tokenizer's) adds no text, while token_ids still carry it.
std::string text_or_empty(expected<std::string> piece) {
  return piece ? std::move(*piece) : std::string();
}

// One completion from submit to its last event, shared by the handler and the stream provider.
struct completion_state {
  std::uint64_t request_id = 0;
  std::shared_ptr<actors::token_stream> stream;
  completion_id id;
  std::int64_t prompt_tokens = 0;
  bool include_usage = false;
  std::optional<text::detokenizer> decoder;  // without a tokenizer: none
  stop_matcher stop{{}};
  std::vector<std::int32_t> tokens;
  clock_type::time_point submitted;
  std::optional<clock_type::time_point> first_token;
  clock_type::time_point last_token;
  const char* reason = nullptr;  // set once finished
  status error;                  // reason == "error"
  bool finished = false;
};

}  // namespace

struct server::impl {
  impl(actors::engine& e, const text::tokenizer* c, server_options opts)
      : eng(e),
        codec(c),
        o(std::move(opts)),
        created(static_cast<std::int64_t>(std::time(nullptr))) {
    declare_metrics();
  }

  actors::engine& eng;
  const text::tokenizer* codec;
  server_options o;
  const std::int64_t created;
  httplib::Server http;
  std::thread listener;
  int bound_port = 0;
  metrics_registry metrics;
  std::atomic<bool> draining{false};
  std::atomic<bool> abandoned{false};  // drain() stopped waiting: plain completions give up
  std::atomic<std::uint64_t> next_id{0};
  mutable std::mutex mu;
  std::condition_variable idle_cv;
  std::map<std::uint64_t, std::shared_ptr<completion_state>> running;  // by request id
  bool stopped = false;

  void declare_metrics();
  void refresh_engine_metrics();
  void routes();
  void reply_error(httplib::Response& res, const api_error& e);
  void handle_completion(const httplib::Request& req, httplib::Response& res);
  // Takes one event into `s`: returns the chunk's new text and ids; finishes `s` on the last
  // event or a stop string.
  std::pair<std::string, std::vector<std::int32_t>> take(completion_state& s,
                                                         const actors::token_event& ev);
  void finish(completion_state& s);
  // One call of a streamed completion's content provider: waits up to `interval` for an event
  // and writes its chunk (a keep-alive comment when none came); false ends the connection.
  bool stream_step(completion_state& s, httplib::DataSink& sink,
                   std::chrono::milliseconds interval);
  // The response of `s` was written (or its connection failed): drain() no longer waits for it.
  void release(const completion_state& s);
};

void server::impl::declare_metrics() {
  using k = metric_kind;
  const auto lat = metrics_registry::latency_buckets();
  metrics.declare("helix_requests_running", k::gauge, "Requests in the engine's running batch.");
  metrics.declare("helix_requests_waiting", k::gauge, "Requests accepted and queued.");
  metrics.declare("helix_requests_finished_total", k::counter,
                  "Completions ended, by finish reason (length, stop, cancelled, error).");
  metrics.declare("helix_http_errors_total", k::counter,
                  "Completion requests answered with an error, by HTTP status.");
  metrics.declare("helix_prompt_tokens_total", k::counter, "Prompt tokens of accepted requests.");
  metrics.declare("helix_generation_tokens_total", k::counter, "Tokens generated.");
  metrics.declare("helix_time_to_first_token_seconds", k::histogram,
                  "From a completion's arrival to its first token.", lat);
  metrics.declare("helix_time_per_output_token_seconds", k::histogram,
                  "Mean time between a completion's tokens after the first.", lat);
  metrics.declare("helix_inter_token_latency_seconds", k::histogram,
                  "Time between consecutive tokens of a completion.", lat);
  metrics.declare("helix_e2e_request_latency_seconds", k::histogram,
                  "From a completion's arrival to its last token.", lat);
  metrics.declare("helix_kv_blocks_used", k::gauge, "KV blocks in use, per worker rank.");
  metrics.declare("helix_kv_blocks_capacity", k::gauge, "KV blocks a worker holds at most.");
  metrics.declare("helix_kv_imbalance", k::gauge,
                  "Largest KV use over the mean among the KVP ranks, minus 1.");
  metrics.declare("helix_kv_migrated_blocks_total", k::counter,
                  "KV blocks moved between workers by rebalancing.");
  metrics.declare("helix_layout_epoch", k::gauge, "The layout epoch in use.");
  metrics.declare("helix_relayouts_total", k::counter,
                  "Layout changes after the initial one, by reason (join, leave, recovery).");
  metrics.declare("helix_recoveries_total", k::counter, "Recoveries from worker failures.");
  metrics.declare("helix_engine_steps_total", k::counter, "Decode/prefill steps run.");
  metrics.declare("helix_engine_healthy", k::gauge, "1 while the engine can generate, else 0.");
  metrics.declare("helix_step_phase_seconds_total", k::counter,
                  "Rank 0's time in each phase of its steps: attention (without the all-to-all "
                  "wait), all_to_all, ffn, sampling (LM head and sampling).");
}

void server::impl::refresh_engine_metrics() {
  const actors::engine_stats st = eng.stats();
  metrics.set("helix_requests_running", static_cast<double>(st.active));
  metrics.set("helix_requests_waiting", static_cast<double>(st.queued));
  metrics.clear("helix_kv_blocks_used");
  metrics.clear("helix_kv_blocks_capacity");
  for (const actors::worker_stats& w : st.workers) {
    const std::vector<std::pair<std::string, std::string>> l = {{"worker", std::to_string(w.rank)}};
    metrics.set("helix_kv_blocks_used", static_cast<double>(w.kv_used_blocks), l);
    metrics.set("helix_kv_blocks_capacity", static_cast<double>(w.kv_capacity_blocks), l);
  }
  metrics.set("helix_kv_imbalance", st.kv_imbalance);
  metrics.set("helix_kv_migrated_blocks_total", static_cast<double>(st.migrations));
  metrics.set("helix_layout_epoch", static_cast<double>(st.epoch));
  std::map<std::string, double> relayouts;
  for (const actors::epoch_stats& e : st.epochs) {
    if (e.reason != "initial") relayouts[e.reason] += 1.0;
  }
  for (const auto& [reason, n] : relayouts) {
    metrics.set("helix_relayouts_total", n, {{"reason", reason}});
  }
  metrics.set("helix_recoveries_total", static_cast<double>(st.recoveries.size()));
  metrics.set("helix_engine_steps_total", static_cast<double>(st.steps));
  metrics.set("helix_step_phase_seconds_total", st.step_phases.attention, {{"phase", "attention"}});
  metrics.set("helix_step_phase_seconds_total", st.step_phases.all_to_all,
              {{"phase", "all_to_all"}});
  metrics.set("helix_step_phase_seconds_total", st.step_phases.ffn, {{"phase", "ffn"}});
  metrics.set("helix_step_phase_seconds_total", st.step_phases.sampling, {{"phase", "sampling"}});
  metrics.set("helix_engine_healthy", st.health == actors::engine_health::failed ? 0.0 : 1.0);
}

void server::impl::reply_error(httplib::Response& res, const api_error& e) {
  metrics.add("helix_http_errors_total", 1.0, {{"status", std::to_string(e.http_status)}});
  res.status = e.http_status;
  res.set_content(wire(error_body(e)), "application/json");
}

std::pair<std::string, std::vector<std::int32_t>> server::impl::take(
    completion_state& s, const actors::token_event& ev) {
  std::pair<std::string, std::vector<std::int32_t>> out;
  const auto now = clock_type::now();
  bool matched = false;
  if (ev.token >= 0) {
    if (!s.first_token) {
      s.first_token = now;
    } else {
      metrics.observe("helix_inter_token_latency_seconds", seconds_between(s.last_token, now));
    }
    s.last_token = now;
    s.tokens.push_back(ev.token);
    out.second.push_back(ev.token);
    if (s.decoder) out.first = s.stop.feed(text_or_empty(s.decoder->add(ev.token)), matched);
  }
  if (matched) {
    s.reason = "stop";
    (void)eng.cancel(s.request_id);  // the engine frees its KV at the next step
    finish(s);
  } else if (ev.last) {
    bool late = false;  // a stop string completed by the last held-back bytes
    if (s.decoder) {
      out.first += s.stop.feed(text_or_empty(s.decoder->flush()), late);
      if (!late) out.first += s.stop.finish();
    }
    s.reason = late ? "stop" : finish_reason_text(ev.reason);
    if (ev.reason == actors::finish_reason::error) s.error = ev.error;
    finish(s);
  }
  return out;
}

void server::impl::finish(completion_state& s) {
  if (s.finished) return;
  s.finished = true;
  const auto now = clock_type::now();
  metrics.add("helix_requests_finished_total", 1.0, {{"reason", s.reason ? s.reason : "error"}});
  metrics.add("helix_generation_tokens_total", static_cast<double>(s.tokens.size()));
  metrics.observe("helix_e2e_request_latency_seconds", seconds_between(s.submitted, now));
  if (s.first_token) {
    metrics.observe("helix_time_to_first_token_seconds",
                    seconds_between(s.submitted, *s.first_token));
    if (s.tokens.size() > 1) {
      metrics.observe(
          "helix_time_per_output_token_seconds",
          seconds_between(*s.first_token, s.last_token) / static_cast<double>(s.tokens.size() - 1));
    }
  }
}

void server::impl::release(const completion_state& s) {
  std::lock_guard lk(mu);
  running.erase(s.request_id);
  idle_cv.notify_all();
}

void server::impl::handle_completion(const httplib::Request& req, httplib::Response& res) {
  if (draining) {
    return reply_error(res, {503, "service_unavailable", "", "the server is shutting down"});
  }
  auto parsed = parse_completion(req.body, o.limits);
  if (auto* e = std::get_if<api_error>(&parsed)) return reply_error(res, *e);
  completion_request& r = std::get<completion_request>(parsed);
  if (!o.model_name.empty() && !r.model.empty() && r.model != o.model_name) {
    return reply_error(res, {404, "invalid_request_error", "model",
                             fmt::format("the model '{}' does not exist; this server serves '{}'",
                                         r.model, o.model_name)});
  }
  if (r.prompt_is_text) {
    if (codec == nullptr) {
      return reply_error(res, {400, "invalid_request_error", "prompt",
                               "model has no tokenizer: send the prompt as a list of token ids"});
    }
    auto ids = codec->encode(r.prompt_text, /*add_special=*/true);
    if (!ids)
      return reply_error(res, {400, "invalid_request_error", "prompt", ids.error().message()});
    r.prompt_tokens = std::move(*ids);
  }
  if (!r.stop.empty() && codec == nullptr) {
    return reply_error(res, {400, "invalid_request_error", "stop",
                             "model has no tokenizer: stop strings cannot be matched; use "
                             "stop_token_ids"});
  }
  actors::request_options ro;
  ro.prompt = std::move(r.prompt_tokens);
  ro.max_tokens = r.max_tokens;
  ro.sampling = r.sampling;
  ro.stop_tokens = r.stop_token_ids;
  auto s = std::make_shared<completion_state>();
  s->submitted = clock_type::now();
  s->prompt_tokens = static_cast<std::int64_t>(ro.prompt.size());
  s->include_usage = r.include_usage;
  s->id = {fmt::format("cmpl-{:x}-{}", created, next_id++),
           static_cast<std::int64_t>(std::time(nullptr)), o.model_name};
  if (codec != nullptr) {
    s->decoder.emplace(*codec, /*skip_special=*/true);
    if (const auto eos = codec->special_ids().eos) ro.stop_tokens.push_back(*eos);
  }
  s->stop = stop_matcher(r.stop);
  {
    // Registered before submit so that drain() cannot miss it.
    std::unique_lock lk(mu);
    if (draining) {
      lk.unlock();
      return reply_error(res, {503, "service_unavailable", "", "the server is shutting down"});
    }
    auto h = eng.submit(std::move(ro));
    if (!h) {
      lk.unlock();
      return reply_error(res, error_from_status(h.error()));
    }
    s->request_id = h->id;
    s->stream = std::move(h->stream);
    running.emplace(s->request_id, s);
  }
  metrics.add("helix_prompt_tokens_total", static_cast<double>(s->prompt_tokens));

  if (!r.stream) {
    std::string text;
    while (!s->finished) {
      const std::optional<actors::token_event> ev = s->stream->next_for(o.keepalive_interval);
      if (ev) {
        text += take(*s, *ev).first;
      } else if (s->stream->finished() || abandoned) {
        // No last event (cannot happen), or a drain gave up waiting for the engine: never hang.
        (void)eng.cancel(s->request_id);
        s->reason = "cancelled";
        finish(*s);
      }
    }
    if (std::string_view(s->reason) == "cancelled") {  // only drain() cancels a plain one
      release(*s);
      return reply_error(res, {503, "service_unavailable", "",
                               "the server is shutting down; the completion was cancelled"});
    }
    if (std::string_view(s->reason) == "error") {
      api_error e = error_from_status(s->error);
      if (e.http_status < 500) e.http_status = 500;
      release(*s);
      return reply_error(res, e);
    }
    // Through a provider so that release() runs once the body is written: a drain that stops
    // the listener must not cut a finished completion's response.
    auto body = std::make_shared<std::string>(
        wire(completion_response(s->id, text, s->tokens, s->reason, s->prompt_tokens)));
    res.set_content_provider(
        body->size(), "application/json",
        [body](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
          return sink.write(body->data() + offset, length);
        },
        [this, s](bool) { release(*s); });
    return;
  }

  const auto interval = o.keepalive_interval;
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, s, interval](std::size_t, httplib::DataSink& sink) {
        try {  // cpp-httplib calls providers outside any handler: nothing may escape
          return stream_step(*s, sink, interval);
        } catch (...) {
          return false;  // ends the connection; the releaser cancels the request
        }
      },
      [this, s](bool) {
        if (!s->finished) {
          // The client went away (or the connection failed) before the last event: cancel the
          // request so that its KV is freed; its stream ends with `cancelled`.
          (void)eng.cancel(s->request_id);
          s->reason = "cancelled";
          finish(*s);
        }
        release(*s);
      });
}

bool server::impl::stream_step(completion_state& s_ref, httplib::DataSink& sink,
                               std::chrono::milliseconds interval) {
  completion_state* s = &s_ref;
  if (s->finished) {  // everything was written by the previous call
    sink.done();
    return true;
  }
  const std::optional<actors::token_event> ev = s->stream->next_for(interval);
  if (!ev) {
    static constexpr std::string_view ping = ": keep-alive\n\n";
    return sink.write(ping.data(), ping.size());  // fails once the client is gone
  }
  auto [text, ids] = take(*s, *ev);
  std::string out;
  if (s->finished && s->reason != nullptr && std::string_view(s->reason) == "error") {
    api_error e = error_from_status(s->error);
    e.http_status = 500;
    out += "data: " + wire(error_body(e)) + "\n\n";
  } else if (!ids.empty() || !text.empty() || s->finished) {
    const char* reason = s->finished ? s->reason : nullptr;
    out += "data: " + wire(completion_chunk(s->id, text, ids, reason)) + "\n\n";
  }
  if (s->finished) {
    if (s->include_usage) {
      out +=
          "data: " +
          wire(usage_chunk(s->id, s->prompt_tokens, static_cast<std::int64_t>(s->tokens.size()))) +
          "\n\n";
    }
    out += "data: [DONE]\n\n";
  }
  return out.empty() || sink.write(out.data(), out.size());
}

void server::impl::routes() {
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  http.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
    const actors::engine_stats st = eng.stats();
    const bool ready = !draining && st.health != actors::engine_health::failed;
    res.status = ready ? 200 : 503;
    res.set_content(
        wire(json{{"ready", ready},
                  {"draining", draining.load()},
                  {"engine", st.health == actors::engine_health::failed ? st.failure.to_string()
                                                                        : std::string("serving")}}),
        "application/json");
  });
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(
        wire(models_response(o.model_name, created, eng.vocab(), eng.max_request_tokens())),
        "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    refresh_engine_metrics();
    res.set_content(metrics.render(), "text/plain; version=0.0.4; charset=utf-8");
  });
  http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_completion(req, res);
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a handler wrote its own error body
    try {
      api_error e{res.status, "invalid_request_error", "", ""};
      if (res.status == 404) {
        e.message = fmt::format("no route {} {}", req.method, req.path);
      } else if (res.status == 413) {
        e.message = "the request body is too large";
      } else {
        e.message = fmt::format("HTTP {}", res.status);
      }
      res.set_content(wire(error_body(e)), "application/json");
    } catch (...) {  // called outside cpp-httplib's handler: nothing may escape
      res.set_content(R"({"error":{"message":"error","type":"internal_error"}})",
                      "application/json");
    }
  });
  http.set_exception_handler(
      [](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
        res.status = 500;
        res.set_content(wire(error_body({500, "internal_error", "", "internal error"})),
                        "application/json");
      });
}

server::server(std::unique_ptr<impl> p) : p_(std::move(p)) {}

server::~server() {
  drain(std::chrono::milliseconds(0));
}

expected<std::unique_ptr<server>> server::start(actors::engine& engine,
                                                const text::tokenizer* codec,
                                                server_options options) {
  if (options.threads < 1) return invalid_argument("server: threads must be >= 1");
  if (options.port < 0 || options.port > 65535) {
    return invalid_argument("server: port {} outside [0, 65535]", options.port);
  }
  auto p = std::make_unique<impl>(engine, codec, std::move(options));
  impl& s = *p;
  const std::size_t threads = s.o.threads;
  // cpp-httplib's factory contract: it owns (and deletes) the queue this returns.
  s.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.http.set_payload_max_length(s.o.max_body_bytes);
  s.http.set_read_timeout(s.o.read_timeout);
  s.http.set_write_timeout(s.o.write_timeout);
  s.http.set_keep_alive_timeout(5);
  s.http.set_tcp_nodelay(true);
  s.routes();
  // httplib's default sets SO_REUSEPORT, which lets a second server bind the same port without
  // an error; SO_REUSEADDR only. The socket is kept to widen the listen backlog below.
  int listen_fd = -1;
  s.http.set_socket_options([&listen_fd](int fd) {
    int yes = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = fd;
  });
  if (s.o.port == 0) {
    s.bound_port = s.http.bind_to_any_port(s.o.host);
  } else if (s.http.bind_to_port(s.o.host, s.o.port)) {
    s.bound_port = s.o.port;
  } else {
    s.bound_port = -1;
  }
  if (s.bound_port <= 0) {
    return make_error(errc::unavailable, "server: cannot listen on {}:{} (in use, or a bad host)",
                      s.o.host, s.o.port);
  }
  // The library listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, fixed when Debian built
  // it): a burst of clients connecting at once would overflow it and see reset connections.
  // listen() again on a listening socket only updates the backlog.
  if (listen_fd >= 0) ::listen(listen_fd, SOMAXCONN);
  s.listener = std::thread([&s] { s.http.listen_after_bind(); });
  return std::unique_ptr<server>(new server(std::move(p)));
}

int server::port() const {
  return p_->bound_port;
}

std::int64_t server::in_flight() const {
  std::lock_guard lk(p_->mu);
  return static_cast<std::int64_t>(p_->running.size());
}

std::string server::metrics_text() {
  p_->refresh_engine_metrics();
  return p_->metrics.render();
}

void server::drain(std::chrono::milliseconds grace) {
  impl& s = *p_;
  {
    std::unique_lock lk(s.mu);
    if (s.stopped) return;
    s.draining = true;
    s.idle_cv.wait_for(lk, grace, [&] { return s.running.empty(); });
    for (const auto& [id, c] : s.running) (void)s.eng.cancel(id);
    // Cancelled streams end at the engine's next step; their handlers then finish them.
    s.idle_cv.wait_for(lk, std::chrono::seconds(10), [&] { return s.running.empty(); });
    if (!s.running.empty()) {
      module_logger("serve")->warn("server: {} completions still running after the drain",
                                   s.running.size());
      s.abandoned = true;
    }
    s.stopped = true;
  }
  s.http.stop();
  if (s.listener.joinable()) s.listener.join();
}

}  // namespace helix::serve
