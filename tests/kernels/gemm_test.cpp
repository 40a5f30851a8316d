// GEMV/GEMM: the optimised CPU kernel against the reference, batch and thread invariance, and
// the dispatcher's errors.
//
// Tolerance (optimised f32 accumulation vs the reference's double accumulation), per element:
//   |y - y_ref| <= gemm_rel_tol * sum_k |x_k * w_k| + gemm_abs_tol
// f32 rounding of a 16-lane dot product of length k grows like (k / 16) * 2^-24 of that sum in the
// worst case (6e-6 at k = 1024); random signs keep the real error far below the bound.
// Batch and thread invariance are exact (bit-identical), by design of the kernel.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/optimized.hpp"

#include "core/dtype.hpp"
#include "core/rng.hpp"
#include "core/thread_pool.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/gemm.hpp"

namespace helix::kernels {
namespace {

constexpr double gemm_rel_tol = 1e-5;
constexpr double gemm_abs_tol = 1e-6;

std::vector<float> uniform_values(std::int64_t count, std::uint64_t stream, float lo, float hi) {
  std::vector<float> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    const float u =
        random_uniform(7, stream, 0, rng_purpose::test_data, static_cast<std::uint64_t>(i));
    v[static_cast<std::size_t>(i)] = lo + (hi - lo) * u;
  }
  return v;
}

/// Weights stored as `t` (raw bytes) plus their exact f32 values.
struct weights {
  std::vector<std::uint8_t> bytes;
  std::vector<float> values;
};

weights make_weights(dtype t, std::int64_t n, std::int64_t k, std::uint64_t stream) {
  weights w;
  w.values = uniform_values(n * k, stream, -1.0f, 1.0f);
  w.bytes.resize(static_cast<std::size_t>(n * k) * dtype_bytes(t));
  for (std::size_t i = 0; i < w.values.size(); ++i) {
    store_from_f32(w.bytes.data(), t, i, w.values[i]);
    w.values[i] = load_as_f32(w.bytes.data(), t, i);
  }
  return w;
}

struct gemm_case {
  std::int64_t m, n, k;
  dtype w_type;
  bool accumulate;
};

void check_against_reference(const gemm_case& c, thread_pool* pool) {
  SCOPED_TRACE(::testing::Message() << "m " << c.m << " n " << c.n << " k " << c.k << " w "
                                    << dtype_name(c.w_type) << " acc " << c.accumulate);
  const std::int64_t x_stride = c.k + 3;  // strides wider than the data
  const std::int64_t y_stride = c.n + 2;
  const weights w = make_weights(c.w_type, c.n, c.k, 11);
  const std::vector<float> x = uniform_values(c.m * x_stride, 12, -1.0f, 1.0f);
  const std::vector<float> y0 = uniform_values(c.m * y_stride, 13, -1.0f, 1.0f);
  std::vector<float> y_ref = y0;
  std::vector<float> y_opt = y0;
  gemm_params p;
  p.x = x.data();
  p.x_stride = x_stride;
  p.w = w.bytes.data();
  p.w_type = c.w_type;
  p.y_stride = y_stride;
  p.m = c.m;
  p.n = c.n;
  p.k = c.k;
  p.accumulate = c.accumulate;
  p.y = y_ref.data();
  ASSERT_TRUE(gemm(p, {.backend = backend::reference}).ok());
  p.y = y_opt.data();
  ASSERT_TRUE(gemm(p, {.backend = backend::cpu, .pool = pool}).ok());
  int failures = 0;
  for (std::int64_t r = 0; r < c.m && failures < 5; ++r) {
    for (std::int64_t col = 0; col < c.n && failures < 5; ++col) {
      double abs_sum = 0.0;
      double exact = 0.0;
      for (std::int64_t i = 0; i < c.k; ++i) {
        const double prod = static_cast<double>(x[static_cast<std::size_t>(r * x_stride + i)]) *
                            w.values[static_cast<std::size_t>(col * c.k + i)];
        abs_sum += std::fabs(prod);
        exact += prod;
      }
      const auto at = static_cast<std::size_t>(r * y_stride + col);
      const double expected = c.accumulate ? y0[at] + exact : exact;
      const double tol = gemm_rel_tol * abs_sum + gemm_abs_tol;
      if (std::fabs(y_opt[at] - expected) > tol || std::fabs(y_ref[at] - expected) > tol) {
        ++failures;
        ADD_FAILURE() << "row " << r << " col " << col << ": opt " << y_opt[at] << " ref "
                      << y_ref[at] << " exact " << expected << " tol " << tol;
      }
    }
  }
  // The padding between rows is never written.
  for (std::int64_t r = 0; r < c.m; ++r) {
    for (std::int64_t col = c.n; col < y_stride; ++col) {
      const auto at = static_cast<std::size_t>(r * y_stride + col);
      ASSERT_EQ(y_opt[at], y0[at]) << "padding written at row " << r;
    }
  }
}

TEST(GemmCpu, MatchesReferenceOverShapesAndDtypes) {
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16}) {
    for (std::int64_t m = 1; m <= 17; ++m) {
      for (std::int64_t n : {1, 7, 64, 257}) {
        for (std::int64_t k : {1, 7, 64, 257, 1024}) {
          check_against_reference({m, n, k, t, (m + n) % 2 == 0}, nullptr);
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST(GemmCpu, MatchesReferenceLargeWithThreads) {
  thread_pool pool(3);
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16}) {
    for (std::int64_t m : {1, 4, 9}) {
      check_against_reference({m, 1024, 1024, t, false}, &pool);
      check_against_reference({m, 100, 4099, t, true}, &pool);
    }
  }
}

/// y for the given x rows (row stride k), computed in one call.
std::vector<float> run_gemm(const float* x, std::int64_t m, const weights& w, dtype t,
                            std::int64_t n, std::int64_t k, thread_pool* pool) {
  std::vector<float> y(static_cast<std::size_t>(m * n), -7.0f);
  gemm_params p;
  p.x = x;
  p.w = w.bytes.data();
  p.w_type = t;
  p.y = y.data();
  p.m = m;
  p.n = n;
  p.k = k;
  EXPECT_TRUE(gemm(p, {.backend = backend::cpu, .pool = pool}).ok());
  return y;
}

TEST(GemmCpu, BatchInvariantBitIdentical) {
  constexpr std::int64_t m = 9;
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16}) {
    for (std::int64_t k : {7, 64, 1031}) {
      constexpr std::int64_t n = 37;
      const weights w = make_weights(t, n, k, 21);
      const std::vector<float> x = uniform_values(m * k, 22, -2.0f, 2.0f);
      const std::vector<float> batch = run_gemm(x.data(), m, w, t, n, k, nullptr);
      for (std::int64_t r = 0; r < m; ++r) {
        const std::vector<float> alone = run_gemm(x.data() + r * k, 1, w, t, n, k, nullptr);
        EXPECT_EQ(std::memcmp(alone.data(), batch.data() + r * n, sizeof(float) * n), 0)
            << "row " << r << " of an m=" << m << " batch differs from the row alone, dtype "
            << dtype_name(t) << " k " << k;
      }
      // Any sub-batch too (rows 2..6 as an m=5 batch; 2 and 3 rows, which walk one weight row at
      // a time, and 4).
      for (const std::int64_t rows : {2, 3, 4, 5}) {
        const std::vector<float> sub = run_gemm(x.data() + 2 * k, rows, w, t, n, k, nullptr);
        EXPECT_EQ(std::memcmp(sub.data(), batch.data() + 2 * n, sizeof(float) * rows * n), 0)
            << rows << " rows, dtype " << dtype_name(t) << " k " << k;
      }
    }
  }
}

