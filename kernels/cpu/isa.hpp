// Which vector instruction set the optimised CPU kernels use: detected once at run time (the
// project is built without -march=native), or forced by tests through the *_with_isa entry points
// of kernels/cpu/optimized.hpp. No intrinsics here.
#pragma once

#include <cstdint>
#include <string_view>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace helix::kernels::simd {

/// Instruction sets the kernels choose between, in increasing order.
enum class isa : std::uint8_t { scalar, avx2, avx512 };

[[nodiscard]] inline std::string_view isa_name(isa i) noexcept {
  switch (i) {
    case isa::scalar:
      return "scalar";
    case isa::avx2:
      return "avx2";
    case isa::avx512:
      return "avx512";
  }
  return "scalar";
}

/// Whether the CPU has F16C (half <-> float conversions). Through CPUID: clang 14 does not know
/// "f16c" as a __builtin_cpu_supports feature.
[[nodiscard]] inline bool cpu_has_f16c() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(1, &a, &b, &c, &d) != 0 && (c & bit_F16C) != 0;
#else
  return false;
#endif
}

/// Extensions beyond isa::avx512 (F/BW/VL/DQ) that some kernels use when the CPU has them:
/// `vbmi` adds AVX512_VBMI (byte permutes: fp8 -> f32 through 128-entry byte tables) and, for
/// kernels that want it, AVX512_BF16. Forced-ISA tests pass `none` to check that the path of
/// CPUs without them gives the same bits.
enum class isa_ext : std::uint8_t { none, vbmi };

/// Whether the CPU has AVX512_VBMI (vpermb / vpermi2b).
[[nodiscard]] inline bool cpu_has_avx512_vbmi() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512vbmi");
#else
  return false;
#endif
}

/// The best instruction set this CPU supports (detected once).
[[nodiscard]] inline isa detect_isa() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return isa::avx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return isa::avx2;
#endif
  return isa::scalar;
}

/// Cached detect_isa(). Kernels switch on this once per call, not per element.
[[nodiscard]] inline isa cpu_isa() noexcept {
  static const isa detected = detect_isa();
  return detected;
}

}  // namespace helix::kernels::simd
