// Fuzz target: layout strings (core/layout.hpp layout::parse), then validate() against built-in
// model specs and, for the layouts a spec accepts, the rank math.
//
// Invariants: to_string() parses back to the same layout; for a valid layout, attention and FFN
// coordinates invert their rank functions and every rank's query heads lie inside [0, Q).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/layout.hpp"
#include "core/model_spec.hpp"
#include "fuzz/fuzz_check.hpp"

namespace {

const std::vector<helix::model_spec>& specs() {
  static const std::vector<helix::model_spec> all = [] {
    std::vector<helix::model_spec> v;
    for (const char* name : {"tiny-llama", "tiny-deepseek", "llama-3.1-405b", "deepseek-r1"}) {
      v.push_back(*helix::builtin_model(name));
    }
    return v;
  }();
  return all;
}

void check_rank_math(const helix::layout& l, const helix::model_spec& spec) {
  // validate() bounds N by the head count, so this loop is short.
  for (std::int64_t r = 0; r < l.num_ranks; ++r) {
    const helix::attention_coord a = l.attention_coords(r);
    HELIX_FUZZ_CHECK(l.attention_rank(a.tpa_idx, a.kvp_idx) == r);
    const helix::index_range q = l.rank_q_heads(r, spec);
    HELIX_FUZZ_CHECK(q.first >= 0 && q.count > 0 && q.end() <= spec.num_q_heads);
    (void)l.rank_kv_heads(r, spec);
    if (l.in_ffn(r)) {
      const helix::ffn_coord f = l.ffn_coords(r);
      HELIX_FUZZ_CHECK(l.ffn_rank(f.ep_idx, f.tpf_idx) == r);
    }
  }
  for (std::int64_t e = 0; e < l.ep; ++e) (void)l.group_experts(e, spec);
  HELIX_FUZZ_CHECK(static_cast<std::int64_t>(l.ffn_ranks().size()) == l.tpf * l.ep);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto l = helix::layout::parse(text);
  if (!l.has_value()) {
    HELIX_FUZZ_CHECK(l.error().code() == helix::errc::invalid_argument);
    return 0;
  }
  const auto again = helix::layout::parse(l->to_string());
  HELIX_FUZZ_CHECK(again.has_value() && *again == *l);
  for (const helix::model_spec& spec : specs()) {
    if (helix::validate(*l, spec).ok()) {
      check_rank_math(*l, spec);
      const auto d = helix::default_layout(l->family, l->num_ranks, spec);
      if (d.has_value()) HELIX_FUZZ_CHECK(helix::validate(*d, spec).ok());
    }
  }
  return 0;
}
