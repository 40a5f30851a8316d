// Parsing of tokenizer.json and tokenizer_config.json into hf_tokenizer_parts. The file is
// untrusted: every field is type-checked, counts and lengths are bounded, and nlohmann's
// exceptions stop at parse_json() below.
#include <limits>

#include <nlohmann/json.hpp>

#include "text/hf_tokenizer.hpp"
#include "text/utf8.hpp"

namespace helix::text {
namespace {

using json = nlohmann::json;

// Bounds on what a hostile file can make encode and decode do: a Replace or Prepend string (real
// ones are one character, "▁" or " ") multiplies the text by at most this much, and each of the
// normalizer, pre-tokenizer and decoder chains has at most `max_steps` steps.
constexpr std::size_t max_rewrite_bytes = 64;
constexpr std::size_t max_steps = 64;
constexpr std::size_t max_post_processor_ids = 256;

// Rejects nesting deeper than `max_depth` before parsing, so a hostile file cannot make the
// parser build (and later free) millions of nested containers.
status check_depth(std::string_view text, std::size_t max_depth, std::string_view file) {
  std::size_t depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) {
        return invalid_argument("{}: JSON nested deeper than {} levels", file, max_depth);
      }
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return ok_status();
}

expected<json> parse_json(std::string_view text, std::size_t max_depth, std::string_view file) {
  HELIX_RETURN_IF_ERROR(check_depth(text, max_depth, file));
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    return invalid_argument("{}: not valid JSON: {}", file, e.what());
  } catch (const std::bad_alloc&) {
    return resource_exhausted("{}: out of memory parsing {} bytes", file, text.size());
  }
}

// A field of an object, or nullptr when absent.
const json* field(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

expected<bool> get_bool(const json& obj, std::string_view key, bool fallback,
                        std::string_view where) {
  const json* v = field(obj, key);
  if (v == nullptr || v->is_null()) return fallback;
  if (!v->is_boolean()) return invalid_argument("{}.{} must be a boolean", where, key);
  return v->get<bool>();
}

expected<std::string> get_string(const json& v, std::string_view where, std::size_t max_bytes) {
  if (!v.is_string()) return invalid_argument("{} must be a string", where);
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() > max_bytes) {
    return resource_exhausted("{} is {} bytes, more than the limit of {}", where, s.size(),
                              max_bytes);
  }
  return s;
}

expected<std::int32_t> get_id(const json& v, std::string_view where) {
  if (!v.is_number_integer()) return invalid_argument("{} must be an integer id", where);
  const auto id = v.get<std::int64_t>();
  if (id < 0 || id >= std::numeric_limits<std::int32_t>::max()) {
    return invalid_argument("{} = {} is not a valid token id", where, id);
  }
  return static_cast<std::int32_t>(id);
}

expected<std::string> get_type(const json& obj, std::string_view where) {
  if (!obj.is_object()) return invalid_argument("{} must be an object or null", where);
  const json* t = field(obj, "type");
  if (t == nullptr) return invalid_argument("{}.type is missing", where);
  return get_string(*t, fmt::format("{}.type", where), 64);
}

// Sequence members: `key` must be an array of objects of at most 64 entries.
expected<const json*> get_members(const json& obj, std::string_view key, std::string_view where) {
  const json* v = field(obj, key);
  if (v == nullptr || !v->is_array()) {
    return invalid_argument("{}.{} must be an array", where, key);
  }
  if (v->size() > 64) return resource_exhausted("{}.{} has {} entries", where, key, v->size());
  return v;
}

// A literal pattern {"String": ...}; regex patterns are refused (no model this targets uses one in
// a normalizer or decoder).
expected<std::string> literal_pattern(const json& obj, std::string_view where) {
  const json* pattern = field(obj, "pattern");
  const json* literal = pattern == nullptr ? nullptr : field(*pattern, "String");
  if (literal == nullptr) {
    if (pattern != nullptr && field(*pattern, "Regex") != nullptr) {
      return failed_precondition("{}.pattern: a Regex pattern is not supported here (String only)",
                                 where);
    }
    return invalid_argument("{}.pattern must be {{\"String\": ...}}", where);
  }
  HELIX_ASSIGN_OR_RETURN(
      std::string text,
      get_string(*literal, fmt::format("{}.pattern.String", where), max_rewrite_bytes));
  if (text.empty()) return invalid_argument("{}.pattern.String is empty", where);
  return text;
}