TEST(GemmCpu, ThreadCountInvariantBitIdentical) {
  thread_pool two(2);
  thread_pool four(4);
  for (dtype t : {dtype::f32, dtype::bf16}) {
    for (std::int64_t m : {1, 5, 40}) {
      constexpr std::int64_t n = 301;
      constexpr std::int64_t k = 515;
      const weights w = make_weights(t, n, k, 31);
      const std::vector<float> x = uniform_values(m * k, 32, -1.0f, 1.0f);
      const std::vector<float> one = run_gemm(x.data(), m, w, t, n, k, nullptr);
      const std::vector<float> y2 = run_gemm(x.data(), m, w, t, n, k, &two);
      const std::vector<float> y4 = run_gemm(x.data(), m, w, t, n, k, &four);
      EXPECT_EQ(std::memcmp(one.data(), y2.data(), sizeof(float) * one.size()), 0) << "m " << m;
      EXPECT_EQ(std::memcmp(one.data(), y4.data(), sizeof(float) * one.size()), 0) << "m " << m;
    }
  }
}

// Every instruction set reduces in the same canonical order: the portable fallback, AVX2 and
// AVX-512 (register-blocked differently) give the same bits. (On a CPU without AVX-512 or AVX2
// the seam falls back, and the comparison is trivially true.)
TEST(GemmCpu, AllInstructionSetsBitIdentical) {
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16}) {
    for (std::int64_t m : {1, 2, 3, 6, 9}) {
      for (std::int64_t k : {1, 7, 16, 17, 64, 257, 1031, 2100}) {
        constexpr std::int64_t n = 19;
        const weights w = make_weights(t, n, k, 41);
        const std::vector<float> x = uniform_values(m * k, 42, -1.0f, 1.0f);
        const std::vector<float> y0 = uniform_values(m * n, 43, -1.0f, 1.0f);
        std::vector<float> y_avx512 = y0;
        std::vector<float> y_avx2 = y0;
        std::vector<float> y_scalar = y0;
        gemm_params p;
        p.x = x.data();
        p.w = w.bytes.data();
        p.w_type = t;
        p.m = m;
        p.n = n;
        p.k = k;
        p.accumulate = k % 2 == 1;
        p.y = y_avx512.data();
        ASSERT_TRUE(cpu::gemm_with_isa(p, nullptr, simd::isa::avx512).ok());
        p.y = y_avx2.data();
        ASSERT_TRUE(cpu::gemm_with_isa(p, nullptr, simd::isa::avx2).ok());
        p.y = y_scalar.data();
        ASSERT_TRUE(cpu::gemm_with_isa(p, nullptr, simd::isa::scalar).ok());
        EXPECT_EQ(std::memcmp(y_avx2.data(), y_scalar.data(), sizeof(float) * y0.size()), 0)
            << "avx2 vs scalar, " << dtype_name(t) << " m " << m << " k " << k;
        EXPECT_EQ(std::memcmp(y_avx512.data(), y_scalar.data(), sizeof(float) * y0.size()), 0)
            << "avx512 vs scalar, " << dtype_name(t) << " m " << m << " k " << k;
      }
    }
  }
}

