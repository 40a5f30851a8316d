// RoPE: the optimised CPU kernel against the reference, the relative-position property, the two
// pair layouts, and make_rope_table against values computed by hand from the HF formulas.
//
// Tolerances:
//   optimised vs reference: rope_abs_tol per element (both compute the same f32 operations, so in
//     practice they are bit-identical; the margin only covers a compiler contracting differently).
//   q.k relative-position property: rel_pos_tol * |q| |k|. The angle pos * inv_freq is rounded to
//     f32 as in HF, an error of up to pos * 2^-24 rad; positions below 4096 keep that under 3e-4.
//   make_rope_table: table_rel_tol (HF computes the table in f32 too).
#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/optimized.hpp"

#include "core/model_spec.hpp"
#include "core/rng.hpp"
#include "core/thread_pool.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/rope.hpp"

namespace helix::kernels {
namespace {

constexpr float rope_abs_tol = 1e-6f;
constexpr double rel_pos_tol = 1e-3;
constexpr double table_rel_tol = 1e-6;

std::vector<float> uniform_values(std::int64_t count, std::uint64_t stream) {
  std::vector<float> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    v[static_cast<std::size_t>(i)] =
        2.0f * random_uniform(5, stream, 0, rng_purpose::test_data, static_cast<std::uint64_t>(i)) -
        1.0f;
  }
  return v;
}

std::vector<float> default_inv_freq(std::int64_t rot_dim, double theta) {
  rope_spec spec;
  spec.theta = theta;
  return make_rope_table(spec, rot_dim).inv_freq;
}

TEST(RopeCpu, MatchesReferenceOverShapes) {
  thread_pool pool(3);
  const std::vector<std::int64_t> all_positions = {0, 1, 17, 1000, 131071, 999999, 3000000};
  for (bool interleave : {false, true}) {
    for (std::int64_t rot_dim : {2, 14, 64, 128, 200}) {
      for (std::int64_t rot_offset : {0, 3}) {
        for (std::int64_t num_heads : {1, 4}) {
          for (std::int64_t rows : {1, 3, 7}) {
            const std::int64_t head_stride = rot_offset + rot_dim + 5;
            const std::int64_t row_stride = num_heads * head_stride + 1;
            const std::vector<float> x0 = uniform_values(rows * row_stride, 40 + rows);
            const std::vector<float> inv_freq = default_inv_freq(rot_dim, 10000.0);
            std::vector<std::int64_t> positions;
            for (std::int64_t r = 0; r < rows; ++r) {
              positions.push_back(
                  all_positions[static_cast<std::size_t>(r) % all_positions.size()]);
            }
            std::vector<float> x_ref = x0;
            std::vector<float> x_opt = x0;
            rope_params p;
            p.rows = rows;
            p.row_stride = row_stride;
            p.num_heads = num_heads;
            p.head_stride = head_stride;
            p.rot_offset = rot_offset;
            p.rot_dim = rot_dim;
            p.positions = positions.data();
            p.inv_freq = inv_freq.data();
            p.attention_factor = 1.25f;
            p.interleave = interleave;
            p.x = x_ref.data();
            ASSERT_TRUE(rope(p, {.backend = backend::reference}).ok());
            p.x = x_opt.data();
            ASSERT_TRUE(rope(p, {.backend = backend::cpu, .pool = &pool}).ok());
            for (std::size_t i = 0; i < x0.size(); ++i) {
              ASSERT_NEAR(x_opt[i], x_ref[i], rope_abs_tol)
                  << "element " << i << " interleave " << interleave << " rot_dim " << rot_dim
                  << " offset " << rot_offset << " heads " << num_heads << " rows " << rows;
            }
            // Only the rotated part changes.
            for (std::int64_t r = 0; r < rows; ++r) {
              for (std::int64_t h = 0; h < num_heads; ++h) {
                const std::int64_t base = r * row_stride + h * head_stride;
                for (std::int64_t i = 0; i < head_stride; ++i) {
                  if (i >= rot_offset && i < rot_offset + rot_dim) continue;
                  const auto at = static_cast<std::size_t>(base + i);
                  ASSERT_EQ(x_opt[at], x0[at]) << "outside the rotated part, row " << r;
                }
              }
            }
          }
        }
      }
    }
  }
}

// The portable path does the same multiplies and adds in the same order: same bits.
TEST(RopeCpu, PortablePathBitIdenticalToAvx2) {
  for (bool interleave : {false, true}) {
    for (std::int64_t rot_dim : {2, 14, 64, 200}) {
      constexpr std::int64_t rows = 3;
      constexpr std::int64_t num_heads = 2;
      const std::vector<float> x0 = uniform_values(rows * num_heads * rot_dim, 45);
      const std::vector<float> inv_freq = default_inv_freq(rot_dim, 500000.0);
      const std::vector<std::int64_t> positions = {5, 70000, 1048575};
      std::vector<float> x_avx2 = x0;
      std::vector<float> x_scalar = x0;
      rope_params p;
      p.rows = rows;
      p.row_stride = num_heads * rot_dim;
      p.num_heads = num_heads;
      p.head_stride = rot_dim;
      p.rot_dim = rot_dim;
      p.positions = positions.data();
      p.inv_freq = inv_freq.data();
      p.attention_factor = 0.9f;
      p.interleave = interleave;
      p.x = x_avx2.data();
      ASSERT_TRUE(cpu::rope_with_isa(p, nullptr, simd::isa::avx2).ok());
      p.x = x_scalar.data();
      ASSERT_TRUE(cpu::rope_with_isa(p, nullptr, simd::isa::scalar).ok());
      EXPECT_EQ(x_avx2, x_scalar) << "interleave " << interleave << " rot_dim " << rot_dim;
    }
  }
}

// rot_dim 2, inv_freq 1: the pair (1, 0) at position p becomes factor * (cos p, sin p).
TEST(RopeCpu, HandComputedRotation) {
  for (backend b : {backend::reference, backend::cpu}) {
    for (bool interleave : {false, true}) {
      std::vector<float> x = {1.0f, 0.0f, 0.5f, 2.0f};  // two rows of one pair
      const std::vector<std::int64_t> positions = {1, 3};
      const float inv_freq = 1.0f;
      rope_params p;
      p.x = x.data();
      p.rows = 2;
      p.row_stride = 2;
      p.rot_dim = 2;
      p.positions = positions.data();
      p.inv_freq = &inv_freq;
      p.attention_factor = 2.0f;
      p.interleave = interleave;
      ASSERT_TRUE(rope(p, {.backend = b}).ok());
      EXPECT_NEAR(x[0], 2.0 * std::cos(1.0), 1e-6) << backend_name(b);
      EXPECT_NEAR(x[1], 2.0 * std::sin(1.0), 1e-6) << backend_name(b);
      // (0.5, 2) at 3 rad: (0.5 cos3 - 2 sin3, 2 cos3 + 0.5 sin3), times 2.
      EXPECT_NEAR(x[2], 2.0 * (0.5 * std::cos(3.0) - 2.0 * std::sin(3.0)), 1e-6);
      EXPECT_NEAR(x[3], 2.0 * (2.0 * std::cos(3.0) + 0.5 * std::sin(3.0)), 1e-6);
    }
  }
}

/// Rotates one head vector of rot_dim values at `pos`.
std::vector<float> rotated(std::vector<float> v, std::int64_t pos, const std::vector<float>& inv,
                           bool interleave, backend b) {
  rope_params p;
  p.x = v.data();
  p.rows = 1;
  p.row_stride = static_cast<std::int64_t>(v.size());
  p.rot_dim = static_cast<std::int64_t>(v.size());
  p.positions = &pos;
  p.inv_freq = inv.data();
  p.interleave = interleave;
  EXPECT_TRUE(rope(p, {.backend = b}).ok());
  return v;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// q at position p and k at position p' give q.k that depends only on p - p'.
TEST(RopeCpu, DotProductDependsOnlyOnRelativePosition) {
  constexpr std::int64_t d = 64;
  const std::vector<float> inv = default_inv_freq(d, 10000.0);
  const std::vector<float> q = uniform_values(d, 50);
  const std::vector<float> k = uniform_values(d, 51);
  const double scale = std::sqrt(dot(q, q) * dot(k, k));
  for (backend b : {backend::reference, backend::cpu}) {
    for (bool interleave : {false, true}) {
      auto score = [&](std::int64_t pq, std::int64_t pk) {
        return dot(rotated(q, pq, inv, interleave, b), rotated(k, pk, inv, interleave, b));
      };
      const double base = score(7, 0);
      for (std::int64_t shift : {3, 1000, 4000}) {
        EXPECT_NEAR(score(7 + shift, shift), base, rel_pos_tol * scale)
            << "shift " << shift << " interleave " << interleave << " " << backend_name(b);
      }
      // And it does depend on the distance (the property above is not vacuous).
      EXPECT_GT(std::fabs(score(0, 0) - base), 10 * rel_pos_tol * scale);
    }
  }
}

// The interleaved layout is the rotate-half layout with element i at 2i and element i + d/2 at
// 2i + 1: the rotated vectors are the same permutation of each other, so q.k is identical.
TEST(RopeCpu, InterleavedEqualsRotateHalfUpToPermutation) {
  constexpr std::int64_t d = 64;
  const std::vector<float> inv = default_inv_freq(d, 10000.0);
  const std::vector<float> q = uniform_values(d, 60);
  const std::vector<float> k = uniform_values(d, 61);
  auto interleaved = [](const std::vector<float>& v) {
    std::vector<float> out(v.size());
    for (std::size_t i = 0; i < v.size() / 2; ++i) {
      out[2 * i] = v[i];
      out[2 * i + 1] = v[i + v.size() / 2];
    }
    return out;
  };
  for (backend b : {backend::reference, backend::cpu}) {
    const std::vector<float> q_half = rotated(q, 123, inv, false, b);
    const std::vector<float> k_half = rotated(k, 45, inv, false, b);
    const std::vector<float> q_inter = rotated(interleaved(q), 123, inv, true, b);
    const std::vector<float> k_inter = rotated(interleaved(k), 45, inv, true, b);
    EXPECT_EQ(interleaved(q_half), q_inter) << backend_name(b);
    EXPECT_NEAR(dot(q_half, k_half), dot(q_inter, k_inter), 1e-9) << backend_name(b);
  }
}

// Llama 3.1 scaling (theta 5e5, factor 8, low 1, high 4, original context 8192, rot_dim 128).
// HF: inv = theta^(-2i/d); wavelen = 2 pi / inv; wavelen > 8192: inv / 8; wavelen < 2048: inv;
// otherwise smooth = (8192 / wavelen - 1) / (4 - 1) and (1 - smooth) * inv / 8 + smooth * inv.
//   i = 0:  inv 1, wavelen 6.28                      -> 1
//   i = 34: inv 9.384738703573801e-4, wavelen 6695.1 -> smooth 0.074527 -> 1.7850781276799638e-4
//   i = 40: inv 2.742481756762073e-4, wavelen 22911  -> 3.428102195952591e-5
//   i = 63: inv 2.455140791131609e-6                 -> 3.068925988914511e-7
TEST(RopeTable, Llama3MatchesHandComputedValues) {
  rope_spec spec;
  spec.theta = 500000.0;
  spec.scaling = rope_scaling_kind::llama3;
  spec.factor = 8.0;
  spec.low_freq_factor = 1.0;
  spec.high_freq_factor = 4.0;
  spec.original_max_position_embeddings = 8192;
  const rope_table t = make_rope_table(spec, 128);
  ASSERT_EQ(t.inv_freq.size(), 64u);
  EXPECT_EQ(t.attention_factor, 1.0f);
  const std::pair<int, double> expected[] = {{0, 1.0},
                                             {34, 1.7850781276799638e-4},
                                             {40, 3.428102195952591e-5},
                                             {63, 3.068925988914511e-7}};
  for (const auto& [i, v] : expected) {
    EXPECT_NEAR(t.inv_freq[static_cast<std::size_t>(i)], v, table_rel_tol * v) << "index " << i;
  }
}

// YaRN as DeepSeek-V3 (theta 1e4, factor 40, original context 4096, beta_fast 32, beta_slow 1,
// rot_dim 64). HF: correction_dim(r) = d ln(4096 / (2 pi r)) / (2 ln 1e4): low = floor(10.47) =
// 10, high = ceil(22.51) = 23; ramp(i) = clamp((i - 10) / 13, 0, 1); extrapolation = 1 - ramp;
// inv = base / 40 * ramp + base * (1 - ramp), base = 1e4^(-2i/64).
//   i = 0: 1;  i = 10: base 0.0562341325 (ramp 0);  i = 16: 0.01 * (6/13/40 + 7/13) = 0.0055;
//   i = 31: 1.333521432163324e-4 / 40 = 3.3338035804083097e-6.
// attention_factor: mscale 1 and mscale_all_dim 1 give 1 (DeepSeek-V3 puts the mscale in the
// softmax scale instead); mscale 0.707 with mscale_all_dim 1 gives
// (0.0707 ln 40 + 1) / (0.1 ln 40 + 1) = 0.9210423553; without mscale_all_dim, 0.1 ln 40 + 1 =
// 1.3688879454.
TEST(RopeTable, YarnMatchesHandComputedValues) {
  rope_spec spec;
  spec.theta = 10000.0;
  spec.scaling = rope_scaling_kind::yarn;
  spec.factor = 40.0;
  spec.original_max_position_embeddings = 4096;
  spec.beta_fast = 32.0;
  spec.beta_slow = 1.0;
  spec.mscale = 1.0;
  spec.mscale_all_dim = 1.0;
  const rope_table t = make_rope_table(spec, 64);
  ASSERT_EQ(t.inv_freq.size(), 32u);
  const std::pair<int, double> expected[] = {
      {0, 1.0}, {10, 0.056234132519034905}, {16, 0.0055}, {31, 3.3338035804083097e-6}};
  for (const auto& [i, v] : expected) {
    EXPECT_NEAR(t.inv_freq[static_cast<std::size_t>(i)], v, table_rel_tol * v) << "index " << i;
  }
  EXPECT_NEAR(t.attention_factor, 1.0, 1e-7);
  spec.mscale = 0.707;
  EXPECT_NEAR(make_rope_table(spec, 64).attention_factor, 0.9210423553163399, 1e-6);
  spec.mscale = 1.0;
  spec.mscale_all_dim = 0.0;
  EXPECT_NEAR(make_rope_table(spec, 64).attention_factor, 1.3688879454113936, 1e-6);
}

TEST(RopeCpu, OddRotDimIsInvalidArgument) {
  std::vector<float> x(8);
  const std::int64_t pos = 0;
  const std::vector<float> inv(4, 1.0f);
  rope_params p;
  p.x = x.data();
  p.rows = 1;
  p.row_stride = 8;
  p.rot_dim = 7;
  p.positions = &pos;
  p.inv_freq = inv.data();
  EXPECT_EQ(rope(p, {}).code(), errc::invalid_argument);
}

}  // namespace
}  // namespace helix::kernels
