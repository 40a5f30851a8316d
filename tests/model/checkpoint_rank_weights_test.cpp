// Tests for checkpoint_rank_weights: a worker reading only its pieces of a checkpoint gets, bit
// for bit, what sharding the fully loaded checkpoint gives (HF fixtures written by an independent
// writer; seeded tiny-llama and tiny-deepseek saved with save_checkpoint, single file and
// index + shards), and a broken checkpoint gives the error load_checkpoint gives, naming the
// tensor. Also: plan_rank_weights lists exactly the tensors allocate_weights() makes.
#include <malloc.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/checkpoint.hpp"
#include "model/hf_config.hpp"
#include "model/safetensors.hpp"
#include "model/sharding.hpp"
#include "tests/support/rank_weights.hpp"

namespace helix::model {
namespace {

namespace fs = std::filesystem;
using test_support::expect_same_rank_weights;
using ::testing::HasSubstr;

std::string hf_fixture(const std::string& name) {
  return std::string(HELIX_FIXTURES_DIR) + "/hf-tiny/" + name;
}

// Layouts that cover every kind of cut: KVP-replicated columns, tp with duplicated KV heads,
// medha ranks outside the FFN, EP groups with TPF splits, uneven vocabulary splits.
const std::vector<std::string> gqa_layouts = {"helix:kvp=2,tpa=2", "helix:kvp=4,tpa=2",
                                              "tp:tp=2",           "tp:tp=8",
                                              "medha:kvp=2,tpa=2", "helix:kvp=1,tpa=1"};
const std::vector<std::string> mla_layouts = {"helix:kvp=4,tpa=1,tpf=2,ep=2",
                                              "helix:kvp=4,tpa=1,tpf=1,ep=4", "helix:kvp=2,tpa=1",
                                              "tp:tp=4", "medha:kvp=2,tpa=1"};

const std::vector<std::string>& layouts_for(const model_spec& spec) {
  return spec.is_mla() ? mla_layouts : gqa_layouts;
}

// Every rank of every layout of `layouts` (those valid for the checkpoint's model; at least one
// must be) reads what sharding the fully loaded checkpoint gives.
void expect_every_rank_matches(const std::string& dir, dtype t,
                               const std::vector<std::string>& layouts) {
  auto full = load_checkpoint(dir, t);
  ASSERT_TRUE(full.has_value()) << full.error().to_string();
  int checked = 0;
  for (const std::string& text : layouts) {
    auto l = layout::parse(text);
    ASSERT_TRUE(l.has_value()) << text;
    if (!validate(*l, full->spec).ok()) continue;
    ++checked;
    for (std::int64_t r = 0; r < l->num_ranks; ++r) {
      const std::string what = fmt::format("{} as {}, {} rank {}", dir, dtype_name(t), text, r);
      auto want = shard_weights(*full, *l, r);
      ASSERT_TRUE(want.has_value()) << what << ": " << want.error().to_string();
      auto got = checkpoint_rank_weights(dir, t, *l, r);
      ASSERT_TRUE(got.has_value()) << what << ": " << got.error().to_string();
      expect_same_rank_weights(*got, *want, what);
    }
  }
  EXPECT_GE(checked, 1) << dir;
}

class CheckpointRankWeights : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           fmt::format("helix_rank_ckpt_{}_{}_{}", ::getpid(), counter++, std::random_device{}());
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  [[nodiscard]] std::string sub(const std::string& name) const { return (dir_ / name).string(); }

  // Saves seeded weights of a spec into `name`; returns the directory.
  std::string save(const std::string& name, const model_spec& spec, dtype t) {
    auto w = init_seeded_weights(spec, t, 99);
    HELIX_CHECK(w.has_value(), "{}", w.error().to_string());
    const status s = save_checkpoint(sub(name), *w);
    HELIX_CHECK(s.ok(), "{}", s.to_string());
    return sub(name);
  }
  std::string save(const std::string& name, const std::string& builtin, dtype t) {
    return save(name, *builtin_model(builtin), t);
  }

  fs::path dir_;
};

// The tensors of dir/model.safetensors, copied out so that they can be edited and written back.
struct editable_tensors {
  std::vector<safetensors_tensor> list;
  std::vector<std::vector<std::byte>> storage;  // one per tensor; list[i].data points into it

