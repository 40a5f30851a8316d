// Fuzz target: HF config.json parsing (model/hf_config.hpp).
//
// An accepted config must be a spec the runtime can use: validate() passes, num_params() and the
// KV sizes compute without signed overflow (UBSan aborts on one), and writing it back as
// config.json and parsing that gives the same spec.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/model_spec.hpp"
#include "fuzz/fuzz_check.hpp"
#include "model/hf_config.hpp"

namespace {

bool same_spec(const helix::model_spec& a, const helix::model_spec& b) {
  const helix::rope_spec& r = a.rope;
  const helix::rope_spec& q = b.rope;
  const bool rope_same = r.theta == q.theta && r.scaling == q.scaling && r.factor == q.factor &&
                         r.low_freq_factor == q.low_freq_factor &&
                         r.high_freq_factor == q.high_freq_factor &&
                         r.original_max_position_embeddings == q.original_max_position_embeddings &&
                         r.beta_fast == q.beta_fast && r.beta_slow == q.beta_slow &&
                         r.mscale == q.mscale && r.mscale_all_dim == q.mscale_all_dim &&
                         r.attention_factor == q.attention_factor && r.interleave == q.interleave;
  const helix::moe_spec& e = a.moe;
  const helix::moe_spec& f = b.moe;
  const bool moe_same =
      e.num_experts == f.num_experts && e.num_shared_experts == f.num_shared_experts &&
      e.experts_per_token == f.experts_per_token && e.expert_ffn == f.expert_ffn &&
      e.num_groups == f.num_groups && e.topk_groups == f.topk_groups &&
      e.first_dense_layers == f.first_dense_layers && e.layer_freq == f.layer_freq &&
      e.routed_scaling_factor == f.routed_scaling_factor && e.norm_topk_prob == f.norm_topk_prob &&
      e.scoring == f.scoring && e.score_correction_bias == f.score_correction_bias;
  return a.architecture == b.architecture && a.attention == b.attention && a.hidden == b.hidden &&
         a.num_layers == b.num_layers && a.num_q_heads == b.num_q_heads &&
         a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim && a.ffn == b.ffn &&
         a.vocab == b.vocab && a.rms_norm_eps == b.rms_norm_eps &&
         a.max_position_embeddings == b.max_position_embeddings &&
         a.tie_word_embeddings == b.tie_word_embeddings && a.mla.q_lora_rank == b.mla.q_lora_rank &&
         a.mla.kv_lora_rank == b.mla.kv_lora_rank &&
         a.mla.qk_nope_head_dim == b.mla.qk_nope_head_dim &&
         a.mla.qk_rope_head_dim == b.mla.qk_rope_head_dim && a.mla.v_head_dim == b.mla.v_head_dim &&
         rope_same && moe_same;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto spec = helix::model::parse_hf_config(text, "fuzz");
  if (!spec.has_value()) {
    HELIX_FUZZ_CHECK(spec.error().code() == helix::errc::invalid_argument);
    return 0;
  }
  HELIX_FUZZ_CHECK(spec->validate().ok());
  HELIX_FUZZ_CHECK(spec->num_params() > 0);
  (void)spec->kv_values_per_token_per_layer();
  (void)spec->softmax_scale();
  for (std::int64_t l = 0; l < spec->num_layers && l < 4096; ++l) (void)spec->layer_is_moe(l);

  const auto written = helix::model::hf_config_json(*spec, helix::dtype::bf16);
  HELIX_FUZZ_CHECK(written.has_value());
  const auto back = helix::model::parse_hf_config(*written, "fuzz");
  HELIX_FUZZ_CHECK(back.has_value());
  HELIX_FUZZ_CHECK(same_spec(*spec, *back));
  return 0;
}
