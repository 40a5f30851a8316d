// `helix verify`: the sharded decoder against the single worker, end to end through the command.
#include "apps/verify_cmd.hpp"

#include <utility>

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace helix::apps {
namespace {

// Runs verify with --json and small sizes; returns the parsed report (null on a non-zero exit).
nlohmann::json verify_json(std::vector<std::string> args) {
  for (const char* a : {"--json", "--steps", "8", "--batch", "3"}) args.emplace_back(a);
  std::ostringstream out, err;
  const int rc = run_verify(args, out, err);
  EXPECT_EQ(rc, 0) << err.str() << out.str();
  if (rc != 0) return nullptr;
  return nlohmann::json::parse(out.str());
}

void expect_exact(const nlohmann::json& j, double tolerance) {
  ASSERT_FALSE(j.is_null());
  EXPECT_TRUE(j["tokens_equal"].get<bool>());
  EXPECT_TRUE(j["pass"].get<bool>());
  EXPECT_EQ(j["tokens_checked"].get<std::int64_t>(), 3 * 8);
  EXPECT_LE(j["max_abs_logit_diff"].get<double>(), tolerance);
  EXPECT_TRUE(j["diverged"].empty());
  EXPECT_EQ(j["prompt_lens"], nlohmann::json({24, 29, 34}));  // different lengths
  EXPECT_GT(j["single_worker"]["prefill_ms"].get<double>(), 0.0);
  EXPECT_GT(j["sharded"]["prefill_ms"].get<double>(), 0.0);
  EXPECT_EQ(j["sharded"]["decode_steps"].get<std::int64_t>(), 7);
}

TEST(VerifyCommand, HelixLayoutMatches) {
  const auto j = verify_json({"--layout", "helix:kvp=4,tpa=2"});
  expect_exact(j, 1e-4);
  EXPECT_EQ(j["layout"], "helix:kvp=4,tpa=2,tpf=8,ep=1");
  EXPECT_EQ(j["family"], "helix");
  EXPECT_EQ(j["dtype"], "f32");
  EXPECT_EQ(j["hopb"], false);
  EXPECT_EQ(j["num_ranks"], 8);
}

TEST(VerifyCommand, TpLayoutMatches) {
  const auto j = verify_json({"--layout", "tp:tp=8"});
  expect_exact(j, 1e-4);
  EXPECT_EQ(j["family"], "tp");
}

TEST(VerifyCommand, MedhaLayoutMatches) {
  const auto j = verify_json({"--layout", "medha:kvp=4,tpa=2"});
  expect_exact(j, 1e-4);
  EXPECT_EQ(j["family"], "medha");
}

TEST(VerifyCommand, Bf16WeightsAndKvMatch) {
  const auto j = verify_json({"--layout", "helix:kvp=4,tpa=2", "--dtype", "bf16"});
  expect_exact(j, 2e-2);
  EXPECT_EQ(j["dtype"], "bf16");
  EXPECT_EQ(j["tolerance"].get<double>(), 2e-2);
}

// FP8 weights kept in FP8 (block-scaled, dequantized inside the GEMV) on the engine's shards and
// on the reference alike: the f32 tolerance holds, on GQA and on MLA + MoE with EP.
TEST(VerifyCommand, Fp8WeightsMatch) {
  for (const auto& [model, grid] :
       {std::pair<std::string, std::string>{"tiny-llama", "helix:kvp=4,tpa=2"},
        {"tiny-llama", "tp:tp=8"},
        {"tiny-deepseek", "helix:kvp=4,tpa=1,tpf=2,ep=2"}}) {
    const auto j = verify_json({"--model", model, "--layout", grid, "--weight-dtype", "fp8_e4m3"});
    expect_exact(j, 1e-4);
    EXPECT_EQ(j["weight_dtype"], "fp8_e4m3") << model << " " << grid;
    EXPECT_EQ(j["dtype"], "f32");
  }
}

TEST(VerifyCommand, HopbMatches) {
  const auto j = verify_json({"--layout", "helix:kvp=4,tpa=2", "--hopb", "on"});
  expect_exact(j, 1e-4);
  EXPECT_EQ(j["hopb"], true);
}

// MLA attention (K = 1: TPA = 1, KVP = N) with MoE experts split over TPF and placed over EP.
TEST(VerifyCommand, DeepseekExpertParallelMatches) {
  const auto j =
      verify_json({"--model", "tiny-deepseek", "--layout", "helix:kvp=8,tpa=1,tpf=2,ep=4"});
  expect_exact(j, 1e-4);
  EXPECT_EQ(j["model"], "tiny-deepseek");
}

TEST(VerifyCommand, DeepseekWholeExpertsMatch) {
  const auto j =
      verify_json({"--model", "tiny-deepseek", "--layout", "helix:kvp=4,tpa=1,tpf=1,ep=4"});
  expect_exact(j, 1e-4);
}

TEST(VerifyCommand, HumanReadableReport) {
  std::ostringstream out, err;
  ASSERT_EQ(run_verify({"--layout", "helix:kvp=2,tpa=2", "--steps", "3", "--batch", "2"}, out, err),
            0)
      << err.str();
  EXPECT_NE(out.str().find("PASS"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("helix:kvp=2,tpa=2,tpf=4,ep=1"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("tokens          equal"), std::string::npos) << out.str();
}

TEST(VerifyCommand, BadFlagsAreUsageErrors) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{}, "--layout is required"},
      {{"--layout", "helix:kvp=4,tpa=2", "--colour", "red"}, "unknown flag --colour"},
      {{"--layout", "helix:kvp=4,tpa=2", "--steps", "many"}, "--steps expects an integer"},
      {{"--layout", "helix:kvp=4,tpa=2", "--batch", "0"}, "--batch 0 must be in"},
      {{"--layout", "helix:kvp=4,tpa=2", "--dtype", "f16"}, "--dtype"},
      {{"--layout", "helix:kvp=4,tpa=2", "--hopb", "maybe"}, "--hopb"},
      {{"--layout", "helix:kvp=3,tpa=2"}, "layout rule heads_divisible"},
      {{"--layout", "tp:tp=3"}, "layout rule"},
      {{"--layout", "helix:kvp=4"}, "error: "},
      {{"--layout", "helix:kvp=4,tpa=2", "--model", "no-such-model"}, "error: "},
      {{"--layout", "helix:kvp=4,tpa=2", "stray"}, "unexpected argument"},
  };
  for (const auto& [args, message] : cases) {
    std::ostringstream out, err;
    EXPECT_EQ(run_verify(args, out, err), 2) << message;
    EXPECT_NE(err.str().find("error: "), std::string::npos) << err.str();
    EXPECT_NE(err.str().find(message), std::string::npos) << err.str();
  }
}

TEST(VerifyCommand, HelpIsNotAnError) {
  std::ostringstream out, err;
  EXPECT_EQ(run_verify({"--help"}, out, err), 0);
  EXPECT_NE(out.str().find("--layout"), std::string::npos);
}

}  // namespace
}  // namespace helix::apps
