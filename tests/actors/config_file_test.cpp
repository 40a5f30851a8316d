#include "actors/config_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

namespace helix::actors {
namespace {

namespace fs = std::filesystem;
namespace pb = google::protobuf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Every field of engine_config: a field added to the struct must be added here, to the
// conversions and to the proto.
void expect_config_eq(const engine_config& a, const engine_config& b) {
  EXPECT_EQ(a.model, b.model);
  EXPECT_EQ(a.checkpoint, b.checkpoint);
  EXPECT_EQ(a.weight_type, b.weight_type);
  EXPECT_EQ(a.kv_type, b.kv_type);
  EXPECT_EQ(a.weight_seed, b.weight_seed);
  EXPECT_EQ(a.layout, b.layout);
  EXPECT_EQ(a.num_workers, b.num_workers);
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.kv_capacity_tokens_per_worker, b.kv_capacity_tokens_per_worker);
  EXPECT_EQ(a.block_tokens, b.block_tokens);
  EXPECT_EQ(a.max_batch_tokens, b.max_batch_tokens);
  EXPECT_EQ(a.prefill_chunk_tokens, b.prefill_chunk_tokens);
  EXPECT_EQ(a.max_queued_requests, b.max_queued_requests);
  EXPECT_EQ(a.hopb, b.hopb);
  EXPECT_EQ(a.threads_per_worker, b.threads_per_worker);
  EXPECT_EQ(a.rebalance_threshold, b.rebalance_threshold);
  EXPECT_EQ(a.rebalance_min_blocks, b.rebalance_min_blocks);
  EXPECT_EQ(a.log_level, b.log_level);
}

// A config with every field away from its default.
engine_config unusual_config() {
  engine_config c;
  c.checkpoint = "/models/some checkpoint";  // model stays empty: the two are exclusive
  c.weight_type = dtype::bf16;
  c.kv_type = dtype::fp8_e4m3;
  c.weight_seed = std::numeric_limits<std::uint64_t>::max();
  c.layout = "helix:kvp=4,tpa=2";
  c.num_workers = 8;
  c.device = "cpu";
  c.kv_capacity_tokens_per_worker = std::int64_t{1} << 40;
  c.block_tokens = 32;
  c.max_batch_tokens = 512;
  c.prefill_chunk_tokens = 64;
  c.max_queued_requests = 7;
  c.hopb = true;
  c.threads_per_worker = 3;
  c.rebalance_threshold = 0.25;
  c.rebalance_min_blocks = 0;
  c.log_level = "debug";
  return c;
}

// Round trip through the proto object and through its binary encoding.
template <class Proto>
Proto through_wire(const Proto& m) {
  std::string bytes;
  EXPECT_TRUE(m.SerializeToString(&bytes));
  Proto out;
  EXPECT_TRUE(out.ParseFromString(bytes));
  return out;
}

TEST(ConfigFileTest, SamplingParamsRoundTrip) {
  sampling_params s{.temperature = 0.7f, .top_k = 40, .top_p = 0.9f, .seed = 99};
  const sampling_params back = from_proto(through_wire(to_proto(s)));
  EXPECT_EQ(back.temperature, 0.7f);
  EXPECT_EQ(back.top_k, 40);
  EXPECT_EQ(back.top_p, 0.9f);
  EXPECT_EQ(back.seed, 99u);

  // Explicit zeros stay zeros (top_p's default is 1, so presence matters).
  s = {.temperature = 0.0f, .top_k = 0, .top_p = 0.0f, .seed = 0};
  EXPECT_EQ(from_proto(through_wire(to_proto(s))).top_p, 0.0f);
}

TEST(ConfigFileTest, SamplingParamsAbsentFieldsAreDefaults) {
  const sampling_params back = from_proto(proto_v1::SamplingParams{});
  const sampling_params def;
  EXPECT_EQ(back.temperature, def.temperature);
  EXPECT_EQ(back.top_k, def.top_k);
  EXPECT_EQ(back.top_p, 1.0f);
  EXPECT_EQ(back.seed, def.seed);
}

TEST(ConfigFileTest, RequestOptionsRoundTrip) {
  request_options r;
  r.prompt = {1, 2, 3, 50000};
  r.sampling = {.temperature = 1.5f, .top_k = 5, .top_p = 0.5f, .seed = 7};
  r.max_tokens = 123;
  r.stop_tokens = {2, 9};
  const request_options back = from_proto(through_wire(to_proto(r)));
  EXPECT_THAT(back.prompt, ElementsAre(1, 2, 3, 50000));
  EXPECT_EQ(back.sampling.temperature, 1.5f);
  EXPECT_EQ(back.sampling.top_k, 5);
  EXPECT_EQ(back.sampling.top_p, 0.5f);
  EXPECT_EQ(back.sampling.seed, 7u);
  EXPECT_EQ(back.max_tokens, 123);
  EXPECT_THAT(back.stop_tokens, ElementsAre(2, 9));
}

TEST(ConfigFileTest, RequestFromJsonKeepsDefaults) {
  proto_v1::Request m;
  ASSERT_TRUE(pb::util::JsonStringToMessage(R"({"prompt": [5, 6]})", &m).ok());
  const request_options r = from_proto(m);
  EXPECT_THAT(r.prompt, ElementsAre(5, 6));
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_EQ(r.sampling.top_p, 1.0f);
  EXPECT_TRUE(r.stop_tokens.empty());
}

TEST(ConfigFileTest, TokenEventRoundTripEveryReason) {
  for (finish_reason reason : {finish_reason::none, finish_reason::length,
                               finish_reason::stop_token, finish_reason::cancelled}) {
    token_event e{
        .request_id = 1ull << 40, .token = 17, .index = 3, .last = true, .reason = reason};
    auto back = from_proto(through_wire(to_proto(e)));
    ASSERT_TRUE(back.has_value()) << back.error().to_string();
    EXPECT_EQ(back->request_id, 1ull << 40);
    EXPECT_EQ(back->token, 17);
    EXPECT_EQ(back->index, 3);
    EXPECT_TRUE(back->last);
    EXPECT_EQ(back->reason, reason);
    EXPECT_TRUE(back->error.ok());
  }
}

TEST(ConfigFileTest, TokenEventCarriesErrorStatus) {
  token_event e;
  e.request_id = 5;
  e.token = -1;  // ended without a token
  e.last = true;
  e.reason = finish_reason::error;
  e.error = make_error(errc::unavailable, "worker rank 3 lost");
  auto back = from_proto(through_wire(to_proto(e)));
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  EXPECT_EQ(back->token, -1);
  EXPECT_EQ(back->reason, finish_reason::error);
  EXPECT_EQ(back->error.code(), errc::unavailable);
  EXPECT_EQ(back->error.message(), "worker rank 3 lost");
}

TEST(ConfigFileTest, TokenEventRejectsUnknownEnumValues) {
  proto_v1::TokenEvent m;
  m.set_reason(static_cast<proto_v1::FinishReason>(42));
  auto bad_reason = from_proto(m);
  ASSERT_FALSE(bad_reason.has_value());
  EXPECT_EQ(bad_reason.error().code(), errc::invalid_argument);
  EXPECT_THAT(bad_reason.error().message(), HasSubstr("finish reason 42"));

  m.set_reason(proto_v1::FINISH_REASON_ERROR);
  m.mutable_error()->set_code(static_cast<proto_v1::StatusCode>(77));
  auto bad_code = from_proto(m);
  ASSERT_FALSE(bad_code.has_value());
  EXPECT_THAT(bad_code.error().message(), HasSubstr("status code 77"));
}

TEST(ConfigFileTest, EngineStatsRoundTrip) {
  engine_stats s;
  s.layout = "helix:kvp=4,tpa=2";
  s.submitted = 10;
  s.completed = 6;
  s.cancelled = 1;
  s.failed = 1;
  s.queued = 1;
  s.active = 1;
  s.steps = 400;
  s.tokens_generated = 1234;
  s.migrations = 12;
  s.kv_imbalance = 0.05;
  s.kv_imbalance_max = 0.3;
  s.epoch = 4;
  s.workers = {{.rank = 0, .kv_used_blocks = 10, .kv_capacity_blocks = 100},
               {.rank = 1, .kv_used_blocks = 11, .kv_capacity_blocks = 101}};
  const engine_stats back = from_proto(through_wire(to_proto(s)));
  EXPECT_EQ(back.layout, s.layout);
  EXPECT_EQ(back.submitted, 10);
  EXPECT_EQ(back.completed, 6);
  EXPECT_EQ(back.cancelled, 1);
  EXPECT_EQ(back.failed, 1);
  EXPECT_EQ(back.queued, 1);
  EXPECT_EQ(back.active, 1);
  EXPECT_EQ(back.steps, 400);
  EXPECT_EQ(back.tokens_generated, 1234);
  EXPECT_EQ(back.migrations, 12);
  EXPECT_EQ(back.kv_imbalance, 0.05);
  EXPECT_EQ(back.kv_imbalance_max, 0.3);
  EXPECT_EQ(back.epoch, 4);
  ASSERT_EQ(back.workers.size(), 2u);
  for (std::size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back.workers[i].rank, s.workers[i].rank);
    EXPECT_EQ(back.workers[i].kv_used_blocks, s.workers[i].kv_used_blocks);
    EXPECT_EQ(back.workers[i].kv_capacity_blocks, s.workers[i].kv_capacity_blocks);
  }
}

