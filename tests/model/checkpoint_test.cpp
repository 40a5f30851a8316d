#include "model/checkpoint.hpp"

#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/hf_config.hpp"
#include "model/safetensors.hpp"

namespace helix::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using json = nlohmann::json;

std::string fixture(const std::string& name) {
  return std::string(HELIX_FIXTURES_DIR) + "/hf-tiny/" + name;
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("helix_ckpt_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) +
            "_" + std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  [[nodiscard]] std::string sub(const std::string& name) const { return (dir_ / name).string(); }

  // Saves seeded weights of a built-in spec into `name` and returns them.
  model_weights save_seeded(const std::string& name, const std::string& builtin, dtype t,
                            bool tie = false) {
    auto spec = builtin_model(builtin);
    HELIX_CHECK(spec.has_value());
    spec->tie_word_embeddings = tie;
    auto w = init_seeded_weights(*spec, t, 17);
    HELIX_CHECK(w.has_value());
    const status s = save_checkpoint(sub(name), *w);
    HELIX_CHECK(s.ok(), "{}", s.to_string());
    return std::move(*w);
  }

  // Rewrites dir/model.safetensors through `edit`, which may change the tensor list.
  template <class Edit>
  void rewrite_tensors(const std::string& dir, Edit edit) {
    const std::string p = dir + "/model.safetensors";
    std::vector<safetensors_tensor> ts;
    std::vector<std::vector<std::byte>> storage;
    {
      auto f = safetensors_file::open(p);
      HELIX_CHECK(f.has_value());
      for (const safetensors_entry& e : f->entries()) {
        const auto b = f->bytes(e);
        storage.emplace_back(b.begin(), b.end());
        ts.push_back({e.name, *e.type, e.shape, nullptr});
      }
    }
    for (std::size_t i = 0; i < ts.size(); ++i) ts[i].data = storage[i].data();
    edit(ts, storage);  // moving the inner vectors keeps their buffers, so pointers stay valid
    const status s = write_safetensors(p, ts);
    HELIX_CHECK(s.ok(), "{}", s.to_string());
  }

  fs::path dir_;
};

// The tensors the spec allocates (list_tensors may also name empty slots).
std::vector<named_tensor> allocated(model_weights& w) {
  std::vector<named_tensor> out;
  for (named_tensor& nt : list_tensors(w)) {
    if (nt.t->data() != nullptr) out.push_back(std::move(nt));
  }
  return out;
}

void expect_bit_identical(model_weights& a, model_weights& b) {
  auto ta = allocated(a);
  auto tb = allocated(b);
  ASSERT_EQ(ta.size(), tb.size());
  for (std::size_t i = 0; i < ta.size(); ++i) {
    SCOPED_TRACE(ta[i].name);
    ASSERT_EQ(ta[i].name, tb[i].name);
    ASSERT_EQ(ta[i].t->type(), tb[i].t->type());
    ASSERT_EQ(ta[i].t->dims(), tb[i].t->dims());
    EXPECT_EQ(std::memcmp(ta[i].t->data(), tb[i].t->data(), ta[i].t->bytes()), 0);
  }
}

TEST_F(CheckpointTest, LoadsLlamaFixture) {
  const std::string dir = fixture("llama-bf16");
  auto w = load_checkpoint(dir, dtype::f32);
  ASSERT_TRUE(w.has_value()) << w.error().to_string();
  EXPECT_EQ(w->spec.name, "llama-bf16");
  EXPECT_EQ(w->spec.head_dim, 8);
  EXPECT_EQ(w->spec.num_kv_heads, 2);
  EXPECT_EQ(w->weight_type, dtype::f32);
  ASSERT_EQ(w->layers.size(), 2u);
  EXPECT_EQ(w->layers[0].k_proj.dims(), (shape{16, 64}));
  EXPECT_EQ(w->lm_head.dims(), (shape{97, 64}));

  // Every tensor equals the file's BF16 values (exactly, since bf16 -> f32 is exact), and the
  // file holds nothing the model does not use.
  auto f = safetensors_file::open(dir + "/model.safetensors");
  ASSERT_TRUE(f.has_value());
  auto named = allocated(*w);
  EXPECT_EQ(named.size(), f->entries().size());
  for (const named_tensor& nt : named) {
    SCOPED_TRACE(nt.name);
    const safetensors_entry* e = f->find(nt.name);
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->dtype_name, "BF16");
    const auto raw = f->bytes(*e);
    for (std::int64_t i = 0; i < nt.t->numel(); ++i) {
      bf16_t v;
      std::memcpy(&v, raw.data() + 2 * i, 2);
      ASSERT_EQ(nt.t->as<float>()[i], to_f32(v));
    }
  }

  // Loaded as bf16, the linear weights are the file's bytes; norms stay f32.
  auto wb = load_checkpoint(dir, dtype::bf16);
  ASSERT_TRUE(wb.has_value()) << wb.error().to_string();
  EXPECT_EQ(wb->layers[1].q_proj.type(), dtype::bf16);
  EXPECT_EQ(wb->layers[1].input_norm.type(), dtype::f32);
  const safetensors_entry* q = f->find("model.layers.1.self_attn.q_proj.weight");
  EXPECT_EQ(std::memcmp(wb->layers[1].q_proj.data(), f->bytes(*q).data(), q->data_bytes), 0);
}

