// Partial attention: the reference against hand-computed values, the optimised CPU kernel (every
// engine: AVX-512, AVX2, scalar) against the reference over a sweep of shapes and dtypes, thread
// invariance, and the shard-split + LSE-merge exactness the whole project rests on. Also the
// kernels/cpu/simd.hpp conversions the kernels rely on.
#include <gtest/gtest.h>

#include "kernels/cpu/optimized.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "attention_cases.hpp"
#include "kernels/attention.hpp"
#include "kernels/cpu/simd.hpp"
#include "kernels/merge.hpp"

namespace helix::kernels {
namespace {

// Tolerance of the optimised kernel against the reference: max |out_opt - out_ref| divided by
// max |out_ref| (out is a convex combination of values, so this is a relative error), and
// max |lse_opt - lse_ref| / max(1, |lse_ref|). The stored K/V are the same bits for both, so the
// dtype only changes the value range; the error is the f32 accumulation and the fast exp.
struct tolerance {
  dtype type;
  double out_rel;
  double lse_rel;
};
constexpr tolerance tolerances[] = {
    {dtype::f32, 1e-5, 1e-5},
    {dtype::bf16, 1e-5, 1e-5},
    {dtype::f16, 1e-5, 1e-5},
    {dtype::fp8_e4m3, 1e-5, 1e-5},
};
// Splitting a request's blocks into shards and merging the partials must equal attention over all
// blocks (both optimised), up to f32 rounding.
constexpr double shard_merge_rel = 1e-5;

const tolerance& tolerance_for(dtype t) {
  for (const tolerance& tol : tolerances) {
    if (tol.type == t) return tol;
  }
  return tolerances[0];
}

using testing::attn_case;
using testing::attn_result;
using testing::reference_ctx;
using testing::urand;

std::string case_name(const attn_case& c) {
  return fmt::format("k{}v{}{} kv{} q{} {} bt{} blocks{} nq{}{} ks{} vs{}", c.key_dim, c.value_dim,
                     c.mla ? "mla" : "", c.num_kv_heads, c.num_q_heads, dtype_name(c.type),
                     c.block_tokens, c.num_blocks, c.num_queries, c.causal ? " causal" : "",
                     c.k_scale, c.v_scale);
}

// Query positions interleave with the keys: before all of them, inside gaps, after all.
std::int64_t query_position(std::int64_t end, std::int64_t i, std::int64_t n) {
  if (n == 1) return end + 1;
  return static_cast<std::int64_t>(static_cast<double>(end + 10) * static_cast<double>(i) /
                                   static_cast<double>(n - 1)) -
         2;
}

// A request's KV on one rank (see testing::paged_fixture): NaN in unused slots and unfilled rows
// (a kernel that reads them fails), blocks in arbitrary order, gaps after even blocks.
struct attn_fixture : testing::paged_fixture {
  static constexpr testing::scatter_pattern scatter{.spare_slot_divisor = 2,
                                                    .first_pos = 3,
                                                    .partial_every = 3,
                                                    .partial_at = 1,
                                                    .gap_parity = 0,
                                                    .query_pos = &query_position};
  explicit attn_fixture(const attn_case& cs) : paged_fixture(cs, scatter) {}
};

// Runs attention on `blocks` (a subset of the fixture's, or all of them).
attn_result run_attention(const attn_fixture& f, const exec_context& ctx,
                          const std::vector<kv_block_ref>* blocks = nullptr,
                          std::optional<simd::isa> isa = std::nullopt,
                          simd::isa_ext ext = simd::isa_ext::vbmi) {
  attn_result r = testing::nan_result(f);
  attention_partial_params p = f.params(r.out.data(), r.lse.data());
  if (blocks != nullptr) {
    p.blocks = blocks->data();
    p.num_blocks = static_cast<std::int64_t>(blocks->size());
  }
  std::vector<std::byte> ws(attention_workspace_bytes(p, ctx));
  p.workspace = ws.empty() ? nullptr : ws.data();
  p.workspace_bytes = ws.size();
  const status st =
      isa ? cpu::attention_partial_with_isa(p, ctx.pool, *isa, ext) : attention_partial(p, ctx);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return r;
}

void expect_close(const attn_result& got, const attn_result& ref, const tolerance& tol,
                  const std::string& what) {
  testing::expect_close(got, ref, tol.out_rel, tol.lse_rel, what);
}

std::vector<attn_case> sweep_cases() {
  struct dims {
    std::int64_t k, v;
    bool mla;
  };
  const dims all_dims[] = {{8, 8, false},     {16, 16, false}, {64, 64, false},
                           {128, 128, false}, {40, 32, true},  {576, 512, true}};
  const dtype types[] = {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3};
  std::vector<attn_case> cases;
  std::uint64_t seed = 100;
  for (const dims& dm : all_dims) {
    for (dtype t : types) {
      for (std::int64_t bt : {16, 32}) {
        // Head ratios 1..16 spread over the sweep (every tile shape: 1, 2, 4 and remainders).
        const std::int64_t ratios[] = {1, 2, 3, 4, 5, 6, 7, 8, 16};
        const std::int64_t ratio = ratios[seed % std::size(ratios)];
        attn_case c;
        c.key_dim = dm.k;
        c.value_dim = dm.v;
        c.mla = dm.mla;
        c.num_kv_heads = dm.mla ? 1 : 1 + static_cast<std::int64_t>(seed % 2);
        c.num_q_heads =
            c.num_kv_heads * (dm.mla ? 16 - static_cast<std::int64_t>(seed % 3) : ratio);
        c.type = t;
        c.block_tokens = bt;
        // Past 32 blocks the optimised kernel splits into chunks and merges them.
        c.num_blocks = dm.k >= 512 ? 12 + static_cast<std::int64_t>(seed % 30)
                                   : 20 + static_cast<std::int64_t>((seed * 7) % 60);
        c.k_scale = seed % 3 == 0 ? 0.75f : 1.0f;
        c.v_scale = seed % 4 == 1 ? 1.5f : 1.0f;
        c.seed = seed++;
        cases.push_back(c);
      }
    }
  }
  return cases;
}

TEST(AttentionReference, MatchesHandComputedValues) {
  // One head, dim 1, keys 0 and ln 2: weights 1/3 and 2/3, lse = ln 3, out = 3/3 + 2*6/3 = 5.
  attn_case c;
  c.key_dim = c.value_dim = 1;
  c.num_blocks = 1;
  c.scattered = false;
  attn_fixture f(c);
  f.blocks[0].num_tokens = 2;
  const float keys[] = {0.0f, std::log(2.0f)};
  const float values[] = {3.0f, 6.0f};
  auto* page = reinterpret_cast<float*>(f.pool.data());
  for (int t = 0; t < 2; ++t) {
    page[f.layout.key_offset(0, t)] = keys[t];
    page[f.layout.value_offset(0, t)] = values[t];
  }
  f.q = {1.0f};
  f.query_pos = {1};
  attention_partial_params p = f.params(nullptr, nullptr);
  float out = 0.0f;
  float lse = 0.0f;
  p.out = &out;
  p.lse = &lse;
  p.softmax_scale = 1.0f;
  for (const exec_context ctx : {reference_ctx, exec_context{backend::cpu, nullptr, nullptr}}) {
    ASSERT_TRUE(attention_partial(p, ctx).ok());
    EXPECT_NEAR(out, 5.0f, 1e-6) << backend_name(ctx.backend);
    EXPECT_NEAR(lse, std::log(3.0f), 1e-6) << backend_name(ctx.backend);
  }
  // Causal: a query at position 0 sees only the first key.
  f.query_pos = {0};
  p.query_pos = f.query_pos.data();
  for (const exec_context ctx : {reference_ctx, exec_context{backend::cpu, nullptr, nullptr}}) {
    ASSERT_TRUE(attention_partial(p, ctx).ok());
    EXPECT_NEAR(out, 3.0f, 1e-6) << backend_name(ctx.backend);
    EXPECT_NEAR(lse, 0.0f, 1e-6) << backend_name(ctx.backend);
  }
}

TEST(AttentionOptimized, MatchesReferenceOverSweep) {
  thread_pool pool(2);
  const exec_context cpu_ctx{backend::cpu, &pool, nullptr};
  for (const attn_case& c : sweep_cases()) {
    const attn_fixture f(c);
    const attn_result ref = run_attention(f, reference_ctx);
    const attn_result opt = run_attention(f, cpu_ctx);
    expect_close(opt, ref, tolerance_for(c.type), case_name(c));
  }
}

TEST(AttentionOptimized, EveryEngineMatchesReference) {
  // The AVX2 and scalar engines serve machines without AVX-512, and AVX-512 without its
  // extensions (fp8 through F16C instead of the VBMI byte tables) those without VBMI; check them
  // here too.
  struct engine_case {
    simd::isa isa;
    simd::isa_ext ext;
  };
  const engine_case engines[] = {{simd::isa::scalar, simd::isa_ext::none},
                                 {simd::isa::avx2, simd::isa_ext::none},
                                 {simd::isa::avx512, simd::isa_ext::none},
                                 {simd::isa::avx512, simd::isa_ext::vbmi}};
  for (const engine_case& e : engines) {
    std::uint64_t i = 0;
    for (const attn_case& c : sweep_cases()) {
      // A third of the sweep per engine keeps this quick; every fp8 case for the fp8 engines.
      if (i++ % 3 != 0 && !(c.type == dtype::fp8_e4m3 && e.isa == simd::isa::avx512)) continue;
      const attn_fixture f(c);
      const attn_result ref = run_attention(f, reference_ctx);
      const attn_result opt =
          run_attention(f, {backend::cpu, nullptr, nullptr}, nullptr, e.isa, e.ext);
      expect_close(opt, ref, tolerance_for(c.type),
                   std::string(simd::isa_name(e.isa)) + " ext " +
                       std::to_string(static_cast<int>(e.ext)) + " " + case_name(c));
    }
  }
}

TEST(AttentionOptimized, MultiQueryCausalChunksMatchReference) {
  // Prefill-style: many queries whose positions interleave with the (scattered) key positions,
  // some before every key (lse -inf), some after all of them.
  for (const dtype t : {dtype::f32, dtype::bf16, dtype::fp8_e4m3}) {
    for (const std::int64_t ratio : {1, 4, 5}) {
      attn_case c;
      c.key_dim = c.value_dim = 64;
      c.num_kv_heads = 2;
      c.num_q_heads = 2 * ratio;
      c.type = t;
      c.num_blocks = 45;
      c.num_queries = 9;
      c.seed = 500 + static_cast<std::uint64_t>(ratio);
      const attn_fixture f(c);
      const attn_result ref = run_attention(f, reference_ctx);
      thread_pool pool(3);
      const attn_result opt = run_attention(f, {backend::cpu, &pool, nullptr});
      expect_close(opt, ref, tolerance_for(t), case_name(c));
      EXPECT_TRUE(std::isinf(ref.lse[0]) && ref.lse[0] < 0) << "first query sees no key";
      EXPECT_TRUE(std::isfinite(ref.lse.back())) << "last query sees every key";
    }
  }
  // Non-causal: every query sees every key.
  attn_case c;
  c.num_queries = 3;
  c.causal = false;
  c.num_q_heads = 4;
  const attn_fixture f(c);
  expect_close(run_attention(f, {backend::cpu, nullptr, nullptr}), run_attention(f, reference_ctx),
               tolerance_for(c.type), case_name(c));
}

TEST(AttentionOptimized, ZeroBlocksGiveMinusInfinityAndZeros) {
  attn_case c;
  c.num_blocks = 0;
  c.num_q_heads = 4;
  c.num_queries = 2;
  const attn_fixture f(c);
  for (const exec_context ctx : {reference_ctx, exec_context{backend::cpu, nullptr, nullptr}}) {
    const attn_result r = run_attention(f, ctx);
    for (float x : r.out) EXPECT_EQ(x, 0.0f) << backend_name(ctx.backend);
    for (float x : r.lse) EXPECT_EQ(x, -std::numeric_limits<float>::infinity());
  }
}

TEST(AttentionOptimized, BitIdenticalForAnyThreadCount) {
  attn_case gqa;
  gqa.key_dim = gqa.value_dim = 128;
  gqa.num_kv_heads = 2;
  gqa.num_q_heads = 8;
  gqa.type = dtype::bf16;
  gqa.num_blocks = 150;  // 5 chunks
  attn_case mla;
  mla.key_dim = 576;
  mla.value_dim = 512;
  mla.mla = true;
  mla.num_q_heads = 16;
  mla.num_blocks = 70;
  attn_case prefill = gqa;
  prefill.num_queries = 5;
  prefill.type = dtype::fp8_e4m3;
  for (const attn_case& c : {gqa, mla, prefill}) {
    const attn_fixture f(c);
    const attn_result single = run_attention(f, {backend::cpu, nullptr, nullptr});
    for (int threads : {1, 2, 4}) {
      thread_pool pool(threads);
      const attn_result r = run_attention(f, {backend::cpu, &pool, nullptr});
      EXPECT_EQ(std::memcmp(r.out.data(), single.out.data(), r.out.size() * sizeof(float)), 0)
          << case_name(c) << " threads " << threads;
      EXPECT_EQ(std::memcmp(r.lse.data(), single.lse.data(), r.lse.size() * sizeof(float)), 0)
          << case_name(c) << " threads " << threads;
    }
  }
}

// The exactness property: attention over a request's blocks split across two ranks, merged with
// lse_merge, equals attention over all of them.
TEST(AttentionOptimized, ShardSplitAndMergeEqualsFullAttention) {
  std::vector<attn_case> cases;
  for (const dtype t : {dtype::f32, dtype::bf16, dtype::fp8_e4m3}) {
    attn_case c;
    c.key_dim = c.value_dim = 128;
    c.num_kv_heads = 2;
    c.num_q_heads = 8;
    c.type = t;
    c.num_blocks = 90;
    c.num_queries = t == dtype::f32 ? 4 : 1;
    c.seed = 900 + static_cast<std::uint64_t>(t);
    cases.push_back(c);
  }
  attn_case mla;
  mla.key_dim = 576;
  mla.value_dim = 512;
  mla.mla = true;
  mla.num_q_heads = 8;
  mla.type = dtype::bf16;
  mla.num_blocks = 40;
  cases.push_back(mla);
  thread_pool pool(2);
  for (const attn_case& c : cases) {
    const attn_fixture f(c);
    for (const exec_context ctx : {exec_context{backend::cpu, &pool, nullptr}, reference_ctx}) {
      const attn_result full = run_attention(f, ctx);
      // Round-robin over two ranks in block-table order, as the placement rule does.
      std::vector<kv_block_ref> shards[2];
      for (std::size_t b = 0; b < f.blocks.size(); ++b) shards[b % 2].push_back(f.blocks[b]);
      const attn_result part0 = run_attention(f, ctx, &shards[0]);
      const attn_result part1 = run_attention(f, ctx, &shards[1]);
      std::vector<float> partial_out = part0.out;
      partial_out.insert(partial_out.end(), part1.out.begin(), part1.out.end());
      std::vector<float> partial_lse = part0.lse;
      partial_lse.insert(partial_lse.end(), part1.lse.begin(), part1.lse.end());
      attn_result merged;
      merged.out.resize(f.out_size());
      merged.lse.resize(f.lse_size());
      lse_merge_params mp;
      mp.partial_out = partial_out.data();
      mp.partial_lse = partial_lse.data();
      mp.num_partials = 2;
      mp.num_rows = static_cast<std::int64_t>(f.lse_size());
      mp.dim = c.value_dim;
      mp.out = merged.out.data();
      mp.lse = merged.lse.data();
      ASSERT_TRUE(lse_merge(mp, ctx).ok());
      const tolerance tol{c.type, shard_merge_rel, shard_merge_rel};
      expect_close(merged, full, tol, std::string(backend_name(ctx.backend)) + " " + case_name(c));
    }
  }
}

TEST(AttentionOptimized, RejectsBadBlocksAndSmallWorkspace) {
  attn_case c;
  c.num_blocks = 40;
  attn_fixture f(c);
  float out[64];
  float lse[1];
  attention_partial_params p = f.params(out, lse);
  const exec_context cpu_ctx{backend::cpu, nullptr, nullptr};
  const std::size_t need = attention_workspace_bytes(p, cpu_ctx);
  ASSERT_GT(need, 0u);  // two chunks
  std::vector<std::byte> ws(need - 4);
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  EXPECT_EQ(attention_partial(p, cpu_ctx).code(), errc::failed_precondition);
  ws.resize(need);
  p.workspace = ws.data();
  p.workspace_bytes = ws.size();
  EXPECT_TRUE(attention_partial(p, cpu_ctx).ok());
  f.blocks[3].num_tokens = static_cast<std::int32_t>(c.block_tokens + 1);
  EXPECT_EQ(attention_partial(p, cpu_ctx).code(), errc::invalid_argument);
  EXPECT_EQ(attention_partial(p, reference_ctx).code(), errc::invalid_argument);
}

// --- kernels/cpu/simd.hpp -----------------------------------------------------------------------

TEST(AttentionSimd, ConversionsMatchScalarForEveryBitPattern) {
  std::vector<std::uint16_t> all16(65536);
  std::iota(all16.begin(), all16.end(), std::uint16_t{0});
  std::vector<std::uint8_t> all8(256);
  std::iota(all8.begin(), all8.end(), std::uint8_t{0});
  auto same = [](float a, float b) { return a == b || (std::isnan(a) && std::isnan(b)); };
  // bf16 / f16: every pattern through axpy with alpha 1 (y = 0 + x exactly).
  for (const simd::isa isa : {simd::isa::scalar, simd::isa::avx2, simd::isa::avx512}) {
    if (simd::cpu_isa() < isa) continue;
    std::vector<float> y(all16.size());
    for (const bool is_bf16 : {true, false}) {
      std::fill(y.begin(), y.end(), 0.0f);
      const auto n = static_cast<std::int64_t>(all16.size());
      if (is_bf16) {
        const auto* x = reinterpret_cast<const bf16_t*>(all16.data());
        if (isa == simd::isa::avx512) simd::axpy_avx512(1.0f, x, y.data(), n);
        if (isa == simd::isa::avx2) simd::axpy_avx2(1.0f, x, y.data(), n);
        if (isa == simd::isa::scalar) simd::axpy_scalar(1.0f, x, y.data(), n);
      } else {
        const auto* x = reinterpret_cast<const f16_t*>(all16.data());
        if (isa == simd::isa::avx512) simd::axpy_avx512(1.0f, x, y.data(), n);
        if (isa == simd::isa::avx2) simd::axpy_avx2(1.0f, x, y.data(), n);
        if (isa == simd::isa::scalar) simd::axpy_scalar(1.0f, x, y.data(), n);
      }
      int mismatches = 0;
      for (std::size_t i = 0; i < all16.size(); ++i) {
        const float want = is_bf16 ? to_f32(bf16_t{all16[i]}) : to_f32(f16_t{all16[i]});
        if (!same(y[i], want)) ++mismatches;
      }
      EXPECT_EQ(mismatches, 0) << simd::isa_name(isa) << (is_bf16 ? " bf16" : " f16");
    }
    // fp8: every pattern, NaN included.
    std::fill(y.begin(), y.end(), 0.0f);
    const auto* x8 = reinterpret_cast<const fp8_e4m3_t*>(all8.data());
    if (isa == simd::isa::avx512) simd::axpy_avx512(1.0f, x8, y.data(), 256);
    if (isa == simd::isa::avx2) simd::axpy_avx2(1.0f, x8, y.data(), 256);
    if (isa == simd::isa::scalar) simd::axpy_scalar(1.0f, x8, y.data(), 256);
    int mismatches = 0;
    for (std::size_t i = 0; i < 256; ++i) mismatches += same(y[i], to_f32(x8[i])) ? 0 : 1;
    EXPECT_EQ(mismatches, 0) << simd::isa_name(isa) << " fp8";
  }
}

#if HELIX_SIMD_X86
// The kernels' fast loaders, element by element into arrays (callers check cpu_isa() first).
HELIX_SIMD_AVX512 void fp8_div256_avx512(const fp8_e4m3_t* x, float* y) {  // 256 values
  for (int i = 0; i < 256; i += 16) _mm512_storeu_ps(y + i, simd::load16_div256(x + i));
}
HELIX_SIMD_AVX2 void fp8_div256_avx2(const fp8_e4m3_t* x, float* y) {
  for (int i = 0; i < 256; i += 8) _mm256_storeu_ps(y + i, simd::load8_div256(x + i));
}
HELIX_SIMD_AVX512 void bf16_split_avx512(const bf16_t* x, float* y, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 32) {
    __m512 even;
    __m512 odd;
    simd::load32_split(x + i, even, odd);
    _mm512_storeu_ps(y + i, even);
    _mm512_storeu_ps(y + i + 16, odd);
  }
}
HELIX_SIMD_AVX512_VBMI void fp8_tables_avx512(const fp8_e4m3_t* x, float* y) {  // 256 values
  for (int i = 0; i < 256; i += 64) {
    __m512 v[4];
    simd::fp8x64_to_f32(_mm512_loadu_si512(x + i), v);
    for (int q = 0; q < 4; ++q) _mm512_storeu_ps(y + i + 16 * q, v[q]);
  }
}
HELIX_SIMD_AVX512_VBMI void fp8_tables_split_avx512(const fp8_e4m3_t* x, float* y) {  // 256
  for (int i = 0; i < 256; i += 32) {
    __m512 even;
    __m512 odd;
    simd::fp8x32_to_f32_split(x + i, even, odd);
    _mm512_storeu_ps(y + i, even);
    _mm512_storeu_ps(y + i + 16, odd);
  }
}
HELIX_SIMD_AVX512 void reduce16x16_avx512(const float* in, float* out) {  // in [16][16]
  __m512 a[16];
  for (int i = 0; i < 16; ++i) a[i] = _mm512_loadu_ps(in + 16 * i);
  _mm512_storeu_ps(out, simd::reduce16x16(a));
}
HELIX_SIMD_AVX512 void exp_avx512(const float* in, float* out) {
  _mm512_storeu_ps(out, simd::exp16(_mm512_loadu_ps(in)));
}
HELIX_SIMD_AVX2 void exp_avx2(const float* in, float* out) {
  _mm256_storeu_ps(out, simd::exp8(_mm256_loadu_ps(in)));
  _mm256_storeu_ps(out + 8, simd::exp8(_mm256_loadu_ps(in + 8)));
}
#endif

TEST(AttentionSimd, KernelLoadersAreExact) {
#if HELIX_SIMD_X86
  auto same = [](float a, float b) { return a == b || (std::isnan(a) && std::isnan(b)); };
  std::vector<fp8_e4m3_t> all8(256);
  for (std::size_t i = 0; i < 256; ++i) all8[i].bits = static_cast<std::uint8_t>(i);
  std::vector<float> y(256);
  for (const simd::isa isa : {simd::isa::avx2, simd::isa::avx512}) {
    if (simd::cpu_isa() < isa) continue;
    if (isa == simd::isa::avx512) fp8_div256_avx512(all8.data(), y.data());
    if (isa == simd::isa::avx2) fp8_div256_avx2(all8.data(), y.data());
    int bad = 0;
    for (std::size_t i = 0; i < 256; ++i) bad += same(y[i] * 256.0f, to_f32(all8[i])) ? 0 : 1;
    EXPECT_EQ(bad, 0) << simd::isa_name(isa) << " fp8 / 256";
  }
  if (simd::cpu_isa() < simd::isa::avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  std::vector<bf16_t> all16(65536);
  for (std::size_t i = 0; i < all16.size(); ++i) all16[i].bits = static_cast<std::uint16_t>(i);
  std::vector<float> z(all16.size());
  bf16_split_avx512(all16.data(), z.data(), all16.size());
  int bad = 0;
  for (std::size_t g = 0; g < all16.size(); g += 32) {
    for (std::size_t i = 0; i < 16; ++i) {
      bad += same(z[g + i], to_f32(all16[g + 2 * i])) ? 0 : 1;
      bad += same(z[g + 16 + i], to_f32(all16[g + 2 * i + 1])) ? 0 : 1;
    }
  }
  EXPECT_EQ(bad, 0) << "bf16 pair-split";
#else
  GTEST_SKIP() << "x86 only";
#endif
}

// The byte tables give every e4m3 code's exact value, NaN bits included; fp8x64_to_f32 puts each
// in its element's lane and fp8x32_to_f32_split in pair-split order (codes in a scrambled order,
// so a lane mix-up cannot hide).
TEST(AttentionSimd, Fp8ByteTablesAreExactForEveryCode) {
  for (unsigned code = 0; code < 256; ++code) {
    const std::uint32_t want = f32_bits(to_f32(fp8_e4m3_t{static_cast<std::uint8_t>(code)}));
    const std::uint32_t got =
        (std::uint32_t{simd::e4m3_magnitude_bf16(code & 0x7fu)} << 16) | ((code & 0x80u) << 24);
    EXPECT_EQ(got, want) << "code " << code;
  }
#if HELIX_SIMD_X86
  if (simd::cpu_isa() < simd::isa::avx512 || !simd::cpu_has_avx512_vbmi()) {
    GTEST_SKIP() << "no AVX512_VBMI on this CPU";
  }
  std::vector<fp8_e4m3_t> codes(256);
  for (std::size_t i = 0; i < 256; ++i) codes[i].bits = static_cast<std::uint8_t>(i * 37 + 11);
  std::vector<float> y(256);
  fp8_tables_avx512(codes.data(), y.data());
  int bad = 0;
  for (std::size_t i = 0; i < 256; ++i) bad += f32_bits(y[i]) == f32_bits(to_f32(codes[i])) ? 0 : 1;
  EXPECT_EQ(bad, 0) << "fp8x64_to_f32";
  fp8_tables_split_avx512(codes.data(), y.data());
  bad = 0;
  for (std::size_t g = 0; g < 256; g += 32) {
    for (std::size_t i = 0; i < 16; ++i) {
      bad += f32_bits(y[g + i]) == f32_bits(to_f32(codes[g + 2 * i])) ? 0 : 1;
      bad += f32_bits(y[g + 16 + i]) == f32_bits(to_f32(codes[g + 2 * i + 1])) ? 0 : 1;
    }
  }
  EXPECT_EQ(bad, 0) << "fp8x32_to_f32_split";
#else
  GTEST_SKIP() << "x86 only";
#endif
}

TEST(AttentionSimd, ReduceAndExp) {
#if HELIX_SIMD_X86
  if (simd::cpu_isa() < simd::isa::avx2) GTEST_SKIP() << "no AVX2 on this CPU";
  float x[16];
  for (int i = 0; i < 16; ++i) x[i] = -0.37f * static_cast<float>(i * i) + 7.5f;
  x[15] = -std::numeric_limits<float>::infinity();
  float e[16];
  exp_avx2(x, e);
  for (int i = 0; i < 15; ++i) EXPECT_NEAR(e[i], std::exp(x[i]), 3e-7 * std::exp(x[i])) << i;
  EXPECT_EQ(e[15], 0.0f);
  if (simd::cpu_isa() < simd::isa::avx512) GTEST_SKIP() << "no AVX-512 on this CPU";
  exp_avx512(x, e);
  for (int i = 0; i < 15; ++i) EXPECT_NEAR(e[i], std::exp(x[i]), 3e-7 * std::exp(x[i])) << i;
  EXPECT_EQ(e[15], 0.0f);
  float in[256];
  for (int i = 0; i < 256; ++i) in[i] = static_cast<float>((i / 16) * 100 + i % 16);
  float out[16];
  reduce16x16_avx512(in, out);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(out[i], static_cast<float>(i * 1600 + 120)) << i;
#else
  GTEST_SKIP() << "x86 only";
#endif
}

TEST(AttentionSimd, DotHandlesEveryLengthAndDtype) {
  for (std::int64_t n : {1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 576}) {
    std::vector<float> a(static_cast<std::size_t>(n));
    std::vector<bf16_t> b(a.size());
    double want = 0.0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      a[i] = urand(5, 1, i);
      b[i] = to_bf16(urand(5, 2, i));
      want += static_cast<double>(a[i]) * to_f32(b[i]);
    }
    EXPECT_NEAR(simd::dot(a.data(), b.data(), n), want, 1e-5) << n;
    EXPECT_NEAR(simd::dot_scalar(a.data(), b.data(), n), want, 1e-5) << n;
  }
}

}  // namespace
}  // namespace helix::kernels