TEST(ConfigFileTest, EngineConfigRoundTripThroughWireTextAndJson) {
  const engine_config c = unusual_config();
  const proto_v1::EngineConfig m = to_proto(c);
  EXPECT_EQ(m.weight_type(), "bf16");
  EXPECT_EQ(m.kv_type(), "fp8_e4m3");

  auto from_wire = from_proto(through_wire(m));
  ASSERT_TRUE(from_wire.has_value()) << from_wire.error().to_string();
  expect_config_eq(*from_wire, c);

  std::string text;
  ASSERT_TRUE(pb::TextFormat::PrintToString(m, &text));
  auto from_text = parse_engine_config(text, /*json=*/false);
  ASSERT_TRUE(from_text.has_value()) << from_text.error().to_string() << "\n" << text;
  expect_config_eq(*from_text, c);

  std::string json;
  pb::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  ASSERT_TRUE(pb::util::MessageToJsonString(m, &json, options).ok());
  auto from_json = parse_engine_config(json, /*json=*/true);
  ASSERT_TRUE(from_json.has_value()) << from_json.error().to_string() << "\n" << json;
  expect_config_eq(*from_json, c);

  // The lowerCamelCase JSON names are accepted too.
  json.clear();
  ASSERT_TRUE(pb::util::MessageToJsonString(m, &json).ok());
  EXPECT_THAT(json, HasSubstr("numWorkers"));
  from_json = parse_engine_config(json, /*json=*/true);
  ASSERT_TRUE(from_json.has_value()) << from_json.error().to_string() << "\n" << json;
  expect_config_eq(*from_json, c);
}

