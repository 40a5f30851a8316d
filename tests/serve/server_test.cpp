// helix serve over real sockets: an engine of in-process workers behind the HTTP server, driven
// by httplib's client, raw sockets and curl. Tokens are checked against the single-worker
// decoder's greedy tokens for the same seeded weights.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/checkpoint.hpp"
#include "serve/server.hpp"
#include "tests/support/model_fixtures.hpp"
#include "text/tokenizer.hpp"

namespace helix::serve {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
using test_support::generate_alone;
using test_support::random_tokens;

actors::engine_config tiny_config(std::int64_t workers = 2) {
  actors::engine_config c;
  c.model = "tiny-llama";
  c.num_workers = workers;
  c.kv_capacity_tokens_per_worker = 4096;
  return c;
}

// An engine and its server on a free port of 127.0.0.1.
struct served {
  explicit served(actors::engine_config c = tiny_config(), server_options o = {},
                  const text::tokenizer* tok = nullptr) {
    auto e = actors::engine::create(c);
    HELIX_CHECK(e.has_value(), "{}", e.error().to_string());
    eng = std::move(*e);
    o.port = 0;
    o.model_name = "tiny-llama";
    auto s = server::start(*eng, tok, o);
    HELIX_CHECK(s.has_value(), "{}", s.error().to_string());
    srv = std::move(*s);
  }
  [[nodiscard]] httplib::Client client() const {
    httplib::Client cli("127.0.0.1", srv->port());
    cli.set_read_timeout(60s);
    return cli;
  }
  std::unique_ptr<actors::engine> eng;
  std::unique_ptr<server> srv;
};

// What one streamed completion carried.
struct stream_result {
  int status = 0;
  std::vector<std::int32_t> tokens;
  std::string finish_reason;
  bool done = false;  // ended with data: [DONE]
  json usage;
  std::string error;
};

// Parses server-sent events: "data: {...}" lines separated by blank lines.
stream_result parse_sse(int status, const std::string& body) {
  stream_result r;
  r.status = status;
  std::size_t pos = 0;
  while (pos < body.size()) {
    const std::size_t end = body.find("\n\n", pos);
    const std::string event = body.substr(pos, end == std::string::npos ? end : end - pos);
    pos = end == std::string::npos ? body.size() : end + 2;
    if (event.rfind(": ", 0) == 0) continue;  // a keep-alive comment
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << "not an SSE data line: " << event;
    const std::string data = event.substr(6);
    EXPECT_FALSE(r.done) << "an event after [DONE]";
    if (data == "[DONE]") {
      r.done = true;
      continue;
    }
    const json chunk = json::parse(data, nullptr, false);
    EXPECT_FALSE(chunk.is_discarded()) << data;
    if (chunk.contains("error")) {
      r.error = chunk["error"]["message"].get<std::string>();
      continue;
    }
    EXPECT_EQ(chunk["object"], "text_completion");
    if (chunk.contains("usage")) r.usage = chunk["usage"];
    for (const json& c : chunk["choices"]) {
      for (const json& t : c["token_ids"]) r.tokens.push_back(t.get<std::int32_t>());
      if (!c["finish_reason"].is_null()) r.finish_reason = c["finish_reason"].get<std::string>();
    }
  }
  return r;
}

stream_result stream_completion(httplib::Client& cli, const json& body) {
  std::string received;
  auto res = cli.Post("/v1/completions", body.dump(), "application/json");
  if (!res) {
    stream_result failed;
    failed.error = httplib::to_string(res.error());
    return failed;
  }
  return parse_sse(res->status, res->body);
}

TEST(ServeHttp, StreamedAndPlainCompletionsCarryTheDecodersTokens) {
  served s;
  auto cli = s.client();
  const auto weights = test_support::seeded_weights("tiny-llama");
  const std::vector<std::int32_t> prompt = {3, 14, 15, 92, 65};
  const auto expect = generate_alone(weights, prompt, 12, {});

  const stream_result st = stream_completion(cli, {{"model", "tiny-llama"},
                                                   {"prompt", prompt},
                                                   {"max_tokens", 12},
                                                   {"stream", true},
                                                   {"stream_options", {{"include_usage", true}}}});
  EXPECT_EQ(st.status, 200);
  EXPECT_TRUE(st.done);
  EXPECT_EQ(st.tokens, expect);
  EXPECT_EQ(st.finish_reason, "length");
  EXPECT_EQ(st.usage["prompt_tokens"], 5);
  EXPECT_EQ(st.usage["completion_tokens"], 12);

  auto res = cli.Post("/v1/completions",
                      json{{"prompt", json::array({prompt})}, {"max_tokens", 12}}.dump(),
                      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json body = json::parse(res->body);
  EXPECT_EQ(body["choices"][0]["token_ids"].get<std::vector<std::int32_t>>(), expect);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(body["usage"]["total_tokens"], 17);

  // A stop token ends the choice with "stop" and is included, as the engine emits it.
  const std::vector<std::int32_t> with_stop = generate_alone(weights, prompt, 12, {expect[3]});
  const stream_result stopped = stream_completion(
      cli,
      {{"prompt", prompt}, {"max_tokens", 12}, {"stream", true}, {"stop_token_ids", {expect[3]}}});
  EXPECT_EQ(stopped.tokens, with_stop);
  EXPECT_EQ(stopped.finish_reason, "stop");
}

TEST(ServeHttp, BadRequestsGetOpenAiErrorsNamingTheField) {
  served s;
  auto cli = s.client();
  struct bad_case {
    std::string body;
    int status;
    std::string param;  // "" for none
  };
  const std::vector<bad_case> cases = {
      {"{not json", 400, ""},
      {"[1,2]", 400, ""},
      {R"({"max_tokens": 4})", 400, "prompt"},
      {R"({"prompt": "hello"})", 400, "prompt"},  // no tokenizer
      {R"({"prompt": [1, "x"]})", 400, "prompt"},
      {R"({"prompt": [1, -2]})", 400, "prompt"},
      {R"({"prompt": [1, 100000]})", 400, "prompt"},  // outside the vocabulary
      {R"({"prompt": [[1], [2]]})", 400, "prompt"},
      {R"({"prompt": [1], "max_tokens": "4"})", 400, "max_tokens"},
      {R"({"prompt": [1], "max_tokens": 0})", 400, "max_tokens"},
      {R"({"prompt": [1], "max_tokens": 1000000000})", 400, "max_tokens"},  // never fits
      {R"({"prompt": [1], "temperature": -1})", 400, "temperature"},
      {R"({"prompt": [1], "top_p": 0})", 400, "top_p"},
      {R"({"prompt": [1], "top_k": 1.5})", 400, "top_k"},
      {R"({"prompt": [1], "stream": "yes"})", 400, "stream"},
      {R"({"prompt": [1], "stream_options": {"include_usage": true}})", 400, "stream_options"},
      {R"({"prompt": [1], "n": 2})", 400, "n"},
      {R"({"prompt": [1], "echo": true})", 400, "echo"},
      {R"({"prompt": [1], "logprobs": 2})", 400, "logprobs"},
      {R"({"prompt": [1], "stop": "x"})", 400, "stop"},  // stop strings need a tokenizer
      {R"({"prompt": [1], "stop_token_ids": [1, "x"]})", 400, "stop_token_ids"},
      {R"({"prompt": [1], "frobnicate": 1})", 400, "frobnicate"},
      {R"({"prompt": [1], "model": "another"})", 404, "model"},
  };
  for (const bad_case& c : cases) {
    auto res = cli.Post("/v1/completions", c.body, "application/json");
    ASSERT_TRUE(res) << c.body;
    EXPECT_EQ(res->status, c.status) << c.body << " -> " << res->body;
    const json e = json::parse(res->body, nullptr, false);
    ASSERT_FALSE(e.is_discarded()) << res->body;
    ASSERT_TRUE(e.contains("error")) << res->body;
    EXPECT_FALSE(e["error"]["message"].get<std::string>().empty());
    EXPECT_EQ(
        e["error"]["param"].is_null() ? std::string() : e["error"]["param"].get<std::string>(),
        c.param)
        << c.body << " -> " << res->body;
  }
  auto unknown = cli.Get("/v1/nothing");
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->status, 404);
  // A path that decodes to bytes that are not UTF-8 is a 404 too (its JSON body must not throw).
  auto binary = cli.Get("/%FF%FE");
  ASSERT_TRUE(binary);
  EXPECT_EQ(binary->status, 404);
  EXPECT_FALSE(json::parse(binary->body, nullptr, false).is_discarded()) << binary->body;
  // Nothing above reached the engine; it still serves.
  EXPECT_EQ(s.eng->stats().submitted, 0);
  EXPECT_EQ(stream_completion(cli, {{"prompt", {1, 2}}, {"max_tokens", 2}, {"stream", true}})
                .tokens.size(),
            2u);
}

TEST(ServeHttp, BodiesOverTheLimitAre413AndTheServerGoesOn) {
  server_options o;
  o.max_body_bytes = 64 * 1024;
  served s(tiny_config(), o);
  auto cli = s.client();
  std::string huge = R"({"prompt": [)";
  for (int i = 0; i < 40000; ++i) huge += "1,";
  huge += "1]}";
  auto res = cli.Post("/v1/completions", huge, "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  auto ok =
      cli.Post("/v1/completions", R"({"prompt": [1, 2], "max_tokens": 3})", "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST(ServeHttp, RequestsBeyondTheEnginesLimitAre429) {
  actors::engine_config c = tiny_config();
  c.max_queued_requests = 2;
  served s(c);
  actors::request_options long_one;
  long_one.prompt = {1, 2, 3};
  long_one.max_tokens = 3000;
  auto a = s.eng->submit(long_one);
  auto b = s.eng->submit(long_one);
  ASSERT_TRUE(a.has_value() && b.has_value());
  auto cli = s.client();
  auto res =
      cli.Post("/v1/completions", R"({"prompt": [1, 2], "max_tokens": 3})", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429) << res->body;
  EXPECT_EQ(json::parse(res->body)["error"]["type"], "rate_limit_error");
  EXPECT_TRUE(s.eng->cancel(a->id).ok());
  EXPECT_TRUE(s.eng->cancel(b->id).ok());
  (void)a->stream->wait_all();
  (void)b->stream->wait_all();
  auto after =
      cli.Post("/v1/completions", R"({"prompt": [1, 2], "max_tokens": 3})", "application/json");
  ASSERT_TRUE(after);
  EXPECT_EQ(after->status, 200) << after->body;
}

// Polls the engine until `done` holds or 20 s pass.
template <class F>
bool eventually(actors::engine& eng, F done) {
  const auto until = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < until) {
    if (done(eng.stats())) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

TEST(ServeHttp, AClientThatLeavesMidStreamCancelsItsRequestAndFreesItsKv) {
  served s;
  auto cli = s.client();
  int chunks = 0;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = json{{"prompt", {1, 2, 3}}, {"max_tokens", 3000}, {"stream", true}}.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char*, std::size_t, std::uint64_t, std::uint64_t) {
    return ++chunks < 3;
  };
  const httplib::Result res = cli.send(req);
  EXPECT_FALSE(res);  // the client stopped reading and closed the connection
  EXPECT_TRUE(eventually(*s.eng,
                         [](const actors::engine_stats& st) {
                           if (st.cancelled != 1 || st.active != 0) return false;
                           for (const auto& w : st.workers) {
                             if (w.kv_used_blocks != 0) return false;
                           }
                           return true;
                         }))
      << "cancelled " << s.eng->stats().cancelled;
  EXPECT_EQ(s.srv->in_flight(), 0);
}

TEST(ServeHttp, AHundredConcurrentStreamsAllCompleteWithTheirOwnTokens) {
  served s(tiny_config(2));
  const auto weights = test_support::seeded_weights("tiny-llama");
  constexpr int clients = 100;
  std::vector<std::vector<std::int32_t>> prompts, expect;
  for (int i = 0; i < clients; ++i) {
    prompts.push_back(random_tokens(4 + i % 7, 256, static_cast<std::uint64_t>(100 + i)));
    expect.push_back(generate_alone(weights, prompts.back(), 8, {}));
  }
  std::vector<stream_result> got(clients);
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] {
      auto cli = s.client();
      got[static_cast<std::size_t>(i)] = stream_completion(
          cli,
          {{"prompt", prompts[static_cast<std::size_t>(i)]}, {"max_tokens", 8}, {"stream", true}});
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < clients; ++i) {
    const stream_result& r = got[static_cast<std::size_t>(i)];
    EXPECT_EQ(r.status, 200) << i << ": " << r.error;
    EXPECT_TRUE(r.done) << i;
    EXPECT_EQ(r.tokens, expect[static_cast<std::size_t>(i)]) << "client " << i;
  }
  EXPECT_EQ(s.eng->stats().completed, clients);
}

TEST(ServeHttp, MetricsAreWellFormedPrometheusText) {
  served s;
  auto cli = s.client();
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(
        stream_completion(cli, {{"prompt", {1, 2, i}}, {"max_tokens", 4}, {"stream", true}}).status,
        200);
  }
  (void)cli.Post("/v1/completions", "{", "application/json");
  // The engine frees a request's KV just after its last token is sent: scrape once it has (the
  // gauges follow the engine's published state, a step behind the stream).
  const auto freed = [](const std::string& body) {
    return body.find("helix_kv_blocks_used{worker=\"0\"} 0\n") != std::string::npos &&
           body.find("helix_kv_blocks_used{worker=\"1\"} 0\n") != std::string::npos;
  };
  auto res = cli.Get("/metrics");
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (res && !freed(res->body) && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    res = cli.Get("/metrics");
  }
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200);
  EXPECT_NE(res->get_header_value("Content-Type").find("text/plain"), std::string::npos);
  const std::regex comment(R"(^# (HELP|TYPE) helix_[a-z0-9_]+ .+$)");
  const std::regex sample(
      R"(^(helix_[a-z0-9_]+)(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? (-?[0-9.]+(e[-+]?[0-9]+)?|\+Inf|NaN)$)");
  std::map<std::string, std::string> types;
  std::map<std::string, double> values;
  std::size_t pos = 0;
  const std::string& text = res->body;
  while (pos < text.size()) {
    const std::size_t end = text.find('\n', pos);
    ASSERT_NE(end, std::string::npos) << "the text must end with a newline";
    const std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    std::smatch m;
    if (line.rfind("# TYPE ", 0) == 0) {
      const auto sp = line.find(' ', 7);
      types[line.substr(7, sp - 7)] = line.substr(sp + 1);
    }
    if (line[0] == '#') {
      EXPECT_TRUE(std::regex_match(line, comment)) << line;
      continue;
    }
    ASSERT_TRUE(std::regex_match(line, m, sample)) << line;
    values[line.substr(0, line.rfind(' '))] = std::stod(
        line.substr(line.rfind(' ') + 1) == "+Inf" ? "1e300" : line.substr(line.rfind(' ') + 1));
  }
  for (const auto& [name, type] : types) {
    if (type == "counter") {
      EXPECT_TRUE(name.ends_with("_total")) << name;
    }
  }
  EXPECT_EQ(values["helix_requests_finished_total{reason=\"length\"}"], 3.0);
  EXPECT_EQ(values["helix_generation_tokens_total"], 12.0);
  EXPECT_EQ(values["helix_prompt_tokens_total"], 9.0);
  EXPECT_EQ(values["helix_http_errors_total{status=\"400\"}"], 1.0);
  EXPECT_EQ(values["helix_time_to_first_token_seconds_count"], 3.0);
  EXPECT_EQ(values["helix_time_to_first_token_seconds_bucket{le=\"+Inf\"}"], 3.0);
  EXPECT_EQ(values["helix_inter_token_latency_seconds_count"], 9.0);
  EXPECT_EQ(values["helix_kv_blocks_used{worker=\"0\"}"], 0.0);
  EXPECT_GT(values["helix_kv_blocks_capacity{worker=\"1\"}"], 0.0);
  EXPECT_EQ(values["helix_engine_healthy"], 1.0);
  EXPECT_GT(values["helix_engine_steps_total"], 0.0);
  EXPECT_GT(values["helix_step_phase_seconds_total{phase=\"attention\"}"], 0.0);
  EXPECT_GT(values["helix_step_phase_seconds_total{phase=\"ffn\"}"], 0.0);
  EXPECT_GT(values["helix_step_phase_seconds_total{phase=\"sampling\"}"], 0.0);
  EXPECT_TRUE(values.contains("helix_step_phase_seconds_total{phase=\"all_to_all\"}"));
}