// A case with a known answer: W rows are one-hot and a constant, so each y is exact.
TEST(GemmCpu, HandComputed) {
  const std::vector<float> x = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f};
  const std::vector<float> w = {0,    0,    1,    0,    0,  // picks x[2]
                                0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
  for (backend b : {backend::reference, backend::cpu}) {
    std::vector<float> y = {100.0f, 100.0f};
    gemm_params p;
    p.x = x.data();
    p.w = w.data();
    p.y = y.data();
    p.m = 1;
    p.n = 2;
    p.k = 5;
    ASSERT_TRUE(gemm(p, {.backend = b}).ok());
    EXPECT_EQ(y[0], 3.0f) << backend_name(b);
    EXPECT_EQ(y[1], 7.5f) << backend_name(b);
    p.accumulate = true;
    ASSERT_TRUE(gemm(p, {.backend = b}).ok());
    EXPECT_EQ(y[0], 6.0f) << backend_name(b);
    EXPECT_EQ(y[1], 15.0f) << backend_name(b);
  }
}

// The FP8 paths: AVX-512 with the VBMI byte tables, AVX-512 without them, AVX2, scalar (each
// clamped to what the CPU has).
struct fp8_path_case {
  simd::isa isa;
  simd::isa_ext ext;
};
constexpr fp8_path_case fp8_paths[] = {{simd::isa::avx512, simd::isa_ext::vbmi},
                                       {simd::isa::avx512, simd::isa_ext::none},
                                       {simd::isa::avx2, simd::isa_ext::none},
                                       {simd::isa::scalar, simd::isa_ext::none}};

