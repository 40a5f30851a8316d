#include "text/bpe_model.hpp"

#include <queue>

#include "text/utf8.hpp"

namespace helix::text {
namespace {

// One symbol of a word being merged: a doubly linked list over a vector, as merges remove symbols.
struct symbol {
  std::int32_t id;
  std::int32_t prev;
  std::int32_t next;
  bool alive;
};

// A candidate merge of the symbol at `pos` with its successor; ordered by rank, then position, so
// the leftmost of equal-rank pairs merges first.
struct candidate {
  std::int32_t rank;
  std::int32_t pos;
  std::int32_t new_id;
  bool operator>(const candidate& o) const noexcept {
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

expected<bpe_model> bpe_model::create(
    token_map vocab, const std::vector<std::pair<std::string, std::string>>& merges,
    bpe_options options) {
  bpe_model m;
  m.vocab_ = std::move(vocab);
  m.options_ = std::move(options);
  if (m.options_.unk_token) {
    const auto it = m.vocab_.find(*m.options_.unk_token);
    if (it == m.vocab_.end()) {
      return invalid_argument("model.unk_token \"{}\" is not in model.vocab",
                              *m.options_.unk_token);
    }
    m.unk_id_ = it->second;
  }
  if (m.options_.byte_fallback) {
    m.byte_ids_.assign(256, -1);
    for (int b = 0; b < 256; ++b) {
      const auto it = m.vocab_.find(fmt::format("<0x{:02X}>", b));
      if (it != m.vocab_.end()) m.byte_ids_[static_cast<std::size_t>(b)] = it->second;
    }
  }
  m.merges_.reserve(merges.size());
  std::string joined;
  for (std::size_t i = 0; i < merges.size(); ++i) {
    const auto& [a, b] = merges[i];
    const auto ia = m.vocab_.find(a);
    const auto ib = m.vocab_.find(b);
    joined.assign(a).append(b);
    const auto ij = m.vocab_.find(joined);
    if (ia == m.vocab_.end() || ib == m.vocab_.end() || ij == m.vocab_.end()) {
      return invalid_argument("model.merges[{}] (\"{}\", \"{}\"): {} is not in model.vocab", i, a,
                              b,
                              ia == m.vocab_.end()   ? "the first token"
                              : ib == m.vocab_.end() ? "the second token"
                                                     : "the merged token");
    }
    // A repeated pair keeps its first (best) rank, as HF does when it builds its map.
    m.merges_.try_emplace(pair_key(ia->second, ib->second),
                          merge{static_cast<std::int32_t>(i), ij->second});
  }
  return m;
}

std::optional<std::int32_t> bpe_model::byte_token(std::uint8_t b) const noexcept {
  if (byte_ids_.empty() || byte_ids_[b] < 0) return std::nullopt;
  return byte_ids_[b];
}

void bpe_model::encode_word(std::string_view word, std::vector<std::int32_t>& ids) const {
  if (word.empty()) return;
  if (options_.ignore_merges) {
    if (const auto it = vocab_.find(word); it != vocab_.end()) {
      ids.push_back(it->second);
      return;
    }
  }
  // Initial symbols: one per character (the caller passes valid UTF-8).
  std::vector<symbol> syms;
  syms.reserve(word.size());
  bool last_was_unk = false;
  const auto push = [&](std::int32_t id) {
    const auto n = static_cast<std::int32_t>(syms.size());
    syms.push_back({id, n - 1, -1, true});
  };
  for (std::size_t pos = 0; pos < word.size();) {
    std::size_t len = utf8_sequence_length(word, pos);
    if (len == 0) len = 1;  // defensive: callers validate, a stray byte is one "character"
    const std::string_view ch = word.substr(pos, len);
    pos += len;
    if (const auto it = vocab_.find(ch); it != vocab_.end()) {
      push(it->second);
      last_was_unk = false;
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (const char c : ch) all = all && byte_ids_[static_cast<std::uint8_t>(c)] >= 0;
      if (all) {
        for (const char c : ch) push(byte_ids_[static_cast<std::uint8_t>(c)]);
        last_was_unk = false;
        continue;
      }
    }
    if (unk_id_) {
      if (!(options_.fuse_unk && last_was_unk)) push(*unk_id_);
      last_was_unk = true;
    }
  }
  const auto n = static_cast<std::int32_t>(syms.size());
  for (std::int32_t i = 0; i + 1 < n; ++i) syms[static_cast<std::size_t>(i)].next = i + 1;

  std::priority_queue<candidate, std::vector<candidate>, std::greater<>> queue;
  const auto consider = [&](std::int32_t pos) {
    const symbol& s = syms[static_cast<std::size_t>(pos)];
    if (s.next < 0) return;
    const auto it = merges_.find(pair_key(s.id, syms[static_cast<std::size_t>(s.next)].id));
    if (it != merges_.end()) queue.push({it->second.rank, pos, it->second.new_id});
  };
  for (std::int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const candidate c = queue.top();
    queue.pop();
    symbol& left = syms[static_cast<std::size_t>(c.pos)];
    if (!left.alive || left.next < 0) continue;
    symbol& right = syms[static_cast<std::size_t>(left.next)];
    // Stale when either side changed since the candidate was queued.
    const auto it = merges_.find(pair_key(left.id, right.id));
    if (it == merges_.end() || it->second.rank != c.rank || it->second.new_id != c.new_id) continue;
    left.id = c.new_id;
    right.alive = false;
    left.next = right.next;
    if (right.next >= 0) syms[static_cast<std::size_t>(right.next)].prev = c.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(c.pos);
  }
  for (const symbol& s : syms)
    if (s.alive) ids.push_back(s.id);
}

}  // namespace helix::text
