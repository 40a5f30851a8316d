// CUDA partial attention over a paged KV shard (kernels/attention.hpp), GQA and absorbed MLA.
//
// Split-KV (Flash-Decoding). The grid is (chunk of blocks, tile of query rows, KV head). A "row"
// is one (query, query head) pair of the GQA group that shares the KV head, so one CTA serves all
// heads of the group and all queries of a multi-query chunk, and every key is read once per CTA:
// MLA (one KV head, up to 128 query heads) tiles its 128 rows over a few CTAs that share the
// chunk's keys through L2. A CTA walks its chunk's blocks in table order, stages up to
// `tile_tokens` keys (and values) of one block in shared memory as f32, computes the scores of all
// its rows with 4x4 register micro-tiles, runs the online softmax per row and accumulates P.V in
// registers. It writes its chunk's normalised partial (out, natural-log lse) to the workspace, and
// kernels/cuda/merge.cu combines the chunks in chunk order, so results are deterministic. With a
// single chunk the CTA writes out/lse directly and no workspace is needed.
//
// The plan (tile sizes, chunking) depends only on the params, never on the device, so
// attention_workspace_bytes() works without a GPU and the same params always give the same
// arithmetic. All arithmetic is f32 (SIMT, no tensor cores: the reference is f32 and the
// tolerance is tight). Scores are kept in the log2 domain (q pre-multiplied by
// softmax_scale * k_scale * log2(e)) so the softmax uses exp2f.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/cuda/cuda_check.hpp"
#include "kernels/cuda/cuda_ops.hpp"

