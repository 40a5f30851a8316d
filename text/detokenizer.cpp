#include "text/detokenizer.hpp"

#include "text/utf8.hpp"

namespace helix::text {
namespace {

bool ends_with_replacement(std::string_view s) {
  return s.size() >= replacement_char.size() &&
         s.substr(s.size() - replacement_char.size()) == replacement_char;
}

}  // namespace

detokenizer::detokenizer(const tokenizer& tok, bool skip_special)
    : tok_(&tok), skip_special_(skip_special) {}

expected<std::string> detokenizer::add(std::int32_t id) {
  return tok_->streaming() == stream_mode::concatenated_bytes ? add_bytes(id) : add_window(id);
}

expected<std::string> detokenizer::add_bytes(std::int32_t id) {
  HELIX_ASSIGN_OR_RETURN(const std::string bytes, tok_->token_bytes(id, skip_special_));
  pending_ += bytes;
  // Everything up to an unfinished character is final: the lossy rule never looks past a lead
  // byte, so converting the prefix alone gives the same text as converting it with what follows.
  const std::size_t keep = incomplete_utf8_tail(pending_);
  std::string out = utf8_lossy(std::string_view(pending_).substr(0, pending_.size() - keep));
  pending_.erase(0, pending_.size() - keep);
  return out;
}

expected<std::string> detokenizer::add_window(std::int32_t id) {
  window_.push_back(id);
  const std::span<const std::int32_t> all(window_);
  auto prefix = tok_->decode(all.first(read_offset_), skip_special_);
  auto full = prefix ? tok_->decode(all, skip_special_) : prefix;
  if (!full) {
    window_.pop_back();
    return full.error();
  }
  const std::string& before = prefix.value();
  const std::string& now = full.value();
  // Hold while the newest token may have cut a character (its text ends in U+FFFD for now), or
  // when the longer decode does not extend the shorter one (it will once more tokens arrive).
  if ((tok_->may_split_character(id) && ends_with_replacement(now)) || now.size() < before.size() ||
      now.compare(0, before.size(), before) != 0) {
    return std::string();
  }
  std::string out = now.substr(before.size());
  // The next window starts at the first token not yet turned into text but keeps the tokens
  // already read as context: SentencePiece drops a leading space only at the start of a decode.
  window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(read_offset_));
  read_offset_ = window_.size();
  return out;
}

expected<std::string> detokenizer::flush() {
  std::string out;
  if (tok_->streaming() == stream_mode::concatenated_bytes) {
    out = utf8_lossy(pending_);
    pending_.clear();
    return out;
  }
  if (read_offset_ < window_.size()) {
    const std::span<const std::int32_t> all(window_);
    HELIX_ASSIGN_OR_RETURN(const std::string before,
                           tok_->decode(all.first(read_offset_), skip_special_));
    HELIX_ASSIGN_OR_RETURN(const std::string now, tok_->decode(all, skip_special_));
    if (now.size() >= before.size() && now.compare(0, before.size(), before) == 0) {
      out = now.substr(before.size());
    }
  }
  window_.clear();
  read_offset_ = 0;
  return out;
}

}  // namespace helix::text
