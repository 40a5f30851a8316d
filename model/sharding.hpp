// Weight sharding: the slice of the full model weights that one rank of a layout owns.
//
// The engine loads (or seeds) the full HF-shaped weights once and calls shard_weights() per rank to
// get exactly the tensors that rank computes with, copied into tensors it owns (ARCHITECTURE.md
// section 2). Every index comes from core/layout.hpp (attention_coords, rank_q_heads,
// rank_kv_heads, ffn_coords, group_experts, ffn_ranks); nothing here re-derives rank math, so a
// change of numbering there moves the weights with it.
//
// What a rank holds:
//   - replicated: embedding, every norm, the MoE router and its bias (x is replicated, so every
//   rank
//     routes identically);
//   - GQA attention: q/k/v rows of its TPA column's heads (redundant on every KVP member of the
//     column; tp with N > K: the duplicated KV head), and the o_proj input-dim slice of the Q/N
//     heads it owns after the all-to-all;
//   - MLA attention (TPA = 1): q/kv down-projections and their norms in full, W_UK for all heads,
//     W_UV and the o_proj slice for its Q/N heads;
//   - FFN: dense and shared-expert MLPs split over the FFN ranks (column-parallel gate/up,
//     row-parallel down); routed experts of its EP group, each split over the group's TPF ranks;
//     medha ranks outside the FFN hold no FFN weights;
//   - LM head: vocabulary rows [v0, v1), split over N (uneven allowed).
// Uneven splits give the first `total % parts` parts one extra element.
//
// The rules above are written once, as a plan (plan_rank_weights): every full tensor of the model
// with the pieces of it the rank holds. shard_weights() cuts the pieces out of full weights in
// memory, seeded_rank_weights() out of one seeded full tensor at a time, and
// checkpoint_rank_weights() (checkpoint.hpp) straight out of a checkpoint's memory mapping.
//
// Plain data, move-only (tensors own their memory). shard_weights() is pure and thread-compatible.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/layout.hpp"
#include "core/model_spec.hpp"
#include "core/status.hpp"
#include "core/tensor.hpp"
#include "model/weights.hpp"

namespace helix::model {

/// Part `part_idx` of `total` split into `num_parts` nearly equal contiguous parts: the first
/// total % num_parts parts get one extra element. HELIX_CHECKs num_parts >= 1 and the index range.
[[nodiscard]] index_range split_range(std::int64_t total, std::int64_t num_parts,
                                      std::int64_t part_idx);

/// One SwiGLU MLP's slice of the intermediate dimension. With f = ffn.count, F the full size:
struct mlp_shard {
  index_range ffn;   // [f0, f1) of the full intermediate dim
  tensor gate_proj;  // [f, hidden]  rows [f0, f1) of the full [F, hidden]
  tensor up_proj;    // [f, hidden]  rows [f0, f1) of the full [F, hidden]
  tensor down_proj;  // [hidden, f]  columns [f0, f1) of the full [hidden, F]
};

/// One routed expert this rank holds a slice of.
struct expert_shard {
  std::int64_t expert_idx = 0;  // global expert id (index into layer_weights::experts)
  mlp_shard mlp;                // ffn: [f0, f1) of expert_ffn, split by the rank's tpf_idx
};

/// One layer's weights on one rank. Shapes use Q, H, D (head_dim), Dv (attn_out_head_dim),
/// q = q_heads.count, k = kv_heads.count, o = o_heads.count.
struct rank_layer_weights {
  tensor input_norm;      // [H] f32, replicated (full)
  tensor post_attn_norm;  // [H] f32, replicated (full)

  /// Query heads this rank projects: its TPA column's heads (column_q_heads). MLA: all [0, Q)
  /// for helix/medha (TPA = 1); tp splits them like GQA.
  index_range q_heads;
  /// KV heads this rank projects: GQA rank_kv_heads (tp with N > K: the duplicated head); MLA
  /// [0, 1), the latent.
  index_range kv_heads;
  /// Query heads this rank owns after the all-to-all (rank_q_heads): the o_proj input slice.
  index_range o_heads;

  // GQA
  tensor q_proj;  // [q*D, H] rows [q_heads.first*D, q_heads.end()*D); MLA without q_lora:
                  // [q*qk_head_dim, H], rows of q_heads (full for TPA = 1)
  tensor k_proj;  // [k*D, H] rows [kv_heads.first*D, kv_heads.end()*D); empty for MLA
  tensor v_proj;  // [k*D, H] same rows as k_proj; empty for MLA
  /// [H, o*Dv]: columns [o_heads.first*Dv, o_heads.end()*Dv) of the full [H, Q*Dv].
  tensor o_proj;

  // MLA (empty for GQA)
  tensor q_a_proj;   // [q_lora_rank, H] full (empty without q_lora)
  tensor q_a_norm;   // [q_lora_rank] f32 full (empty without q_lora)
  tensor q_b_proj;   // [q*qk_head_dim, q_lora_rank] rows of q_heads (full for TPA = 1)
  tensor kv_a_proj;  // [kv_lora_rank + qk_rope, H] full
  tensor kv_a_norm;  // [kv_lora_rank] f32 full
  /// [q*nope, kv_lora_rank]: for every head h in q_heads, rows [h*(nope+v), h*(nope+v)+nope) of
  /// kv_b_proj, heads in order (the absorbed q_nope projection needs every head the rank attends
  /// with: all of them on every KVP rank when TPA = 1).
  tensor w_uk;
  /// [o*v, kv_lora_rank]: for heads h in o_heads, rows [h*(nope+v)+nope, (h+1)*(nope+v)) of
  /// kv_b_proj, heads in order.
  tensor w_uv;