status parse_normalizer(const json& n, std::string_view where,
                        std::vector<normalizer_step>& steps) {
  if (n.is_null()) return ok_status();
  HELIX_ASSIGN_OR_RETURN(const std::string type, get_type(n, where));
  if (type == "NFC") {
    steps.push_back({normalizer_step::kind::nfc, {}, {}});
    return ok_status();
  }
  if (type == "Prepend") {
    const json* v = field(n, "prepend");
    if (v == nullptr) return invalid_argument("{}.prepend is missing", where);
    HELIX_ASSIGN_OR_RETURN(std::string text,
                           get_string(*v, fmt::format("{}.prepend", where), max_rewrite_bytes));
    steps.push_back({normalizer_step::kind::prepend, std::move(text), {}});
    return ok_status();
  }
  if (type == "Replace") {
    HELIX_ASSIGN_OR_RETURN(std::string text, literal_pattern(n, where));
    const json* c = field(n, "content");
    if (c == nullptr) return invalid_argument("{}.content is missing", where);
    HELIX_ASSIGN_OR_RETURN(std::string content,
                           get_string(*c, fmt::format("{}.content", where), max_rewrite_bytes));
    steps.push_back({normalizer_step::kind::replace, std::move(text), std::move(content)});
    return ok_status();
  }
  if (type == "Sequence") {
    HELIX_ASSIGN_OR_RETURN(const json* members, get_members(n, "normalizers", where));
    for (std::size_t i = 0; i < members->size(); ++i) {
      HELIX_RETURN_IF_ERROR(
          parse_normalizer((*members)[i], fmt::format("{}.normalizers[{}]", where, i), steps));
    }
    return ok_status();
  }
  return failed_precondition(
      "{}: normalizer type \"{}\" is not supported (null, NFC, Prepend, Replace, Sequence)", where,
      type);
}

// Metaspace's prepend scheme: "prepend_scheme" (tokenizers >= 0.14) or "add_prefix_space".
expected<metaspace_step::prepend> parse_prepend_scheme(const json& obj, std::string_view where) {
  if (const json* scheme = field(obj, "prepend_scheme"); scheme != nullptr && !scheme->is_null()) {
    HELIX_ASSIGN_OR_RETURN(const std::string s,
                           get_string(*scheme, fmt::format("{}.prepend_scheme", where), 64));
    if (s == "always") return metaspace_step::prepend::always;
    if (s == "first") return metaspace_step::prepend::first;
    if (s == "never") return metaspace_step::prepend::never;
    return invalid_argument("{}.prepend_scheme \"{}\" is not always, first or never", where, s);
  }
  HELIX_ASSIGN_OR_RETURN(const bool prefix, get_bool(obj, "add_prefix_space", true, where));
  return prefix ? metaspace_step::prepend::always : metaspace_step::prepend::never;
}

expected<std::string> parse_replacement(const json& obj, std::string_view where) {
  const json* r = field(obj, "replacement");
  if (r == nullptr) return std::string("\xE2\x96\x81");
  HELIX_ASSIGN_OR_RETURN(std::string text,
                         get_string(*r, fmt::format("{}.replacement", where), 16));
  if (text.empty()) return invalid_argument("{}.replacement is empty", where);
  return text;
}

