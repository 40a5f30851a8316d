#include "model/hf_config.hpp"

#include <random>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace helix::model {
namespace {

using ::testing::HasSubstr;
using json = nlohmann::json;

json minimal_llama() {
  return {{"model_type", "llama"},    {"hidden_size", 64}, {"num_hidden_layers", 2},
          {"num_attention_heads", 4}, {"vocab_size", 100}, {"intermediate_size", 128}};
}

json minimal_deepseek() {
  return {{"model_type", "deepseek_v3"}, {"hidden_size", 64}, {"num_hidden_layers", 4},
          {"num_attention_heads", 4},    {"vocab_size", 100}, {"intermediate_size", 96}};
}

expected<model_spec> parse(const json& j, std::string name = "m") {
  return parse_hf_config(j.dump(), std::move(name));
}

void expect_refused(const json& j, const std::vector<std::string>& needles) {
  auto s = parse(j, "cfg");
  ASSERT_FALSE(s.has_value()) << j.dump();
  EXPECT_EQ(s.error().code(), errc::invalid_argument) << s.error().to_string();
  EXPECT_THAT(s.error().message(), HasSubstr("config 'cfg'"));
  for (const std::string& n : needles) EXPECT_THAT(s.error().message(), HasSubstr(n)) << j.dump();
}

void expect_same_spec(const model_spec& a, const model_spec& b) {
  EXPECT_EQ(a.architecture, b.architecture);
  EXPECT_EQ(a.attention, b.attention);
  EXPECT_EQ(a.hidden, b.hidden);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_q_heads, b.num_q_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.ffn, b.ffn);
  EXPECT_EQ(a.vocab, b.vocab);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.scaling, b.rope.scaling);
  EXPECT_EQ(a.rope.interleave, b.rope.interleave);
  if (a.rope.scaling != rope_scaling_kind::none) {
    EXPECT_EQ(a.rope.factor, b.rope.factor);
  }
  if (a.rope.scaling == rope_scaling_kind::llama3) {
    EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
    EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
    EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  }
  if (a.rope.scaling == rope_scaling_kind::yarn) {
    EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
    EXPECT_EQ(a.rope.beta_fast, b.rope.beta_fast);
    EXPECT_EQ(a.rope.beta_slow, b.rope.beta_slow);
    EXPECT_EQ(a.rope.mscale, b.rope.mscale);
    EXPECT_EQ(a.rope.mscale_all_dim, b.rope.mscale_all_dim);
    EXPECT_EQ(a.rope.attention_factor, b.rope.attention_factor);
  }
  EXPECT_EQ(a.mla.q_lora_rank, b.mla.q_lora_rank);
  EXPECT_EQ(a.mla.kv_lora_rank, b.mla.kv_lora_rank);
  EXPECT_EQ(a.mla.qk_nope_head_dim, b.mla.qk_nope_head_dim);
  EXPECT_EQ(a.mla.qk_rope_head_dim, b.mla.qk_rope_head_dim);
  EXPECT_EQ(a.mla.v_head_dim, b.mla.v_head_dim);
  EXPECT_EQ(a.moe.num_experts, b.moe.num_experts);
  EXPECT_EQ(a.moe.num_shared_experts, b.moe.num_shared_experts);
  EXPECT_EQ(a.moe.experts_per_token, b.moe.experts_per_token);
  EXPECT_EQ(a.moe.expert_ffn, b.moe.expert_ffn);
  EXPECT_EQ(a.moe.num_groups, b.moe.num_groups);
  EXPECT_EQ(a.moe.topk_groups, b.moe.topk_groups);
  EXPECT_EQ(a.moe.first_dense_layers, b.moe.first_dense_layers);
  EXPECT_EQ(a.moe.layer_freq, b.moe.layer_freq);
  EXPECT_EQ(a.moe.routed_scaling_factor, b.moe.routed_scaling_factor);
  EXPECT_EQ(a.moe.norm_topk_prob, b.moe.norm_topk_prob);
  EXPECT_EQ(a.moe.scoring, b.moe.scoring);
  EXPECT_EQ(a.moe.score_correction_bias, b.moe.score_correction_bias);
}