  explicit editable_tensors(const std::string& dir) {
    auto f = safetensors_file::open(dir + "/model.safetensors");
    HELIX_CHECK(f.has_value(), "{}", f.error().to_string());
    storage.reserve(f->entries().size() + 1);
    for (const safetensors_entry& e : f->entries()) {
      const auto b = f->bytes(e);
      storage.emplace_back(b.begin(), b.end());
      list.push_back({e.name, *e.type, e.shape, storage.back().data()});
    }
  }
  safetensors_tensor& operator[](const std::string& name) {
    for (safetensors_tensor& t : list) {
      if (t.name == name) return t;
    }
    HELIX_CHECK(false, "no tensor {}", name);
    return list.front();
  }
  std::byte* bytes(const std::string& name) {
    return static_cast<std::byte*>(const_cast<void*>((*this)[name].data));
  }
  void write(const std::string& dir) const {
    const status s = write_safetensors(dir + "/model.safetensors", list);
    HELIX_CHECK(s.ok(), "{}", s.to_string());
  }
};

TEST(CheckpointRankWeightsFixtures, EveryRankEqualsShardingTheLoadedFixture) {
  for (const std::string name : {"llama-bf16", "deepseek-v3-f32", "llama-fp8", "deepseek-v3-fp8"}) {
    const std::string dir = hf_fixture(name);
    auto spec = load_hf_config(dir);
    ASSERT_TRUE(spec.has_value()) << spec.error().to_string();
    for (const dtype t : {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3}) {
      expect_every_rank_matches(dir, t, layouts_for(*spec));  // fp8: F8 tensors kept in FP8
    }
  }
}

TEST_F(CheckpointRankWeights, EveryRankEqualsShardingTheLoadedSeededCheckpoint) {
  for (const std::string name : {"tiny-llama", "tiny-deepseek"}) {
    for (const dtype saved : {dtype::f32, dtype::bf16}) {
      const std::string dir = save(fmt::format("{}-{}", name, dtype_name(saved)), name, saved);
      for (const dtype t : {dtype::f32, dtype::bf16}) {
        expect_every_rank_matches(dir, t, layouts_for(*builtin_model(name)));
      }
    }
  }
}

TEST_F(CheckpointRankWeights, TiedEmbeddingsAndNoQueryLora) {
  model_spec llama = *builtin_model("tiny-llama");
  llama.tie_word_embeddings = true;
  // The LM head is cut from the embedding; a stray lm_head.weight is not used.
  const std::string tied = save("tied", llama, dtype::f32);
  expect_every_rank_matches(tied, dtype::f32, gqa_layouts);
  editable_tensors ts(tied);
  std::vector<std::byte> stray(static_cast<std::size_t>(llama.vocab * llama.hidden) * 4);
  ts.list.push_back({"lm_head.weight", dtype::f32, {llama.vocab, llama.hidden}, stray.data()});
  ts.write(tied);
  expect_every_rank_matches(tied, dtype::f32, gqa_layouts);

  model_spec ds = *builtin_model("tiny-deepseek");
  ds.mla.q_lora_rank = 0;
  ds.moe.score_correction_bias = false;
  ds.moe.num_shared_experts = 0;
  expect_every_rank_matches(save("no-q-lora", ds, dtype::bf16), dtype::bf16, mla_layouts);
}

TEST_F(CheckpointRankWeights, IndexAndShardsAndUnusedTensors) {
  const std::string dir = save("sharded", "tiny-deepseek", dtype::bf16);
  editable_tensors ts(dir);
  // A tensor the runtime does not use, and DeepSeek's multi-token-prediction layer.
  std::vector<std::byte> extra(16);
  ts.list.push_back({"model.unused.bias", dtype::f32, {4}, extra.data()});
  ts.list.push_back({"model.layers.3.mlp.gate.weight", dtype::f32, {4}, extra.data()});
  std::vector<safetensors_tensor> a, b;
  nlohmann::json weight_map = nlohmann::json::object();
  for (const safetensors_tensor& t : ts.list) {
    const bool first = t.name < "model.layers.1";
    (first ? a : b).push_back(t);
    weight_map[t.name] =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(write_safetensors(dir + "/model-00001-of-00002.safetensors", a).ok());
  ASSERT_TRUE(write_safetensors(dir + "/model-00002-of-00002.safetensors", b).ok());
  fs::remove(dir + "/model.safetensors");
  std::ofstream(dir + "/model.safetensors.index.json")
      << nlohmann::json{{"metadata", nlohmann::json::object()}, {"weight_map", weight_map}}.dump();
  expect_every_rank_matches(dir, dtype::bf16, mla_layouts);
  expect_every_rank_matches(dir, dtype::f32, {"tp:tp=2"});
}

// The first layout's rank 0 of a tiny-deepseek checkpoint holds EP group 0: experts 0-3 only.
const char* const ep_layout = "helix:kvp=4,tpa=1,tpf=2,ep=2";

TEST_F(CheckpointRankWeights, MissingTensorIsNamedEvenWhenTheRankHoldsNoneOfIt) {
  const std::string dir = save("missing", "tiny-deepseek", dtype::f32);
  const std::string name = "model.layers.2.mlp.experts.7.down_proj.weight";
  editable_tensors ts(dir);
  std::erase_if(ts.list, [&](const safetensors_tensor& t) { return t.name == name; });
  ts.write(dir);
  auto full = load_checkpoint(dir, dtype::f32);
  ASSERT_FALSE(full.has_value());
  auto got = checkpoint_rank_weights(dir, dtype::f32, *layout::parse(ep_layout), 0);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), errc::not_found);
  EXPECT_THAT(got.error().message(), HasSubstr(name));
  EXPECT_EQ(got.error().message(), full.error().message());
}

