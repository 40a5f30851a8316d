// One request never breaks the engine: regression tests for what broke it, each named after the
// bug. Real engines (worker threads, the local fabric, the real rank programs).
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "actors/engine.hpp"
#include "core/memory.hpp"
#include "tests/support/model_fixtures.hpp"

namespace helix::actors {
namespace {

using test_support::random_tokens;
using namespace std::chrono_literals;

engine_config config(std::int64_t workers, const std::string& layout) {
  engine_config c;
  c.model = "tiny-llama";
  c.num_workers = workers;
  c.layout = layout;
  c.kv_capacity_tokens_per_worker = 2048;
  c.max_batch_tokens = 128;
  c.prefill_chunk_tokens = 16;
  return c;
}

token_event last_event(token_stream& s) {
  token_event last;
  while (auto e = s.next()) last = *e;
  return last;
}

// small-llama has a vocabulary of 32000 split over the workers: a nucleus of temperature-1
// sampling covers far more candidates than one round of shard summaries carries. Such requests
// must complete, and greedy requests before, beside and after them keep their tokens.
TEST(EngineRobustness, NucleusSamplingOnALargeVocabularyDoesNotBreakTheEngine) {
  engine_config c = config(4, "helix:kvp=2,tpa=2");
  c.model = "small-llama";
  c.weight_type = dtype::bf16;
  c.kv_type = dtype::bf16;
  c.kv_capacity_tokens_per_worker = 512;
  c.threads_per_worker = 1;
  auto eng = engine::create(c);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const auto prompt = random_tokens(9, (*eng)->vocab(), 3);
  const request_options greedy{prompt, {}, 4, {}};
  auto before = (*eng)->submit(greedy);
  ASSERT_TRUE(before.has_value());
  const std::vector<std::int32_t> usual = before->stream->wait_all();
  ASSERT_EQ(usual.size(), 4u);
  for (const sampling_params sp :
       {sampling_params{1.0f, 0, 0.9f, 5}, sampling_params{0.8f, 100, 1.0f, 6},
        sampling_params{1.0f, 300, 0.95f, 7}}) {
    auto sampled = (*eng)->submit({prompt, sp, 4, {}});
    auto beside = (*eng)->submit(greedy);
    ASSERT_TRUE(sampled.has_value()) << sampled.error().to_string();
    ASSERT_TRUE(beside.has_value());
    std::vector<std::int32_t> tokens;
    token_event last;
    while (auto e = sampled->stream->next()) {
      if (e->token >= 0) tokens.push_back(e->token);
      last = *e;
    }
    EXPECT_EQ(last.reason, finish_reason::length)
        << "top_k " << sp.top_k << " top_p " << sp.top_p << ": " << last.error.to_string();
    EXPECT_EQ(tokens.size(), 4u);
    EXPECT_EQ(beside->stream->wait_all(), usual);
  }
  auto after = (*eng)->submit(greedy);
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->stream->wait_all(), usual);
  const engine_stats s = (*eng)->stats();
  EXPECT_EQ(s.health, engine_health::serving);
  EXPECT_EQ(s.failed, 0);
}

// prompt_len + max_tokens + block_tokens - 1 used to overflow into a small number and pass.
// A thread that called stats() and lives on, and an engine built on another thread than the
// one that destroys it: the destructor still returns at once (CAF keeps a reference to its
// logger in every thread that used it; the engine drops it after each call).
TEST(EngineRobustness, DestructorDoesNotWaitForOtherThreadsThatUsedTheEngine) {
  engine_config c;
  c.model = "tiny-llama";
  c.num_workers = 2;
  std::unique_ptr<engine> eng;
  std::thread([&] {
    auto made = engine::create(c);
    ASSERT_TRUE(made.has_value()) << made.error().to_string();
    eng = std::move(*made);
  }).join();
  ASSERT_NE(eng, nullptr);
  std::mutex mu;
  std::condition_variable cv;
  bool asked = false;
  bool release = false;
  std::thread bystander([&] {
    (void)eng->stats();
    std::unique_lock lk(mu);
    asked = true;
    cv.notify_all();
    // Alive until the engine is gone (bounded: a regression fails the time check, not hangs).
    cv.wait_for(lk, std::chrono::seconds(15), [&] { return release; });
  });
  {
    std::unique_lock lk(mu);
    cv.wait(lk, [&] { return asked; });
  }
  const auto t0 = std::chrono::steady_clock::now();
  eng.reset();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(10));
  {
    std::lock_guard lk(mu);
    release = true;
  }
  cv.notify_all();
  bystander.join();
}

