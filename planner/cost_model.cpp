// Roofline cost model of one decode step (planner/cost_model.hpp).
//
// Each phase of a layer is a roofline on one device, max(bytes / (peak bandwidth x achievable),
// FLOPs / (peak FLOPs x achievable)), and the phases of a layer run one after the other:
//   attention = QKV projection (+ MLA absorption) | attention kernel over the local KV | W_UV and
//               o_proj;  ffn = router + activated experts + shared expert, or the dense MLP;
//   comm      = the all-to-all (helix, medha), the o_proj all-reduce and the FFN's collective.
// Nothing overlaps except what HOP-B hides (helix only). Matmul FLOPs are 2 x params x tokens.
//
// ASSUMPTIONS (one per line; each is repeated where it is used):
//  A1 collectives are direct exchanges through the NVSwitch (not rings): an all-reduce is two-shot
//     (reduce-scatter + all-gather), 2 (n-1)/n bytes/link + 2 latency; an all-to-all or an
//     all-gather (n-1)/n bytes/link + latency; a ring's 2 (n-1) latencies would be paid by nobody
//     at decode message sizes on a switched fabric.
//  A2 routing is uniform and independent: a batch of T tokens activates E (1 - (1 - k/E)^T)
//     distinct experts (expected_active_experts), spread evenly over the EP groups; load
//     imbalance (the busiest group sets the pace) is not modelled.
//  A3 only activated experts' weights are read; a resident but unused expert costs memory only.
//  A4 attention reads its KV once per step at achievable bandwidth (the KV is not cached on chip);
//     GQA kernels read K and V (2 Hsz per KV head), MLA reads the 576-wide latent row once.
//  A5 MLA decode is absorbed: q_nope is projected through W_UK into the latent (weights
//     kv_lora x qk_nope per head), scores over kv_lora + rope = 576 dims and the output over
//     kv_lora = 512 dims: 2 S (576 + 512) FLOPs per token per head; W_UV (kv_lora x v_head per
//     head) runs after the merge on the Q/N heads a rank owns; q_a and kv_a are never split.
//  A6 the Helix all-to-all carries, per token and query head of the column, the partial output
//     (Hsz wide for GQA, kv_lora_rank wide for MLA) in the activation precision plus two fp32
//     softmax statistics (TensorRT-LLM's layout).
//  A7 helix, tp and medha end every FFN with one all-reduce over all N ranks of [B, H] (what the
//     runtime does: model/rank_program.hpp step 8; medha's non-FFN ranks add zeros, which also
//     hands them the result). The paper's MoE path (all-reduce over TPF, then all-gather over EP)
//     moves (EP-1) x rows x H per rank instead, more than the all-reduce's 2 (N-1)/N B H.
//  A8 dense layers of an MoE model, and the shared expert, are split over the FFN ranks like a
//     dense MLP (TP over N for helix/tp, over TPA for medha); routed experts over the TPF x EP
//     grid. The router is replicated.
//  A9 dp_ep: each attention replica (TP width tpa, usually 1) holds whole requests,
//     ceil(B / dp) of them; routed experts are placed whole, E/N per rank (EP = N); tokens reach
//     them by an all-to-all dispatch and come back by an all-to-all combine (DeepEP style), each
//     rank sending its B/N tokens x top-k rows; the shared expert runs inside the replica (TP
//     tpa); dense layers are TP over N, entered by an all-gather of [B, H] and left by a
//     reduce-scatter.
//  A10 tp_pp: every stage holds ceil(L/PP) layers and runs them at TP width tpa on micro-batches
//     of ceil(B/PP) requests; a token passes all PP stages (latency = PP x the slowest stage, plus
//     a point-to-point send of [b, H] per stage); with B >= PP micro-batches the pipeline has no
//     bubble in steady state (we claim no other bubble reduction), so throughput = B / latency.
//  A11 the embedding is held whole on every rank (the runtime does so); the LM head is split over
//     the ranks that run the last layer (vocabulary-parallel) and samples from per-shard
//     candidates (an all-gather of 64 (value, index) pairs per token and shard).
//  A12 workspace = hw.reserved_bytes + f32 scratch for one step's activations.
//  A13 HOP-B: the all-to-all of request r overlaps the attention kernel of request r+1 (not the
//     projections); per request the kernel takes attention_kernel / B and the exchange is one
//     all-to-all of 1/B of the bytes (paying the latency each time); the exposed time is
//     hopb_exposed_s, or the plain all-to-all where that is smaller (HOP-B is only used where it
//     helps).
#include <algorithm>
#include <cmath>