namespace helix::kernels::cuda {
namespace {

constexpr int attn_threads = 256;
// Rows and tokens of one score micro-tile (registers), and rows of one P.V micro-tile.
constexpr int micro = 4;
// P.V micro-tiles (4 rows x 4 value columns) per thread: 2 x 16 accumulators in registers.
constexpr int pv_tiles_per_thread = 2;
constexpr std::int64_t max_tile_rows = 64;
constexpr std::int64_t max_tile_tokens = 16;
// Shared memory a CTA may use: two CTAs per SM on H100 (228 KiB) and one on A100.
constexpr std::size_t smem_cap_bytes = 112 * 1024;
// Split-KV chunking: a chunk covers at least this many tokens (its partial costs a write and a
// merge read), and the grid aims at about target_ctas CTAs, with at most max_chunks chunks.
constexpr std::int64_t min_chunk_tokens = 256;
constexpr std::int64_t target_ctas = 1024;
constexpr std::int64_t max_chunks = 128;
constexpr float log2e = 1.4426950408889634f;
constexpr float ln2 = 0.6931471805599453f;

constexpr std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}
constexpr std::int64_t round_up(std::int64_t a, std::int64_t b) {
  return ceil_div(a, b) * b;
}

struct attention_plan {
  std::int64_t group = 1;         // query heads per KV head
  std::int64_t num_rows = 0;      // num_queries * group rows per KV head
  std::int64_t key_stride = 0;    // floats per staged key row (key_dim rounded up to 4)
  std::int64_t value_stride = 0;  // floats per staged value row (value_dim rounded up to 4)
  std::int64_t tile_rows = 0;     // rows per CTA, a multiple of 4
  std::int64_t tile_tokens = 0;   // keys staged at once, a multiple of 4
  std::int64_t row_tiles = 0;
  std::int64_t chunk_blocks = 0;
  std::int64_t num_chunks = 1;
  // Upper bound on num_chunks that never decreases as num_blocks grows: the workspace is sized
  // from it, so a workspace sized for the longest context fits every shorter one.
  std::int64_t chunk_bound = 1;
  std::size_t smem_bytes = 0;
};

std::size_t smem_bytes_for(const kv_page_layout& l, std::int64_t rows, std::int64_t tokens,
                           std::int64_t key_stride, std::int64_t value_stride) {
  std::int64_t floats = rows * key_stride + tokens * key_stride;  // q_s, k_s
  if (!l.value_in_key) floats += tokens * value_stride;           // v_s
  floats += rows * (tokens + 1) + tokens * rows + 3 * rows;       // s_s, p_s, m/l/alpha
  return static_cast<std::size_t>(floats) * sizeof(float) +
         static_cast<std::size_t>(rows) * sizeof(std::int64_t);  // qpos_s
}

expected<attention_plan> make_plan(const attention_partial_params& p) {
  const kv_page_layout& l = p.layout;
  attention_plan plan;
  plan.group = p.num_q_heads / l.num_kv_heads;
  plan.num_rows = p.num_queries * plan.group;
  plan.key_stride = round_up(l.key_dim, micro);
  plan.value_stride = round_up(l.value_dim, micro);
  plan.tile_tokens = std::min(round_up(l.block_tokens, micro), max_tile_tokens);
  // Rows per CTA: bounded by the register accumulators (rows/4 * value_stride/4 micro-tiles over
  // the CTA's threads) and by shared memory.
  const std::int64_t by_registers =
      micro * pv_tiles_per_thread * attn_threads / (plan.value_stride / micro) / micro * micro;
  std::int64_t rows = std::min({max_tile_rows, round_up(plan.num_rows, micro), by_registers});
  while (rows >= micro && smem_bytes_for(l, rows, plan.tile_tokens, plan.key_stride,
                                         plan.value_stride) > smem_cap_bytes) {
    rows -= micro;
  }
  if (rows < micro) {
    return failed_precondition(
        "attention (cuda): key_dim {} / value_dim {} too large for one CTA ({} bytes of shared "
        "memory at most, value_dim at most {})",
        l.key_dim, l.value_dim, smem_cap_bytes, micro * pv_tiles_per_thread * attn_threads);
  }
  plan.tile_rows = rows;
  plan.row_tiles = ceil_div(plan.num_rows, rows);
  if (plan.row_tiles > 65535 || l.num_kv_heads > 65535) {
    return failed_precondition("attention (cuda): {} row tiles or {} KV heads exceed the grid",
                               plan.row_tiles, l.num_kv_heads);
  }
  plan.smem_bytes = smem_bytes_for(l, rows, plan.tile_tokens, plan.key_stride, plan.value_stride);

  const std::int64_t min_chunk_blocks =
      std::max<std::int64_t>(1, ceil_div(min_chunk_tokens, l.block_tokens));
  const std::int64_t chunk_cap = std::clamp<std::int64_t>(
      ceil_div(target_ctas, plan.row_tiles * l.num_kv_heads), 1, max_chunks);
  const std::int64_t wanted =
      std::clamp<std::int64_t>(ceil_div(p.num_blocks, min_chunk_blocks), 1, chunk_cap);
  plan.chunk_bound = wanted;
  plan.chunk_blocks = std::max<std::int64_t>(1, ceil_div(p.num_blocks, wanted));
  plan.num_chunks = std::max<std::int64_t>(1, ceil_div(p.num_blocks, plan.chunk_blocks));
  return plan;
}

struct attention_args {
  const float* q;
  const std::int64_t* query_pos;
  const unsigned char* kv_pool;
  const kv_block_ref* blocks;
  kv_page_layout layout;
  std::int64_t num_blocks;
  std::int64_t chunk_blocks;
  std::int64_t num_q_heads;
  std::int64_t group;
  std::int64_t num_rows;
  int key_stride;
  int value_stride;
  int tile_rows;
  int tile_tokens;
  float q_mul;  // softmax_scale * k_scale * log2(e)
  float v_scale;
  bool causal;
  bool vector_loads;  // 16-byte aligned rows: load KV as uint4
  float* out;         // [chunks][num_queries][num_q_heads][value_dim]
  float* lse;         // [chunks][num_queries][num_q_heads]
  std::int64_t out_chunk_stride;
  std::int64_t lse_chunk_stride;
};

// Decodes one 16-byte vector of KV elements into f32.
__device__ __forceinline__ void decode(uint4 raw, float* v, float) {
  v[0] = __uint_as_float(raw.x);
  v[1] = __uint_as_float(raw.y);
  v[2] = __uint_as_float(raw.z);
  v[3] = __uint_as_float(raw.w);
}
__device__ __forceinline__ void decode(uint4 raw, float* v, bf16_t) {
  const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __uint_as_float(w[i] << 16);
    v[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}
__device__ __forceinline__ void decode(uint4 raw, float* v, f16_t) {
  const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    v[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] & 0xffffu)));
    v[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] >> 16)));
  }
}
__device__ __forceinline__ void decode(uint4 raw, float* v, fp8_e4m3_t) {
  const unsigned w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      v[4 * i + b] = to_f32(fp8_e4m3_t{static_cast<std::uint8_t>((w[i] >> (8 * b)) & 0xffu)});
    }
  }
}

