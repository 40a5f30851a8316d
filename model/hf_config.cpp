// Defaults follow HF transformers 4.57 (configuration_llama.py, configuration_deepseek_v3.py and
// modeling_rope_utils.py; the same values as 5.0's), plus the keys of DeepSeek's own config.json
// that transformers' DeepseekV3Config does not declare (scoring_func, topk_method, moe_layer_freq),
// with the defaults of DeepSeek-V3's configuration_deepseek.py.
#include "model/hf_config.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

namespace helix::model {
namespace {

using json = nlohmann::json;

std::string brief(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// Typed access to one JSON object with HF semantics: an absent key or `null` takes the default.
// The first type error is remembered and reported by error(), so that parsing reads linearly.
class config_reader {
 public:
  config_reader(const json& obj, std::string context) : obj_(obj), context_(std::move(context)) {}

  /// Present, possibly null (for the few keys where null differs from absent).
  [[nodiscard]] bool present(std::string_view key) const { return obj_.contains(key); }
  [[nodiscard]] bool has(std::string_view key) const {
    const auto it = obj_.find(key);
    return it != obj_.end() && !it->is_null();
  }
  [[nodiscard]] const json* get(std::string_view key) const {
    const auto it = obj_.find(key);
    return it != obj_.end() && !it->is_null() ? &*it : nullptr;
  }

  std::int64_t required_int(std::string_view key) {
    if (!has(key)) {
      fail(invalid_argument("{}: missing required key '{}'", context_, key));
      return 0;
    }
    return int_or(key, 0);
  }
  std::int64_t int_or(std::string_view key, std::int64_t def) {
    const json* v = get(key);
    if (v == nullptr) return def;
    // Capped at 2^31 - 1 (far above any real model's sizes) so that products of two sizes in
    // model_spec cannot overflow, whatever a malformed file says.
    if (v->is_number_unsigned() && v->get<std::uint64_t>() <= max_int) {
      return static_cast<std::int64_t>(v->get<std::uint64_t>());
    }
    if (v->is_number_integer() && !v->is_number_unsigned() && v->get<std::int64_t>() >= 0 &&
        v->get<std::int64_t>() <= static_cast<std::int64_t>(max_int)) {
      return v->get<std::int64_t>();
    }
    fail(invalid_argument("{}: '{}' must be a non-negative integer below 2^31, got {} ({})",
                          context_, key, brief(*v), v->type_name()));
    return def;
  }
  double number_or(std::string_view key, double def) {
    const json* v = get(key);
    if (v == nullptr) return def;
    if (v->is_number()) return v->get<double>();
    fail(invalid_argument("{}: '{}' must be a number, got {} ({})", context_, key, brief(*v),
                          v->type_name()));
    return def;
  }
  double required_number(std::string_view key) {
    if (!has(key)) {
      fail(invalid_argument("{}: missing required key '{}'", context_, key));
      return 0.0;
    }
    return number_or(key, 0.0);
  }
  bool bool_or(std::string_view key, bool def) {
    const json* v = get(key);
    if (v == nullptr) return def;
    if (v->is_boolean()) return v->get<bool>();
    fail(invalid_argument("{}: '{}' must be true or false, got {} ({})", context_, key, brief(*v),
                          v->type_name()));
    return def;
  }
  std::string string_or(std::string_view key, std::string def) {
    const json* v = get(key);
    if (v == nullptr) return def;
    if (v->is_string()) return v->get<std::string>();
    fail(invalid_argument("{}: '{}' must be a string, got {} ({})", context_, key, brief(*v),
                          v->type_name()));
    return def;
  }

  static constexpr std::uint64_t max_int = 0x7fffffff;

  void fail(status s) {
    if (error_.ok()) error_ = std::move(s);
  }
  [[nodiscard]] const status& error() const { return error_; }
  [[nodiscard]] const std::string& context() const { return context_; }

 private:
  const json& obj_;
  std::string context_;
  status error_;
};

// A value that is finite and above `min` (or at least `min` when `inclusive`); NaN fails both.
bool finite_above(double v, double min, bool inclusive) {
  return std::isfinite(v) && (inclusive ? v >= min : v > min);
}

// The rope_scaling values that feed the frequency table: a non-finite or non-positive one makes
// every rotation angle NaN or Inf. HF only warns about some of these; we cannot run them.
status check_rope_scaling(const rope_spec& rope, const std::string& context) {
  if (rope.scaling == rope_scaling_kind::none) return ok_status();
  const auto positive = [&](double v, std::string_view key) {
    if (finite_above(v, 0.0, false)) return ok_status();
    return invalid_argument("{}: rope_scaling {} must be finite and > 0, got {}", context, key, v);
  };
  const auto non_negative = [&](double v, std::string_view key) {
    if (finite_above(v, 0.0, true)) return ok_status();
    return invalid_argument("{}: rope_scaling {} must be finite and >= 0, got {}", context, key, v);
  };
  HELIX_RETURN_IF_ERROR(positive(rope.factor, "factor"));
  if (rope.scaling == rope_scaling_kind::llama3) {
    HELIX_RETURN_IF_ERROR(positive(rope.low_freq_factor, "low_freq_factor"));
    HELIX_RETURN_IF_ERROR(positive(rope.high_freq_factor, "high_freq_factor"));
  }
  if (rope.scaling == rope_scaling_kind::llama3 || rope.scaling == rope_scaling_kind::yarn) {
    if (rope.original_max_position_embeddings < 1) {
      return invalid_argument("{}: rope_scaling original_max_position_embeddings must be >= 1",
                              context);
    }
  }
  if (rope.scaling == rope_scaling_kind::yarn) {
    HELIX_RETURN_IF_ERROR(positive(rope.beta_fast, "beta_fast"));
    HELIX_RETURN_IF_ERROR(positive(rope.beta_slow, "beta_slow"));
    HELIX_RETURN_IF_ERROR(non_negative(rope.mscale, "mscale"));
    HELIX_RETURN_IF_ERROR(non_negative(rope.mscale_all_dim, "mscale_all_dim"));
    HELIX_RETURN_IF_ERROR(non_negative(rope.attention_factor, "attention_factor"));
  }
  return ok_status();
}

// Overflow-checked sums and products of config sizes. Every size is below 2^31 (config_reader's
// cap), but products of three or four of them, and the parameter and KV totals, can pass 2^63:
// the first one that would is reported with the fields that make it up, so that no caller
// (num_params(), allocation, the planner) ever multiplies them into a wrapped-around value.
class size_math {
 public:
  explicit size_math(const std::string& context) : context_(context) {}

  std::int64_t mul(std::string_view what, std::initializer_list<std::int64_t> factors) {
    std::int64_t r = 1;
    for (const std::int64_t f : factors) {
      if (__builtin_mul_overflow(r, f, &r)) return fail(what);
    }
    return r;
  }
  std::int64_t add(std::string_view what, std::initializer_list<std::int64_t> terms) {
    std::int64_t r = 0;
    for (const std::int64_t t : terms) {
      if (__builtin_add_overflow(r, t, &r)) return fail(what);
    }
    return r;
  }
  [[nodiscard]] const status& error() const { return error_; }

 private:
  std::int64_t fail(std::string_view what) {
    if (error_.ok()) {
      error_ =
          invalid_argument("{}: sizes too large: {} overflows 64-bit arithmetic", context_, what);
    }
    return 0;
  }
  const std::string& context_;
  status error_;
};

// Every product of sizes the runtime forms from a spec (tensor sizes, parameter and byte totals,
// the KV cache of a max_position_embeddings-long sequence), checked as model_spec::num_params()
// adds them up.
status check_size_products(const model_spec& s, const std::string& context) {
  size_math m(context);
  const std::int64_t h = s.hidden;
  const std::int64_t nq = s.num_q_heads;
  std::int64_t attn = 0;
  std::int64_t kv_per_token = 0;
  if (s.is_mla()) {
    const mla_spec& a = s.mla;
    const std::int64_t qk = a.qk_head_dim();
    const std::int64_t q =
        a.q_lora_rank > 0
            ? m.add("q_a_proj + q_b_proj",
                    {m.mul("q_lora_rank x hidden_size", {a.q_lora_rank, h}), a.q_lora_rank,
                     m.mul("num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim) x "
                           "q_lora_rank",
                           {nq, qk, a.q_lora_rank})})
            : m.mul("num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim) x hidden_size",
                    {nq, qk, h});
    attn = m.add("attention parameters per layer",
                 {q,
                  m.mul("(kv_lora_rank + qk_rope_head_dim) x hidden_size",
                        {a.kv_lora_rank + a.qk_rope_head_dim, h}),
                  a.kv_lora_rank,
                  m.mul("num_attention_heads x (qk_nope_head_dim + v_head_dim) x kv_lora_rank",
                        {nq, a.qk_nope_head_dim + a.v_head_dim, a.kv_lora_rank}),
                  m.mul("hidden_size x num_attention_heads x v_head_dim", {h, nq, a.v_head_dim})});
    kv_per_token = a.kv_lora_rank + a.qk_rope_head_dim;
  } else {
    attn = m.mul("hidden_size x head_dim x 2 x (num_attention_heads + num_key_value_heads)",
                 {h, s.head_dim, 2, nq + s.num_kv_heads});
    kv_per_token = m.mul("num_key_value_heads x head_dim x 2", {s.num_kv_heads, s.head_dim, 2});
  }
  const std::int64_t dense = m.mul("3 x intermediate_size x hidden_size", {3, s.ffn, h});
  std::int64_t moe = 0;
  if (s.is_moe()) {
    const moe_spec& e = s.moe;
    moe = m.add("MoE parameters per layer",
                {m.mul("n_routed_experts x hidden_size", {e.num_experts, h}), e.num_experts,
                 m.mul("(n_routed_experts + n_shared_experts) x 3 x moe_intermediate_size x "
                       "hidden_size",
                       {e.num_experts + e.num_shared_experts, 3, e.expert_ffn, h})});
  }
  const std::int64_t per_layer = m.add("parameters per layer", {attn, 2 * h, std::max(dense, moe)});
  const std::int64_t total = m.add(
      "parameters", {m.mul("vocab_size x hidden_size x 2", {s.vocab, h, 2}), h,
                     m.mul("num_hidden_layers x parameters per layer", {s.num_layers, per_layer})});
  (void)m.mul("parameter bytes (x 4)", {total, 4});
  (void)m.mul("KV cache bytes of max_position_embeddings tokens (x 4)",
              {kv_per_token, s.num_layers, s.max_position_embeddings, 4});
  return m.error();
}

// Values that parse and pass model_spec::validate() but make no physical sense: with them the
// model computes NaN or Inf (rope_theta 1e-300 turns every rotation angle into Inf), or sizes
// overflow. Each is refused naming its config.json key.
status check_physical(const model_spec& s, const std::string& context) {
  // Per-layer loops (num_params(), allocation, the layer program) run num_hidden_layers times,
  // so 2^31 layers of tiny size would pass the size products and hang them; the deepest real
  // models have about 128.
  constexpr std::int64_t max_layers = std::int64_t{1} << 16;
  if (s.num_layers > max_layers) {
    return invalid_argument("{}: num_hidden_layers must be <= {}, got {}", context, max_layers,
                            s.num_layers);
  }
  if (!finite_above(s.rope.theta, 1.0, true)) {
    return invalid_argument("{}: rope_theta must be finite and >= 1, got {}", context,
                            s.rope.theta);
  }
  if (!finite_above(s.rms_norm_eps, 0.0, false) || !(s.rms_norm_eps < 1.0)) {
    return invalid_argument("{}: rms_norm_eps must be finite and in (0, 1), got {}", context,
                            s.rms_norm_eps);
  }
  if (s.max_position_embeddings < 1) {
    return invalid_argument("{}: max_position_embeddings must be >= 1, got {}", context,
                            s.max_position_embeddings);
  }
  HELIX_RETURN_IF_ERROR(check_rope_scaling(s.rope, context));
  if (s.is_moe() && !finite_above(s.moe.routed_scaling_factor, 0.0, false)) {
    return invalid_argument("{}: routed_scaling_factor must be finite and > 0, got {}", context,
                            s.moe.routed_scaling_factor);
  }
  return check_size_products(s, context);
}

// HF rope_scaling (or 5.x rope_parameters): default, linear, llama3 and yarn, with the keys that
// modeling_rope_utils requires for each.
status parse_rope_scaling(const json& rs, const std::string& context,
                          std::int64_t max_position_embeddings, rope_spec& rope) {
  if (!rs.is_object()) {
    return invalid_argument("{}: 'rope_scaling' must be an object or null, got {}", context,
                            rs.type_name());
  }
  config_reader r(rs, context + ": rope_scaling");
  std::string type = r.string_or("rope_type", "");
  if (type.empty()) type = r.string_or("type", "");
  HELIX_RETURN_IF_ERROR(r.error());
  if (type.empty())
    return invalid_argument("{}: rope_scaling has no 'rope_type' (or 'type')", context);
  if (type == "default") {
    rope.scaling = rope_scaling_kind::none;
  } else if (type == "linear") {
    rope.scaling = rope_scaling_kind::linear;
    rope.factor = r.required_number("factor");
  } else if (type == "llama3") {
    rope.scaling = rope_scaling_kind::llama3;
    rope.factor = r.required_number("factor");
    rope.low_freq_factor = r.required_number("low_freq_factor");
    rope.high_freq_factor = r.required_number("high_freq_factor");
    if (!r.has("original_max_position_embeddings")) {
      r.fail(invalid_argument("{}: missing required key 'original_max_position_embeddings'",
                              r.context()));
    }
    rope.original_max_position_embeddings = r.int_or("original_max_position_embeddings", 0);
    if (r.error().ok() && !(rope.high_freq_factor > rope.low_freq_factor)) {
      return invalid_argument(
          "{}: rope_scaling high_freq_factor ({}) must exceed low_freq_factor ({})", context,
          rope.high_freq_factor, rope.low_freq_factor);
    }
  } else if (type == "yarn") {
    rope.scaling = rope_scaling_kind::yarn;
    rope.factor = r.required_number("factor");
    // HF: `original_max_position_embeddings or max_position_embeddings`, `beta_fast or 32`, ...
    rope.original_max_position_embeddings =
        r.int_or("original_max_position_embeddings", max_position_embeddings);
    if (rope.original_max_position_embeddings == 0) {
      rope.original_max_position_embeddings = max_position_embeddings;
    }
    rope.beta_fast = r.number_or("beta_fast", 0.0);
    if (rope.beta_fast == 0.0) rope.beta_fast = 32.0;
    rope.beta_slow = r.number_or("beta_slow", 0.0);
    if (rope.beta_slow == 0.0) rope.beta_slow = 1.0;
    // Absent mscale is 0, not the struct's 1.0: HF uses the mscale ratio only when both mscale
    // and mscale_all_dim are set, and make_rope_table() tests both for non-zero the same way.
    rope.mscale = r.number_or("mscale", 0.0);
    rope.mscale_all_dim = r.number_or("mscale_all_dim", 0.0);
    rope.attention_factor = r.number_or("attention_factor", 0.0);
    if (!r.bool_or("truncate", true)) {
      return invalid_argument("{}: rope_scaling truncate=false is not supported", context);
    }
  } else {
    return invalid_argument(
        "{}: rope_scaling type {} is not supported (default, linear, llama3, "
        "yarn)",
        context, type);
  }
  HELIX_RETURN_IF_ERROR(r.error());
  return check_rope_scaling(rope, context);
}

// Keys both architectures share; HF defaults differ only in max_position_embeddings and
// num_key_value_heads, which the callers handle.
status parse_common(config_reader& r, model_spec& s, std::int64_t default_max_pos) {
  s.hidden = r.required_int("hidden_size");
  s.num_layers = r.required_int("num_hidden_layers");
  s.num_q_heads = r.required_int("num_attention_heads");
  s.vocab = r.required_int("vocab_size");
  s.ffn = r.required_int("intermediate_size");
  s.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6);
  s.max_position_embeddings = r.int_or("max_position_embeddings", default_max_pos);
  s.tie_word_embeddings = r.bool_or("tie_word_embeddings", false);
  const std::string act = r.string_or("hidden_act", "silu");
  const bool attention_bias = r.bool_or("attention_bias", false);
  const bool mlp_bias = r.bool_or("mlp_bias", false);
  HELIX_RETURN_IF_ERROR(r.error());
  // transformers maps "swish" to the same nn.SiLU.
  if (act != "silu" && act != "swish") {
    return invalid_argument("{}: hidden_act '{}' is not supported (only silu)", r.context(), act);
  }
  if (attention_bias) {
    return invalid_argument("{}: attention_bias true is not supported (q/k/v/o biases)",
                            r.context());
  }
  if (mlp_bias) return invalid_argument("{}: mlp_bias true is not supported", r.context());

  // rope_scaling (4.x), or 5.x's rope_parameters that also carries rope_theta.
  const json* rp = r.get("rope_parameters");
  if (rp != nullptr && !rp->is_object()) {
    return invalid_argument("{}: 'rope_parameters' must be an object, got {}", r.context(),
                            rp->type_name());
  }
  double theta_default = 10000.0;
  if (rp != nullptr) {
    config_reader rr(*rp, r.context() + ": rope_parameters");
    theta_default = rr.number_or("rope_theta", theta_default);
    HELIX_RETURN_IF_ERROR(rr.error());
  }
  s.rope.theta = r.number_or("rope_theta", theta_default);
  HELIX_RETURN_IF_ERROR(r.error());
  const json* rs = r.get("rope_scaling");
  if (rs == nullptr) rs = rp;
  if (rs != nullptr) {
    HELIX_RETURN_IF_ERROR(parse_rope_scaling(*rs, r.context(), s.max_position_embeddings, s.rope));
  }
  return ok_status();
}

status parse_llama(config_reader& r, model_spec& s) {
  s.architecture = "llama";
  s.attention = attention_kind::gqa;
  HELIX_RETURN_IF_ERROR(parse_common(r, s, 2048));
  s.num_kv_heads = r.int_or("num_key_value_heads", s.num_q_heads);
  const std::int64_t head_default = s.num_q_heads > 0 ? s.hidden / s.num_q_heads : 0;
  s.head_dim = r.int_or("head_dim", head_default);
  s.rope.interleave = false;
  return r.error();
}

status parse_deepseek_v3(config_reader& r, model_spec& s) {
  s.architecture = "deepseek_v3";
  s.attention = attention_kind::mla;
  HELIX_RETURN_IF_ERROR(parse_common(r, s, 4096));
  // HF's default here is 128 (DeepSeek-V3's head count); MLA never uses it, and the built-in
  // specs keep num_kv_heads == num_q_heads, so an absent key means "as many as query heads".
  s.num_kv_heads = r.int_or("num_key_value_heads", s.num_q_heads);
  s.head_dim = 0;  // GQA-only field; MLA sizes come from mla_spec
  s.rope.interleave = r.bool_or("rope_interleave", true);

  mla_spec& m = s.mla;
  // q_lora_rank: absent means HF's 1536; null (or 0) means q_proj straight from the hidden state.
  m.q_lora_rank = r.present("q_lora_rank") ? r.int_or("q_lora_rank", 0) : 1536;
  m.kv_lora_rank = r.int_or("kv_lora_rank", 512);
  m.qk_rope_head_dim = r.int_or("qk_rope_head_dim", 64);
  m.v_head_dim = r.int_or("v_head_dim", 128);
  m.qk_nope_head_dim = r.int_or("qk_nope_head_dim", 128);

  moe_spec& e = s.moe;
  // Absent: HF's 256 and 1; null: none (a dense model / no shared expert).
  e.num_experts = r.present("n_routed_experts") ? r.int_or("n_routed_experts", 0) : 256;
  e.num_shared_experts = r.present("n_shared_experts") ? r.int_or("n_shared_experts", 0) : 1;
  e.experts_per_token = r.int_or("num_experts_per_tok", 8);
  e.expert_ffn = r.int_or("moe_intermediate_size", 2048);
  e.num_groups = r.int_or("n_group", 8);
  e.topk_groups = r.int_or("topk_group", 4);
  e.first_dense_layers = r.int_or("first_k_dense_replace", 3);
  e.layer_freq = r.int_or("moe_layer_freq", 1);
  e.routed_scaling_factor = r.number_or("routed_scaling_factor", 2.5);
  e.norm_topk_prob = r.bool_or("norm_topk_prob", true);
  const std::string scoring = r.string_or("scoring_func", "sigmoid");
  const std::string topk_method = r.string_or("topk_method", "noaux_tc");
  HELIX_RETURN_IF_ERROR(r.error());
  if (scoring == "sigmoid") {
    e.scoring = router_scoring::sigmoid;
  } else if (scoring == "softmax") {
    e.scoring = router_scoring::softmax;
  } else {
    return invalid_argument("{}: scoring_func '{}' is not supported (sigmoid, softmax)",
                            r.context(), scoring);
  }
  if (topk_method == "noaux_tc") {
    e.score_correction_bias = true;
  } else if (topk_method == "greedy") {
    e.score_correction_bias = false;
    e.num_groups = 1;
    e.topk_groups = 1;
  } else if (topk_method == "group_limited_greedy") {
    e.score_correction_bias = false;
  } else {
    return invalid_argument(
        "{}: topk_method '{}' is not supported (noaux_tc, greedy, group_limited_greedy)",
        r.context(), topk_method);
  }
  if (e.num_experts == 0) e = moe_spec{};  // n_routed_experts null or 0: a dense model
  return ok_status();
}

// The architecture of a config without model_type, from its "architectures" list.
std::string model_type_from_architectures(const json& j) {
  const auto it = j.find("architectures");
  if (it == j.end() || !it->is_array() || it->empty() || !(*it)[0].is_string()) return "";
  const auto& a = (*it)[0].get_ref<const std::string&>();
  if (a == "LlamaForCausalLM") return "llama";
  if (a == "DeepseekV3ForCausalLM") return "deepseek_v3";
  return "";
}

// quantization_config: only HF's block-scaled FP8 ("fp8", e4m3, weight_block_size [rows, cols]),
// which the loader dequantizes exactly; anything else is refused naming the key.
expected<std::optional<hf_quantization>> read_quantization(const json& j,
                                                           const std::string& context) {
  const auto q = j.find("quantization_config");
  if (q == j.end() || q->is_null()) return std::optional<hf_quantization>{};
  if (!q->is_object()) {
    return invalid_argument("{}: quantization_config is a JSON {}, not an object", context,
                            q->type_name());
  }
  const auto method = q->find("quant_method");
  if (method == q->end() || !method->is_string() || method->get<std::string>() != "fp8") {
    return invalid_argument(
        "{}: quantization_config.quant_method {} is not supported (only \"fp8\": block-scaled "
        "e4m3 weights)",
        context, method == q->end() ? std::string("(missing)") : method->dump());
  }
  if (const auto fmt = q->find("fmt");
      fmt != q->end() && (!fmt->is_string() || fmt->get<std::string>() != "e4m3")) {
    return invalid_argument("{}: quantization_config.fmt {} is not supported (only \"e4m3\")",
                            context, fmt->dump());
  }
  const auto block = q->find("weight_block_size");
  if (block == q->end() || !block->is_array() || block->size() != 2) {
    return invalid_argument(
        "{}: quantization_config.weight_block_size must be [rows, cols] (per-tensor FP8 scales are "
        "not supported)",
        context);
  }
  hf_quantization out;
  std::int64_t* dims[2] = {&out.block_rows, &out.block_cols};
  for (std::size_t i = 0; i < 2; ++i) {
    const json& v = (*block)[i];
    if (!v.is_number_integer() || v.get<std::int64_t>() < 1 || v.get<std::int64_t>() > (1 << 20)) {
      return invalid_argument(
          "{}: quantization_config.weight_block_size[{}] = {} must be an integer in [1, 2^20]",
          context, i, v.dump());
    }
    *dims[i] = v.get<std::int64_t>();
  }
  return std::optional<hf_quantization>{out};
}

expected<model_spec> parse_json(const json& j, std::string name) {
  const std::string context = fmt::format("config '{}'", name);
  if (!j.is_object()) {
    return invalid_argument("{}: config.json is a JSON {}, not an object", context, j.type_name());
  }
  if (auto quant = read_quantization(j, context); !quant) return quant.error();
  config_reader r(j, context);
  std::string model_type = r.string_or("model_type", "");
  HELIX_RETURN_IF_ERROR(r.error());
  if (model_type.empty()) model_type = model_type_from_architectures(j);
  model_spec s;
  s.name = std::move(name);
  if (model_type == "llama") {
    HELIX_RETURN_IF_ERROR(parse_llama(r, s));
  } else if (model_type == "deepseek_v3") {
    HELIX_RETURN_IF_ERROR(parse_deepseek_v3(r, s));
  } else {
    return invalid_argument("{}: unknown model_type '{}' (supported: llama, deepseek_v3)", context,
                            model_type);
  }
  // Before validate(), so that these values are reported by their config.json key in the
  // config's context; the checked products need no validated sizes (none is negative here).
  HELIX_RETURN_IF_ERROR(check_physical(s, context));
  HELIX_RETURN_IF_ERROR(s.validate());
  return s;
}

json rope_scaling_json(const rope_spec& r) {
  switch (r.scaling) {
    case rope_scaling_kind::none:
      return nullptr;
    case rope_scaling_kind::linear:
      return {{"rope_type", "linear"}, {"type", "linear"}, {"factor", r.factor}};
    case rope_scaling_kind::llama3:
      return {{"rope_type", "llama3"},
              {"type", "llama3"},
              {"factor", r.factor},
              {"low_freq_factor", r.low_freq_factor},
              {"high_freq_factor", r.high_freq_factor},
              {"original_max_position_embeddings", r.original_max_position_embeddings}};
    case rope_scaling_kind::yarn: {
      // "type" too: DeepSeek's own modeling code reads rope_scaling["type"].
      json y = {{"rope_type", "yarn"},
                {"type", "yarn"},
                {"factor", r.factor},
                {"original_max_position_embeddings", r.original_max_position_embeddings},
                {"beta_fast", r.beta_fast},
                {"beta_slow", r.beta_slow}};
      if (r.mscale != 0.0) y["mscale"] = r.mscale;
      if (r.mscale_all_dim != 0.0) y["mscale_all_dim"] = r.mscale_all_dim;
      if (r.attention_factor != 0.0) y["attention_factor"] = r.attention_factor;
      return y;
    }
  }
  return nullptr;
}

std::string_view torch_dtype_name(dtype t) {
  switch (t) {
    case dtype::f32:
      return "float32";
    case dtype::bf16:
      return "bfloat16";
    case dtype::f16:
      return "float16";
    case dtype::fp8_e4m3:
      return "float8_e4m3fn";
  }
  return "float32";
}

}  // namespace

expected<model_spec> parse_hf_config(const std::string& json_text, std::string name) {
  try {
    const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      return invalid_argument("config '{}': config.json is not valid JSON", name);
    }
    return parse_json(j, std::move(name));
  } catch (const std::exception& ex) {
    // Only allocation failures can get here (every access above checks types first).
    return internal_error("config '{}': {}", name, ex.what());
  }
}

