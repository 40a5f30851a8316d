// Shared by the model and apps tests: seeded weights of a built-in model and seeded token ids.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/model_spec.hpp"
#include "core/rng.hpp"
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

}  // namespace helix::test_support
