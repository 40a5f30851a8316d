#include "core/layout.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <optional>
#include <span>
#include <system_error>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace helix {

namespace {

// Values above this are rejected at parse time so products like kvp * tpa cannot overflow.
constexpr std::int64_t max_grid_size = std::int64_t{1} << 24;

template <class... Args>
status rule_error(std::string_view rule, fmt::format_string<Args...> f, Args&&... args) {
  return invalid_argument("layout rule {}: {}", rule, fmt::format(f, std::forward<Args>(args)...));
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The keys each family accepts, in canonical print order.
std::span<const std::string_view> allowed_keys(layout_family family) {
  static constexpr std::array<std::string_view, 4> helix_keys = {"kvp", "tpa", "tpf", "ep"};
  static constexpr std::array<std::string_view, 1> tp_keys = {"tp"};
  static constexpr std::array<std::string_view, 2> medha_keys = {"kvp", "tpa"};
  switch (family) {
    case layout_family::helix:
      return helix_keys;
    case layout_family::tp:
      return tp_keys;
    case layout_family::medha:
      return medha_keys;
  }
  return {};
}

bool known_family(layout_family family) {
  return family == layout_family::helix || family == layout_family::tp ||
         family == layout_family::medha;
}

}  // namespace

std::string_view layout_family_name(layout_family family) {
  switch (family) {
    case layout_family::helix:
      return "helix";
    case layout_family::tp:
      return "tp";
    case layout_family::medha:
      return "medha";
  }
  return "unknown";
}

expected<layout_family> parse_layout_family(std::string_view name) {
  for (auto f : {layout_family::helix, layout_family::tp, layout_family::medha}) {
    if (name == layout_family_name(f)) return f;
  }
  return rule_error(layout_rule::family, "unknown family '{}' (known: helix, tp, medha)", name);
}

expected<layout> layout::parse(std::string_view text) {
  const auto colon = text.find(':');
  if (colon == std::string_view::npos) {
    return invalid_argument("layout '{}': expected '<family>:<key>=<value>,...'", text);
  }
  HELIX_ASSIGN_OR_RETURN(const layout_family family,
                         parse_layout_family(trim(text.substr(0, colon))));
  const auto keys = allowed_keys(family);
  // Values by key index; nullopt = not given.
  std::array<std::optional<std::int64_t>, 4> values{};

  // Items are split on every comma, so "a,", ",a" and "a,,b" each yield an empty item: a
  // typo (or a truncated string) is refused instead of parsed as the shorter layout.
  std::string_view rest = text.substr(colon + 1);
  bool more = !trim(rest).empty();
  while (more) {
    const auto comma = rest.find(',');
    const std::string_view item = trim(rest.substr(0, comma));
    more = comma != std::string_view::npos;
    rest = more ? rest.substr(comma + 1) : std::string_view{};
    if (item.empty()) {
      return invalid_argument("layout '{}': empty item ({})", text,
                              more ? "a leading or doubled comma" : "a trailing comma");
    }
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) {
      return invalid_argument("layout '{}': missing value for '{}' (want key=value)", text, item);
    }
    const std::string_view key = trim(item.substr(0, eq));
    const std::string_view value_text = trim(item.substr(eq + 1));
    if (key.empty()) return invalid_argument("layout '{}': empty key in '{}'", text, item);
    const auto it = std::find(keys.begin(), keys.end(), key);
    if (it == keys.end()) {
      return invalid_argument("layout '{}': unknown key '{}' for family {} (allowed: {})", text,
                              key, layout_family_name(family), fmt::join(keys, ", "));
    }
    const auto key_idx = static_cast<std::size_t>(it - keys.begin());
    if (values[key_idx]) return invalid_argument("layout '{}': duplicate key '{}'", text, key);
    if (value_text.empty()) {
      return invalid_argument("layout '{}': missing value for '{}'", text, key);
    }
    std::int64_t v = 0;
    const auto [ptr, ec] =
        std::from_chars(value_text.data(), value_text.data() + value_text.size(), v);
    if (ec != std::errc{} || ptr != value_text.data() + value_text.size()) {
      return invalid_argument("layout '{}': value of '{}' is not an integer: '{}'", text, key,
                              value_text);
    }
    if (v < 1) {
      return rule_error(layout_rule::positive, "layout '{}': {} must be positive, got {}", text,
                        key, v);
    }
    if (v > max_grid_size) {
      return invalid_argument("layout '{}': {} = {} is out of range (max {})", text, key, v,
                              max_grid_size);
    }
    values[key_idx] = v;
  }