expected<split_behavior> parse_behavior(const json& obj, std::string_view where) {
  const json* b = field(obj, "behavior");
  if (b == nullptr) return split_behavior::isolated;
  HELIX_ASSIGN_OR_RETURN(const std::string s,
                         get_string(*b, fmt::format("{}.behavior", where), 64));
  if (s == "Removed") return split_behavior::removed;
  if (s == "Isolated") return split_behavior::isolated;
  if (s == "MergedWithPrevious") return split_behavior::merged_with_previous;
  if (s == "MergedWithNext") return split_behavior::merged_with_next;
  if (s == "Contiguous") return split_behavior::contiguous;
  return invalid_argument("{}.behavior \"{}\" is not a split behaviour", where, s);
}

status parse_pre_tokenizer(const json& p, std::string_view where, const tokenizer_limits& limits,
                           std::vector<pre_tokenizer_step>& steps) {
  if (p.is_null()) return ok_status();
  HELIX_ASSIGN_OR_RETURN(const std::string type, get_type(p, where));
  if (type == "Sequence") {
    HELIX_ASSIGN_OR_RETURN(const json* members, get_members(p, "pretokenizers", where));
    for (std::size_t i = 0; i < members->size(); ++i) {
      HELIX_RETURN_IF_ERROR(parse_pre_tokenizer(
          (*members)[i], fmt::format("{}.pretokenizers[{}]", where, i), limits, steps));
    }
    return ok_status();
  }
  if (type == "Split") {
    const json* pattern = field(p, "pattern");
    const json* regex_text = pattern == nullptr ? nullptr : field(*pattern, "Regex");
    const json* literal_text = pattern == nullptr ? nullptr : field(*pattern, "String");
    if (regex_text == nullptr && literal_text == nullptr) {
      return invalid_argument("{}.pattern must be {{\"Regex\": ...}} or {{\"String\": ...}}",
                              where);
    }
    const bool literal = regex_text == nullptr;
    HELIX_ASSIGN_OR_RETURN(
        const std::string text,
        get_string(literal ? *literal_text : *regex_text,
                   fmt::format("{}.pattern.{}", where, literal ? "String" : "Regex"),
                   limits.max_pattern_bytes));
    auto compiled = regex::compile(text, literal);
    if (!compiled) return compiled.error().with_context(fmt::format("{}.pattern", where));
    HELIX_ASSIGN_OR_RETURN(const split_behavior behavior, parse_behavior(p, where));
    HELIX_ASSIGN_OR_RETURN(const bool invert, get_bool(p, "invert", false, where));
    steps.emplace_back(split_step{std::move(compiled).value(), behavior, invert});
    return ok_status();
  }
  if (type == "ByteLevel") {
    HELIX_ASSIGN_OR_RETURN(const bool prefix, get_bool(p, "add_prefix_space", true, where));
    HELIX_ASSIGN_OR_RETURN(const bool use_regex, get_bool(p, "use_regex", true, where));
    steps.emplace_back(byte_level_step{prefix, use_regex});
    return ok_status();
  }
  if (type == "Metaspace") {
    metaspace_step ms;
    HELIX_ASSIGN_OR_RETURN(ms.replacement, parse_replacement(p, where));
    HELIX_ASSIGN_OR_RETURN(ms.scheme, parse_prepend_scheme(p, where));
    HELIX_ASSIGN_OR_RETURN(ms.split, get_bool(p, "split", true, where));
    steps.emplace_back(std::move(ms));
    return ok_status();
  }
  if (type == "Digits") {
    HELIX_ASSIGN_OR_RETURN(const bool individual, get_bool(p, "individual_digits", false, where));
    steps.emplace_back(digits_step{individual});
    return ok_status();
  }
  return failed_precondition(
      "{}: pre-tokenizer type \"{}\" is not supported (Split, ByteLevel, Digits, Metaspace, "
      "Sequence)",
      where, type);
}

