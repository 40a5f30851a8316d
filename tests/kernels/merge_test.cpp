// LSE merge: hand-computed values, -inf partials as no-ops, the all-empty guard (no NaN), large
// LSE magnitudes, the optimised kernel (every engine) against the reference, thread invariance.
#include <gtest/gtest.h>

#include "kernels/cpu/optimized.hpp"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/rng.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/merge.hpp"

namespace helix::kernels {
namespace {

// Optimised vs reference: max |out diff| / max(1e-30, max |out_ref|), and |lse diff| /
// max(1, |lse_ref|). Both read the same f32 partials; the optimised one accumulates in f32.
constexpr double merge_out_rel = 2e-6;
constexpr double merge_lse_rel = 1e-6;

constexpr float neg_inf = -std::numeric_limits<float>::infinity();
const exec_context reference_ctx{backend::reference, nullptr, nullptr};
const exec_context cpu_ctx{backend::cpu, nullptr, nullptr};

struct merge_input {
  std::int64_t num_partials = 0;
  std::int64_t num_rows = 0;
  std::int64_t dim = 0;
  std::vector<float> out;  // [num_partials, num_rows, dim]
  std::vector<float> lse;  // [num_partials, num_rows]
};

struct merge_output {
  std::vector<float> out;
  std::vector<float> lse;
};

merge_input random_input(std::int64_t parts, std::int64_t rows, std::int64_t dim,
                         std::uint64_t seed, float lse_spread, float empty_fraction) {
  merge_input in;
  in.num_partials = parts;
  in.num_rows = rows;
  in.dim = dim;
  in.out.resize(static_cast<std::size_t>(parts * rows * dim));
  in.lse.resize(static_cast<std::size_t>(parts * rows));
  for (std::size_t i = 0; i < in.out.size(); ++i) {
    in.out[i] = 2.0f * random_uniform(seed, 1, 0, rng_purpose::test_data, i) - 1.0f;
  }
  for (std::size_t i = 0; i < in.lse.size(); ++i) {
    const float u = random_uniform(seed, 2, 0, rng_purpose::test_data, i);
    in.lse[i] =
        u < empty_fraction
            ? neg_inf
            : lse_spread * (2.0f * random_uniform(seed, 3, 0, rng_purpose::test_data, i) - 1.0f);
  }
  return in;
}

merge_output run_merge(const merge_input& in, const exec_context& ctx,
                       std::optional<simd::isa> isa = std::nullopt) {
  merge_output r;
  r.out.assign(static_cast<std::size_t>(in.num_rows * in.dim),
               std::numeric_limits<float>::quiet_NaN());
  r.lse.assign(static_cast<std::size_t>(in.num_rows), std::numeric_limits<float>::quiet_NaN());
  lse_merge_params p;
  p.partial_out = in.out.data();
  p.partial_lse = in.lse.data();
  p.num_partials = in.num_partials;
  p.num_rows = in.num_rows;
  p.dim = in.dim;
  p.out = r.out.data();
  p.lse = r.lse.data();
  const status st = isa ? cpu::lse_merge_with_isa(p, ctx.pool, *isa) : lse_merge(p, ctx);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return r;
}

void expect_no_nan(const merge_output& r) {
  for (float x : r.out) EXPECT_FALSE(std::isnan(x));
  for (float x : r.lse) EXPECT_FALSE(std::isnan(x));
}

void expect_close(const merge_output& got, const merge_output& ref, const std::string& what) {
  double max_ref = 1e-30;
  for (float x : ref.out) max_ref = std::max(max_ref, std::fabs(static_cast<double>(x)));
  double out_err = 0.0;
  for (std::size_t i = 0; i < ref.out.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got.out[i]) - ref.out[i]) / max_ref;
    out_err = std::max(out_err, std::isnan(e) ? 1e30 : e);
  }
  EXPECT_LE(out_err, merge_out_rel) << what;
  for (std::size_t i = 0; i < ref.lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      EXPECT_EQ(got.lse[i], ref.lse[i]) << what << " row " << i;
      continue;
    }
    EXPECT_LE(std::fabs(static_cast<double>(got.lse[i]) - ref.lse[i]) /
                  std::max(1.0, std::fabs(static_cast<double>(ref.lse[i]))),
              merge_lse_rel)
        << what << " row " << i;
  }
}

TEST(LseMerge, MatchesHandComputedValues) {
  // lse ln 1 and ln 3: weights 1/4 and 3/4, lse ln 4.
  merge_input in;
  in.num_partials = 2;
  in.num_rows = 1;
  in.dim = 2;
  in.out = {4.0f, -8.0f, 8.0f, 4.0f};
  in.lse = {0.0f, std::log(3.0f)};
  for (const exec_context& ctx : {reference_ctx, cpu_ctx}) {
    const merge_output r = run_merge(in, ctx);
    EXPECT_NEAR(r.out[0], 7.0f, 1e-6) << backend_name(ctx.backend);
    EXPECT_NEAR(r.out[1], 1.0f, 1e-6) << backend_name(ctx.backend);
    EXPECT_NEAR(r.lse[0], std::log(4.0f), 1e-6) << backend_name(ctx.backend);
  }
}

