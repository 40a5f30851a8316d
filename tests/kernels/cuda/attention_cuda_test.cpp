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
#include <numeric>
#include <string>
#include <vector>

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
const exec_context reference_ctx{backend::reference, nullptr, nullptr};
const exec_context cuda_ctx{backend::cuda, nullptr, nullptr};

#define HELIX_SKIP_WITHOUT_GPU()                                              \
  do {                                                                        \
    if (::helix::kernels::cuda::device_count() == 0) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

float urand(std::uint64_t seed, std::uint64_t stream, std::uint64_t idx) {
  return 2.0f * random_uniform(seed, stream, 0, rng_purpose::test_data, idx) - 1.0f;
}

struct attn_case {
  std::int64_t key_dim = 64;
  std::int64_t value_dim = 64;
  bool mla = false;
  std::int64_t num_kv_heads = 1;
  std::int64_t num_q_heads = 1;
  dtype type = dtype::f32;
  std::int64_t block_tokens = 16;
  std::int64_t num_blocks = 5;
  std::int64_t num_queries = 1;
  bool causal = true;
  bool scattered = true;  // shuffled slots and order, gaps between positions, partial blocks
  float k_scale = 1.0f;
  float v_scale = 1.0f;
  float q_amp = 3.0f;
  std::uint64_t seed = 1;

  [[nodiscard]] std::string name() const {
    return fmt::format("k{}v{}{}_kv{}_q{}_{}_bt{}_blocks{}_nq{}{}", key_dim, value_dim,
                       mla ? "mla" : "", num_kv_heads, num_q_heads, dtype_name(type),
                       block_tokens, num_blocks, num_queries, causal ? "_causal" : "");
  }
};

// One request's KV on one rank, on the host: a page pool whose unused slots and unfilled token
// rows are NaN (0xff bytes in every dtype), blocks in arbitrary order, queries and positions.
struct attn_fixture {
  attn_case c;
  kv_page_layout layout;
  std::vector<std::byte> pool;
  std::vector<kv_block_ref> blocks;
  std::vector<float> q;
  std::vector<std::int64_t> query_pos;

  explicit attn_fixture(const attn_case& cs) : c(cs) {
    layout.num_kv_heads = c.num_kv_heads;
    layout.key_dim = c.key_dim;
    layout.value_dim = c.value_dim;
    layout.block_tokens = c.block_tokens;
    layout.type = c.type;
    layout.value_in_key = c.mla;
    const std::int64_t num_slots = c.num_blocks + (c.scattered ? c.num_blocks / 3 + 1 : 0);
    pool.assign(static_cast<std::size_t>(num_slots) * layout.page_bytes(), std::byte{0xff});
    std::vector<std::int32_t> slots(static_cast<std::size_t>(num_slots));
    std::iota(slots.begin(), slots.end(), 0);
    std::uint64_t idx = 0;
    if (c.scattered) shuffle(slots, 7, idx);
    std::int64_t pos = c.scattered ? 5 : 0;
    for (std::int64_t b = 0; b < c.num_blocks; ++b) {
      kv_block_ref ref;
      ref.slot = slots[static_cast<std::size_t>(b)];
      ref.first_pos = pos;
      ref.num_tokens = static_cast<std::int32_t>(c.block_tokens);
      if (c.scattered && (b % 5 == 2 || b == c.num_blocks - 1)) {
        ref.num_tokens = 1 + static_cast<std::int32_t>(
                                 random_uniform(c.seed, 8, 0, rng_purpose::test_data, idx++) *
                                 static_cast<float>(c.block_tokens - 1));
      }
      // Gaps stand for the blocks other ranks hold.
      pos += ref.num_tokens + (c.scattered && b % 2 == 1 ? c.block_tokens * (1 + b % 3) : 0);
      blocks.push_back(ref);
      std::byte* page = pool.data() + static_cast<std::size_t>(ref.slot) * layout.page_bytes();
      for (std::int64_t h = 0; h < c.num_kv_heads; ++h) {
        for (std::int64_t t = 0; t < ref.num_tokens; ++t) {
          for (std::int64_t d = 0; d < c.key_dim; ++d) {
            store_from_f32(page, c.type, static_cast<std::size_t>(layout.key_offset(h, t) + d),
                           2.0f * urand(c.seed, 1, idx++));
          }
          if (c.mla) continue;
          for (std::int64_t d = 0; d < c.value_dim; ++d) {
            store_from_f32(page, c.type, static_cast<std::size_t>(layout.value_offset(h, t) + d),
                           2.0f * urand(c.seed, 2, idx++));
          }
        }
      }
    }
    if (c.scattered) shuffle(blocks, 9, idx);
    q.resize(static_cast<std::size_t>(c.num_queries * c.num_q_heads * c.key_dim));
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = c.q_amp * urand(c.seed, 3, i);
    // One query: after every key (decode). Several: spread from before the first key (sees
    // nothing) to after the last, so the causal mask cuts through blocks.
    for (std::int64_t i = 0; i < c.num_queries; ++i) {
      query_pos.push_back(c.num_queries == 1
                              ? pos
                              : (pos + 8) * i / (c.num_queries - 1) - 3);
    }
  }

  template <class T>
  void shuffle(std::vector<T>& v, std::uint64_t stream, std::uint64_t& idx) const {
    for (std::size_t i = v.size(); i > 1; --i) {
      const auto j = static_cast<std::size_t>(
          random_uniform(c.seed, stream, 0, rng_purpose::test_data, idx++) * static_cast<float>(i));
      std::swap(v[i - 1], v[std::min(j, i - 1)]);
    }
  }

  [[nodiscard]] attention_partial_params params() const {
    attention_partial_params p;
    p.q = q.data();
    p.query_pos = query_pos.data();
    p.num_queries = c.num_queries;
    p.num_q_heads = c.num_q_heads;
    p.layout = layout;
    p.kv_pool = pool.data();
    p.blocks = blocks.empty() ? nullptr : blocks.data();
    p.num_blocks = static_cast<std::int64_t>(blocks.size());
    p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
    p.k_scale = c.k_scale;
    p.v_scale = c.v_scale;
    p.causal = c.causal;
    return p;
  }
  [[nodiscard]] std::size_t out_size() const {
    return static_cast<std::size_t>(c.num_queries * c.num_q_heads * c.value_dim);
  }
  [[nodiscard]] std::size_t lse_size() const {
    return static_cast<std::size_t>(c.num_queries * c.num_q_heads);
  }
};

struct attn_result {
  std::vector<float> out;
  std::vector<float> lse;
};

attn_result run_reference(const attn_fixture& f) {
  attn_result r;
  r.out.assign(f.out_size(), std::numeric_limits<float>::quiet_NaN());
  r.lse.assign(f.lse_size(), std::numeric_limits<float>::quiet_NaN());
  attention_partial_params p = f.params();
  p.out = r.out.data();
  p.lse = r.lse.data();
  const status st = attention_partial(p, reference_ctx);
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
    HELIX_ASSIGN_OR_RETURN(d.query_pos, upload(f.query_pos.data(),
                                               f.query_pos.size() * sizeof(std::int64_t)));
    HELIX_ASSIGN_OR_RETURN(d.pool, upload(f.pool.data(), f.pool.size()));
    HELIX_ASSIGN_OR_RETURN(d.blocks,
                           upload(f.blocks.data(), f.blocks.size() * sizeof(kv_block_ref)));
    const std::vector<float> nan_out(f.out_size(), std::numeric_limits<float>::quiet_NaN());
    const std::vector<float> nan_lse(f.lse_size(), std::numeric_limits<float>::quiet_NaN());
    HELIX_ASSIGN_OR_RETURN(d.out, upload(nan_out.data(), nan_out.size() * sizeof(float)));
    HELIX_ASSIGN_OR_RETURN(d.lse, upload(nan_lse.data(), nan_lse.size() * sizeof(float)));
    d.params = f.params();
    d.params.q = static_cast<const float*>(d.q.data());
    d.params.query_pos = static_cast<const std::int64_t*>(d.query_pos.data());
    d.params.kv_pool = d.pool.data();
    d.params.blocks = static_cast<const kv_block_ref*>(d.blocks.data());
    if (f.blocks.empty()) d.params.blocks = nullptr;
    d.params.out = static_cast<float*>(d.out.data());
    d.params.lse = static_cast<float*>(d.lse.data());
    HELIX_ASSIGN_OR_RETURN(d.workspace, cuda::device_buffer::allocate(
                                            attention_workspace_bytes(d.params, cuda_ctx)));
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

struct diff {
  double out_rel = 0.0;
  double lse_rel = 0.0;
  bool inf_mismatch = false;
};

diff compare(const attn_result& got, const attn_result& ref) {
  diff d;
  double max_ref = 0.0;
  for (float x : ref.out) max_ref = std::max(max_ref, std::fabs(static_cast<double>(x)));
  max_ref = std::max(max_ref, 1e-30);
  for (std::size_t i = 0; i < ref.out.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got.out[i]) - ref.out[i]);
    d.out_rel = std::max(d.out_rel, std::isnan(e) ? 1e30 : e / max_ref);
  }
  for (std::size_t i = 0; i < ref.lse.size(); ++i) {
    if (std::isinf(ref.lse[i]) || std::isinf(got.lse[i])) {
      d.inf_mismatch |= got.lse[i] != ref.lse[i];
      continue;
    }
    const double e = std::fabs(static_cast<double>(got.lse[i]) - ref.lse[i]) /
                     std::max(1.0, std::fabs(static_cast<double>(ref.lse[i])));
    d.lse_rel = std::max(d.lse_rel, std::isnan(e) ? 1e30 : e);
  }
  return d;
}

