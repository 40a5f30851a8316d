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
  EXPECT_FALSE(cli_args::parse({"positional"}, {}).has_value());
  EXPECT_EQ(parse_int_list("3,14,15")->size(), 3u);
  EXPECT_FALSE(parse_int_list("3,,4").has_value());
  EXPECT_FALSE(parse_int_list("3,").has_value());
}

// Regression: `helix run --workers 2 --bogus` said "flag --bogus needs a value"; an unknown
// flag is reported as unknown wherever it stands.
TEST(CliArgs, TrailingUnknownFlagIsReportedAsUnknown) {
  auto a = cli_args::parse({"--workers", "2", "--bogus"}, {"json", "help"});
  ASSERT_TRUE(a.has_value()) << a.error().to_string();
  const status st = a->check_known({"workers", "json", "help"});
  EXPECT_EQ(st.code(), errc::invalid_argument);
  EXPECT_EQ(st.message(), "unknown flag --bogus");
  // A known last flag without its value still says so.
  auto b = cli_args::parse({"--json", "--workers"}, {"json"});
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->check_known({"workers", "json"}).message(), "flag --workers needs a value");
  EXPECT_FALSE(b->has("workers"));
  // An unknown flag earlier in the line is reported before the missing value.
  auto c = cli_args::parse({"--colour", "red", "--workers"}, {});
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->check_known({"workers"}).message(), "unknown flag --colour");
  EXPECT_EQ(cli_args::parse({"--steps"}, {})->check_known({"steps"}).message(),
            "flag --steps needs a value");
}

TEST(CliArgs, TrailingUnknownFlagThroughACommand) {
  std::ostringstream out, err;
  EXPECT_EQ(run_generate({"--model", "tiny-llama", "--prompt", "1", "--bogus"}, out, err), 2);
  EXPECT_NE(err.str().find("unknown flag --bogus"), std::string::npos) << err.str();
  EXPECT_EQ(err.str().find("needs a value"), std::string::npos) << err.str();
}

// `--json=false` used to switch JSON on: a switch takes no value.
TEST(CliArgs, SwitchWithAValueIsRefused) {
  auto a = cli_args::parse({"--json=false"}, {"json"});
  ASSERT_FALSE(a.has_value());
  EXPECT_EQ(a.error().code(), errc::invalid_argument);
  EXPECT_EQ(a.error().message(), "switch --json takes no value (got '--json=false')");
  EXPECT_TRUE(cli_args::parse({"--json"}, {"json"})->has("json"));
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

TEST(CliArgs, HostPortNamesTheFlagWhenBad) {
  const auto ok = parse_host_port("10.0.0.1:7000", "listen");
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->first, "10.0.0.1");
  EXPECT_EQ(ok->second, 7000);
  for (const char* bad : {"7000", ":7000", "h:", "h:0", "h:65536", "h:7x"}) {
    const auto r = parse_host_port(bad, "listen");
    ASSERT_FALSE(r.has_value()) << bad;
    EXPECT_NE(r.error().message().find("--listen"), std::string::npos) << bad;
  }
}

}  // namespace
// A command's preamble: flags parsed and checked, --help and bad flags answered with the usage.
TEST(CliArgs, ParseCommandAnswersHelpAndBadFlagsWithTheUsage) {
  const std::string usage = "usage: helix thing [--n N] [--json]\n";
  std::ostringstream out;
  std::ostringstream err;
  int code = -1;
  const auto ok =
      parse_command({"--n", "3", "--json"}, {"json"}, {"n", "json"}, usage, out, err, code);
  ASSERT_TRUE(ok.has_value());
  EXPECT_EQ(ok->get_or("n", ""), "3");
  EXPECT_TRUE(ok->has("json"));
  EXPECT_TRUE(out.str().empty() && err.str().empty());

  EXPECT_FALSE(parse_command({"--help"}, {"json"}, {"n", "json"}, usage, out, err, code));
  EXPECT_EQ(code, 0);
  EXPECT_EQ(out.str(), usage);
  EXPECT_TRUE(err.str().empty());

  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--bogus", "1"}, {"--n"}, {"stray"}, {"--json=1"}}) {
    std::ostringstream e;
    code = -1;
    EXPECT_FALSE(parse_command(bad, {"json"}, {"n", "json"}, usage, out, e, code)) << bad[0];
    EXPECT_EQ(code, 2) << bad[0];
    EXPECT_EQ(e.str().rfind("error: ", 0), 0u) << e.str();
    EXPECT_NE(e.str().find(usage), std::string::npos) << e.str();
  }
}

}  // namespace helix::apps
