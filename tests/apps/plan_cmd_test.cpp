// `helix plan` and `helix calibrate`: the JSON of the frontiers and the headline for both paper
// models, the SVG chart, the --ttl-ms query, the calibration of the cpu preset and usage errors.
#include <gtest/gtest.h>

#include <unistd.h>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "apps/calibrate.hpp"
#include "apps/plan_cmd.hpp"
#include "apps/svg_plot.hpp"

namespace helix::apps {
namespace {

constexpr const char* families[] = {"helix", "tp", "tp_pp", "dp_ep", "medha"};

struct run_output {
  int rc = 0;
  std::string out;
  std::string err;
};

run_output plan(const std::vector<std::string>& args) {
  std::ostringstream out;
  std::ostringstream err;
  const int rc = run_plan(args, out, err);
  return {rc, out.str(), err.str()};
}

nlohmann::json parse_json(const std::string& text) {
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

std::vector<std::string> paper_args(const std::string& model) {
  return {"--model", model,        "--hardware", "gb200-nvl72", "--context",
          "1M",      "--max-gpus", "64",         "--precision", "fp4"};
}

std::size_t count_of(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t pos = text.find(what); pos != std::string::npos;
       pos = text.find(what, pos + what.size())) {
    ++n;
  }
  return n;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "-" + std::to_string(::getpid()) + ".svg"))
      .string();
}

void expect_point_fields(const nlohmann::json& p) {
  for (const char* key :
       {"family", "config", "num_gpus", "batch", "ttl_ms", "tokens_per_s_per_user",
        "tokens_per_s_per_gpu", "memory_bytes_per_gpu"}) {
    ASSERT_TRUE(p.contains(key)) << key << " in " << p.dump();
  }
  EXPECT_GT(p["ttl_ms"].get<double>(), 0.0);
  EXPECT_GT(p["tokens_per_s_per_user"].get<double>(), 0.0);
  EXPECT_GT(p["tokens_per_s_per_gpu"].get<double>(), 0.0);
  EXPECT_GT(p["memory_bytes_per_gpu"].get<double>(), 0.0);
  EXPECT_GE(p["num_gpus"].get<std::int64_t>(), 1);
  EXPECT_LE(p["num_gpus"].get<std::int64_t>(), 64);
  // tokens/s/user is 1/TTL.
  EXPECT_NEAR(p["tokens_per_s_per_user"].get<double>() * p["ttl_ms"].get<double>() / 1e3, 1.0,
              1e-6);
}

class PlanPaperModels : public testing::TestWithParam<const char*> {};

TEST_P(PlanPaperModels, JsonFrontiersAreParetoAndHeadlineRatiosPositive) {
  std::vector<std::string> args = paper_args(GetParam());
  args.push_back("--json");
  const run_output r = plan(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = parse_json(r.out);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["model"], GetParam());
  EXPECT_EQ(j["hardware"]["name"], "gb200-nvl72");
  EXPECT_EQ(j["context"], 1 << 20);
  EXPECT_EQ(j["max_gpus"], 64);
  EXPECT_EQ(j["precision"]["weights"], "fp4");
  EXPECT_EQ(j["precision"]["kv"], "fp4");
  EXPECT_GT(j["num_feasible"].get<std::int64_t>(), 0);

  ASSERT_TRUE(j["headline"].is_object()) << j.dump();
  EXPECT_GT(j["headline"]["throughput_ratio_at_equal_ttl"].get<double>(), 0.0);
  EXPECT_GT(j["headline"]["interactivity_ratio"].get<double>(), 0.0);
  EXPECT_GT(j["headline"]["ttl_ms_at_max_ratio"].get<double>(), 0.0);

  ASSERT_TRUE(j["frontier"].is_object());
  for (const char* family : families) {
    SCOPED_TRACE(family);
    ASSERT_TRUE(j["frontier"].contains(family));
    const nlohmann::json& front = j["frontier"][family];
    const auto feasible = j["num_feasible_per_family"][family].get<std::int64_t>();
    EXPECT_EQ(front.empty(), feasible == 0);
    EXPECT_LE(static_cast<std::int64_t>(front.size()), feasible);
    // Sorted by tokens/s/user ascending; on a Pareto frontier tokens/s/GPU then falls strictly.
    for (std::size_t i = 0; i < front.size(); ++i) {
      expect_point_fields(front[i]);
      EXPECT_EQ(front[i]["family"], family);
      if (i == 0) continue;
      EXPECT_GT(front[i]["tokens_per_s_per_user"].get<double>(),
                front[i - 1]["tokens_per_s_per_user"].get<double>())
          << i;
      EXPECT_LT(front[i]["tokens_per_s_per_gpu"].get<double>(),
                front[i - 1]["tokens_per_s_per_gpu"].get<double>())
          << i;
    }
    if (!front.empty()) {
      EXPECT_EQ(j["best"][family]["max_throughput"], front.front());
      EXPECT_EQ(j["best"][family]["max_interactivity"], front.back());
    }
  }
  // Helix runs on either model; so does at least one baseline.
  EXPECT_FALSE(j["frontier"]["helix"].empty());
  EXPECT_GT(j["num_feasible"].get<std::int64_t>(),
            j["num_feasible_per_family"]["helix"].get<std::int64_t>());
}

