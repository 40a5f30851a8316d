// An embedding program whose engine grows and shrinks while agents stream (actors/engine.hpp).
//
// Four agents stream answers from one engine, turn after turn. Meanwhile the program scales the
// engine out when the agents' KV grows (engine::add_workers) and back in when it is done
// (engine::drain_worker): each change is a new layout epoch at a step boundary, in which KV
// blocks move to their owners under the new layout over the data plane. Agents notice nothing but
// a short pause; every answer is the one a fixed engine would give, which the program checks by
// running the same agents on an engine that never changes.
//
// Run: build/bin/helix_example_elastic_cluster [path/to/helix]
//      (workers are threads of this process; with the helix binary, `helix worker` processes)
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "actors/engine.hpp"
#include "cluster/cluster.hpp"

namespace {

using helix::actors::engine;
using helix::actors::request_options;

constexpr int num_agents = 4;
constexpr int turns_per_agent = 4;
constexpr std::int64_t answer_tokens = 24;

// Stand-in text: a real agent would tokenize its prompt. Deterministic per agent and turn.
std::vector<std::int32_t> fake_tokens(int agent, int turn, std::int64_t count, std::int64_t vocab) {
  std::vector<std::int32_t> t;
  for (std::int64_t i = 0; i < count; ++i) {
    t.push_back(static_cast<std::int32_t>((agent * 7919 + turn * 104729 + i * 31) % vocab));
  }
  return t;
}

// One agent's turns, streaming each answer; every token it got, in order (empty on a failure).
std::vector<std::int32_t> run_agent(engine& eng, int agent) {
  std::vector<std::int32_t> context = fake_tokens(agent, 0, 512 + agent * 256, eng.vocab());
  std::vector<std::int32_t> answers;
  for (int turn = 0; turn < turns_per_agent; ++turn) {
    auto handle = eng.submit(request_options{context, {}, answer_tokens, {}});
    if (!handle) {
      std::cerr << "agent " << agent << ": " << handle.error().to_string() << "\n";
      return {};
    }
    while (auto e = handle->stream->next()) {
      if (e->token >= 0) {
        context.push_back(e->token);
        answers.push_back(e->token);
      }
      if (e->last && e->reason != helix::actors::finish_reason::length) {
        std::cerr << "agent " << agent << ": " << e->error.to_string() << "\n";
        return {};
      }
    }
    const auto observation = fake_tokens(agent, turn + 1, 128, eng.vocab());
    context.insert(context.end(), observation.begin(), observation.end());
  }
  return answers;
}

std::unique_ptr<engine> make_engine(const std::string& helix_binary) {
  helix::actors::engine_config config;  // built-in tiny-llama with seeded weights
  config.num_workers = 2;
  config.layout = "helix:kvp=2,tpa=1";
  std::unique_ptr<helix::actors::worker_source> workers;  // null: threads of this process
  if (!helix_binary.empty()) {
    workers = helix::cluster::spawned_workers({.worker_binary = helix_binary});
  }
  auto created = engine::create(config, std::move(workers));
  if (!created) {
    std::cerr << "engine: " << created.error().to_string() << "\n";
    return nullptr;
  }
  return std::move(*created);
}

// Every agent's answers on `eng`; with `elastic`, the engine grows to 4 workers once the agents
// are under way, then two workers leave: tiny-llama has no 3-rank layout, so the first leave
// moves to 2 ranks and a standby, and at the second the standby takes the leaver's rank.
std::vector<std::vector<std::int32_t>> serve(engine& eng, bool elastic) {
  std::vector<std::vector<std::int32_t>> answers(num_agents);
  std::vector<std::thread> agents;
  for (int a = 0; a < num_agents; ++a) {
    agents.emplace_back([&eng, &answers, a] { answers[a] = run_agent(eng, a); });
  }
  if (elastic) {
    const auto wait_for_steps = [&eng](std::int64_t steps) {
      const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (eng.stats().steps < steps && std::chrono::steady_clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    };
    wait_for_steps(10);
    const helix::status grown = eng.add_workers(2);  // returns once the new epoch runs
    std::cout << "add_workers(2): " << grown.to_string() << ", layout " << eng.stats().layout
              << "\n";
    wait_for_steps(40);
    for (int i = 0; i < 2; ++i) {
      const helix::status drained = eng.drain_worker();  // the highest rank leaves
      std::cout << "drain_worker(): " << drained.to_string() << ", layout " << eng.stats().layout
                << "\n";
    }
  }
  for (std::thread& t : agents) t.join();
  return answers;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string helix_binary = argc > 1 ? argv[1] : "";
  auto fixed = make_engine(helix_binary);
  auto elastic = make_engine(helix_binary);
  if (!fixed || !elastic) return 1;
  const auto want = serve(*fixed, false);
  const auto got = serve(*elastic, true);

  const helix::actors::engine_stats s = elastic->stats();
  for (const helix::actors::epoch_stats& e : s.epochs) {
    std::cout << "epoch " << e.reason << ": " << (e.layout_before.empty() ? "-" : e.layout_before)
              << " -> " << e.layout_after << ", " << e.blocks_moved << " KV blocks moved ("
              << e.kv_bytes_moved << " bytes), " << e.blocks_rebuilt << " rebuilt, paused "
              << e.pause_ms << " ms\n";
  }
  bool ok = s.completed == num_agents * turns_per_agent;
  for (int a = 0; a < num_agents; ++a) {
    const bool same = !got[a].empty() && got[a] == want[a];
    ok = ok && same;
    std::cout << "agent " << a << ": " << got[a].size() << " tokens, "
              << (same ? "equal to the fixed engine's" : "DIFFERENT from the fixed engine's")
              << "\n";
  }
  return ok ? 0 : 1;
}
