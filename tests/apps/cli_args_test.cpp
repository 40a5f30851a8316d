#include "apps/cli_args.hpp"

#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "apps/generate_cmd.hpp"

namespace helix::apps {
namespace {

TEST(CliArgs, SizesAcceptBinarySuffixes) {
  EXPECT_EQ(*parse_size("1M"), 1048576);
  EXPECT_EQ(*parse_size("128K"), 131072);
  EXPECT_EQ(*parse_size("4096"), 4096);
  EXPECT_EQ(*parse_size("2g"), std::int64_t{2} << 30);
  for (const char* bad : {"", "M", "1.5M", "-3", "12Q", "99999999999999999999G"}) {
    EXPECT_EQ(parse_size(bad).error().code(), errc::invalid_argument) << bad;
  }
}

TEST(CliArgs, FlagsSwitchesAndErrors) {
  auto a = cli_args::parse({"--steps", "4", "--json", "--top-p=0.5"}, {"json"});
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(*a->get_int("steps", 0), 4);
  EXPECT_TRUE(a->has("json"));
  EXPECT_EQ(*a->get_double("top-p", 1.0), 0.5);
  EXPECT_EQ(a->get_int("top-p", 0).error().code(), errc::invalid_argument);
  EXPECT_FALSE(a->check_known({"steps", "json"}).ok());
  EXPECT_FALSE(cli_args::parse({"--steps"}, {}).has_value());
  EXPECT_FALSE(cli_args::parse({"positional"}, {}).has_value());
  EXPECT_EQ(parse_int_list("3,14,15")->size(), 3u);
  EXPECT_FALSE(parse_int_list("3,,4").has_value());
  EXPECT_FALSE(parse_int_list("3,").has_value());
}

TEST(GenerateCommand, JsonHasTokensAndTimings) {
  std::ostringstream out, err;
  const int rc = run_generate({"--model", "tiny-deepseek", "--prompt", "3,14,15", "--steps", "6",
                               "--kv-dtype", "bf16", "--json"},
                              out, err);
  ASSERT_EQ(rc, 0) << err.str();
  const auto j = nlohmann::json::parse(out.str());
  EXPECT_EQ(j["tokens"].size(), 6u);
  EXPECT_EQ(j["kv_dtype"], "bf16");
  EXPECT_TRUE(j["timings"].contains("ms_per_token"));
}

TEST(GenerateCommand, BadInputGivesUsageErrors) {
  for (std::vector<std::string> args :
       {std::vector<std::string>{"--model", "tiny-llama"},
        {"--model", "tiny-llama", "--checkpoint", "x", "--prompt", "1"},
        {"--model", "tiny-llama", "--prompt", "1", "--temperature", "-1"},
        {"--model", "tiny-llama", "--prompt", "1", "--kv-dtype", "fp4"},
        {"--model", "tiny-llama", "--prompt", "1,9999"},
        {"--checkpoint", "/nonexistent", "--prompt", "1"},
        {"--model", "tiny-llama", "--prompt", "1", "--bogus", "2"},
        {"--model", "tiny-llama", "--prompt", "1", "--steps", "4G"},
        {"--model", "tiny-llama", "--prompt", "1", "--prefill-chunk", "1G"},
        {"--model", "tiny-llama", "--prompt", "1", "--stop", "4294967486"},
        {"--model", "tiny-llama", "--prompt", ""}}) {
    std::ostringstream out, err;
    EXPECT_EQ(run_generate(args, out, err), 2) << args.back();
    EXPECT_NE(err.str().find("error: "), std::string::npos) << args.back();
  }
}

}  // namespace
}  // namespace helix::apps
