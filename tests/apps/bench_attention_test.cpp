// `helix bench attention` at a small context: the JSON it prints and its usage errors.
#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "apps/bench_attention.hpp"

namespace helix::apps {
namespace {

TEST(BenchAttention, JsonHasEveryFieldForEveryCase) {
  std::ostringstream out;
  std::ostringstream err;
  const int rc = run_bench_attention({"--context", "4K", "--kv-dtype", "bf16,fp8_e4m3", "--threads",
                                      "1,2", "--repeats", "1", "--mla-context", "1K", "--json"},
                                     out, err);
  ASSERT_EQ(rc, 0) << err.str();
  const nlohmann::json j = nlohmann::json::parse(out.str(), nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << out.str();
  EXPECT_EQ(j["kv_fill"], "synthetic");
  EXPECT_EQ(j["context"], 4096);
  EXPECT_EQ(j["block_tokens"], 16);
  ASSERT_TRUE(j["results"].is_array());
  ASSERT_EQ(j["results"].size(), 6u);  // 2 dtypes x 2 thread counts + 2 MLA cases
  for (const auto& r : j["results"]) {
    for (const char* key : {"model", "kv_dtype", "threads", "context", "kv_bytes", "kv_bytes_per_s",
                            "stream_bytes_per_s", "ratio", "ms"}) {
      EXPECT_TRUE(r.contains(key)) << key << " in " << r.dump();
    }
    EXPECT_GT(r["kv_bytes_per_s"].get<double>(), 0.0);
    EXPECT_GT(r["stream_bytes_per_s"].get<double>(), 0.0);
    EXPECT_GT(r["ms"].get<double>(), 0.0);
  }
  const auto& first = j["results"][0];
  EXPECT_EQ(first["model"], "small-llama");
  EXPECT_EQ(first["kv_dtype"], "bf16");
  EXPECT_EQ(first["threads"], 1);
  // small-llama: 2 KV heads x (128 + 128) values per token, bf16.
  EXPECT_EQ(first["kv_bytes"], 4096 * 2 * 256 * 2);
  EXPECT_EQ(j["results"][2]["kv_dtype"], "fp8_e4m3");
  EXPECT_EQ(j["results"][2]["kv_bytes"], 4096 * 2 * 256);
  ASSERT_TRUE(j.contains("mla"));
  EXPECT_EQ(j["mla"]["model"], "deepseek-r1");
  EXPECT_EQ(j["mla"]["context"], 1024);
  EXPECT_EQ(j["mla"]["kv_bytes"], 1024 * 576 * 2);
  EXPECT_GT(j["mla"]["flops_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["mla"]["fma_peak_flops_per_s"].get<double>(), 0.0);
  EXPECT_DOUBLE_EQ(
      j["mla"]["fraction_of_fma_peak"].get<double>(),
      j["mla"]["flops_per_s"].get<double>() / j["mla"]["fma_peak_flops_per_s"].get<double>());
  EXPECT_NE(err.str().find("filling"), std::string::npos);  // progress on stderr
}

TEST(BenchAttention, TableWithoutJsonAndNoMla) {
  std::ostringstream out;
  std::ostringstream err;
  ASSERT_EQ(run_bench_attention({"--context", "1K", "--kv-dtype", "f32", "--threads", "1",
                                 "--repeats", "1", "--no-mla"},
                                out, err),
            0)
      << err.str();
  EXPECT_NE(out.str().find("small-llama"), std::string::npos);
  EXPECT_EQ(out.str().find("deepseek-r1"), std::string::npos);
}

TEST(BenchAttention, BadFlagsReturnTwoWithAnError) {
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--bogus", "1"},
                                               {"--context", "12Q"},
                                               {"--kv-dtype", "int4"},
                                               {"--threads", "0"},
                                               {"--model", "no-such-model"},
                                               {"positional"}}) {
    std::ostringstream out;
    std::ostringstream err;
    EXPECT_EQ(run_bench_attention(args, out, err), 2) << args[0];
    EXPECT_EQ(err.str().rfind("error: ", 0), 0u) << err.str();
  }
}

}  // namespace
}  // namespace helix::apps
