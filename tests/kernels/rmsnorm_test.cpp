// RMSNorm: the optimised CPU kernel against the reference and against a value computed by hand.
//
// Tolerance per element: |out - out_ref| <= rmsnorm_rel_tol * |out_ref| + rmsnorm_abs_tol. The
// reference sums squares in double, the kernel in 16 f32 lanes (relative error ~ dim/16 * 2^-24).
#include <cmath>
#include <cstdint>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/optimized.hpp"

#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "core/thread_pool.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/rmsnorm.hpp"

namespace helix::kernels {
namespace {

constexpr double rmsnorm_rel_tol = 2e-6;
constexpr double rmsnorm_abs_tol = 1e-7;

std::vector<float> uniform_values(std::int64_t count, std::uint64_t stream, float lo, float hi) {
  std::vector<float> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    v[static_cast<std::size_t>(i)] =
        lo + (hi - lo) * random_uniform(3, stream, 0, rng_purpose::test_data,
                                        static_cast<std::uint64_t>(i));
  }
  return v;
}

std::vector<std::uint8_t> stored_as(dtype t, const std::vector<float>& v) {
  std::vector<std::uint8_t> bytes(v.size() * dtype_bytes(t));
  for (std::size_t i = 0; i < v.size(); ++i) store_from_f32(bytes.data(), t, i, v[i]);
  return bytes;
}

TEST(RmsnormCpu, MatchesReferenceOverShapesAndDtypes) {
  thread_pool pool(2);
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16}) {
    for (std::int64_t rows : {1, 3, 17}) {
      for (std::int64_t dim : {1, 7, 64, 257, 1024, 7168}) {
        const std::int64_t x_stride = dim + 1;
        const std::int64_t out_stride = dim + 2;
        const std::vector<float> x = uniform_values(rows * x_stride, 70, -3.0f, 3.0f);
        const std::vector<std::uint8_t> w = stored_as(t, uniform_values(dim, 71, -2.0f, 2.0f));
        std::vector<float> out_ref(static_cast<std::size_t>(rows * out_stride), 9.0f);
        std::vector<float> out_opt = out_ref;
        rmsnorm_params p;
        p.x = x.data();
        p.x_stride = x_stride;
        p.weight = w.data();
        p.w_type = t;
        p.out_stride = out_stride;
        p.rows = rows;
        p.dim = dim;
        p.eps = 1e-5f;
        p.out = out_ref.data();
        ASSERT_TRUE(rmsnorm(p, {.backend = backend::reference}).ok());
        p.out = out_opt.data();
        ASSERT_TRUE(rmsnorm(p, {.backend = backend::cpu, .pool = &pool}).ok());
        for (std::size_t i = 0; i < out_ref.size(); ++i) {
          ASSERT_NEAR(out_opt[i], out_ref[i],
                      rmsnorm_rel_tol * std::fabs(out_ref[i]) + rmsnorm_abs_tol)
              << "element " << i << " rows " << rows << " dim " << dim << " " << dtype_name(t);
        }
      }
    }
  }
}

// The portable path sums squares in the same lanes and order as the AVX2 path: same bits.
TEST(RmsnormCpu, PortablePathBitIdenticalToAvx2) {
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16}) {
    for (std::int64_t dim : {1, 7, 16, 17, 257, 1031}) {
      constexpr std::int64_t rows = 5;
      const std::vector<float> x = uniform_values(rows * dim, 72, -3.0f, 3.0f);
      const std::vector<std::uint8_t> w = stored_as(t, uniform_values(dim, 73, -2.0f, 2.0f));
      std::vector<float> out_avx2(x.size());
      std::vector<float> out_scalar(x.size());
      rmsnorm_params p;
      p.x = x.data();
      p.weight = w.data();
      p.w_type = t;
      p.rows = rows;
      p.dim = dim;
      p.out = out_avx2.data();
      ASSERT_TRUE(cpu::rmsnorm_with_isa(p, nullptr, simd::isa::avx2).ok());
      p.out = out_scalar.data();
      ASSERT_TRUE(cpu::rmsnorm_with_isa(p, nullptr, simd::isa::scalar).ok());
      EXPECT_EQ(out_avx2, out_scalar) << dtype_name(t) << " dim " << dim;
    }
  }
}

// x = (1, 2, 3, 4), w = (1, 0.5, 2, -1), eps 1e-6: mean(x^2) = 30 / 4 = 7.5,
// 1 / sqrt(7.500001) = 0.3651483473..., out = w * x * that.
TEST(RmsnormCpu, HandComputedValue) {
  const std::vector<float> w = {1.0f, 0.5f, 2.0f, -1.0f};
  const double expected[] = {0.3651483473268884, 0.3651483473268884, 2.1908900839613303,
                             -1.4605933893075536};
  for (backend b : {backend::reference, backend::cpu}) {
    std::vector<float> x = {1.0f, 2.0f, 3.0f, 4.0f};
    rmsnorm_params p;
    p.x = x.data();
    p.weight = w.data();
    p.out = x.data();  // in place
    p.rows = 1;
    p.dim = 4;
    p.eps = 1e-6f;
    ASSERT_TRUE(rmsnorm(p, {.backend = b}).ok());
    for (int i = 0; i < 4; ++i) EXPECT_NEAR(x[i], expected[i], 1e-6) << backend_name(b) << " " << i;
  }
}

TEST(RmsnormCpu, NonPositiveEpsIsInvalidArgument) {
  std::vector<float> x(4, 1.0f);
  rmsnorm_params p;
  p.x = x.data();
  p.weight = x.data();
  p.out = x.data();
  p.rows = 1;
  p.dim = 4;
  p.eps = 0.0f;
  EXPECT_EQ(rmsnorm(p, {}).code(), errc::invalid_argument);
}

}  // namespace
}  // namespace helix::kernels