  layout l;
  l.family = family;
  switch (family) {
    case layout_family::helix:
    case layout_family::medha: {
      for (std::size_t i = 0; i < 2; ++i) {
        if (!values[i]) return invalid_argument("layout '{}': missing key '{}'", text, keys[i]);
      }
      l.kvp = *values[0];
      l.tpa = *values[1];
      l.num_ranks = l.kvp * l.tpa;  // both <= 2^24: no overflow
      // N bounds the derived tpf (N / ep) too, so that to_string() always parses back.
      if (l.num_ranks > max_grid_size) {
        return invalid_argument("layout '{}': kvp x tpa = {} ranks is out of range (max {})", text,
                                l.num_ranks, max_grid_size);
      }
      if (family == layout_family::helix) {
        l.ep = values[3].value_or(1);
        // Dense TPF = N; with experts the default splits whatever EP leaves. A non-divisible ep
        // is left for validate() to report as an ffn_grid violation.
        l.tpf = values[2].value_or(std::max<std::int64_t>(1, l.num_ranks / l.ep));
      } else {
        l.tpf = l.tpa;
        l.ep = 1;
      }
      break;
    }
    case layout_family::tp:
      if (!values[0]) return invalid_argument("layout '{}': missing key 'tp'", text);
      l.num_ranks = *values[0];
      l.kvp = 1;
      l.tpa = l.num_ranks;
      l.tpf = l.num_ranks;
      l.ep = 1;
      break;
  }
  return l;
}

std::string layout::to_string() const {
  switch (family) {
    case layout_family::helix:
      return fmt::format("helix:kvp={},tpa={},tpf={},ep={}", kvp, tpa, tpf, ep);
    case layout_family::tp:
      return fmt::format("tp:tp={}", num_ranks);
    case layout_family::medha:
      return fmt::format("medha:kvp={},tpa={}", kvp, tpa);
  }
  return "unknown";
}

attention_coord layout::attention_coords(std::int64_t rank) const {
  HELIX_CHECK(rank >= 0 && rank < num_ranks, "rank {} out of [0, {})", rank, num_ranks);
  return {.tpa_idx = rank / kvp, .kvp_idx = rank % kvp};
}

std::int64_t layout::attention_rank(std::int64_t tpa_idx, std::int64_t kvp_idx) const {
  HELIX_CHECK(tpa_idx >= 0 && tpa_idx < tpa, "tpa_idx {} out of [0, {})", tpa_idx, tpa);
  HELIX_CHECK(kvp_idx >= 0 && kvp_idx < kvp, "kvp_idx {} out of [0, {})", kvp_idx, kvp);
  return tpa_idx * kvp + kvp_idx;
}

std::vector<std::int64_t> layout::kvp_group(std::int64_t tpa_idx) const {
  std::vector<std::int64_t> ranks;
  ranks.reserve(static_cast<std::size_t>(kvp));
  for (std::int64_t j = 0; j < kvp; ++j) ranks.push_back(attention_rank(tpa_idx, j));
  return ranks;
}

bool layout::in_ffn(std::int64_t rank) const {
  if (rank < 0 || rank >= num_ranks) return false;
  return family != layout_family::medha || rank % kvp == 0;
}

std::vector<std::int64_t> layout::ffn_ranks() const {
  std::vector<std::int64_t> ranks;
  ranks.reserve(static_cast<std::size_t>(tpf * ep));
  for (std::int64_t e = 0; e < ep; ++e) {
    for (std::int64_t t = 0; t < tpf; ++t) ranks.push_back(ffn_rank(e, t));
  }
  return ranks;
}

ffn_coord layout::ffn_coords(std::int64_t rank) const {
  HELIX_CHECK(in_ffn(rank), "rank {} does not run the FFN in {}", rank, to_string());
  const std::int64_t slot = family == layout_family::medha ? rank / kvp : rank;
  return {.ep_idx = slot / tpf, .tpf_idx = slot % tpf};
}