// Stages `num_rows` contiguous rows of `cols` KV elements into shared memory as f32 rows of
// `dst_stride` floats (the padding columns are left alone: they were zeroed once).
template <class T>
__device__ __forceinline__ void stage_rows(float* dst, int dst_stride, const T* src, int num_rows,
                                           int cols, bool vector_loads) {
  const int tid = static_cast<int>(threadIdx.x);
  if (vector_loads) {
    constexpr int per_vec = 16 / static_cast<int>(sizeof(T));
    const int vecs_per_row = cols / per_vec;
    const uint4* src4 = reinterpret_cast<const uint4*>(src);
    for (int v = tid; v < num_rows * vecs_per_row; v += attn_threads) {
      const int r = v / vecs_per_row;
      const int c = (v - r * vecs_per_row) * per_vec;
      float vals[per_vec];
      decode(__ldg(src4 + v), vals, T{});
      float4* d4 = reinterpret_cast<float4*>(dst + r * dst_stride + c);
#pragma unroll
      for (int k = 0; k < per_vec / 4; ++k) {
        d4[k] = make_float4(vals[4 * k], vals[4 * k + 1], vals[4 * k + 2], vals[4 * k + 3]);
      }
    }
  } else {
    for (int e = tid; e < num_rows * cols; e += attn_threads) {
      const int r = e / cols;
      dst[r * dst_stride + (e - r * cols)] = to_f32(src[e]);
    }
  }
}