TEST(HfConfigTest, MinimalLlamaTakesHfDefaults) {
  auto s = parse(minimal_llama(), "mini");
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->name, "mini");
  EXPECT_EQ(s->architecture, "llama");
  EXPECT_EQ(s->attention, attention_kind::gqa);
  EXPECT_EQ(s->rms_norm_eps, 1e-6);
  EXPECT_EQ(s->rope.theta, 10000.0);
  EXPECT_EQ(s->rope.scaling, rope_scaling_kind::none);
  EXPECT_FALSE(s->rope.interleave);
  EXPECT_FALSE(s->tie_word_embeddings);
  EXPECT_EQ(s->max_position_embeddings, 2048);
  EXPECT_EQ(s->head_dim, 16);     // hidden / heads
  EXPECT_EQ(s->num_kv_heads, 4);  // = num_attention_heads
  EXPECT_EQ(s->ffn, 128);
  EXPECT_EQ(s->vocab, 100);
  EXPECT_FALSE(s->is_moe());
}

TEST(HfConfigTest, LlamaExplicitKeys) {
  json j = minimal_llama();
  j["num_key_value_heads"] = 2;
  j["head_dim"] = 32;
  j["rms_norm_eps"] = 1e-5;
  j["rope_theta"] = 500000;  // an integer in many hub configs
  j["tie_word_embeddings"] = true;
  j["max_position_embeddings"] = 131072;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["rope_scaling"] = nullptr;
  j["pretraining_tp"] = 1;
  j["torch_dtype"] = "bfloat16";
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->num_kv_heads, 2);
  EXPECT_EQ(s->head_dim, 32);
  EXPECT_EQ(s->rms_norm_eps, 1e-5);
  EXPECT_EQ(s->rope.theta, 500000.0);
  EXPECT_TRUE(s->tie_word_embeddings);
  EXPECT_EQ(s->max_position_embeddings, 131072);
}

TEST(HfConfigTest, NullMeansDefault) {
  json j = minimal_llama();
  j["num_key_value_heads"] = nullptr;
  j["head_dim"] = nullptr;
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->num_kv_heads, 4);
  EXPECT_EQ(s->head_dim, 16);
}

TEST(HfConfigTest, ModelTypeFromArchitectures) {
  json j = minimal_llama();
  j.erase("model_type");
  j["architectures"] = {"LlamaForCausalLM"};
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->architecture, "llama");
}

TEST(HfConfigTest, MinimalDeepseekTakesHfDefaults) {
  auto s = parse(minimal_deepseek());
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->architecture, "deepseek_v3");
  EXPECT_EQ(s->attention, attention_kind::mla);
  EXPECT_TRUE(s->rope.interleave);
  EXPECT_EQ(s->mla.q_lora_rank, 1536);
  EXPECT_EQ(s->mla.kv_lora_rank, 512);
  EXPECT_EQ(s->mla.qk_rope_head_dim, 64);
  EXPECT_EQ(s->mla.v_head_dim, 128);
  EXPECT_EQ(s->mla.qk_nope_head_dim, 128);
  EXPECT_EQ(s->moe.num_experts, 256);
  EXPECT_EQ(s->moe.num_shared_experts, 1);
  EXPECT_EQ(s->moe.experts_per_token, 8);
  EXPECT_EQ(s->moe.num_groups, 8);
  EXPECT_EQ(s->moe.topk_groups, 4);
  EXPECT_EQ(s->moe.first_dense_layers, 3);
  EXPECT_EQ(s->moe.layer_freq, 1);
  EXPECT_EQ(s->moe.routed_scaling_factor, 2.5);
  EXPECT_TRUE(s->moe.norm_topk_prob);
  EXPECT_EQ(s->moe.expert_ffn, 2048);
  EXPECT_EQ(s->moe.scoring, router_scoring::sigmoid);
  EXPECT_TRUE(s->moe.score_correction_bias);
  EXPECT_EQ(s->rms_norm_eps, 1e-6);
  EXPECT_EQ(s->rope.theta, 10000.0);
  EXPECT_EQ(s->max_position_embeddings, 4096);
  EXPECT_FALSE(s->tie_word_embeddings);
  EXPECT_EQ(s->num_kv_heads, 4);
  EXPECT_EQ(s->head_dim, 0);
  EXPECT_TRUE(s->layer_is_moe(3));
  EXPECT_FALSE(s->layer_is_moe(2));
}

TEST(HfConfigTest, DeepseekNullQLoraAndRopeInterleaveFalse) {
  json j = minimal_deepseek();
  j["q_lora_rank"] = nullptr;
  j["rope_interleave"] = false;
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->mla.q_lora_rank, 0);
  EXPECT_FALSE(s->rope.interleave);
}

