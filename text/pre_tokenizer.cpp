#include "text/pre_tokenizer.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "text/utf8.hpp"

namespace helix::text {
namespace {

// Backtracking bounds per match attempt: generous for real patterns (linear in the word length),
// finite for a hostile one.
constexpr std::uint32_t match_limit = 10'000'000;
constexpr std::uint32_t depth_limit = 100'000;

pcre2_code* as_code(void* p) {
  return static_cast<pcre2_code*>(p);
}

struct match_data_deleter {
  void operator()(pcre2_match_data* m) const noexcept { pcre2_match_data_free(m); }
};
struct match_context_deleter {
  void operator()(pcre2_match_context* m) const noexcept { pcre2_match_context_free(m); }
};

// A piece of text and whether it was a regex match (before a behaviour is applied).
struct span_flag {
  std::size_t begin;
  std::size_t end;
  bool matched;
};

void apply_behavior(std::string_view word, const std::vector<span_flag>& spans,
                    split_behavior behavior, std::vector<std::string>& out) {
  switch (behavior) {
    case split_behavior::removed:
      for (const auto& s : spans)
        if (!s.matched) out.emplace_back(word.substr(s.begin, s.end - s.begin));
      return;
    case split_behavior::isolated:
      for (const auto& s : spans) out.emplace_back(word.substr(s.begin, s.end - s.begin));
      return;
    case split_behavior::merged_with_previous: {
      // A match joins the piece before it.
      std::string cur;
      for (const auto& s : spans) {
        if (!s.matched && !cur.empty()) {
          out.push_back(std::move(cur));
          cur.clear();
        }
        cur.append(word.substr(s.begin, s.end - s.begin));
        if (s.matched) {
          out.push_back(std::move(cur));
          cur.clear();
        }
      }
      if (!cur.empty()) out.push_back(std::move(cur));
      return;
    }
    case split_behavior::merged_with_next: {
      // A match starts a new piece that takes the text after it.
      std::string cur;
      for (const auto& s : spans) {
        if (s.matched && !cur.empty()) {
          out.push_back(std::move(cur));
          cur.clear();
        }
        cur.append(word.substr(s.begin, s.end - s.begin));
      }
      if (!cur.empty()) out.push_back(std::move(cur));
      return;
    }
    case split_behavior::contiguous: {
      // Consecutive matches form one piece.
      std::string cur;
      bool cur_matched = false;
      for (const auto& s : spans) {
        if (!cur.empty() && (!s.matched || !cur_matched)) {
          out.push_back(std::move(cur));
          cur.clear();
        }
        cur.append(word.substr(s.begin, s.end - s.begin));
        cur_matched = s.matched;
      }
      if (!cur.empty()) out.push_back(std::move(cur));
      return;
    }
  }
}

// Splits `word` by `re` into matched and unmatched spans (invert swaps the flags).
expected<std::vector<span_flag>> spans_of(const regex& re, std::string_view word, bool invert) {
  HELIX_ASSIGN_OR_RETURN(auto matches, re.find_all(word));
  std::vector<span_flag> spans;
  spans.reserve(matches.size() * 2 + 1);
  std::size_t pos = 0;
  for (const auto& [b, e] : matches) {
    if (b > pos) spans.push_back({pos, b, invert});
    spans.push_back({b, e, !invert});
    pos = e;
  }
  if (pos < word.size()) spans.push_back({pos, word.size(), invert});
  return spans;
}

std::string map_bytes(std::string_view word) {
  const auto& table = byte_to_unicode();
  std::string out;
  out.reserve(word.size() * 2);
  for (const char c : word) append_code_point(table[static_cast<std::uint8_t>(c)], out);
  return out;
}

// Oniguruma, which HF tokenizers runs these patterns with, reads \s as the Unicode White_Space
// property; PCRE2 also counts U+180E (MONGOLIAN VOWEL SEPARATOR). Spelling the class out keeps
// the two identical. Escapes, \Q...\E quoting and bracket classes are tracked so only a real \s
// or \S is rewritten.
constexpr std::string_view white_space_items =
    R"(\t\n\x0B\f\r\x20\x85\xA0\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

std::string rewrite_white_space(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[i + 1];
      if (e == 'Q') {
        const std::size_t end = p.find("\\E", i + 2);
        const std::size_t stop = end == std::string_view::npos ? p.size() : end + 2;
        out.append(p.substr(i, stop - i));
        i = stop - 1;
      } else if (e == 's' && in_class) {
        out.append(white_space_items);
        ++i;
      } else if (e == 's' || (e == 'S' && !in_class)) {
        out.append(e == 's' ? "[" : "[^").append(white_space_items).append("]");
        ++i;
      } else {
        out.push_back(c);
        out.push_back(e);
        ++i;
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      // "[]" and "[^]" start a class whose first member is a literal ']'.
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      const std::size_t end = p.find(":]", i + 2);
      const std::size_t stop = end == std::string_view::npos ? i + 1 : end + 2;
      out.append(p.substr(i, stop - i));
      i = stop - 1;
      continue;
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

}  // namespace

void regex::deleter::operator()(void* code) const noexcept {
  pcre2_code_free(as_code(code));
}

expected<regex> regex::compile(std::string_view pattern, bool literal) {
  HELIX_RETURN_IF_ERROR(validate_utf8(pattern, "pre-tokenizer pattern"));
  // PCRE2 refuses UCP together with LITERAL (a literal has no classes for it to change).
  const std::uint32_t options =
      PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
  const std::string text = literal ? std::string(pattern) : rewrite_white_space(pattern);
  int err = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), options,
                                   &err, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    return invalid_argument("pre-tokenizer pattern does not compile at offset {}: {}", offset,
                            reinterpret_cast<const char*>(msg));
  }
  regex r;
  r.code_.reset(code);
  return r;
}

expected<std::vector<std::pair<std::size_t, std::size_t>>> regex::find_all(
    std::string_view text) const {
  std::vector<std::pair<std::size_t, std::size_t>> out;
  if (text.empty()) return out;
  std::unique_ptr<pcre2_match_data, match_data_deleter> md(
      pcre2_match_data_create_from_pattern(as_code(code_.get()), nullptr));
  std::unique_ptr<pcre2_match_context, match_context_deleter> ctx(
      pcre2_match_context_create(nullptr));
  if (!md || !ctx) return resource_exhausted("regex match data: out of memory");
  pcre2_set_match_limit(ctx.get(), match_limit);
  pcre2_set_depth_limit(ctx.get(), depth_limit);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  std::size_t pos = 0;
  while (pos < text.size()) {
    const int rc = pcre2_match(as_code(code_.get()), subject, text.size(), pos,
                               PCRE2_NO_UTF_CHECK | PCRE2_NOTEMPTY, md.get(), ctx.get());
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      return resource_exhausted("pre-tokenizer regex on {} bytes: {}", text.size(),
                                reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
    const std::size_t b = ov[0];
    const std::size_t e = ov[1];
    if (e <= b || b < pos || e > text.size()) break;  // PCRE2_NOTEMPTY: cannot happen
    out.emplace_back(b, e);
    pos = e;
  }
  return out;
}

const std::array<char32_t, 256>& byte_to_unicode() noexcept {
  // Printable Latin-1 bytes stand for themselves; the others (controls, space, 0x7F-0xA0, 0xAD)
  // take the code points from U+0100 on, in byte order.
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (std::uint32_t b = 0; b < 256; ++b) {
      const bool printable =
          (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      t[b] = printable ? static_cast<char32_t>(b) : next++;
    }
    return t;
  }();
  return table;
}

expected<pre_tokenizer> pre_tokenizer::create(std::vector<pre_tokenizer_step> steps) {
  pre_tokenizer p;
  for (const auto& s : steps) {
    if (const auto* bl = std::get_if<byte_level_step>(&s); bl != nullptr && bl->use_regex) {
      HELIX_ASSIGN_OR_RETURN(regex re, regex::compile(gpt2_split_pattern, false));
      p.gpt2_ = std::make_shared<const regex>(std::move(re));
      break;
    }
  }
  p.steps_ = std::move(steps);
  return p;
}

expected<std::vector<std::string>> pre_tokenizer::split(std::string_view text,
                                                        bool at_start) const {
  std::vector<std::string> words;
  words.emplace_back(text);
  std::vector<std::string> next;
  for (const auto& step : steps_) {
    next.clear();
    for (const std::string& w : words) {
      if (const auto* sp = std::get_if<split_step>(&step)) {
        HELIX_ASSIGN_OR_RETURN(auto spans, spans_of(sp->pattern, w, sp->invert));
        apply_behavior(w, spans, sp->behavior, next);
      } else if (const auto* bl = std::get_if<byte_level_step>(&step)) {
        std::string word;
        word.reserve(w.size() + 1);
        if (bl->add_prefix_space && (w.empty() || w.front() != ' ')) word.push_back(' ');
        word.append(w);
        if (bl->use_regex) {
          HELIX_ASSIGN_OR_RETURN(auto spans, spans_of(*gpt2_, word, false));
          std::vector<std::string> parts;
          apply_behavior(word, spans, split_behavior::isolated, parts);
          for (const auto& part : parts) next.push_back(map_bytes(part));
        } else {
          next.push_back(map_bytes(word));
        }
      } else if (const auto* ms = std::get_if<metaspace_step>(&step)) {
        // Spaces become the replacement first; then it is prepended unless already there.
        std::string word;
        word.reserve(w.size() + ms->replacement.size());
        const bool prepend = ms->scheme == metaspace_step::prepend::always ||
                             (ms->scheme == metaspace_step::prepend::first && at_start);
        if (prepend && w.front() != ' ' &&
            w.compare(0, ms->replacement.size(), ms->replacement) != 0) {
          word.append(ms->replacement);
        }
        for (const char c : w) {
          if (c == ' ') {
            word.append(ms->replacement);
          } else {
            word.push_back(c);
          }
        }
        if (!ms->split) {
          next.push_back(std::move(word));
          continue;
        }
        // A word starts at each replacement (HF's MergedWithNext on the replacement).
        std::size_t begin = 0;
        for (std::size_t pos = word.find(ms->replacement, 1); pos != std::string::npos;
             pos = word.find(ms->replacement, pos + ms->replacement.size())) {
          next.push_back(word.substr(begin, pos - begin));
          begin = pos;
        }
        next.push_back(word.substr(begin));
      } else {
        const auto& dg = std::get<digits_step>(step);
        std::vector<span_flag> spans;
        for (std::size_t i = 0; i < w.size(); ++i) {
          const bool digit = w[i] >= '0' && w[i] <= '9';
          const bool extend =
              !spans.empty() && spans.back().matched == digit && !(digit && dg.individual_digits);
          if (extend) {
            spans.back().end = i + 1;
          } else {
            spans.push_back({i, i + 1, digit});
          }
        }
        apply_behavior(w, spans, split_behavior::isolated, next);
      }
    }
    words.swap(next);
    std::erase_if(words, [](const std::string& s) { return s.empty(); });
  }
  std::erase_if(words, [](const std::string& s) { return s.empty(); });
  return words;
}

}  // namespace helix::text