template <class T>
__global__ void __launch_bounds__(attn_threads) attention_chunk_kernel(const attention_args a) {
  extern __shared__ float4 smem_f4[];
  const int ks = a.key_stride;
  const int hr = a.tile_rows;
  const int kt = a.tile_tokens;
  const bool mla = a.layout.value_in_key;
  float* const q_s = reinterpret_cast<float*>(smem_f4);  // [hr][ks]
  float* const k_s = q_s + hr * ks;                      // [kt][ks]
  float* const v_s = mla ? k_s : k_s + kt * ks;          // [kt][vs]; MLA values lead each key
  const int vs = mla ? ks : a.value_stride;
  float* const s_s = (mla ? k_s + kt * ks : v_s + kt * vs);  // [hr][kt + 1] scores
  const int s_stride = kt + 1;
  float* const p_s = s_s + hr * s_stride;  // [kt][hr] probabilities, rows contiguous for P.V
  float* const m_s = p_s + kt * hr;        // running max (log2 domain)
  float* const l_s = m_s + hr;             // running sum
  float* const alpha_s = l_s + hr;         // this tile's rescale of the accumulators
  auto* const qpos_s = reinterpret_cast<std::int64_t*>(alpha_s + hr);
  __shared__ std::int64_t max_qpos_s;

  const int tid = static_cast<int>(threadIdx.x);
  const std::int64_t chunk = blockIdx.x;
  const std::int64_t kv_head = blockIdx.z;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.y) * hr;
  const int rows = static_cast<int>(min(static_cast<std::int64_t>(hr), a.num_rows - row0));
  const int key_dim = static_cast<int>(a.layout.key_dim);
  const int value_dim = static_cast<int>(a.layout.value_dim);

  // Rows are (query, head of the group), query-major.
  for (int e = tid; e < hr * ks; e += attn_threads) {
    const int r = e / ks;
    const int d = e - r * ks;
    float v = 0.0f;
    if (r < rows && d < key_dim) {
      const std::int64_t row = row0 + r;
      const std::int64_t head = kv_head * a.group + row % a.group;
      v = a.q[((row / a.group) * a.num_q_heads + head) * key_dim + d] * a.q_mul;
    }
    q_s[e] = v;
  }
  // Padding columns enter the dot products and P.V and staging never writes them, and the last
  // score micro-tile of a short tile reads rows past the staged ones: start from zeros.
  for (int e = tid; e < kt * ks; e += attn_threads) k_s[e] = 0.0f;
  if (!mla) {
    for (int e = tid; e < kt * vs; e += attn_threads) v_s[e] = 0.0f;
  }
  for (int r = tid; r < hr; r += attn_threads) {
    std::int64_t qpos = INT64_MIN;  // padding rows see no key
    if (r < rows) qpos = a.causal ? a.query_pos[(row0 + r) / a.group] : INT64_MAX;
    qpos_s[r] = qpos;
    m_s[r] = -INFINITY;
    l_s[r] = 0.0f;
  }
  __syncthreads();
  if (tid == 0) {
    std::int64_t mx = INT64_MIN;
    for (int r = 0; r < rows; ++r) mx = max(mx, qpos_s[r]);
    max_qpos_s = mx;
  }
  __syncthreads();
  const std::int64_t max_qpos = max_qpos_s;

  // This thread's P.V micro-tiles: (row group, value column group) pairs.
  const int col_groups = (value_dim + micro - 1) / micro;
  const int pv_units = (hr / micro) * col_groups;
  int unit_row[pv_tiles_per_thread];
  int unit_col[pv_tiles_per_thread];