TEST(HfConfigTest, DeepseekNullExpertsIsDense) {
  json j = minimal_deepseek();
  j["n_routed_experts"] = nullptr;
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_FALSE(s->is_moe());
  EXPECT_FALSE(s->layer_is_moe(3));
}

TEST(HfConfigTest, DeepseekTopkMethods) {
  json j = minimal_deepseek();
  j["topk_method"] = "greedy";
  j["scoring_func"] = "softmax";
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->moe.num_groups, 1);
  EXPECT_EQ(s->moe.topk_groups, 1);
  EXPECT_FALSE(s->moe.score_correction_bias);
  EXPECT_EQ(s->moe.scoring, router_scoring::softmax);

  j["topk_method"] = "group_limited_greedy";
  s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->moe.num_groups, 8);
  EXPECT_EQ(s->moe.topk_groups, 4);
  EXPECT_FALSE(s->moe.score_correction_bias);

  j["topk_method"] = "noaux_tc";
  s = parse(j);
  ASSERT_TRUE(s.has_value());
  EXPECT_TRUE(s->moe.score_correction_bias);
}

TEST(HfConfigTest, RopeScalingKinds) {
  json j = minimal_llama();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 4.0}};
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.scaling, rope_scaling_kind::linear);
  EXPECT_EQ(s->rope.factor, 4.0);

  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.scaling, rope_scaling_kind::llama3);
  EXPECT_EQ(s->rope.factor, 8.0);
  EXPECT_EQ(s->rope.low_freq_factor, 1.0);
  EXPECT_EQ(s->rope.high_freq_factor, 4.0);
  EXPECT_EQ(s->rope.original_max_position_embeddings, 8192);

  j["rope_scaling"] = {{"type", "default"}};
  s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.scaling, rope_scaling_kind::none);

  // DeepSeek-R1's rope_scaling, with the legacy "type" key.
  json d = minimal_deepseek();
  d["max_position_embeddings"] = 163840;
  d["rope_scaling"] = {{"type", "yarn"},
                       {"factor", 40},
                       {"beta_fast", 32},
                       {"beta_slow", 1},
                       {"mscale", 1.0},
                       {"mscale_all_dim", 1.0},
                       {"original_max_position_embeddings", 4096}};
  s = parse(d);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.scaling, rope_scaling_kind::yarn);
  EXPECT_EQ(s->rope.factor, 40.0);
  EXPECT_EQ(s->rope.original_max_position_embeddings, 4096);
  EXPECT_EQ(s->rope.mscale, 1.0);
  EXPECT_EQ(s->rope.mscale_all_dim, 1.0);
  EXPECT_EQ(s->rope.attention_factor, 0.0);

  // Yarn with only the required key: HF's fallbacks.
  d["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  s = parse(d);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.original_max_position_embeddings, 163840);
  EXPECT_EQ(s->rope.beta_fast, 32.0);
  EXPECT_EQ(s->rope.beta_slow, 1.0);
  EXPECT_EQ(s->rope.mscale, 0.0);  // absent: HF's None
  EXPECT_EQ(s->rope.mscale_all_dim, 0.0);

  d["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"attention_factor", 0.8}};
  s = parse(d);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.attention_factor, 0.8);
}

TEST(HfConfigTest, RopeParametersOfTransformers5) {
  json j = minimal_llama();
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  auto s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.theta, 500000.0);
  EXPECT_EQ(s->rope.scaling, rope_scaling_kind::none);
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 1000.0}, {"factor", 2.0}};
  s = parse(j);
  ASSERT_TRUE(s.has_value()) << s.error().to_string();
  EXPECT_EQ(s->rope.theta, 1000.0);
  EXPECT_EQ(s->rope.scaling, rope_scaling_kind::linear);
}

TEST(HfConfigTest, RefusesUnsupportedRopeScaling) {
  json j = minimal_llama();
  j["rope_scaling"] = {{"rope_type", "dynamic"}, {"factor", 2.0}};
  expect_refused(j, {"rope_scaling type dynamic is not supported"});
  j["rope_scaling"] = {{"type", "longrope"}, {"short_factor", {1.0}}, {"long_factor", {1.0}}};
  expect_refused(j, {"rope_scaling type longrope is not supported"});
  j["rope_scaling"] = {{"factor", 2.0}};
  expect_refused(j, {"rope_scaling has no 'rope_type'"});
  j["rope_scaling"] = {{"rope_type", "linear"}};
  expect_refused(j, {"missing required key 'factor'"});
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  expect_refused(j, {"missing required key 'low_freq_factor'"});
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}};
  expect_refused(j, {"missing required key 'original_max_position_embeddings'"});
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", "2"}};
  expect_refused(j, {"'factor' must be a number"});
  j["rope_scaling"] = "linear";
  expect_refused(j, {"'rope_scaling' must be an object"});
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}, {"truncate", false}};
  expect_refused(j, {"truncate=false"});
}

