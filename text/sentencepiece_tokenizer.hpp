// The SentencePiece tokenizer (tokenizer.model), through Debian's libsentencepiece.
//
// Encoding and decoding are the library's (BPE or unigram models, its normaliser, byte fallback,
// user-defined symbols). With add_special, BOS is added unless tokenizer_config.json sets
// add_bos_token false, and EOS when add_eos_token is true (Llama 2's defaults). Control tokens
// ("<s>", "</s>") are special and decode to nothing, as SentencePiece decodes them; text that
// spells "<s>" is plain text. Streams by window decode. Thread-safe once built (the library's
// encode and decode are const).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "core/status.hpp"
#include "text/hf_tokenizer.hpp"
#include "text/tokenizer.hpp"

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace helix::text {

class sentencepiece_tokenizer final : public tokenizer {
 public:
  /// `model_bytes`: the serialized tokenizer.model. invalid_argument when the library rejects it
  /// or tokenizer_config.json names a token the model does not have.
  [[nodiscard]] static expected<std::unique_ptr<sentencepiece_tokenizer>> create(
      std::string_view model_bytes, const tokenizer_config& config);
  ~sentencepiece_tokenizer() override;

  [[nodiscard]] expected<std::vector<std::int32_t>> encode(std::string_view text,
                                                           bool add_special) const override;
  [[nodiscard]] expected<std::string> decode(std::span<const std::int32_t> ids,
                                             bool skip_special) const override;
  [[nodiscard]] std::int32_t vocab_size() const noexcept override { return vocab_size_; }
  [[nodiscard]] const special_token_ids& special_ids() const noexcept override { return ids_; }
  [[nodiscard]] std::optional<std::int32_t> token_to_id(std::string_view token) const override;
  [[nodiscard]] expected<std::string> id_to_token(std::int32_t id) const override;
  [[nodiscard]] bool is_special(std::int32_t id) const noexcept override;
  [[nodiscard]] std::string_view kind() const noexcept override {
    return "tokenizer.model (SentencePiece)";
  }
  [[nodiscard]] stream_mode streaming() const noexcept override {
    return stream_mode::window_decode;
  }
  [[nodiscard]] expected<std::string> token_bytes(std::int32_t id,
                                                  bool skip_special) const override;
  [[nodiscard]] bool may_split_character(std::int32_t id) const noexcept override;

 private:
  sentencepiece_tokenizer();
  [[nodiscard]] status check_id(std::int32_t id) const;

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::int32_t vocab_size_ = 0;
  special_token_ids ids_;
  bool add_bos_ = true;
  bool add_eos_ = false;
};

}  // namespace helix::text
