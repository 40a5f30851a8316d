#include "apps/bench_serve.hpp"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "apps/cli_args.hpp"
#include "apps/run_cmd.hpp"
#include "core/rng.hpp"

namespace helix::apps {
namespace {

using clock_type = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr const char* usage =
    "usage: helix bench serve [--url http://127.0.0.1:8000] [--requests 64] [--rate 8]\n"
    "                         [--prompt 512] [--max-tokens 64] [--json] [options]\n"
    "  Streams completions of seeded token-id prompts to an OpenAI-compatible server and\n"
    "  reports TTFT, TPOT, ITL and end-to-end latency percentiles, throughput and goodput.\n"
    "  --url URL            the server (default http://127.0.0.1:8000)\n"
    "  --model NAME         the model to name (default: the first of GET /v1/models)\n"
    "  --requests N         requests in all (default 64)\n"
    "  --rate R             Poisson arrivals per second, or inf: all at once (default 8)\n"
    "  --max-concurrency N  requests in flight at most (default 256)\n"
    "  --prompt N           mean prompt tokens (K/M suffixes; default 512)\n"
    "  --max-tokens N       mean tokens to generate (default 64)\n"
    "  --spread F           lengths uniform in mean x [1 - F, 1 + F] (default 0.5)\n"
    "  --vocab N            token ids drawn from [0, N) (default: the server's vocab_size)\n"
    "  --slo-ttft-ms T, --slo-tpot-ms T\n"
    "                       goodput counts requests within both (defaults 2000 and 100)\n"
    "  --seed S             arrivals, lengths and token ids (default 1)\n"
    "  --timeout S          per request (default 600)\n"
    "  --json               JSON on stdout instead of a table\n";

struct bench_options {
  std::string host;
  int port = 0;
  std::string model;
  std::int64_t requests = 64;
  double rate = 8.0;
  std::int64_t max_concurrency = 256;
  std::int64_t prompt = 512;
  std::int64_t max_tokens = 64;
  double spread = 0.5;
  std::int64_t vocab = 0;
  double slo_ttft_ms = 2000.0;
  double slo_tpot_ms = 100.0;
  std::uint64_t seed = 1;
  int timeout_s = 600;
};

struct request_record {
  std::int64_t prompt_tokens = 0;
  std::int64_t output_tokens = 0;
  std::vector<double> token_ms;  // since send, one per token
  double e2e_ms = 0.0;
  std::string error;  // empty when it completed
};

double draw(std::uint64_t seed, std::int64_t request, std::uint64_t what) {
  return random_uniform(seed, static_cast<std::uint64_t>(request), 0, rng_purpose::workload, what);
}

std::int64_t around(double mean, double spread, double u) {
  const double lo = std::max(1.0, mean * (1.0 - spread));
  const double hi = std::max(lo, mean * (1.0 + spread));
  return std::max<std::int64_t>(1, static_cast<std::int64_t>(std::llround(lo + u * (hi - lo))));
}

// "http://host:port[/]" -> host, port.
expected<std::pair<std::string, int>> parse_url(const std::string& url) {
  constexpr std::string_view scheme = "http://";
  if (url.rfind(scheme, 0) != 0) {
    return invalid_argument("--url must start with http:// (got '{}')", url);
  }
  std::string rest = url.substr(scheme.size());
  if (!rest.empty() && rest.back() == '/') rest.pop_back();
  const auto colon = rest.rfind(':');
  if (colon == std::string::npos) return std::pair<std::string, int>{rest, 80};
  char* end = nullptr;
  const long port = std::strtol(rest.c_str() + colon + 1, &end, 10);
  if (*end != '\0' || port < 1 || port > 65535 || colon == 0) {
    return invalid_argument("--url: bad host:port in '{}'", url);
  }
  return std::pair<std::string, int>{rest.substr(0, colon), static_cast<int>(port)};
}

// One streamed completion; fills `r`.
void run_one(const bench_options& o, std::int64_t idx, request_record& r) {
  const std::int64_t plen = around(static_cast<double>(o.prompt), o.spread, draw(o.seed, idx, 1));
  const std::int64_t olen =
      around(static_cast<double>(o.max_tokens), o.spread, draw(o.seed, idx, 2));
  std::vector<std::int32_t> prompt;
  prompt.reserve(static_cast<std::size_t>(plen));
  for (std::int64_t i = 0; i < plen; i += 4) {
    const auto w = random_words(o.seed, static_cast<std::uint64_t>(idx), 1, rng_purpose::workload,
                                16 + static_cast<std::uint64_t>(i / 4));
    for (std::int64_t k = 0; k < 4 && i + k < plen; ++k) {
      prompt.push_back(static_cast<std::int32_t>(w[static_cast<std::size_t>(k)] %
                                                 static_cast<std::uint32_t>(o.vocab)));
    }
  }
  r.prompt_tokens = plen;
  httplib::Client cli(o.host, o.port);
  cli.set_read_timeout(o.timeout_s, 0);
  cli.set_connection_timeout(30, 0);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.set_header("Content-Type", "application/json");
  req.body = json{
      {"model", o.model},
      {"prompt", prompt},
      {"max_tokens", olen},
      {"temperature", 0},
      {"stream",
       true}}.dump();
  std::string pending;
  bool done = false;
  const auto t0 = clock_type::now();
  req.content_receiver = [&](const char* data, std::size_t n, std::uint64_t, std::uint64_t) {
    const double now_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
    pending.append(data, n);
    for (std::size_t end = pending.find("\n\n"); end != std::string::npos;
         end = pending.find("\n\n")) {
      const std::string event = pending.substr(0, end);
      pending.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;  // comments (keep-alives)
      const std::string payload = event.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      const json chunk = json::parse(payload, nullptr, false);
      if (chunk.is_discarded()) {
        r.error = "stream: bad json";
        return false;
      }
      if (chunk.contains("error")) {
        r.error = "stream: server error";
        return false;
      }
      if (!chunk.contains("choices")) continue;
      for (const json& c : chunk["choices"]) {
        if (!c.contains("token_ids") || !c["token_ids"].is_array()) continue;
        for (std::size_t k = 0; k < c["token_ids"].size(); ++k) r.token_ms.push_back(now_ms);
      }
    }
    return true;
  };
  const httplib::Result res = cli.send(req);
  r.e2e_ms = std::chrono::duration<double, std::milli>(clock_type::now() - t0).count();
  r.output_tokens = static_cast<std::int64_t>(r.token_ms.size());
  if (!res) {
    if (r.error.empty()) r.error = "connection: " + httplib::to_string(res.error());
  } else if (res->status != 200) {
    r.error = fmt::format("http {}", res->status);
  } else if (r.error.empty() && !done) {
    r.error = "stream: ended without [DONE]";
  }
}

json percentiles(const latency_summary& s) {
  return json{{"p50", s.p50}, {"p90", s.p90}, {"p99", s.p99}, {"mean", s.mean}, {"count", s.count}};
}

}  // namespace

int run_bench_serve(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  int exit_code = 0;
  const auto a =
      parse_command(args, {"json"},
                    {"url", "model", "requests", "rate", "max-concurrency", "prompt", "max-tokens",
                     "spread", "vocab", "slo-ttft-ms", "slo-tpot-ms", "seed", "timeout", "json"},
                    usage, out, err, exit_code);
  if (!a) return exit_code;
  const auto usage_error = [&err](const std::string& what) {
    err << "error: " << what << "\n" << usage;
    return 2;
  };
  bench_options o;
  const std::string url = a->get_or("url", "http://127.0.0.1:8000");
  auto hp = parse_url(url);
  if (!hp) return usage_error(hp.error().message());
  o.host = hp->first;
  o.port = hp->second;
  const auto requests = a->get_int("requests", o.requests);
  const auto conc = a->get_int("max-concurrency", o.max_concurrency);
  const auto prompt = a->get_size("prompt", o.prompt);
  const auto max_tokens = a->get_size("max-tokens", o.max_tokens);
  const auto vocab = a->get_int("vocab", 0);
  const auto seed = a->get_int("seed", 1);
  const auto timeout = a->get_int("timeout", o.timeout_s);
  for (const auto* e : {&requests, &conc, &prompt, &max_tokens, &vocab, &seed, &timeout}) {
    if (!*e) return usage_error(e->error().message());
  }
  const auto spread = a->get_double("spread", o.spread);
  const auto slo_ttft = a->get_double("slo-ttft-ms", o.slo_ttft_ms);
  const auto slo_tpot = a->get_double("slo-tpot-ms", o.slo_tpot_ms);
  for (const auto* e : {&spread, &slo_ttft, &slo_tpot}) {
    if (!*e) return usage_error(e->error().message());
  }
  const std::string rate_text = a->get_or("rate", "8");
  if (rate_text == "inf") {
    o.rate = std::numeric_limits<double>::infinity();
  } else {
    const auto rate = a->get_double("rate", 8.0);
    if (!rate) return usage_error(rate.error().message());
    if (!(*rate > 0)) return usage_error("--rate must be > 0 or inf");
    o.rate = *rate;
  }
  if (*requests < 1 || *requests > 1000000) return usage_error("--requests takes 1 to 1000000");
  if (*conc < 1 || *conc > 4096) return usage_error("--max-concurrency takes 1 to 4096");
  if (*prompt < 1 || *max_tokens < 1) return usage_error("--prompt and --max-tokens must be >= 1");
  if (*spread < 0 || *spread >= 1) return usage_error("--spread takes [0, 1)");
  if (*seed < 0) return usage_error("--seed must be >= 0");
  if (*timeout < 1) return usage_error("--timeout must be >= 1 s");
  o.requests = *requests;
  o.max_concurrency = *conc;
  o.prompt = *prompt;
  o.max_tokens = *max_tokens;
  o.spread = *spread;
  o.slo_ttft_ms = *slo_ttft;
  o.slo_tpot_ms = *slo_tpot;
  o.seed = static_cast<std::uint64_t>(*seed);
  o.timeout_s = static_cast<int>(*timeout);

  // The model and its vocabulary from GET /v1/models.
  {
    httplib::Client cli(o.host, o.port);
    cli.set_connection_timeout(10, 0);
    cli.set_read_timeout(30, 0);
    auto res = cli.Get("/v1/models");
    if (!res) {
      err << fmt::format("error: {}: GET /v1/models failed ({})\n", url,
                         httplib::to_string(res.error()));
      return 1;
    }
    const json models = json::parse(res->body, nullptr, false);
    if (res->status != 200 || models.is_discarded() || !models.contains("data") ||
        !models["data"].is_array() || models["data"].empty()) {
      err << fmt::format("error: {}: GET /v1/models gave HTTP {}: {}\n", url, res->status,
                         res->body.substr(0, 200));
      return 1;
    }
    const json& m = models["data"][0];
    o.model = a->get_or("model", m.value("id", std::string()));
    o.vocab = *vocab > 0 ? *vocab : m.value("vocab_size", std::int64_t{0});
    if (o.vocab < 1) return usage_error("the server reports no vocab_size: give --vocab");
  }

  std::vector<request_record> records(static_cast<std::size_t>(o.requests));
  // Arrival times first (seeded exponential gaps, or all at once), then a pool of
  // min(max_concurrency, requests) clients: each takes the next request, waits for its arrival
  // and runs it, so at most max_concurrency are in flight and the threads are bounded.
  std::vector<double> arrival_s(records.size(), 0.0);
  if (std::isfinite(o.rate)) {
    double t = 0.0;
    for (std::int64_t i = 0; i < o.requests; ++i) {
      t += -std::log(draw(o.seed, i, 0)) / o.rate;
      arrival_s[static_cast<std::size_t>(i)] = t;
    }
  }
  std::atomic<std::int64_t> next{0};
  std::atomic<std::int64_t> sent{0};
  std::atomic<std::int64_t> finished{0};
  const auto start = clock_type::now();
  const auto clients = std::min(o.max_concurrency, o.requests);
  std::vector<std::thread> threads;
  threads.reserve(static_cast<std::size_t>(clients));
  for (std::int64_t c = 0; c < clients; ++c) {
    threads.emplace_back([&] {
      for (std::int64_t i = next++; i < o.requests; i = next++) {
        std::this_thread::sleep_until(
            start + std::chrono::duration_cast<clock_type::duration>(
                        std::chrono::duration<double>(arrival_s[static_cast<std::size_t>(i)])));
        ++sent;
        run_one(o, i, records[static_cast<std::size_t>(i)]);
        ++finished;
      }
    });
  }
  auto last_progress = start;
  while (finished < o.requests) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (clock_type::now() - last_progress >= std::chrono::seconds(1) || finished == o.requests) {
      last_progress = clock_type::now();
      err << fmt::format("[bench serve] {} sent, {} finished, {} in flight\n", sent.load(),
                         finished.load(), sent.load() - finished.load())
          << std::flush;
    }
  }
  for (auto& t : threads) t.join();
  const double duration_s = std::chrono::duration<double>(clock_type::now() - start).count();