TEST(HfConfigTest, AcceptsBlockScaledFp8AndRefusesOtherQuantizations) {
  json j = minimal_deepseek();
  j["quantization_config"] = {{"quant_method", "fp8"},
                              {"fmt", "e4m3"},
                              {"activation_scheme", "dynamic"},
                              {"weight_block_size", {128, 64}}};
  ASSERT_TRUE(parse(j).has_value()) << parse(j).error().to_string();
  auto q = parse_hf_quantization(j.dump(), "cfg");
  ASSERT_TRUE(q.has_value() && q->has_value());
  EXPECT_EQ((*q)->block_rows, 128);
  EXPECT_EQ((*q)->block_cols, 64);
  auto none = parse_hf_quantization(minimal_deepseek().dump(), "cfg");
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none->has_value());
  j["quantization_config"]["fmt"] = "e5m2";
  expect_refused(j, {"quantization_config.fmt \"e5m2\" is not supported"});
  j["quantization_config"]["fmt"] = "e4m3";
  j["quantization_config"]["weight_block_size"] = {0, 128};
  expect_refused(j, {"quantization_config.weight_block_size[0] = 0"});
  j["quantization_config"].erase("weight_block_size");
  expect_refused(j, {"quantization_config.weight_block_size must be [rows, cols]"});
  j["quantization_config"] = {{"quant_method", "awq"}};
  expect_refused(j, {"quantization_config.quant_method \"awq\" is not supported"});
}

TEST(HfConfigTest, RefusesBiasesActivationsAndUnknownTypes) {
  json j = minimal_llama();
  j["attention_bias"] = true;
  expect_refused(j, {"attention_bias true is not supported"});
  j = minimal_llama();
  j["mlp_bias"] = true;
  expect_refused(j, {"mlp_bias true is not supported"});
  j = minimal_llama();
  j["hidden_act"] = "gelu";
  expect_refused(j, {"hidden_act 'gelu' is not supported"});
  j = minimal_llama();
  j["model_type"] = "mistral";
  expect_refused(j, {"unknown model_type 'mistral'", "llama, deepseek_v3"});
  j.erase("model_type");
  expect_refused(j, {"unknown model_type ''"});
  j = minimal_deepseek();
  j["scoring_func"] = "tanh";
  expect_refused(j, {"scoring_func 'tanh' is not supported"});
  j = minimal_deepseek();
  j["topk_method"] = "random";
  expect_refused(j, {"topk_method 'random' is not supported"});
  j = minimal_llama();
  j["hidden_act"] = "swish";  // the same function as silu in transformers
  EXPECT_TRUE(parse(j).has_value());
}

TEST(HfConfigTest, RefusesMissingRequiredKeys) {
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                          "intermediate_size"}) {
    json j = minimal_llama();
    j.erase(key);
    expect_refused(j, {std::string("missing required key '") + key + "'"});
    j = minimal_deepseek();
    j[key] = nullptr;
    expect_refused(j, {std::string("missing required key '") + key + "'"});
  }
}

TEST(HfConfigTest, RefusesWrongJsonTypes) {
  json j = minimal_llama();
  j["hidden_size"] = "64";
  expect_refused(j, {"'hidden_size' must be a non-negative integer", "\"64\""});
  j = minimal_llama();
  j["hidden_size"] = 64.5;
  expect_refused(j, {"'hidden_size' must be a non-negative integer"});
  j = minimal_llama();
  j["num_hidden_layers"] = -2;
  expect_refused(j, {"'num_hidden_layers' must be a non-negative integer"});
  j = minimal_llama();
  j["vocab_size"] = 1ull << 40;
  expect_refused(j, {"'vocab_size' must be a non-negative integer below 2^31"});
  j = minimal_llama();
  j["rms_norm_eps"] = "1e-5";
  expect_refused(j, {"'rms_norm_eps' must be a number"});
  j = minimal_llama();
  j["tie_word_embeddings"] = "yes";
  expect_refused(j, {"'tie_word_embeddings' must be true or false"});
  j = minimal_llama();
  j["model_type"] = 3;
  expect_refused(j, {"'model_type' must be a string"});
  j = minimal_deepseek();
  j["q_lora_rank"] = "24";
  expect_refused(j, {"'q_lora_rank' must be a non-negative integer"});
  j = minimal_deepseek();
  j["norm_topk_prob"] = 1;
  expect_refused(j, {"'norm_topk_prob' must be true or false"});
}

