// The single-worker decoder against the cache-free full forward pass, batch invariance, KV
// capacity and bad input.
#include "model/decoder.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "model/generate.hpp"
#include "model/reference_forward.hpp"
#include "tests/support/model_fixtures.hpp"

namespace helix::model {
namespace {

model_weights seeded(const std::string& name, dtype t = dtype::f32) {
  return test_support::seeded_weights(name, t);
}
using test_support::random_tokens;

float max_abs_diff(const float* a, const float* b, std::int64_t n) {
  float m = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

struct incremental_case {
  std::string model;
  kernels::backend backend;
  friend void PrintTo(const incremental_case& c, std::ostream* os) {
    *os << c.model << " on " << kernels::backend_name(c.backend);
  }
};

class IncrementalVsFull : public ::testing::TestWithParam<incremental_case> {};

// The key exactness test: prefill in chunks that straddle KV blocks, then >= 64 single-token decode
// steps, each step's logits equal to those of a cache-free forward pass over the whole sequence.
TEST_P(IncrementalVsFull, LogitsMatchWithinTolerance) {
  const model_weights w = seeded(GetParam().model);
  const std::int64_t vocab = w.spec.vocab;
  const std::int64_t prompt_len = 21;
  const std::int64_t steps = 72;
  const auto tokens = random_tokens(prompt_len + steps, vocab, 1);
  auto full = reference_forward(w, tokens);
  ASSERT_TRUE(full.has_value()) << full.error().to_string();

  decoder_options o;
  o.kv_type = dtype::f32;
  o.block_tokens = 16;
  o.kv_capacity_tokens = 256;
  o.max_batch_tokens = 32;
  o.backend = GetParam().backend;
  o.num_threads = 2;
  auto dec = decoder::create(w, o);
  ASSERT_TRUE(dec.has_value()) << dec.error().to_string();
  const std::uint64_t seq = (*dec)->open_sequence();

  std::vector<float> logits(static_cast<std::size_t>(16 * vocab));
  float worst = 0.0f;
  // Chunks of 9 and 12 tokens (positions 0-8, 9-20), all logits compared.
  std::int64_t pos = 0;
  for (std::int64_t chunk : {9, 12}) {
    decoder::batch_item item{seq, std::span<const std::int32_t>(tokens).subspan(pos, chunk), true};
    ASSERT_TRUE((*dec)->forward({&item, 1}, logits).ok());
    worst = std::max(worst,
                     max_abs_diff(logits.data(), full->as<float>() + pos * vocab, chunk * vocab));
    pos += chunk;
  }
  for (std::int64_t s = 0; s < steps; ++s, ++pos) {
    decoder::batch_item item{seq, std::span<const std::int32_t>(tokens).subspan(pos, 1), false};
    ASSERT_TRUE((*dec)->forward({&item, 1}, logits).ok());
    worst = std::max(worst, max_abs_diff(logits.data(), full->as<float>() + pos * vocab, vocab));
  }
  EXPECT_LE(worst, 1e-4f) << GetParam().model;
  EXPECT_EQ(*(*dec)->sequence_length(seq), prompt_len + steps);
  // Blocks fill in order and cover consecutive positions.
  const block_table& t = (*dec)->table(seq);
  EXPECT_EQ(t.blocks().size(), static_cast<std::size_t>((prompt_len + steps + 15) / 16));
  for (std::size_t b = 0; b < t.blocks().size(); ++b) {
    EXPECT_EQ(t.blocks()[b].first_pos, static_cast<std::int64_t>(b) * 16);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Models, IncrementalVsFull,
    ::testing::Values(incremental_case{"tiny-llama", kernels::backend::cpu},
                      incremental_case{"tiny-llama", kernels::backend::reference},
                      incremental_case{"tiny-deepseek", kernels::backend::cpu},
                      incremental_case{"tiny-deepseek", kernels::backend::reference}),
    [](const auto& info) {
      std::string n =
          info.param.model + "_" + std::string(kernels::backend_name(info.param.backend));
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

// Requests of different lengths generated together give, token for token and bit for bit, what
// each gives alone.
TEST(Decoder, BatchedGenerationEqualsAlone) {
  for (const char* name : {"tiny-llama", "tiny-deepseek"}) {
    const model_weights w = seeded(name);
    decoder_options o;
    o.kv_capacity_tokens = 2048;
    o.max_batch_tokens = 64;
    o.num_threads = 2;
    std::vector<generate_request> reqs;
    for (int i = 0; i < 4; ++i) {
      generate_request r;
      r.prompt = random_tokens(5 + 23 * i, w.spec.vocab, 10 + static_cast<std::uint64_t>(i));
      r.max_new_tokens = 12 + 3 * i;
      r.request_id = static_cast<std::uint64_t>(i);
      if (i % 2 == 1) r.sampling = {.temperature = 0.8f, .top_k = 20, .top_p = 0.9f, .seed = 5};
      reqs.push_back(r);
    }
    auto dec = decoder::create(w, o);
    ASSERT_TRUE(dec.has_value());
    auto together = generate(**dec, reqs, {.prefill_chunk = 16});
    ASSERT_TRUE(together.has_value()) << together.error().to_string();
    EXPECT_EQ((*dec)->kv().used_slots(), 0) << "sequences must be closed";
    for (std::size_t i = 0; i < reqs.size(); ++i) {
      auto alone = generate(**dec, {&reqs[i], 1}, {.prefill_chunk = 16});
      ASSERT_TRUE(alone.has_value());
      EXPECT_EQ((*alone)[0].tokens, (*together)[i].tokens) << name << " request " << i;
      EXPECT_EQ((*alone)[0].last_logits, (*together)[i].last_logits) << name << " request " << i;
      EXPECT_EQ(static_cast<std::int64_t>((*together)[i].tokens.size()), reqs[i].max_new_tokens);
    }
  }
}

// Requests that each fit the KV store but not all at once run as capacity frees up, and give
// what they give alone.
TEST(Decoder, AdmissionRunsRequestsThatOnlyFitOneAtATime) {
  const model_weights w = seeded("tiny-llama");
  decoder_options o;
  o.kv_capacity_tokens = 64;  // 4 blocks; each request needs 2 (20 + 10 tokens)
  auto dec = decoder::create(w, o);
  ASSERT_TRUE(dec.has_value());
  std::vector<generate_request> reqs(3);
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = random_tokens(20, w.spec.vocab, 30 + i);
    reqs[i].max_new_tokens = 10;
  }
  auto together = generate(**dec, reqs, {});
  ASSERT_TRUE(together.has_value()) << together.error().to_string();
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    auto alone = generate(**dec, {&reqs[i], 1}, {});
    ASSERT_TRUE(alone.has_value());
    EXPECT_EQ((*alone)[0].tokens, (*together)[i].tokens) << i;
  }
  EXPECT_EQ((*dec)->kv().used_slots(), 0);
  reqs[0].max_new_tokens = std::numeric_limits<std::int64_t>::max();  // must not overflow
  EXPECT_EQ(generate(**dec, reqs, {}).error().code(), errc::invalid_argument);
}

TEST(Decoder, SyntheticContextFillsPagesAndRespectsCapacity) {
  const model_weights w = seeded("tiny-llama");
  auto dec = decoder::create(w, {.kv_type = dtype::bf16, .kv_capacity_tokens = 100});
  ASSERT_TRUE(dec.has_value());
  const std::uint64_t seq = (*dec)->open_sequence();
  ASSERT_TRUE((*dec)->append_synthetic(seq, 37, 5).ok());
  ASSERT_TRUE((*dec)->append_synthetic(seq, 20, 5).ok());  // continues the partial block
  EXPECT_EQ(*(*dec)->sequence_length(seq), 57);
  EXPECT_EQ((*dec)->kv().used_slots(), 4);
  EXPECT_EQ((*dec)->append_synthetic(seq, 60, 5).code(), errc::resource_exhausted);
  EXPECT_EQ(*(*dec)->sequence_length(seq), 57);
  EXPECT_EQ((*dec)->append_synthetic(seq + 1, 1, 5).code(), errc::not_found);
  // Every filled page holds values in [-1, 1), not zeros, in every layer.
  const block_table& t = (*dec)->table(seq);
  const kv_page_layout& l = (*dec)->kv().layout();
  for (std::int64_t layer = 0; layer < w.spec.num_layers; ++layer) {
    const auto* base = static_cast<const std::uint8_t*>((*dec)->kv().layer_pool(layer));
    for (const kv_block_ref& b : t.blocks()) {
      const void* page = base + l.page_bytes() * static_cast<std::size_t>(b.slot);
      const float k =
          load_as_f32(page, l.type, static_cast<std::size_t>(l.key_offset(1, b.num_tokens - 1)));
      const float v = load_as_f32(page, l.type, static_cast<std::size_t>(l.value_offset(0, 0)));
      EXPECT_TRUE(k != 0.0f && k >= -1.0f && k < 1.0f) << k;
      EXPECT_TRUE(v != 0.0f && v >= -1.0f && v < 1.0f) << v;
    }
  }
  // Decoding after a synthetic context works and attends over it.
  std::vector<float> logits(static_cast<std::size_t>(w.spec.vocab));
  const std::int32_t token = 3;
  decoder::batch_item item{seq, std::span<const std::int32_t>(&token, 1), false};
  ASSERT_TRUE((*dec)->forward({&item, 1}, logits).ok());
  EXPECT_EQ(*(*dec)->sequence_length(seq), 58);
}

TEST(Decoder, StopTokenEndsRequest) {
  const model_weights w = seeded("tiny-llama");
  auto dec = decoder::create(w, {});
  ASSERT_TRUE(dec.has_value());
  generate_request r;
  r.prompt = {1, 2, 3};
  r.max_new_tokens = 10;
  auto first = generate(**dec, {&r, 1}, {});
  ASSERT_TRUE(first.has_value());
  r.stop_tokens = {(*first)[0].tokens[2]};
  auto stopped = generate(**dec, {&r, 1}, {});
  ASSERT_TRUE(stopped.has_value());
  EXPECT_TRUE((*stopped)[0].stopped);
  const auto& toks = (*first)[0].tokens;
  const auto first_stop = std::find(toks.begin(), toks.end(), toks[2]) - toks.begin();
  EXPECT_EQ(static_cast<std::int64_t>((*stopped)[0].tokens.size()), first_stop + 1);
}

// Low-precision KV (bf16, f16, fp8_e4m3) stays close to the f32 KV decoder.
TEST(Decoder, LowPrecisionKvCloseToF32) {
  const model_weights w = seeded("tiny-llama");
  const auto tokens = random_tokens(40, w.spec.vocab, 3);
  std::vector<std::vector<float>> results;
  for (dtype kv : {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3}) {
    decoder_options o;
    o.kv_type = kv;
    auto dec = decoder::create(w, o);
    ASSERT_TRUE(dec.has_value());
    const std::uint64_t seq = (*dec)->open_sequence();
    decoder::batch_item item{seq, tokens, false};
    std::vector<float> logits(static_cast<std::size_t>(w.spec.vocab));
    ASSERT_TRUE((*dec)->forward({&item, 1}, logits).ok());
    results.push_back(logits);
  }
  const auto n = static_cast<std::int64_t>(results[0].size());
  EXPECT_LE(max_abs_diff(results[0].data(), results[1].data(), n), 2e-2f);
  EXPECT_LE(max_abs_diff(results[0].data(), results[2].data(), n), 5e-3f);
  EXPECT_LE(max_abs_diff(results[0].data(), results[3].data(), n), 1.5e-1f);
  EXPECT_GT(max_abs_diff(results[0].data(), results[3].data(), n), 0.0f) << "fp8 must round";
}

TEST(Decoder, CapacityExhaustionLeavesSequencesUnchanged) {
  const model_weights w = seeded("tiny-llama");
  decoder_options o;
  o.kv_capacity_tokens = 32;  // two blocks
  o.max_batch_tokens = 64;
  auto dec = decoder::create(w, o);
  ASSERT_TRUE(dec.has_value());
  const std::uint64_t a = (*dec)->open_sequence();
  const std::uint64_t b = (*dec)->open_sequence();
  const auto tokens = random_tokens(20, w.spec.vocab, 4);
  std::vector<float> logits(static_cast<std::size_t>(2 * w.spec.vocab));
  decoder::batch_item first{a, tokens, false};
  ASSERT_TRUE((*dec)->forward({&first, 1}, logits).ok());  // 20 tokens: both blocks
  decoder::batch_item both[] = {{a, std::span(tokens).subspan(0, 5), false},
                                {b, std::span(tokens).subspan(0, 5), false}};
  const status st = (*dec)->forward(both, logits);
  EXPECT_EQ(st.code(), errc::resource_exhausted) << st.to_string();
  EXPECT_EQ(*(*dec)->sequence_length(a), 20);
  EXPECT_EQ(*(*dec)->sequence_length(b), 0);
  ASSERT_TRUE((*dec)->close_sequence(a).ok());
  EXPECT_EQ((*dec)->kv().used_slots(), 0);
  EXPECT_TRUE((*dec)->forward({&both[1], 1}, logits).ok());
}

TEST(Decoder, BadInputIsRejected) {
  const model_weights w = seeded("tiny-llama");
  auto dec = decoder::create(w, {.max_batch_tokens = 8});
  ASSERT_TRUE(dec.has_value());
  const std::uint64_t seq = (*dec)->open_sequence();
  std::vector<float> logits(static_cast<std::size_t>(w.spec.vocab));
  const std::vector<std::int32_t> oov = {1, 256};
  const std::vector<std::int32_t> many(9, 1);
  const std::vector<std::int32_t> ok = {1};
  decoder::batch_item bad_token{seq, oov, false};
  EXPECT_EQ((*dec)->forward({&bad_token, 1}, logits).code(), errc::invalid_argument);
  decoder::batch_item too_many{seq, many, false};
  EXPECT_EQ((*dec)->forward({&too_many, 1}, logits).code(), errc::invalid_argument);
  decoder::batch_item unknown{seq + 100, ok, false};
  EXPECT_EQ((*dec)->forward({&unknown, 1}, logits).code(), errc::invalid_argument);
  decoder::batch_item twice[] = {{seq, ok, false}, {seq, ok, false}};
  EXPECT_EQ((*dec)->forward(twice, logits).code(), errc::invalid_argument);
  EXPECT_EQ(*(*dec)->sequence_length(seq), 0);
  EXPECT_EQ((*dec)->close_sequence(seq + 100).code(), errc::not_found);

  generate_request r;
  EXPECT_EQ(generate(**dec, {&r, 1}, {}).error().code(), errc::invalid_argument);  // empty
  r.prompt = {1};
  r.sampling.top_p = 0.0f;
  auto bad = generate(**dec, {&r, 1}, {});
  EXPECT_EQ(bad.error().code(), errc::invalid_argument);
  EXPECT_NE(bad.error().message().find("top_p"), std::string::npos) << bad.error().to_string();
}

}  // namespace
}  // namespace helix::model
