// Shared by the model, actors, apps and serve tests: seeded weights of a built-in model, seeded
// token ids, and the single-worker decoder's greedy tokens.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/model_spec.hpp"
#include "core/rng.hpp"
#include "model/decoder.hpp"
#include "model/weights.hpp"

namespace helix::test_support {

/// The built-in model `name` with weights seeded by 1234 (fails the test on an error).
inline model::model_weights seeded_weights(const std::string& name, dtype t = dtype::f32) {
  auto spec = builtin_model(name);
  EXPECT_TRUE(spec.has_value()) << spec.error().to_string();
  auto w = model::init_seeded_weights(*spec, t, 1234);
  EXPECT_TRUE(w.has_value()) << w.error().to_string();
  return std::move(w).value();
}

/// `n` token ids in [0, vocab), a pure function of (stream, index).
inline std::vector<std::int32_t> random_tokens(std::int64_t n, std::int64_t vocab,
                                               std::uint64_t stream) {
  std::vector<std::int32_t> out;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto u =
        random_words(7, stream, static_cast<std::uint64_t>(i), rng_purpose::test_data, 0)[0];
    out.push_back(static_cast<std::int32_t>(u % static_cast<std::uint32_t>(vocab)));
  }
  return out;
}

// What the single-worker decoder generates greedily for `prompt` alone.
inline std::vector<std::int32_t> generate_alone(const model::model_weights& w,
                                                const std::vector<std::int32_t>& prompt,
                                                std::int64_t max_tokens,
                                                const std::vector<std::int32_t>& stops) {
  model::decoder_options o;
  o.num_threads = 1;
  o.kv_capacity_tokens = 4096;
  auto dec = model::decoder::create(w, o);
  EXPECT_TRUE(dec.has_value());
  const std::uint64_t seq = (*dec)->open_sequence();
  std::vector<float> logits(static_cast<std::size_t>(w.spec.vocab));
  std::vector<std::int32_t> out;
  std::vector<std::int32_t> feed = prompt;
  while (static_cast<std::int64_t>(out.size()) < max_tokens) {
    const model::decoder::batch_item item{seq, feed, false};
    EXPECT_TRUE((*dec)->forward({&item, 1}, logits).ok());
    const auto t =
        static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
    out.push_back(t);
    if (std::find(stops.begin(), stops.end(), t) != stops.end()) break;
    feed = {t};
  }
  return out;
}

}  // namespace helix::test_support