// Block-scaled FP8 weights (each block's unscaled products summed, then scaled): every path gives
// the same bits, for batches of 1 to 8 rows (each row the bits of that row alone), tails, runs of
// 1 to 3 chunks of 16 and runs that start on an odd chunk (blocks of 16 to 48 columns, phases of
// 16 and 48), column cuts that start inside a block (phase), a block that straddles the kernels'
// 1024-column k blocks, and blocks that are not multiples of 16; the results agree with the f32
// kernel over the weights a loader dequantizes to f32, and with the reference, within the gemm
// tolerance.
TEST(GemmCpu, Fp8WeightsAgreeWithTheirF32DequantizationOnEveryPath) {
  struct fp8_case {
    std::int64_t n, k, block_k, phase;
  };
  const fp8_case cases[] = {{37, 256, 128, 0},   {19, 300, 128, 0},  {24, 200, 128, 32},
                            {16, 129, 128, 112}, {9, 70, 48, 5},     {33, 2100, 128, 64},
                            {5, 203, 48, 16},    {7, 1100, 32, 0},   {6, 9, 128, 0},
                            {11, 500, 16, 0},    {4, 2085, 128, 48}, {3, 177, 64, 16}};
  for (const fp8_case& f : cases) {
    const std::int64_t stride = (f.k - 1 + f.phase) / f.block_k + 1;
    std::vector<std::uint8_t> w8(static_cast<std::size_t>(f.n * f.k));
    const auto wv = uniform_values(f.n * f.k, 41, -300.0f, 300.0f);
    for (std::size_t i = 0; i < w8.size(); ++i) w8[i] = to_fp8_e4m3(wv[i]).bits;
    w8[3] = 0x01;  // a subnormal
    w8[4] = 0x81;  // a negative one
    const auto sv = uniform_values(f.n * stride, 42, 1e-4f, 3e-3f);
    std::vector<float> w32(w8.size());
    for (std::int64_t c = 0; c < f.n; ++c) {
      for (std::int64_t kk = 0; kk < f.k; ++kk) {
        const auto i = static_cast<std::size_t>(c * f.k + kk);
        w32[i] = to_f32(fp8_e4m3_t{w8[i]}) *
                 sv[static_cast<std::size_t>(c * stride + (kk + f.phase) / f.block_k)];
      }
    }
    const auto x = uniform_values(8 * f.k, 43, -1.0f, 1.0f);
    gemm_params p;
    p.x = x.data();
    p.w = w8.data();
    p.w_type = dtype::fp8_e4m3;
    p.w_scales = sv.data();
    p.w_scale_stride = stride;
    p.w_block_k = f.block_k;
    p.w_scale_phase = f.phase;
    p.n = f.n;
    p.k = f.k;
    // Row r alone: the bits every batch and instruction set must give for it.
    std::vector<float> alone(static_cast<std::size_t>(8 * f.n));
    for (std::int64_t r = 0; r < 8; ++r) {
      p.x = x.data() + r * f.k;
      p.m = 1;
      p.y = alone.data() + r * f.n;
      ASSERT_TRUE(cpu::gemm_with_isa(p, nullptr, simd::isa::scalar).ok());
    }
    p.x = x.data();
    for (std::int64_t m = 1; m <= 8; ++m) {
      SCOPED_TRACE(testing::Message() << "n " << f.n << " k " << f.k << " block " << f.block_k
                                      << " phase " << f.phase << " m " << m);
      p.m = m;
      for (const fp8_path_case& path : fp8_paths) {
        std::vector<float> got(static_cast<std::size_t>(m * f.n), -1.0f);
        p.y = got.data();
        ASSERT_TRUE(cpu::gemm_with_isa(p, nullptr, path.isa, path.ext).ok());
        EXPECT_EQ(std::memcmp(got.data(), alone.data(), sizeof(float) * got.size()), 0)
            << "isa " << simd::isa_name(path.isa) << " ext " << static_cast<int>(path.ext);
      }
    }
    std::vector<float> ref(static_cast<std::size_t>(8 * f.n));
    std::vector<float> f32(ref.size());
    p.m = 8;
    p.y = ref.data();
    ASSERT_TRUE(gemm(p, {.backend = backend::reference}).ok());
    gemm_params q = p;
    q.w = w32.data();
    q.w_type = dtype::f32;
    q.w_scales = nullptr;
    q.y = f32.data();
    ASSERT_TRUE(cpu::gemm_with_isa(q, nullptr, simd::isa::avx512).ok());
    for (std::int64_t r = 0; r < 8; ++r) {
      for (std::int64_t c = 0; c < f.n; ++c) {
        double mag = 0.0;
        for (std::int64_t kk = 0; kk < f.k; ++kk) {
          mag += std::fabs(static_cast<double>(x[static_cast<std::size_t>(r * f.k + kk)]) *
                           w32[static_cast<std::size_t>(c * f.k + kk)]);
        }
        const auto i = static_cast<std::size_t>(r * f.n + c);
        EXPECT_NEAR(alone[i], ref[i], gemm_rel_tol * mag + gemm_abs_tol);
        EXPECT_NEAR(alone[i], f32[i], gemm_rel_tol * mag + gemm_abs_tol);
      }
    }
  }
}