  // FFN. has_ffn is false only on medha ranks outside the FFN: they hold none of the below.
  bool has_ffn = false;
  bool is_moe = false;  // spec.layer_is_moe(layer)
  /// Dense layers: split over the FFN ranks by the rank's position in ffn_ranks() (helix/tp: all
  /// N ranks; medha: the TPA ranks). Empty on MoE layers.
  mlp_shard mlp;
  tensor router;       // [E, H] f32 full (MoE layers only)
  tensor router_bias;  // [E] f32 full, or empty when the model has none
  /// Routed experts of the rank's EP group (group_experts(ep_idx)), ascending expert id; each
  /// split over the group's TPF ranks by tpf_idx.
  std::vector<expert_shard> experts;
  /// Shared expert, split like a dense FFN over the FFN ranks; empty when num_shared == 0.
  mlp_shard shared;
};

/// Everything one rank holds.
struct rank_weights {
  std::int64_t rank = 0;
  helix::layout layout;
  model_spec spec;
  dtype weight_type = dtype::f32;

  tensor embed;       // [vocab, H] full (the input token's row is needed on every rank)
  tensor final_norm;  // [H] f32 full
  /// [v0, v1) of the vocabulary: split_range(vocab, N, rank).
  index_range vocab;
  /// [v1 - v0, H]: rows [v0, v1) of lm_head (of embed when tie_word_embeddings).
  tensor lm_head;
  std::vector<rank_layer_weights> layers;  // one per layer
};

/// The weights `rank` owns under layout `l`, copied from `full` (same dtypes).
/// Errors: invalid_argument if `l` breaks a layout rule for full.spec (the validate() message,
/// prefixed with the layout), if rank is outside [0, N), or if `full` does not have the tensors
/// its spec promises (layer count).
[[nodiscard]] expected<rank_weights> shard_weights(const model_weights& full,
                                                   const helix::layout& l, std::int64_t rank);
/// The same, consuming `full`: a piece that is its whole tensor (every piece of a one-rank
/// layout) is moved instead of copied, so the single worker never holds the model twice.
[[nodiscard]] expected<rank_weights> shard_weights(model_weights&& full, const helix::layout& l,
                                                   std::int64_t rank);

/// What shard_weights(init_seeded_weights(spec, weight_type, seed), l, rank) gives, bit for bit,
/// without ever holding the full model: the tensors the rank holds a piece of are seeded and cut
/// one at a time (the others are skipped), so a worker process holds its shards plus one full
/// tensor. Errors as shard_weights and init_seeded_weights.
[[nodiscard]] expected<rank_weights> seeded_rank_weights(const model_spec& spec, dtype weight_type,
                                                         std::uint64_t seed, const helix::layout& l,
                                                         std::int64_t rank);

/// A piece of a full tensor that a rank holds, and the rank_weights tensor it becomes.
struct tensor_cut {
  enum class kind : std::uint8_t {
    whole,  // the full tensor, any rank
    rows,   // rows `ranges` of a 2-D [R, C], concatenated in order: [sum of counts, C]
    cols,   // columns ranges[0] of a 2-D [R, C]: [R, count]
  };
  kind how = kind::whole;
  std::vector<index_range> ranges;
  tensor* dst = nullptr;  // into the rank_weights passed to plan_rank_weights
};

/// One contiguous run of a piece: `count` elements from element `full_offset` of the full tensor
/// (row-major) to element `piece_offset` of the piece.
struct cut_run {
  std::int64_t full_offset = 0;
  std::int64_t piece_offset = 0;
  std::int64_t count = 0;
};

/// The shape of `cut`'s piece of a full tensor of shape `full`, and its runs in piece order
/// (they tile the piece). HELIX_CHECK that rows/cols cuts are of 2-D tensors and within range.
[[nodiscard]] shape cut_shape(const shape& full, const tensor_cut& cut);
[[nodiscard]] std::vector<cut_run> cut_runs(const shape& full, const tensor_cut& cut);
/// The block scales of the piece `cut` of an FP8 tensor whose scales are `full`.
[[nodiscard]] block_scales cut_scales(const block_scales& full, const tensor_cut& cut);

/// One full tensor of a model and the pieces of it one rank holds.
struct full_tensor_plan {
  std::string name;         // as list_tensors() names it (the HF checkpoint name)
  shape dims;               // as allocate_weights() shapes it
  dtype type = dtype::f32;  // in-memory dtype: the weight type, or f32 (norms, router, bias)
  tensor_role role = tensor_role::linear;
  /// Empty when the rank holds none of it (another EP group's expert; the FFN of a medha rank
  /// outside it). Several for a tensor cut twice (kv_b_proj: W_UK and W_UV; a tied embedding:
  /// the LM head rows, then the whole).
  std::vector<tensor_cut> cuts;
};

/// Every tensor of a `spec` model in `weight_type`, in list_tensors() order (which is the seed
/// order of init_seeded_weights), with the pieces `rank` holds under `l`; fills `out`'s fields
/// other than the tensors (rank, layout, spec, weight_type, vocab, layer and expert index
/// ranges, has_ffn, is_moe) and points the cuts at its tensors, which stay empty until the
/// caller fills them. `out` must stay where it is while the plan is used. Only metadata: no
/// tensor is allocated. Errors as shard_weights for the layout and rank, as spec.validate(), and
/// invalid_argument for fp8_e4m3 (not a weight type).
[[nodiscard]] expected<std::vector<full_tensor_plan>> plan_rank_weights(const model_spec& spec,
                                                                        dtype weight_type,
                                                                        const helix::layout& l,
                                                                        std::int64_t rank,
                                                                        rank_weights& out);

}  // namespace helix::model
