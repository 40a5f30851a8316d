#include "text/sentencepiece_tokenizer.hpp"

#include <exception>
#include <vector>

#include <sentencepiece_processor.h>

#include "text/utf8.hpp"

namespace helix::text {
namespace {

// The one place SentencePiece's status becomes ours.
status from_sp(const sentencepiece::util::Status& st, std::string_view what) {
  if (st.ok()) return ok_status();
  return invalid_argument("{}: {}", what, st.ToString());
}

}  // namespace

sentencepiece_tokenizer::sentencepiece_tokenizer()
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}

sentencepiece_tokenizer::~sentencepiece_tokenizer() = default;

expected<std::unique_ptr<sentencepiece_tokenizer>> sentencepiece_tokenizer::create(
    std::string_view model_bytes, const tokenizer_config& config) {
  std::unique_ptr<sentencepiece_tokenizer> t(new sentencepiece_tokenizer());
  try {
    HELIX_RETURN_IF_ERROR(from_sp(t->sp_->LoadFromSerializedProto(model_bytes), "tokenizer.model"));
  } catch (const std::exception& e) {
    return invalid_argument("tokenizer.model: {}", e.what());
  }
  t->vocab_size_ = t->sp_->GetPieceSize();
  if (t->vocab_size_ <= 0) return invalid_argument("tokenizer.model has no pieces");
  const auto opt = [](int id) { return id >= 0 ? std::optional<std::int32_t>(id) : std::nullopt; };
  t->ids_.bos = opt(t->sp_->bos_id());
  t->ids_.eos = opt(t->sp_->eos_id());
  t->ids_.pad = opt(t->sp_->pad_id());
  t->ids_.unk = opt(t->sp_->unk_id());
  const auto resolve = [&](const std::optional<std::string>& name, std::string_view key,
                           std::optional<std::int32_t>& out) -> status {
    if (!name) return ok_status();
    out = t->token_to_id(*name);
    if (!out)
      return invalid_argument("tokenizer_config.json: {} \"{}\" is not a piece", key, *name);
    return ok_status();
  };
  HELIX_RETURN_IF_ERROR(resolve(config.bos_token, "bos_token", t->ids_.bos));
  HELIX_RETURN_IF_ERROR(resolve(config.eos_token, "eos_token", t->ids_.eos));
  HELIX_RETURN_IF_ERROR(resolve(config.pad_token, "pad_token", t->ids_.pad));
  HELIX_RETURN_IF_ERROR(resolve(config.unk_token, "unk_token", t->ids_.unk));
  t->add_bos_ = config.add_bos_token.value_or(true) && t->ids_.bos.has_value();
  t->add_eos_ = config.add_eos_token.value_or(false);
  if (t->add_eos_ && !t->ids_.eos) {
    return invalid_argument("tokenizer_config.json: add_eos_token but the model has no EOS");
  }
  return t;
}

expected<std::vector<std::int32_t>> sentencepiece_tokenizer::encode(std::string_view text,
                                                                    bool add_special) const {
  HELIX_RETURN_IF_ERROR(validate_utf8(text, "text to encode"));
  std::vector<int> pieces;
  try {
    HELIX_RETURN_IF_ERROR(from_sp(sp_->Encode(text, &pieces), "SentencePiece encode"));
  } catch (const std::exception& e) {
    return internal_error("SentencePiece encode: {}", e.what());
  }
  std::vector<std::int32_t> ids;
  ids.reserve(pieces.size() + 2);
  if (add_special && add_bos_) ids.push_back(*ids_.bos);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (add_special && add_eos_) ids.push_back(*ids_.eos);
  return ids;
}

status sentencepiece_tokenizer::check_id(std::int32_t id) const {
  if (id < 0 || id >= vocab_size_) {
    return invalid_argument("token id {} is not in the vocabulary (size {})", id, vocab_size_);
  }
  return ok_status();
}

expected<std::string> sentencepiece_tokenizer::decode(std::span<const std::int32_t> ids,
                                                      bool skip_special) const {
  std::vector<int> kept;
  kept.reserve(ids.size());
  for (const std::int32_t id : ids) {
    HELIX_RETURN_IF_ERROR(check_id(id));
    if (skip_special && is_special(id)) continue;
    kept.push_back(id);
  }
  std::string text;
  try {
    HELIX_RETURN_IF_ERROR(from_sp(sp_->Decode(kept, &text), "SentencePiece decode"));
  } catch (const std::exception& e) {
    return internal_error("SentencePiece decode: {}", e.what());
  }
  // The library replaces invalid byte runs already; this keeps the promise for any model.
  return utf8_lossy(text);
}

std::optional<std::int32_t> sentencepiece_tokenizer::token_to_id(std::string_view token) const {
  const int id = sp_->PieceToId(token);
  if (id < 0 || id >= vocab_size_ || sp_->IdToPiece(id) != token) return std::nullopt;
  return id;
}

expected<std::string> sentencepiece_tokenizer::id_to_token(std::int32_t id) const {
  HELIX_RETURN_IF_ERROR(check_id(id));
  return sp_->IdToPiece(id);
}

bool sentencepiece_tokenizer::is_special(std::int32_t id) const noexcept {
  return id >= 0 && id < vocab_size_ && sp_->IsControl(id);
}

expected<std::string> sentencepiece_tokenizer::token_bytes(std::int32_t, bool) const {
  return failed_precondition("token_bytes: SentencePiece streams by window decode");
}

bool sentencepiece_tokenizer::may_split_character(std::int32_t id) const noexcept {
  return id >= 0 && id < vocab_size_ && sp_->IsByte(id);
}

}  // namespace helix::text