#pragma unroll
  for (int j = 0; j < pv_tiles_per_thread; ++j) {
    const int u = tid + j * attn_threads;
    unit_row[j] = (u < pv_units) ? (u / col_groups) * micro : -1;
    unit_col[j] = (u < pv_units) ? (u % col_groups) * micro : 0;
  }
  float acc[pv_tiles_per_thread][micro][micro] = {};

  const std::int64_t b_begin = chunk * a.chunk_blocks;
  const std::int64_t b_end = min(a.num_blocks, b_begin + a.chunk_blocks);
  const int ks4 = ks / micro;
  for (std::int64_t b = b_begin; b < b_end; ++b) {
    const kv_block_ref ref = a.blocks[b];
    std::int64_t n = max(0, min(ref.num_tokens, static_cast<int>(a.layout.block_tokens)));
    // Tokens past the tile's latest query are masked for every row: do not even load them.
    if (a.causal) n = max(static_cast<std::int64_t>(0), min(n, max_qpos - ref.first_pos + 1));
    const unsigned char* page =
        a.kv_pool + static_cast<std::size_t>(ref.slot) * a.layout.page_bytes();
    const T* keys = reinterpret_cast<const T*>(page) + a.layout.key_offset(kv_head, 0);
    const T* values = reinterpret_cast<const T*>(page) + a.layout.value_offset(kv_head, 0);

    for (std::int64_t t0 = 0; t0 < n; t0 += kt) {
      const int tn = static_cast<int>(min(static_cast<std::int64_t>(kt), n - t0));
      const std::int64_t pos0 = ref.first_pos + t0;
      stage_rows(k_s, ks, keys + t0 * key_dim, tn, key_dim, a.vector_loads);
      if (!mla) stage_rows(v_s, vs, values + t0 * value_dim, tn, value_dim, a.vector_loads);
      __syncthreads();

      // Scores: micro-tiles of 4 rows x 4 tokens, each reduced over `tpp` lanes splitting the key
      // dimension (>= 8 lanes, so a quarter-warp's float4 loads hit 32 consecutive floats).
      {
        const int tok_tiles = (tn + micro - 1) / micro;
        const int num_tiles = (hr / micro) * tok_tiles;
        int tpp = 32;
        while (tpp > 8 && tpp * num_tiles > attn_threads) tpp >>= 1;
        const int tiles_per_pass = attn_threads / tpp;
        const int lane_g = tid % tpp;
        for (int base = 0; base < num_tiles; base += tiles_per_pass) {
          const int tile = base + tid / tpp;
          const bool active = tile < num_tiles;
          const int mr = active ? tile / tok_tiles : 0;
          const int mt = active ? tile - mr * tok_tiles : 0;
          float dot[micro][micro] = {};
          if (active) {
            const float4* qrow = reinterpret_cast<const float4*>(q_s + mr * micro * ks);
            const float4* krow = reinterpret_cast<const float4*>(k_s + mt * micro * ks);
            for (int d4 = lane_g; d4 < ks4; d4 += tpp) {
              float4 qv[micro];
              float4 kv[micro];
#pragma unroll
              for (int i = 0; i < micro; ++i) {
                qv[i] = qrow[i * ks4 + d4];
                kv[i] = krow[i * ks4 + d4];
              }
#pragma unroll
              for (int i = 0; i < micro; ++i) {
#pragma unroll
                for (int j = 0; j < micro; ++j) {
                  float s = dot[i][j];
                  s = fmaf(qv[i].x, kv[j].x, s);
                  s = fmaf(qv[i].y, kv[j].y, s);
                  s = fmaf(qv[i].z, kv[j].z, s);
                  s = fmaf(qv[i].w, kv[j].w, s);
                  dot[i][j] = s;
                }
              }
            }
          }
          // Every lane of every warp takes part (the pass loop is uniform), groups are aligned.
          for (int off = tpp / 2; off > 0; off >>= 1) {
#pragma unroll
            for (int i = 0; i < micro; ++i) {
#pragma unroll
              for (int j = 0; j < micro; ++j) {
                dot[i][j] += __shfl_xor_sync(0xffffffffu, dot[i][j], off);
              }
            }
          }
          if (active && lane_g == 0) {
#pragma unroll
            for (int i = 0; i < micro; ++i) {
              const int r = mr * micro + i;
#pragma unroll
              for (int j = 0; j < micro; ++j) {
                const int t = mt * micro + j;
                if (t < tn) s_s[r * s_stride + t] = (pos0 + t <= qpos_s[r]) ? dot[i][j] : -INFINITY;
              }
            }
          }
        }
      }
      __syncthreads();

      // Online softmax: one warp per row, one lane per token (tile_tokens <= 16 < 32).
      {
        const int warp = tid / 32;
        const int lane = tid % 32;
        for (int r = warp; r < hr; r += attn_threads / 32) {
          const float s = lane < tn ? s_s[r * s_stride + lane] : -INFINITY;
          float mx = s;
          for (int off = 16; off > 0; off >>= 1)
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
          const float m_old = m_s[r];
          const float m_new = fmaxf(m_old, mx);
          // -inf guards: a row that has seen no key yet keeps m = -inf, p = 0, never NaN.
          const float pr = (s == -INFINITY) ? 0.0f : exp2f(s - m_new);
          float sum = pr;
          for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
          if (lane < tn) p_s[lane * hr + r] = pr;
          if (lane == 0) {
            const float alpha = (m_old == -INFINITY) ? 0.0f : exp2f(m_old - m_new);
            alpha_s[r] = alpha;
            l_s[r] = l_s[r] * alpha + sum;
            m_s[r] = m_new;
          }
        }
      }
      __syncthreads();

      // P.V into the register accumulators.
#pragma unroll
      for (int j = 0; j < pv_tiles_per_thread; ++j) {
        if (unit_row[j] < 0) continue;
        const float4 alpha = *reinterpret_cast<const float4*>(alpha_s + unit_row[j]);
        const float al[micro] = {alpha.x, alpha.y, alpha.z, alpha.w};
#pragma unroll
        for (int i = 0; i < micro; ++i) {
#pragma unroll
          for (int c = 0; c < micro; ++c) acc[j][i][c] *= al[i];
        }
        for (int t = 0; t < tn; ++t) {
          const float4 v = *reinterpret_cast<const float4*>(v_s + t * vs + unit_col[j]);
          const float4 pp = *reinterpret_cast<const float4*>(p_s + t * hr + unit_row[j]);
          const float pv[micro] = {pp.x, pp.y, pp.z, pp.w};
#pragma unroll
          for (int i = 0; i < micro; ++i) {
            acc[j][i][0] = fmaf(pv[i], v.x, acc[j][i][0]);
            acc[j][i][1] = fmaf(pv[i], v.y, acc[j][i][1]);
            acc[j][i][2] = fmaf(pv[i], v.z, acc[j][i][2]);
            acc[j][i][3] = fmaf(pv[i], v.w, acc[j][i][3]);
          }
        }
      }
      __syncthreads();  // the next tile overwrites k_s, v_s and p_s
    }
  }

  // Normalised partial of this chunk; a row that saw no key gets out = 0, lse = -inf.
  float* const out = a.out + chunk * a.out_chunk_stride;
  float* const lse = a.lse + chunk * a.lse_chunk_stride;