TEST(EngineRobustness, MaxTokensNearInt64MaxIsRefusedAtSubmit) {
  auto eng = engine::create(config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  for (const std::int64_t m :
       {std::numeric_limits<std::int64_t>::max(), std::numeric_limits<std::int64_t>::max() - 2,
        std::numeric_limits<std::int64_t>::max() / 2}) {
    auto h = (*eng)->submit({{1, 2, 3}, {}, m, {}});
    ASSERT_FALSE(h.has_value());
    EXPECT_EQ(h.error().code(), errc::resource_exhausted) << h.error().to_string();
  }
  auto ok = (*eng)->submit({{1, 2, 3}, {}, 3, {}});
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->stream->wait_all().size(), 3u);
  EXPECT_EQ((*eng)->stats().refused, 3);
}

// A callback that throws used to kill the engine actor: every later stream never ended.
TEST(EngineRobustness, ThrowingCallbackEndsOnlyItsRequest) {
  auto eng = engine::create(config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  auto bad = (*eng)->submit({{1, 2, 3}, {}, 20, {}}, [](const token_event& e) {
    if (e.index == 2) throw std::runtime_error("client bug");
  });
  auto good = (*eng)->submit({{4, 5, 6}, {}, 8, {}});
  ASSERT_TRUE(bad.has_value());
  ASSERT_TRUE(good.has_value());
  const token_event last = last_event(*bad->stream);
  EXPECT_EQ(last.reason, finish_reason::error);
  EXPECT_NE(last.error.message().find("callback threw: client bug"), std::string::npos)
      << last.error.to_string();
  EXPECT_EQ(good->stream->wait_all().size(), 8u);
  auto later = (*eng)->submit({{7}, {}, 4, {}});
  ASSERT_TRUE(later.has_value());
  EXPECT_EQ(later->stream->wait_all().size(), 4u);
  const engine_stats s = (*eng)->stats();
  EXPECT_EQ(s.health, engine_health::serving);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.completed, 2);
  EXPECT_GT(s.steps, 0);
}