TEST_F(CheckpointRankWeights, WrongShapeAndUnreadableDtypeAreNamed) {
  const std::string dir = save("shape", "tiny-llama", dtype::f32);
  const layout l = *layout::parse("tp:tp=2");
  {
    editable_tensors ts(dir);
    ts["model.layers.1.post_attention_layernorm.weight"].shape = {32, 2};
    ts.write(dir);
  }
  auto full = load_checkpoint(dir, dtype::f32);
  ASSERT_FALSE(full.has_value());
  auto got = checkpoint_rank_weights(dir, dtype::f32, l, 1);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), errc::invalid_argument);
  EXPECT_EQ(got.error().message(), full.error().message());
  EXPECT_THAT(got.error().message(),
              HasSubstr("'model.layers.1.post_attention_layernorm.weight' has shape [32, 2], "
                        "expected [64]"));

  const std::string fp8 = save("fp8", "tiny-llama", dtype::f32);
  {
    editable_tensors ts(fp8);
    safetensors_tensor& t = ts["model.layers.0.self_attn.k_proj.weight"];
    t.type = dtype::fp8_e4m3;
    ts.storage.emplace_back(static_cast<std::size_t>(t.shape[0] * t.shape[1]), std::byte{0x38});
    t.data = ts.storage.back().data();
    ts.write(fp8);
  }
  got = checkpoint_rank_weights(fp8, dtype::f32, l, 0);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), errc::invalid_argument);
  EXPECT_THAT(got.error().message(), HasSubstr("model.layers.0.self_attn.k_proj.weight"));
  EXPECT_THAT(got.error().message(), HasSubstr("F8_E4M3 but config.json has no quantization"));
}

