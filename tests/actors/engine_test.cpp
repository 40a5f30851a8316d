// The embedding API end to end on real workers (threads of this process, the local fabric, the
// real rank programs): every request's tokens equal what the single-worker decoder produces for it
// alone (greedy, f32), whatever else runs with it; cancellation, admission and bad input.
#include "actors/engine.hpp"

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/rng.hpp"
#include "model/decoder.hpp"
#include "tests/support/model_fixtures.hpp"

namespace helix::actors {
namespace {

using test_support::generate_alone;
using test_support::random_tokens;

engine_config small_config(std::int64_t workers, const std::string& layout = "auto") {
  engine_config c;
  c.model = "tiny-llama";
  c.num_workers = workers;
  c.layout = layout;
  c.kv_capacity_tokens_per_worker = 2048;
  c.max_batch_tokens = 128;
  c.prefill_chunk_tokens = 16;
  return c;
}

TEST(Engine, OneRequestMatchesTheSingleWorker) {
  auto eng = engine::create(small_config(4, "helix:kvp=2,tpa=2"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const model::model_weights w = test_support::seeded_weights("tiny-llama");
  const auto prompt = random_tokens(37, w.spec.vocab, 11);
  auto h = (*eng)->submit({prompt, {}, 12, {}});
  ASSERT_TRUE(h.has_value()) << h.error().to_string();
  EXPECT_EQ(h->stream->wait_all(), generate_alone(w, prompt, 12, {}));
  const engine_stats s = (*eng)->stats();
  EXPECT_EQ(s.completed, 1);
  EXPECT_EQ(s.tokens_generated, 12);
  EXPECT_EQ(s.layout, "helix:kvp=2,tpa=2,tpf=4,ep=1");
}

// Batch invariance: 100 requests of random lengths arriving at random moments (several agents
// submitting concurrently), joining and leaving the batch as they come and finish, each produce
// token for token what they produce alone.
TEST(Engine, HundredRequestsJoiningAndLeavingMatchEachAlone) {
  auto eng = engine::create(small_config(4));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  const model::model_weights w = test_support::seeded_weights("tiny-llama");
  constexpr int num_requests = 100;
  constexpr int num_agents = 4;
  struct job {
    std::vector<std::int32_t> prompt;
    std::int64_t max_tokens = 1;
    std::vector<std::int32_t> stops;
    std::vector<std::int32_t> got;
    std::int64_t delay_us = 0;
  };
  std::vector<job> jobs(num_requests);
  for (int i = 0; i < num_requests; ++i) {
    const auto r = random_words(99, static_cast<std::uint64_t>(i), 0, rng_purpose::test_data, 0);
    job& j = jobs[static_cast<std::size_t>(i)];
    j.prompt = random_tokens(1 + r[0] % 40, w.spec.vocab, 1000 + static_cast<std::uint64_t>(i));
    j.max_tokens = 1 + r[1] % 12;
    if (r[2] % 4 == 0) j.stops = {static_cast<std::int32_t>(r[3] % w.spec.vocab)};
    j.delay_us = r[3] % 3000;
  }
  std::vector<std::thread> agents;
  for (int a = 0; a < num_agents; ++a) {
    agents.emplace_back([&, a] {
      // Each agent submits its share with random pauses and reads its streams as it goes.
      std::vector<std::pair<int, std::shared_ptr<token_stream>>> mine;
      for (int i = a; i < num_requests; i += num_agents) {
        job& j = jobs[static_cast<std::size_t>(i)];
        std::this_thread::sleep_for(std::chrono::microseconds(j.delay_us));
        auto h = (*eng)->submit({j.prompt, {}, j.max_tokens, j.stops});
        ASSERT_TRUE(h.has_value()) << h.error().to_string();
        mine.emplace_back(i, h->stream);
        if (mine.size() % 3 == 0) {  // sometimes wait for an earlier one before going on
          jobs[static_cast<std::size_t>(mine.front().first)].got = mine.front().second->wait_all();
          mine.erase(mine.begin());
        }
      }
      for (auto& [i, stream] : mine) jobs[static_cast<std::size_t>(i)].got = stream->wait_all();
    });
  }
  for (std::thread& t : agents) t.join();
  for (int i = 0; i < num_requests; ++i) {
    const job& j = jobs[static_cast<std::size_t>(i)];
    EXPECT_EQ(j.got, generate_alone(w, j.prompt, j.max_tokens, j.stops)) << "request " << i;
  }
  engine_stats s = (*eng)->stats();
  EXPECT_EQ(s.completed, num_requests);
  EXPECT_EQ(s.active, 0);
  EXPECT_EQ(s.queued, 0);
  // Every block is freed once the workers have processed the last closes (sent with the last
  // tokens, so they may still be in flight right now).
  auto used = [&] {
    std::int64_t n = 0;
    for (const worker_stats& ws : s.workers) n += ws.kv_used_blocks;
    return n;
  };
  for (int i = 0; i < 500 && used() != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    s = (*eng)->stats();
  }
  EXPECT_EQ(used(), 0);
}

// Requests of different lengths leave at different times, so KV drifts between the KVP ranks; the
// planner migrates blocks (a tight threshold makes it act at this small scale) and every request
// still produces what it produces alone.
// Requests of different lengths leave the ranks' KV unbalanced and the planner migrates blocks;
// every output stays exact. Whether a pass moves anything depends on how the submissions
// interleave with the first steps (under load a request can arrive a step or two late and
// change the placement), so the workload runs up to 3 times until one migrated; every run's
// outputs are checked.
TEST(Engine, RebalancingMigratesBlocksAndKeepsOutputExact) {
  engine_config c = small_config(4, "helix:kvp=4,tpa=1");
  c.rebalance_threshold = 0.01;
  c.rebalance_min_blocks = 2;
  const model::model_weights w = test_support::seeded_weights("tiny-llama");
  engine_stats s;
  for (int attempt = 0; attempt < 3 && s.migrations == 0; ++attempt) {
    auto eng = engine::create(c);
    ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
    std::vector<std::vector<std::int32_t>> prompts;
    std::vector<std::int64_t> lengths;
    std::vector<request_handle> hs;
    for (int i = 0; i < 10; ++i) {
      prompts.push_back(
          random_tokens(40 + 23 * i, w.spec.vocab, 300 + static_cast<std::uint64_t>(i)));
      lengths.push_back(i % 3 == 0 ? 1 : 10 + 7 * i);
      auto h = (*eng)->submit({prompts.back(), {}, lengths.back(), {}});
      ASSERT_TRUE(h.has_value()) << h.error().to_string();
      hs.push_back(*h);
    }
    for (std::size_t i = 0; i < hs.size(); ++i) {
      EXPECT_EQ(hs[i].stream->wait_all(), generate_alone(w, prompts[i], lengths[i], {})) << i;
    }
    s = (*eng)->stats();
    EXPECT_EQ(s.completed, 10);
  }
  EXPECT_GT(s.migrations, 0);
  EXPECT_GT(s.epoch, 0);
}

// A real HF checkpoint (written outside this project) served by two workers reproduces the greedy
// tokens its writer recorded, for a dense GQA model and an MLA + MoE one, stored unquantized and
// as block-scaled FP8 (dequantized at load).
TEST(Engine, CheckpointsReproduceTheirRecordedTokens) {
  for (const char* name : {"llama-bf16", "deepseek-v3-f32", "llama-fp8", "deepseek-v3-fp8"}) {
    const std::string dir = std::string(HELIX_FIXTURES_DIR) + "/hf-tiny/" + name;
    std::ifstream f(dir + "/expected.json");
    ASSERT_TRUE(f.good()) << dir;
    std::stringstream text;
    text << f.rdbuf();
    const nlohmann::json expected = nlohmann::json::parse(text.str());
    engine_config c;
    c.checkpoint = dir;
    c.num_workers = 2;
    c.kv_capacity_tokens_per_worker = 512;
    auto eng = engine::create(c);
    ASSERT_TRUE(eng.has_value()) << name << ": " << eng.error().to_string();
    auto h = (*eng)->submit({expected["prompt"].get<std::vector<std::int32_t>>(),
                             {},
                             expected["steps"].get<std::int64_t>(),
                             {}});
    ASSERT_TRUE(h.has_value()) << h.error().to_string();
    EXPECT_EQ(h->stream->wait_all(), expected["greedy_tokens"].get<std::vector<std::int32_t>>())
        << name;
  }
}

TEST(Engine, CallbackSeesTheStreamsEvents) {
  auto eng = engine::create(small_config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  std::mutex mu;
  std::vector<token_event> seen;
  auto h = (*eng)->submit({{1, 2, 3}, {}, 5, {}}, [&](const token_event& e) {
    std::lock_guard lk(mu);
    seen.push_back(e);
  });
  ASSERT_TRUE(h.has_value());
  std::vector<token_event> pulled;
  while (auto e = h->stream->next()) pulled.push_back(*e);
  ASSERT_EQ(pulled.size(), 5u);
  EXPECT_TRUE(pulled.back().last);
  EXPECT_EQ(pulled.back().reason, finish_reason::length);
  std::lock_guard lk(mu);
  ASSERT_EQ(seen.size(), 5u);
  for (std::size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(seen[i].token, pulled[i].token);
    EXPECT_EQ(seen[i].index, static_cast<std::int64_t>(i));
  }
}

TEST(Engine, CancelEndsRunningAndQueuedRequests) {
  engine_config c = small_config(2, "helix:kvp=2,tpa=1");
  c.kv_capacity_tokens_per_worker = 256;  // 16 blocks: room for one long request at a time
  auto eng = engine::create(c);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  auto running = (*eng)->submit({{5, 6, 7}, {}, 200, {}});
  ASSERT_TRUE(running.has_value());
  auto queued = (*eng)->submit({{8, 9}, {}, 200, {}});  // waits: the first holds the KV
  ASSERT_TRUE(queued.has_value());
  ASSERT_TRUE(running->stream->next().has_value());  // it is generating
  ASSERT_TRUE((*eng)->cancel(queued->id).ok());
  ASSERT_TRUE((*eng)->cancel(running->id).ok());
  auto last_of = [](token_stream& s) {
    token_event last;
    while (auto e = s.next()) last = *e;
    return last;
  };
  const token_event q = last_of(*queued->stream);
  EXPECT_EQ(q.reason, finish_reason::cancelled);
  EXPECT_EQ(q.token, -1);
  EXPECT_EQ(last_of(*running->stream).reason, finish_reason::cancelled);
  EXPECT_EQ((*eng)->cancel(running->id).code(), errc::not_found);
  EXPECT_EQ((*eng)->cancel(12345).code(), errc::not_found);
  // The engine goes on serving after cancellations.
  auto after = (*eng)->submit({{1}, {}, 3, {}});
  ASSERT_TRUE(after.has_value());
  EXPECT_EQ(after->stream->wait_all().size(), 3u);
  EXPECT_EQ((*eng)->stats().cancelled, 2);
}

// Requests that do not fit next to each other wait; none is dropped, each completes.
TEST(Engine, AdmissionQueuesWhatDoesNotFitNow) {
  engine_config c = small_config(2, "helix:kvp=2,tpa=1");
  c.kv_capacity_tokens_per_worker = 256;
  auto eng = engine::create(c);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  std::vector<request_handle> hs;
  for (int i = 0; i < 6; ++i) {
    auto h =
        (*eng)->submit({random_tokens(40, 256, 50 + static_cast<std::uint64_t>(i)), {}, 150, {}});
    ASSERT_TRUE(h.has_value()) << h.error().to_string();
    hs.push_back(*h);
  }
  for (request_handle& h : hs) EXPECT_EQ(h.stream->wait_all().size(), 150u);
  EXPECT_EQ((*eng)->stats().completed, 6);
  // A request that can never fit is refused at submit.
  auto huge = (*eng)->submit({{1, 2}, {}, 5000, {}});
  ASSERT_FALSE(huge.has_value());
  EXPECT_EQ(huge.error().code(), errc::resource_exhausted);
}

TEST(Engine, BadInputGetsClearErrors) {
  auto eng = engine::create(small_config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  EXPECT_EQ((*eng)->submit({{}, {}, 4, {}}).error().code(), errc::invalid_argument);
  EXPECT_EQ((*eng)->submit({{1, 256}, {}, 4, {}}).error().code(), errc::invalid_argument);
  EXPECT_EQ((*eng)->submit({{1, -1}, {}, 4, {}}).error().code(), errc::invalid_argument);
  EXPECT_EQ((*eng)->submit({{1}, {}, 0, {}}).error().code(), errc::invalid_argument);
  EXPECT_EQ((*eng)->submit({{1}, {-1.0f, 0, 1.0f, 0}, 4, {}}).error().code(),
            errc::invalid_argument);
  EXPECT_EQ((*eng)->submit({{1}, {0.5f, 0, 1.5f, 0}, 4, {}}).error().code(),
            errc::invalid_argument);
  EXPECT_EQ((*eng)->submit({{1}, {}, 4, {999}}).error().code(), errc::invalid_argument);

  engine_config c = small_config(8, "helix:kvp=3,tpa=2");
  EXPECT_NE(engine::create(c).error().message().find("layout rule"), std::string::npos);
  c = small_config(4, "helix:kvp=4,tpa=2");
  EXPECT_EQ(engine::create(c).error().code(), errc::invalid_argument);  // 8 ranks != 4 workers
  c = small_config(2);
  c.device = "cuda";
  EXPECT_EQ(engine::create(c).error().code(), errc::invalid_argument);
  c = small_config(2);
  c.model = "no-such-model";
  EXPECT_FALSE(engine::create(c).has_value());
}

// Sampling with temperature is keyed by (seed, request id, position): two engines given the same
// requests in the same order produce the same tokens.
TEST(Engine, TemperatureSamplingIsReproducible) {
  std::vector<std::vector<std::int32_t>> runs;
  for (int run = 0; run < 2; ++run) {
    auto eng = engine::create(small_config(2, "helix:kvp=2,tpa=1"));
    ASSERT_TRUE(eng.has_value());
    auto h = (*eng)->submit({{3, 1, 4, 1, 5}, {0.8f, 40, 0.95f, 7}, 16, {}});
    ASSERT_TRUE(h.has_value());
    runs.push_back(h->stream->wait_all());
  }
  EXPECT_EQ(runs[0].size(), 16u);
  EXPECT_EQ(runs[0], runs[1]);
}

// The benchmark seam: a synthetic context placed by the normal rule. Every layout sees the same
// synthetic values (each head drawn by its global index), so the greedy tokens generated over it
// agree across layouts and with one worker; the KV it occupies shows in the workers' stats.
TEST(Engine, SyntheticContextIsTheSameOnEveryLayout) {
  std::vector<std::vector<std::int32_t>> runs;
  for (const auto& [workers, layout] : {std::pair<std::int64_t, std::string>{1, "auto"},
                                        {2, "helix:kvp=2,tpa=1"},
                                        {4, "helix:kvp=2,tpa=2"},
                                        {2, "tp:tp=2"}}) {
    auto eng = engine::create(small_config(workers, layout));
    ASSERT_TRUE(eng.has_value()) << layout << ": " << eng.error().to_string();
    request_options r;
    r.prompt = {5, 6, 7};
    r.max_tokens = 6;
    r.synthetic_context_tokens = 300;
    r.synthetic_seed = 99;
    std::int64_t kv_blocks_seen = 0;
    auto h = (*eng)->submit(r, [&](const token_event& e) {
      if (e.index == 0) {
        for (const worker_stats& w : (*eng)->stats().workers) kv_blocks_seen += w.kv_used_blocks;
      }
    });
    ASSERT_TRUE(h.has_value()) << h.error().to_string();
    runs.push_back(h->stream->wait_all());
    EXPECT_EQ(runs.back().size(), 6u) << layout;
    // 304 tokens in 16-token blocks: 19 blocks per column of KV heads.
    const std::int64_t columns = layout == "helix:kvp=2,tpa=2" || layout == "tp:tp=2" ? 2 : 1;
    EXPECT_GE(kv_blocks_seen, 19 * columns) << layout;
  }
  for (std::size_t i = 1; i < runs.size(); ++i) EXPECT_EQ(runs[i], runs[0]) << "layout " << i;
  // A different seed is a different context: the first token's logits differ (its greedy
  // token may not: random keys average out in a tiny model).
  auto eng = engine::create(small_config(1));
  ASSERT_TRUE(eng.has_value());
  std::vector<std::vector<float>> first_logits;
  for (const std::uint64_t seed : {99, 100, 99}) {
    request_options r;
    r.prompt = {5, 6, 7};
    r.max_tokens = 1;
    r.synthetic_context_tokens = 300;
    r.synthetic_seed = seed;
    r.return_logits = true;
    auto h = (*eng)->submit(r);
    ASSERT_TRUE(h.has_value());
    auto e = h->stream->next();
    ASSERT_TRUE(e.has_value());
    first_logits.push_back(e->logits);
  }
  EXPECT_NE(first_logits[0], first_logits[1]);
  EXPECT_EQ(first_logits[0], first_logits[2]);
}

TEST(Engine, SyntheticContextCountsInAdmission) {
  auto eng = engine::create(small_config(2, "helix:kvp=2,tpa=1"));
  ASSERT_TRUE(eng.has_value());
  request_options r;
  r.prompt = {1};
  r.synthetic_context_tokens = (*eng)->max_request_tokens();
  auto h = (*eng)->submit(r);
  ASSERT_FALSE(h.has_value());
  EXPECT_EQ(h.error().code(), errc::resource_exhausted);
  EXPECT_NE(h.error().message().find("synthetic"), std::string::npos) << h.error().message();
  r.synthetic_context_tokens = -1;
  h = (*eng)->submit(r);
  ASSERT_FALSE(h.has_value());
  EXPECT_NE(h.error().message().find("synthetic_context_tokens"), std::string::npos);
}

// return_logits: every event carries the row its token came from, equal to the single worker's
// logits, and the token is that row's argmax (greedy).
TEST(Engine, ReturnedLogitsAreTheSingleWorkersRows) {
  const model::model_weights w = test_support::seeded_weights("tiny-llama");
  const auto prompt = random_tokens(9, w.spec.vocab, 5);
  model::decoder_options o;
  o.num_threads = 1;
  o.kv_capacity_tokens = 1024;
  auto dec = model::decoder::create(w, o);
  ASSERT_TRUE(dec.has_value());
  auto eng = engine::create(small_config(4, "helix:kvp=2,tpa=2"));
  ASSERT_TRUE(eng.has_value());
  request_options r;
  r.prompt = prompt;
  r.max_tokens = 5;
  r.return_logits = true;
  auto h = (*eng)->submit(r);
  ASSERT_TRUE(h.has_value());
  const std::uint64_t seq = (*dec)->open_sequence();
  std::vector<std::int32_t> feed = prompt;
  std::vector<float> want(static_cast<std::size_t>(w.spec.vocab));
  std::int64_t events = 0;
  while (auto e = h->stream->next()) {
    ASSERT_EQ(e->logits.size(), want.size()) << "event " << e->index;
    const model::decoder::batch_item item{seq, feed, false};
    ASSERT_TRUE((*dec)->forward({&item, 1}, want).ok());
    float worst = 0.0f;
    for (std::size_t v = 0; v < want.size(); ++v) {
      worst = std::max(worst, std::abs(want[v] - e->logits[v]));
    }
    EXPECT_LT(worst, 1e-4f) << "event " << e->index;
    EXPECT_EQ(e->token, std::max_element(e->logits.begin(), e->logits.end()) - e->logits.begin());
    feed = {e->token};
    ++events;
  }
  EXPECT_EQ(events, 5);
}

TEST(Engine, DestructorCancelsWhatIsStillRunning) {
  std::shared_ptr<token_stream> stream;
  {
    auto eng = engine::create(small_config(2, "helix:kvp=2,tpa=1"));
    ASSERT_TRUE(eng.has_value());
    auto h = (*eng)->submit({{1, 2, 3}, {}, 1000, {}});
    ASSERT_TRUE(h.has_value());
    stream = h->stream;
    ASSERT_TRUE(stream->next().has_value());
  }
  token_event last;
  while (auto e = stream->next()) last = *e;
  EXPECT_EQ(last.reason, finish_reason::cancelled);
}

}  // namespace
}  // namespace helix::actors