#pragma unroll
  for (int j = 0; j < pv_tiles_per_thread; ++j) {
    if (unit_row[j] < 0) continue;
#pragma unroll
    for (int i = 0; i < micro; ++i) {
      const int r = unit_row[j] + i;
      if (r >= rows) continue;
      const std::int64_t row = row0 + r;
      const std::int64_t head = kv_head * a.group + row % a.group;
      float* dst = out + ((row / a.group) * a.num_q_heads + head) * value_dim;
      const float l = l_s[r];
      const float inv = l > 0.0f ? a.v_scale / l : 0.0f;
#pragma unroll
      for (int c = 0; c < micro; ++c) {
        const int d = unit_col[j] + c;
        if (d < value_dim) dst[d] = acc[j][i][c] * inv;
      }
    }
  }
  for (int r = tid; r < rows; r += attn_threads) {
    const std::int64_t row = row0 + r;
    const std::int64_t head = kv_head * a.group + row % a.group;
    const float l = l_s[r];
    lse[(row / a.group) * a.num_q_heads + head] = l > 0.0f ? (m_s[r] + log2f(l)) * ln2 : -INFINITY;
  }
}

template <class T>
status launch(const attention_args& args, const attention_plan& plan, cudaStream_t stream) {
  const auto kernel = attention_chunk_kernel<T>;
  HELIX_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(plan.smem_bytes)));
  const dim3 grid(static_cast<unsigned>(plan.num_chunks), static_cast<unsigned>(plan.row_tiles),
                  static_cast<unsigned>(args.layout.num_kv_heads));
  kernel<<<grid, attn_threads, plan.smem_bytes, stream>>>(args);
  HELIX_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  return ok_status();
}

// The one switch from the KV dtype to the compiled kernel variant.
status launch_for_dtype(const attention_args& args, const attention_plan& plan,
                        cudaStream_t stream) {
  switch (args.layout.type) {
    case dtype::f32:
      return launch<float>(args, plan, stream);
    case dtype::bf16:
      return launch<bf16_t>(args, plan, stream);
    case dtype::f16:
      return launch<f16_t>(args, plan, stream);
    case dtype::fp8_e4m3:
      return launch<fp8_e4m3_t>(args, plan, stream);
  }
  return failed_precondition("unsupported KV dtype {}", static_cast<int>(args.layout.type));
}