TEST_F(CheckpointRankWeights, NanIsFoundInThePiecesRead) {
  const model_spec spec = *builtin_model("tiny-llama");
  const std::string dir = save("nan", spec, dtype::f32);
  const layout l = *layout::parse("tp:tp=2");
  // A NaN in the LM head's last row: rank 1's vocabulary shard, not rank 0's.
  const std::size_t idx = static_cast<std::size_t>((spec.vocab - 1) * spec.hidden + 5);
  {
    editable_tensors ts(dir);
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(ts.bytes("lm_head.weight") + idx * 4, &nan, 4);
    ts.write(dir);
  }
  auto full = load_checkpoint(dir, dtype::f32);
  ASSERT_FALSE(full.has_value());
  EXPECT_TRUE(checkpoint_rank_weights(dir, dtype::f32, l, 0).has_value());
  auto got = checkpoint_rank_weights(dir, dtype::f32, l, 1);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), errc::invalid_argument);
  EXPECT_EQ(got.error().message(), full.error().message());
  EXPECT_THAT(got.error().message(),
              HasSubstr(fmt::format("lm_head.weight: element {} is NaN", idx)));

  // A column cut (o_proj's input dim, row-parallel): the element's full index is named.
  const std::string cols = save("nan-cols", spec, dtype::bf16);
  const std::int64_t q_width = spec.num_q_heads * spec.head_dim;
  const auto at = static_cast<std::size_t>(3 * q_width + q_width - 1);  // row 3, rank 1's half
  {
    editable_tensors ts(cols);
    const std::uint16_t inf = 0xff80;  // bf16 -Inf
    std::memcpy(ts.bytes("model.layers.1.self_attn.o_proj.weight") + at * 2, &inf, 2);
    ts.write(cols);
  }
  EXPECT_TRUE(checkpoint_rank_weights(cols, dtype::f32, l, 0).has_value());
  got = checkpoint_rank_weights(cols, dtype::f32, l, 1);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().message(), load_checkpoint(cols, dtype::f32).error().message());
  EXPECT_THAT(
      got.error().message(),
      HasSubstr(fmt::format("model.layers.1.self_attn.o_proj.weight: element {} is -Inf", at)));
}

TEST_F(CheckpointRankWeights, OverflowOnConversionIsRefused) {
  const std::string dir = save("overflow", "tiny-llama", dtype::f32);
  {
    editable_tensors ts(dir);
    const float big = 70000.0f;  // finite in f32, +Inf in f16
    std::memcpy(ts.bytes("model.layers.0.mlp.up_proj.weight") + 7 * 4, &big, 4);
    ts.write(dir);
  }
  const layout l = *layout::parse("tp:tp=2");
  auto got = checkpoint_rank_weights(dir, dtype::f16, l, 0);  // row 0 is in rank 0's slice
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().message(), load_checkpoint(dir, dtype::f16).error().message());
  EXPECT_THAT(got.error().message(),
              HasSubstr("model.layers.0.mlp.up_proj.weight: element 7 (70000 as F32) overflows"));
  EXPECT_TRUE(checkpoint_rank_weights(dir, dtype::f32, l, 0).has_value());
}

TEST_F(CheckpointRankWeights, BadLayoutAndRankAreRefused) {
  const std::string dir = save("args", "tiny-llama", dtype::f32);
  auto got = checkpoint_rank_weights(dir, dtype::f32, *layout::parse("tp:tp=2"), 2);
  ASSERT_FALSE(got.has_value());
  EXPECT_EQ(got.error().code(), errc::invalid_argument);
  EXPECT_THAT(got.error().message(), HasSubstr("rank 2 out of range [0, 2)"));
}

// The plan lists exactly the tensors allocate_weights() makes, in list_tensors() order, with their
// shapes, dtypes and roles: the layout rules and the weights' definition cannot drift apart.
TEST(PlanRankWeights, ListsTheTensorsAllocateWeightsMakes) {
  std::vector<model_spec> specs = {*builtin_model("tiny-llama"), *builtin_model("tiny-deepseek"),
                                   *load_hf_config(hf_fixture("llama-bf16")),
                                   *load_hf_config(hf_fixture("deepseek-v3-f32"))};
  model_spec variant = specs[1];
  variant.mla.q_lora_rank = 0;
  variant.moe.num_shared_experts = 0;
  variant.moe.score_correction_bias = false;
  specs.push_back(variant);
  specs.push_back(specs[0]);
  specs.back().tie_word_embeddings = true;
  for (const model_spec& spec : specs) {
    for (const dtype t : {dtype::f32, dtype::bf16}) {
      auto full = allocate_weights(spec, t);
      ASSERT_TRUE(full.has_value());
      std::vector<named_tensor> want;
      for (named_tensor& nt : list_tensors(*full)) {
        if (nt.t->data() != nullptr) want.push_back(std::move(nt));
      }
      const layout l = *layout::parse(spec.is_mla() ? "tp:tp=2" : "helix:kvp=2,tpa=2");
      rank_weights out;
      auto plan = plan_rank_weights(spec, t, l, 1, out);
      ASSERT_TRUE(plan.has_value()) << plan.error().to_string();
      ASSERT_EQ(plan->size(), want.size()) << spec.name;
      for (std::size_t i = 0; i < want.size(); ++i) {
        const full_tensor_plan& p = (*plan)[i];
        EXPECT_EQ(p.name, want[i].name) << spec.name << " " << i;
        EXPECT_EQ(p.dims, want[i].t->dims()) << p.name;
        EXPECT_EQ(p.type, want[i].t->type()) << p.name;
        EXPECT_EQ(p.role, want[i].role) << p.name;
        for (const tensor_cut& c : p.cuts) EXPECT_NE(c.dst, nullptr) << p.name;
      }
    }
  }
}

