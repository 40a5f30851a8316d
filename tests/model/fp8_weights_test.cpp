// FP8 weights kept in FP8 (weight_type fp8_e4m3): linear weights in e4m3 with 128 x 128 block
// scales, dequantized inside the GEMV. The decoder over them gives the logits of the decoder over
// the same weights dequantized to f32 within 1e-4 (the kernel rounds e4m3 x scale once, as an f32
// load does, and sums over 64 lanes instead of 16), the same bits on 1 and 2 threads; shards
// carry their blocks' scales (row cuts, and column cuts that start inside
// a block); seeding a shard gives the model's values; the accounting counts one byte per weight.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "model/decoder.hpp"
#include "model/sharding.hpp"
#include "model/weights.hpp"
#include "tests/support/model_fixtures.hpp"

namespace helix::model {
namespace {

using test_support::random_tokens;
using test_support::seeded_weights;

// `w` with every tensor as f32 values (fp8 ones dequantized with their scales).
model_weights dequantized(model_weights& w) {
  auto out = init_seeded_weights(w.spec, dtype::f32, 1);
  EXPECT_TRUE(out.has_value());
  std::vector<named_tensor> from = list_tensors(w);
  std::vector<named_tensor> to = list_tensors(*out);
  EXPECT_EQ(from.size(), to.size());
  for (std::size_t i = 0; i < from.size() && i < to.size(); ++i) {
    EXPECT_EQ(from[i].name, to[i].name);
    float* dst = to[i].t->as<float>();
    for (std::int64_t e = 0; e < from[i].t->numel(); ++e) dst[e] = from[i].t->element(e);
  }
  return std::move(*out);
}

std::vector<std::vector<float>> decode_logits(const model_weights& w, int threads) {
  decoder_options o;
  o.kv_capacity_tokens = 256;
  o.num_threads = threads;
  auto dec = decoder::create(w, o);
  EXPECT_TRUE(dec.has_value()) << dec.error().to_string();
  if (!dec) return {};
  const std::uint64_t a = (*dec)->open_sequence();
  const std::uint64_t b = (*dec)->open_sequence();
  std::vector<std::vector<float>> out;
  const auto p1 = random_tokens(19, w.spec.vocab, 3);
  const auto p2 = random_tokens(7, w.spec.vocab, 4);
  std::vector<batch_item> items{{a, p1, true, -1}, {b, p2, true, -1}};
  std::int32_t next[2] = {};
  for (int step = 0; step < 6; ++step) {
    std::vector<float> logits(static_cast<std::size_t>(logits_rows(items) * w.spec.vocab));
    EXPECT_TRUE((*dec)->forward(items, logits).ok());
    out.push_back(std::move(logits));
    next[0] = step + 5;
    next[1] = 2 * step + 1;
    items = {{a, std::span<const std::int32_t>(&next[0], 1), false, -1},
             {b, std::span<const std::int32_t>(&next[1], 1), false, -1}};
  }
  return out;
}

TEST(Fp8Weights, DecoderLogitsMatchTheF32Dequantization) {
  for (const char* name : {"tiny-llama", "tiny-deepseek"}) {
    SCOPED_TRACE(name);
    model_weights fp8 = seeded_weights(name, dtype::fp8_e4m3);
    ASSERT_EQ(fp8.weight_type, dtype::fp8_e4m3);
    ASSERT_EQ(fp8.layers[0].o_proj.type(), dtype::fp8_e4m3);
    ASSERT_NE(fp8.layers[0].o_proj.scales(), nullptr);
    EXPECT_EQ(fp8.embed.type(), dtype::bf16);
    const model_weights f32 = dequantized(fp8);
    const auto want = decode_logits(f32, 1);
    const auto one = decode_logits(fp8, 1);
    const auto two = decode_logits(fp8, 2);
    ASSERT_EQ(one.size(), want.size());
    ASSERT_EQ(two.size(), want.size());
    for (std::size_t i = 0; i < want.size(); ++i) {
      ASSERT_EQ(one[i].size(), want[i].size());
      float diff = 0.0f;
      for (std::size_t j = 0; j < want[i].size(); ++j) {
        diff = std::max(diff, std::fabs(one[i][j] - want[i][j]));
      }
      EXPECT_LE(diff, 1e-4f) << "step " << i;
      EXPECT_EQ(one[i], two[i]) << "step " << i << ": 1 vs 2 threads";
    }
  }
}

// Every element of every shard is the model's element it was cut from (the scales moved with
// the rows and columns), and a shard seeded on its own equals the cut of the seeded model.
TEST(Fp8Weights, ShardsCarryTheirBlocksScales) {
  model_weights full = seeded_weights("tiny-llama", dtype::fp8_e4m3);
  const auto l = layout::parse("helix:kvp=2,tpa=2");
  ASSERT_TRUE(l.has_value());
  const std::int64_t cols = full.layers[0].o_proj.dims()[1];
  for (std::int64_t rank = 0; rank < l->num_ranks; ++rank) {
    auto cut = shard_weights(full, *l, rank);
    ASSERT_TRUE(cut.has_value()) << cut.error().to_string();
    // o_proj: a column cut of the rank's query heads.
    const tensor& o = cut->layers[0].o_proj;
    ASSERT_NE(o.scales(), nullptr);
    const std::int64_t first = cut->layers[0].o_heads.first * full.spec.head_dim;
    for (std::int64_t r = 0; r < o.dims()[0]; ++r) {
      for (std::int64_t c = 0; c < o.dims()[1]; ++c) {
        ASSERT_EQ(o.element(r * o.dims()[1] + c),
                  full.layers[0].o_proj.element(r * cols + first + c))
            << "rank " << rank << " row " << r << " col " << c;
      }
    }
    // gate_proj: a row cut of the FFN slice.
    const tensor& g = cut->layers[0].mlp.gate_proj;
    const std::int64_t f0 = cut->layers[0].mlp.ffn.first;
    const std::int64_t h = full.spec.hidden;
    for (std::int64_t i = 0; i < g.numel(); ++i) {
      ASSERT_EQ(g.element(i), full.layers[0].mlp.gate_proj.element(f0 * h + i)) << "rank " << rank;
    }
    auto seeded = seeded_rank_weights(full.spec, dtype::fp8_e4m3, 1234, *l, rank);
    ASSERT_TRUE(seeded.has_value()) << seeded.error().to_string();
    const tensor& so = seeded->layers[0].o_proj;
    ASSERT_EQ(so.bytes(), o.bytes());
    EXPECT_EQ(std::memcmp(so.data(), o.data(), o.bytes()), 0) << "rank " << rank;
    EXPECT_EQ(so.scales()->row_scales, o.scales()->row_scales) << "rank " << rank;
    EXPECT_EQ(so.scales()->phase, o.scales()->phase) << "rank " << rank;
  }
}

// What weights_bytes counts is what the tensors hold: a byte per weight and the scales.
TEST(Fp8Weights, AccountingCountsOneBytePerWeightAndTheScales) {
  for (const char* name : {"tiny-llama", "tiny-deepseek"}) {
    model_weights w = seeded_weights(name, dtype::fp8_e4m3);
    double held = 0.0;
    for (const named_tensor& nt : list_tensors(w)) {
      held += static_cast<double>(nt.t->bytes());
      if (const block_scales* s = nt.t->scales()) {
        held += static_cast<double>(s->row_scales.size() * sizeof(float));
      }
    }
    EXPECT_EQ(held, weights_bytes(w.spec, dtype::fp8_e4m3).total()) << name;
  }
  const model_spec small = seeded_weights("tiny-llama").spec;
  const weights_size fp8 = weights_bytes(small, dtype::fp8_e4m3);
  const weights_size bf16 = weights_bytes(small, dtype::bf16);
  EXPECT_LT(fp8.split, 0.6 * bf16.split);    // about half, plus the scales
  EXPECT_EQ(fp8.embedding, bf16.embedding);  // the embedding stays bf16
}

}  // namespace
}  // namespace helix::model
