#include "core/rng.hpp"

#include <cmath>
#include <set>

#include <gtest/gtest.h>

namespace helix {
namespace {

// Regression: with 24 bits, (2^24 - 1 + 0.5) * 2^-24 rounded to exactly 1.0f, so Gumbel noise
// -log(-log(u)) became +inf and that token won whatever its logit.
TEST(Rng, UniformIsStrictlyInsideTheUnitInterval) {
  for (std::uint32_t w : {0u, 1u, 511u, 512u, 0xFFFFFE00u, 0xFFFFFFFFu}) {
    const float u = uniform_open01(w);
    EXPECT_GT(u, 0.0f) << w;
    EXPECT_LT(u, 1.0f) << w;
    EXPECT_TRUE(std::isfinite(-std::log(-std::log(u)))) << w;
  }
}

TEST(Rng, CountersAreIndependentAndReproducible) {
  const auto a = random_words(1, 2, 3, rng_purpose::sampling, 4);
  EXPECT_EQ(a, random_words(1, 2, 3, rng_purpose::sampling, 4));
  std::set<std::uint32_t> seen;
  seen.insert(a[0]);
  seen.insert(random_words(2, 2, 3, rng_purpose::sampling, 4)[0]);
  seen.insert(random_words(1, 3, 3, rng_purpose::sampling, 4)[0]);
  seen.insert(random_words(1, 2, 4, rng_purpose::sampling, 4)[0]);
  seen.insert(random_words(1, 2, 3, rng_purpose::weight_init, 4)[0]);
  seen.insert(random_words(1, 2, 3, rng_purpose::sampling, 5)[0]);
  seen.insert(random_words(1, 2, 3, rng_purpose::sampling, 4 + (std::uint64_t{1} << 32))[0]);
  seen.insert(random_words(1, 2 + (std::uint64_t{1} << 32), 3, rng_purpose::sampling, 4)[0]);
  EXPECT_EQ(seen.size(), 8u);
}

TEST(Rng, UniformMeanAndVarianceAreRight) {
  double sum = 0.0;
  double sq = 0.0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double u = random_uniform(9, 0, static_cast<std::uint64_t>(i), rng_purpose::test_data, 0);
    sum += u;
    sq += u * u;
  }
  const double mean = sum / n;
  EXPECT_NEAR(mean, 0.5, 0.005);
  EXPECT_NEAR(sq / n - mean * mean, 1.0 / 12.0, 0.002);
}

}  // namespace
}  // namespace helix