TEST_F(CheckpointTest, LoadsDeepseekFixture) {
  const std::string dir = fixture("deepseek-v3-f32");
  auto w = load_checkpoint(dir, dtype::f32);
  ASSERT_TRUE(w.has_value()) << w.error().to_string();
  const model_spec& s = w->spec;
  EXPECT_EQ(s.name, "deepseek-v3-f32");
  EXPECT_TRUE(s.rope.interleave);
  EXPECT_EQ(s.mla.q_lora_rank, 24);
  EXPECT_EQ(s.moe.scoring, router_scoring::sigmoid);
  EXPECT_TRUE(s.moe.score_correction_bias);
  ASSERT_EQ(w->layers.size(), 2u);
  const layer_weights& dense = w->layers[0];
  const layer_weights& moe = w->layers[1];
  EXPECT_TRUE(dense.experts.empty());
  EXPECT_EQ(dense.mlp.gate_proj.dims(), (shape{96, 64}));
  EXPECT_EQ(dense.q_a_proj.dims(), (shape{24, 64}));
  EXPECT_EQ(dense.q_b_proj.dims(), (shape{96, 24}));
  EXPECT_EQ(dense.kv_a_proj.dims(), (shape{40, 64}));
  EXPECT_EQ(dense.kv_b_proj.dims(), (shape{128, 32}));
  EXPECT_EQ(moe.experts.size(), 8u);
  EXPECT_EQ(moe.router.dims(), (shape{8, 64}));
  EXPECT_EQ(moe.router_bias.dims(), (shape{8}));
  EXPECT_EQ(moe.shared.down_proj.dims(), (shape{64, 32}));

  auto f = safetensors_file::open(dir + "/model.safetensors");
  ASSERT_TRUE(f.has_value());
  auto named = allocated(*w);
  EXPECT_EQ(named.size(), f->entries().size());
  std::set<std::string> names;
  for (const named_tensor& nt : named) {
    names.insert(nt.name);
    const safetensors_entry* e = f->find(nt.name);
    ASSERT_NE(e, nullptr) << nt.name;
    EXPECT_EQ(std::memcmp(nt.t->data(), f->bytes(*e).data(), e->data_bytes), 0) << nt.name;
  }
  for (const char* n : {"model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
                        "model.layers.1.mlp.experts.3.down_proj.weight",
                        "model.layers.1.mlp.gate.e_score_correction_bias",
                        "model.layers.1.mlp.shared_experts.up_proj.weight", "lm_head.weight"}) {
    EXPECT_TRUE(names.contains(n)) << n;
  }

  // As bf16: linear weights rounded, router and its bias exact f32.
  auto wb = load_checkpoint(dir, dtype::bf16);
  ASSERT_TRUE(wb.has_value()) << wb.error().to_string();
  EXPECT_EQ(wb->layers[1].experts[2].up_proj.type(), dtype::bf16);
  EXPECT_EQ(wb->layers[1].experts[2].up_proj.as<bf16_t>()[5].bits,
            to_bf16(moe.experts[2].up_proj.as<float>()[5]).bits);
  EXPECT_EQ(std::memcmp(wb->layers[1].router_bias.data(), moe.router_bias.data(), 32), 0);
  EXPECT_EQ(std::memcmp(wb->layers[1].router.data(), moe.router.data(), moe.router.bytes()), 0);
}

