// Tokenizers: text <-> token ids for the checkpoints Helix serves.
//
// `load_tokenizer(dir)` reads a checkpoint directory the way HF transformers does and returns one
// of two implementations behind the `tokenizer` interface:
//   - `tokenizer.json` (HF tokenizers format): BPE, byte-level as Llama 3, DeepSeek-V3, Qwen and
//     GPT-2 ship it, or with byte fallback as Llama 2 / Mistral conversions do
//     (text/hf_tokenizer.hpp);
//   - `tokenizer.model` (SentencePiece), through Debian's libsentencepiece
//     (text/sentencepiece_tokenizer.hpp).
// `tokenizer_config.json`, when present, names the BOS / EOS tokens and whether BOS / EOS are
// added. The server and the embedding API call encode() on prompts and stream generated ids through
// a `detokenizer` (text/detokenizer.hpp).
//
// Files are untrusted: a malformed or hostile file gives invalid_argument naming the file and field
// (resource_exhausted for a size bound, failed_precondition for an unsupported feature), never an
// abort; file sizes, JSON depth, vocabulary, merge and added-token counts, string lengths and
// pipeline lengths are bounded (see `tokenizer_limits`).
//
// A loaded tokenizer is immutable: every const method is safe to call from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.hpp"

namespace helix::text {

/// Bounds applied while loading, so a hostile file cannot exhaust memory. The defaults hold every
/// public Llama 3 / DeepSeek-V3 / Qwen / Gemma tokenizer with room to spare.
struct tokenizer_limits {
  std::size_t max_file_bytes = 128u << 20;  // tokenizer.json / tokenizer.model
  std::size_t max_config_bytes = 4u << 20;  // tokenizer_config.json
  std::size_t max_vocab = 1u << 22;         // model vocabulary entries
  std::size_t max_merges = 1u << 22;
  std::size_t max_added_tokens = 1u << 16;
  std::size_t max_token_bytes = 4096;    // one vocabulary entry or added token
  std::size_t max_pattern_bytes = 8192;  // one pre-tokenizer regex
  std::size_t max_json_depth = 64;
};

/// Special token ids; absent when the tokenizer has none.
struct special_token_ids {
  std::optional<std::int32_t> bos;
  std::optional<std::int32_t> eos;
  std::optional<std::int32_t> pad;
  std::optional<std::int32_t> unk;
};

/// How a tokenizer's decode can be streamed (used by `detokenizer`; callers need not care).
enum class stream_mode {
  /// decode(ids) == UTF-8-lossy(concatenation of token_bytes(id)): chunks come from bytes.
  concatenated_bytes,
  /// decode of a window of ids is compared with decode of the window plus the new id.
  window_decode,
};

class tokenizer {
 public:
  virtual ~tokenizer() = default;

  /// Token ids of `text` (UTF-8). With `add_special`, the tokenizer's own additions are applied:
  /// the post-processor template of tokenizer.json (Llama 3's BOS), else `add_bos_token` /
  /// `add_eos_token` of tokenizer_config.json (SentencePiece adds BOS by default). Special tokens
  /// written in `text` (for example "<|eot_id|>") are matched as tokens by tokenizer.json
  /// tokenizers. Errors: invalid_argument for text that is not valid UTF-8; resource_exhausted
  /// when a pre-tokenizer regex hits its backtracking limit.
  [[nodiscard]] virtual expected<std::vector<std::int32_t>> encode(std::string_view text,
                                                                   bool add_special) const = 0;

  /// Text of `ids`, special tokens included unless `skip_special`. Bytes that do not form valid
  /// UTF-8 (a cut-off multi-byte character) become U+FFFD. Errors: invalid_argument naming the
  /// first id outside [0, vocab_size()).
  [[nodiscard]] virtual expected<std::string> decode(std::span<const std::int32_t> ids,
                                                     bool skip_special = false) const = 0;

  /// One more than the largest token id (model vocabulary and added tokens).
  [[nodiscard]] virtual std::int32_t vocab_size() const noexcept = 0;

  [[nodiscard]] virtual const special_token_ids& special_ids() const noexcept = 0;

  /// Id of the token spelled `token` (as stored in the vocabulary: "Ġthe", "▁the", "<|eot_id|>").
  [[nodiscard]] virtual std::optional<std::int32_t> token_to_id(std::string_view token) const = 0;

  /// Spelling of token `id`; invalid_argument when `id` is out of range or unused.
  [[nodiscard]] virtual expected<std::string> id_to_token(std::int32_t id) const = 0;

  /// True for special / control tokens (BOS, EOS, <|eot_id|>, ...).
  [[nodiscard]] virtual bool is_special(std::int32_t id) const noexcept = 0;

  /// "tokenizer.json (BPE)" or "tokenizer.model (SentencePiece)", for logs and errors.
  [[nodiscard]] virtual std::string_view kind() const noexcept = 0;

  /// See stream_mode.
  [[nodiscard]] virtual stream_mode streaming() const noexcept = 0;

  /// The raw bytes token `id` adds to the decoded text (concatenated_bytes tokenizers; the others
  /// return failed_precondition). Empty for skipped special tokens.
  [[nodiscard]] virtual expected<std::string> token_bytes(std::int32_t id,
                                                          bool skip_special) const = 0;

  /// True for byte tokens, whose text may end inside a multi-byte character or change with the
  /// bytes that follow: window_decode streaming holds text back after such tokens.
  [[nodiscard]] virtual bool may_split_character(std::int32_t id) const noexcept = 0;
};

/// Loads the tokenizer of checkpoint directory `dir`: `tokenizer.json` if present, else
/// `tokenizer.model`, plus `tokenizer_config.json` when present. A tokenizer.json that uses an
/// unsupported feature falls back to a tokenizer.model in the same directory (SentencePiece
/// checkpoints ship both). Errors: not_found naming `dir`
/// when it has neither file; invalid_argument naming the file and field for malformed content;
/// failed_precondition for a well-formed file using a feature this implementation does not
/// support (named in the message); resource_exhausted when a bound in `limits` is exceeded.
[[nodiscard]] expected<std::unique_ptr<tokenizer>> load_tokenizer(
    const std::filesystem::path& dir, const tokenizer_limits& limits = {});

/// Reads a whole file of at most `max_bytes`; not_found / invalid_argument / resource_exhausted.
[[nodiscard]] expected<std::string> read_file_bounded(const std::filesystem::path& file,
                                                      std::size_t max_bytes);

}  // namespace helix::text
