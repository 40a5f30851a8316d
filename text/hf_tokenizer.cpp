#include "text/hf_tokenizer.hpp"

#include <algorithm>
#include <unordered_map>

#include "text/utf8.hpp"

namespace helix::text {
namespace {

constexpr std::uint8_t flag_special = 1;
constexpr std::uint8_t flag_added = 2;
constexpr std::uint8_t flag_byte = 4;
constexpr std::uint8_t flag_used = 8;

// Inverse of byte_to_unicode(): code point -> byte, -1 for code points outside the table.
const std::unordered_map<char32_t, int>& unicode_to_byte() {
  static const std::unordered_map<char32_t, int> table = [] {
    std::unordered_map<char32_t, int> t;
    const auto& fwd = byte_to_unicode();
    for (int b = 0; b < 256; ++b) t.emplace(fwd[static_cast<std::size_t>(b)], b);
    return t;
  }();
  return table;
}

// HF's ByteLevel decoder for one token: every character mapped back to its byte, or, when some
// character is not in the table, the token's own UTF-8.
std::string byte_level_bytes(std::string_view token) {
  const auto& inv = unicode_to_byte();
  std::string out;
  out.reserve(token.size());
  for (std::size_t pos = 0; pos < token.size();) {
    const std::size_t len = utf8_sequence_length(token, pos);
    if (len == 0) return std::string(token);
    const auto it = inv.find(decode_code_point(token, pos, len));
    if (it == inv.end()) return std::string(token);
    out.push_back(static_cast<char>(it->second));
    pos += len;
  }
  return out;
}

// "<0xAB>" -> 0xAB, as HF's ByteFallback decoder reads byte tokens.
std::optional<std::uint8_t> parse_byte_token(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return std::nullopt;
  int v = 0;
  for (const char c : t.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= c - '0';
    } else if (c >= 'A' && c <= 'F') {
      v |= c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      v |= c - 'a' + 10;
    } else {
      return std::nullopt;
    }
  }
  return static_cast<std::uint8_t>(v);
}

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  std::size_t pos = 0;
  for (std::size_t hit = s.find(from); hit != std::string_view::npos; hit = s.find(from, pos)) {
    out.append(s.substr(pos, hit - pos)).append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// One step of HF's decode_chain over the token strings.
std::vector<std::string> apply_decoder(const decoder_step& step, std::vector<std::string> tokens) {
  switch (step.type) {
    case decoder_step::kind::byte_level: {
      // HF's ByteLevel returns one string: the lossy UTF-8 of all the tokens' bytes.
      std::string bytes;
      for (const auto& t : tokens) bytes += byte_level_bytes(t);
      return {utf8_lossy(bytes)};
    }
    case decoder_step::kind::byte_fallback: {
      // A run of byte tokens that is valid UTF-8 is its text, else one U+FFFD per byte.
      std::vector<std::string> out;
      std::string bytes;
      const auto flush = [&] {
        if (bytes.empty()) return;
        if (validate_utf8(bytes, "bytes").ok()) {
          out.push_back(bytes);
        } else {
          for (std::size_t i = 0; i < bytes.size(); ++i) out.emplace_back(replacement_char);
        }
        bytes.clear();
      };
      for (auto& t : tokens) {
        if (const auto b = parse_byte_token(t)) {
          bytes.push_back(static_cast<char>(*b));
          continue;
        }
        flush();
        out.push_back(std::move(t));
      }
      flush();
      return out;
    }
    case decoder_step::kind::fuse: {
      std::string all;
      for (const auto& t : tokens) all += t;
      return {std::move(all)};
    }
    case decoder_step::kind::replace:
      for (auto& t : tokens) t = replace_all(t, step.text, step.content);
      return tokens;
    case decoder_step::kind::strip:
      for (auto& t : tokens) {
        std::size_t begin = 0;
        for (std::size_t n = 0;
             n < step.start && t.compare(begin, step.text.size(), step.text) == 0; ++n)
          begin += step.text.size();
        std::size_t end = t.size();
        for (std::size_t n = 0; n < step.stop && end >= begin + step.text.size() &&
                                t.compare(end - step.text.size(), step.text.size(), step.text) == 0;
             ++n)
          end -= step.text.size();
        t = t.substr(begin, end - begin);
      }
      return tokens;
    case decoder_step::kind::metaspace:
      for (std::size_t i = 0; i < tokens.size(); ++i) {
        std::string t = replace_all(tokens[i], step.text, " ");
        if (i == 0 && step.strip_first_space && !t.empty() && t.front() == ' ') t.erase(0, 1);
        tokens[i] = std::move(t);
      }
      return tokens;
  }
  return tokens;
}

// The code point that ends just before `pos`, or 0 at the start.
char32_t char_before(std::string_view s, std::size_t pos) {
  if (pos == 0) return 0;
  std::size_t b = pos - 1;
  while (b > 0 && (static_cast<std::uint8_t>(s[b]) & 0xC0) == 0x80) --b;
  const std::size_t len = utf8_sequence_length(s, b);
  return len == 0 ? 0 : decode_code_point(s, b, len);
}

char32_t char_at(std::string_view s, std::size_t pos) {
  const std::size_t len = utf8_sequence_length(s, pos);
  return len == 0 ? 0 : decode_code_point(s, pos, len);
}

}  // namespace

expected<std::unique_ptr<hf_tokenizer>> hf_tokenizer::create(hf_tokenizer_parts parts,
                                                             const tokenizer_config& config) {
  std::unique_ptr<hf_tokenizer> t(new hf_tokenizer());
  // The id table: model vocabulary, then added tokens (which win, as in HF).
  std::int64_t max_id = -1;
  for (const auto& [tok, id] : parts.model.vocab()) max_id = std::max<std::int64_t>(max_id, id);
  for (const auto& a : parts.added) max_id = std::max<std::int64_t>(max_id, a.id);
  const std::size_t entries = parts.model.vocab().size() + parts.added.size();
  if (max_id >= 0 && static_cast<std::size_t>(max_id) >= 2 * entries + 1024) {
    return invalid_argument("token ids are too sparse: largest id {} for {} tokens", max_id,
                            entries);
  }
  const bool byte_fallback_decoder = std::any_of(
      parts.decoders.begin(), parts.decoders.end(),
      [](const decoder_step& d) { return d.type == decoder_step::kind::byte_fallback; });
  const auto table_size = static_cast<std::size_t>(max_id + 1);
  t->id_to_token_.resize(table_size);
  t->flags_.assign(table_size, 0);
  for (const auto& [tok, id] : parts.model.vocab()) {
    const auto i = static_cast<std::size_t>(id);
    if ((t->flags_[i] & flag_used) != 0) {
      return invalid_argument("model.vocab: tokens \"{}\" and \"{}\" share id {}",
                              t->id_to_token_[i], tok, id);
    }
    t->id_to_token_[i] = tok;
    t->flags_[i] = flag_used;
    if (byte_fallback_decoder && parse_byte_token(tok)) t->flags_[i] |= flag_byte;
  }
  for (std::size_t k = 0; k < parts.added.size(); ++k) {
    const auto& a = parts.added[k];
    const auto i = static_cast<std::size_t>(a.id);
    t->id_to_token_[i] = a.content;
    t->added_ids_.try_emplace(a.content, a.id);
    t->flags_[i] =
        static_cast<std::uint8_t>(flag_used | flag_added | (a.special ? flag_special : 0));
    t->trie_insert(a.normalized ? t->normalized_trie_ : t->raw_trie_, a.content,
                   static_cast<std::int32_t>(k));
  }
  t->parts_ = std::move(parts);

  // Special ids: tokenizer_config.json names them; the post-processor's single prefix token is
  // the BOS when the config does not say.
  const auto resolve = [&](const std::optional<std::string>& name, std::string_view key,
                           std::optional<std::int32_t>& out) -> status {
    if (!name) return ok_status();
    out = t->token_to_id(*name);
    if (!out) {
      return invalid_argument("tokenizer_config.json: {} \"{}\" is not a token", key, *name);
    }
    return ok_status();
  };
  HELIX_RETURN_IF_ERROR(resolve(config.bos_token, "bos_token", t->ids_.bos));
  HELIX_RETURN_IF_ERROR(resolve(config.eos_token, "eos_token", t->ids_.eos));
  HELIX_RETURN_IF_ERROR(resolve(config.pad_token, "pad_token", t->ids_.pad));
  HELIX_RETURN_IF_ERROR(resolve(config.unk_token, "unk_token", t->ids_.unk));
  if (!t->ids_.bos && t->parts_.post_prefix.size() == 1) t->ids_.bos = t->parts_.post_prefix[0];
  // Without a config naming them, the usual spellings among the special added tokens.
  const auto first_special = [&](std::initializer_list<std::string_view> names,
                                 std::optional<std::int32_t>& out) {
    for (const std::string_view name : names) {
      if (out) return;
      if (const auto id = t->token_to_id(name); id && t->is_special(*id)) out = id;
    }
  };
  first_special({"<|begin_of_text|>", "<｜begin▁of▁sentence｜>", "<s>", "<bos>"}, t->ids_.bos);
  first_special(
      {"<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<｜end▁of▁sentence｜>", "</s>", "<eos>"},
      t->ids_.eos);
  for (const std::int32_t id : t->parts_.post_prefix) HELIX_RETURN_IF_ERROR(t->check_id(id));
  for (const std::int32_t id : t->parts_.post_suffix) HELIX_RETURN_IF_ERROR(t->check_id(id));
  // Without post-processor tokens, add_bos_token / add_eos_token decide (DeepSeek-style configs).
  if (!t->parts_.has_post_processor_tokens) {
    if (config.add_bos_token.value_or(false)) {
      if (!t->ids_.bos)
        return invalid_argument("tokenizer_config.json: add_bos_token without bos_token");
      t->config_prefix_.push_back(*t->ids_.bos);
    }
    if (config.add_eos_token.value_or(false)) {
      if (!t->ids_.eos)
        return invalid_argument("tokenizer_config.json: add_eos_token without eos_token");
      t->config_suffix_.push_back(*t->ids_.eos);
    }
  }
  return t;
}

void hf_tokenizer::trie_insert(std::vector<trie_node>& trie, std::string_view s,
                               std::int32_t token) {
  if (trie.empty()) trie.emplace_back();
  std::size_t node = 0;
  for (const char c : s) {
    const auto b = static_cast<std::uint8_t>(c);
    auto& ch = trie[node].children;
    const auto it = std::lower_bound(ch.begin(), ch.end(), b,
                                     [](const auto& p, std::uint8_t v) { return p.first < v; });
    if (it != ch.end() && it->first == b) {
      node = static_cast<std::size_t>(it->second);
      continue;
    }
    const auto next = static_cast<std::int32_t>(trie.size());
    ch.insert(it, {b, next});
    trie.emplace_back();  // invalidates `ch`; not used again
    node = static_cast<std::size_t>(next);
  }
  // A later duplicate content keeps the first entry, like a map insert.
  if (trie[node].token < 0) trie[node].token = token;
}

std::vector<hf_tokenizer::added_match> hf_tokenizer::split_added(const std::vector<trie_node>& trie,
                                                                 std::string_view text) const {
  std::vector<added_match> out;
  std::size_t plain_begin = 0;
  std::size_t pos = 0;
  while (pos < text.size() && !trie.empty()) {
    // Longest token starting at pos.
    std::size_t node = 0;
    std::int32_t best = -1;
    std::size_t best_end = pos;
    for (std::size_t i = pos; i < text.size(); ++i) {
      const auto& ch = trie[node].children;
      const auto b = static_cast<std::uint8_t>(text[i]);
      const auto it = std::lower_bound(ch.begin(), ch.end(), b,
                                       [](const auto& p, std::uint8_t v) { return p.first < v; });
      if (it == ch.end() || it->first != b) break;
      node = static_cast<std::size_t>(it->second);
      const std::int32_t tok = trie[node].token;
      if (tok >= 0) {
        const added_token& a = parts_.added[static_cast<std::size_t>(tok)];
        const bool word_ok = !a.single_word || (!is_alphanumeric(char_before(text, pos)) &&
                                                !is_alphanumeric(char_at(text, i + 1)));
        if (word_ok) {
          best = tok;
          best_end = i + 1;
        }
      }
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const added_token& a = parts_.added[static_cast<std::size_t>(best)];
    std::size_t begin = pos;
    std::size_t end = best_end;
    // lstrip / rstrip: the token also takes the whitespace around it.
    if (a.lstrip) {
      while (begin > plain_begin && is_unicode_space(char_before(text, begin))) {
        do --begin;
        while (begin > plain_begin && (static_cast<std::uint8_t>(text[begin]) & 0xC0) == 0x80);
      }
    }
    if (a.rstrip) {
      while (end < text.size() && is_unicode_space(char_at(text, end))) {
        end += std::max<std::size_t>(1, utf8_sequence_length(text, end));
      }
    }
    if (begin > plain_begin) out.push_back({plain_begin, begin, -1});
    out.push_back({begin, end, best});
    plain_begin = end;
    pos = end;
  }
  if (plain_begin < text.size()) out.push_back({plain_begin, text.size(), -1});
  return out;
}

expected<std::string> hf_tokenizer::normalize(std::string_view text) const {
  std::string out(text);
  for (const normalizer_step& n : parts_.normalizers) {
    switch (n.type) {
      case normalizer_step::kind::nfc: {
        HELIX_ASSIGN_OR_RETURN(out, nfc(out));
        break;
      }
      case normalizer_step::kind::prepend:
        if (!out.empty()) out = n.text + out;
        break;
      case normalizer_step::kind::replace: {
        std::string replaced;
        replaced.reserve(out.size());
        std::size_t pos = 0;
        for (std::size_t hit = out.find(n.text); hit != std::string::npos;
             hit = out.find(n.text, pos)) {
          replaced.append(out, pos, hit - pos).append(n.content);
          pos = hit + n.text.size();
        }
        replaced.append(out, pos, std::string::npos);
        out.swap(replaced);
        break;
      }
    }
  }
  return out;
}

status hf_tokenizer::encode_plain(std::string_view text, bool at_start,
                                  std::vector<std::int32_t>& ids) const {
  if (text.empty()) return ok_status();
  if (parts_.pre.empty()) {
    parts_.model.encode_word(text, ids);
    return ok_status();
  }
  HELIX_ASSIGN_OR_RETURN(const auto words, parts_.pre.split(text, at_start));
  for (const auto& w : words) parts_.model.encode_word(w, ids);
  return ok_status();
}

expected<std::vector<std::int32_t>> hf_tokenizer::encode(std::string_view text,
                                                         bool add_special) const {
  HELIX_RETURN_IF_ERROR(validate_utf8(text, "text to encode"));
  std::vector<std::int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special) {
    const auto& prefix = parts_.has_post_processor_tokens ? parts_.post_prefix : config_prefix_;
    ids.insert(ids.end(), prefix.begin(), prefix.end());
  }
  for (const added_match& raw : split_added(raw_trie_, text)) {
    const std::string_view seg = text.substr(raw.begin, raw.end - raw.begin);
    if (raw.token >= 0) {
      ids.push_back(parts_.added[static_cast<std::size_t>(raw.token)].id);
      continue;
    }
    HELIX_ASSIGN_OR_RETURN(const std::string normalized, normalize(seg));
    for (const added_match& m : split_added(normalized_trie_, normalized)) {
      if (m.token >= 0) {
        ids.push_back(parts_.added[static_cast<std::size_t>(m.token)].id);
      } else {
        const bool at_start = raw.begin == 0 && m.begin == 0;
        HELIX_RETURN_IF_ERROR(encode_plain(
            std::string_view(normalized).substr(m.begin, m.end - m.begin), at_start, ids));
      }
    }
  }
  if (add_special) {
    const auto& suffix = parts_.has_post_processor_tokens ? parts_.post_suffix : config_suffix_;
    ids.insert(ids.end(), suffix.begin(), suffix.end());
  }
  return ids;
}

status hf_tokenizer::check_id(std::int32_t id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= flags_.size() ||
      (flags_[static_cast<std::size_t>(id)] & flag_used) == 0) {
    return invalid_argument("token id {} is not in the vocabulary (size {})", id, flags_.size());
  }
  return ok_status();
}

