// Counter-based random numbers (Philox-4x32-10, Salmon et al., SC'11).
//
// There is no generator state: every random number is a pure function of (seed, request, position,
// purpose, index), so any rank recomputes the same number without communication and results do
// not depend on call order or batch composition. Header-only and usable on host and device.
#pragma once

#include <array>
#include <cstdint>

#include "core/dtype.hpp"  // HELIX_HD

namespace helix {

/// What a random number is for; part of the counter so that uses never collide.
enum class rng_purpose : std::uint32_t {
  sampling = 1,      // Gumbel noise / uniform draw for token sampling
  weight_init = 2,   // seeded model weights
  synthetic_kv = 3,  // synthetic KV fill for benchmarks
  test_data = 4,     // test inputs
  workload = 5,      // arrival times, prompt lengths
  faults = 6,        // seeded fault schedules (transport/fault/schedule.hpp)
};

HELIX_HD std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> ctr,
                                                    std::array<std::uint32_t, 2> key) {
  constexpr std::uint32_t m0 = 0xD2511F53u, m1 = 0xCD9E8D57u;
  constexpr std::uint32_t w0 = 0x9E3779B9u, w1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t{m0} * ctr[0];
    const std::uint64_t p1 = std::uint64_t{m1} * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<std::uint32_t>(p0)};
    key[0] += w0;
    key[1] += w1;
  }
  return ctr;
}

/// Four random 32-bit words for (seed, stream, position, purpose, index). `stream` is the request
/// id for sampling, a tensor id for weight init, and so on.
HELIX_HD std::array<std::uint32_t, 4> random_words(std::uint64_t seed, std::uint64_t stream,
                                                   std::uint64_t position, rng_purpose purpose,
                                                   std::uint64_t index) {
  const std::array<std::uint32_t, 4> ctr = {
      static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(position),
      static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(purpose)};
  // High halves are folded into the key so that 64-bit ids stay distinct.
  const std::uint32_t hi = static_cast<std::uint32_t>(index >> 32) * 0x85EBCA6Bu ^
                           static_cast<std::uint32_t>(position >> 32) * 0xC2B2AE35u ^
                           static_cast<std::uint32_t>(stream >> 32) * 0x27D4EB2Fu;
  return philox4x32_10(
      ctr, {static_cast<std::uint32_t>(seed) ^ hi, static_cast<std::uint32_t>(seed >> 32)});
}

/// Uniform float in the open interval (0, 1): never 0 or 1, so log() of it is finite. 23 bits:
/// (2^23 - 1 + 0.5) * 2^-23 = 1 - 2^-24 is exactly representable, whereas with 24 bits the largest
/// value would round up to 1.0f.
HELIX_HD float uniform_open01(std::uint32_t word) {
  return (static_cast<float>(word >> 9) + 0.5f) * (1.0f / 8388608.0f);
}

/// Uniform in (0, 1) for the given counter.
HELIX_HD float random_uniform(std::uint64_t seed, std::uint64_t stream, std::uint64_t position,
                              rng_purpose purpose, std::uint64_t index) {
  return uniform_open01(random_words(seed, stream, position, purpose, index)[0]);
}

}  // namespace helix
