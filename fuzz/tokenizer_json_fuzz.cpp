// Fuzz target: tokenizer.json text (text::parse_tokenizer_json, then hf_tokenizer::create), what
// helix serve and the Python module load from a checkpoint directory, then encoding and decoding
// with an accepted tokenizer.
//
// Invariants: a refusal is invalid_argument, failed_precondition or resource_exhausted; with an
// accepted tokenizer, encoding a few strings gives ids in [0, vocab_size) (or a clean error), and
// streaming those ids through a detokenizer gives exactly decode() of them.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz/fuzz_check.hpp"
#include "text/detokenizer.hpp"
#include "text/hf_tokenizer.hpp"

namespace {

bool refusal(helix::errc c) {
  return c == helix::errc::invalid_argument || c == helix::errc::failed_precondition ||
         c == helix::errc::resource_exhausted;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  helix::text::tokenizer_limits limits;
  limits.max_vocab = 1 << 16;
  limits.max_merges = 1 << 16;
  auto parts = helix::text::parse_tokenizer_json(json, limits);
  if (!parts) {
    HELIX_FUZZ_CHECK(refusal(parts.error().code()));
    return 0;
  }
  auto tok = helix::text::hf_tokenizer::create(std::move(*parts), {});
  if (!tok) {
    HELIX_FUZZ_CHECK(refusal(tok.error().code()));
    return 0;
  }
  for (const std::string_view s :
       {std::string_view("Hello, world! 123"), std::string_view("  tabs\tand\nnewlines  "),
        std::string_view("h\xC3\xA9llo \xF0\x9F\xA4\x96")}) {
    for (const bool special : {false, true}) {
      const auto ids = (*tok)->encode(s, special);
      if (!ids) {
        HELIX_FUZZ_CHECK(refusal(ids.error().code()));
        continue;
      }
      for (const std::int32_t id : *ids) HELIX_FUZZ_CHECK(id >= 0 && id < (*tok)->vocab_size());
      const auto text = (*tok)->decode(*ids, true);
      HELIX_FUZZ_CHECK(text.has_value());
      helix::text::detokenizer d(**tok, true);
      std::string streamed;
      for (const std::int32_t id : *ids) {
        const auto piece = d.add(id);
        HELIX_FUZZ_CHECK(piece.has_value());
        streamed += *piece;
      }
      const auto rest = d.flush();
      HELIX_FUZZ_CHECK(rest.has_value());
      HELIX_FUZZ_CHECK(streamed + *rest == *text);
    }
  }
  return 0;
}
