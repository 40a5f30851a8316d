#include "model/sharding.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

namespace helix::model {

index_range split_range(std::int64_t total, std::int64_t num_parts, std::int64_t part_idx) {
  HELIX_CHECK(num_parts >= 1 && part_idx >= 0 && part_idx < num_parts && total >= 0,
              "split_range({}, {}, {})", total, num_parts, part_idx);
  const std::int64_t base = total / num_parts;
  const std::int64_t extra = total % num_parts;
  return {.first = part_idx * base + std::min(part_idx, extra),
          .count = base + (part_idx < extra ? 1 : 0)};
}

shape cut_shape(const shape& full, const tensor_cut& cut) {
  if (cut.how == tensor_cut::kind::whole) return full;
  HELIX_CHECK(full.rank == 2, "a rows/cols cut needs a 2-D tensor, got {}", full.to_string());
  if (cut.how == tensor_cut::kind::cols) {
    HELIX_CHECK(cut.ranges.size() == 1, "a cols cut has one range, got {}", cut.ranges.size());
    const index_range c = cut.ranges[0];
    HELIX_CHECK(c.first >= 0 && c.count >= 0 && c.end() <= full[1], "columns [{}, {}) out of {}",
                c.first, c.end(), full.to_string());
    return {full[0], c.count};
  }
  std::int64_t total = 0;
  for (const index_range& r : cut.ranges) {
    HELIX_CHECK(r.first >= 0 && r.count >= 0 && r.end() <= full[0], "rows [{}, {}) out of {}",
                r.first, r.end(), full.to_string());
    total += r.count;
  }
  return {total, full[1]};
}

std::vector<cut_run> cut_runs(const shape& full, const tensor_cut& cut) {
  const shape piece = cut_shape(full, cut);
  std::vector<cut_run> runs;
  switch (cut.how) {
    case tensor_cut::kind::whole:
      if (full.numel() > 0) runs.push_back({0, 0, full.numel()});
      break;
    case tensor_cut::kind::rows: {
      std::int64_t at = 0;
      for (const index_range& r : cut.ranges) {
        if (r.count == 0) continue;
        runs.push_back({r.first * full[1], at, r.count * full[1]});
        at += r.count * full[1];
      }
      break;
    }
    case tensor_cut::kind::cols: {
      const index_range c = cut.ranges[0];
      if (c.count == 0) break;
      for (std::int64_t i = 0; i < full[0]; ++i) {
        runs.push_back({i * full[1] + c.first, i * piece[1], c.count});
      }
      break;
    }
  }
  return runs;
}

block_scales cut_scales(const block_scales& full, const tensor_cut& cut) {
  if (cut.how == tensor_cut::kind::whole) return full;
  block_scales out;
  out.block_k = full.block_k;
  const auto per_row = static_cast<std::size_t>(full.per_row);
  if (cut.how == tensor_cut::kind::rows) {  // the rows' scales, in the cut's order
    out.phase = full.phase;
    out.per_row = full.per_row;
    for (const index_range& r : cut.ranges) {
      const auto first = full.row_scales.begin() +
                         static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r.first) * per_row);
      out.row_scales.insert(
          out.row_scales.end(), first,
          first + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(r.count) * per_row));
    }
    return out;
  }
  // Columns [c0, c0 + count): the blocks they touch, from column c0's.
  const index_range c = cut.ranges[0];
  const std::int64_t at = c.first + full.phase;
  const std::int64_t first_block = at / full.block_k;
  out.phase = at % full.block_k;
  out.per_row = (c.count - 1 + out.phase) / full.block_k + 1;
  const std::size_t rows = per_row == 0 ? 0 : full.row_scales.size() / per_row;
  for (std::size_t r = 0; r < rows; ++r) {
    const auto first =
        full.row_scales.begin() +
        static_cast<std::ptrdiff_t>(r * per_row + static_cast<std::size_t>(first_block));
    out.row_scales.insert(out.row_scales.end(), first, first + out.per_row);
  }
  return out;
}