expected<std::string> hf_tokenizer::decode(std::span<const std::int32_t> ids,
                                           bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (const std::int32_t id : ids) {
    HELIX_RETURN_IF_ERROR(check_id(id));
    if (!(skip_special && is_special(id)))
      tokens.push_back(id_to_token_[static_cast<std::size_t>(id)]);
  }
  if (parts_.decoders.empty()) {
    // No decoder: HF joins the tokens with spaces.
    std::string out;
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      if (i > 0) out.push_back(' ');
      out += tokens[i];
    }
    return utf8_lossy(out);
  }
  for (const decoder_step& step : parts_.decoders) tokens = apply_decoder(step, std::move(tokens));
  std::string out;
  for (const auto& t : tokens) out += t;
  return utf8_lossy(out);
}

std::optional<std::int32_t> hf_tokenizer::token_to_id(std::string_view token) const {
  if (const auto it = added_ids_.find(token); it != added_ids_.end()) return it->second;
  const auto& v = parts_.model.vocab();
  if (const auto it = v.find(token); it != v.end()) return it->second;
  return std::nullopt;
}

expected<std::string> hf_tokenizer::id_to_token(std::int32_t id) const {
  HELIX_RETURN_IF_ERROR(check_id(id));
  return id_to_token_[static_cast<std::size_t>(id)];
}