TEST(HfConfigTest, RefusesInconsistentSpec) {
  json j = minimal_llama();
  j["num_key_value_heads"] = 3;  // 4 heads are not a multiple of 3
  auto s = parse(j, "cfg");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), errc::invalid_argument);
  EXPECT_THAT(s.error().message(), HasSubstr("num_key_value_heads"));
  j = minimal_llama();
  j["hidden_size"] = 0;
  s = parse(j, "cfg");
  ASSERT_FALSE(s.has_value());
  EXPECT_THAT(s.error().message(), HasSubstr("hidden_size must be positive"));
}

// Regression: rope_theta 1e-300 passed every check (it is > 0) and made every RoPE angle Inf.
TEST(HfConfigTest, RopeTheta1em300IsRefused) {
  json j = minimal_llama();
  j["rope_theta"] = 1e-300;
  expect_refused(j, {"rope_theta must be finite and >= 1, got 1e-300"});
  j["rope_theta"] = 0.5;
  expect_refused(j, {"rope_theta must be finite and >= 1"});
  j.erase("rope_theta");
  j["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1e-300}};
  expect_refused(j, {"rope_theta must be finite and >= 1"});
  // A literal beyond double's range parses as Inf (or not at all): refused either way.
  std::string text = minimal_llama().dump();
  text.insert(1, "\"rope_theta\": 1e999, ");
  auto s = parse_hf_config(text, "cfg");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), errc::invalid_argument);
  j = minimal_llama();
  j["rope_theta"] = 1;  // the smallest accepted
  EXPECT_TRUE(parse(j).has_value());
}

TEST(HfConfigTest, RmsNormEpsOutsideZeroOneIsRefused) {
  for (const double eps : {1.0, 2.5, 1e300}) {
    json j = minimal_llama();
    j["rms_norm_eps"] = eps;
    expect_refused(j, {"rms_norm_eps must be finite and in (0, 1)"});
  }
  json j = minimal_llama();
  j["rms_norm_eps"] = -1e-6;
  expect_refused(j, {"rms_norm_eps"});
  j["rms_norm_eps"] = 0.0;
  expect_refused(j, {"rms_norm_eps"});
  j["rms_norm_eps"] = 0.5;
  EXPECT_TRUE(parse(j).has_value());
}

TEST(HfConfigTest, NonsensicalRopeScalingValuesAreRefused) {
  const auto refused = [](json rs, const std::string& needle, bool deepseek = false) {
    json j = deepseek ? minimal_deepseek() : minimal_llama();
    j["rope_scaling"] = std::move(rs);
    expect_refused(j, {needle});
  };
  refused({{"rope_type", "linear"}, {"factor", 0.0}}, "rope_scaling factor must be finite and > 0");
  refused({{"rope_type", "linear"}, {"factor", -2.0}},
          "rope_scaling factor must be finite and > 0");
  const json llama3 = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  json l = llama3;
  l["low_freq_factor"] = 0.0;
  refused(l, "rope_scaling low_freq_factor must be finite and > 0");
  l = llama3;
  l["original_max_position_embeddings"] = 0;
  refused(l, "original_max_position_embeddings must be >= 1");
  const json yarn = {{"rope_type", "yarn"}, {"factor", 40.0}};
  json y = yarn;
  y["beta_fast"] = -32.0;
  refused(y, "rope_scaling beta_fast must be finite and > 0", true);
  y = yarn;
  y["beta_slow"] = -1.0;
  refused(y, "rope_scaling beta_slow must be finite and > 0", true);
  y = yarn;
  y["mscale"] = -1.0;
  refused(y, "rope_scaling mscale must be finite and >= 0", true);
  y = yarn;
  y["mscale_all_dim"] = -0.5;
  refused(y, "rope_scaling mscale_all_dim must be finite and >= 0", true);
  y = yarn;
  y["attention_factor"] = -0.1;
  refused(y, "rope_scaling attention_factor must be finite and >= 0", true);
  // Inf through a literal beyond double's range.
  std::string text = minimal_llama().dump();
  text.insert(1, R"("rope_scaling": {"rope_type": "linear", "factor": 1e999}, )");
  EXPECT_FALSE(parse_hf_config(text, "cfg").has_value());
}