namespace {

// The piece `cut` of an in-memory full tensor; an empty (rank-0) tensor stays empty.
tensor cut_tensor(const tensor& full, const tensor_cut& cut) {
  if (full.dims().rank == 0) return {};
  tensor out(full.type(), cut_shape(full.dims(), cut));
  const std::size_t elem = dtype_bytes(full.type());
  auto* dst = static_cast<unsigned char*>(out.data());
  const auto* src = static_cast<const unsigned char*>(full.data());
  for (const cut_run& r : cut_runs(full.dims(), cut)) {
    std::memcpy(dst + static_cast<std::size_t>(r.piece_offset) * elem,
                src + static_cast<std::size_t>(r.full_offset) * elem,
                static_cast<std::size_t>(r.count) * elem);
  }
  if (const block_scales* s = full.scales()) out.set_scales(cut_scales(*s, cut));
  return out;
}

index_range scaled(index_range heads, std::int64_t width) {
  return {.first = heads.first * width, .count = heads.count * width};
}

tensor_cut whole(tensor& dst) {
  return {.how = tensor_cut::kind::whole, .ranges = {}, .dst = &dst};
}
tensor_cut rows(std::vector<index_range> ranges, tensor& dst) {
  return {.how = tensor_cut::kind::rows, .ranges = std::move(ranges), .dst = &dst};
}
tensor_cut cols(index_range c, tensor& dst) {
  return {.how = tensor_cut::kind::cols, .ranges = {c}, .dst = &dst};
}

// Appends one layer's tensors to a plan, in list_layer_tensors() order with its names and
// allocate_layer()'s shapes (a test checks the two agree for every built-in model).
class layer_planner {
 public:
  layer_planner(const model_spec& spec, dtype weight_type, std::int64_t layer_idx,
                std::vector<full_tensor_plan>& plan)
      : spec_(spec),
        weight_type_(weight_type),
        prefix_(fmt::format("model.layers.{}", layer_idx)),
        plan_(plan) {}

  void add(std::string_view suffix, shape dims, tensor_role role, std::vector<tensor_cut> cuts) {
    const bool f32 = role == tensor_role::norm || role == tensor_role::router ||
                     role == tensor_role::router_bias;
    plan_.push_back({.name = prefix_ + std::string(suffix),
                     .dims = dims,
                     .type = f32 ? dtype::f32 : weight_type_,
                     .role = role,
                     .cuts = std::move(cuts)});
  }

  // A SwiGLU MLP of intermediate size `ffn`: column-parallel gate/up, row-parallel down, so the
  // partial down-projections of all parts sum to the full output (one all-reduce finishes it).
  // `dst` null: the rank holds none of it.
  void mlp(std::string_view suffix, std::int64_t ffn, mlp_shard* dst, std::int64_t num_parts,
           std::int64_t part_idx) {
    const std::int64_t h = spec_.hidden;
    const std::string p(suffix);
    if (dst == nullptr) {
      add(p + ".gate_proj.weight", {ffn, h}, tensor_role::linear, {});
      add(p + ".up_proj.weight", {ffn, h}, tensor_role::linear, {});
      add(p + ".down_proj.weight", {h, ffn}, tensor_role::linear, {});
      return;
    }
    dst->ffn = split_range(ffn, num_parts, part_idx);
    add(p + ".gate_proj.weight", {ffn, h}, tensor_role::linear, {rows({dst->ffn}, dst->gate_proj)});
    add(p + ".up_proj.weight", {ffn, h}, tensor_role::linear, {rows({dst->ffn}, dst->up_proj)});
    add(p + ".down_proj.weight", {h, ffn}, tensor_role::linear, {cols(dst->ffn, dst->down_proj)});
  }