// Connects a raw socket to the server.
int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  return fd;
}

TEST(ServeHttp, StalledAndGarbageClientsDoNotBlockOthersAndAreCut) {
  server_options o;
  o.read_timeout = 1s;
  o.threads = 32;
  served s(tiny_config(), o);
  std::vector<int> slow;
  for (int i = 0; i < 16; ++i) {  // half the connection threads: headers that never end
    const int fd = connect_to(s.srv->port());
    const std::string partial = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Le";
    EXPECT_EQ(::send(fd, partial.data(), partial.size(), 0), static_cast<ssize_t>(partial.size()));
    slow.push_back(fd);
  }
  const int garbage = connect_to(s.srv->port());
  const std::string junk = "\x16\x03\x01 not http at all\r\n\r\n";
  EXPECT_GT(::send(garbage, junk.data(), junk.size(), 0), 0);
  auto cli = s.client();
  const stream_result r =
      stream_completion(cli, {{"prompt", {5, 6}}, {"max_tokens", 4}, {"stream", true}});
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.done);
  // Every stalled connection is closed by the server after the read timeout.
  for (const int fd : slow) {
    timeval tv{10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char buf[256];
    ssize_t n = 0;
    while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
    }
    EXPECT_EQ(n, 0) << "the server did not close a stalled connection";
    ::close(fd);
  }
  ::close(garbage);
}