// Every finite e4m3 code (subnormals, both zeros, the largest) in every position: each path gives
// the scalar path's bits, with `accumulate`, at one and three rows.
TEST(GemmCpu, Fp8WeightsOfEveryCodeGiveTheSameBitsOnEveryPath) {
  const std::int64_t n = 21;
  const std::int64_t k = 1337;
  std::vector<std::uint8_t> w8(static_cast<std::size_t>(n * k));
  for (std::size_t i = 0; i < w8.size(); ++i) {
    const auto code = static_cast<std::uint8_t>((i * 101 + i / 7) & 0xff);
    w8[i] = (code & 0x7f) == 0x7f ? 0x00 : code;  // no NaN
  }
  const std::int64_t stride = (k - 1 + 80) / 128 + 1;
  const auto sv = uniform_values(n * stride, 61, 1e-3f, 4.0f);
  const auto x = uniform_values(3 * k, 62, -2.0f, 2.0f);
  const auto y0 = uniform_values(3 * n, 63, -1.0f, 1.0f);
  gemm_params p;
  p.x = x.data();
  p.w = w8.data();
  p.w_type = dtype::fp8_e4m3;
  p.w_scales = sv.data();
  p.w_scale_stride = stride;
  p.w_block_k = 128;
  p.w_scale_phase = 80;
  p.n = n;
  p.k = k;
  p.accumulate = true;
  for (const std::int64_t m : {1, 3}) {
    std::vector<float> want(y0.begin(), y0.begin() + m * n);
    p.m = m;
    p.y = want.data();
    ASSERT_TRUE(cpu::gemm_with_isa(p, nullptr, simd::isa::scalar).ok());
    for (const fp8_path_case& path : fp8_paths) {
      std::vector<float> got(y0.begin(), y0.begin() + m * n);
      p.y = got.data();
      ASSERT_TRUE(cpu::gemm_with_isa(p, nullptr, path.isa, path.ext).ok());
      EXPECT_EQ(std::memcmp(got.data(), want.data(), sizeof(float) * got.size()), 0)
          << "m " << m << " isa " << simd::isa_name(path.isa) << " ext "
          << static_cast<int>(path.ext);
    }
  }
}