bool hf_tokenizer::is_special(std::int32_t id) const noexcept {
  return id >= 0 && static_cast<std::size_t>(id) < flags_.size() &&
         (flags_[static_cast<std::size_t>(id)] & flag_special) != 0;
}

bool hf_tokenizer::decodes_by_bytes() const noexcept {
  // ByteLevel (and Fuse) alone: the text is the lossy UTF-8 of the tokens' bytes, concatenated.
  bool byte_level = false;
  for (const decoder_step& d : parts_.decoders) {
    if (d.type == decoder_step::kind::byte_level) {
      byte_level = true;
    } else if (d.type != decoder_step::kind::fuse) {
      return false;
    }
  }
  return byte_level;
}

stream_mode hf_tokenizer::streaming() const noexcept {
  return decodes_by_bytes() ? stream_mode::concatenated_bytes : stream_mode::window_decode;
}

expected<std::string> hf_tokenizer::token_bytes(std::int32_t id, bool skip_special) const {
  if (streaming() != stream_mode::concatenated_bytes) {
    return failed_precondition("token_bytes: this tokenizer streams by window decode");
  }
  HELIX_RETURN_IF_ERROR(check_id(id));
  if (skip_special && is_special(id)) return std::string();
  return byte_level_bytes(id_to_token_[static_cast<std::size_t>(id)]);
}

bool hf_tokenizer::may_split_character(std::int32_t id) const noexcept {
  for (const decoder_step& d : parts_.decoders)
    if (d.type == decoder_step::kind::byte_level) return true;
  return id >= 0 && static_cast<std::size_t>(id) < flags_.size() &&
         (flags_[static_cast<std::size_t>(id)] & flag_byte) != 0;
}

}  // namespace helix::text