  std::vector<double> ttft, tpot, itl, e2e;
  std::map<std::string, std::int64_t> errors;
  std::int64_t completed = 0;
  std::int64_t good = 0;
  std::int64_t prompt_tokens = 0;
  std::int64_t output_tokens = 0;
  for (const request_record& r : records) {
    if (!r.error.empty()) {
      ++errors[r.error];
      continue;
    }
    ++completed;
    prompt_tokens += r.prompt_tokens;
    output_tokens += r.output_tokens;
    e2e.push_back(r.e2e_ms);
    if (r.token_ms.empty()) continue;
    ttft.push_back(r.token_ms.front());
    for (std::size_t k = 1; k < r.token_ms.size(); ++k) {
      itl.push_back(r.token_ms[k] - r.token_ms[k - 1]);
    }
    const double per_token = r.token_ms.size() > 1 ? (r.token_ms.back() - r.token_ms.front()) /
                                                         static_cast<double>(r.token_ms.size() - 1)
                                                   : 0.0;
    if (r.token_ms.size() > 1) tpot.push_back(per_token);
    if (r.token_ms.front() <= o.slo_ttft_ms && per_token <= o.slo_tpot_ms) ++good;
  }
  const latency_summary s_ttft = summarize(ttft), s_tpot = summarize(tpot), s_itl = summarize(itl),
                        s_e2e = summarize(e2e);
  const std::int64_t failed = o.requests - completed;
  if (a->has("json")) {
    json errs = json::object();
    for (const auto& [k, n] : errors) errs[k] = n;
    out << json{{"url", url},
                {"model", o.model},
                {"requests", o.requests},
                {"completed", completed},
                {"failed", failed},
                {"errors", errs},
                {"duration_s", duration_s},
                {"request_throughput", static_cast<double>(completed) / duration_s},
                {"output_token_throughput", static_cast<double>(output_tokens) / duration_s},
                {"total_token_throughput",
                 static_cast<double>(prompt_tokens + output_tokens) / duration_s},
                {"goodput", static_cast<double>(good) / duration_s},
                {"slo", {{"ttft_ms", o.slo_ttft_ms}, {"tpot_ms", o.slo_tpot_ms}}},
                {"ttft_ms", percentiles(s_ttft)},
                {"tpot_ms", percentiles(s_tpot)},
                {"itl_ms", percentiles(s_itl)},
                {"e2e_ms", percentiles(s_e2e)},
                {"prompt_tokens", prompt_tokens},
                {"output_tokens", output_tokens},
                {"seed", o.seed},
                {"rate", std::isfinite(o.rate) ? json(o.rate) : json("inf")}}
               .dump(2)
        << "\n";
  } else {
    out << fmt::format(
        "bench serve: {} requests to {} ({}), rate {}/s, prompt ~{} tokens, "
        "output ~{} tokens\n",
        o.requests, url, o.model, rate_text, o.prompt, o.max_tokens);
    out << fmt::format(
        "completed {} / failed {} in {:.2f} s: {:.2f} req/s, {:.1f} output tok/s, "
        "goodput {:.2f} req/s (TTFT <= {} ms, TPOT <= {} ms)\n",
        completed, failed, duration_s, static_cast<double>(completed) / duration_s,
        static_cast<double>(output_tokens) / duration_s, static_cast<double>(good) / duration_s,
        o.slo_ttft_ms, o.slo_tpot_ms);
    out << fmt::format("{:<8} {:>10} {:>10} {:>10} {:>10}\n", "ms", "p50", "p90", "p99", "mean");
    for (const auto& [name, s] : {std::pair{"TTFT", s_ttft}, std::pair{"TPOT", s_tpot},
                                  std::pair{"ITL", s_itl}, std::pair{"E2E", s_e2e}}) {
      out << fmt::format("{:<8} {:>10.2f} {:>10.2f} {:>10.2f} {:>10.2f}\n", name, s.p50, s.p90,
                         s.p99, s.mean);
    }
    for (const auto& [k, n] : errors) out << fmt::format("error {}: {}\n", k, n);
  }
  return failed == 0 ? 0 : 1;
}

}  // namespace helix::apps
