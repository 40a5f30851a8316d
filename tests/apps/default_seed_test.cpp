// Built-in weights used to be seeded with 0 by `helix generate` and with 1234 by the engine, so
// one model name meant different weights in different commands. Regression test: the same greedy
// tokens from `helix generate` and from an engine with the default config.
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "actors/engine.hpp"
#include "apps/generate_cmd.hpp"

namespace helix::apps {
namespace {

TEST(DefaultSeed, GenerateAndTheEngineSeedBuiltinWeightsAlike) {
  std::ostringstream out, err;
  ASSERT_EQ(run_generate({"--model", "tiny-llama", "--prompt", "3,14,15", "--steps", "8", "--json"},
                         out, err),
            0)
      << err.str();
  const auto from_generate = nlohmann::json::parse(out.str())["tokens"].get<std::vector<int>>();

  actors::engine_config c;  // model empty: tiny-llama, default weight seed
  c.kv_capacity_tokens_per_worker = 256;
  auto eng = actors::engine::create(c);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  auto h = (*eng)->submit({{3, 14, 15}, {}, 8, {}});
  ASSERT_TRUE(h.has_value());
  const std::vector<std::int32_t> from_engine = h->stream->wait_all();
  ASSERT_EQ(from_generate.size(), 8u);
  EXPECT_EQ(std::vector<std::int32_t>(from_generate.begin(), from_generate.end()), from_engine);
}

}  // namespace
}  // namespace helix::apps