// Appends the single-sequence additions of a post-processor to prefix / suffix.
status parse_post_processor(const json& p, std::string_view where, hf_tokenizer_parts& parts) {
  if (p.is_null()) return ok_status();
  HELIX_ASSIGN_OR_RETURN(const std::string type, get_type(p, where));
  if (type == "ByteLevel") return ok_status();
  if (type == "Sequence") {
    HELIX_ASSIGN_OR_RETURN(const json* members, get_members(p, "processors", where));
    for (std::size_t i = 0; i < members->size(); ++i) {
      HELIX_RETURN_IF_ERROR(
          parse_post_processor((*members)[i], fmt::format("{}.processors[{}]", where, i), parts));
    }
    return ok_status();
  }
  if (type == "BertProcessing" || type == "RobertaProcessing") {
    // "cls": [token, id], "sep": [token, id]: [CLS] text [SEP].
    std::int32_t ids[2] = {0, 0};
    const char* keys[2] = {"cls", "sep"};
    for (int k = 0; k < 2; ++k) {
      const json* v = field(p, keys[k]);
      if (v == nullptr || !v->is_array() || v->size() != 2) {
        return invalid_argument("{}.{} must be [token, id]", where, keys[k]);
      }
      HELIX_ASSIGN_OR_RETURN(ids[k], get_id((*v)[1], fmt::format("{}.{}[1]", where, keys[k])));
    }
    parts.post_prefix.push_back(ids[0]);
    parts.post_suffix.push_back(ids[1]);
    parts.has_post_processor_tokens = true;
    return ok_status();
  }
  if (type == "TemplateProcessing") {
    const json* single = field(p, "single");
    const json* specials = field(p, "special_tokens");
    if (single == nullptr || !single->is_array() || single->size() > 64) {
      return invalid_argument("{}.single must be an array of at most 64 items", where);
    }
    bool after_sequence = false;
    for (std::size_t i = 0; i < single->size(); ++i) {
      const json& item = (*single)[i];
      const std::string item_where = fmt::format("{}.single[{}]", where, i);
      if (field(item, "Sequence") != nullptr) {
        after_sequence = true;
        continue;
      }
      const json* st = field(item, "SpecialToken");
      const json* name = st == nullptr ? nullptr : field(*st, "id");
      if (name == nullptr) {
        return invalid_argument("{} must be {{\"SpecialToken\": {{\"id\": ...}}}} or a Sequence",
                                item_where);
      }
      HELIX_ASSIGN_OR_RETURN(const std::string token, get_string(*name, item_where, 4096));
      const json* entry = specials == nullptr ? nullptr : field(*specials, token);
      const json* ids = entry == nullptr ? nullptr : field(*entry, "ids");
      if (ids == nullptr || !ids->is_array() || ids->size() > 64) {
        return invalid_argument("{}.special_tokens[\"{}\"].ids must be an array (at most 64)",
                                where, token);
      }
      for (std::size_t j = 0; j < ids->size(); ++j) {
        HELIX_ASSIGN_OR_RETURN(
            const std::int32_t id,
            get_id((*ids)[j], fmt::format("{}.special_tokens[\"{}\"].ids[{}]", where, token, j)));
        (after_sequence ? parts.post_suffix : parts.post_prefix).push_back(id);
        parts.has_post_processor_tokens = true;
      }
    }
    return ok_status();
  }
  return failed_precondition(
      "{}: post-processor type \"{}\" is not supported (ByteLevel, TemplateProcessing, "
      "BertProcessing, RobertaProcessing, Sequence)",
      where, type);
}