TEST_P(PlanPaperModels, SummaryNamesEveryFamilyAndTheHeadline) {
  const run_output r = plan(paper_args(GetParam()));
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find(GetParam()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("frontier sizes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("throughput at equal TTL"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("interactivity"), std::string::npos) << r.out;
  for (const char* family : families) EXPECT_NE(r.out.find(family), std::string::npos) << family;
}

INSTANTIATE_TEST_SUITE_P(Models, PlanPaperModels, testing::Values("deepseek-r1", "llama-3.1-405b"),
                         [](const testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param) == "deepseek-r1" ? "DeepSeekR1"
                                                                           : "Llama405B";
                         });

TEST(PlanCmd, PlotIsAnSvgWithOneLegendEntryPerFamily) {
  const std::string path = temp_path("helix-plan-test");
  std::vector<std::string> args = paper_args("llama-3.1-405b");
  args.insert(args.end(), {"--plot", path});
  const run_output r = plan(args);
  ASSERT_EQ(r.rc, 0) << r.err;
  std::ifstream file(path);
  ASSERT_TRUE(file.good()) << path;
  const std::string svg((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::remove(path.c_str());
  EXPECT_EQ(svg.rfind("<?xml", 0), 0u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_EQ(count_of(svg, "class=\"legend-entry\""), 5u);
  for (const char* family : families) {
    EXPECT_NE(svg.find(std::string(">") + family + " ("), std::string::npos) << family;
  }
  // Title with model, hardware, context and precision; both axis labels.
  EXPECT_NE(svg.find("llama-3.1-405b on gb200-nvl72"), std::string::npos);
  EXPECT_NE(svg.find("context 1M tokens, fp4 weights, KV and compute"), std::string::npos);
  EXPECT_NE(svg.find("tokens/s/user"), std::string::npos);
  EXPECT_NE(svg.find("tokens/s/GPU"), std::string::npos);
  // Well-formed enough: every group closed, no unescaped ampersand.
  EXPECT_EQ(count_of(svg, "<g"), count_of(svg, "</g>"));
  EXPECT_EQ(count_of(svg, "&"), count_of(svg, "&amp;") + count_of(svg, "&lt;") +
                                    count_of(svg, "&gt;") + count_of(svg, "&quot;") +
                                    count_of(svg, "&apos;"));
  EXPECT_NE(r.out.find(path), std::string::npos);
}

TEST(PlanCmd, TtlQueryReturnsTheBestPointWithinTheBudget) {
  std::vector<std::string> args = paper_args("deepseek-r1");
  args.push_back("--json");
  const run_output full = plan(args);
  ASSERT_EQ(full.rc, 0) << full.err;
  const nlohmann::json j = parse_json(full.out);
  const nlohmann::json& helix = j["frontier"]["helix"];
  ASSERT_FALSE(helix.empty());
  // A budget in the middle of Helix's frontier.
  const double ttl = helix[helix.size() / 2]["ttl_ms"].get<double>() * 1.0001;

  args.insert(args.end(), {"--ttl-ms", std::to_string(ttl)});
  const run_output q = plan(args);
  ASSERT_EQ(q.rc, 0) << q.err;
  const nlohmann::json a = parse_json(q.out);
  ASSERT_FALSE(a.is_discarded()) << q.out;
  ASSERT_TRUE(a["best"].is_object()) << q.out;
  expect_point_fields(a["best"]);
  EXPECT_LE(a["best"]["ttl_ms"].get<double>(), ttl);
  // No frontier point of any family within the budget does better.
  for (const char* family : families) {
    for (const auto& p : j["frontier"][family]) {
      if (p["ttl_ms"].get<double>() > ttl) continue;
      EXPECT_GE(a["best"]["tokens_per_s_per_gpu"].get<double>(),
                p["tokens_per_s_per_gpu"].get<double>() * (1 - 1e-9))
          << p.dump();
    }
    ASSERT_TRUE(a["best_per_family"].contains(family));
  }
  ASSERT_TRUE(a["best_per_family"]["helix"].is_object());
  EXPECT_LE(a["best_per_family"]["helix"]["ttl_ms"].get<double>(), ttl);

  // The human answer, and a budget nothing meets.
  const run_output human = plan({"--model", "deepseek-r1", "--ttl-ms", std::to_string(ttl)});
  ASSERT_EQ(human.rc, 0) << human.err;
  EXPECT_NE(human.out.find("best within TTL"), std::string::npos) << human.out;
  const run_output none = plan({"--model", "deepseek-r1", "--ttl-ms", "0.000001"});
  EXPECT_EQ(none.rc, 1);
  EXPECT_NE(none.err.find("no feasible configuration within"), std::string::npos) << none.err;
}

TEST(PlanCmd, FamiliesBatchesAndNoHopbRestrictTheSearch) {
  const run_output r =
      plan({"--model", "llama-3.1-405b", "--families", "helix,tp", "--batches", "1,8,64",
            "--no-hopb", "--max-gpus", "16", "--kv-precision", "fp8", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json j = parse_json(r.out);
  EXPECT_EQ(j["families"], nlohmann::json({"helix", "tp"}));
  EXPECT_EQ(j["precision"]["kv"], "fp8");
  EXPECT_EQ(j["precision"]["weights"], "fp4");
  EXPECT_FALSE(j["hopb"].get<bool>());
  EXPECT_EQ(j["frontier"].size(), 2u);
  EXPECT_FALSE(j["frontier"]["helix"].empty());
  EXPECT_FALSE(j["frontier"]["tp"].empty());
  EXPECT_TRUE(j["headline"].is_object()) << j.dump();
  for (const auto& [family, front] : j["frontier"].items()) {
    for (const auto& p : front) {
      const auto b = p["batch"].get<std::int64_t>();
      EXPECT_TRUE(b == 1 || b == 8 || b == 64) << p.dump();
      EXPECT_LE(p["num_gpus"].get<std::int64_t>(), 16);
      EXPECT_FALSE(p["hopb"].get<bool>());
    }
  }
}

// The collective latency is the model's most sensitive assumption: a slower link lowers Helix's
// interactivity advantage (its per-layer floor is a few collective phases).
TEST(PlanCmd, LinkLatencyOverrideMovesTheInteractivityRatio) {
  auto ratio = [](const char* us) {
    const run_output r = plan({"--model", "llama-3.1-405b", "--link-latency-us", us, "--json"});
    EXPECT_EQ(r.rc, 0) << r.err;
    return nlohmann::json::parse(r.out)["headline"]["interactivity_ratio"].get<double>();
  };
  EXPECT_GT(ratio("2"), ratio("10"));
}

TEST(PlanCmd, BadInputReturnsTwoWithAClearError) {
  const std::vector<std::vector<std::string>> cases = {
      {"--model", "no-such-model"},
      {"--hardware", "tpu-v9"},
      {"--precision", "fp3"},
      {"--kv-precision", "int4"},
      {"--context", "0"},
      {"--context", "12Q"},
      {"--max-gpus", "0"},
      {"--max-gpus", "100000"},
      {"--families", "helix,ring"},
      {"--batches", "0,4"},
      {"--ttl-ms", "-1"},
      {"--link-latency-us", "-3"},
      {"--calibrate", "--hardware", "gb200-nvl72"},
      {"--quick"},
      {"--bogus", "1"},
      {"positional"},
  };
  for (const auto& args : cases) {
    const run_output r = plan(args);
    EXPECT_EQ(r.rc, 2) << args[0] << " " << (args.size() > 1 ? args[1] : "");
    EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << r.err;
  }
  EXPECT_NE(plan({"--model", "no-such-model"}).err.find("no-such-model"), std::string::npos);
  EXPECT_NE(plan({"--hardware", "tpu-v9"}).err.find("gb200-nvl72"), std::string::npos)
      << "the message lists the presets";
  std::ostringstream out;
  std::ostringstream err;
  EXPECT_EQ(run_calibrate({"--threads", "-2"}, out, err), 2);
  EXPECT_EQ(run_calibrate({"--bogus"}, out, err), 2);
}

calibration_options tiny_calibration() {
  calibration_options o = calibration_options::quick();
  o.stream_bytes = std::size_t{16} << 20;
  o.repeats = 2;
  o.large_message_bytes = std::size_t{2} << 20;
  o.latency_iterations = 20;
  o.gemm_m = 32;
  o.gemm_n = 256;
  o.gemm_k = 512;
  return o;
}

TEST(Calibrate, MeasuresPositiveFiguresAndFillsTheCpuPreset) {
  std::ostringstream progress;
  const auto c = measure_cpu(tiny_calibration(), progress);
  ASSERT_TRUE(c.has_value()) << c.error().to_string();
  EXPECT_GT(c->stream_bytes_per_s, 1e8);
  EXPECT_GT(c->all_reduce_latency_s, 0.0);
  EXPECT_LT(c->all_reduce_latency_s, 0.1);
  EXPECT_GT(c->all_reduce_bytes_per_s, 1e6);
  EXPECT_GT(c->gemm_flops_per_s, 1e8);
  EXPECT_GT(c->fma_peak_flops_per_s, 1e8);
  EXPECT_GT(c->physical_memory_bytes, 1e8);
  const planner::hardware& hw = c->hw;
  EXPECT_EQ(hw.name, "cpu-calibrated");
  // A device is one thread: machine figures split over the measuring threads.
  ASSERT_GE(c->threads, 1);
  EXPECT_DOUBLE_EQ(hw.hbm_bytes_per_s * c->threads, c->stream_bytes_per_s);
  EXPECT_DOUBLE_EQ(hw.flops_f32 * c->threads, c->gemm_flops_per_s);
  EXPECT_EQ(hw.hbm_capacity_bytes, c->physical_memory_bytes);
  // Fitted to the cost model's 2-rank all-reduce: the small message is two latencies, the large
  // one takes its bytes over the link on top of them.
  EXPECT_NEAR(hw.link_latency_s * 2, c->all_reduce_latency_s, 1e-12);
  EXPECT_GT(hw.link_bytes_per_s, 0.0);
  EXPECT_GE(hw.link_bytes_per_s, c->all_reduce_bytes_per_s * 0.999);
  for (const double f : {hw.flops_fp4, hw.flops_fp8, hw.flops_bf16}) EXPECT_GT(f, 0.0);
  for (const char* what : {"streaming read", "all-reduce", "gemm", "physical memory"}) {
    EXPECT_NE(hw.sources.find(what), std::string::npos) << what;
  }
  EXPECT_NE(progress.str().find("calibrate:"), std::string::npos);
}

TEST(Calibrate, CommandAndPlanOnTheCalibratedPreset) {
  std::ostringstream out;
  std::ostringstream err;
  ASSERT_EQ(run_calibrate({"--quick", "--threads", "2", "--json"}, out, err), 0) << err.str();
  const nlohmann::json j = parse_json(out.str());
  ASSERT_FALSE(j.is_discarded()) << out.str();
  EXPECT_EQ(j["threads"], 2);
  EXPECT_GT(j["stream"]["bytes_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["all_reduce"]["latency_s"].get<double>(), 0.0);
  EXPECT_GT(j["gemm"]["flops_per_s"].get<double>(), 0.0);
  EXPECT_GT(j["fma_peak_flops_per_s"].get<double>(), 0.0);
  EXPECT_EQ(j["hardware"]["name"], "cpu-calibrated");
  EXPECT_EQ(j["preset"]["name"], "cpu");

  const run_output r =
      plan({"--calibrate", "--quick", "--model", "small-llama", "--context", "64K", "--json"});
  ASSERT_EQ(r.rc, 0) << r.err;
  const nlohmann::json p = parse_json(r.out);
  ASSERT_FALSE(p.is_discarded()) << r.out;
  EXPECT_EQ(p["hardware"]["name"], "cpu-calibrated");
  EXPECT_TRUE(p.contains("calibration"));
  EXPECT_GT(p["num_feasible"].get<std::int64_t>(), 0);
}

TEST(SvgPlot, AxesLabelsAndErrors) {
  svg_plot_options o;
  o.title = "a <title> & more";
  o.x_label = "x";
  o.y_label = "y";
  const auto wide = render_svg_plot(o, {{"one", {{1, 10}, {1000, 1}}}, {"two", {}}});
  ASSERT_TRUE(wide.has_value()) << wide.error().to_string();
  EXPECT_NE(wide->find("a &lt;title&gt; &amp; more"), std::string::npos);
  EXPECT_NE(wide->find("x (log scale)"), std::string::npos);  // a 1000x range
  EXPECT_EQ(wide->find("y (log scale)"), std::string::npos);  // a 10x range stays linear
  EXPECT_NE(wide->find("two (no points)"), std::string::npos);
  EXPECT_NE(wide->find(">1k<"), std::string::npos);
  EXPECT_FALSE(render_svg_plot(o, {{"empty", {}}}).has_value());
  EXPECT_FALSE(
      render_svg_plot(o, {{"nan", {{1, std::numeric_limits<double>::quiet_NaN()}}}}).has_value());
  EXPECT_EQ(xml_escape("a&b<c>\"'"), "a&amp;b&lt;c&gt;&quot;&apos;");
}

}  // namespace
}  // namespace helix::apps
