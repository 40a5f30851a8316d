// Several agents sharing one Helix engine: the embedding API (actors/engine.hpp) on one page.
//
// Each agent is a thread with its own long context (its instructions, the conversation so far and
// tool output: a few thousand tokens). A turn submits the whole context as the prompt, reads the
// answer, appends it and a new observation, and submits the next turn. The engine batches every
// agent's requests together (continuous batching) and spreads each context's KV blocks over its
// workers, so long contexts from many agents share the workers' memory.
//
// Two ways to read an answer are shown: agent 0 gets its tokens pushed to a callback (on the
// engine's thread, so it only records them); the other agents pull them from the token stream.
//
// Run: build/bin/helix_example_multi_agent [num_workers] [first_context_tokens]
//      (defaults 8 workers, threads of this process, and 2048 tokens)
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "actors/engine.hpp"

namespace {

using helix::actors::engine;
using helix::actors::finish_reason;
using helix::actors::request_options;
using helix::actors::token_event;

constexpr int num_agents = 4;
constexpr int turns_per_agent = 3;
constexpr std::int64_t observation_tokens = 256;  // new tool output per turn
constexpr std::int64_t answer_tokens = 16;

// Stand-in text: a real agent would tokenize its prompt. Deterministic per agent and turn.
std::vector<std::int32_t> fake_tokens(int agent, int turn, std::int64_t count, std::int64_t vocab) {
  std::vector<std::int32_t> t;
  for (std::int64_t i = 0; i < count; ++i) {
    t.push_back(static_cast<std::int32_t>((agent * 7919 + turn * 104729 + i * 31) % vocab));
  }
  return t;
}

struct agent_result {
  std::int64_t context_tokens = 0;  // at the end
  std::int64_t tokens_generated = 0;
  double seconds = 0.0;
  bool ok = true;  // every turn ended by length
};

// One turn, pulling the answer from the request's token stream.
bool ask_pulling(engine& eng, std::vector<std::int32_t>& context) {
  auto handle = eng.submit(request_options{context, {}, answer_tokens, {}});
  if (!handle) {
    std::cerr << "submit: " << handle.error().to_string() << "\n";
    return false;
  }
  finish_reason reason = finish_reason::none;
  while (std::optional<token_event> e = handle->stream->next()) {  // blocks until a token arrives
    if (e->token >= 0) context.push_back(e->token);
    if (e->last) reason = e->reason;
  }
  return reason == finish_reason::length;
}

// One turn, with the tokens pushed to a callback. The callback runs on the engine's thread: it
// only records the token, and hands the end of the answer over with a promise.
bool ask_with_callback(engine& eng, std::vector<std::int32_t>& context) {
  auto answer = std::make_shared<std::vector<std::int32_t>>();
  auto done = std::make_shared<std::promise<finish_reason>>();
  std::future<finish_reason> finished = done->get_future();
  auto handle = eng.submit(request_options{context, {}, answer_tokens, {}},
                           [answer, done](const token_event& e) {
                             if (e.token >= 0) answer->push_back(e.token);
                             if (e.last) done->set_value(e.reason);
                           });
  if (!handle) {
    std::cerr << "submit: " << handle.error().to_string() << "\n";
    return false;
  }
  const finish_reason reason = finished.get();  // the last event has been delivered
  context.insert(context.end(), answer->begin(), answer->end());
  return reason == finish_reason::length;
}

agent_result run_agent(engine& eng, int agent, std::int64_t first_context_tokens) {
  const auto start = std::chrono::steady_clock::now();
  agent_result r;
  std::vector<std::int32_t> context =
      fake_tokens(agent, 0, first_context_tokens + agent * 512, eng.vocab());
  for (int turn = 0; turn < turns_per_agent; ++turn) {
    const std::size_t before = context.size();
    const bool ok = agent == 0 ? ask_with_callback(eng, context) : ask_pulling(eng, context);
    r.ok = r.ok && ok;
    r.tokens_generated += static_cast<std::int64_t>(context.size() - before);
    if (turn + 1 == turns_per_agent) break;
    // A tool runs on the answer; its output joins the context for the next turn.
    const auto observation = fake_tokens(agent, turn + 1, observation_tokens, eng.vocab());
    context.insert(context.end(), observation.begin(), observation.end());
  }
  r.context_tokens = static_cast<std::int64_t>(context.size());
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  helix::actors::engine_config config;  // built-in tiny-llama with seeded weights
  config.num_workers = argc > 1 ? std::atoi(argv[1]) : 8;
  const std::int64_t first_context_tokens = argc > 2 ? std::atoll(argv[2]) : 2048;
  config.layout = "auto";  // helix's default layout for this many workers
  auto created = engine::create(config);
  if (!created) {
    std::cerr << "engine: " << created.error().to_string() << "\n";
    return 1;
  }
  engine& eng = **created;

  std::vector<agent_result> results(num_agents);
  std::vector<std::thread> agents;
  for (int a = 0; a < num_agents; ++a) {
    agents.emplace_back([&eng, &results, a, first_context_tokens] {
      results[a] = run_agent(eng, a, first_context_tokens);
    });
  }
  for (std::thread& t : agents) t.join();

  bool ok = true;
  for (int a = 0; a < num_agents; ++a) {
    const agent_result& r = results[a];
    ok = ok && r.ok;
    std::cout << "agent " << a << (a == 0 ? " (callback)" : " (pulling) ") << ": "
              << turns_per_agent << " turns, " << r.tokens_generated
              << " tokens generated, context now " << r.context_tokens << " tokens, " << r.seconds
              << " s" << (r.ok ? "" : "  FAILED") << "\n";
  }
  const helix::actors::engine_stats s = eng.stats();
  std::cout << "engine: layout " << s.layout << ", " << s.completed << " requests completed, "
            << s.tokens_generated << " tokens, " << s.steps << " steps, " << s.migrations
            << " KV block migrations\nKV blocks used per worker (freed as the workers close the "
               "last requests):";
  for (const helix::actors::worker_stats& w : s.workers) std::cout << " " << w.kv_used_blocks;
  std::cout << " (of " << (s.workers.empty() ? 0 : s.workers.front().kv_capacity_blocks) << ")\n";
  return ok && s.completed == num_agents * turns_per_agent ? 0 : 1;
}