 private:
  const model_spec& spec_;
  dtype weight_type_;
  std::string prefix_;
  std::vector<full_tensor_plan>& plan_;
};

void plan_gqa(const model_spec& spec, layer_planner& p, rank_layer_weights& out) {
  const std::int64_t d = spec.head_dim;
  const std::int64_t h = spec.hidden;
  const std::int64_t kv_rows = spec.num_kv_heads * d;
  p.add(".self_attn.q_proj.weight", {spec.num_q_heads * d, h}, tensor_role::linear,
        {rows({scaled(out.q_heads, d)}, out.q_proj)});
  p.add(".self_attn.k_proj.weight", {kv_rows, h}, tensor_role::linear,
        {rows({scaled(out.kv_heads, d)}, out.k_proj)});
  p.add(".self_attn.v_proj.weight", {kv_rows, h}, tensor_role::linear,
        {rows({scaled(out.kv_heads, d)}, out.v_proj)});
}

// Helix and medha have TPA = 1 for MLA (K = 1): every rank computes every head over its KV
// shard, so the query path and W_UK are needed in full and only W_UV follows the post-all-to-all
// head slice. tp (TPA = N) keeps the latent on every rank and splits the query heads instead;
// taking the column's heads from the layout covers both without a special case.
void plan_mla(const model_spec& spec, layer_planner& p, rank_layer_weights& out) {
  const mla_spec& m = spec.mla;
  const std::int64_t h = spec.hidden;
  const std::int64_t nq = spec.num_q_heads;
  const index_range q_rows = scaled(out.q_heads, m.qk_head_dim());
  if (m.q_lora_rank > 0) {
    p.add(".self_attn.q_a_proj.weight", {m.q_lora_rank, h}, tensor_role::linear,
          {whole(out.q_a_proj)});
    p.add(".self_attn.q_a_layernorm.weight", {m.q_lora_rank}, tensor_role::norm,
          {whole(out.q_a_norm)});
    p.add(".self_attn.q_b_proj.weight", {nq * m.qk_head_dim(), m.q_lora_rank}, tensor_role::linear,
          {rows({q_rows}, out.q_b_proj)});
  } else {
    p.add(".self_attn.q_proj.weight", {nq * m.qk_head_dim(), h}, tensor_role::linear,
          {rows({q_rows}, out.q_proj)});
  }
  p.add(".self_attn.kv_a_proj_with_mqa.weight", {m.kv_lora_rank + m.qk_rope_head_dim, h},
        tensor_role::linear, {whole(out.kv_a_proj)});
  p.add(".self_attn.kv_a_layernorm.weight", {m.kv_lora_rank}, tensor_role::norm,
        {whole(out.kv_a_norm)});
  const std::int64_t nope = m.qk_nope_head_dim;
  const std::int64_t v = m.v_head_dim;
  const std::int64_t per_head = nope + v;
  std::vector<index_range> uk;
  for (std::int64_t q = out.q_heads.first; q < out.q_heads.end(); ++q) {
    uk.push_back({.first = q * per_head, .count = nope});
  }
  std::vector<index_range> uv;
  for (std::int64_t q = out.o_heads.first; q < out.o_heads.end(); ++q) {
    uv.push_back({.first = q * per_head + nope, .count = v});
  }
  p.add(".self_attn.kv_b_proj.weight", {nq * per_head, m.kv_lora_rank}, tensor_role::linear,
        {rows(std::move(uk), out.w_uk), rows(std::move(uv), out.w_uv)});
}

void plan_ffn(const model_spec& spec, const layout& l, std::int64_t layer_idx, std::int64_t rank,
              layer_planner& p, rank_layer_weights& out) {
  out.is_moe = spec.layer_is_moe(layer_idx);
  out.has_ffn = l.in_ffn(rank);
  // Dense and shared MLPs are split over every FFN rank; the position in ffn_ranks() is the
  // rank's FFN slot (helix/tp: the rank itself; medha: its column).
  const std::vector<std::int64_t> ffn_ranks = l.ffn_ranks();
  const auto slot = static_cast<std::int64_t>(std::find(ffn_ranks.begin(), ffn_ranks.end(), rank) -
                                              ffn_ranks.begin());
  const auto num_slots = static_cast<std::int64_t>(ffn_ranks.size());
  if (!out.is_moe) {
    p.mlp(".mlp", spec.ffn, out.has_ffn ? &out.mlp : nullptr, num_slots, slot);
    return;
  }
  const moe_spec& e = spec.moe;
  const auto held = [&](tensor& dst) {
    return out.has_ffn ? std::vector<tensor_cut>{whole(dst)} : std::vector<tensor_cut>{};
  };
  p.add(".mlp.gate.weight", {e.num_experts, spec.hidden}, tensor_role::router, held(out.router));
  if (e.score_correction_bias) {
    p.add(".mlp.gate.e_score_correction_bias", {e.num_experts}, tensor_role::router_bias,
          held(out.router_bias));
  }
  index_range group;
  std::int64_t group_size = 1;
  std::int64_t tpf_idx = 0;
  if (out.has_ffn) {
    const ffn_coord c = l.ffn_coords(rank);
    group = l.group_experts(c.ep_idx, spec);
    group_size = static_cast<std::int64_t>(l.tpf_group(c.ep_idx).size());
    tpf_idx = c.tpf_idx;
    out.experts.resize(static_cast<std::size_t>(group.count));
  }
  for (std::int64_t x = 0; x < e.num_experts; ++x) {
    mlp_shard* dst = nullptr;
    if (group.contains(x)) {
      expert_shard& s = out.experts[static_cast<std::size_t>(x - group.first)];
      s.expert_idx = x;
      dst = &s.mlp;
    }
    p.mlp(fmt::format(".mlp.experts.{}", x), e.expert_ffn, dst, group_size, tpf_idx);
  }
  if (e.num_shared_experts > 0) {
    p.mlp(".mlp.shared_experts", e.num_shared_experts * e.expert_ffn,
          out.has_ffn ? &out.shared : nullptr, num_slots, slot);
  }
}

void plan_layer(const model_spec& spec, dtype weight_type, const layout& l, std::int64_t layer_idx,
                std::int64_t rank, rank_layer_weights& out, std::vector<full_tensor_plan>& plan) {
  layer_planner p(spec, weight_type, layer_idx, plan);
  out.q_heads = l.column_q_heads(l.attention_coords(rank).tpa_idx, spec);
  out.kv_heads = l.rank_kv_heads(rank, spec);
  out.o_heads = l.rank_q_heads(rank, spec);
  p.add(".input_layernorm.weight", {spec.hidden}, tensor_role::norm, {whole(out.input_norm)});
  if (spec.is_mla()) {
    plan_mla(spec, p, out);
  } else {
    plan_gqa(spec, p, out);
  }
  const std::int64_t dv = spec.attn_out_head_dim();
  p.add(".self_attn.o_proj.weight", {spec.hidden, spec.num_q_heads * dv}, tensor_role::linear,
        {cols(scaled(out.o_heads, dv), out.o_proj)});
  p.add(".post_attention_layernorm.weight", {spec.hidden}, tensor_role::norm,
        {whole(out.post_attn_norm)});
  plan_ffn(spec, l, layer_idx, rank, p, out);
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

// The plan, for arguments already checked.
std::vector<full_tensor_plan> make_plan(const model_spec& spec, dtype weight_type, const layout& l,
                                        std::int64_t rank, rank_weights& out) {
  out.rank = rank;
  out.layout = l;
  out.spec = spec;
  out.weight_type = weight_type;
  out.vocab = split_range(spec.vocab, l.num_ranks, rank);
  // Sized before any cut points into them: the plan's pointers must stay valid.
  out.layers.clear();
  out.layers.resize(static_cast<std::size_t>(spec.num_layers));
  std::vector<full_tensor_plan> plan;
  const shape vocab_rows = {spec.vocab, spec.hidden};
  // A tied LM head is cut from the embedding before the embedding is taken whole, so that a
  // caller holding the full tensor may move it into the last cut.
  std::vector<tensor_cut> embed_cuts;
  if (spec.tie_word_embeddings) embed_cuts.push_back(rows({out.vocab}, out.lm_head));
  embed_cuts.push_back(whole(out.embed));
  plan.push_back({.name = "model.embed_tokens.weight",
                  .dims = vocab_rows,
                  .type = embedding_type(weight_type),
                  .role = tensor_role::embedding,
                  .cuts = std::move(embed_cuts)});
  for (std::int64_t i = 0; i < spec.num_layers; ++i) {
    plan_layer(spec, weight_type, l, i, rank, out.layers[static_cast<std::size_t>(i)], plan);
  }
  plan.push_back({.name = "model.norm.weight",
                  .dims = {spec.hidden},
                  .type = dtype::f32,
                  .role = tensor_role::norm,
                  .cuts = {whole(out.final_norm)}});
  if (!spec.tie_word_embeddings) {
    plan.push_back({.name = "lm_head.weight",
                    .dims = vocab_rows,
                    .type = weight_type,
                    .role = tensor_role::linear,
                    .cuts = {rows({out.vocab}, out.lm_head)}});
  }
  return plan;
}

status check_weight_type(dtype, std::string_view) {
  return ok_status();  // every dtype is a weight type (fp8_e4m3: block-scaled linear weights)
}

}  // namespace

expected<std::vector<full_tensor_plan>> plan_rank_weights(const model_spec& spec, dtype weight_type,
                                                          const layout& l, std::int64_t rank,
                                                          rank_weights& out) {
  HELIX_RETURN_IF_ERROR(spec.validate());
  HELIX_RETURN_IF_ERROR(check_shard_args(spec, l, rank, "plan_rank_weights"));
  HELIX_RETURN_IF_ERROR(check_weight_type(weight_type, "plan_rank_weights"));
  return make_plan(spec, weight_type, l, rank, out);
}

namespace {

// Whether `cut` of a tensor of `dims` is the whole tensor, in order.
bool covers_whole(const tensor_cut& cut, const shape& dims) {
  switch (cut.how) {
    case tensor_cut::kind::whole:
      return true;
    case tensor_cut::kind::rows:
      return cut.ranges.size() == 1 && cut.ranges[0].first == 0 && cut.ranges[0].count == dims[0];
    case tensor_cut::kind::cols:
      return cut.ranges.size() == 1 && cut.ranges[0].first == 0 && cut.ranges[0].count == dims[1];
  }
  return false;
}

// Cuts (or, with `take`, moves whole pieces out of) the full tensors into the rank's shards.
expected<rank_weights> shard_from(model_weights& full, const layout& l, std::int64_t rank,
                                  bool take) {
  const model_spec& spec = full.spec;
  HELIX_RETURN_IF_ERROR(check_shard_args(spec, l, rank, "shard_weights"));
  if (static_cast<std::int64_t>(full.layers.size()) != spec.num_layers) {
    return invalid_argument("shard_weights: model '{}' has {} layers of weights, spec says {}",
                            spec.name, full.layers.size(), spec.num_layers);
  }
  const std::vector<named_tensor> tensors = list_tensors(full);
  std::unordered_map<std::string_view, tensor*> by_name;
  for (const named_tensor& nt : tensors) by_name.emplace(nt.name, nt.t);
  rank_weights out;
  for (const full_tensor_plan& p : make_plan(spec, full.weight_type, l, rank, out)) {
    if (p.cuts.empty()) continue;
    const auto it = by_name.find(p.name);
    if (it == by_name.end() || it->second->dims() != p.dims) {
      return invalid_argument("shard_weights: model '{}' has no tensor '{}' of shape {}", spec.name,
                              p.name, p.dims.to_string());
    }
    tensor& src = *it->second;
    if (take && p.cuts.size() == 1 && src.dims().rank > 0 && covers_whole(p.cuts[0], p.dims)) {
      *p.cuts[0].dst = std::move(src);
      continue;
    }
    for (const tensor_cut& c : p.cuts) *c.dst = cut_tensor(src, c);
  }
  return out;
}

}  // namespace

expected<rank_weights> shard_weights(const model_weights& full, const layout& l,
                                     std::int64_t rank) {
  // list_tensors() hands out mutable pointers; without `take` they are only read.
  return shard_from(const_cast<model_weights&>(full), l, rank, /*take=*/false);
}

expected<rank_weights> shard_weights(model_weights&& full, const layout& l, std::int64_t rank) {
  return shard_from(full, l, rank, /*take=*/true);
}

expected<rank_weights> seeded_rank_weights(const model_spec& spec, dtype weight_type,
                                           std::uint64_t seed, const layout& l, std::int64_t rank) {
  HELIX_RETURN_IF_ERROR(spec.validate());
  HELIX_RETURN_IF_ERROR(check_shard_args(spec, l, rank, "seeded_rank_weights"));
  HELIX_RETURN_IF_ERROR(check_weight_type(weight_type, "seeded_rank_weights"));
  rank_weights out;
  // The plan lists the tensors in seed order: the k-th (1-based) is seeded as tensor k.
  std::uint64_t tensor_idx = 1;
  for (const full_tensor_plan& p : make_plan(spec, weight_type, l, rank, out)) {
    if (!p.cuts.empty()) {
      tensor full(p.type, p.dims);
      const std::int64_t fan_in = p.dims.rank == 2 ? p.dims[1] : 0;
      seed_tensors(std::vector<named_tensor>{{p.name, &full, p.role, fan_in}}, seed, tensor_idx);
      for (std::size_t c = 0; c + 1 < p.cuts.size(); ++c)
        *p.cuts[c].dst = cut_tensor(full, p.cuts[c]);
      const tensor_cut& last = p.cuts.back();
      *last.dst = last.how == tensor_cut::kind::whole ? std::move(full) : cut_tensor(full, last);
    }
    ++tensor_idx;
  }
  return out;
}

}  // namespace helix::model