std::int64_t layout::ffn_rank(std::int64_t ep_idx, std::int64_t tpf_idx) const {
  HELIX_CHECK(ep_idx >= 0 && ep_idx < ep, "ep_idx {} out of [0, {})", ep_idx, ep);
  HELIX_CHECK(tpf_idx >= 0 && tpf_idx < tpf, "tpf_idx {} out of [0, {})", tpf_idx, tpf);
  const std::int64_t slot = ep_idx * tpf + tpf_idx;
  return family == layout_family::medha ? slot * kvp : slot;
}

std::vector<std::int64_t> layout::tpf_group(std::int64_t ep_idx) const {
  std::vector<std::int64_t> ranks;
  ranks.reserve(static_cast<std::size_t>(tpf));
  for (std::int64_t t = 0; t < tpf; ++t) ranks.push_back(ffn_rank(ep_idx, t));
  return ranks;
}

std::vector<std::int64_t> layout::ep_group(std::int64_t tpf_idx) const {
  std::vector<std::int64_t> ranks;
  ranks.reserve(static_cast<std::size_t>(ep));
  for (std::int64_t e = 0; e < ep; ++e) ranks.push_back(ffn_rank(e, tpf_idx));
  return ranks;
}

index_range layout::rank_q_heads(std::int64_t rank, const model_spec& spec) const {
  HELIX_CHECK(rank >= 0 && rank < num_ranks, "rank {} out of [0, {})", rank, num_ranks);
  const std::int64_t per_rank = spec.num_q_heads / num_ranks;
  return {.first = rank * per_rank, .count = per_rank};
}

index_range layout::column_q_heads(std::int64_t tpa_idx, const model_spec& spec) const {
  HELIX_CHECK(tpa_idx >= 0 && tpa_idx < tpa, "tpa_idx {} out of [0, {})", tpa_idx, tpa);
  const std::int64_t per_column = spec.num_q_heads / tpa;
  return {.first = tpa_idx * per_column, .count = per_column};
}

index_range layout::column_kv_heads(std::int64_t tpa_idx, const model_spec& spec) const {
  HELIX_CHECK(tpa_idx >= 0 && tpa_idx < tpa, "tpa_idx {} out of [0, {})", tpa_idx, tpa);
  const std::int64_t k = spec.layout_kv_heads();
  if (family == layout_family::tp && tpa >= k) {
    // N % K == 0: ranks [h*N/K, (h+1)*N/K) all serve KV head h (their queries belong to it).
    return {.first = tpa_idx * k / tpa, .count = 1};
  }
  const std::int64_t per_column = k / tpa;
  return {.first = tpa_idx * per_column, .count = per_column};
}

index_range layout::rank_kv_heads(std::int64_t rank, const model_spec& spec) const {
  return column_kv_heads(attention_coords(rank).tpa_idx, spec);
}

index_range layout::all_to_all_q_heads(std::int64_t tpa_idx, std::int64_t kvp_idx,
                                       const model_spec& spec) const {
  HELIX_CHECK(kvp_idx >= 0 && kvp_idx < kvp, "kvp_idx {} out of [0, {})", kvp_idx, kvp);
  const index_range column = column_q_heads(tpa_idx, spec);
  const std::int64_t slice = column.count / kvp;  // = Q / N
  return {.first = column.first + kvp_idx * slice, .count = slice};
}

index_range layout::group_experts(std::int64_t ep_idx, const model_spec& spec) const {
  HELIX_CHECK(ep_idx >= 0 && ep_idx < ep, "ep_idx {} out of [0, {})", ep_idx, ep);
  if (!spec.is_moe()) return {};
  const std::int64_t per_group = spec.moe.num_experts / ep;
  return {.first = ep_idx * per_group, .count = per_group};
}

