// Element types: f32 for compute; bf16, f16 and fp8_e4m3 (OCP E4M3FN) for storage of weights and
// KV.
//
// The names returned by dtype_name() are also the CLI and JSON strings. Scalar conversions are
// header-only and usable from host and device code (kernels include this header).
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/status.hpp"

#if defined(__CUDACC__)
#define HELIX_HD __host__ __device__ __forceinline__
#else
#define HELIX_HD inline
#endif

namespace helix {

enum class dtype : std::uint8_t { f32, bf16, f16, fp8_e4m3 };

[[nodiscard]] constexpr std::size_t dtype_bytes(dtype t) noexcept {
  switch (t) {
    case dtype::f32:
      return 4;
    case dtype::bf16:
      return 2;
    case dtype::f16:
      return 2;
    case dtype::fp8_e4m3:
      return 1;
  }
  return 0;
}

/// "f32", "bf16", "f16", "fp8_e4m3".
[[nodiscard]] std::string_view dtype_name(dtype t) noexcept;
/// Parses a dtype name; invalid_argument names the accepted values.
[[nodiscard]] expected<dtype> parse_dtype(std::string_view name);

/// Storage wrappers: distinct types so that overloads and templates cannot confuse them.
struct bf16_t {
  std::uint16_t bits;
};
struct f16_t {
  std::uint16_t bits;
};
struct fp8_e4m3_t {
  std::uint8_t bits;
};

HELIX_HD std::uint32_t f32_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
HELIX_HD float f32_from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

HELIX_HD float to_f32(float x) {
  return x;
}
HELIX_HD float to_f32(bf16_t x) {
  return f32_from_bits(std::uint32_t{x.bits} << 16);
}

HELIX_HD float to_f32(f16_t x) {
  const std::uint32_t sign = (std::uint32_t{x.bits} & 0x8000u) << 16;
  const std::uint32_t exp = (x.bits >> 10) & 0x1f;
  const std::uint32_t man = x.bits & 0x3ff;
  if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
  // Zero or subnormal: value = man * 2^-24.
  const float mag = static_cast<float>(man) * 5.9604644775390625e-8f;
  return sign ? -mag : mag;
}

/// E4M3FN: bias 7, no infinities, S.1111.111 is NaN, max finite 448. The bit trick maps the 7
/// magnitude bits into an f32 with the exponent field offset by the bias difference (127 - 7);
/// subnormals are handled by the same multiply.
HELIX_HD float to_f32(fp8_e4m3_t x) {
  const std::uint32_t sign = (std::uint32_t{x.bits} & 0x80u) << 24;
  const std::uint32_t mag = x.bits & 0x7fu;
  if (mag == 0x7f) return f32_from_bits(0x7fc00000u | sign);
  // Place eeee.mmm at f32 bits 30..20 (exponent low bits + top mantissa), then rescale by 2^120.
  const float v = f32_from_bits(mag << 20) * 1.329227995784916e36f;  // 2^120
  return sign ? -v : v;
}

/// Round to nearest even; NaN stays NaN.
HELIX_HD bf16_t to_bf16(float f) {
  std::uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{static_cast<std::uint16_t>((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{static_cast<std::uint16_t>(u >> 16)};
}

/// Round to nearest even; overflow to inf.
HELIX_HD f16_t to_f16(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16_t{static_cast<std::uint16_t>(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return f16_t{static_cast<std::uint16_t>(sign | 0x7c00u)};  // >= 65520
  if (a < 0x38800000u) {
    // Subnormal or zero in f16: value / 2^-24 rounded to nearest even integer.
    const float mag = f32_from_bits(a) * 16777216.0f;  // exact scaling
    float r = mag + 12582912.0f;                       // 1.5 * 2^23: forces RNE to integer
    r -= 12582912.0f;
    return f16_t{static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(r))};
  }
  std::uint32_t v = a - (112u << 23);  // rebias exponent
  v += 0xfffu + ((v >> 13) & 1u);
  return f16_t{static_cast<std::uint16_t>(sign | (v >> 13))};
}

/// Round to nearest even, saturating to +-448 (the usual choice for KV and weight storage).
HELIX_HD fp8_e4m3_t to_fp8_e4m3(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint8_t sign = static_cast<std::uint8_t>((u >> 24) & 0x80u);
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return fp8_e4m3_t{static_cast<std::uint8_t>(sign | 0x7f)};
  if (a >= 0x43e00000u) return fp8_e4m3_t{static_cast<std::uint8_t>(sign | 0x7e)};  // >= 448
  if (a < 0x3c800000u) {
    // Below 2^-6: subnormal grid of 2^-9.
    float r = f32_from_bits(a) * 512.0f + 12582912.0f;
    r -= 12582912.0f;
    return fp8_e4m3_t{static_cast<std::uint8_t>(sign | static_cast<std::uint8_t>(r))};
  }
  std::uint32_t v = a - (120u << 23);
  v += 0x7ffffu + ((v >> 20) & 1u);
  std::uint32_t out = v >> 20;
  if (out > 0x7e) out = 0x7e;
  return fp8_e4m3_t{static_cast<std::uint8_t>(sign | out)};
}

template <class T>
HELIX_HD T from_f32(float f);
template <>
HELIX_HD float from_f32<float>(float f) {
  return f;
}
template <>
HELIX_HD bf16_t from_f32<bf16_t>(float f) {
  return to_bf16(f);
}
template <>
HELIX_HD f16_t from_f32<f16_t>(float f) {
  return to_f16(f);
}
template <>
HELIX_HD fp8_e4m3_t from_f32<fp8_e4m3_t>(float f) {
  return to_fp8_e4m3(f);
}

/// Rounds through a storage type: what a value becomes once stored as `t`.
HELIX_HD float round_to(dtype t, float f) {
  switch (t) {
    case dtype::f32:
      return f;
    case dtype::bf16:
      return to_f32(to_bf16(f));
    case dtype::f16:
      return to_f32(to_f16(f));
    case dtype::fp8_e4m3:
      return to_f32(to_fp8_e4m3(f));
  }
  return f;
}

/// Loads element `i` of an array of type `t` as f32.
HELIX_HD float load_as_f32(const void* base, dtype t, std::size_t i) {
  switch (t) {
    case dtype::f32:
      return static_cast<const float*>(base)[i];
    case dtype::bf16:
      return to_f32(static_cast<const bf16_t*>(base)[i]);
    case dtype::f16:
      return to_f32(static_cast<const f16_t*>(base)[i]);
    case dtype::fp8_e4m3:
      return to_f32(static_cast<const fp8_e4m3_t*>(base)[i]);
  }
  return 0.0f;
}

/// Stores f32 `v` as element `i` of an array of type `t` (rounding as above).
HELIX_HD void store_from_f32(void* base, dtype t, std::size_t i, float v) {
  switch (t) {
    case dtype::f32:
      static_cast<float*>(base)[i] = v;
      break;
    case dtype::bf16:
      static_cast<bf16_t*>(base)[i] = to_bf16(v);
      break;
    case dtype::f16:
      static_cast<f16_t*>(base)[i] = to_f16(v);
      break;
    case dtype::fp8_e4m3:
      static_cast<fp8_e4m3_t*>(base)[i] = to_fp8_e4m3(v);
      break;
  }
}

}  // namespace helix