class SeededRoundTrip : public CheckpointTest,
                        public ::testing::WithParamInterface<std::tuple<const char*, dtype>> {};

TEST_P(SeededRoundTrip, SaveLoadIsBitIdentical) {
  const auto [builtin, t] = GetParam();
  model_weights w = save_seeded("ckpt", builtin, t);
  EXPECT_TRUE(fs::exists(sub("ckpt/config.json")));
  auto back = load_checkpoint(sub("ckpt"), t);
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  EXPECT_EQ(back->spec.name, "ckpt");
  EXPECT_EQ(back->spec.architecture, w.spec.architecture);
  EXPECT_EQ(back->spec.num_params(), w.spec.num_params());
  EXPECT_EQ(back->spec.rms_norm_eps, w.spec.rms_norm_eps);
  EXPECT_EQ(back->spec.rope.interleave, w.spec.rope.interleave);
  EXPECT_EQ(back->spec.moe.score_correction_bias, w.spec.moe.score_correction_bias);
  expect_bit_identical(w, *back);
  // The stored dtype is the weights' dtype.
  auto f = safetensors_file::open(sub("ckpt/model.safetensors"));
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->find("model.embed_tokens.weight")->dtype_name, safetensors_dtype_name(t));
  EXPECT_EQ(f->find("model.norm.weight")->dtype_name, "F32");
}

INSTANTIATE_TEST_SUITE_P(Builtins, SeededRoundTrip,
                         ::testing::Combine(::testing::Values("tiny-llama", "tiny-deepseek"),
                                            ::testing::Values(dtype::f32, dtype::bf16, dtype::f16)),
                         [](const auto& info) {
                           std::string n = std::string(std::get<0>(info.param)) + "_" +
                                           std::string(dtype_name(std::get<1>(info.param)));
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

TEST_F(CheckpointTest, LoadConvertsBetweenWeightTypes) {
  model_weights w = save_seeded("ckpt", "tiny-llama", dtype::f32);
  auto b = load_checkpoint(sub("ckpt"), dtype::bf16);
  ASSERT_TRUE(b.has_value()) << b.error().to_string();
  const tensor& src = w.layers[0].o_proj;
  const tensor& dst = b->layers[0].o_proj;
  for (std::int64_t i = 0; i < src.numel(); ++i) {
    ASSERT_EQ(dst.as<bf16_t>()[i].bits, to_bf16(src.as<float>()[i]).bits);
  }
}

TEST_F(CheckpointTest, TiedEmbeddingsNeedNoLmHead) {
  model_weights w = save_seeded("tied", "tiny-llama", dtype::f32, /*tie=*/true);
  auto f = safetensors_file::open(sub("tied/model.safetensors"));
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->find("lm_head.weight"), nullptr);
  auto back = load_checkpoint(sub("tied"), dtype::f32);
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  EXPECT_TRUE(back->spec.tie_word_embeddings);
  EXPECT_EQ(back->lm_head.data(), nullptr);
  expect_bit_identical(w, *back);

  // An lm_head.weight stored anyway (some exporters do) is ignored.
  const std::vector<float> extra(256 * 64, 0.5f);
  rewrite_tensors(sub("tied"), [&](std::vector<safetensors_tensor>& ts, auto&) {
    ts.push_back({"lm_head.weight", dtype::f32, {256, 64}, extra.data()});
  });
  back = load_checkpoint(sub("tied"), dtype::f32);
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  expect_bit_identical(w, *back);
}

TEST_F(CheckpointTest, ExtraTensorsAndMtpLayersAreIgnored) {
  model_weights w = save_seeded("ckpt", "tiny-deepseek", dtype::f32);
  const std::vector<float> extra(64 * 64, 1.0f);
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto&) {
    // DeepSeek-V3 stores its MTP module as layer num_hidden_layers.
    ts.push_back({"model.layers.3.self_attn.o_proj.weight", dtype::f32, {64, 64}, extra.data()});
    ts.push_back({"model.layers.3.eh_proj.weight", dtype::f32, {64, 64}, extra.data()});
    ts.push_back({"model.rotary_emb.inv_freq", dtype::f32, {4}, extra.data()});
  });
  auto back = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  expect_bit_identical(w, *back);
}

