// `helix bench recovery` (label multiproc) on tiny-llama at a small context: the JSON it prints,
// both recoveries' shapes (the lost-blocks one keeps, moves and rebuilds blocks; the full replay
// rebuilds every one), outputs equal to the run without the kill, and usage errors. No timing is
// asserted: the figures are measurements of a shared machine.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/cli.hpp"

namespace helix {
namespace {

TEST(BenchRecovery, JsonComparesLostBlocksWithFullReplayOnEqualOutputs) {
  int rc = -1;
  const std::string out = test_support::run_cli(
      HELIX_CLI,
      "bench recovery --model tiny-llama --processes 4 --layout helix:kvp=4,tpa=1 --context 512 "
      "--batch 2 --max-tokens 16 --kill-after 4 --victim 1 --json",
      rc);
  ASSERT_EQ(rc, 0) << out;
  const nlohmann::json j = test_support::last_json(out);
  ASSERT_TRUE(j.is_object()) << out;
  EXPECT_EQ(j["outputs_equal"], true);
  EXPECT_EQ(j["kv_fill"], "synthetic");
  EXPECT_EQ(j["processes"], 4);
  for (const char* key : {"lost_blocks_ms", "full_replay_ms", "speedup", "total_speedup"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    EXPECT_GT(j[key].get<double>(), 0.0) << key;
  }
  const auto& lost = j["lost_blocks"];
  const auto& full = j["full_replay"];
  EXPECT_EQ(lost["mode"], "lost_blocks");
  EXPECT_EQ(full["mode"], "full_replay");
  // 4 -> 2 ranks: a quarter of the blocks died with rank 1, a quarter is handed over by the
  // survivor left without a rank, half stays.
  EXPECT_GT(lost["blocks_kept"].get<std::int64_t>(), 0);
  EXPECT_GT(lost["blocks_moved"].get<std::int64_t>(), 0);
  EXPECT_GT(lost["blocks_rebuilt"].get<std::int64_t>(), 0);
  EXPECT_LT(lost["blocks_rebuilt"].get<std::int64_t>(), full["blocks_rebuilt"].get<std::int64_t>());
  EXPECT_EQ(full["blocks_kept"], 0);
  EXPECT_EQ(lost["layout_after"], "helix:kvp=2,tpa=1,tpf=2,ep=1");
  EXPECT_EQ(j["lost_blocks_ms"], lost["rebuild_ms"]);
}

TEST(BenchRecovery, UsageErrorsNameTheFlag) {
  int rc = -1;
  std::string out = test_support::run_cli(HELIX_CLI, "bench recovery --victim 9", rc);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("--victim"), std::string::npos) << out;
  out = test_support::run_cli(HELIX_CLI, "bench recovery --kill-after 40 --max-tokens 32", rc);
  EXPECT_EQ(rc, 2);
  EXPECT_NE(out.find("--kill-after"), std::string::npos) << out;
}

}  // namespace
}  // namespace helix