void expect_close(const attn_result& got, const attn_result& ref, double out_rel, double lse_rel,
                  const std::string& what) {
  const diff d = compare(got, ref);
  EXPECT_LE(d.out_rel, out_rel) << what;
  EXPECT_LE(d.lse_rel, lse_rel) << what;
  EXPECT_FALSE(d.inf_mismatch) << what << ": -inf lse in one result only";
}

// Runs one case on the GPU and on the reference and compares them.
void check_case(const attn_case& c) {
  const attn_fixture f(c);
  const attn_result ref = run_reference(f);
  expected<device_fixture> dev = device_fixture::create(f);
  ASSERT_TRUE(dev.has_value()) << c.name() << ": " << dev.error().to_string();
  expected<attn_result> got = dev->run();
  ASSERT_TRUE(got.has_value()) << c.name() << ": " << got.error().to_string();
  expect_close(*got, ref, attn_out_rel, attn_lse_rel, c.name());
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
    ASSERT_TRUE(a.has_value() && b.has_value()) << c.name();
    EXPECT_EQ(std::memcmp(a->out.data(), b->out.data(), a->out.size() * sizeof(float)), 0)
        << c.name();
    EXPECT_EQ(std::memcmp(a->lse.data(), b->lse.data(), a->lse.size() * sizeof(float)), 0)
        << c.name();
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
  expect_close(merged, ref, attn_out_rel, attn_lse_rel, c.name());
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
      ASSERT_GE(bytes, prev) << c.name() << " at " << nb << " blocks";
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