bool aligned16(const void* ptr) {
  return reinterpret_cast<std::uintptr_t>(ptr) % 16 == 0;
}

std::size_t partial_out_floats(const attention_partial_params& p, std::int64_t chunks) {
  return static_cast<std::size_t>(chunks * p.num_queries * p.num_q_heads * p.layout.value_dim);
}

}  // namespace

std::size_t attention_workspace_bytes(const attention_partial_params& p) {
  const expected<attention_plan> plan = make_plan(p);
  if (!plan.has_value() || plan->num_chunks <= 1) return 0;
  const std::size_t lse_floats =
      static_cast<std::size_t>(plan->chunk_bound * p.num_queries * p.num_q_heads);
  return (partial_out_floats(p, plan->chunk_bound) + lse_floats) * sizeof(float);
}

status attention_partial(const attention_partial_params& p, stream_handle stream) {
  HELIX_ASSIGN_OR_RETURN(const attention_plan plan, make_plan(p));
  const kv_page_layout& l = p.layout;
  const std::size_t elem_bytes = dtype_bytes(l.type);

  attention_args args{};
  args.q = p.q;
  args.query_pos = p.query_pos;
  args.kv_pool = static_cast<const unsigned char*>(p.kv_pool);
  args.blocks = p.blocks;
  args.layout = l;
  args.num_blocks = p.num_blocks;
  args.chunk_blocks = plan.chunk_blocks;
  args.num_q_heads = p.num_q_heads;
  args.group = plan.group;
  args.num_rows = plan.num_rows;
  args.key_stride = static_cast<int>(plan.key_stride);
  args.value_stride = static_cast<int>(plan.value_stride);
  args.tile_rows = static_cast<int>(plan.tile_rows);
  args.tile_tokens = static_cast<int>(plan.tile_tokens);
  args.q_mul = p.softmax_scale * p.k_scale * log2e;
  args.v_scale = p.v_scale;
  args.causal = p.causal;
  // Every staged row starts on a 16-byte boundary when the pool, the page size and the row sizes
  // are multiples of 16 bytes (the value section starts after whole key rows).
  args.vector_loads =
      aligned16(p.kv_pool) && l.page_bytes() % 16 == 0 &&
      (static_cast<std::size_t>(l.key_dim) * elem_bytes) % 16 == 0 &&
      (l.value_in_key || (static_cast<std::size_t>(l.value_dim) * elem_bytes) % 16 == 0);
  const bool split = plan.num_chunks > 1;
  if (split) {
    args.out = static_cast<float*>(p.workspace);
    args.lse = args.out + partial_out_floats(p, plan.num_chunks);
    args.out_chunk_stride = p.num_queries * p.num_q_heads * l.value_dim;
    args.lse_chunk_stride = p.num_queries * p.num_q_heads;
  } else {
    args.out = p.out;
    args.lse = p.lse;
    args.out_chunk_stride = 0;
    args.lse_chunk_stride = 0;
  }

  HELIX_RETURN_IF_ERROR(launch_for_dtype(args, plan, static_cast<cudaStream_t>(stream))
                            .with_context("attention (cuda)"));
  if (!split) return ok_status();

  lse_merge_params merge;
  merge.partial_out = args.out;
  merge.partial_lse = args.lse;
  merge.num_partials = plan.num_chunks;
  merge.num_rows = p.num_queries * p.num_q_heads;
  merge.dim = l.value_dim;
  merge.out = p.out;
  merge.lse = p.lse;
  return lse_merge(merge, stream);
}

}  // namespace helix::kernels::cuda