// Thread counts split the columns into the same tiles: the bits do not change.
TEST(GemmCpu, Fp8WeightsAreThreadCountInvariant) {
  const std::int64_t n = 300;
  const std::int64_t k = 1024;
  std::vector<std::uint8_t> w8(static_cast<std::size_t>(n * k));
  const auto wv = uniform_values(n * k, 51, -400.0f, 400.0f);
  for (std::size_t i = 0; i < w8.size(); ++i) w8[i] = to_fp8_e4m3(wv[i]).bits;
  const auto sv = uniform_values(n * (k / 128), 52, 1e-3f, 2e-3f);
  const auto x = uniform_values(3 * k, 53, -1.0f, 1.0f);
  gemm_params p;
  p.x = x.data();
  p.w = w8.data();
  p.w_type = dtype::fp8_e4m3;
  p.w_scales = sv.data();
  p.w_scale_stride = k / 128;
  p.w_block_k = 128;
  p.m = 3;
  p.n = n;
  p.k = k;
  std::vector<float> one(static_cast<std::size_t>(3 * n));
  p.y = one.data();
  ASSERT_TRUE(cpu::gemm(p, nullptr).ok());
  thread_pool pool(3);
  std::vector<float> three(one.size());
  p.y = three.data();
  ASSERT_TRUE(cpu::gemm(p, &pool).ok());
  EXPECT_EQ(std::memcmp(one.data(), three.data(), sizeof(float) * one.size()), 0);
}

TEST(GemmCpu, Fp8WeightsWithoutValidScalesAreInvalidArgument) {
  const std::vector<float> x(16, 1.0f);
  const std::vector<std::uint8_t> w(16 * 4, 0x38);
  const std::vector<float> scales(4, 1.0f);
  std::vector<float> y(4);
  gemm_params p;
  p.x = x.data();
  p.w = w.data();
  p.w_type = dtype::fp8_e4m3;
  p.y = y.data();
  p.m = 1;
  p.n = 4;
  p.k = 16;
  for (backend b : {backend::reference, backend::cpu}) {
    const status s = gemm(p, {.backend = b});
    EXPECT_EQ(s.code(), errc::invalid_argument) << backend_name(b) << ": " << s.to_string();
  }
  p.w_scales = scales.data();
  p.w_block_k = 128;
  p.w_scale_stride = 1;
  p.w_scale_phase = 128;  // outside its block
  EXPECT_EQ(gemm(p, {}).code(), errc::invalid_argument);
  p.w_scale_phase = 0;
  EXPECT_TRUE(gemm(p, {}).ok());
  EXPECT_EQ(y[0], 16.0f);  // 0x38 is 1.0 in e4m3
}

