// SwiGLU: the optimised CPU kernel (polynomial exp) against the reference (std::exp).
//
// Tolerance per element: |out - out_ref| <= swiglu_rel_tol * |out_ref| + swiglu_abs_tol. The
// kernel's exp is within about 2 ulp; the absolute term covers gates below -87, where the
// reference's exp overflows to inf (silu = -0) and the kernel's is clamped (silu ~ -1e-37).
#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/optimized.hpp"

#include "core/rng.hpp"
#include "core/thread_pool.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/swiglu.hpp"

namespace helix::kernels {
namespace {

constexpr double swiglu_rel_tol = 1e-6;
constexpr double swiglu_abs_tol = 1e-30;

std::vector<float> uniform_values(std::int64_t count, std::uint64_t stream, float lo, float hi) {
  std::vector<float> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    v[static_cast<std::size_t>(i)] =
        lo + (hi - lo) * random_uniform(4, stream, 0, rng_purpose::test_data,
                                        static_cast<std::uint64_t>(i));
  }
  return v;
}

TEST(SwigluCpu, MatchesReferenceOverShapes) {
  thread_pool pool(2);
  for (std::int64_t rows : {1, 2, 5}) {
    for (std::int64_t dim : {1, 7, 64, 257, 1024, 18432}) {
      const std::int64_t stride = dim + 3;
      std::vector<float> gate = uniform_values(rows * stride, 80, -12.0f, 12.0f);
      // Extremes: exp overflow and underflow regions, zero, signed zero.
      const float extremes[] = {-200.0f, -90.0f, -87.5f, -20.0f, 0.0f, -0.0f, 20.0f, 90.0f, 200.0f};
      for (std::size_t i = 0; i < std::size(extremes) && i < gate.size(); ++i) {
        gate[i * 7 % gate.size()] = extremes[i];
      }
      const std::vector<float> up = uniform_values(rows * stride, 81, -2.0f, 2.0f);
      std::vector<float> out_ref(static_cast<std::size_t>(rows * dim));
      std::vector<float> out_opt(out_ref.size());
      swiglu_params p;
      p.gate = gate.data();
      p.gate_stride = stride;
      p.up = up.data();
      p.up_stride = stride;
      p.rows = rows;
      p.dim = dim;
      p.out = out_ref.data();
      ASSERT_TRUE(swiglu(p, {.backend = backend::reference}).ok());
      p.out = out_opt.data();
      ASSERT_TRUE(swiglu(p, {.backend = backend::cpu, .pool = &pool}).ok());
      for (std::size_t i = 0; i < out_ref.size(); ++i) {
        ASSERT_NEAR(out_opt[i], out_ref[i], swiglu_rel_tol * std::fabs(out_ref[i]) + swiglu_abs_tol)
            << "element " << i << " rows " << rows << " dim " << dim;
      }
    }
  }
}

// The portable path evaluates the same exp polynomial with the same fused operations.
TEST(SwigluCpu, PortablePathBitIdenticalToAvx2) {
  for (std::int64_t dim : {1, 7, 9, 64, 1000}) {
    std::vector<float> gate = uniform_values(dim, 82, -100.0f, 100.0f);
    gate[0] = -87.5f;
    const std::vector<float> up = uniform_values(dim, 83, -2.0f, 2.0f);
    std::vector<float> out_avx2(gate.size());
    std::vector<float> out_scalar(gate.size());
    swiglu_params p;
    p.gate = gate.data();
    p.up = up.data();
    p.rows = 1;
    p.dim = dim;
    p.out = out_avx2.data();
    ASSERT_TRUE(cpu::swiglu_with_isa(p, nullptr, simd::isa::avx2).ok());
    p.out = out_scalar.data();
    ASSERT_TRUE(cpu::swiglu_with_isa(p, nullptr, simd::isa::scalar).ok());
    EXPECT_EQ(out_avx2, out_scalar) << "dim " << dim;
  }
}

// silu(1) * 2 = 2 / (1 + e^-1); silu(-1) * 1 = -1 / (1 + e); silu(0) = 0. In place on gate.
TEST(SwigluCpu, HandComputedValues) {
  for (backend b : {backend::reference, backend::cpu}) {
    std::vector<float> gate = {1.0f, -1.0f, 0.0f};
    const std::vector<float> up = {2.0f, 1.0f, 5.0f};
    swiglu_params p;
    p.gate = gate.data();
    p.up = up.data();
    p.out = gate.data();
    p.rows = 1;
    p.dim = 3;
    ASSERT_TRUE(swiglu(p, {.backend = b}).ok());
    EXPECT_NEAR(gate[0], 2.0 / (1.0 + std::exp(-1.0)), 1e-6) << backend_name(b);
    EXPECT_NEAR(gate[1], -1.0 / (1.0 + std::exp(1.0)), 1e-6) << backend_name(b);
    EXPECT_EQ(gate[2], 0.0f) << backend_name(b);
  }
}

}  // namespace
}  // namespace helix::kernels
