#include "apps/run_cmd.hpp"

#include <openssl/evp.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <deque>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include "actors/config_file.hpp"
#include "apps/cli_args.hpp"
#include "cluster/cluster.hpp"
#include "core/memory.hpp"
#include "core/rng.hpp"

namespace helix::apps {
namespace {

using clock_type = std::chrono::steady_clock;

// Counter-based draws of the workload: (seed, session, turn, what) -> uniform in (0, 1).
enum class draw : std::uint64_t { arrival_gap = 0, turns = 1, first_context = 2, observation = 3 };
constexpr std::uint64_t first_token_draw = 16;     // token i uses index first_token_draw + i / 4
constexpr std::int64_t context_window_factor = 4;  // longest prompt: 4 x the mean first context
constexpr std::size_t max_failures_kept = 8;

double uniform(std::uint64_t seed, std::int64_t session, std::int64_t turn, draw what) {
  return random_uniform(seed, static_cast<std::uint64_t>(session), static_cast<std::uint64_t>(turn),
                        rng_purpose::workload, static_cast<std::uint64_t>(what));
}

// Uniform integer in [lo, hi] from u in (0, 1).
std::int64_t uniform_int(double u, std::int64_t lo, std::int64_t hi) {
  const auto span = static_cast<double>(hi - lo + 1);
  return std::min(hi, lo + static_cast<std::int64_t>(u * span));
}

// Appends `count` seeded token ids of (session, turn) to `tokens`.
void append_tokens(std::vector<std::int32_t>& tokens, std::uint64_t seed, std::int64_t session,
                   std::int64_t turn, std::int64_t count, std::int64_t vocab) {
  for (std::int64_t i = 0; i < count; i += 4) {
    const auto w =
        random_words(seed, static_cast<std::uint64_t>(session), static_cast<std::uint64_t>(turn),
                     rng_purpose::workload, first_token_draw + static_cast<std::uint64_t>(i / 4));
    for (std::int64_t k = 0; k < 4 && i + k < count; ++k) {
      tokens.push_back(static_cast<std::int32_t>(w[static_cast<std::size_t>(k)] %
                                                 static_cast<std::uint32_t>(vocab)));
    }
  }
}

double ms_between(clock_type::time_point a, clock_type::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// One turn of one session. The engine's thread writes the token fields from the callback; the
// driver reads them only after the record came through the completion queue (under its mutex).
struct turn_record {
  std::int64_t session_idx = 0;
  std::int64_t turn_idx = 0;
  std::int64_t prompt_tokens = 0;
  clock_type::time_point submitted;
  clock_type::time_point first_token;
  clock_type::time_point last_token;
  std::vector<std::int32_t> tokens;
  actors::finish_reason reason = actors::finish_reason::none;
  status error;
};

// Finished turns, handed from the engine's callback thread to the driver.
struct completion_queue {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<turn_record*> done;
  std::atomic<std::int64_t> tokens{0};
};

struct session_state {
  std::int64_t idx = 0;
  std::int64_t turns = 1;
  std::int64_t turn = 0;
  std::vector<std::int32_t> context;
};

kv_sample sample_of(const actors::engine_stats& s, double t_s) {
  kv_sample k;
  k.t_s = t_s;
  k.imbalance = s.kv_imbalance;
  for (const actors::worker_stats& w : s.workers) k.used_blocks.push_back(w.kv_used_blocks);
  return k;
}

}  // namespace

expected<std::vector<elastic_event>> parse_elastic(std::string_view text) {
  std::vector<elastic_event> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    const std::size_t comma = std::min(text.find(',', start), text.size());
    const std::string item(text.substr(start, comma - start));
    start = comma + 1;
    const auto bad = [&](std::string_view why) {
      return invalid_argument(
          "--elastic: '{}': {} (expected join|leave:COUNT@WHEN, WHEN as 3s, "
          "500ms or step20)",
          item, why);
    };
    elastic_event e;
    e.text = item;
    const std::size_t colon = item.find(':');
    const std::size_t at = item.find('@');
    if (colon == std::string::npos || at == std::string::npos || at < colon) {
      return bad("not of the form join|leave:COUNT@WHEN");
    }
    const std::string kind = item.substr(0, colon);
    if (kind != "join" && kind != "leave") return bad("the kind must be join or leave");
    e.join = kind == "join";
    const std::string count = item.substr(colon + 1, at - colon - 1);
    char* end = nullptr;
    const long n = count.empty() ? 0 : std::strtol(count.c_str(), &end, 10);
    if (count.empty() || *end != '\0' || n < 1 || n > 64) return bad("COUNT must be 1 to 64");
    e.count = n;
    const std::string when = item.substr(at + 1);
    if (when.rfind("step", 0) == 0) {
      const std::string digits = when.substr(4);
      const long long step = digits.empty() ? -1 : std::strtoll(digits.c_str(), &end, 10);
      if (digits.empty() || *end != '\0' || step < 0) return bad("stepN needs N >= 0");
      e.by_step = true;
      e.step = step;
    } else {
      const bool ms = when.size() > 2 && when.compare(when.size() - 2, 2, "ms") == 0;
      const bool sec = !ms && when.size() > 1 && when.back() == 's';
      if (!ms && !sec) return bad("WHEN needs a unit: s, ms or the step prefix");
      const std::string number = when.substr(0, when.size() - (ms ? 2 : 1));
      const double v = number.empty() ? -1.0 : std::strtod(number.c_str(), &end);
      if (number.empty() || *end != '\0' || !(v >= 0.0) || v > 1e6) {
        return bad("the time must be a number >= 0");
      }
      e.at_s = ms ? v / 1000.0 : v;
    }
    out.push_back(std::move(e));
    if (comma == text.size()) break;
  }
  if (out.empty()) return invalid_argument("--elastic: no events");
  return out;
}

namespace {

status validate(const workload_options& o) {
  if (o.max_agents < 1) return invalid_argument("--agents = {} must be >= 1", o.max_agents);
  if (!(o.rate > 0.0) || !std::isfinite(o.rate)) {
    return invalid_argument("--rate = {} must be a positive number of arrivals per second", o.rate);
  }
  if (!(o.duration_s >= 0.0) || !std::isfinite(o.duration_s)) {
    return invalid_argument("--duration = {} must be >= 0 seconds", o.duration_s);
  }
  if (o.max_requests < 0) return invalid_argument("--requests = {} must be >= 0", o.max_requests);
  if (o.duration_s == 0.0 && o.max_requests == 0) {
    return invalid_argument("the workload needs an end: --duration S or --requests N");
  }
  if (o.context < 2) return invalid_argument("--context = {} must be >= 2 tokens", o.context);
  if (o.turns < 1) return invalid_argument("--turns = {} must be >= 1", o.turns);
  if (o.max_tokens < 1) return invalid_argument("--max-tokens = {} must be >= 1", o.max_tokens);
  if (!(o.sample_interval_s > 0.0) || !(o.progress_interval_s > 0.0) ||
      !(o.stall_timeout_s > 0.0)) {
    return invalid_argument("sample, progress and stall intervals must be positive");
  }
  return {};
}

}  // namespace

namespace {

// SHA-256 over every ended turn's (session, turn, finish reason, tokens), sorted by session and
// turn; integers as 8-byte little-endian values.
std::string output_digest(std::vector<const turn_record*> turns) {
  std::sort(turns.begin(), turns.end(), [](const turn_record* a, const turn_record* b) {
    return std::pair(a->session_idx, a->turn_idx) < std::pair(b->session_idx, b->turn_idx);
  });
  std::vector<unsigned char> bytes;
  const auto put = [&bytes](std::int64_t v) {
    for (int i = 0; i < 8; ++i) bytes.push_back(static_cast<unsigned char>(v >> (8 * i)));
  };
  for (const turn_record* t : turns) {
    put(t->session_idx);
    put(t->turn_idx);
    put(static_cast<std::int64_t>(t->reason));
    put(static_cast<std::int64_t>(t->tokens.size()));
    for (std::int32_t tok : t->tokens) put(tok);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr) != 1) return {};
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

}  // namespace

latency_summary summarize(std::vector<double> v) {
  latency_summary s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const auto at = [&v](double q) {
    const double pos = q * static_cast<double>(v.size() - 1);
    const auto i = static_cast<std::size_t>(pos);
    const double f = pos - static_cast<double>(i);
    return i + 1 < v.size() ? v[i] * (1.0 - f) + v[i + 1] * f : v[i];
  };
  s.p50 = at(0.50);
  s.p90 = at(0.90);
  s.p99 = at(0.99);
  double sum = 0.0;
  for (const double x : v) sum += x;
  s.mean = sum / static_cast<double>(v.size());
  s.count = static_cast<std::int64_t>(v.size());
  return s;
}

expected<workload_report> run_agent_workload(const workload_options& o, std::ostream& progress) {
  HELIX_RETURN_IF_ERROR(validate(o));
  // Declared before the engine: its destructor may still run callbacks that touch them.
  completion_queue queue;
  std::deque<turn_record> records;  // stable addresses
  std::unique_ptr<actors::worker_source> source;
  if (o.processes > 0) {
    cluster::spawned_workers_options so;
    so.worker_binary = o.worker_binary;
    so.standbys = static_cast<int>(o.standbys);
    so.tls_dir = o.tls_dir;
    source = cluster::spawned_workers(so);
  } else if (o.listen) {
    cluster::listening_workers_options lo;
    lo.host = o.listen_host;
    lo.port = o.listen_port;
    lo.standbys = static_cast<int>(o.standbys);
    lo.tls_dir = o.tls_dir;
    source = cluster::listening_workers(lo);
  }
  HELIX_ASSIGN_OR_RETURN(std::unique_ptr<actors::engine> eng,
                         actors::engine::create(o.engine, std::move(source)));
  const std::int64_t vocab = eng->vocab();
  // --elastic: a thread carries the events out as the steps pass, until the workload ends.
  std::atomic<bool> workload_over{false};
  std::mutex elastic_mu;
  std::vector<std::string> elastic_failures;  // under elastic_mu
  std::thread elastic_driver;
  const auto stop_elastic = [&] {
    workload_over = true;
    if (elastic_driver.joinable()) elastic_driver.join();
  };
  // Whichever way this returns (an early refusal, a stall), the driver ends before the engine.
  struct joins_driver {
    const decltype(stop_elastic)& stop;
    ~joins_driver() { stop(); }
  } const driver_guard{stop_elastic};
  if (!o.elastic.empty()) {
    elastic_driver = std::thread([&] {
      std::optional<clock_type::time_point> first_step;
      std::size_t next = 0;
      for (; next < o.elastic.size(); ++next) {
        const elastic_event& e = o.elastic[next];
        bool due = false;
        while (!due && !workload_over) {
          const actors::engine_stats st = eng->stats();
          if (!first_step && st.steps > 0) first_step = clock_type::now();
          due = e.by_step
                    ? st.steps >= e.step
                    : first_step &&
                          std::chrono::duration<double>(clock_type::now() - *first_step).count() >=
                              e.at_s;
          if (!due) std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        if (!due) break;
        const auto t = clock_type::now();
        status done = ok_status();
        if (e.join) {
          done = eng->add_workers(e.count);
        } else {
          for (std::int64_t i = 0; i < e.count && done.ok(); ++i) done = eng->drain_worker(-1);
        }
        progress << fmt::format("[run] elastic {}: {} in {:.0f} ms\n", e.text,
                                done.ok() ? "done" : done.to_string(),
                                ms_between(t, clock_type::now()));
        if (!done.ok()) {
          std::lock_guard lk(elastic_mu);
          elastic_failures.push_back(fmt::format("--elastic {}: {}", e.text, done.to_string()));
        }
      }
      std::lock_guard lk(elastic_mu);
      for (; next < o.elastic.size(); ++next) {
        elastic_failures.push_back(fmt::format(
            "--elastic {}: still pending when the workload ended", o.elastic[next].text));
      }
    });
  }
  // The first turns' prompts reach 3/2 x --context tokens: refuse a workload whose requests can
  // never fit before building a single prompt (a huge --context would spend long building them).
  const std::int64_t longest_first = o.context + o.context / 2;
  if (longest_first > eng->max_request_tokens() - o.max_tokens) {
    return resource_exhausted(
        "helix run: --context {} gives first prompts of up to {} tokens; with --max-tokens {} a "
        "request of this engine holds at most {} tokens (KV capacity {} tokens per worker): lower "
        "--context or raise --kv-capacity",
        o.context, longest_first, o.max_tokens, eng->max_request_tokens(),
        o.engine.kv_capacity_tokens_per_worker);
  }
  const std::int64_t window = context_window_factor * o.context;

  workload_report r;
  r.model = o.engine.checkpoint.empty() ? o.engine.model : o.engine.checkpoint;
  r.workers = o.engine.num_workers;
  std::vector<double> ttft, tpot;
  std::map<std::int64_t, session_state> live;
  std::int64_t turns_planned = 0;  // over every session started
  std::int64_t next_session = 0;
  double next_arrival_s = 0.0;  // the first session opens the run
  bool arrivals_open = true;
  std::optional<clock_type::time_point> first_submit;
  clock_type::time_point last_token;

  const clock_type::time_point t0 = clock_type::now();
  const auto elapsed_s = [&t0] {
    return std::chrono::duration<double>(clock_type::now() - t0).count();
  };
  const auto on_token = [&queue](turn_record* rec) {
    return [&queue, rec](const actors::token_event& e) {
      const clock_type::time_point now = clock_type::now();
      if (e.token >= 0) {
        if (rec->tokens.empty()) rec->first_token = now;
        rec->last_token = now;
        rec->tokens.push_back(e.token);
        queue.tokens.fetch_add(1, std::memory_order_relaxed);
      }
      if (e.last) {
        rec->reason = e.reason;
        rec->error = e.error;
        std::lock_guard lk(queue.mu);
        queue.done.push_back(rec);
        queue.cv.notify_one();
      }
    };
  };
  const auto fail = [&r](std::string why) {
    ++r.requests_failed;
    if (r.failures.size() < max_failures_kept) r.failures.push_back(std::move(why));
  };
  // Submits the session's current turn; false when the engine refused it (the session leaves).
  const auto submit_turn = [&](session_state& s) {
    turn_record& rec = records.emplace_back();
    rec.session_idx = s.idx;
    rec.turn_idx = s.turn;
    rec.prompt_tokens = static_cast<std::int64_t>(s.context.size());
    ++r.requests_planned;
    r.prompt_tokens += rec.prompt_tokens;
    r.max_prompt_tokens = std::max(r.max_prompt_tokens, rec.prompt_tokens);
    rec.submitted = clock_type::now();
    if (!first_submit) first_submit = rec.submitted;
    actors::request_options req;
    req.prompt = s.context;
    req.max_tokens = o.max_tokens;
    auto h = eng->submit(std::move(req), on_token(&rec));
    if (!h) {
      fail(fmt::format("session {} turn {}: {}", s.idx, s.turn, h.error().to_string()));
      return false;
    }
    ++r.requests_submitted;
    return true;
  };
  const auto start_session = [&] {
    session_state s;
    s.idx = next_session;
    s.turns = uniform_int(uniform(o.seed, s.idx, 0, draw::turns), 1, 2 * o.turns - 1);
    if (o.max_requests > 0) s.turns = std::min(s.turns, o.max_requests - turns_planned);
    turns_planned += s.turns;
    const std::int64_t c0 =
        uniform_int(uniform(o.seed, s.idx, 0, draw::first_context),
                    std::max<std::int64_t>(1, o.context / 2), o.context + o.context / 2);
    append_tokens(s.context, o.seed, s.idx, 0, c0, vocab);
    ++r.sessions;
    ++next_session;
    next_arrival_s -= std::log(uniform(o.seed, next_session, 0, draw::arrival_gap)) / o.rate;
    if (submit_turn(s)) live.emplace(s.idx, std::move(s));
  };
  const auto arrivals_end = [&] {
    return (o.duration_s > 0.0 && next_arrival_s > o.duration_s) ||
           (o.max_requests > 0 && turns_planned >= o.max_requests);
  };
  // A finished turn: account it, then the session's next turn or its departure.
  std::vector<const turn_record*> ended;  // for the output digest
  const auto finish_turn = [&](turn_record& rec) {
    ended.push_back(&rec);
    const bool ok = rec.reason == actors::finish_reason::length ||
                    rec.reason == actors::finish_reason::stop_token;
    r.generated_tokens += static_cast<std::int64_t>(rec.tokens.size());
    if (!rec.tokens.empty()) {
      ttft.push_back(ms_between(rec.submitted, rec.first_token));
      last_token = std::max(last_token, rec.last_token);
      if (rec.tokens.size() >= 2) {
        tpot.push_back(ms_between(rec.first_token, rec.last_token) /
                       static_cast<double>(rec.tokens.size() - 1));
      }
    }
    if (ok) {
      ++r.requests_completed;
    } else {
      fail(fmt::format("session {} turn {}: ended with {}{}", rec.session_idx, rec.turn_idx,
                       actors::finish_reason_name(rec.reason),
                       rec.error.ok() ? "" : ": " + rec.error.to_string()));
    }
    auto it = live.find(rec.session_idx);
    if (it == live.end()) return;
    session_state& s = it->second;
    if (!ok || ++s.turn >= s.turns) {
      live.erase(it);
      return;
    }
    s.context.insert(s.context.end(), rec.tokens.begin(), rec.tokens.end());
    const std::int64_t obs = uniform_int(uniform(o.seed, s.idx, s.turn, draw::observation),
                                         std::max<std::int64_t>(1, o.context / 8),
                                         std::max<std::int64_t>(1, 3 * o.context / 8));
    append_tokens(s.context, o.seed, s.idx, s.turn, obs, vocab);
    if (static_cast<std::int64_t>(s.context.size()) > window) {
      s.context.erase(s.context.begin(), s.context.end() - window);
    }
    if (!submit_turn(s)) live.erase(it);
  };

  r.kv_series.push_back(sample_of(eng->stats(), 0.0));
  double next_sample_s = o.sample_interval_s;
  double next_progress_s = o.progress_interval_s;
  double last_activity_s = 0.0;
  std::int64_t last_tokens = 0;
  while (true) {
    double now_s = elapsed_s();
    while (arrivals_open && now_s >= next_arrival_s &&
           static_cast<std::int64_t>(live.size()) < o.max_agents) {
      if (arrivals_end()) {
        arrivals_open = false;
        break;
      }
      start_session();
      last_activity_s = now_s;
    }
    if (arrivals_open && arrivals_end()) arrivals_open = false;
    std::deque<turn_record*> finished;
    {
      std::lock_guard lk(queue.mu);
      finished.swap(queue.done);
    }
    for (turn_record* rec : finished) finish_turn(*rec);
    if (!arrivals_open && live.empty()) break;
    if (o.interrupt != nullptr && o.interrupt->load()) {
      r.interrupted = true;
      progress << fmt::format("[run] interrupted after {:.1f} s: cancelling {} live sessions\n",
                              elapsed_s(), live.size());
      break;
    }

    now_s = elapsed_s();
    if (now_s >= next_sample_s) {
      r.kv_series.push_back(sample_of(eng->stats(), now_s));
      next_sample_s +=
          o.sample_interval_s * std::ceil((now_s - next_sample_s) / o.sample_interval_s + 1e-9);
    }
    if (now_s >= next_progress_s) {
      const std::int64_t tokens = queue.tokens.load(std::memory_order_relaxed);
      const double since =
          first_submit ? std::chrono::duration<double>(clock_type::now() - *first_submit).count()
                       : 0.0;
      progress << fmt::format(
          "[run] {:6.1f} s  {} requests done{}, {} sessions live, {} tokens, {:.1f} tokens/s\n",
          now_s, r.requests_completed,
          r.requests_failed > 0 ? fmt::format(" ({} failed)", r.requests_failed) : "", live.size(),
          tokens, since > 0.0 ? static_cast<double>(tokens) / since : 0.0);
      next_progress_s = now_s + o.progress_interval_s;
    }
    const std::int64_t tokens = queue.tokens.load(std::memory_order_relaxed);
    if (tokens != last_tokens || !finished.empty()) {
      last_tokens = tokens;
      last_activity_s = now_s;
    }
    if (!live.empty() && now_s - last_activity_s > o.stall_timeout_s) {
      return make_error(errc::deadline_exceeded,
                        "helix run: no token for {:.0f} s with {} sessions live", o.stall_timeout_s,
                        live.size());
    }
    double wake_s = std::min(next_sample_s, next_progress_s);
    if (arrivals_open && static_cast<std::int64_t>(live.size()) < o.max_agents) {
      wake_s = std::min(wake_s, next_arrival_s);
    }
    const auto wake = t0 + std::chrono::duration_cast<clock_type::duration>(
                               std::chrono::duration<double>(wake_s));
    std::unique_lock lk(queue.mu);
    queue.cv.wait_until(lk, wake, [&queue] { return !queue.done.empty(); });
  }

  stop_elastic();
  r.elastic_failures = std::move(elastic_failures);
  const actors::engine_stats s = eng->stats();
  r.kv_series.push_back(sample_of(s, elapsed_s()));
  r.epochs = s.epochs;
  r.layout = s.layout;
  r.migrations = s.migrations;
  r.kv_imbalance_max = s.kv_imbalance_max;
  r.recoveries = s.recoveries;
  if (!s.workers.empty()) r.kv_capacity_blocks = s.workers.front().kv_capacity_blocks;
  r.kv_peak_blocks.assign(s.workers.size(), 0);
  for (const kv_sample& k : r.kv_series) {
    for (std::size_t w = 0; w < k.used_blocks.size() && w < r.kv_peak_blocks.size(); ++w) {
      r.kv_peak_blocks[w] = std::max(r.kv_peak_blocks[w], k.used_blocks[w]);
    }
  }
  if (first_submit && last_token > *first_submit) {
    r.wall_s = std::chrono::duration<double>(last_token - *first_submit).count();
    r.tokens_per_s = static_cast<double>(r.generated_tokens) / r.wall_s;
  }
  r.ttft_ms = summarize(std::move(ttft));
  r.tpot_ms = summarize(std::move(tpot));
  r.worker_info = eng->workers();
  char host[256] = {};
  (void)::gethostname(host, sizeof(host) - 1);
  for (const actors::worker_info& w : r.worker_info) {
    std::int64_t rss = -1;
    if (w.host == host || w.host == "localhost") {
      std::ifstream status(fmt::format("/proc/{}/status", w.pid));
      for (std::string line; std::getline(status, line);) {
        if (line.rfind("VmRSS:", 0) == 0) rss = std::stoll(line.substr(6)) * 1024;
      }
    }
    r.worker_rss_bytes.push_back(rss);
  }
  r.output_digest = output_digest(ended);
  return r;
}

int run_workload(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  constexpr const char* run_usage =
      "usage: helix run [--config FILE] [--model tiny-llama] [--workers 8] [--layout auto]\n"
      "                 [--agents 16] [--rate 2] [--duration 8 | --requests N] [--context 4K]\n"
      "                 [--turns 3] [--max-tokens 32] [--seed 1] [--kv-capacity N] [--json]\n"
      "  A multi-agent workload on the embedded engine: agent sessions arrive (Poisson, --rate\n"
      "  per second, at most --agents live), each makes ~--turns requests whose prompt is its\n"
      "  whole context so far (first ~--context tokens, then the answer and new observations),\n"
      "  waiting for each answer before the next turn.\n"
      "  --config FILE     engine config (protobuf text, or JSON when it ends in .json); the\n"
      "                    flags below override it. Default: the built-in config, 8 workers\n"
      "  --model NAME      built-in model (default tiny-llama)\n"
      "  --workers N       workers (ranks) of the engine, threads of this process (default 8)\n"
      "  --processes N     N workers as `helix worker` processes instead (UCX data plane)\n"
      "  --listen HOST:PORT --expect-workers N\n"
      "                    N workers started elsewhere join here (helix worker --join HOST:PORT)\n"
      "  --layout L        auto (helix's default for N workers) or a layout string\n"
      "  --agents N        sessions live at once (default 16)\n"
      "  --rate R          session arrivals per second (default 2)\n"
      "  --duration S      arrivals stop after S seconds (default 8 unless --requests is given)\n"
      "  --requests N      requests (turns) in all\n"
      "  --context N       mean first-turn prompt tokens (K/M suffixes; default 4K)\n"
      "  --turns N         mean turns per session (default 3)\n"
      "  --max-tokens N    tokens generated per turn (default 32)\n"
      "  --seed N          seed of arrivals, lengths and token ids (default 2)\n"
      "  --kv-capacity N   KV tokens per worker (K/M suffixes; default the config's)\n"
      "  --standby K       with --processes or --listen: K more workers join as standbys,\n"
      "                    which take a dead worker's rank at a recovery\n"
      "  --recovery MODE   lost_blocks (default: rebuild the workers on the members that\n"
      "                    remain, which keep their KV; only the lost blocks are computed\n"
      "                    again), full_replay (replay every request) or off (a failed worker\n"
      "                    fails the engine)\n"
      "  --elastic EVENTS  workers join and leave while the workload runs, e.g.\n"
      "                    join:2@3s,leave:1@6s (times from the first decode step; @step20\n"
      "                    counts engine steps; a leave removes the highest rank); an event\n"
      "                    still pending when the workload ends fails the run\n"
      "  --tls-dir DIR     with --processes or --listen: mutual TLS with the workers (ca.pem,\n"
      "                    cert.pem, key.pem; helix cluster certs --out DIR makes them); only\n"
      "                    workers whose certificate the CA signed may join\n"
      "  --json            the report as JSON\n";
  int exit_code = 0;
  const auto a = parse_command(
      args, {"json"},
      {"config",   "model",          "workers", "layout",     "agents",  "rate",        "duration",
       "requests", "context",        "turns",   "max-tokens", "seed",    "kv-capacity", "processes",
       "listen",   "expect-workers", "standby", "recovery",   "elastic", "tls-dir",     "json"},
      run_usage, out, err, exit_code);
  if (!a) return exit_code;
  const auto usage_error = [&err](const std::string& what) {
    err << "error: " << what << "\n" << run_usage;
    return 2;
  };
  workload_options o;
  o.engine.model = "tiny-llama";
  o.engine.num_workers = 8;
  if (const auto path = a->get("config")) {
    auto c = actors::load_engine_config(*path);
    if (!c) return usage_error(c.error().to_string());
    o.engine = *c;
  }
  if (const auto m = a->get("model")) o.engine.model = *m;
  if (const auto l = a->get("layout")) o.engine.layout = *l;
  const auto workers = a->get_int("workers", o.engine.num_workers);
  const auto kv = a->get_size("kv-capacity", o.engine.kv_capacity_tokens_per_worker);
  const auto agents = a->get_int("agents", o.max_agents);
  const auto rate = a->get_double("rate", o.rate);
  const auto requests = a->get_int("requests", 0);
  const auto duration = a->get_double("duration", a->has("requests") ? 0.0 : o.duration_s);
  const auto context = a->get_size("context", o.context);
  const auto turns = a->get_int("turns", o.turns);
  const auto max_tokens = a->get_size("max-tokens", o.max_tokens);
  const auto seed = a->get_int("seed", 1);
  for (const auto* e : {&workers, &kv, &agents, &requests, &context, &turns, &max_tokens, &seed}) {
    if (!*e) return usage_error(e->error().message());
  }
  for (const auto* e : {&rate, &duration}) {
    if (!*e) return usage_error(e->error().message());
  }
  if (*workers < 1 || *workers > 64) return usage_error("--workers takes 1 to 64");
  if (*kv < 1) return usage_error("--kv-capacity must be >= 1 token");
  if (*seed < 0) return usage_error("--seed must be >= 0");
  o.engine.num_workers = *workers;
  if (const auto mode = a->get("recovery")) o.engine.recovery = *mode;  // engine::create checks
  if (a->has("processes")) {
    const auto procs = a->get_int("processes", 0);
    if (!procs) return usage_error(procs.error().message());
    if (*procs < 1 || *procs > 64) return usage_error("--processes takes 1 to 64");
    o.processes = *procs;
    o.engine.num_workers = static_cast<int>(*procs);
    auto self_exe = this_program_path();
    if (!self_exe) return usage_error(self_exe.error().message());
    o.worker_binary = std::move(*self_exe);
  }
  if (const auto listen = a->get("listen")) {
    if (a->has("processes")) return usage_error("--listen and --processes exclude each other");
    const auto expect = a->get_int("expect-workers", 0);
    if (!expect) return usage_error(expect.error().message());
    if (*expect < 1 || *expect > 64) return usage_error("--listen needs --expect-workers 1 to 64");
    const auto hp = parse_host_port(*listen, "listen");
    if (!hp) return usage_error(hp.error().message());
    o.listen = true;
    o.listen_host = hp->first;
    o.listen_port = hp->second;
    o.engine.num_workers = static_cast<int>(*expect);
  } else if (a->has("expect-workers")) {
    return usage_error("--expect-workers goes with --listen");
  }
  if (a->has("standby")) {
    const auto k = a->get_int("standby", 0);
    if (!k) return usage_error(k.error().message());
    if (*k < 0 || *k > 64) return usage_error("--standby takes 0 to 64");
    if (!o.listen && o.processes == 0) {
      return usage_error("--standby goes with --processes or --listen (threads need none)");
    }
    o.standbys = *k;
  }
  if (const auto dir = a->get("tls-dir")) {
    if (!o.listen && o.processes == 0) {
      return usage_error("--tls-dir goes with --processes or --listen (threads need none)");
    }
    o.tls_dir = *dir;
  }
  if (const auto events = a->get("elastic")) {
    auto parsed = parse_elastic(*events);
    if (!parsed) return usage_error(parsed.error().message());
    o.elastic = std::move(*parsed);
  }
  o.engine.kv_capacity_tokens_per_worker = *kv;
  o.max_agents = *agents;
  o.rate = *rate;
  o.max_requests = *requests;
  o.duration_s = *duration;
  o.context = *context;
  o.turns = *turns;
  o.max_tokens = *max_tokens;
  o.seed = static_cast<std::uint64_t>(*seed);
  if (const status v = validate(o); !v.ok()) return usage_error(v.message());

  // Ctrl-C stops the run and still prints what it measured; a second Ctrl-C kills as usual.
  static std::atomic<bool> interrupted{false};
  interrupted = false;
  struct sigaction on_int {};
  struct sigaction previous {};
  on_int.sa_handler = [](int) {
    interrupted = true;
    std::signal(SIGINT, SIG_DFL);
  };
  sigemptyset(&on_int.sa_mask);
  sigaction(SIGINT, &on_int, &previous);
  o.interrupt = &interrupted;
  auto r = run_agent_workload(o, err);
  sigaction(SIGINT, &previous, nullptr);
  if (!r) {
    err << "error: " << r.error().to_string() << "\n";
    const errc code = r.error().code();
    return code == errc::invalid_argument || code == errc::not_found ? 2 : 1;
  }
  if (a->has("json")) {
    out << workload_report_json(o, *r).dump(2) << "\n";
  } else {
    print_workload_report(out, o, *r, 16);
  }
  if (r->interrupted) {
    err << "error: interrupted (SIGINT); the report covers the run so far\n";
    return 130;
  }
  if (!r->elastic_failures.empty()) {
    for (const std::string& f : r->elastic_failures) err << "error: " << f << "\n";
    return 1;
  }
  if (r->requests_failed > 0 || r->requests_completed != r->requests_planned) {
    err << fmt::format("error: {} of {} requests did not complete\n",
                       r->requests_planned - r->requests_completed, r->requests_planned);
    return 1;
  }
  return 0;
}

}  // namespace helix::apps