status parse_decoder(const json& d, std::string_view where, std::vector<decoder_step>& steps) {
  if (d.is_null()) return ok_status();
  HELIX_ASSIGN_OR_RETURN(const std::string type, get_type(d, where));
  decoder_step step;
  if (type == "ByteLevel") {
    step.type = decoder_step::kind::byte_level;
  } else if (type == "ByteFallback") {
    step.type = decoder_step::kind::byte_fallback;
  } else if (type == "Fuse") {
    step.type = decoder_step::kind::fuse;
  } else if (type == "Replace") {
    step.type = decoder_step::kind::replace;
    HELIX_ASSIGN_OR_RETURN(step.text, literal_pattern(d, where));
    const json* c = field(d, "content");
    if (c == nullptr) return invalid_argument("{}.content is missing", where);
    HELIX_ASSIGN_OR_RETURN(step.content,
                           get_string(*c, fmt::format("{}.content", where), max_rewrite_bytes));
  } else if (type == "Strip") {
    step.type = decoder_step::kind::strip;
    const json* c = field(d, "content");
    if (c == nullptr) return invalid_argument("{}.content is missing", where);
    HELIX_ASSIGN_OR_RETURN(step.text, get_string(*c, fmt::format("{}.content", where), 4));
    if (step.text.empty() || utf8_sequence_length(step.text, 0) != step.text.size()) {
      return invalid_argument("{}.content must be one character", where);
    }
    for (auto [key, out] : {std::pair{"start", &step.start}, std::pair{"stop", &step.stop}}) {
      const json* v = field(d, key);
      if (v == nullptr || !v->is_number_unsigned() || v->get<std::uint64_t>() > 1024) {
        return invalid_argument("{}.{} must be a count from 0 to 1024", where, key);
      }
      *out = v->get<std::size_t>();
    }
  } else if (type == "Metaspace") {
    step.type = decoder_step::kind::metaspace;
    HELIX_ASSIGN_OR_RETURN(step.text, parse_replacement(d, where));
    HELIX_ASSIGN_OR_RETURN(const metaspace_step::prepend scheme, parse_prepend_scheme(d, where));
    step.strip_first_space = scheme != metaspace_step::prepend::never;
  } else if (type == "Sequence") {
    HELIX_ASSIGN_OR_RETURN(const json* members, get_members(d, "decoders", where));
    for (std::size_t i = 0; i < members->size(); ++i) {
      HELIX_RETURN_IF_ERROR(
          parse_decoder((*members)[i], fmt::format("{}.decoders[{}]", where, i), steps));
    }
    return ok_status();
  } else {
    return failed_precondition(
        "{}: decoder type \"{}\" is not supported (ByteLevel, ByteFallback, Fuse, Replace, Strip, "
        "Metaspace, Sequence)",
        where, type);
  }
  steps.push_back(std::move(step));
  return ok_status();
}