TEST(ConfigFileTest, EmptyConfigIsAllDefaults) {
  for (bool json : {false, true}) {
    auto c = parse_engine_config(json ? "{}" : "", json);
    ASSERT_TRUE(c.has_value()) << c.error().to_string();
    expect_config_eq(*c, engine_config{});
  }
}

TEST(ConfigFileTest, ExplicitZeroOverridesNonZeroDefault) {
  auto text = parse_engine_config("weight_seed: 0 rebalance_min_blocks: 0", /*json=*/false);
  ASSERT_TRUE(text.has_value()) << text.error().to_string();
  EXPECT_EQ(text->weight_seed, 0u);
  EXPECT_EQ(text->rebalance_min_blocks, 0);
  auto json = parse_engine_config(R"({"weight_seed": 0, "rebalance_min_blocks": "0"})",
                                  /*json=*/true);
  ASSERT_TRUE(json.has_value()) << json.error().to_string();
  EXPECT_EQ(json->weight_seed, 0u);
  EXPECT_EQ(json->rebalance_min_blocks, 0);
  // An explicit zero threshold is read, and refused: rebalancing needs a positive tolerance.
  auto zero = parse_engine_config("rebalance_threshold: 0", /*json=*/false);
  ASSERT_FALSE(zero.has_value());
  EXPECT_THAT(zero.error().message(), HasSubstr("rebalance_threshold"));
}