TEST_F(CheckpointTest, MissingTensorIsNotFound) {
  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto& storage) {
    for (std::size_t i = 0; i < ts.size(); ++i) {
      if (ts[i].name == "model.layers.1.self_attn.v_proj.weight") {
        ts.erase(ts.begin() + static_cast<std::ptrdiff_t>(i));
        storage.erase(storage.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
  });
  auto w = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::not_found);
  EXPECT_THAT(w.error().message(), HasSubstr("'model.layers.1.self_attn.v_proj.weight' not found"));
  EXPECT_THAT(w.error().message(), HasSubstr("[32, 64]"));
}

TEST_F(CheckpointTest, MissingLmHeadWhenUntiedIsNotFound) {
  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto& storage) {
    for (std::size_t i = 0; i < ts.size(); ++i) {
      if (ts[i].name == "lm_head.weight") {
        ts.erase(ts.begin() + static_cast<std::ptrdiff_t>(i));
        storage.erase(storage.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
  });
  auto w = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::not_found);
  EXPECT_THAT(w.error().message(), HasSubstr("lm_head.weight"));
}

TEST_F(CheckpointTest, ShapeMismatchNamesBothShapes) {
  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  const std::vector<float> wrong(64 * 32, 0.0f);
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto&) {
    for (safetensors_tensor& t : ts) {
      if (t.name == "model.layers.0.self_attn.k_proj.weight") {
        t.shape = {64, 32};  // transposed
        t.data = wrong.data();
      }
    }
  });
  auto w = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::invalid_argument);
  EXPECT_THAT(w.error().message(), HasSubstr("model.layers.0.self_attn.k_proj.weight"));
  EXPECT_THAT(w.error().message(), HasSubstr("has shape [64, 32], expected [32, 64]"));
}

TEST_F(CheckpointTest, Fp8TensorWithoutQuantizationConfigIsRefusedByName) {
  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  const std::vector<std::uint8_t> fp8(64 * 128, 0x38);  // o_proj is [hidden, 8 heads * 16]
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto&) {
    for (safetensors_tensor& t : ts) {
      if (t.name == "model.layers.0.self_attn.o_proj.weight") {
        ASSERT_EQ(t.shape, (std::vector<std::int64_t>{64, 128}));
        t.type = dtype::fp8_e4m3;
        t.data = fp8.data();
      }
    }
  });
  auto w = load_checkpoint(sub("ckpt"), dtype::bf16);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::invalid_argument);
  EXPECT_THAT(w.error().message(),
              HasSubstr("tensor 'model.layers.0.self_attn.o_proj.weight' is stored as F8_E4M3 but "
                        "config.json has no quantization_config"));
}

// Overwrites element `idx` of tensor `name` in dir/model.safetensors with the raw value `v`
// (of the stored element size).
template <class V>
void poke(std::vector<safetensors_tensor>& ts, std::vector<std::vector<std::byte>>& storage,
          const std::string& name, std::size_t idx, V v) {
  for (std::size_t i = 0; i < ts.size(); ++i) {
    if (ts[i].name != name) continue;
    ASSERT_EQ(dtype_bytes(ts[i].type), sizeof(V)) << name;
    ASSERT_LE((idx + 1) * sizeof(V), storage[i].size()) << name;
    std::memcpy(storage[i].data() + idx * sizeof(V), &v, sizeof(V));
    return;
  }
  FAIL() << "no tensor " << name;
}

