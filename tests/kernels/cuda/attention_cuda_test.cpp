// CUDA partial attention and LSE merge against the CPU reference (the oracle), over a sweep of
// head dims (64, 128, MLA 512+64, small MLA 32+8 and odd sizes), q/kv ratios (1..16, 128 for MLA),
// KV dtypes, scattered pages (shuffled slots and block order, partially filled blocks, gaps in
// positions, NaN in every byte no kernel may read), multi-query causal chunks, zero blocks and
// contexts up to 64K tokens; plus determinism and the behaviour without a GPU. Every GPU test
// skips when no device is present.
//
// Tolerances (CUDA vs the double-precision reference on the same stored bits):
//   attention out: max |out_cuda - out_ref| <= 1e-4 * max |out_ref|   (out is a convex combination
//                  of values, so this is a relative error; f32 scores, exp2f, f32 accumulation)
//   attention lse: |lse_cuda - lse_ref| <= 1e-4 * max(1, |lse_ref|); -inf exactly where ref is -inf
//   lse merge:     out 2e-6 relative as above, lse 1e-6 * max(1, |lse_ref|)
//   determinism:   two runs with the same inputs are bit-identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../attention_cases.hpp"
#include "core/rng.hpp"
#include "kernels/attention.hpp"
#include "kernels/cuda/cuda_ops.hpp"
#include "kernels/merge.hpp"

