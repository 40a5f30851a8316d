// Real HF-format checkpoints written by an independent writer (tests/fixtures/hf-tiny, see its
// README): loading them and decoding greedily reproduces the tokens and logits that an
// independent float64 implementation of HF transformers' semantics computed.
#include <cmath>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/checkpoint.hpp"
#include "model/generate.hpp"

namespace helix::model {
namespace {

class HfFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFixture, GreedyTokensAndLogitsMatchExpected) {
  const std::string dir = std::string(HELIX_FIXTURES_DIR) + "/hf-tiny/" + GetParam();
  std::ifstream f(dir + "/expected.json");
  ASSERT_TRUE(f.good()) << dir;
  std::stringstream text;
  text << f.rdbuf();
  const nlohmann::json expected = nlohmann::json::parse(text.str());

  // FP8 checkpoints also with their F8 tensors kept in FP8 (dequantized inside the GEMV): the
  // same tokens, and on the cpu backend the logits of the f32 load within 1e-4.
  const bool fp8 = GetParam().find("fp8") != std::string::npos;
  std::vector<float> f32_logits;
  for (const dtype t : {dtype::f32, dtype::fp8_e4m3}) {
    if (t == dtype::fp8_e4m3 && !fp8) continue;
    auto w = load_checkpoint(dir, t);
    ASSERT_TRUE(w.has_value()) << w.error().to_string();
    if (t == dtype::fp8_e4m3) {
      EXPECT_EQ(w->layers[0].o_proj.type(), dtype::fp8_e4m3) << GetParam();
      EXPECT_NE(w->layers[0].o_proj.scales(), nullptr) << GetParam();
    }
    for (kernels::backend backend : {kernels::backend::cpu, kernels::backend::reference}) {
      decoder_options o;
      o.backend = backend;
      o.kv_capacity_tokens = 256;
      o.max_batch_tokens = 8;  // prompt of 11 tokens: two prefill chunks
      auto dec = decoder::create(*w, o);
      ASSERT_TRUE(dec.has_value()) << dec.error().to_string();
      generate_request r;
      r.prompt = expected["prompt"].get<std::vector<std::int32_t>>();
      r.max_new_tokens = expected["steps"].get<std::int64_t>();
      auto out = generate(**dec, {&r, 1}, {.prefill_chunk = 8});
      ASSERT_TRUE(out.has_value()) << out.error().to_string();
      EXPECT_EQ((*out)[0].tokens, expected["greedy_tokens"].get<std::vector<std::int32_t>>())
          << GetParam() << " on " << kernels::backend_name(backend);
      const auto first8 = expected["last_step_logits_first8"].get<std::vector<double>>();
      for (std::size_t i = 0; i < first8.size(); ++i) {
        EXPECT_NEAR((*out)[0].last_logits[i], first8[i], 1e-3) << GetParam() << " logit " << i;
      }
      if (backend == kernels::backend::cpu && t == dtype::f32) f32_logits = (*out)[0].last_logits;
      if (backend == kernels::backend::cpu && t == dtype::fp8_e4m3) {
        ASSERT_EQ((*out)[0].last_logits.size(), f32_logits.size());
        for (std::size_t i = 0; i < f32_logits.size(); ++i) {
          EXPECT_NEAR((*out)[0].last_logits[i], f32_logits[i], 1e-4)
              << GetParam() << ": kept FP8 vs f32 load, logit " << i;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Checkpoints, HfFixture,
                         ::testing::Values("llama-bf16", "deepseek-v3-f32", "llama-fp8",
                                           "deepseek-v3-fp8"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) {
                             if (c == '-') c = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace helix::model