#include "planner/cost_model.hpp"

namespace helix::planner {

// ---- building blocks --------------------------------------------------------------------------

double all_reduce_s(const hardware& hw, std::int64_t n, double bytes) {
  if (n <= 1) return 0;
  const double frac = static_cast<double>(n - 1) / static_cast<double>(n);
  return 2 * frac * bytes / hw.link_bytes_per_s + 2 * hw.link_latency_s;  // A1
}

double all_to_all_s(const hardware& hw, std::int64_t n, double bytes) {
  if (n <= 1) return 0;
  const double frac = static_cast<double>(n - 1) / static_cast<double>(n);
  return frac * bytes / hw.link_bytes_per_s + hw.link_latency_s;  // A1
}

double all_gather_s(const hardware& hw, std::int64_t n, double bytes) {
  return all_to_all_s(hw, n, bytes);  // same volume per rank: (n-1)/n of the whole buffer
}

double p2p_s(const hardware& hw, double bytes) {
  return bytes / hw.link_bytes_per_s + hw.link_latency_s;
}

double hopb_total_s(double attention_s, double a2a_s, std::int64_t items) {
  if (items <= 0) return 0;
  return attention_s + a2a_s + static_cast<double>(items - 1) * std::max(attention_s, a2a_s);
}

double hopb_exposed_s(double attention_s, double a2a_s, std::int64_t items) {
  if (items <= 0) return 0;
  return a2a_s + static_cast<double>(items - 1) * std::max(0.0, a2a_s - attention_s);
}

double expected_active_experts(std::int64_t num_experts, std::int64_t top_k, double tokens) {
  if (num_experts <= 0 || top_k <= 0 || tokens <= 0) return 0;
  const double e = static_cast<double>(num_experts);
  const double miss = 1.0 - std::min(1.0, static_cast<double>(top_k) / e);
  return e * (1.0 - std::pow(miss, tokens));  // A2
}

roofline_terms appendix_a_roofline(const model_spec& spec, const hardware& hw,
                                   const plan_workload& w, const plan_config& c) {
  const double bw = hw.hbm_bytes_per_s * hw.achievable_bandwidth;
  const double h = static_cast<double>(spec.hidden);
  const double hsz = static_cast<double>(spec.head_dim);
  const double tpa = static_cast<double>(c.tpa);
  const double kv_heads = std::ceil(static_cast<double>(spec.num_kv_heads) / tpa);
  const double q_heads = static_cast<double>(spec.num_q_heads) / tpa;
  roofline_terms r;
  r.kv_read_s = static_cast<double>(c.batch) * 2 * kv_heads * hsz *
                (static_cast<double>(w.context) / static_cast<double>(c.kvp)) *
                precision_bytes(w.kv) / bw;
  r.weight_read_s = (2 * h * q_heads * hsz + 2 * h * kv_heads * hsz +
                     3 * h * static_cast<double>(spec.ffn) / static_cast<double>(c.tpf)) *
                    precision_bytes(w.weights) / bw;
  return r;
}

// ---- configurations ---------------------------------------------------------------------------

std::string_view plan_family_name(plan_family f) {
  switch (f) {
    case plan_family::helix:
      return "helix";
    case plan_family::tp:
      return "tp";
    case plan_family::tp_pp:
      return "tp_pp";
    case plan_family::dp_ep:
      return "dp_ep";
    case plan_family::medha:
      return "medha";
  }
  return "unknown";
}

std::string plan_config::to_string() const {
  std::string grid;
  switch (family) {
    case plan_family::helix:
      grid = fmt::format("helix:kvp={},tpa={},tpf={},ep={}", kvp, tpa, tpf, ep);
      break;
    case plan_family::tp:
      grid = fmt::format("tp:tp={}", num_devices);
      break;
    case plan_family::medha:
      grid = fmt::format("medha:kvp={},tpa={}", kvp, tpa);
      break;
    case plan_family::tp_pp:
      grid = fmt::format("tp_pp:tp={},pp={}", tpa, pp);
      break;
    case plan_family::dp_ep:
      grid = fmt::format("dp_ep:dp={},tpa={},tpf={},ep={}", dp, tpa, tpf, ep);
      break;
  }
  return fmt::format("{} batch={}{}", grid, batch, hopb ? " hopb" : "");
}

expected<helix::layout> to_runtime_layout(const plan_config& c, const model_spec& spec) {
  helix::layout l;
  switch (c.family) {
    case plan_family::helix:
      l.family = layout_family::helix;
      break;
    case plan_family::tp:
      l.family = layout_family::tp;
      break;
    case plan_family::medha:
      l.family = layout_family::medha;
      break;
    case plan_family::tp_pp:
    case plan_family::dp_ep:
      return invalid_argument("{}: family {} is modelled only, the runtime cannot run it",
                              c.to_string(), plan_family_name(c.family));
  }
  l.kvp = c.kvp;
  l.tpa = c.tpa;
  l.tpf = c.tpf;
  l.ep = c.ep;
  l.num_ranks = c.num_devices;
  HELIX_RETURN_IF_ERROR(validate(l, spec));
  return l;
}

namespace {

// The model's numbers after resolving precisions and efficiencies.
struct env {
  const model_spec& spec;
  const hardware& hw;
  double wb;  // bytes per weight
  double kb;  // bytes per KV value
  double ab;  // bytes per activation value in collectives
  double bw;  // achievable HBM bytes/s
  double fl;  // achievable FLOP/s at the compute precision
  double h;   // hidden
};

double roofline(const env& e, double bytes, double flops) {
  return std::max(bytes / e.bw, flops / e.fl);
}

double d(std::int64_t v) {
  return static_cast<double>(v);
}

std::int64_t ceil_div(std::int64_t a, std::int64_t b) {
  return (a + b - 1) / b;
}

// What one device of a configuration holds and computes, per layer; see plan_config's comment
// and assumptions A7-A11 for each family.
struct shape {
  double attn_tokens = 0;      // query tokens it projects and attends
  std::int64_t q_heads = 0;    // query heads whose attention it computes
  std::int64_t kv_heads = 0;   // GQA KV heads it stores, duplicates included (MLA: unused)
  double kv_tokens = 0;        // KV tokens per request it holds
  double kv_requests = 0;      // requests whose KV it holds
  std::int64_t out_heads = 0;  // heads of its W_UV / o_proj slice
  std::int64_t a2a_group = 1;  // KVP (helix, medha)
  std::int64_t o_group = 1;    // o_proj all-reduce group
  double dense_tokens = 0;     // tokens through its dense-MLP slice
  std::int64_t dense_split = 1;
  double routing_tokens = 0;      // tokens whose routings spread over the EP groups
  std::int64_t ep = 1;            // expert groups
  std::int64_t expert_split = 1;  // TPF slices of each expert
  double shared_tokens = 0;
  std::int64_t shared_split = 1;
  double router_tokens = 0;
  double lm_tokens = 0;
  std::int64_t vocab_split = 1;
  std::int64_t stage_layers = 0;  // layers this device runs
  bool hopb = false;
};

// GQA: Q, K, V. MLA (A5): q_a + q_b (or q directly), kv_a, and the W_UK absorption.
double qkv_params(const model_spec& s, std::int64_t q_heads, std::int64_t kv_heads) {
  const double h = d(s.hidden);
  if (!s.is_mla()) return h * d(q_heads) * d(s.head_dim) + 2 * h * d(kv_heads) * d(s.head_dim);
  const double q =
      s.mla.q_lora_rank > 0
          ? h * d(s.mla.q_lora_rank) + d(s.mla.q_lora_rank) * d(q_heads) * d(s.mla.qk_head_dim())
          : h * d(q_heads) * d(s.mla.qk_head_dim());
  return q + h * d(s.kv_key_dim()) + d(q_heads) * d(s.mla.qk_nope_head_dim) * d(s.mla.kv_lora_rank);
}

// o_proj, and for MLA the W_UV up-projection before it (A5).
double out_params(const model_spec& s, std::int64_t out_heads) {
  const double h = d(s.hidden);
  if (!s.is_mla()) return d(out_heads) * d(s.head_dim) * h;
  return d(out_heads) * d(s.mla.kv_lora_rank) * d(s.mla.v_head_dim) +
         d(out_heads) * d(s.mla.v_head_dim) * h;
}

// Cached values per token per layer on one device (A4): GQA 2 Hsz per stored KV head (TP beyond
// K duplicates heads, so kv_heads >= 1); MLA the latent + rope row, whatever the split (TP > 1
// duplicates it).
double kv_values(const model_spec& s, std::int64_t kv_heads) {
  return s.is_mla() ? d(s.kv_key_dim()) : 2 * d(kv_heads) * d(s.head_dim);
}

// Attention-kernel FLOPs per query token, head and KV token: QK^T and PV (GQA 2 Hsz each; MLA
// absorbed 2 (576 + 512), A5).
double core_flops_per_kv(const model_spec& s) {
  return s.is_mla() ? 2 * d(s.kv_key_dim() + s.kv_value_dim()) : 4 * d(s.head_dim);
}

// Width of one head's partial output in the all-to-all (A6).
double a2a_width(const model_spec& s) {
  return s.is_mla() ? d(s.mla.kv_lora_rank) : d(s.head_dim);
}

std::int64_t tp_kv_heads(const model_spec& s, std::int64_t t) {
  const std::int64_t k = s.layout_kv_heads();
  return t <= k ? k / t : 1;  // t > K: each rank keeps the one head its queries use
}

status check_plan_rules(const model_spec& spec, const plan_config& c) {
  const std::string cs = c.to_string();
  if (c.family == plan_family::helix || c.family == plan_family::tp ||
      c.family == plan_family::medha) {
    auto l = to_runtime_layout(c, spec);
    if (!l) return l.error();
    if (c.pp != 1 || c.dp != 1) return invalid_argument("{}: pp and dp must be 1", cs);
    return ok_status();
  }
  for (std::int64_t v : {c.num_devices, c.kvp, c.tpa, c.tpf, c.ep, c.pp, c.dp}) {
    if (v < 1) return invalid_argument("{}: all sizes must be positive", cs);
  }
  if (c.kvp != 1) return invalid_argument("{}: kvp must be 1", cs);
  // The attention TP width must be a valid tp layout (heads divisible, KV heads split or
  // duplicated whole).
  helix::layout t;
  t.family = layout_family::tp;
  t.num_ranks = t.tpa = t.tpf = c.tpa;
  HELIX_RETURN_IF_ERROR(validate(t, spec).with_context(cs));
  if (c.family == plan_family::tp_pp) {
    if (c.dp != 1 || c.ep != 1 || c.tpf != c.tpa) {
      return invalid_argument("{}: tp_pp needs dp = ep = 1 and tpf = tpa", cs);
    }
    if (c.num_devices != c.tpa * c.pp) {
      return invalid_argument("{}: N = {} != tp*pp = {}*{}", cs, c.num_devices, c.tpa, c.pp);
    }
    if (c.pp > spec.num_layers) {
      return invalid_argument("{}: pp = {} > layers = {}", cs, c.pp, spec.num_layers);
    }
    return ok_status();
  }
  // dp_ep
  if (c.pp != 1) return invalid_argument("{}: dp_ep needs pp = 1", cs);
  if (c.num_devices != c.dp * c.tpa) {
    return invalid_argument("{}: N = {} != dp*tpa = {}*{}", cs, c.num_devices, c.dp, c.tpa);
  }
  if (spec.is_moe()) {
    if (c.ep != c.num_devices || c.tpf != 1) {
      return invalid_argument("{}: dp_ep places whole experts: ep must be N = {}, tpf 1", cs,
                              c.num_devices);
    }
    if (spec.moe.num_experts % c.ep != 0) {
      return invalid_argument("{}: experts E = {} not divisible by EP = {}", cs,
                              spec.moe.num_experts, c.ep);
    }
  } else if (c.ep != 1 || c.tpf != c.num_devices) {
    return invalid_argument("{}: dense dp_ep needs ep = 1, tpf = N = {}", cs, c.num_devices);
  }
  return ok_status();
}

shape make_shape(const model_spec& spec, const plan_workload& w, const plan_config& c) {
  const std::int64_t n = c.num_devices;
  const double b_all = d(c.batch);
  const double s_all = d(w.context);
  shape sh;
  sh.stage_layers = spec.num_layers;
  switch (c.family) {
    case plan_family::helix:
    case plan_family::medha:
      sh.attn_tokens = b_all;  // every KVP rank projects the whole batch (redundant QKV)
      sh.q_heads = spec.num_q_heads / c.tpa;
      sh.kv_heads = spec.layout_kv_heads() / c.tpa;
      sh.kv_tokens = s_all / d(c.kvp);  // staggered round-robin append keeps shards even
      sh.kv_requests = b_all;
      sh.out_heads = spec.num_q_heads / n;
      sh.a2a_group = c.kvp;
      sh.o_group = n;
      sh.dense_tokens = sh.routing_tokens = sh.shared_tokens = sh.router_tokens = b_all;
      sh.ep = c.ep;
      sh.expert_split = c.tpf;
      // A8: dense MLPs and the shared expert over the FFN ranks (N, or medha's TPA ranks).
      sh.dense_split = sh.shared_split = c.family == plan_family::medha ? c.tpa : n;
      sh.lm_tokens = b_all;
      sh.vocab_split = n;
      sh.hopb = c.family == plan_family::helix && c.hopb;
      break;
    case plan_family::tp:
      sh.attn_tokens = b_all;
      sh.q_heads = spec.num_q_heads / n;
      sh.kv_heads = tp_kv_heads(spec, n);
      sh.kv_tokens = s_all;
      sh.kv_requests = b_all;
      sh.out_heads = spec.num_q_heads / n;
      sh.o_group = n;
      sh.dense_tokens = sh.routing_tokens = sh.shared_tokens = sh.router_tokens = b_all;
      sh.dense_split = sh.shared_split = sh.expert_split = n;
      sh.lm_tokens = b_all;
      sh.vocab_split = n;
      break;
    case plan_family::tp_pp: {  // A10
      const double micro = d(ceil_div(c.batch, c.pp));
      sh.attn_tokens = micro;
      sh.q_heads = spec.num_q_heads / c.tpa;
      sh.kv_heads = tp_kv_heads(spec, c.tpa);
      sh.kv_tokens = s_all;
      sh.kv_requests = b_all;  // a stage holds every request's KV for its layers
      sh.out_heads = sh.q_heads;
      sh.o_group = c.tpa;
      sh.dense_tokens = sh.routing_tokens = sh.shared_tokens = sh.router_tokens = micro;
      sh.dense_split = sh.shared_split = sh.expert_split = c.tpa;
      sh.lm_tokens = micro;
      sh.vocab_split = c.tpa;
      sh.stage_layers = ceil_div(spec.num_layers, c.pp);
      break;
    }
    case plan_family::dp_ep: {  // A9
      const double per_replica = d(ceil_div(c.batch, c.dp));
      sh.attn_tokens = per_replica;
      sh.q_heads = spec.num_q_heads / c.tpa;
      sh.kv_heads = tp_kv_heads(spec, c.tpa);
      sh.kv_tokens = s_all;
      sh.kv_requests = per_replica;
      sh.out_heads = sh.q_heads;
      sh.o_group = c.tpa;
      sh.dense_tokens = b_all;  // after the all-gather
      sh.dense_split = n;
      sh.routing_tokens = b_all;
      sh.ep = c.ep;
      sh.expert_split = c.tpf;
      sh.shared_tokens = sh.router_tokens = per_replica;
      sh.shared_split = c.tpa;
      sh.lm_tokens = per_replica;
      sh.vocab_split = c.tpa;
      break;
    }
  }
  return sh;
}

// One layer's cost on one device.
struct layer_eval {
  double kv_bytes = 0;
  double weight_bytes = 0;
  double flops = 0;
  double attention_s = 0;
  double ffn_s = 0;
  double a2a_s = 0;
  double comm_s = 0;
  double exposed_comm_s = 0;
  double active_experts = 0;
  [[nodiscard]] double layer_s() const { return attention_s + ffn_s + exposed_comm_s; }
};

layer_eval eval_layer(const env& e, const plan_config& c, const shape& sh, bool moe) {
  const model_spec& s = e.spec;
  layer_eval r;
  // Attention: projections, kernel, output projection (one roofline each).
  const double qkv_w = qkv_params(s, sh.q_heads, sh.kv_heads) * e.wb;
  const double qkv_f = 2 * qkv_params(s, sh.q_heads, sh.kv_heads) * sh.attn_tokens;
  const double kv = sh.attn_tokens * sh.kv_tokens * kv_values(s, sh.kv_heads) * e.kb;
  const double core_f = sh.attn_tokens * d(sh.q_heads) * sh.kv_tokens * core_flops_per_kv(s);
  const double out_w = out_params(s, sh.out_heads) * e.wb;
  const double out_f = 2 * out_params(s, sh.out_heads) * sh.attn_tokens;
  const double core_s = roofline(e, kv, core_f);
  r.attention_s = roofline(e, qkv_w, qkv_f) + core_s + roofline(e, out_w, out_f);
  r.kv_bytes = kv;
  r.weight_bytes = qkv_w + out_w;
  r.flops = qkv_f + core_f + out_f;

  // FFN.
  double ffn_w = 0;
  double ffn_f = 0;
  if (moe) {
    const moe_spec& m = s.moe;
    const double expert_params = 3 * e.h * d(m.expert_ffn) / d(sh.expert_split);
    r.active_experts = expected_active_experts(m.num_experts, m.experts_per_token,
                                               sh.routing_tokens) /
                       d(sh.ep);  // A2, A3
    const double shared_params =
        3 * e.h * d(m.num_shared_experts * m.expert_ffn) / d(sh.shared_split);
    const double router_params = e.h * d(m.num_experts);
    ffn_w = (r.active_experts * expert_params + shared_params + router_params) * e.wb;
    ffn_f = 2 * expert_params * sh.routing_tokens * d(m.experts_per_token) / d(sh.ep) +
            2 * shared_params * sh.shared_tokens + 2 * router_params * sh.router_tokens;
  } else {
    const double params = 3 * e.h * d(s.ffn) / d(sh.dense_split);
    ffn_w = params * e.wb;
    ffn_f = 2 * params * sh.dense_tokens;
  }
  r.ffn_s = roofline(e, ffn_w, ffn_f);
  r.weight_bytes += ffn_w;
  r.flops += ffn_f;

  // Communication.
  const hardware& hw = e.hw;
  const double row = e.h * e.ab;  // one token's [H] activation
  const double a2a_bytes = sh.attn_tokens * d(sh.q_heads) * (a2a_width(s) * e.ab + 2 * 4.0);  // A6
  r.a2a_s = all_to_all_s(hw, sh.a2a_group, a2a_bytes);
  double other = all_reduce_s(hw, sh.o_group, sh.attn_tokens * row);
  switch (c.family) {
    case plan_family::helix:
    case plan_family::tp:
    case plan_family::medha:
      other += all_reduce_s(hw, c.num_devices, sh.attn_tokens * row);  // A7
      break;
    case plan_family::tp_pp:
      other += all_reduce_s(hw, c.tpa, sh.attn_tokens * row);
      break;
    case plan_family::dp_ep:  // A9
      if (moe) {
        const double rank_tokens = sh.attn_tokens / d(c.tpa);
        const double dispatch = rank_tokens * d(s.moe.experts_per_token) * row;
        other += 2 * all_to_all_s(hw, c.num_devices, dispatch);
        other += all_reduce_s(hw, c.tpa, sh.attn_tokens * row);  // shared expert inside replica
      } else {
        other += 2 * all_gather_s(hw, c.num_devices, d(c.batch) * row);  // AG in, RS out
      }
      break;
  }
  r.comm_s = r.a2a_s + other;
  double a2a_exposed = r.a2a_s;
  if (sh.hopb && sh.a2a_group > 1 && c.batch > 1) {  // A13
    const double item_core = core_s / d(c.batch);
    const double item_a2a = all_to_all_s(hw, sh.a2a_group, a2a_bytes / d(c.batch));
    a2a_exposed = std::min(r.a2a_s, hopb_exposed_s(item_core, item_a2a, c.batch));
  }
  r.exposed_comm_s = a2a_exposed + other;
  return r;
}

}  // namespace

expected<step_cost> estimate_step(const model_spec& spec, const hardware& hw,
                                  const plan_workload& w, const plan_config& c) {
  HELIX_RETURN_IF_ERROR(check_plan_rules(spec, c));
  if (c.batch < 1 || w.context < 1) {
    return invalid_argument("{}: batch ({}) and context ({}) must be >= 1", c.to_string(), c.batch,
                            w.context);
  }
  const double fl = achievable_flops_per_s(hw, w.compute);
  const double bw = hw.hbm_bytes_per_s * hw.achievable_bandwidth;
  if (!(bw > 0) || !(fl > 0)) {
    return invalid_argument("hardware '{}': no bandwidth or no {} FLOPs", hw.name,
                            precision_name(w.compute));
  }
  if (c.num_devices > 1 && !(hw.link_bytes_per_s > 0)) {
    return invalid_argument("hardware '{}': no link bandwidth for {} devices", hw.name,
                            c.num_devices);
  }
  const env e{spec,
              hw,
              precision_bytes(w.weights),
              precision_bytes(w.kv),
              precision_bytes(w.activations),
              bw,
              fl,
              d(spec.hidden)};
  const shape sh = make_shape(spec, w, c);

  std::int64_t moe_layers = 0;
  for (std::int64_t l = 0; l < spec.num_layers; ++l) moe_layers += spec.layer_is_moe(l) ? 1 : 0;
  const std::int64_t dense_layers = spec.num_layers - moe_layers;
  const layer_eval dense = eval_layer(e, c, sh, false);
  const layer_eval moe = moe_layers > 0 ? eval_layer(e, c, sh, true) : layer_eval{};
  const double fd = d(dense_layers) / d(spec.num_layers);
  const double fm = d(moe_layers) / d(spec.num_layers);
  auto avg = [&](double layer_eval::*f) { return fd * dense.*f + fm * moe.*f; };

  step_cost r;
  r.kv_bytes = avg(&layer_eval::kv_bytes);
  r.weight_bytes = avg(&layer_eval::weight_bytes);
  r.flops = avg(&layer_eval::flops);
  r.kv_read_s = r.kv_bytes / bw;
  r.weight_read_s = r.weight_bytes / bw;
  r.attention_s = avg(&layer_eval::attention_s);
  r.ffn_s = avg(&layer_eval::ffn_s);
  r.a2a_s = avg(&layer_eval::a2a_s);
  r.comm_s = avg(&layer_eval::comm_s);
  r.exposed_comm_s = avg(&layer_eval::exposed_comm_s);
  r.layer_s = r.attention_s + r.ffn_s + r.exposed_comm_s;
  r.active_experts_per_device = moe.active_experts;

  // LM head (A11): vocabulary-parallel rows, then the candidates' all-gather.
  const double lm_params = d(spec.vocab) * e.h / d(sh.vocab_split);
  const double lm_s = roofline(e, lm_params * e.wb, 2 * lm_params * sh.lm_tokens) +
                      all_gather_s(hw, sh.vocab_split, d(sh.vocab_split) * sh.lm_tokens * 64 * 8);
  if (c.family == plan_family::tp_pp) {  // A10
    const double stage_s = d(sh.stage_layers) * r.layer_s + p2p_s(hw, sh.attn_tokens * e.h * e.ab);
    r.step_s = d(c.pp) * stage_s + (c.batch >= c.pp ? d(c.pp) : 1.0) * lm_s;
  } else {
    r.step_s = d(dense_layers) * dense.layer_s() + d(moe_layers) * moe.layer_s() + lm_s;
  }
  r.tokens_per_s_per_user = 1.0 / r.step_s;
  r.tokens_per_s_per_device = d(c.batch) / r.step_s / d(c.num_devices);

  // Memory of the fullest device: every layer it runs, all experts resident (A3), the whole
  // embedding and its LM-head rows (A11). tp_pp's fullest stage takes the MoE layers first.
  const std::int64_t mem_moe = std::min(sh.stage_layers, moe_layers);
  const std::int64_t mem_dense = sh.stage_layers - mem_moe;
  const double attn_params =
      qkv_params(spec, sh.q_heads, sh.kv_heads) + out_params(spec, sh.out_heads);
  double moe_params = 0;
  if (spec.is_moe()) {
    const moe_spec& m = spec.moe;
    moe_params = d(m.num_experts) / d(sh.ep) * 3 * e.h * d(m.expert_ffn) / d(sh.expert_split) +
                 3 * e.h * d(m.num_shared_experts * m.expert_ffn) / d(sh.shared_split) +
                 e.h * d(m.num_experts);
  }
  const double dense_params = 3 * e.h * d(spec.ffn) / d(sh.dense_split);
  const double params = d(sh.stage_layers) * attn_params + d(mem_moe) * moe_params +
                        d(mem_dense) * dense_params + d(spec.vocab) * e.h + lm_params;
  r.weight_bytes_per_device = params * e.wb;
  r.kv_bytes_per_device =
      sh.kv_requests * sh.kv_tokens * kv_values(spec, sh.kv_heads) * d(sh.stage_layers) * e.kb;
  // A12: f32 scratch: residual, norms and FFN input/output rows, the attention partials, the
  // widest FFN slice and the logits shard, for the tokens of one step.
  const double ffn_slice = spec.is_moe()
                               ? std::max(d(spec.ffn) / d(sh.dense_split), d(spec.moe.expert_ffn))
                               : d(spec.ffn) / d(sh.dense_split);
  const double scratch = 4.0 * std::max(sh.attn_tokens, sh.dense_tokens) *
                         (4 * e.h + d(sh.q_heads) * (a2a_width(spec) + 2) + 2 * ffn_slice +
                          d(spec.vocab) / d(sh.vocab_split));
  r.memory_bytes_per_device =
      r.weight_bytes_per_device + r.kv_bytes_per_device + hw.reserved_bytes + scratch;
  r.fits = r.memory_bytes_per_device <= hw.hbm_capacity_bytes;
  return r;
}

}  // namespace helix::planner