// cancel() from a callback used to wait for the engine actor, which was running the callback.
TEST(EngineRobustness, CancelSubmitAndStatsFromACallbackDoNotDeadlock) {
  auto eng = engine::create(config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  engine* e = eng->get();
  std::atomic<std::uint64_t> self_id{0};
  std::mutex mu;
  std::shared_ptr<token_stream> spawned;
  std::int64_t stats_steps = -1;
  auto h = e->submit({{1, 2, 3}, {}, 500, {}}, [&](const token_event& ev) {
    if (ev.index != 1 || ev.last) return;
    std::lock_guard lk(mu);
    stats_steps = e->stats().steps;
    auto child = e->submit({{9, 9}, {}, 3, {}});
    if (child) spawned = child->stream;
    EXPECT_TRUE(e->cancel(ev.request_id).ok());  // self_id may not be stored yet
  });
  ASSERT_TRUE(h.has_value());
  self_id = h->id;
  const token_event last = last_event(*h->stream);
  EXPECT_EQ(last.reason, finish_reason::cancelled);
  std::shared_ptr<token_stream> child;
  {
    std::lock_guard lk(mu);
    child = spawned;
    EXPECT_GE(stats_steps, 1);
  }
  ASSERT_NE(child, nullptr);
  EXPECT_EQ(child->wait_all().size(), 3u);
}

// cancel() returning ok used to race with the request's last token and end it with `length`.
TEST(EngineRobustness, CancelThatReturnsOkAlwaysEndsWithCancelled) {
  auto eng = engine::create(config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  int raced = 0;
  for (int i = 0; i < 40; ++i) {
    auto h = (*eng)->submit({{3, 1, 4}, {}, 1 + i % 3, {}});
    ASSERT_TRUE(h.has_value());
    if (i % 2 == 0) std::this_thread::sleep_for(std::chrono::microseconds(200 * (i % 7)));
    const status st = (*eng)->cancel(h->id);
    const token_event last = last_event(*h->stream);
    if (st.ok()) {
      EXPECT_EQ(last.reason, finish_reason::cancelled) << "request " << i;
      ++raced;
    } else {
      EXPECT_EQ(st.code(), errc::not_found);
      EXPECT_EQ(last.reason, finish_reason::length);
    }
  }
  EXPECT_GT(raced, 0);
}

TEST(EngineRobustness, CancelOfAnUnknownIdSaysNotFoundPlainly) {
  auto eng = engine::create(config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value());
  const status st = (*eng)->cancel(424242);
  EXPECT_EQ(st.code(), errc::not_found);
  EXPECT_EQ(st.message(), "cancel: request 424242 is not queued or running");
}

TEST(EngineRobustness, DeadlineEndsARunningRequestAndFreesItsKv) {
  auto eng = engine::create(config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value());
  request_options r{{1, 2, 3}, {}, 3000, {}};
  r.deadline = std::chrono::steady_clock::now() + 100ms;
  auto h = (*eng)->submit(r);
  ASSERT_TRUE(h.has_value());
  std::int64_t tokens = 0;
  token_event last;
  while (auto e = h->stream->next()) {
    tokens += e->token >= 0 ? 1 : 0;
    last = *e;
  }
  EXPECT_EQ(last.reason, finish_reason::error);
  EXPECT_EQ(last.error.code(), errc::deadline_exceeded) << last.error.to_string();
  EXPECT_LT(tokens, 3000);
  // Its KV is freed (the workers report it once they closed the sequence).
  engine_stats s = (*eng)->stats();
  for (int i = 0; i < 500; ++i) {
    bool freed = true;
    for (const worker_stats& w : s.workers) freed = freed && w.kv_used_blocks == 0;
    if (freed) break;
    std::this_thread::sleep_for(10ms);
    s = (*eng)->stats();
  }
  for (const worker_stats& w : s.workers) EXPECT_EQ(w.kv_used_blocks, 0) << "rank " << w.rank;
  EXPECT_EQ(s.health, engine_health::serving);
  auto next = (*eng)->submit({{5}, {}, 4, {}});
  ASSERT_TRUE(next.has_value());
  EXPECT_EQ(next->stream->wait_all().size(), 4u);

  request_options past{{1}, {}, 2, {}};
  past.deadline = std::chrono::steady_clock::now() - 1ms;
  EXPECT_EQ((*eng)->submit(past).error().code(), errc::deadline_exceeded);
}

// A model far larger than memory used to allocate until the OOM killer ended the process.
TEST(EngineRobustness, ModelLargerThanMemoryIsRefusedBeforeAllocating) {
  engine_config c;
  c.model = "deepseek-r1";
  c.num_workers = 8;
  const auto t0 = std::chrono::steady_clock::now();
  for (const char* layout : {"auto", "helix:kvp=8,tpa=1", "tp:tp=8"}) {
    c.layout = layout;
    auto eng = engine::create(c);
    ASSERT_FALSE(eng.has_value());
    EXPECT_EQ(eng.error().code(), errc::resource_exhausted) << eng.error().to_string();
    EXPECT_NE(eng.error().message().find("deepseek-r1"), std::string::npos)
        << eng.error().to_string();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 5s);
}

#if !defined(__SANITIZE_ADDRESS__)
// Under an address-space limit (ulimit -v), creating an engine that does not fit used to abort
// in a failed allocation. In a child process: the limit must not reach this test binary.
TEST(EngineRobustness, AddressSpaceLimitGivesAnErrorNotAnAbort) {
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const memory_headroom before = available_memory();
    rlimit lim{};
    std::ifstream status_file("/proc/self/status");
    std::string line;
    std::uint64_t vm_kb = 0;
    while (std::getline(status_file, line)) {
      if (line.rfind("VmSize:", 0) == 0) vm_kb = std::stoull(line.substr(7));
    }
    lim.rlim_cur = lim.rlim_max = vm_kb * 1024 + (std::uint64_t{1} << 30);
    if (setrlimit(RLIMIT_AS, &lim) != 0) _exit(3);
    engine_config c;
    c.model = "small-llama";
    c.num_workers = 8;
    c.layout = "helix:kvp=4,tpa=2";
    c.kv_capacity_tokens_per_worker = 4096;
    auto eng = engine::create(c);
    const bool refused = !eng.has_value() && eng.error().code() == errc::resource_exhausted &&
                         eng.error().message().find("RLIMIT_AS") != std::string::npos;
    if (!refused) {
      std::fprintf(stderr, "child: %s (before: %llu bytes)\n",
                   eng.has_value() ? "created" : eng.error().to_string().c_str(),
                   static_cast<unsigned long long>(before.bytes));
    }
    _exit(refused ? 0 : 1);
  }
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus)) << "the child was killed by signal " << WTERMSIG(wstatus);
  EXPECT_EQ(WEXITSTATUS(wstatus), 0);
}
#endif