TEST(ServeHttp, DrainFinishesRunningCompletionsAndRefusesNewOnes) {
  served s;
  auto cli = s.client();
  stream_result running;
  std::thread streamer([&] {
    auto c2 = s.client();
    running = stream_completion(c2, {{"prompt", {1, 2}}, {"max_tokens", 3000}, {"stream", true}});
  });
  ASSERT_TRUE(eventually(*s.eng, [](const actors::engine_stats& st) { return st.active == 1; }));
  std::thread drainer([&] { s.srv->drain(30s); });
  // While it drains: not ready, new completions refused with 503.
  bool saw_503 = false;
  for (int i = 0; i < 200 && !saw_503; ++i) {
    auto r = cli.Post("/v1/completions", R"({"prompt": [1], "max_tokens": 1})", "application/json");
    if (!r) break;  // already stopped
    if (r->status == 503) saw_503 = true;
  }
  streamer.join();
  drainer.join();
  EXPECT_TRUE(saw_503);
  EXPECT_TRUE(running.done);
  EXPECT_EQ(running.tokens.size(), 3000u);
  EXPECT_EQ(running.finish_reason, "length");
}

// A checkpoint whose vocabulary is the llama3-bpe fixture tokenizer's: tiny-llama's shape with
// seeded weights, saved with the tokenizer files beside them.
struct text_checkpoint {
  text_checkpoint() {
    const std::filesystem::path src =
        std::filesystem::path(HELIX_FIXTURES_DIR) / "tokenizers" / "llama3-bpe";
    auto t = text::load_tokenizer(src);
    HELIX_CHECK(t.has_value(), "{}", t.error().to_string());
    tok = std::move(*t);
    dir = std::filesystem::temp_directory_path() / fmt::format("helix-serve-text-{}", ::getpid());
    auto spec = builtin_model("tiny-llama");
    HELIX_CHECK(spec.has_value(), "tiny-llama");
    spec->vocab = tok->vocab_size();
    auto w = model::init_seeded_weights(*spec, dtype::f32, 1234);
    HELIX_CHECK(w.has_value(), "{}", w.error().to_string());
    weights = std::move(*w);
    HELIX_CHECK(model::save_checkpoint(dir.string(), weights).ok(), "save");
    for (const char* f : {"tokenizer.json", "tokenizer_config.json"}) {
      std::filesystem::copy_file(src / f, dir / f,
                                 std::filesystem::copy_options::overwrite_existing);
    }
  }
  ~text_checkpoint() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  std::filesystem::path dir;
  std::unique_ptr<text::tokenizer> tok;
  model::model_weights weights;
};

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = c < 0x80         ? 1
                          : (c >> 5) == 6  ? 2
                          : (c >> 4) == 14 ? 3
                          : (c >> 3) == 30 ? 4
                                           : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (std::size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

TEST(ServeHttp, TextPromptsTextOutputAndStopStringsWithATokenizer) {
  text_checkpoint ck;
  actors::engine_config c = tiny_config();
  c.model.clear();
  c.checkpoint = ck.dir.string();
  served s(c, {}, ck.tok.get());
  auto cli = s.client();
  const std::string prompt = "Hello, wörld! 🤖 How are";
  auto ids = ck.tok->encode(prompt, true);
  ASSERT_TRUE(ids.has_value());
  std::vector<std::int32_t> stops;
  if (const auto eos = ck.tok->special_ids().eos) stops.push_back(*eos);
  const auto expect = generate_alone(ck.weights, *ids, 24, stops);

  auto res = cli.Post("/v1/completions", json{{"prompt", prompt}, {"max_tokens", 24}}.dump(),
                      "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const json plain = json::parse(res->body);
  const auto tokens = plain["choices"][0]["token_ids"].get<std::vector<std::int32_t>>();
  EXPECT_EQ(tokens, expect);
  const std::string text = plain["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(text, *ck.tok->decode(tokens, /*skip_special=*/true));
  EXPECT_EQ(plain["usage"]["prompt_tokens"], static_cast<std::int64_t>(ids->size()));

  // Streamed: every chunk's text is whole UTF-8 and the chunks add up to the same text.
  std::string body;
  auto sres = cli.Post("/v1/completions",
                       json{{"prompt", prompt}, {"max_tokens", 24}, {"stream", true}}.dump(),
                       "application/json");
  ASSERT_TRUE(sres);
  std::string joined;
  std::size_t pos = 0;
  while ((pos = sres->body.find("data: {", pos)) != std::string::npos) {
    const std::size_t end = sres->body.find("\n\n", pos);
    const json chunk = json::parse(sres->body.substr(pos + 6, end - pos - 6));
    const std::string piece = chunk["choices"][0]["text"].get<std::string>();
    EXPECT_TRUE(valid_utf8(piece)) << piece;
    joined += piece;
    pos = end;
  }
  EXPECT_EQ(joined, text);

  // A stop string from the middle of that text: the text ends before it, reason "stop".
  ASSERT_GE(text.size(), 6u) << "too little text to pick a stop string from";
  {
    std::size_t at = text.size() / 2;
    while (at > 0 && (static_cast<unsigned char>(text[at]) >> 6) == 2) --at;  // a char boundary
    std::size_t len = 1;
    while (at + len < text.size() && (static_cast<unsigned char>(text[at + len]) >> 6) == 2) ++len;
    const std::string stop = text.substr(at, len);
    const std::size_t first = text.find(stop);
    auto stopped = cli.Post("/v1/completions",
                            json{{"prompt", prompt}, {"max_tokens", 24}, {"stop", {stop}}}.dump(),
                            "application/json");
    ASSERT_TRUE(stopped);
    const json st = json::parse(stopped->body);
    EXPECT_EQ(st["choices"][0]["text"], text.substr(0, first)) << "stop '" << stop << "'";
    EXPECT_EQ(st["choices"][0]["finish_reason"], "stop");
  }
  // Text prompts must be UTF-8 (the JSON parser refuses other bytes).
  auto bad =
      cli.Post("/v1/completions", std::string("{\"prompt\": \"\xff\xfe\"}"), "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
}

// Output of a shell command and its exit status.
std::pair<int, std::string> run_command(const std::string& cmd) {
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return {-1, ""};
  std::string out;
  char buf[4096];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = ::pclose(p);
  return {rc, out};
}

TEST(ServeHttp, CurlStreamsTokenIdsEndingWithDone) {
  if (std::system("curl --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "no curl";
  served s;
  const auto weights = test_support::seeded_weights("tiny-llama");
  const auto expect = generate_alone(weights, {3, 14, 15}, 6, {});
  const std::string cmd = fmt::format(
      "curl -sN --max-time 60 http://127.0.0.1:{}/v1/completions -H 'Content-Type: "
      "application/json' -d '{{\"model\": \"tiny-llama\", \"prompt\": [3, 14, 15], \"max_tokens\": "
      "6, \"stream\": true}}'",
      s.srv->port());
  const auto [rc, out] = run_command(cmd);
  EXPECT_EQ(rc, 0);
  const stream_result r = parse_sse(200, out);
  EXPECT_TRUE(r.done) << out;
  EXPECT_TRUE(out.ends_with("data: [DONE]\n\n")) << out;
  EXPECT_EQ(r.tokens, expect);
}

// The official OpenAI client library (npm `openai`, pinned by tests/serve/openai_client's
// package-lock.json) against the server, plain and streamed. It is installed into a scratch
// folder on first use; without node or a reachable npm registry the test skips.
TEST(ServeHttp, TheOfficialOpenAiClientGetsTheTokensPlainAndStreamed) {
  if (run_command("node --version > /dev/null 2>&1 && npm --version > /dev/null 2>&1").first != 0) {
    GTEST_SKIP() << "node and npm are not installed";
  }
  const std::filesystem::path src =
      std::filesystem::path(HELIX_SOURCE_DIR) / "tests" / "serve" / "openai_client";
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "helix-openai-client";
  std::filesystem::create_directories(dir);
  for (const char* f : {"package.json", "package-lock.json", "client.mjs"}) {
    std::filesystem::copy_file(src / f, dir / f, std::filesystem::copy_options::overwrite_existing);
  }
  if (!std::filesystem::exists(dir / "node_modules" / "openai")) {
    const auto [rc, out] = run_command(
        fmt::format("cd '{}' && timeout 300 npm ci --no-audit --no-fund 2>&1", dir.string()));
    if (rc != 0) GTEST_SKIP() << "npm ci failed (no registry?): " << out;
  }
  served s;
  const auto weights = test_support::seeded_weights("tiny-llama");
  const auto expect = generate_alone(weights, {3, 14, 15}, 7, {});
  const auto [rc, out] = run_command(
      fmt::format("cd '{}' && timeout 120 node client.mjs http://127.0.0.1:{}/v1 tiny-llama "
                  "3,14,15 7 2>&1",
                  dir.string(), s.srv->port()));
  ASSERT_EQ(rc, 0) << out;
  const json r = json::parse(out, nullptr, false);
  ASSERT_FALSE(r.is_discarded()) << out;
  EXPECT_EQ(r["plain"]["token_ids"].get<std::vector<std::int32_t>>(), expect);
  EXPECT_EQ(r["plain"]["finish_reason"], "length");
  EXPECT_EQ(r["plain"]["usage"]["completion_tokens"], 7);
  EXPECT_EQ(r["stream"]["token_ids"].get<std::vector<std::int32_t>>(), expect);
  EXPECT_EQ(r["stream"]["finish_reason"], "length");
  EXPECT_EQ(r["stream"]["chunks"], 7);
  EXPECT_EQ(r["error"]["status"], 400);
  EXPECT_EQ(r["error"]["param"], "prompt");
}

}  // namespace
}  // namespace helix::serve
