#include "core/dtype.hpp"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace helix {
namespace {

TEST(Dtype, NamesRoundTrip) {
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3}) {
    auto parsed = parse_dtype(dtype_name(t));
    ASSERT_TRUE(parsed.has_value());
    EXPECT_EQ(*parsed, t);
  }
  auto bad = parse_dtype("fp4");
  ASSERT_FALSE(bad.has_value());
  EXPECT_EQ(bad.error().code(), errc::invalid_argument);
  EXPECT_NE(bad.error().message().find("fp8_e4m3"), std::string::npos);
}

// Every encoding of the 8- and 16-bit formats decodes and re-encodes to itself (except NaNs).
TEST(Dtype, Fp8E4m3AllCodesRoundTrip) {
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(to_f32(fp8_e4m3_t{static_cast<std::uint8_t>(b)})));
      continue;
    }
    const float f = to_f32(fp8_e4m3_t{static_cast<std::uint8_t>(b)});
    EXPECT_EQ(to_fp8_e4m3(f).bits, b) << "code " << b << " value " << f;
  }
  EXPECT_EQ(to_f32(fp8_e4m3_t{0x7e}), 448.0f);
  EXPECT_EQ(to_f32(fp8_e4m3_t{0x01}), std::ldexp(1.0f, -9));
  EXPECT_EQ(to_f32(fp8_e4m3_t{0x08}), std::ldexp(1.0f, -6));
  EXPECT_EQ(to_f32(to_fp8_e4m3(1e6f)), 448.0f);  // saturates
  EXPECT_EQ(to_f32(to_fp8_e4m3(-1e6f)), -448.0f);
  EXPECT_EQ(to_f32(to_fp8_e4m3(1.0625f)), 1.0f);   // tie to even (1.0 has even mantissa)
  EXPECT_EQ(to_f32(to_fp8_e4m3(1.1875f)), 1.25f);  // tie to even
}

TEST(Dtype, F16AndBf16AllCodesRoundTrip) {
  for (int b = 0; b < 65536; ++b) {
    const auto bits = static_cast<std::uint16_t>(b);
    const float h = to_f32(f16_t{bits});
    if (!std::isnan(h)) {
      EXPECT_EQ(to_f16(h).bits, bits) << b;
    }
    const float g = to_f32(bf16_t{bits});
    if (!std::isnan(g)) {
      EXPECT_EQ(to_bf16(g).bits, bits) << b;
    }
  }
  EXPECT_EQ(to_f32(to_f16(65504.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(to_f32(to_f16(70000.0f))));
  EXPECT_EQ(to_f32(to_f16(std::ldexp(1.0f, -24))), std::ldexp(1.0f, -24));
  EXPECT_EQ(to_f32(to_bf16(1.0f + std::ldexp(1.0f, -8))), 1.0f);  // tie to even
  EXPECT_EQ(to_f32(to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))), 1.0f + std::ldexp(1.0f, -6));
}

TEST(Dtype, RoundingErrorWithinHalfUlp) {
  for (float f = -3.0f; f < 3.0f; f += 0.0137f) {
    EXPECT_LE(std::fabs(round_to(dtype::bf16, f) - f),
              std::fabs(f) * std::ldexp(1.0f, -8) + 1e-30f);
    EXPECT_LE(std::fabs(round_to(dtype::f16, f) - f),
              std::fabs(f) * std::ldexp(1.0f, -11) + std::ldexp(1.0f, -25));
    EXPECT_LE(std::fabs(round_to(dtype::fp8_e4m3, f) - f),
              std::fabs(f) * std::ldexp(1.0f, -4) + std::ldexp(1.0f, -10));
  }
}

}  // namespace
}  // namespace helix