void expect_load_refused(const std::string& dir, dtype t, const std::string& needle) {
  auto w = load_checkpoint(dir, t);
  ASSERT_FALSE(w.has_value()) << needle;
  EXPECT_EQ(w.error().code(), errc::invalid_argument) << w.error().to_string();
  EXPECT_THAT(w.error().message(), HasSubstr(needle));
  EXPECT_THAT(w.error().message(), HasSubstr(dir));
}

// Regression: a NaN weight loaded silently and turned every logit into NaN many layers later.
TEST_F(CheckpointTest, NanInNormWeightIsRefused) {
  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto& storage) {
    poke(ts, storage, "model.layers.0.input_layernorm.weight", 3,
         std::numeric_limits<float>::quiet_NaN());
  });
  expect_load_refused(sub("ckpt"), dtype::f32,
                      "model.layers.0.input_layernorm.weight: element 3 is NaN");
  expect_load_refused(sub("ckpt"), dtype::bf16, "(stored as F32, shape [64]");
}

TEST_F(CheckpointTest, InfInLmHeadIsRefused) {
  // bf16 storage: lm_head is stored as BF16 (+Inf is 0x7f80), the norms as F32.
  (void)save_seeded("ckpt", "tiny-llama", dtype::bf16);
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto& storage) {
    poke(ts, storage, "lm_head.weight", 64 * 3 + 1, bf16_t{0x7f80});
  });
  expect_load_refused(sub("ckpt"), dtype::bf16, "lm_head.weight: element 193 is +Inf");
  expect_load_refused(sub("ckpt"), dtype::f32, "(stored as BF16, shape [256, 64]");

  // f16 storage: -Inf (0xfc00) and a NaN (0x7e00) after it; the first one is reported.
  (void)save_seeded("ckpt16", "tiny-llama", dtype::f16);
  rewrite_tensors(sub("ckpt16"), [&](std::vector<safetensors_tensor>& ts, auto& storage) {
    poke(ts, storage, "lm_head.weight", 10, f16_t{0xfc00});
    poke(ts, storage, "lm_head.weight", 11, f16_t{0x7e00});
  });
  expect_load_refused(sub("ckpt16"), dtype::f16, "lm_head.weight: element 10 is -Inf");
}

// Stored FP8 cannot be loaded yet, but a NaN in it is still reported as what it is.
// A finite F32 value beyond f16's range becomes Inf when loaded as f16: refused as well.
TEST_F(CheckpointTest, ValueOverflowingTheWeightTypeIsRefused) {
  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto& storage) {
    poke(ts, storage, "model.layers.1.mlp.down_proj.weight", 7, -70000.0f);
  });
  expect_load_refused(sub("ckpt"), dtype::f16,
                      "model.layers.1.mlp.down_proj.weight: element 7 (-70000 as F32) overflows "
                      "to -Inf when converted to f16");
  // bf16 and f32 hold it.
  EXPECT_TRUE(load_checkpoint(sub("ckpt"), dtype::bf16).has_value());
  EXPECT_TRUE(load_checkpoint(sub("ckpt"), dtype::f32).has_value());
  // FLT_MAX rounds up to Inf in bf16.
  (void)save_seeded("ckpt_max", "tiny-llama", dtype::f32);
  rewrite_tensors(sub("ckpt_max"), [&](std::vector<safetensors_tensor>& ts, auto& storage) {
    poke(ts, storage, "model.embed_tokens.weight", 0, std::numeric_limits<float>::max());
  });
  expect_load_refused(sub("ckpt_max"), dtype::bf16,
                      "model.embed_tokens.weight: element 0 (3.4028235e+38 as F32) overflows to "
                      "+Inf when converted to bf16");
}