namespace helix::kernels {
namespace {

constexpr double attn_out_rel = 1e-4;
constexpr double attn_lse_rel = 1e-4;
constexpr double merge_out_rel = 2e-6;
constexpr double merge_lse_rel = 1e-6;

constexpr float neg_inf = -std::numeric_limits<float>::infinity();
const exec_context cuda_ctx{backend::cuda, nullptr, nullptr};

#define HELIX_SKIP_WITHOUT_GPU()                                                       \
  do {                                                                                 \
    if (::helix::kernels::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

using testing::attn_case;
using testing::attn_result;
using testing::expect_close;
using testing::reference_ctx;
using testing::urand;

std::string case_name(const attn_case& c) {
  return fmt::format("k{}v{}{}_kv{}_q{}_{}_bt{}_blocks{}_nq{}{}", c.key_dim, c.value_dim,
                     c.mla ? "mla" : "", c.num_kv_heads, c.num_q_heads, dtype_name(c.type),
                     c.block_tokens, c.num_blocks, c.num_queries, c.causal ? "_causal" : "");
}

// One query: after every key (decode). Several: spread from before the first key (sees nothing)
// to after the last, so the causal mask cuts through blocks.
std::int64_t query_position(std::int64_t end, std::int64_t i, std::int64_t n) {
  return n == 1 ? end : (end + 8) * i / (n - 1) - 3;
}

// One request's KV on one rank, on the host (see testing::paged_fixture); gaps after odd blocks.
struct attn_fixture : testing::paged_fixture {
  static constexpr testing::scatter_pattern scatter{.spare_slot_divisor = 3,
                                                    .first_pos = 5,
                                                    .partial_every = 5,
                                                    .partial_at = 2,
                                                    .gap_parity = 1,
                                                    .query_pos = &query_position};
  explicit attn_fixture(const attn_case& cs) : paged_fixture(cs, scatter) {}
};

attn_result run_reference(const attn_fixture& f) {
  attn_result r = testing::nan_result(f);
  const status st = attention_partial(f.params(r.out.data(), r.lse.data()), reference_ctx);
  EXPECT_TRUE(st.ok()) << st.to_string();
  return r;
}

expected<cuda::device_buffer> upload(const void* src, std::size_t bytes) {
  HELIX_ASSIGN_OR_RETURN(cuda::device_buffer buf, cuda::device_buffer::allocate(bytes));
  HELIX_RETURN_IF_ERROR(cuda::copy_to_device(buf.data(), src, bytes));
  return buf;
}

// The fixture on the device; outputs are pre-filled with NaN so a row the kernel skips shows.
struct device_fixture {
  cuda::device_buffer q, query_pos, pool, blocks, out, lse, workspace;
  attention_partial_params params;

  static expected<device_fixture> create(const attn_fixture& f) {
    device_fixture d;
    HELIX_ASSIGN_OR_RETURN(d.q, upload(f.q.data(), f.q.size() * sizeof(float)));
    HELIX_ASSIGN_OR_RETURN(d.query_pos,
                           upload(f.query_pos.data(), f.query_pos.size() * sizeof(std::int64_t)));
    HELIX_ASSIGN_OR_RETURN(d.pool, upload(f.pool.data(), f.pool.size()));
    HELIX_ASSIGN_OR_RETURN(d.blocks,
                           upload(f.blocks.data(), f.blocks.size() * sizeof(kv_block_ref)));
    const attn_result nan = testing::nan_result(f);
    HELIX_ASSIGN_OR_RETURN(d.out, upload(nan.out.data(), nan.out.size() * sizeof(float)));
    HELIX_ASSIGN_OR_RETURN(d.lse, upload(nan.lse.data(), nan.lse.size() * sizeof(float)));
    d.params = f.params();
    d.params.q = static_cast<const float*>(d.q.data());
    d.params.query_pos = static_cast<const std::int64_t*>(d.query_pos.data());
    d.params.kv_pool = d.pool.data();
    d.params.blocks = static_cast<const kv_block_ref*>(d.blocks.data());
    if (f.blocks.empty()) d.params.blocks = nullptr;
    d.params.out = static_cast<float*>(d.out.data());
    d.params.lse = static_cast<float*>(d.lse.data());
    HELIX_ASSIGN_OR_RETURN(
        d.workspace, cuda::device_buffer::allocate(attention_workspace_bytes(d.params, cuda_ctx)));
    d.params.workspace = d.workspace.data();
    d.params.workspace_bytes = d.workspace.bytes();
    return d;
  }

  expected<attn_result> run() const {
    HELIX_RETURN_IF_ERROR(attention_partial(params, cuda_ctx));
    HELIX_RETURN_IF_ERROR(cuda::synchronize(cuda_ctx.stream));
    attn_result r;
    r.out.resize(out.bytes() / sizeof(float));
    r.lse.resize(lse.bytes() / sizeof(float));
    HELIX_RETURN_IF_ERROR(cuda::copy_to_host(r.out.data(), out.data(), out.bytes()));
    HELIX_RETURN_IF_ERROR(cuda::copy_to_host(r.lse.data(), lse.data(), lse.bytes()));
    return r;
  }
};

// Runs one case on the GPU and on the reference and compares them.
void check_case(const attn_case& c) {
  const attn_fixture f(c);
  const attn_result ref = run_reference(f);
  expected<device_fixture> dev = device_fixture::create(f);
  ASSERT_TRUE(dev.has_value()) << case_name(c) << ": " << dev.error().to_string();
  expected<attn_result> got = dev->run();
  ASSERT_TRUE(got.has_value()) << case_name(c) << ": " << got.error().to_string();
  expect_close(*got, ref, attn_out_rel, attn_lse_rel, case_name(c));
}

std::vector<attn_case> sweep_cases() {
  struct dims {
    std::int64_t k, v;
    bool mla;
    std::int64_t kv_heads, q_heads;
  };
  // Ratios 1, 4, 8, 16 for GQA; MLA 512+64 with 128 heads and the small 32+8 MLA with 16; odd
  // sizes (not multiples of 4 or of 16 bytes) take the padded and the scalar-load paths.
  const dims all_dims[] = {{64, 64, false, 2, 2},    {64, 64, false, 2, 8},
                           {128, 128, false, 1, 8},  {128, 128, false, 2, 32},
                           {576, 512, true, 1, 128}, {40, 32, true, 1, 16},
                           {36, 20, false, 1, 5},    {8, 8, false, 3, 9}};
  const dtype types[] = {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3};
  std::vector<attn_case> cases;
  std::uint64_t seed = 1000;
  for (const dims& dm : all_dims) {
    for (dtype t : types) {
      attn_case c;
      c.key_dim = dm.k;
      c.value_dim = dm.v;
      c.mla = dm.mla;
      c.num_kv_heads = dm.kv_heads;
      c.num_q_heads = dm.q_heads;
      c.type = t;
      // Block sizes 16 (the default), 64 and 5 (several tiles per block; rows not multiples of 4).
      const std::int64_t block_sizes[] = {16, 16, 64, 5};
      c.block_tokens = block_sizes[seed % 4];
      // Past 256 tokens the kernel splits the KV into chunks and merges them; some cases stay
      // below (one chunk, written directly).
      c.num_blocks = seed % 5 == 0 ? 9 : 40 + static_cast<std::int64_t>((seed * 7) % 50);
      c.num_queries = seed % 3 == 0 ? 3 : 1;
      c.k_scale = t == dtype::fp8_e4m3 ? 0.25f : (seed % 3 == 1 ? 0.75f : 1.0f);
      c.v_scale = t == dtype::fp8_e4m3 ? 0.5f : (seed % 4 == 1 ? 1.5f : 1.0f);
      c.seed = seed++;
      cases.push_back(c);
    }
  }
  return cases;
}

TEST(AttentionCuda, MatchesReferenceOverSweep) {
  HELIX_SKIP_WITHOUT_GPU();
  for (const attn_case& c : sweep_cases()) check_case(c);
}

TEST(AttentionCuda, MultiQueryCausalChunksMatchReference) {
  HELIX_SKIP_WITHOUT_GPU();
  // Prefill-style chunks: the first query sees no key (lse -inf), the last sees every key; 16
  // queries x 8 heads are 128 rows per KV head, more than one CTA's row tile.
  for (const dtype t : {dtype::f32, dtype::bf16, dtype::fp8_e4m3}) {
    for (const std::int64_t ratio : {1, 4, 8}) {
      attn_case c;
      c.key_dim = c.value_dim = 128;
      c.num_kv_heads = 2;
      c.num_q_heads = 2 * ratio;
      c.type = t;
      c.num_blocks = 70;
      c.num_queries = 16;
      c.seed = 2000 + static_cast<std::uint64_t>(ratio);
      const attn_fixture f(c);
      const attn_result ref = run_reference(f);
      EXPECT_TRUE(std::isinf(ref.lse.front())) << "the first query sees no key";
      EXPECT_TRUE(std::isfinite(ref.lse.back())) << "the last query sees every key";
      check_case(c);
    }
  }
  attn_case mla;
  mla.key_dim = 576;
  mla.value_dim = 512;
  mla.mla = true;
  mla.num_q_heads = 128;
  mla.type = dtype::bf16;
  mla.num_blocks = 30;
  mla.num_queries = 4;
  check_case(mla);
}

TEST(AttentionCuda, NonCausalMatchesReference) {
  HELIX_SKIP_WITHOUT_GPU();
  attn_case c;
  c.num_queries = 3;
  c.causal = false;
  c.num_kv_heads = 2;
  c.num_q_heads = 8;
  c.num_blocks = 33;
  check_case(c);
}

TEST(AttentionCuda, ZeroBlocksGiveMinusInfinityAndZeros) {
  HELIX_SKIP_WITHOUT_GPU();
  attn_case c;
  c.num_blocks = 0;
  c.num_q_heads = 4;
  c.num_queries = 2;
  const attn_fixture f(c);
  expected<device_fixture> dev = device_fixture::create(f);
  ASSERT_TRUE(dev.has_value()) << dev.error().to_string();
  expected<attn_result> got = dev->run();
  ASSERT_TRUE(got.has_value()) << got.error().to_string();
  for (float x : got->out) EXPECT_EQ(x, 0.0f);
  for (float x : got->lse) EXPECT_EQ(x, neg_inf);
}

TEST(AttentionCuda, LongContextMatchesReferenceAndSplits) {
  HELIX_SKIP_WITHOUT_GPU();
  // 64K tokens: the split-KV path with its largest chunk count.
  attn_case c;
  c.key_dim = c.value_dim = 128;
  c.num_kv_heads = 1;
  c.num_q_heads = 8;
  c.type = dtype::bf16;
  c.num_blocks = 4096;
  c.scattered = true;
  c.seed = 3000;
  const attn_fixture f(c);
  EXPECT_GT(attention_workspace_bytes(f.params(), cuda_ctx), 0u) << "64K tokens must split";
  check_case(c);
  // MLA at 4K tokens with 128 heads (the 64K MLA run is AttentionCuda.SlowLongMla).
  attn_case mla;
  mla.key_dim = 576;
  mla.value_dim = 512;
  mla.mla = true;
  mla.num_q_heads = 128;
  mla.type = dtype::fp8_e4m3;
  mla.k_scale = 0.25f;
  mla.num_blocks = 256;
  mla.seed = 3001;
  check_case(mla);
}

TEST(AttentionCuda, SlowLongMla) {
  HELIX_SKIP_WITHOUT_GPU();
  attn_case c;
  c.key_dim = 576;
  c.value_dim = 512;
  c.mla = true;
  c.num_q_heads = 128;
  c.type = dtype::bf16;
  c.num_blocks = 4096;
  c.seed = 3002;
  check_case(c);
}

TEST(AttentionCuda, BitIdenticalAcrossRuns) {
  HELIX_SKIP_WITHOUT_GPU();
  attn_case gqa;
  gqa.key_dim = gqa.value_dim = 128;
  gqa.num_kv_heads = 2;
  gqa.num_q_heads = 16;
  gqa.type = dtype::bf16;
  gqa.num_blocks = 1500;
  attn_case mla;
  mla.key_dim = 576;
  mla.value_dim = 512;
  mla.mla = true;
  mla.num_q_heads = 128;
  mla.type = dtype::fp8_e4m3;
  mla.num_blocks = 300;
  attn_case prefill = gqa;
  prefill.num_queries = 7;
  prefill.num_blocks = 200;
  for (const attn_case& c : {gqa, mla, prefill}) {
    const attn_fixture f(c);
    expected<device_fixture> dev = device_fixture::create(f);
    ASSERT_TRUE(dev.has_value()) << dev.error().to_string();
    expected<attn_result> a = dev->run();
    expected<attn_result> b = dev->run();
    ASSERT_TRUE(a.has_value() && b.has_value()) << case_name(c);
    EXPECT_EQ(std::memcmp(a->out.data(), b->out.data(), a->out.size() * sizeof(float)), 0)
        << case_name(c);
    EXPECT_EQ(std::memcmp(a->lse.data(), b->lse.data(), a->lse.size() * sizeof(float)), 0)
        << case_name(c);
  }
}

TEST(AttentionCuda, ShardSplitAndMergeMatchesWholeAttention) {
  HELIX_SKIP_WITHOUT_GPU();
  // Helix's exactness on the GPU: attention over two halves of the blocks, merged by the CUDA
  // merge, equals attention over all of them.
  attn_case c;
  c.key_dim = c.value_dim = 128;
  c.num_kv_heads = 2;
  c.num_q_heads = 8;
  c.type = dtype::f16;
  c.num_blocks = 120;
  c.num_queries = 2;
  const attn_fixture whole(c);
  const attn_result ref = run_reference(whole);
  std::vector<float> partial_out;
  std::vector<float> partial_lse;
  for (int half = 0; half < 2; ++half) {
    attn_fixture part = whole;
    const std::size_t mid = part.blocks.size() / 2;
    if (half == 0) part.blocks.resize(mid);
    if (half == 1) part.blocks.erase(part.blocks.begin(), part.blocks.begin() + mid);
    expected<device_fixture> dev = device_fixture::create(part);
    ASSERT_TRUE(dev.has_value()) << dev.error().to_string();
    expected<attn_result> r = dev->run();
    ASSERT_TRUE(r.has_value()) << r.error().to_string();
    partial_out.insert(partial_out.end(), r->out.begin(), r->out.end());
    partial_lse.insert(partial_lse.end(), r->lse.begin(), r->lse.end());
  }
  expected<cuda::device_buffer> d_out = upload(partial_out.data(), partial_out.size() * 4);
  expected<cuda::device_buffer> d_lse = upload(partial_lse.data(), partial_lse.size() * 4);
  expected<cuda::device_buffer> m_out = cuda::device_buffer::allocate(whole.out_size() * 4);
  expected<cuda::device_buffer> m_lse = cuda::device_buffer::allocate(whole.lse_size() * 4);
  ASSERT_TRUE(d_out && d_lse && m_out && m_lse);
  lse_merge_params mp;
  mp.partial_out = static_cast<const float*>(d_out->data());
  mp.partial_lse = static_cast<const float*>(d_lse->data());
  mp.num_partials = 2;
  mp.num_rows = static_cast<std::int64_t>(whole.lse_size());
  mp.dim = c.value_dim;
  mp.out = static_cast<float*>(m_out->data());
  mp.lse = static_cast<float*>(m_lse->data());
  ASSERT_TRUE(lse_merge(mp, cuda_ctx).ok());
  attn_result merged;
  merged.out.resize(whole.out_size());
  merged.lse.resize(whole.lse_size());
  ASSERT_TRUE(cuda::copy_to_host(merged.out.data(), m_out->data(), m_out->bytes()).ok());
  ASSERT_TRUE(cuda::copy_to_host(merged.lse.data(), m_lse->data(), m_lse->bytes()).ok());
  expect_close(merged, ref, attn_out_rel, attn_lse_rel, case_name(c));
}

// ---- LSE merge ----

struct merge_input {
  std::int64_t num_partials = 0;
  std::int64_t num_rows = 0;
  std::int64_t dim = 0;
  std::vector<float> out;  // [num_partials, num_rows, dim]
  std::vector<float> lse;  // [num_partials, num_rows]
};

// Random partials; about `empty_fraction` of them are -inf with NaN outputs (must be ignored),
// and row 0 is empty in every partial (out 0, lse -inf).
merge_input random_merge_input(std::int64_t parts, std::int64_t rows, std::int64_t dim,
                               std::uint64_t seed, float empty_fraction) {
  merge_input in{parts, rows, dim, {}, {}};
  in.out.resize(static_cast<std::size_t>(parts * rows * dim));
  in.lse.resize(static_cast<std::size_t>(parts * rows));
  for (std::size_t i = 0; i < in.out.size(); ++i) in.out[i] = urand(seed, 1, i);
  for (std::int64_t i = 0; i < parts; ++i) {
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto k = static_cast<std::size_t>(i * rows + r);
      const bool empty =
          r == 0 || random_uniform(seed, 2, 0, rng_purpose::test_data, k) < empty_fraction;
      in.lse[k] = empty ? neg_inf : 30.0f * urand(seed, 3, k);
      if (empty) {
        std::fill_n(in.out.begin() + static_cast<std::ptrdiff_t>(k * dim), dim,
                    std::numeric_limits<float>::quiet_NaN());
      }
    }
  }
  return in;
}

attn_result run_merge(const merge_input& in, bool on_gpu, bool want_lse) {
  attn_result r;
  r.out.assign(static_cast<std::size_t>(in.num_rows * in.dim),
               std::numeric_limits<float>::quiet_NaN());
  r.lse.assign(static_cast<std::size_t>(in.num_rows), want_lse ? 0.0f : 7.0f);
  lse_merge_params p;
  p.num_partials = in.num_partials;
  p.num_rows = in.num_rows;
  p.dim = in.dim;
  if (!on_gpu) {
    p.partial_out = in.out.data();
    p.partial_lse = in.lse.data();
    p.out = r.out.data();
    p.lse = want_lse ? r.lse.data() : nullptr;
    const status st = lse_merge(p, reference_ctx);
    EXPECT_TRUE(st.ok()) << st.to_string();
    return r;
  }
  expected<cuda::device_buffer> d_pout = upload(in.out.data(), in.out.size() * sizeof(float));
  expected<cuda::device_buffer> d_plse = upload(in.lse.data(), in.lse.size() * sizeof(float));
  expected<cuda::device_buffer> d_out = upload(r.out.data(), r.out.size() * sizeof(float));
  expected<cuda::device_buffer> d_lse = upload(r.lse.data(), r.lse.size() * sizeof(float));
  EXPECT_TRUE(d_pout && d_plse && d_out && d_lse);
  if (!(d_pout && d_plse && d_out && d_lse)) return r;
  p.partial_out = static_cast<const float*>(d_pout->data());
  p.partial_lse = static_cast<const float*>(d_plse->data());
  p.out = static_cast<float*>(d_out->data());
  p.lse = want_lse ? static_cast<float*>(d_lse->data()) : nullptr;
  const status st = lse_merge(p, cuda_ctx);
  EXPECT_TRUE(st.ok()) << st.to_string();
  EXPECT_TRUE(cuda::synchronize(nullptr).ok());
  EXPECT_TRUE(cuda::copy_to_host(r.out.data(), d_out->data(), d_out->bytes()).ok());
  EXPECT_TRUE(cuda::copy_to_host(r.lse.data(), d_lse->data(), d_lse->bytes()).ok());
  return r;
}

TEST(LseMergeCuda, MatchesReference) {
  HELIX_SKIP_WITHOUT_GPU();
  // Partial counts across the shared-memory weight group (256); dims on both sides of the
  // register path (512).
  std::uint64_t seed = 4000;
  for (const std::int64_t parts : {1, 2, 7, 128, 300}) {
    for (const std::int64_t dim : {1, 5, 128, 512, 700}) {
      const merge_input in = random_merge_input(parts, 9, dim, seed++, 0.2f);
      const attn_result ref = run_merge(in, false, true);
      const attn_result got = run_merge(in, true, true);
      const std::string what = fmt::format("parts {} dim {}", parts, dim);
      expect_close(got, ref, merge_out_rel, merge_lse_rel, what);
      for (std::int64_t d = 0; d < dim; ++d) EXPECT_EQ(got.out[static_cast<std::size_t>(d)], 0.0f);
      EXPECT_EQ(got.lse[0], neg_inf) << what << ": an all-empty row merges to -inf";
    }
  }
}

TEST(LseMergeCuda, NullLseAndDeterminism) {
  HELIX_SKIP_WITHOUT_GPU();
  const merge_input in = random_merge_input(64, 33, 256, 4100, 0.1f);
  const attn_result a = run_merge(in, true, false);
  const attn_result b = run_merge(in, true, false);
  EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)), 0);
  for (float x : a.lse) EXPECT_EQ(x, 7.0f) << "lse == nullptr: nothing written";
  expect_close(a, run_merge(in, false, false), merge_out_rel, merge_lse_rel, "null lse");
}

