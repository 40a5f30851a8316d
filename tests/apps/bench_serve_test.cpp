// `helix bench serve` against a real server (an engine of in-process workers behind
// serve::server on a free port): the JSON it prints, its counts, and its usage errors.
#include "apps/bench_serve.hpp"

#include <gtest/gtest.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "serve/server.hpp"

namespace helix::apps {
namespace {

TEST(BenchServe, ReportsLatencyPercentilesForEveryRequest) {
  actors::engine_config c;
  c.model = "tiny-llama";
  c.num_workers = 2;
  c.kv_capacity_tokens_per_worker = 4096;
  auto eng = actors::engine::create(c);
  ASSERT_TRUE(eng.has_value()) << eng.error().to_string();
  serve::server_options so;
  so.port = 0;
  so.model_name = "tiny-llama";
  auto srv = serve::server::start(**eng, nullptr, so);
  ASSERT_TRUE(srv.has_value()) << srv.error().to_string();
  std::ostringstream out, err;
  const int rc = run_bench_serve(
      {"--url", fmt::format("http://127.0.0.1:{}", (*srv)->port()), "--requests", "12", "--rate",
       "200", "--prompt", "24", "--max-tokens", "6", "--spread", "0.5", "--json"},
      out, err);
  ASSERT_EQ(rc, 0) << err.str();
  const auto j = nlohmann::json::parse(out.str(), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out.str();
  EXPECT_EQ(j["model"], "tiny-llama");
  EXPECT_EQ(j["completed"], 12);
  EXPECT_EQ(j["failed"], 0);
  EXPECT_TRUE(j["errors"].empty());
  for (const char* key : {"ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"}) {
    ASSERT_TRUE(j.contains(key)) << key;
    EXPECT_GT(j[key]["p50"].get<double>(), 0.0) << key;
    EXPECT_LE(j[key]["p50"].get<double>(), j[key]["p90"].get<double>()) << key;
    EXPECT_LE(j[key]["p90"].get<double>(), j[key]["p99"].get<double>()) << key;
  }
  EXPECT_EQ(j["e2e_ms"]["count"], 12);
  // The output counted by the client equals what the engine generated.
  EXPECT_EQ(j["output_tokens"].get<std::int64_t>(), (*eng)->stats().tokens_generated);
  EXPECT_GT(j["request_throughput"].get<double>(), 0.0);
  EXPECT_GE(j["prompt_tokens"].get<std::int64_t>(), 12 * 12);
}

TEST(BenchServe, AnUnreachableServerFailsAndBadFlagsAreUsageErrors) {
  std::ostringstream out, err;
  EXPECT_EQ(run_bench_serve({"--url", "http://127.0.0.1:1", "--requests", "1"}, out, err), 1);
  EXPECT_NE(err.str().find("/v1/models"), std::string::npos) << err.str();
  EXPECT_EQ(run_bench_serve({"--url", "ftp://x"}, out, err), 2);
  EXPECT_EQ(run_bench_serve({"--rate", "0"}, out, err), 2);
  EXPECT_EQ(run_bench_serve({"--spread", "1.5"}, out, err), 2);
  EXPECT_EQ(run_bench_serve({"--bogus", "1"}, out, err), 2);
}

}  // namespace
}  // namespace helix::apps