TEST(ConfigFileTest, BadDtypeNamesTheField) {
  auto text = parse_engine_config(R"(kv_type: "f64")", /*json=*/false);
  ASSERT_FALSE(text.has_value());
  EXPECT_EQ(text.error().code(), errc::invalid_argument);
  EXPECT_THAT(text.error().message(), HasSubstr("kv_type"));
  EXPECT_THAT(text.error().message(), HasSubstr("f64"));

  auto json = parse_engine_config(R"({"weight_type": "int8"})", /*json=*/true);
  ASSERT_FALSE(json.has_value());
  EXPECT_EQ(json.error().code(), errc::invalid_argument);
  EXPECT_THAT(json.error().message(), HasSubstr("weight_type"));
}

TEST(ConfigFileTest, NonPositiveSizesNameTheField) {
  for (const char* field : {"num_workers", "kv_capacity_tokens_per_worker", "block_tokens",
                            "max_batch_tokens", "prefill_chunk_tokens", "max_queued_requests",
                            "threads_per_worker", "rebalance_min_blocks"}) {
    for (bool json : {false, true}) {
      const std::string text =
          json ? "{\"" + std::string(field) + "\": -3}" : std::string(field) + ": -3";
      auto c = parse_engine_config(text, json);
      ASSERT_FALSE(c.has_value()) << text;
      EXPECT_EQ(c.error().code(), errc::invalid_argument);
      EXPECT_THAT(c.error().message(), HasSubstr(field));
      EXPECT_THAT(c.error().message(), HasSubstr("-3"));
    }
  }
  auto zero_workers = parse_engine_config("num_workers: 0", /*json=*/false);
  ASSERT_FALSE(zero_workers.has_value());
  EXPECT_THAT(zero_workers.error().message(), HasSubstr("num_workers"));

  for (const char* threshold : {"-0.5", "nan", "inf"}) {
    auto c = parse_engine_config(std::string("rebalance_threshold: ") + threshold, false);
    ASSERT_FALSE(c.has_value()) << threshold;
    EXPECT_THAT(c.error().message(), HasSubstr("rebalance_threshold"));
  }
}

// threads_per_worker: 100000 used to terminate with std::system_error; rebalance_threshold: 1e308
// was accepted and then every request was refused; both model and checkpoint silently used the
// checkpoint.
TEST(ConfigFileTest, OutOfBoundsFieldsAreRefusedWhenLoaded) {
  for (const char* text : {"threads_per_worker: 100000", "rebalance_threshold: 1e308",
                           "max_batch_tokens: 9223372036854775807", "num_workers: 5000",
                           "model: \"tiny-llama\" checkpoint: \"/x\"", "log_level: \"loud\""}) {
    auto c = parse_engine_config(text, /*json=*/false);
    ASSERT_FALSE(c.has_value()) << text;
    EXPECT_EQ(c.error().code(), errc::invalid_argument) << text;
    const std::string field(text, std::string_view(text).find(':'));
    EXPECT_THAT(c.error().message(), HasSubstr(field)) << c.error().to_string();
  }
}

TEST(ConfigFileTest, TextSyntaxErrorHasLineAndColumn) {
  auto c = parse_engine_config("model: \"tiny-llama\"\nnum_workers: 8\nlayout \"auto\"\n", false);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr("line 3, column"));
}

TEST(ConfigFileTest, UnknownFieldIsAnError) {
  auto text = parse_engine_config("num_workers: 8\nnum_wrokers: 8\n", /*json=*/false);
  ASSERT_FALSE(text.has_value());
  EXPECT_EQ(text.error().code(), errc::invalid_argument);
  EXPECT_THAT(text.error().message(), HasSubstr("line 2, column "));
  EXPECT_THAT(text.error().message(), HasSubstr("num_wrokers"));

  auto json = parse_engine_config(R"({"num_workers": 8, "num_wrokers": 8})", /*json=*/true);
  ASSERT_FALSE(json.has_value());
  EXPECT_EQ(json.error().code(), errc::invalid_argument);
  EXPECT_THAT(json.error().message(), HasSubstr("num_wrokers"));
}

TEST(ConfigFileTest, JsonSyntaxErrorAndWrongType) {
  auto broken = parse_engine_config(
      "{\n  \"model\": \"tiny-llama\",\n  \"num_workers\": 8 \"hopb\": true\n}\n",
      /*json=*/true);
  ASSERT_FALSE(broken.has_value());
  EXPECT_EQ(broken.error().code(), errc::invalid_argument);
  // One line, quoting the input line at fault (the JSON parser gives no line number).
  EXPECT_EQ(broken.error().message().find('\n'), std::string::npos) << broken.error().message();
  EXPECT_THAT(broken.error().message(), HasSubstr("near '\"num_workers\": 8 \"hopb\": true'"));
  auto wrong_type = parse_engine_config(R"({"num_workers": "eight"})", /*json=*/true);
  ASSERT_FALSE(wrong_type.has_value());
  EXPECT_EQ(wrong_type.error().code(), errc::invalid_argument);
}