// ---- without a GPU ----

TEST(CudaWithoutDevice, WorkspaceNeverShrinksAsContextGrows) {
  // Pure host arithmetic (no device needed): a workspace sized for the longest context must fit
  // every shorter one, so the model can size it once.
  attn_case gqa;
  gqa.num_kv_heads = 1;
  gqa.num_q_heads = 4;
  gqa.num_blocks = 0;
  attn_case mla;
  mla.key_dim = 576;
  mla.value_dim = 512;
  mla.mla = true;
  mla.num_q_heads = 128;
  mla.num_blocks = 0;
  for (const attn_case& c : {gqa, mla}) {
    const attn_fixture f(c);
    attention_partial_params p = f.params();
    std::size_t prev = 0;
    for (std::int64_t nb = 0; nb <= 5000; ++nb) {
      p.num_blocks = nb;
      const std::size_t bytes = attention_workspace_bytes(p, cuda_ctx);
      ASSERT_GE(bytes, prev) << case_name(c) << " at " << nb << " blocks";
      prev = bytes;
    }
    EXPECT_GT(prev, 0u) << "long contexts split";
  }
}

TEST(CudaWithoutDevice, ReportsNoDeviceAndFailsCleanly) {
  // This one runs where there is no GPU: it checks that nothing crashes and errors are clear.
  const int count = cuda::device_count();
  EXPECT_GE(count, 0);
  if (count != 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_EQ(cuda::device_count(), 0) << "asking twice gives the same answer";

  attn_case c;
  c.num_q_heads = 2;
  const attn_fixture f(c);
  attn_result r;
  r.out.assign(f.out_size(), 1.0f);
  r.lse.assign(f.lse_size(), 1.0f);
  attention_partial_params p = f.params();
  p.out = r.out.data();
  p.lse = r.lse.data();
  std::vector<std::byte> ws(attention_workspace_bytes(p, cuda_ctx));
  p.workspace = ws.empty() ? nullptr : ws.data();
  p.workspace_bytes = ws.size();
  const status st = attention_partial(p, cuda_ctx);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(st.code(), errc::unavailable) << st.to_string();
  EXPECT_NE(st.message().find("CUDA"), std::string::npos) << st.to_string();

  lse_merge_params mp;
  mp.partial_out = r.out.data();
  mp.partial_lse = r.lse.data();
  mp.num_partials = 1;
  mp.num_rows = static_cast<std::int64_t>(r.lse.size());
  mp.dim = c.value_dim;
  mp.out = r.out.data();
  const status merge_st = lse_merge(mp, cuda_ctx);
  EXPECT_FALSE(merge_st.ok());
  EXPECT_EQ(merge_st.code(), errc::unavailable) << merge_st.to_string();

  const expected<cuda::device_buffer> buf = cuda::device_buffer::allocate(1024);
  EXPECT_FALSE(buf.has_value());
  EXPECT_FALSE(cuda::synchronize(nullptr).ok());
  EXPECT_TRUE(cuda::copy_to_device(nullptr, nullptr, 0).ok()) << "an empty copy is a no-op";
}

}  // namespace
}  // namespace helix::kernels