TEST_F(CheckpointTest, ShardedCheckpointWithIndex) {
  model_weights w = save_seeded("ckpt", "tiny-deepseek", dtype::bf16);
  // Split the single file into two shards plus an index, as transformers' save_pretrained does.
  const std::string dir = sub("ckpt");
  std::vector<safetensors_tensor> a, b;
  json weight_map = json::object();
  std::vector<std::vector<std::byte>> storage;
  {
    auto f = safetensors_file::open(dir + "/model.safetensors");
    ASSERT_TRUE(f.has_value());
    storage.reserve(f->entries().size());
    for (const safetensors_entry& e : f->entries()) {
      const auto bytes = f->bytes(e);
      storage.emplace_back(bytes.begin(), bytes.end());
      const bool first = e.name < "model.layers.1";
      (first ? a : b).push_back({e.name, *e.type, e.shape, storage.back().data()});
      weight_map[e.name] =
          first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    }
  }
  ASSERT_FALSE(a.empty());
  ASSERT_FALSE(b.empty());
  ASSERT_TRUE(write_safetensors(dir + "/model-00001-of-00002.safetensors", a).ok());
  ASSERT_TRUE(write_safetensors(dir + "/model-00002-of-00002.safetensors", b).ok());
  fs::remove(dir + "/model.safetensors");
  const auto write_index = [&](const json& wm) {
    std::ofstream(dir + "/model.safetensors.index.json")
        << json{{"metadata", {{"total_size", 0}}}, {"weight_map", wm}}.dump();
  };
  write_index(weight_map);
  auto back = load_checkpoint(dir, dtype::bf16);
  ASSERT_TRUE(back.has_value()) << back.error().to_string();
  expect_bit_identical(w, *back);

  // The index names a shard that does not hold the tensor.
  json bad = weight_map;
  bad["model.embed_tokens.weight"] = "model-00002-of-00002.safetensors";
  write_index(bad);
  auto r = load_checkpoint(dir, dtype::bf16);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::not_found);
  EXPECT_THAT(r.error().message(), HasSubstr("model.embed_tokens.weight"));

  // A shard that is missing.
  bad = weight_map;
  bad["model.embed_tokens.weight"] = "model-00003-of-00003.safetensors";
  write_index(bad);
  r = load_checkpoint(dir, dtype::bf16);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::not_found);
  EXPECT_THAT(r.error().message(), HasSubstr("model-00003-of-00003.safetensors"));

  // Shard names must stay inside the directory.
  bad = weight_map;
  bad["model.embed_tokens.weight"] = "../model-00001-of-00002.safetensors";
  write_index(bad);
  r = load_checkpoint(dir, dtype::bf16);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::invalid_argument);
  EXPECT_THAT(r.error().message(), HasSubstr("not a file name"));

  // An index without a weight_map.
  std::ofstream(dir + "/model.safetensors.index.json") << "{\"metadata\": {}}";
  r = load_checkpoint(dir, dtype::bf16);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), errc::invalid_argument);
  EXPECT_THAT(r.error().message(), HasSubstr("weight_map"));
}

TEST_F(CheckpointTest, MissingFilesAreNotFound) {
  auto w = load_checkpoint(sub("nothing"), dtype::f32);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::not_found);
  EXPECT_THAT(w.error().message(), HasSubstr("config.json"));

  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  fs::remove(sub("ckpt/model.safetensors"));
  w = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::not_found);
  EXPECT_THAT(w.error().message(), HasSubstr("model.safetensors"));
}

TEST_F(CheckpointTest, CorruptWeightsFileIsInvalidArgument) {
  (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
  const std::string p = sub("ckpt/model.safetensors");
  fs::resize_file(p, fs::file_size(p) - 100);  // truncated download
  auto w = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::invalid_argument);
  EXPECT_THAT(w.error().message(), HasSubstr("model.safetensors"));
  EXPECT_THAT(w.error().message(), HasSubstr("end beyond the data section"));
}