TEST(ConfigFileTest, FieldGivenTwiceInTextIsAnError) {
  auto c = parse_engine_config("num_workers: 8\nnum_workers: 4\n", /*json=*/false);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr("num_workers"));
}

class ConfigFileLoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("helix_config_file_test_" + std::to_string(::getpid()) + "_" +
            std::to_string(counter++) + "_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& contents) {
    const fs::path p = dir_ / name;
    std::ofstream out(p, std::ios::binary);
    out << contents;
    EXPECT_TRUE(out.good());
    return p.string();
  }
  fs::path dir_;
};

TEST_F(ConfigFileLoadTest, LoadsTextFile) {
  const std::string path = write("engine.textproto", R"(# a comment
model: "small-llama"
kv_type: "bf16"
num_workers: 4
layout: "helix:kvp=2,tpa=2"
hopb: true
rebalance_threshold: 0.2
)");
  auto c = load_engine_config(path);
  ASSERT_TRUE(c.has_value()) << c.error().to_string();
  engine_config want;
  want.model = "small-llama";
  want.kv_type = dtype::bf16;
  want.num_workers = 4;
  want.layout = "helix:kvp=2,tpa=2";
  want.hopb = true;
  want.rebalance_threshold = 0.2;
  expect_config_eq(*c, want);
}

TEST_F(ConfigFileLoadTest, LoadsJsonFileByExtension) {
  const std::string body = R"({"model": "small-llama", "kv_type": "bf16", "numWorkers": 4,
                               "max_batch_tokens": "512"})";
  for (const char* name : {"engine.json", "ENGINE.JSON"}) {
    auto c = load_engine_config(write(name, body));
    ASSERT_TRUE(c.has_value()) << name << ": " << c.error().to_string();
    engine_config want;
    want.model = "small-llama";
    want.kv_type = dtype::bf16;
    want.num_workers = 4;
    want.max_batch_tokens = 512;
    expect_config_eq(*c, want);
  }
  // The same JSON under another extension is read as text format, and fails there.
  auto as_text = load_engine_config(write("engine.cfg", body));
  ASSERT_FALSE(as_text.has_value());
  EXPECT_THAT(as_text.error().message(), HasSubstr("text format"));
}

TEST_F(ConfigFileLoadTest, WrittenConfigLoadsBack) {
  const engine_config c = unusual_config();
  std::string text;
  ASSERT_TRUE(pb::TextFormat::PrintToString(to_proto(c), &text));
  auto from_text = load_engine_config(write("round.textproto", text));
  ASSERT_TRUE(from_text.has_value()) << from_text.error().to_string();
  expect_config_eq(*from_text, c);

  std::string json;
  ASSERT_TRUE(pb::util::MessageToJsonString(to_proto(c), &json).ok());
  auto from_json = load_engine_config(write("round.json", json));
  ASSERT_TRUE(from_json.has_value()) << from_json.error().to_string();
  expect_config_eq(*from_json, c);
}

TEST_F(ConfigFileLoadTest, EmptyFileIsAllDefaults) {
  auto c = load_engine_config(write("empty.textproto", ""));
  ASSERT_TRUE(c.has_value()) << c.error().to_string();
  expect_config_eq(*c, engine_config{});
}

TEST_F(ConfigFileLoadTest, MissingFileIsNotFoundNamingThePath) {
  const std::string path = (dir_ / "no_such_config.textproto").string();
  auto c = load_engine_config(path);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::not_found);
  EXPECT_THAT(c.error().message(), HasSubstr(path));
}

TEST_F(ConfigFileLoadTest, DirectoryIsInvalidArgument) {
  auto c = load_engine_config(dir_.string());
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr(dir_.string()));
}