expected<bpe_model> parse_model(const json& m, const tokenizer_limits& limits) {
  if (!m.is_object()) return invalid_argument("model must be an object");
  if (const json* t = field(m, "type"); t != nullptr) {
    HELIX_ASSIGN_OR_RETURN(const std::string type, get_string(*t, "model.type", 64));
    if (type != "BPE") {
      return failed_precondition("model.type \"{}\" is not supported (BPE)", type);
    }
  }
  if (const json* d = field(m, "dropout");
      d != nullptr && !d->is_null() && !(d->is_number() && d->get<double>() == 0.0)) {
    return failed_precondition("model.dropout is not supported (must be null)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const json* v = field(m, key);
    if (v != nullptr && !v->is_null() &&
        !(v->is_string() && v->get_ref<const std::string&>().empty())) {
      return failed_precondition("model.{} is not supported (must be null)", key);
    }
  }
  bpe_options options;
  HELIX_ASSIGN_OR_RETURN(options.ignore_merges, get_bool(m, "ignore_merges", false, "model"));
  HELIX_ASSIGN_OR_RETURN(options.byte_fallback, get_bool(m, "byte_fallback", false, "model"));
  HELIX_ASSIGN_OR_RETURN(options.fuse_unk, get_bool(m, "fuse_unk", false, "model"));
  if (const json* u = field(m, "unk_token"); u != nullptr && !u->is_null()) {
    HELIX_ASSIGN_OR_RETURN(options.unk_token,
                           get_string(*u, "model.unk_token", limits.max_token_bytes));
  }

  const json* vocab = field(m, "vocab");
  if (vocab == nullptr || !vocab->is_object())
    return invalid_argument("model.vocab must be an object");
  if (vocab->size() > limits.max_vocab) {
    return resource_exhausted("model.vocab has {} entries, more than the limit of {}",
                              vocab->size(), limits.max_vocab);
  }
  token_map map;
  map.reserve(vocab->size());
  for (const auto& [token, id_json] : vocab->items()) {
    if (token.size() > limits.max_token_bytes) {
      return resource_exhausted("model.vocab has a {}-byte token, more than the limit of {}",
                                token.size(), limits.max_token_bytes);
    }
    HELIX_ASSIGN_OR_RETURN(const std::int32_t id,
                           get_id(id_json, fmt::format("model.vocab[\"{}\"]", token)));
    map.emplace(token, id);
  }

  const json* merges = field(m, "merges");
  std::vector<std::pair<std::string, std::string>> pairs;
  if (merges != nullptr && !merges->is_null()) {
    if (!merges->is_array()) return invalid_argument("model.merges must be an array");
    if (merges->size() > limits.max_merges) {
      return resource_exhausted("model.merges has {} entries, more than the limit of {}",
                                merges->size(), limits.max_merges);
    }
    pairs.reserve(merges->size());
    for (std::size_t i = 0; i < merges->size(); ++i) {
      const json& e = (*merges)[i];
      const std::string where = fmt::format("model.merges[{}]", i);
      if (e.is_string()) {
        // The legacy form "a b": exactly one space, as HF requires.
        const auto& s = e.get_ref<const std::string&>();
        const auto space = s.find(' ');
        if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
          return invalid_argument("{} = \"{}\" must be two tokens separated by one space", where,
                                  s);
        }
        pairs.emplace_back(s.substr(0, space), s.substr(space + 1));
      } else if (e.is_array() && e.size() == 2) {
        HELIX_ASSIGN_OR_RETURN(std::string a, get_string(e[0], where, limits.max_token_bytes));
        HELIX_ASSIGN_OR_RETURN(std::string b, get_string(e[1], where, limits.max_token_bytes));
        pairs.emplace_back(std::move(a), std::move(b));
      } else {
        return invalid_argument("{} must be \"a b\" or [\"a\", \"b\"]", where);
      }
    }
  }
  return bpe_model::create(std::move(map), pairs, std::move(options));
}

expected<std::vector<added_token>> parse_added_tokens(const json& root,
                                                      const tokenizer_limits& limits) {
  std::vector<added_token> out;
  const json* added = field(root, "added_tokens");
  if (added == nullptr || added->is_null()) return out;
  if (!added->is_array()) return invalid_argument("added_tokens must be an array");
  if (added->size() > limits.max_added_tokens) {
    return resource_exhausted("added_tokens has {} entries, more than the limit of {}",
                              added->size(), limits.max_added_tokens);
  }
  for (std::size_t i = 0; i < added->size(); ++i) {
    const json& e = (*added)[i];
    const std::string where = fmt::format("added_tokens[{}]", i);
    if (!e.is_object()) return invalid_argument("{} must be an object", where);
    added_token t;
    const json* id = field(e, "id");
    const json* content = field(e, "content");
    if (id == nullptr || content == nullptr) {
      return invalid_argument("{} needs \"id\" and \"content\"", where);
    }
    HELIX_ASSIGN_OR_RETURN(t.id, get_id(*id, where + ".id"));
    HELIX_ASSIGN_OR_RETURN(t.content,
                           get_string(*content, where + ".content", limits.max_token_bytes));
    if (t.content.empty()) return invalid_argument("{}.content is empty", where);
    HELIX_ASSIGN_OR_RETURN(t.special, get_bool(e, "special", false, where));
    HELIX_ASSIGN_OR_RETURN(t.single_word, get_bool(e, "single_word", false, where));
    HELIX_ASSIGN_OR_RETURN(t.lstrip, get_bool(e, "lstrip", false, where));
    HELIX_ASSIGN_OR_RETURN(t.rstrip, get_bool(e, "rstrip", false, where));
    HELIX_ASSIGN_OR_RETURN(t.normalized, get_bool(e, "normalized", !t.special, where));
    out.push_back(std::move(t));
  }
  return out;
}