// A config that describes a model far larger than its weights files is refused before anything
// is allocated (it would otherwise abort on out-of-memory).
TEST_F(CheckpointTest, AbsurdConfigIsRefusedBeforeAllocating) {
  (void)save_seeded("ckpt", "tiny-deepseek", dtype::bf16);
  for (const char* key : {"hidden_size", "n_routed_experts", "num_hidden_layers", "vocab_size"}) {
    std::ifstream in(sub("ckpt/config.json"));
    json cfg = json::parse(in);
    in.close();
    json bad = cfg;
    bad[key] = key == std::string("n_routed_experts")    ? 1 << 30
               : key == std::string("num_hidden_layers") ? 1 << 16  // config.json's maximum
                                                         : 0x7fffffff;
    if (key == std::string("n_routed_experts")) bad["n_group"] = 1, bad["topk_group"] = 1;
    std::ofstream(sub("ckpt/config.json"), std::ios::trunc) << bad.dump();
    auto w = load_checkpoint(sub("ckpt"), dtype::f32);
    ASSERT_FALSE(w.has_value()) << key;
    EXPECT_EQ(w.error().code(), errc::invalid_argument) << key;
    EXPECT_THAT(w.error().message(), HasSubstr("weights files hold only")) << key;
    std::ofstream(sub("ckpt/config.json"), std::ios::trunc) << cfg.dump();
  }
  EXPECT_TRUE(load_checkpoint(sub("ckpt"), dtype::f32).has_value());
}

TEST_F(CheckpointTest, QuantizationOtherThanBlockScaledFp8IsRefused) {
  (void)save_seeded("ckpt", "tiny-deepseek", dtype::bf16);
  std::ifstream in(sub("ckpt/config.json"));
  json cfg = json::parse(in);
  cfg["quantization_config"] = {{"quant_method", "gptq"}, {"bits", 4}};
  std::ofstream(sub("ckpt/config.json"), std::ios::trunc) << cfg.dump();
  auto w = load_checkpoint(sub("ckpt"), dtype::bf16);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::invalid_argument);
  EXPECT_THAT(w.error().message(),
              HasSubstr("quantization_config.quant_method \"gptq\" is not supported"));
  // Block-scaled FP8 over weights stored unquantized loads (nothing to dequantize).
  cfg["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
  std::ofstream(sub("ckpt/config.json"), std::ios::trunc) << cfg.dump();
  EXPECT_TRUE(load_checkpoint(sub("ckpt"), dtype::bf16).has_value());
}

// fp8_e4m3 keeps F8 tensors in FP8 and never quantizes: a checkpoint without F8 tensors loads as
// stored (here bf16), the values of any other load.
TEST_F(CheckpointTest, Fp8WeightTypeKeepsUnquantizedTensorsAsStored) {
  auto w = load_checkpoint(fixture("llama-bf16"), dtype::fp8_e4m3);
  ASSERT_TRUE(w.has_value()) << w.error().to_string();
  auto bf16 = load_checkpoint(fixture("llama-bf16"), dtype::bf16);
  ASSERT_TRUE(bf16.has_value()) << bf16.error().to_string();
  const tensor& o = w->layers[0].o_proj;
  EXPECT_EQ(o.type(), dtype::bf16);
  EXPECT_EQ(o.scales(), nullptr);
  ASSERT_EQ(o.bytes(), bf16->layers[0].o_proj.bytes());
  EXPECT_EQ(std::memcmp(o.data(), bf16->layers[0].o_proj.data(), o.bytes()), 0);
}

TEST_F(CheckpointTest, SavedConfigIsHfStyle) {
  (void)save_seeded("ckpt", "tiny-deepseek", dtype::bf16);
  std::ifstream in(sub("ckpt/config.json"));
  const json cfg = json::parse(in);
  EXPECT_EQ(cfg["architectures"][0], "DeepseekV3ForCausalLM");
  EXPECT_EQ(cfg["model_type"], "deepseek_v3");
  EXPECT_EQ(cfg["torch_dtype"], "bfloat16");
  EXPECT_EQ(cfg["q_lora_rank"], 24);
  EXPECT_EQ(cfg["n_routed_experts"], 8);
  EXPECT_EQ(cfg["topk_method"], "noaux_tc");
  EXPECT_EQ(cfg["rope_interleave"], true);
  EXPECT_TRUE(cfg["rope_scaling"].is_null());
  // No temporaries left behind.
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(sub("ckpt")))
    files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"config.json", "model.safetensors"}));
}

