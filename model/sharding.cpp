#include "model/sharding.hpp"

#include <algorithm>
#include <cstring>
#include <utility>

namespace helix::model {
namespace {

// A full copy; empty (rank-0) tensors stay empty, e.g. an absent router bias.
tensor copy_full(const tensor& src) {
  if (src.dims().rank == 0) return {};
  tensor out(src.type(), src.dims());
  if (src.bytes() > 0) std::memcpy(out.data(), src.data(), src.bytes());
  return out;
}

// Rows of a 2-D [rows, cols] tensor: the concatenation of `ranges` (in order) -> [sum, cols].
tensor copy_rows(const tensor& src, const std::vector<index_range>& ranges) {
  HELIX_CHECK(src.dims().rank == 2, "copy_rows needs a 2-D tensor, got {}", src.dims().to_string());
  const std::int64_t cols = src.dims()[1];
  std::int64_t total = 0;
  for (const index_range& r : ranges) {
    HELIX_CHECK(r.first >= 0 && r.end() <= src.dims()[0], "rows [{}, {}) out of {}", r.first,
                r.end(), src.dims().to_string());
    total += r.count;
  }
  tensor out(src.type(), {total, cols});
  const std::size_t row_bytes = static_cast<std::size_t>(cols) * dtype_bytes(src.type());
  auto* dst = static_cast<unsigned char*>(out.data());
  const auto* base = static_cast<const unsigned char*>(src.data());
  for (const index_range& r : ranges) {
    const std::size_t n = static_cast<std::size_t>(r.count) * row_bytes;
    if (n == 0) continue;
    std::memcpy(dst, base + static_cast<std::size_t>(r.first) * row_bytes, n);
    dst += n;
  }
  return out;
}

tensor copy_rows(const tensor& src, index_range rows) {
  return copy_rows(src, std::vector<index_range>{rows});
}

// Columns [first, end) of a 2-D [rows, cols] tensor -> [rows, count].
tensor copy_cols(const tensor& src, index_range c) {
  HELIX_CHECK(src.dims().rank == 2, "copy_cols needs a 2-D tensor, got {}", src.dims().to_string());
  const std::int64_t rows = src.dims()[0];
  const std::int64_t cols = src.dims()[1];
  HELIX_CHECK(c.first >= 0 && c.end() <= cols, "columns [{}, {}) out of {}", c.first, c.end(),
              src.dims().to_string());
  tensor out(src.type(), {rows, c.count});
  const std::size_t elem = dtype_bytes(src.type());
  const std::size_t n = static_cast<std::size_t>(c.count) * elem;
  if (n == 0) return out;
  auto* dst = static_cast<unsigned char*>(out.data());
  const auto* base = static_cast<const unsigned char*>(src.data());
  for (std::int64_t i = 0; i < rows; ++i) {
    std::memcpy(dst + static_cast<std::size_t>(i) * n,
                base + (static_cast<std::size_t>(i * cols + c.first)) * elem, n);
  }
  return out;
}

index_range scaled(index_range heads, std::int64_t width) {
  return {.first = heads.first * width, .count = heads.count * width};
}

// Column-parallel gate/up, row-parallel down: the partial down-projections of all parts sum to the
// full MLP output, so one all-reduce finishes it.
mlp_shard shard_mlp(const mlp_weights& full, std::int64_t num_parts, std::int64_t part_idx) {
  mlp_shard s;
  s.ffn = split_range(full.gate_proj.dims()[0], num_parts, part_idx);
  s.gate_proj = copy_rows(full.gate_proj, s.ffn);
  s.up_proj = copy_rows(full.up_proj, s.ffn);
  s.down_proj = copy_cols(full.down_proj, s.ffn);
  return s;
}

bool has_mlp(const mlp_weights& w) {
  return w.gate_proj.dims().rank == 2;
}

void shard_gqa(const layer_weights& full, const model_spec& spec, const layout& l,
               std::int64_t rank, rank_layer_weights& out) {
  const std::int64_t d = spec.head_dim;
  out.q_heads = l.column_q_heads(l.attention_coords(rank).tpa_idx, spec);
  out.kv_heads = l.rank_kv_heads(rank, spec);
  out.q_proj = copy_rows(full.q_proj, scaled(out.q_heads, d));
  out.k_proj = copy_rows(full.k_proj, scaled(out.kv_heads, d));
  out.v_proj = copy_rows(full.v_proj, scaled(out.kv_heads, d));
}

// Helix and medha have TPA = 1 for MLA (K = 1): every rank computes every head over its KV
// shard, so the query path and W_UK are needed in full and only W_UV follows the post-all-to-all
// head slice. tp (TPA = N) keeps the latent on every rank and splits the query heads instead;
// taking the column's heads from the layout covers both without a special case.
void shard_mla(const layer_weights& full, const model_spec& spec, const layout& l,
               std::int64_t rank, rank_layer_weights& out) {
  out.q_heads = l.column_q_heads(l.attention_coords(rank).tpa_idx, spec);
  out.kv_heads = l.rank_kv_heads(rank, spec);
  const index_range q_rows = scaled(out.q_heads, spec.mla.qk_head_dim());
  if (spec.mla.q_lora_rank > 0) {
    out.q_a_proj = copy_full(full.q_a_proj);
    out.q_a_norm = copy_full(full.q_a_norm);
    out.q_b_proj = copy_rows(full.q_b_proj, q_rows);
  } else {
    out.q_proj = copy_rows(full.q_proj, q_rows);
  }
  out.kv_a_proj = copy_full(full.kv_a_proj);
  out.kv_a_norm = copy_full(full.kv_a_norm);
  const std::int64_t nope = spec.mla.qk_nope_head_dim;
  const std::int64_t v = spec.mla.v_head_dim;
  const std::int64_t per_head = nope + v;
  std::vector<index_range> uk;
  for (std::int64_t h = out.q_heads.first; h < out.q_heads.end(); ++h) {
    uk.push_back({.first = h * per_head, .count = nope});
  }
  std::vector<index_range> uv;
  for (std::int64_t h = out.o_heads.first; h < out.o_heads.end(); ++h) {
    uv.push_back({.first = h * per_head + nope, .count = v});
  }
  out.w_uk = copy_rows(full.kv_b_proj, uk);
  out.w_uv = copy_rows(full.kv_b_proj, uv);
}

void shard_ffn(const layer_weights& full, const model_spec& spec, const layout& l,
               std::int64_t layer_idx, std::int64_t rank, rank_layer_weights& out) {
  out.is_moe = spec.layer_is_moe(layer_idx);
  out.has_ffn = l.in_ffn(rank);
  if (!out.has_ffn) return;
  // Dense and shared MLPs are split over every FFN rank; the position in ffn_ranks() is the
  // rank's FFN slot (helix/tp: the rank itself; medha: its column).
  const std::vector<std::int64_t> ffn_ranks = l.ffn_ranks();
  const auto slot = static_cast<std::int64_t>(std::find(ffn_ranks.begin(), ffn_ranks.end(), rank) -
                                              ffn_ranks.begin());
  const auto num_slots = static_cast<std::int64_t>(ffn_ranks.size());
  if (!out.is_moe) {
    out.mlp = shard_mlp(full.mlp, num_slots, slot);
    return;
  }
  out.router = copy_full(full.router);
  out.router_bias = copy_full(full.router_bias);
  const ffn_coord c = l.ffn_coords(rank);
  const auto group_size = static_cast<std::int64_t>(l.tpf_group(c.ep_idx).size());
  const index_range group = l.group_experts(c.ep_idx, spec);
  for (std::int64_t e = group.first; e < group.end(); ++e) {
    out.experts.push_back(
        {.expert_idx = e,
         .mlp = shard_mlp(full.experts[static_cast<std::size_t>(e)], group_size, c.tpf_idx)});
  }
  if (has_mlp(full.shared)) out.shared = shard_mlp(full.shared, num_slots, slot);
}

}  // namespace

index_range split_range(std::int64_t total, std::int64_t num_parts, std::int64_t part_idx) {
  HELIX_CHECK(num_parts >= 1 && part_idx >= 0 && part_idx < num_parts && total >= 0,
              "split_range({}, {}, {})", total, num_parts, part_idx);
  const std::int64_t base = total / num_parts;
  const std::int64_t extra = total % num_parts;
  return {.first = part_idx * base + std::min(part_idx, extra),
          .count = base + (part_idx < extra ? 1 : 0)};
}

namespace {

// One layer of `rank`'s weights, copied out of the full layer.
rank_layer_weights shard_layer(const layer_weights& fl, const model_spec& spec, const layout& l,
                               std::int64_t i, std::int64_t rank) {
  rank_layer_weights rl;
  rl.input_norm = copy_full(fl.input_norm);
  rl.post_attn_norm = copy_full(fl.post_attn_norm);
  rl.o_heads = l.rank_q_heads(rank, spec);
  rl.o_proj = copy_cols(fl.o_proj, scaled(rl.o_heads, spec.attn_out_head_dim()));
  if (spec.is_mla()) {
    shard_mla(fl, spec, l, rank, rl);
  } else {
    shard_gqa(fl, spec, l, rank, rl);
  }
  shard_ffn(fl, spec, l, i, rank, rl);
  return rl;
}

status check_shard_args(const model_spec& spec, const layout& l, std::int64_t rank,
                        std::string_view who) {
  if (status st = validate(l, spec); !st.ok()) {
    return st.with_context(
        fmt::format("{}: layout {} for model '{}'", who, l.to_string(), spec.name));
  }
  if (rank < 0 || rank >= l.num_ranks) {
    return invalid_argument("{}: rank {} out of range [0, {}) for layout {}", who, rank,
                            l.num_ranks, l.to_string());
  }
  return ok_status();
}

}  // namespace

expected<rank_weights> shard_weights(const model_weights& full, const layout& l,
                                     std::int64_t rank) {
  const model_spec& spec = full.spec;
  HELIX_RETURN_IF_ERROR(check_shard_args(spec, l, rank, "shard_weights"));
  if (static_cast<std::int64_t>(full.layers.size()) != spec.num_layers) {
    return invalid_argument("shard_weights: model '{}' has {} layers of weights, spec says {}",
                            spec.name, full.layers.size(), spec.num_layers);
  }
  rank_weights out;
  out.rank = rank;
  out.layout = l;
  out.spec = spec;
  out.weight_type = full.weight_type;
  out.embed = copy_full(full.embed);
  out.final_norm = copy_full(full.final_norm);
  out.vocab = split_range(spec.vocab, l.num_ranks, rank);
  out.lm_head = copy_rows(full.lm_head_or_embed(), out.vocab);
  out.layers.reserve(full.layers.size());
  for (std::int64_t i = 0; i < spec.num_layers; ++i) {
    out.layers.push_back(shard_layer(full.layers[static_cast<std::size_t>(i)], spec, l, i, rank));
  }
  return out;
}

expected<rank_weights> seeded_rank_weights(const model_spec& spec, dtype weight_type,
                                           std::uint64_t seed, const layout& l, std::int64_t rank) {
  HELIX_RETURN_IF_ERROR(spec.validate());
  HELIX_RETURN_IF_ERROR(check_shard_args(spec, l, rank, "seeded_rank_weights"));
  if (weight_type == dtype::fp8_e4m3) {
    return invalid_argument("seeded_rank_weights: fp8_e4m3 is not a weight type here");
  }
  // The model's tensors in list_tensors order, one layer at a time: the embedding is tensor 1,
  // then every layer's, then the final norm and the LM head.
  model_weights globals;
  globals.spec = spec;
  globals.weight_type = weight_type;
  globals.embed = tensor(weight_type, {spec.vocab, spec.hidden});
  std::uint64_t next = 1;
  {
    const std::vector<named_tensor> embed = {
        {"model.embed_tokens.weight", &globals.embed, tensor_role::embedding, spec.hidden}};
    seed_tensors(embed, seed, next++);
  }
  rank_weights out;
  out.rank = rank;
  out.layout = l;
  out.spec = spec;
  out.weight_type = weight_type;
  out.layers.reserve(static_cast<std::size_t>(spec.num_layers));
  for (std::int64_t i = 0; i < spec.num_layers; ++i) {
    layer_weights layer = allocate_layer(spec, weight_type, i);
    const std::vector<named_tensor> tensors = list_layer_tensors(layer, i);
    seed_tensors(tensors, seed, next);
    next += tensors.size();
    out.layers.push_back(shard_layer(layer, spec, l, i, rank));
  }  // each full layer is freed as the next one is made
  globals.final_norm = tensor(dtype::f32, {spec.hidden});
  std::vector<named_tensor> tail = {
      {"model.norm.weight", &globals.final_norm, tensor_role::norm, 0}};
  if (!spec.tie_word_embeddings) {
    globals.lm_head = tensor(weight_type, {spec.vocab, spec.hidden});
    tail.push_back({"lm_head.weight", &globals.lm_head, tensor_role::linear, spec.hidden});
  }
  seed_tensors(tail, seed, next);
  out.embed = std::move(globals.embed);
  out.final_norm = std::move(globals.final_norm);
  out.vocab = split_range(spec.vocab, l.num_ranks, rank);
  out.lm_head = copy_rows(globals.lm_head_or_embed(), out.vocab);
  return out;
}

}  // namespace helix::model