TEST_F(ConfigFileLoadTest, FileErrorsNameThePathAndThePosition) {
  const std::string syntax = write("syntax.textproto", "num_workers: 8\nmodel: \"tiny-llama\n");
  auto c = load_engine_config(syntax);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr(syntax));
  EXPECT_THAT(c.error().message(), HasSubstr("line 2, column"));

  const std::string unknown = write("unknown.json", R"({"kv_dtype": "bf16"})");
  c = load_engine_config(unknown);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr(unknown));
  EXPECT_THAT(c.error().message(), HasSubstr("kv_dtype"));

  const std::string dtype_path = write("dtype.textproto", "weight_type: \"fp4\"\n");
  c = load_engine_config(dtype_path);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr(dtype_path));
  EXPECT_THAT(c.error().message(), HasSubstr("weight_type"));

  const std::string negative = write("negative.json", R"({"block_tokens": -16})");
  c = load_engine_config(negative);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr("block_tokens"));
}

// Regression: a FIFO as the config path blocked in open() until some process wrote to it. The
// load runs on another thread so that a regression fails the test instead of hanging it.
TEST_F(ConfigFileLoadTest, FifoIsRefusedWithoutBlocking) {
  const std::string path = (dir_ / "engine.textproto").string();
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
  auto pending = std::async(std::launch::async, [&] { return load_engine_config(path); });
  if (pending.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    // Unblock the reader so that the test can end, then fail.
    const int w = ::open(path.c_str(), O_WRONLY | O_NONBLOCK);
    if (w >= 0) ::close(w);
    pending.wait();
    FAIL() << "load_engine_config blocked on a FIFO";
  }
  auto c = pending.get();
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr(path));
  EXPECT_THAT(c.error().message(), HasSubstr("not a regular file"));
}

// Regression: /dev/zero was read until memory ran out.
TEST_F(ConfigFileLoadTest, DeviceIsRefusedWithoutReading) {
  for (const char* dev : {"/dev/zero", "/dev/null"}) {
    if (!fs::exists(dev)) continue;
    auto c = load_engine_config(dev);
    ASSERT_FALSE(c.has_value()) << dev;
    EXPECT_EQ(c.error().code(), errc::invalid_argument) << dev;
    EXPECT_THAT(c.error().message(), HasSubstr(dev));
    EXPECT_THAT(c.error().message(), HasSubstr("not a regular file"));
  }
}

TEST_F(ConfigFileLoadTest, FileAboveTheSizeLimitIsRefused) {
  const std::string path = write("huge.textproto", "num_workers: 8\n");
  fs::resize_file(path, (std::uintmax_t{16} << 20) + 1);  // sparse: cheap to make
  auto c = load_engine_config(path);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::invalid_argument);
  EXPECT_THAT(c.error().message(), HasSubstr(path));
  EXPECT_THAT(c.error().message(), HasSubstr("16777217 bytes, more than the 16777216-byte limit"));
  // Exactly at the limit is read (and then fails to parse: it is mostly NUL bytes).
  fs::resize_file(path, std::uintmax_t{16} << 20);
  c = load_engine_config(path);
  ASSERT_FALSE(c.has_value());
  EXPECT_THAT(c.error().message(), HasSubstr("text format"));
}

TEST_F(ConfigFileLoadTest, MissingParentDirectoryIsNotFound) {
  const std::string path = write("plain", "") + "/engine.textproto";  // a file as a directory
  auto c = load_engine_config(path);
  ASSERT_FALSE(c.has_value());
  EXPECT_EQ(c.error().code(), errc::not_found);
}

TEST(ConfigFileExamplesTest, ExampleConfigsLoadAndAgree) {
  const std::string dir = std::string(HELIX_SOURCE_DIR) + "/examples/configs/";
  auto text = load_engine_config(dir + "engine.textproto");
  ASSERT_TRUE(text.has_value()) << text.error().to_string();
  auto json = load_engine_config(dir + "engine.json");
  ASSERT_TRUE(json.has_value()) << json.error().to_string();
  expect_config_eq(*text, *json);

  EXPECT_EQ(text->num_workers, 8);
  EXPECT_EQ(text->layout, "auto");
  EXPECT_EQ(text->model, "tiny-llama");
  // Apart from the worker count and the model (empty by default, which means tiny-llama too),
  // the examples spell out the defaults.
  engine_config want;
  want.num_workers = 8;
  want.model = "tiny-llama";
  expect_config_eq(*text, want);
}

}  // namespace
}  // namespace helix::actors