TEST(HfConfigTest, OtherNonsensicalValuesAreRefused) {
  json j = minimal_llama();
  // Tiny layers pass the size products, but per-layer loops would run 2^31 times.
  j["num_hidden_layers"] = 0x7fffffff;
  expect_refused(j, {"num_hidden_layers must be <= 65536, got 2147483647"});
  j["num_hidden_layers"] = 1 << 16;
  EXPECT_TRUE(parse(j).has_value());
  j = minimal_llama();
  j["max_position_embeddings"] = 0;
  expect_refused(j, {"max_position_embeddings must be >= 1, got 0"});
  j = minimal_deepseek();
  j["routed_scaling_factor"] = 0.0;
  expect_refused(j, {"routed_scaling_factor must be finite and > 0"});
  j["routed_scaling_factor"] = -2.5;
  expect_refused(j, {"routed_scaling_factor must be finite and > 0"});
}

// Every size is capped below 2^31, but their products were not checked: a 4-factor product
// wrapped around in num_params() and allocation sizes.
TEST(HfConfigTest, SizeProductsThatOverflowInt64AreRefused) {
  json j = minimal_llama();
  j["hidden_size"] = 0x7fffffff;
  j["num_attention_heads"] = 1;  // head_dim defaults to hidden_size / heads
  j["num_key_value_heads"] = 1;
  j["head_dim"] = 0x7ffffffe;
  expect_refused(j, {"sizes too large",
                     "hidden_size x head_dim x 2 x (num_attention_heads + num_key_value_heads) "
                     "overflows 64-bit arithmetic"});
  j = minimal_llama();
  j["num_hidden_layers"] = 1 << 16;
  j["hidden_size"] = 1 << 24;
  j["intermediate_size"] = 1 << 24;
  j["num_attention_heads"] = 1 << 10;
  expect_refused(j, {"num_hidden_layers x parameters per layer overflows"});
  j = minimal_llama();
  j["max_position_embeddings"] = 0x7fffffff;
  j["num_hidden_layers"] = 1 << 16;
  j["num_key_value_heads"] = 4;
  j["head_dim"] = 1 << 16;
  expect_refused(j, {"KV cache bytes of max_position_embeddings tokens"});
  j = minimal_deepseek();
  j["n_routed_experts"] = 1 << 30;
  j["n_group"] = 1;
  j["topk_group"] = 1;
  j["moe_intermediate_size"] = 1 << 30;
  j["hidden_size"] = 1 << 10;
  expect_refused(j, {"(n_routed_experts + n_shared_experts) x 3 x moe_intermediate_size x "
                     "hidden_size overflows"});
  // The real shapes are far from the bounds.
  for (const std::string& name : builtin_model_names()) {
    auto spec = builtin_model(name);
    ASSERT_TRUE(spec.has_value());
    auto text = hf_config_json(*spec, dtype::bf16);
    ASSERT_TRUE(text.has_value());
    EXPECT_TRUE(parse_hf_config(*text, name).has_value()) << name;
  }
}

TEST(HfConfigTest, RefusesNonJson) {
  auto s = parse_hf_config("{\"model_type\": \"llama\",", "cfg");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), errc::invalid_argument);
  EXPECT_THAT(s.error().message(), HasSubstr("not valid JSON"));
  s = parse_hf_config("[1, 2]", "cfg");
  ASSERT_FALSE(s.has_value());
  EXPECT_THAT(s.error().message(), HasSubstr("not an object"));
}

TEST(HfConfigTest, GarbageNeverCrashes) {
  const std::string good = minimal_deepseek().dump();
  std::mt19937 rng(7);
  for (std::size_t n = 0; n < good.size(); ++n) {
    auto s = parse_hf_config(good.substr(0, n), "cfg");
    EXPECT_FALSE(s.has_value());
  }
  for (int trial = 0; trial < 300; ++trial) {
    std::string bad = good;
    bad[rng() % bad.size()] = static_cast<char>(rng() % 256);
    (void)parse_hf_config(bad, "cfg");
  }
}

