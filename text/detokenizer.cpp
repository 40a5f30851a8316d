#include "text/detokenizer.hpp"

#include "text/utf8.hpp"

namespace helix::text {

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
  // Hold while the newest token is a byte token: its run of bytes is decoded as a whole (HF's
  // ByteFallback turns a whole run into U+FFFDs when any byte in it is invalid, so even a
  // completed character can change), and until the longer decode extends the shorter one.
  if (tok_->may_split_character(id) || now.size() < before.size() ||
      now.compare(0, before.size(), before) != 0) {
    return std::string();
  }
  std::string out = now.substr(before.size());
  // Every token is now text. The next window keeps one of them as context, because decoders
  // treat the start of a decode specially (SentencePiece and Strip drop a leading space; byte
  // runs are validated as a whole): the last token that has text of its own and is not a byte
  // token, so the window decodes its successors as the whole sequence does. Without one (only
  // special or byte tokens so far) the window keeps everything, up to a bound.
  read_offset_ = window_.size();
  HELIX_ASSIGN_OR_RETURN(const std::size_t anchor, window_anchor());
  if (anchor < window_.size() || window_.size() > max_window) {
    const std::size_t drop = anchor < window_.size() ? anchor : window_.size() - 1;
    window_.erase(window_.begin(), window_.begin() + static_cast<std::ptrdiff_t>(drop));
    read_offset_ = window_.size();
  }
  return out;
}

expected<std::size_t> detokenizer::window_anchor() const {
  for (std::size_t i = window_.size(); i-- > 0;) {
    if (tok_->may_split_character(window_[i])) continue;
    HELIX_ASSIGN_OR_RETURN(
        const std::string text,
        tok_->decode(std::span<const std::int32_t>(&window_[i], 1), skip_special_));
    if (!text.empty()) return i;
  }
  return window_.size();
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