expected<std::optional<hf_quantization>> parse_hf_quantization(const std::string& json_text,
                                                               const std::string& name) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return invalid_argument("config '{}': config.json is not a JSON object", name);
  }
  return read_quantization(j, fmt::format("config '{}'", name));
}

expected<std::optional<hf_quantization>> load_hf_quantization(const std::string& dir) {
  std::ifstream in(std::filesystem::path(dir) / "config.json", std::ios::binary);
  if (!in) return not_found("config.json not found in '{}'", dir);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_hf_quantization(text.str(), dir);
}

expected<model_spec> load_hf_config(const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path path = fs::path(dir) / "config.json";
  std::error_code ec;
  if (!fs::exists(path, ec)) return not_found("config.json not found in '{}'", dir);
  std::ifstream in(path, std::ios::binary);
  if (!in) return invalid_argument("cannot read '{}'", path.string());
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return invalid_argument("cannot read '{}'", path.string());
  fs::path p = fs::path(dir).lexically_normal();
  std::string name = p.filename().string();
  if (name.empty()) name = p.parent_path().filename().string();  // "dir/" normalises to "dir/"
  if (name.empty() || name == ".") name = fs::absolute(p, ec).filename().string();
  return parse_hf_config(text.str(), std::move(name));
}

expected<std::string> hf_config_json(const model_spec& spec, dtype weight_type) {
  HELIX_RETURN_IF_ERROR(spec.validate());
  try {
    json j;
    j["hidden_size"] = spec.hidden;
    j["intermediate_size"] = spec.ffn;
    j["num_hidden_layers"] = spec.num_layers;
    j["num_attention_heads"] = spec.num_q_heads;
    j["num_key_value_heads"] = spec.num_kv_heads;
    j["vocab_size"] = spec.vocab;
    j["rms_norm_eps"] = spec.rms_norm_eps;
    j["rope_theta"] = spec.rope.theta;
    j["rope_scaling"] = rope_scaling_json(spec.rope);
    j["max_position_embeddings"] = spec.max_position_embeddings;
    j["tie_word_embeddings"] = spec.tie_word_embeddings;
    j["hidden_act"] = "silu";
    j["attention_bias"] = false;
    j["torch_dtype"] = std::string(torch_dtype_name(weight_type));
    if (spec.architecture == "llama") {
      if (spec.is_mla() || spec.is_moe()) {
        return invalid_argument("model '{}': a llama spec cannot have MLA or MoE", spec.name);
      }
      j["architectures"] = {"LlamaForCausalLM"};
      j["model_type"] = "llama";
      j["head_dim"] = spec.head_dim;
      j["mlp_bias"] = false;
    } else if (spec.architecture == "deepseek_v3") {
      if (!spec.is_mla()) {
        return invalid_argument("model '{}': a deepseek_v3 spec must use MLA", spec.name);
      }
      const mla_spec& m = spec.mla;
      const moe_spec& e = spec.moe;
      j["architectures"] = {"DeepseekV3ForCausalLM"};
      j["model_type"] = "deepseek_v3";
      j["rope_interleave"] = spec.rope.interleave;
      j["q_lora_rank"] = m.q_lora_rank > 0 ? json(m.q_lora_rank) : json(nullptr);
      j["kv_lora_rank"] = m.kv_lora_rank;
      j["qk_nope_head_dim"] = m.qk_nope_head_dim;
      j["qk_rope_head_dim"] = m.qk_rope_head_dim;
      j["v_head_dim"] = m.v_head_dim;
      j["head_dim"] = m.qk_rope_head_dim;  // what DeepseekV3Config sets it to
      if (spec.is_moe()) {
        j["n_routed_experts"] = e.num_experts;
        j["n_shared_experts"] = e.num_shared_experts;
        j["num_experts_per_tok"] = e.experts_per_token;
        j["moe_intermediate_size"] = e.expert_ffn;
        j["n_group"] = e.num_groups;
        j["topk_group"] = e.topk_groups;
        j["first_k_dense_replace"] = e.first_dense_layers;
        j["moe_layer_freq"] = e.layer_freq;
        j["routed_scaling_factor"] = e.routed_scaling_factor;
        j["norm_topk_prob"] = e.norm_topk_prob;
        j["scoring_func"] = e.scoring == router_scoring::sigmoid ? "sigmoid" : "softmax";
        j["topk_method"] = e.score_correction_bias ? "noaux_tc"
                           : e.num_groups > 1      ? "group_limited_greedy"
                                                   : "greedy";
      } else {
        j["n_routed_experts"] = nullptr;
        j["n_shared_experts"] = nullptr;
      }
    } else {
      return invalid_argument(
          "model '{}': architecture '{}' cannot be written as an HF config "
          "(llama, deepseek_v3)",
          spec.name, spec.architecture);
    }
    return j.dump(2) + "\n";
  } catch (const std::exception& ex) {
    return internal_error("model '{}': cannot write config.json: {}", spec.name, ex.what());
  }
}

}  // namespace helix::model