TEST(HfConfigTest, LoadsFixtureConfigs) {
  const std::string root = std::string(HELIX_FIXTURES_DIR) + "/hf-tiny/";
  auto l = load_hf_config(root + "llama-bf16");
  ASSERT_TRUE(l.has_value()) << l.error().to_string();
  EXPECT_EQ(l->name, "llama-bf16");
  EXPECT_EQ(l->architecture, "llama");
  EXPECT_EQ(l->hidden, 64);
  EXPECT_EQ(l->num_layers, 2);
  EXPECT_EQ(l->num_q_heads, 8);
  EXPECT_EQ(l->num_kv_heads, 2);
  EXPECT_EQ(l->head_dim, 8);
  EXPECT_EQ(l->ffn, 128);
  EXPECT_EQ(l->vocab, 97);
  EXPECT_EQ(l->rms_norm_eps, 1e-5);
  EXPECT_FALSE(l->tie_word_embeddings);
  EXPECT_FALSE(l->rope.interleave);

  auto d = load_hf_config(root + "deepseek-v3-f32/");
  ASSERT_TRUE(d.has_value()) << d.error().to_string();
  EXPECT_EQ(d->name, "deepseek-v3-f32");
  EXPECT_EQ(d->architecture, "deepseek_v3");
  EXPECT_TRUE(d->is_mla());
  EXPECT_TRUE(d->rope.interleave);  // key absent: HF default
  EXPECT_EQ(d->num_q_heads, 4);
  EXPECT_EQ(d->num_kv_heads, 4);
  EXPECT_EQ(d->mla.q_lora_rank, 24);
  EXPECT_EQ(d->mla.kv_lora_rank, 32);
  EXPECT_EQ(d->mla.qk_nope_head_dim, 16);
  EXPECT_EQ(d->mla.qk_rope_head_dim, 8);
  EXPECT_EQ(d->mla.v_head_dim, 16);
  EXPECT_EQ(d->moe.num_experts, 8);
  EXPECT_EQ(d->moe.num_shared_experts, 1);
  EXPECT_EQ(d->moe.experts_per_token, 2);
  EXPECT_EQ(d->moe.num_groups, 4);
  EXPECT_EQ(d->moe.topk_groups, 2);
  EXPECT_EQ(d->moe.first_dense_layers, 1);
  EXPECT_EQ(d->moe.expert_ffn, 32);
  EXPECT_EQ(d->moe.scoring, router_scoring::sigmoid);
  EXPECT_TRUE(d->moe.score_correction_bias);
  EXPECT_EQ(d->rms_norm_eps, 1e-6);
  EXPECT_EQ(d->rope.theta, 10000.0);
  EXPECT_EQ(d->max_position_embeddings, 4096);
}

TEST(HfConfigTest, MissingConfigIsNotFound) {
  auto s = load_hf_config("/nonexistent/helix/dir");
  ASSERT_FALSE(s.has_value());
  EXPECT_EQ(s.error().code(), errc::not_found);
  EXPECT_THAT(s.error().message(), HasSubstr("/nonexistent/helix/dir"));
}

// Every built-in spec survives spec -> config.json -> spec.
TEST(HfConfigTest, WrittenConfigsParseBackToTheSameSpec) {
  for (const std::string& name : builtin_model_names()) {
    auto spec = builtin_model(name);
    ASSERT_TRUE(spec.has_value());
    auto text = hf_config_json(*spec, dtype::bf16);
    ASSERT_TRUE(text.has_value()) << text.error().to_string();
    const json j = json::parse(*text);
    EXPECT_EQ(j["torch_dtype"], "bfloat16");
    auto back = parse_hf_config(*text, name);
    ASSERT_TRUE(back.has_value()) << name << ": " << back.error().to_string();
    SCOPED_TRACE(name);
    EXPECT_EQ(back->name, name);
    expect_same_spec(*spec, *back);
  }
}

TEST(HfConfigTest, WriterRefusesUnknownArchitecture) {
  auto spec = builtin_model("tiny-llama");
  ASSERT_TRUE(spec.has_value());
  spec->architecture = "gpt2";
  auto text = hf_config_json(*spec, dtype::f32);
  ASSERT_FALSE(text.has_value());
  EXPECT_EQ(text.error().code(), errc::invalid_argument);
  EXPECT_THAT(text.error().message(), HasSubstr("gpt2"));
}

}  // namespace
}  // namespace helix::model
