// `helix bench transport`: usage errors, and a --quick --json run whose report has every field
// for every backend. Timings and ratios are reported, never asserted.
#include "apps/bench_transport.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <sstream>

#include <nlohmann/json.hpp>

namespace helix::apps {
namespace {

TEST(BenchTransport, HelpPrintsUsage) {
  std::ostringstream out;
  std::ostringstream err;
  EXPECT_EQ(run_bench_transport({"--help"}, out, err), 0);
  EXPECT_NE(out.str().find("usage: helix bench transport"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("--iterations"), std::string::npos);
  EXPECT_TRUE(err.str().empty()) << err.str();
}

TEST(BenchTransport, BadFlagsReturnTwoNamingTheFlag) {
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--bogus", "1"}, "--bogus"},
      {{"--iterations", "zero"}, "--iterations"},
      {{"--iterations", "0"}, "--iterations"},
      {{"--backends", "local,infiniband"}, "infiniband"},
      {{"--json=yes"}, "--json"},
      {{"positional"}, "positional"}};
  for (const auto& [args, named] : cases) {
    std::ostringstream out;
    std::ostringstream err;
    EXPECT_EQ(run_bench_transport(args, out, err), 2) << args[0];
    EXPECT_EQ(err.str().rfind("error: ", 0), 0u) << err.str();
    EXPECT_NE(err.str().find(named), std::string::npos) << err.str();
    EXPECT_TRUE(out.str().empty()) << out.str();
  }
}

TEST(BenchTransport, BackendsRunUcxFirstWhateverTheOrderGiven) {
  auto o = parse_bench_transport_args({"--backends", "memcpy,local,ucx-shm", "--quick"});
  ASSERT_TRUE(o.has_value()) << o.error().to_string();
  EXPECT_EQ(o->backends, (std::vector<std::string>{"ucx-shm", "local", "memcpy"}));
  EXPECT_EQ(o->iterations, 20);
  EXPECT_EQ(o->large_iterations, 3);
  EXPECT_EQ(o->large_sizes, std::vector<std::size_t>{std::size_t{16} << 20});
  auto d = parse_bench_transport_args({});
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->iterations, 200);
  EXPECT_EQ(d->large_iterations, 10);
  EXPECT_EQ(d->backends.size(), 5u);
  EXPECT_EQ(d->large_sizes.back(), std::size_t{256} << 20);
}

TEST(BenchTransport, QuickJsonHasEveryFieldForEveryBackend) {
  std::ostringstream out;
  std::ostringstream err;
  const int rc = run_bench_transport({"--quick", "--json"}, out, err);
  ASSERT_EQ(rc, 0) << err.str() << out.str();
  const nlohmann::json j = nlohmann::json::parse(out.str(), nullptr, /*allow_exceptions=*/false);
  ASSERT_FALSE(j.is_discarded()) << out.str();
  EXPECT_EQ(j["world_size"], 2);
  EXPECT_EQ(j["iterations"], 20);
  EXPECT_EQ(j["ucx_error_handling"], "peer");
  ASSERT_TRUE(j["skipped_sizes"].is_array());

  ASSERT_TRUE(j["backends"].is_array());
  std::vector<std::string> names;
  for (const auto& b : j["backends"]) {
    names.push_back(b["name"]);
    const std::string st = b["status"];
    if (b["name"] == "ucx-tcp") {
      // Needs root for its namespaces; elsewhere it is skipped with the reason.
      EXPECT_TRUE(st == "ok" || (st == "skipped" && !b["reason"].get<std::string>().empty()))
          << b.dump();
    } else {
      EXPECT_EQ(st, "ok") << b.dump();
    }
    if (b["name"].get<std::string>().rfind("ucx", 0) == 0 && st == "ok") {
      EXPECT_EQ(b["shm_error_handling"], b["name"] != "ucx-shm-no-mm-eh") << b.dump();
      ASSERT_EQ(b["transports"].size(), 2u) << b.dump();  // 0 -> 1 and 1 -> 0
      for (const auto& l : b["transports"]) {
        EXPECT_NE(l["rank"], l["peer"]);
        EXPECT_FALSE(l["transports"].get<std::string>().empty()) << b.dump();
      }
    }
  }
  EXPECT_EQ(names, (std::vector<std::string>{"ucx-shm", "ucx-shm-no-mm-eh", "ucx-tcp", "local",
                                             "memcpy"}));

  // Every backend that ran: 4 decode sizes x 3 ops plus 16 MiB x 2 ops (memcpy: 4 + 1).
  const auto& results = j["results"];
  for (const auto& b : j["backends"]) {
    if (b["status"] != "ok") continue;
    const auto n = std::count_if(results.begin(), results.end(),
                                 [&](const auto& r) { return r["backend"] == b["name"]; });
    EXPECT_EQ(n, b["name"] == "memcpy" ? 5 : 14) << b["name"];
  }
  for (const auto& r : results) {
    for (const char* key :
         {"backend", "op", "bytes", "iterations", "p50_us", "p99_us", "bytes_per_s", "vs_memcpy"}) {
      EXPECT_TRUE(r.contains(key)) << key << " in " << r.dump();
    }
    EXPECT_GT(r["p50_us"].get<double>(), 0.0) << r.dump();
    EXPECT_GE(r["p99_us"].get<double>(), r["p50_us"].get<double>()) << r.dump();
    EXPECT_EQ(r["bytes_per_s"].is_null(), r["op"] == "all_reduce") << r.dump();
    const bool large = r["bytes"] == (16 << 20);
    EXPECT_EQ(r["iterations"], large ? 3 : 20) << r.dump();
    const bool exchange = r["op"] == "all_to_all" || r["op"] == "all_to_all_in_place";
    EXPECT_EQ(r["vs_memcpy"].is_null(), !(large && exchange)) << r.dump();
  }
  EXPECT_EQ(j["large_all_to_all_bytes"], 16 << 20);
  ASSERT_TRUE(j["large_all_to_all_vs_memcpy"].is_number()) << j.dump();
  EXPECT_GT(j["large_all_to_all_vs_memcpy"].get<double>(), 0.0);
  ASSERT_TRUE(j["large_all_to_all_out_of_place_vs_memcpy"].is_number()) << j.dump();
  EXPECT_NE(err.str().find("error handling mode PEER"), std::string::npos) << err.str();
}

TEST(BenchTransport, SizesThatDoNotFitAreSkippedWithANote) {
  auto o = parse_bench_transport_args({"--backends", "local,memcpy", "--iterations", "2"});
  ASSERT_TRUE(o.has_value()) << o.error().to_string();
  // 16 MiB needs 5 x 16 MiB (4 buffers and a quarter): it fits, 64 and 256 MiB do not.
  o->memory_limit_bytes = std::uint64_t{100} << 20;
  std::ostringstream progress;
  auto r = run_bench_transport_cases(*o, progress);
  ASSERT_TRUE(r.has_value()) << r.error().to_string();
  ASSERT_EQ(r->skipped_sizes.size(), 2u);
  EXPECT_EQ(r->skipped_sizes[0].bytes, std::size_t{64} << 20);
  EXPECT_EQ(r->skipped_sizes[1].bytes, std::size_t{256} << 20);
  EXPECT_NE(r->skipped_sizes[0].reason.find("100.0 MiB available"), std::string::npos)
      << r->skipped_sizes[0].reason;
  for (const auto& c : r->results) EXPECT_LE(c.bytes, std::size_t{16} << 20) << c.backend;
  EXPECT_EQ(r->results.size(), 14u + 5u);  // local: 4 x 3 + 2, memcpy: 4 + 1
  EXPECT_NE(progress.str().find("skipping 64 MiB"), std::string::npos) << progress.str();

  o->memory_limit_bytes = 1 << 10;  // not even the decode-sized buffers
  auto none = run_bench_transport_cases(*o, progress);
  ASSERT_FALSE(none.has_value());
  EXPECT_EQ(none.error().code(), errc::resource_exhausted);
}

TEST(BenchTransport, TableNamesBackendsAndTheRatio) {
  std::ostringstream out;
  std::ostringstream err;
  ASSERT_EQ(
      run_bench_transport({"--backends", "local,memcpy", "--quick", "--iterations", "3"}, out, err),
      0)
      << err.str();
  EXPECT_NE(out.str().find("local"), std::string::npos) << out.str();
  EXPECT_NE(out.str().find("memcpy"), std::string::npos);
  EXPECT_NE(out.str().find("all_reduce"), std::string::npos);
  // No ucx-shm run: the headline ratio is absent, and the table says so.
  EXPECT_NE(out.str().find("not measured"), std::string::npos) << out.str();
}

}  // namespace
}  // namespace helix::apps