// One parallel region for several projections of one input gives each output the bits of its
// own gemm: mixed dtypes (fp8 with its block scales), shapes of one and many tiles, 1 and 5 rows,
// on 1 and 3 threads.
TEST(GemmCpu, AGroupGivesEachOutputTheBitsOfItsOwnGemm) {
  constexpr std::int64_t k = 384;
  struct member {
    std::int64_t n;
    dtype t;
  };
  const std::vector<member> members = {{1024, dtype::bf16},
                                       {256, dtype::f32},
                                       {37, dtype::f16},
                                       {300, dtype::fp8_e4m3},
                                       {5, dtype::bf16}};
  std::vector<weights> ws;
  std::vector<std::vector<std::uint8_t>> w8(members.size());
  const auto sv = uniform_values(1024 * (k / 128), 61, 1e-3f, 2e-3f);
  for (std::size_t i = 0; i < members.size(); ++i) {
    if (members[i].t == dtype::fp8_e4m3) {
      const auto wv = uniform_values(members[i].n * k, 62, -400.0f, 400.0f);
      w8[i].resize(wv.size());
      for (std::size_t j = 0; j < wv.size(); ++j) w8[i][j] = to_fp8_e4m3(wv[j]).bits;
      ws.push_back({});
    } else {
      ws.push_back(make_weights(members[i].t, members[i].n, k, 70 + i));
    }
  }
  thread_pool pool(3);
  for (const std::int64_t m : {std::int64_t{1}, std::int64_t{5}}) {
    const auto x = uniform_values(m * k, 63, -1.0f, 1.0f);
    std::vector<gemm_params> ps(members.size());
    std::vector<std::vector<float>> alone(members.size()), grouped(members.size());
    for (std::size_t i = 0; i < members.size(); ++i) {
      gemm_params& p = ps[i];
      p.x = x.data();
      p.w_type = members[i].t;
      p.w = p.w_type == dtype::fp8_e4m3 ? static_cast<const void*>(w8[i].data())
                                        : static_cast<const void*>(ws[i].bytes.data());
      if (p.w_type == dtype::fp8_e4m3) {
        p.w_scales = sv.data();
        p.w_scale_stride = k / 128;
        p.w_block_k = 128;
      }
      p.m = m;
      p.n = members[i].n;
      p.k = k;
      alone[i].assign(static_cast<std::size_t>(m * p.n), 0.0f);
      p.y = alone[i].data();
      ASSERT_TRUE(gemm(p, {.pool = &pool}).ok());
    }
    for (thread_pool* tp : {static_cast<thread_pool*>(nullptr), &pool}) {
      for (std::size_t i = 0; i < members.size(); ++i) {
        grouped[i].assign(alone[i].size(), -1.0f);
        ps[i].y = grouped[i].data();
      }
      ASSERT_TRUE(gemm_group(ps, {.pool = tp}).ok());
      for (std::size_t i = 0; i < members.size(); ++i) {
        EXPECT_EQ(std::memcmp(alone[i].data(), grouped[i].data(), sizeof(float) * alone[i].size()),
                  0)
            << "member " << i << " (" << dtype_name(members[i].t) << ") m " << m;
      }
    }
  }
  // Errors name the entry; more than 8 at once is refused.
  gemm_params bad;
  const std::vector<float> x(16, 1.0f);
  std::vector<float> y(4);
  const std::vector<float> w(64, 1.0f);
  bad.x = x.data();
  bad.w = w.data();
  bad.y = y.data();
  bad.m = 1;
  bad.n = 4;
  bad.k = 16;
  std::vector<gemm_params> two = {bad, bad};
  two[1].k = 0;
  const status st = gemm_group(two, {});
  EXPECT_EQ(st.code(), errc::invalid_argument);
  EXPECT_NE(st.to_string().find("entry 1"), std::string::npos) << st.to_string();
  const std::vector<gemm_params> nine(9, bad);
  EXPECT_EQ(gemm_group(nine, {}).code(), errc::invalid_argument);
  std::vector<std::vector<float>> ys(8, std::vector<float>(4));
  std::vector<gemm_params> eight(8, bad);
  for (std::size_t i = 0; i < 8; ++i) eight[i].y = ys[i].data();
  EXPECT_TRUE(gemm_group(eight, {}).ok());
  EXPECT_EQ(ys[7][3], 16.0f);
}

TEST(GemmCpu, InvalidShapesAreInvalidArgument) {
  const std::vector<float> x(16, 1.0f);
  std::vector<float> y(4);
  gemm_params p;
  p.x = x.data();
  p.w = x.data();
  p.y = y.data();
  p.m = 1;
  p.n = 1;
  p.k = 0;
  EXPECT_EQ(gemm(p, {}).code(), errc::invalid_argument);
  p.k = 16;
  p.x_stride = 8;
  EXPECT_EQ(gemm(p, {}).code(), errc::invalid_argument);
}

}  // namespace
}  // namespace helix::kernels