// bos_token and friends: a string, an AddedToken object {"content": ...}, or null.
expected<std::optional<std::string>> config_token(const json& root, std::string_view key) {
  const json* v = field(root, key);
  if (v == nullptr || v->is_null()) return std::optional<std::string>();
  if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
  if (const json* c = field(*v, "content"); c != nullptr && c->is_string()) {
    return std::optional<std::string>(c->get<std::string>());
  }
  return invalid_argument(
      "tokenizer_config.json: {} must be a string, {{\"content\": ...}} or null", key);
}

}  // namespace

expected<tokenizer_config> parse_tokenizer_config(std::string_view text,
                                                  const tokenizer_limits& limits) {
  HELIX_ASSIGN_OR_RETURN(const json root,
                         parse_json(text, limits.max_json_depth, "tokenizer_config.json"));
  if (!root.is_object()) return invalid_argument("tokenizer_config.json must be a JSON object");
  tokenizer_config c;
  HELIX_ASSIGN_OR_RETURN(c.bos_token, config_token(root, "bos_token"));
  HELIX_ASSIGN_OR_RETURN(c.eos_token, config_token(root, "eos_token"));
  HELIX_ASSIGN_OR_RETURN(c.pad_token, config_token(root, "pad_token"));
  HELIX_ASSIGN_OR_RETURN(c.unk_token, config_token(root, "unk_token"));
  for (auto [key, out] : {std::pair{"add_bos_token", &c.add_bos_token},
                          std::pair{"add_eos_token", &c.add_eos_token}}) {
    const json* v = field(root, key);
    if (v == nullptr || v->is_null()) continue;
    if (!v->is_boolean()) {
      return invalid_argument("tokenizer_config.json: {} must be a boolean", key);
    }
    *out = v->get<bool>();
  }
  return c;
}

expected<hf_tokenizer_parts> parse_tokenizer_json(std::string_view text,
                                                  const tokenizer_limits& limits) {
  HELIX_ASSIGN_OR_RETURN(const json root,
                         parse_json(text, limits.max_json_depth, "tokenizer.json"));
  if (!root.is_object()) return invalid_argument("tokenizer.json must be a JSON object");
  hf_tokenizer_parts parts;
  const json null_json;
  const auto section = [&](std::string_view key) -> const json& {
    const json* v = field(root, key);
    return v == nullptr ? null_json : *v;
  };
  const json* model = field(root, "model");
  if (model == nullptr) return invalid_argument("model is missing");
  HELIX_ASSIGN_OR_RETURN(parts.model, parse_model(*model, limits));
  HELIX_ASSIGN_OR_RETURN(parts.added, parse_added_tokens(root, limits));
  HELIX_RETURN_IF_ERROR(parse_normalizer(section("normalizer"), "normalizer", parts.normalizers));
  std::vector<pre_tokenizer_step> steps;
  HELIX_RETURN_IF_ERROR(
      parse_pre_tokenizer(section("pre_tokenizer"), "pre_tokenizer", limits, steps));
  HELIX_RETURN_IF_ERROR(parse_post_processor(section("post_processor"), "post_processor", parts));
  HELIX_RETURN_IF_ERROR(parse_decoder(section("decoder"), "decoder", parts.decoders));
  for (const auto& [what, count] :
       {std::pair{"normalizer", parts.normalizers.size()}, std::pair{"pre_tokenizer", steps.size()},
        std::pair{"decoder", parts.decoders.size()}}) {
    if (count > max_steps) {
      return resource_exhausted("{} has {} steps, more than the limit of {}", what, count,
                                max_steps);
    }
  }
  if (parts.post_prefix.size() + parts.post_suffix.size() > max_post_processor_ids) {
    return resource_exhausted("post_processor adds {} ids, more than the limit of {}",
                              parts.post_prefix.size() + parts.post_suffix.size(),
                              max_post_processor_ids);
  }
  HELIX_ASSIGN_OR_RETURN(parts.pre, pre_tokenizer::create(std::move(steps)));
  return parts;
}

}  // namespace helix::text