TEST(LseMerge, MinusInfinityPartialsAreNoOps) {
  const merge_input base = random_input(3, 5, 24, 11, 4.0f, 0.0f);
  // Interleave empty partials whose outputs are garbage (NaN, huge): they must change nothing.
  merge_input padded;
  padded.num_partials = 6;
  padded.num_rows = base.num_rows;
  padded.dim = base.dim;
  const std::size_t row_block = static_cast<std::size_t>(base.num_rows * base.dim);
  for (std::int64_t i = 0; i < 3; ++i) {
    const auto first =
        base.out.begin() + static_cast<std::ptrdiff_t>(i) * static_cast<std::ptrdiff_t>(row_block);
    padded.out.insert(padded.out.end(), row_block,
                      i == 1 ? 1e30f : std::numeric_limits<float>::quiet_NaN());
    padded.lse.insert(padded.lse.end(), static_cast<std::size_t>(base.num_rows), neg_inf);
    padded.out.insert(padded.out.end(), first, first + static_cast<std::ptrdiff_t>(row_block));
    padded.lse.insert(padded.lse.end(), base.lse.begin() + i * base.num_rows,
                      base.lse.begin() + (i + 1) * base.num_rows);
  }
  for (const exec_context& ctx : {reference_ctx, cpu_ctx}) {
    const merge_output want = run_merge(base, ctx);
    const merge_output got = run_merge(padded, ctx);
    expect_no_nan(got);
    // Same partials in the same order (the empties add nothing): bit-identical.
    EXPECT_EQ(std::memcmp(got.out.data(), want.out.data(), got.out.size() * sizeof(float)), 0)
        << backend_name(ctx.backend);
    EXPECT_EQ(std::memcmp(got.lse.data(), want.lse.data(), got.lse.size() * sizeof(float)), 0)
        << backend_name(ctx.backend);
  }
}

TEST(LseMerge, AllEmptyGivesZeroAndMinusInfinity) {
  merge_input in = random_input(4, 3, 17, 12, 1.0f, 1.0f);
  for (float& x : in.out) x = std::numeric_limits<float>::quiet_NaN();  // never read
  for (const exec_context& ctx : {reference_ctx, cpu_ctx}) {
    const merge_output r = run_merge(in, ctx);
    for (float x : r.out) EXPECT_EQ(x, 0.0f) << backend_name(ctx.backend);
    for (float x : r.lse) EXPECT_EQ(x, neg_inf) << backend_name(ctx.backend);
  }
}

TEST(LseMerge, LargeLseMagnitudesStayFinite) {
  for (const float big : {1e4f, -1e4f}) {
    merge_input in;
    in.num_partials = 3;
    in.num_rows = 1;
    in.dim = 3;
    in.out = {1.0f, 0.0f, 0.0f, 0.0f, 1.0f, 0.0f, 0.0f, 0.0f, 1.0f};
    in.lse = {big, big + std::log(2.0f), big + std::log(5.0f)};
    for (const exec_context& ctx : {reference_ctx, cpu_ctx}) {
      const merge_output r = run_merge(in, ctx);
      expect_no_nan(r);
      EXPECT_NEAR(r.out[0], 0.125f, 1e-3) << big;
      EXPECT_NEAR(r.out[1], 0.25f, 1e-3) << big;
      EXPECT_NEAR(r.out[2], 0.625f, 1e-3) << big;
      EXPECT_TRUE(std::isfinite(r.lse[0]));
      EXPECT_NEAR(r.lse[0], big + std::log(8.0f), 2e-3) << big;
    }
  }
  // A 2e4 spread between partials: the small one vanishes, nothing overflows.
  merge_input in;
  in.num_partials = 2;
  in.num_rows = 1;
  in.dim = 1;
  in.out = {3.0f, 5.0f};
  in.lse = {-1e4f, 1e4f};
  for (const exec_context& ctx : {reference_ctx, cpu_ctx}) {
    const merge_output r = run_merge(in, ctx);
    EXPECT_EQ(r.out[0], 5.0f);
    EXPECT_EQ(r.lse[0], 1e4f);
  }
}

TEST(LseMerge, OptimizedMatchesReference) {
  std::uint64_t seed = 40;
  for (const std::int64_t parts : {1, 2, 3, 8, 33}) {
    for (const std::int64_t dim : {1, 7, 16, 40, 128, 512}) {
      const merge_input in = random_input(parts, 37, dim, seed++, 30.0f, 0.2f);
      const merge_output ref = run_merge(in, reference_ctx);
      for (const simd::isa isa : {simd::isa::scalar, simd::isa::avx2, simd::isa::avx512}) {
        expect_close(run_merge(in, cpu_ctx, isa), ref,
                     fmt::format("{} partials {} dim {}", simd::isa_name(isa), parts, dim));
      }
    }
  }
}

TEST(LseMerge, BitIdenticalForAnyThreadCount) {
  const merge_input in = random_input(21, 100, 129, 77, 20.0f, 0.1f);
  const merge_output single = run_merge(in, cpu_ctx);
  for (int threads : {1, 2, 4}) {
    thread_pool pool(threads);
    const merge_output r = run_merge(in, {backend::cpu, &pool, nullptr});
    EXPECT_EQ(std::memcmp(r.out.data(), single.out.data(), r.out.size() * sizeof(float)), 0);
    EXPECT_EQ(std::memcmp(r.lse.data(), single.lse.data(), r.lse.size() * sizeof(float)), 0);
  }
}

TEST(LseMerge, LseOutputIsOptional) {
  const merge_input in = random_input(3, 4, 8, 5, 2.0f, 0.0f);
  std::vector<float> out(32);
  lse_merge_params p;
  p.partial_out = in.out.data();
  p.partial_lse = in.lse.data();
  p.num_partials = 3;
  p.num_rows = 4;
  p.dim = 8;
  p.out = out.data();
  for (const exec_context& ctx : {reference_ctx, cpu_ctx}) {
    ASSERT_TRUE(lse_merge(p, ctx).ok());
    EXPECT_NEAR(out[0], run_merge(in, ctx).out[0], 1e-7);
  }
  p.num_partials = 0;
  EXPECT_EQ(lse_merge(p, cpu_ctx).code(), errc::invalid_argument);
}

}  // namespace
}  // namespace helix::kernels