status validate(const layout& l, const model_spec& spec) {
  if (!known_family(l.family)) {
    return rule_error(layout_rule::family, "unknown family {}", static_cast<int>(l.family));
  }
  const std::string s = l.to_string();
  for (auto [name, v] : {std::pair<std::string_view, std::int64_t>{"kvp", l.kvp},
                         {"tpa", l.tpa},
                         {"tpf", l.tpf},
                         {"ep", l.ep},
                         {"num_ranks", l.num_ranks}}) {
    if (v < 1)
      return rule_error(layout_rule::positive, "{}: {} must be positive, got {}", s, name, v);
  }
  if (l.family == layout_family::tp &&
      (l.kvp != 1 || l.tpa != l.num_ranks || l.tpf != l.num_ranks || l.ep != 1)) {
    return rule_error(layout_rule::family_shape,
                      "tp needs kvp = 1, tpa = tpf = N = {}, ep = 1; got kvp={}, tpa={}, tpf={}, "
                      "ep={}",
                      l.num_ranks, l.kvp, l.tpa, l.tpf, l.ep);
  }
  if (l.num_ranks != l.kvp * l.tpa) {
    return rule_error(layout_rule::ranks, "{}: N = {} != KVP*TPA = {}*{}", s, l.num_ranks, l.kvp,
                      l.tpa);
  }
  const std::int64_t q = spec.num_q_heads;
  const std::int64_t k = spec.layout_kv_heads();
  if (q % l.num_ranks != 0) {
    return rule_error(layout_rule::heads_divisible,
                      "{}: query heads Q = {} not divisible by N = {} (after attention each rank "
                      "owns Q/N heads)",
                      s, q, l.num_ranks);
  }
  if (l.family == layout_family::tp) {
    if (k % l.num_ranks != 0 && l.num_ranks % k != 0) {
      return rule_error(layout_rule::tp_kv_heads,
                        "{}: tp = {} must divide K = {} or be a multiple of it (KV heads are split "
                        "or duplicated whole)",
                        s, l.num_ranks, k);
    }
  } else if (k % l.tpa != 0) {
    return rule_error(layout_rule::tpa_divides_k, "{}: TPA = {} does not divide K = {}{}", s, l.tpa,
                      k, spec.is_mla() ? " (MLA: K = 1)" : "");
  }
  if (l.family == layout_family::medha && (l.tpf != l.tpa || l.ep != 1)) {
    return rule_error(layout_rule::ffn_grid,
                      "{}: medha runs the FFN on the TPA ranks: tpf must equal tpa = {} and ep 1, "
                      "got tpf={}, ep={}",
                      s, l.tpa, l.tpf, l.ep);
  }
  if (l.family != layout_family::medha && l.tpf * l.ep != l.num_ranks) {
    return rule_error(layout_rule::ffn_grid, "{}: TPF*EP = {}*{} != N = {}", s, l.tpf, l.ep,
                      l.num_ranks);
  }
  if (!spec.is_moe() && l.ep > 1) {
    return rule_error(layout_rule::ep_dense, "{}: EP = {} > 1 on dense model '{}'", s, l.ep,
                      spec.name);
  }
  if (spec.is_moe() && spec.moe.num_experts % l.ep != 0) {
    return rule_error(layout_rule::experts_divisible, "{}: experts E = {} not divisible by EP = {}",
                      s, spec.moe.num_experts, l.ep);
  }
  return ok_status();
}

expected<layout> default_layout(layout_family family, std::int64_t num_ranks,
                                const model_spec& spec) {
  if (!known_family(family)) {
    return rule_error(layout_rule::family, "unknown family {}", static_cast<int>(family));
  }
  if (num_ranks < 1 || num_ranks > max_grid_size) {
    return rule_error(layout_rule::positive, "num_ranks must be in [1, {}], got {}", max_grid_size,
                      num_ranks);
  }
  const std::int64_t k = std::max<std::int64_t>(1, spec.layout_kv_heads());
  layout l;
  l.family = family;
  l.num_ranks = num_ranks;
  if (family == layout_family::tp) {
    l.kvp = 1;
    l.tpa = l.tpf = num_ranks;
    l.ep = 1;
  } else {
    std::int64_t tpa = std::min(k, num_ranks);
    while (k % tpa != 0 || num_ranks % tpa != 0) --tpa;  // terminates at 1
    l.tpa = tpa;
    l.kvp = num_ranks / tpa;
    if (family == layout_family::medha) {
      l.tpf = tpa;
      l.ep = 1;
    } else {
      std::int64_t ep = 1;
      if (spec.is_moe()) {
        for (std::int64_t d = num_ranks; d >= 1; --d) {
          if (num_ranks % d == 0 && spec.moe.num_experts % d == 0) {
            ep = d;
            break;
          }
        }
      }
      l.ep = ep;
      l.tpf = num_ranks / ep;
    }
  }
  HELIX_RETURN_IF_ERROR(validate(l, spec));
  return l;
}

}  // namespace helix