// VmHWM or VmRSS of this process from /proc/self/status, in bytes (0 if unreadable).
std::int64_t proc_status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;
  }
  return 0;
}

// Resets VmHWM to the current RSS (Linux >= 4.0); false where that is not allowed.
bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return out.good();
}

std::int64_t rank_bytes(const rank_weights& w) {
  std::int64_t n =
      static_cast<std::int64_t>(w.embed.bytes() + w.final_norm.bytes() + w.lm_head.bytes());
  for (const rank_layer_weights& l : w.layers) {
    for (const tensor* t : {&l.input_norm, &l.post_attn_norm, &l.q_proj, &l.k_proj, &l.v_proj,
                            &l.o_proj, &l.mlp.gate_proj, &l.mlp.up_proj, &l.mlp.down_proj}) {
      n += static_cast<std::int64_t>(t->bytes());
    }
  }
  return n;
}

// Peak memory of one rank of small-llama (156M parameters, bf16): reading only its pieces against
// loading the whole checkpoint and sharding it. Slow (seeding and writing 300 MB); prints what it
// measured.
TEST_F(CheckpointRankWeights, SlowPeakMemoryIsAboutTheRanksShards) {
  const std::string dir = save("small", "small-llama", dtype::bf16);
  if (!reset_peak_rss() || proc_status_bytes("VmHWM") == 0) {
    GTEST_SKIP() << "cannot reset or read the peak RSS of this process";
  }
  const layout l = *layout::parse("tp:tp=4");
  const auto measure = [&](auto load) {
    ::malloc_trim(0);  // freed heap would otherwise be reused without showing as growth
    const std::int64_t before = proc_status_bytes("VmRSS");
    EXPECT_TRUE(reset_peak_rss());
    std::int64_t held = 0;
    {
      rank_weights w = load();
      held = rank_bytes(w);
    }
    return std::pair{proc_status_bytes("VmHWM") - before, held};
  };
  const auto [whole_peak, whole_held] = measure([&] {
    auto full = load_checkpoint(dir, dtype::bf16);
    HELIX_CHECK(full.has_value(), "{}", full.error().to_string());
    return std::move(shard_weights(*full, l, 1).value());
  });
  const auto [rank_peak, rank_held] =
      measure([&] { return std::move(checkpoint_rank_weights(dir, dtype::bf16, l, 1).value()); });
  const auto mib = [](std::int64_t b) { return static_cast<double>(b) / (1 << 20); };
  std::printf(
      "small-llama bf16 (%.0f MiB file), %s rank 1 holds %.0f MiB: peak RSS growth %.0f MiB "
      "loading the whole checkpoint then sharding, %.0f MiB reading only the rank's pieces\n",
      mib(static_cast<std::int64_t>(fs::file_size(dir + "/model.safetensors"))),
      l.to_string().c_str(), mib(rank_held), mib(whole_peak), mib(rank_peak));
  EXPECT_EQ(whole_held, rank_held);
  // The whole path holds the full model (about 4 ranks' worth); the rank path its pieces plus
  // the mapped pages it read (the replicated embedding among them).
  EXPECT_LT(rank_peak, whole_peak / 2);
}

}  // namespace
}  // namespace helix::model