// Block-scaled FP8 as HF writes it (quantization_config fp8, weight_block_size): o_proj [64, 128]
// in e4m3 with scales over 32 x 32 blocks. A NaN code, missing scales and a scale grid of the
// wrong shape are refused naming the tensor; good scales dequantize element by element.
class Fp8Checkpoint : public CheckpointTest {
 protected:
  static constexpr const char* name = "model.layers.0.self_attn.o_proj.weight";
  void write(std::vector<std::uint8_t>& codes, std::vector<float>* scales,
             std::vector<std::int64_t> scale_shape = {2, 4}) {
    (void)save_seeded("ckpt", "tiny-llama", dtype::f32);
    std::ifstream in(sub("ckpt/config.json"));
    json cfg = json::parse(in);
    cfg["quantization_config"] = {
        {"quant_method", "fp8"}, {"fmt", "e4m3"}, {"weight_block_size", {32, 32}}};
    std::ofstream(sub("ckpt/config.json"), std::ios::trunc) << cfg.dump();
    rewrite_tensors(sub("ckpt"), [&](std::vector<safetensors_tensor>& ts, auto&) {
      for (safetensors_tensor& t : ts) {
        if (t.name == name) {
          t.type = dtype::fp8_e4m3;
          t.data = codes.data();
        }
      }
      if (scales != nullptr) {
        ts.push_back({std::string(name) + "_scale_inv", dtype::f32, scale_shape, scales->data()});
      }
    });
  }
};

TEST_F(Fp8Checkpoint, DequantizesEveryElementWithItsBlocksScale) {
  std::vector<std::uint8_t> codes(64 * 128, 0x38);  // 1.0
  codes[33 * 128 + 70] = 0x40;                      // 2.0, in block row 1, block column 2
  std::vector<float> scales(8);
  for (std::size_t b = 0; b < scales.size(); ++b) scales[b] = 0.5f + static_cast<float>(b);
  write(codes, &scales);
  auto w = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_TRUE(w.has_value()) << w.error().to_string();
  const auto* o = static_cast<const float*>(w->layers[0].o_proj.data());
  for (std::int64_t i = 0; i < 64; ++i) {
    for (std::int64_t j = 0; j < 128; ++j) {
      const float code = i == 33 && j == 70 ? 2.0f : 1.0f;
      ASSERT_EQ(o[i * 128 + j], code * scales[static_cast<std::size_t>(i / 32 * 4 + j / 32)])
          << i << "," << j;
    }
  }
}

TEST_F(Fp8Checkpoint, NanCodeMissingScalesAndWrongScaleGridAreRefused) {
  std::vector<std::uint8_t> codes(64 * 128, 0x38);
  codes[4100] = 0xff;  // S.1111.111: E4M3FN's only NaN (0x7e, 448, is finite)
  codes[4099] = 0x7e;
  std::vector<float> scales(8, 1.0f);
  write(codes, &scales);
  expect_load_refused(sub("ckpt"), dtype::f32,
                      "model.layers.0.self_attn.o_proj.weight: element 4100 is NaN (F8_E4M3 code "
                      "0xff");
  codes[4100] = 0x38;
  write(codes, nullptr);
  auto w = load_checkpoint(sub("ckpt"), dtype::f32);
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code(), errc::not_found);
  EXPECT_THAT(w.error().message(), HasSubstr("its scales "
                                             "'model.layers.0.self_attn.o_proj.weight_scale_inv' "
                                             "are missing"));
  write(codes, &scales, {4, 2});
  expect_load_refused(sub("ckpt"), dtype::f32, "has shape [4, 2], expected [2, 4]");
}

}  // namespace
}  // namespace helix::model
