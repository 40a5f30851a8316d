// `helix bench decode` on tiny-llama at a small context: the JSON it prints, the KV arithmetic of
// the layouts, and its usage errors.
#include "apps/bench_decode.hpp"

#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

namespace helix::apps {
namespace {

// tiny-llama: 2 layers, KV head_dim 16, bf16. Every layout of 8 ranks leaves one KV head per rank
// (helix/medha: TPA = 2 columns of K/TPA = 1 head; tp: N > K, each head duplicated on 4 ranks),
// so one block (16 tokens) is 2 layers x 16 tokens x (16 + 16) values x 2 bytes on every rank.
constexpr std::int64_t block_bytes = 2 * 16 * (16 + 16) * 2;

nlohmann::json run_json(const std::vector<std::string>& args) {
  std::ostringstream out;
  std::ostringstream err;
  const int rc = run_bench_decode(args, out, err);
  EXPECT_EQ(rc, 0) << err.str();
  const nlohmann::json j = nlohmann::json::parse(out.str(), nullptr, /*allow_exceptions=*/false);
  EXPECT_FALSE(j.is_discarded()) << out.str();
  return j;
}

TEST(BenchDecode, JsonHasEveryFieldAndHelixHoldsAQuarterOfTp) {
  const nlohmann::json j =
      run_json({"--model", "tiny-llama", "--context", "2K", "--batch", "2", "--workers", "8",
                "--layouts", "helix,tp,medha", "--steps", "3", "--json"});
  EXPECT_EQ(j["model"], "tiny-llama");
  EXPECT_EQ(j["context"], 2048);
  EXPECT_EQ(j["batch"], 2);
  EXPECT_EQ(j["workers"], 8);
  EXPECT_EQ(j["kv_dtype"], "bf16");
  EXPECT_EQ(j["kv_fill"], "synthetic");
  ASSERT_EQ(j["layouts"].size(), 3u);
  for (const auto& l : j["layouts"]) {
    for (const char* key :
         {"name", "family", "hopb", "kv_bytes_per_worker", "kv_bytes_read_per_step_per_worker",
          "weight_bytes_read_per_step_per_worker", "bytes_read_per_step", "stream_read_bytes_per_s",
          "fraction_of_limit", "step_ms", "tokens_per_s", "speedup_vs_tp"}) {
      EXPECT_TRUE(l.contains(key)) << key << " in " << l.dump();
    }
    // The bytes a step reads: every worker's weight share and KV; the limit measured beside.
    const double weights = l["weight_bytes_read_per_step_per_worker"].get<double>();
    EXPECT_GT(weights, 0.0) << l.dump();
    EXPECT_GE(l["bytes_read_per_step"].get<double>(), 8 * weights) << l.dump();
    EXPECT_LE(l["bytes_read_per_step"].get<double>(),
              8 * (weights + l["kv_bytes_per_worker"].get<double>()))
        << l.dump();
    EXPECT_GT(l["stream_read_bytes_per_s"].get<double>(), 0.0) << l.dump();
    EXPECT_NEAR(l["fraction_of_limit"].get<double>(),
                l["bytes_read_per_step"].get<double>() / (l["step_ms"].get<double>() / 1e3) /
                    l["stream_read_bytes_per_s"].get<double>(),
                1e-9)
        << l.dump();
    EXPECT_EQ(l["hopb"], false);
    EXPECT_GT(l["step_ms"].get<double>(), 0.0);
    // Where rank 0's steps go: every phase timed, the FFN and the LM head never free.
    double phases = 0.0;
    for (const char* phase : {"attention", "all_to_all", "ffn", "sampling"}) {
      const double ms = l["phase_ms"][phase].get<double>();
      EXPECT_GE(ms, 0.0) << phase << " in " << l.dump();
      phases += ms;
    }
    EXPECT_GT(l["phase_ms"]["ffn"].get<double>(), 0.0) << l.dump();
    EXPECT_GT(l["phase_ms"]["sampling"].get<double>(), 0.0) << l.dump();
    EXPECT_LT(phases, 10 * l["step_ms"].get<double>()) << l.dump();
    EXPECT_NEAR(l["tokens_per_s"].get<double>(), 2.0 / (l["step_ms"].get<double>() / 1e3), 1e-6);
    EXPECT_EQ(l["kv_bytes_per_worker"].get<std::int64_t>() % block_bytes, 0) << l.dump();
  }
  const auto& helix = j["layouts"][0];
  const auto& tp = j["layouts"][1];
  const auto& medha = j["layouts"][2];
  EXPECT_EQ(helix["name"], "helix:kvp=4,tpa=2,tpf=8,ep=1");
  EXPECT_EQ(tp["name"], "tp:tp=8");
  EXPECT_EQ(medha["family"], "medha");
  EXPECT_DOUBLE_EQ(tp["speedup_vs_tp"].get<double>(), 1.0);
  EXPECT_GT(helix["speedup_vs_tp"].get<double>(), 0.0);

  // While the batch decodes, each sequence holds 2048 synthetic + 1 prompt + at most 9 generated
  // tokens, so 129 blocks. tp: every rank holds all 2 x 129 blocks of its head. helix (KVP = 4):
  // each rank holds a quarter of every sequence's blocks, ceil(129 / 4) = 33 at most, plus one
  // for the staggered start.
  const std::int64_t tp_kv = tp["kv_bytes_per_worker"];
  const std::int64_t helix_kv = helix["kv_bytes_per_worker"];
  EXPECT_EQ(tp_kv, 2 * 129 * block_bytes);
  EXPECT_GE(helix_kv * 4, tp_kv);
  EXPECT_LE(helix_kv, 2 * 34 * block_bytes);
  // medha's attention grid is helix's: the same shards.
  EXPECT_EQ(medha["kv_bytes_per_worker"], helix["kv_bytes_per_worker"]);
  // Reads follow the shards: a helix rank reads its quarter, a tp rank the whole context.
  EXPECT_LT(helix["kv_bytes_read_per_step_per_worker"].get<std::int64_t>() * 3,
            tp["kv_bytes_read_per_step_per_worker"].get<std::int64_t>());
  EXPECT_GT(helix["kv_bytes_read_per_step_per_worker"].get<std::int64_t>(), 0);
}

TEST(BenchDecode, HopbBothRunsEveryLayoutTwice) {
  const nlohmann::json j = run_json({"--model", "tiny-llama", "--context", "1K", "--layouts",
                                     "helix,tp", "--hopb", "both", "--steps", "2", "--json"});
  ASSERT_EQ(j["layouts"].size(), 4u);
  EXPECT_EQ(j["layouts"][0]["hopb"], false);
  EXPECT_EQ(j["layouts"][1]["hopb"], true);
  EXPECT_EQ(j["layouts"][0]["name"], j["layouts"][1]["name"]);
  // Each tp case is its own reference: speedup 1 against the tp case with the same setting.
  EXPECT_DOUBLE_EQ(j["layouts"][2]["speedup_vs_tp"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["layouts"][3]["speedup_vs_tp"].get<double>(), 1.0);
  // HOP-B changes the schedule, not the shards.
  EXPECT_EQ(j["layouts"][0]["kv_bytes_per_worker"], j["layouts"][1]["kv_bytes_per_worker"]);
}

// --layout repeats, and one value may list several layouts separated by ';'.
TEST(BenchDecode, ExplicitLayoutsRunInsteadOfTheDefaultFamilies) {
  const nlohmann::json j = run_json({"--model", "tiny-llama", "--context", "256", "--layout",
                                     "helix:kvp=8,tpa=1;tp:tp=8", "--layout=helix:kvp=4,tpa=2",
                                     "--steps", "1", "--json"});
  ASSERT_EQ(j["layouts"].size(), 3u);
  EXPECT_EQ(j["layouts"][0]["name"], "helix:kvp=8,tpa=1,tpf=8,ep=1");
  EXPECT_EQ(j["layouts"][1]["name"], "tp:tp=8");
  EXPECT_EQ(j["layouts"][2]["name"], "helix:kvp=4,tpa=2,tpf=8,ep=1");
}

TEST(BenchDecode, HumanTableNamesEveryLayout) {
  std::ostringstream out;
  std::ostringstream err;
  ASSERT_EQ(
      run_bench_decode({"--model", "tiny-llama", "--context", "512", "--steps", "1"}, out, err), 0)
      << err.str();
  EXPECT_NE(out.str().find("helix:kvp=4,tpa=2,tpf=8,ep=1"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("tp:tp=8"), std::string::npos) << out.str();
  EXPECT_NE(err.str().find("filling"), std::string::npos) << err.str();
}

TEST(BenchDecode, KvTokensPerRankCoverTheShare) {
  const auto helix = layout::parse("helix:kvp=4,tpa=2").value();
  const auto tp = layout::parse("tp:tp=8").value();
  // 129 blocks per sequence. The engine reserves ceil(129 / 4) + 1 = 34 per helix member and
  // 129 + 1 per tp rank for each request, and keeps 10% beside the reservations for
  // rebalancing (plus its two spare blocks).
  const std::int64_t helix_tokens = kv_tokens_per_rank(helix, 2053, 2, 16);
  const std::int64_t tp_tokens = kv_tokens_per_rank(tp, 2053, 2, 16);
  EXPECT_EQ(helix_tokens % 16, 0);
  EXPECT_GE(helix_tokens / 16, 75 + 2);
  EXPECT_LE(helix_tokens / 16, 75 + 3);
  EXPECT_GE(tp_tokens / 16, 286 + 2);
  EXPECT_LE(tp_tokens / 16, 286 + 3);
}

struct usage_case {
  std::vector<std::string> args;
  std::string message;  // expected in the error line
};

TEST(BenchDecode, BadFlagsAreUsageErrorsNamingTheProblem) {
  const std::vector<usage_case> cases = {
      {{"--layouts", "helix,pipeline"}, "unknown family"},
      {{"--context", "0"}, "--context"},
      {{"--context", "lots"}, "lots"},
      {{"--model", "tiny-llama", "--workers", "3"}, "layout rule"},
      {{"--model", "tiny-llama", "--workers", "16", "--layouts", "helix"}, "heads_divisible"},
      {{"--model", "tiny-llama", "--layout", "helix:kvp=2,tpa=4"}, "tpa_divides_k"},
      {{"--hopb", "maybe"}, "--hopb"},
      {{"--kv-dtype", "f16"}, "--kv-dtype"},
      {{"--colour", "red"}, "colour"},
      {{"--model", "tiny-llama", "--layout"}, "--layout"},
      {{"--model", "tiny-llama", "--workers", "4", "--layout", "helix:kvp=8,tpa=1"},
       "8 ranks, but --workers is 4"},
  };
  for (const usage_case& c : cases) {
    std::ostringstream out;
    std::ostringstream err;
    EXPECT_EQ(run_bench_decode(c.args, out, err), 2) << c.message;
    EXPECT_NE(err.str().find(c.message), std::string::npos) << err.str();
  }
}

TEST(BenchDecode, RefusesKvThatDoesNotFitInMemory) {
  std::ostringstream out;
  std::ostringstream err;
  EXPECT_EQ(run_bench_decode({"--context", "1G", "--batch", "64"}, out, err), 2);
  EXPECT_NE(err.str().find("resource_exhausted"), std::string::npos) << err.str();
  EXPECT_NE(err.str().find("physical memory"), std::string::npos) << err.str();
  EXPECT_TRUE(out.str().empty());
}

}  // namespace
}  // namespace helix::apps
