// The HF tokenizer.json tokenizer (BPE models), as Llama 3, DeepSeek-V3, Qwen and GPT-2 ship it.
//
// encode: added tokens are matched first (leftmost-longest; `normalized: false` ones on the raw
// text, the others after normalisation), the text between them is normalised, pre-tokenized
// (text/pre_tokenizer.hpp) and run through BPE (text/bpe_model.hpp); with add_special the
// post-processor adds its tokens (TemplateProcessing, Bert/Roberta processing; ByteLevel adds
// none). decode runs the decoder steps over the token strings as HF does, then invalid UTF-8
// becomes U+FFFD.
//
// Special ids: tokenizer_config.json's bos_token / eos_token / pad_token / unk_token; without
// them, the post-processor's single prefix token is the BOS, and the usual spellings among the
// special added tokens ("<|begin_of_text|>", "<s>", ...; "<|end_of_text|>", "<|endoftext|>",
// "<|im_end|>", "</s>", ...) fill what is still missing.
//
// Supported: models of type BPE (merges as "a b" strings or [a, b] pairs; ignore_merges,
// byte_fallback, unk_token, fuse_unk); normalizers NFC, Prepend, Replace (literal pattern) and
// Sequence; pre-tokenizers Split, ByteLevel, Digits, Metaspace and Sequence; decoders ByteLevel,
// ByteFallback, Fuse, Replace (literal), Strip, Metaspace and Sequence. That covers the byte-level
// tokenizers of Llama 3 / DeepSeek-V3 / Qwen / GPT-2 and the SentencePiece conversions of Llama 2
// / Mistral. Anything else (WordPiece / Unigram models, NFKC, regex Replace,
// continuing_subword_prefix, dropout) is refused at load with failed_precondition naming it.
// Thread-safe once built.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.hpp"
#include "text/bpe_model.hpp"
#include "text/pre_tokenizer.hpp"
#include "text/tokenizer.hpp"

namespace helix::text {

/// One entry of tokenizer.json's "added_tokens".
struct added_token {
  std::int32_t id = 0;
  std::string content;
  bool special = false;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
};

/// What tokenizer_config.json contributes (all optional).
struct tokenizer_config {
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::optional<std::string> pad_token;
  std::optional<std::string> unk_token;
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
};

/// Parses tokenizer_config.json text; invalid_argument naming the field for wrong types.
[[nodiscard]] expected<tokenizer_config> parse_tokenizer_config(std::string_view json,
                                                                const tokenizer_limits& limits);

/// One normalizer step, applied in order to the text between added tokens.
struct normalizer_step {
  enum class kind { nfc, prepend, replace };
  kind type = kind::nfc;
  std::string text;     // prepend: what to prepend; replace: the literal to find
  std::string content;  // replace: what replaces it
};

/// One decoder step, applied in order to the token strings (HF's decode_chain).
struct decoder_step {
  enum class kind { byte_level, byte_fallback, fuse, replace, strip, metaspace };
  kind type = kind::fuse;
  std::string text;       // replace: the literal to find; strip: the character; metaspace: "▁"
  std::string content;    // replace: what replaces it
  std::size_t start = 0;  // strip: how many leading `text` characters at most
  std::size_t stop = 0;   // strip: how many trailing
  bool strip_first_space = true;  // metaspace: prepend_scheme is not "never"
};

/// Everything tokenizer.json describes, in the form encode/decode use.
struct hf_tokenizer_parts {
  std::vector<normalizer_step> normalizers;
  pre_tokenizer pre;
  bpe_model model;
  std::vector<added_token> added;
  // The single-sequence post-processor: ids before and after the text.
  std::vector<std::int32_t> post_prefix;
  std::vector<std::int32_t> post_suffix;
  bool has_post_processor_tokens = false;
  std::vector<decoder_step> decoders;  // empty: HF joins tokens with spaces
};

/// Parses tokenizer.json text (see the header comment for what is supported).
[[nodiscard]] expected<hf_tokenizer_parts> parse_tokenizer_json(std::string_view json,
                                                                const tokenizer_limits& limits);

class hf_tokenizer final : public tokenizer {
 public:
  /// invalid_argument when two tokens share an id or ids are too sparse for the token table.
  [[nodiscard]] static expected<std::unique_ptr<hf_tokenizer>> create(
      hf_tokenizer_parts parts, const tokenizer_config& config);

  [[nodiscard]] expected<std::vector<std::int32_t>> encode(std::string_view text,
                                                           bool add_special) const override;
  [[nodiscard]] expected<std::string> decode(std::span<const std::int32_t> ids,
                                             bool skip_special) const override;
  [[nodiscard]] std::int32_t vocab_size() const noexcept override {
    return static_cast<std::int32_t>(id_to_token_.size());
  }
  [[nodiscard]] const special_token_ids& special_ids() const noexcept override { return ids_; }
  [[nodiscard]] std::optional<std::int32_t> token_to_id(std::string_view token) const override;
  [[nodiscard]] expected<std::string> id_to_token(std::int32_t id) const override;
  [[nodiscard]] bool is_special(std::int32_t id) const noexcept override;
  [[nodiscard]] std::string_view kind() const noexcept override { return "tokenizer.json (BPE)"; }
  [[nodiscard]] stream_mode streaming() const noexcept override;
  [[nodiscard]] expected<std::string> token_bytes(std::int32_t id,
                                                  bool skip_special) const override;
  [[nodiscard]] bool may_split_character(std::int32_t id) const noexcept override;

 private:
  hf_tokenizer() = default;

  // A byte trie over added-token contents for leftmost-longest matching.
  struct trie_node {
    std::vector<std::pair<std::uint8_t, std::int32_t>> children;  // sorted by byte
    std::int32_t token = -1;                                      // index into parts_.added
  };
  struct added_match {
    std::size_t begin;
    std::size_t end;
    std::int32_t token;  // index into parts_.added; -1 for plain text
  };
  void trie_insert(std::vector<trie_node>& trie, std::string_view s, std::int32_t token);
  [[nodiscard]] std::vector<added_match> split_added(const std::vector<trie_node>& trie,
                                                     std::string_view text) const;
  [[nodiscard]] expected<std::string> normalize(std::string_view text) const;
  [[nodiscard]] status encode_plain(std::string_view text, bool at_start,
                                    std::vector<std::int32_t>& ids) const;
  [[nodiscard]] bool decodes_by_bytes() const noexcept;
  [[nodiscard]] status check_id(std::int32_t id) const;

  hf_tokenizer_parts parts_;
  std::vector<trie_node> raw_trie_;         // added tokens with normalized == false
  std::vector<trie_node> normalized_trie_;  // the others
  std::vector<std::string> id_to_token_;
  token_map added_ids_;              // added token content -> id
  std::vector<std::uint8_t> flags_;  // per id: bit 0 special, bit 1 added, bit 2 byte token
  std::vector<std::int32_t> config_prefix_;
  std::vector<std::int32_t> config_suffix_;
  special_token_ids ids_;
};

}  // namespace helix::text