// The layout used to be parsed only after the weights were built.
TEST(EngineRobustness, LayoutIsCheckedBeforeAnyWeightIsBuilt) {
  engine_config c;
  c.model = "deepseek-r1";
  c.layout = "zzz";
  auto eng = engine::create(c);
  ASSERT_FALSE(eng.has_value());
  EXPECT_EQ(eng.error().code(), errc::invalid_argument) << eng.error().to_string();
}

TEST(EngineRobustness, ModelAndCheckpointTogetherAreRefused) {
  engine_config c = config(1, "auto");
  c.checkpoint = "/nonexistent";
  auto v = validate(c);
  EXPECT_EQ(v.code(), errc::invalid_argument);
  EXPECT_NE(v.message().find("both set"), std::string::npos);
  engine_config d;  // neither: tiny-llama
  d.kv_capacity_tokens_per_worker = 256;
  auto eng = engine::create(d);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  EXPECT_EQ((*eng)->vocab(), 256);
}

TEST(EngineRobustness, EveryNumericConfigFieldHasBounds) {
  const auto refused = [](auto mutate, const char* field) {
    engine_config c = config(2, "auto");
    mutate(c);
    const status st = validate(c);
    EXPECT_EQ(st.code(), errc::invalid_argument) << field;
    EXPECT_NE(st.message().find(field), std::string::npos) << st.to_string();
  };
  refused([](engine_config& c) { c.threads_per_worker = 100000; }, "threads_per_worker");
  refused([](engine_config& c) { c.rebalance_threshold = 1e308; }, "rebalance_threshold");
  refused([](engine_config& c) { c.rebalance_threshold = std::nan(""); }, "rebalance_threshold");
  refused([](engine_config& c) { c.num_workers = 1 << 20; }, "num_workers");
  refused([](engine_config& c) { c.kv_capacity_tokens_per_worker = std::int64_t{1} << 62; },
          "kv_capacity_tokens_per_worker");
  refused([](engine_config& c) { c.block_tokens = std::int64_t{1} << 40; }, "block_tokens");
  refused([](engine_config& c) { c.max_batch_tokens = std::numeric_limits<std::int64_t>::max(); },
          "max_batch_tokens");
  refused([](engine_config& c) { c.prefill_chunk_tokens = -5; }, "prefill_chunk_tokens");
  refused([](engine_config& c) { c.max_queued_requests = std::int64_t{1} << 40; },
          "max_queued_requests");
  refused([](engine_config& c) { c.rebalance_min_blocks = -1; }, "rebalance_min_blocks");
  refused([](engine_config& c) { c.log_level = "loud"; }, "log_level");
  refused([](engine_config& c) { c.kv_capacity_tokens_per_worker = 16; },
          "kv_capacity_tokens_per_worker");
}

}  // namespace
}  // namespace helix::actors
