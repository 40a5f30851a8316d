#include "text/tokenizer.hpp"

#include <fstream>
#include <system_error>

#include "text/hf_tokenizer.hpp"
#include "text/sentencepiece_tokenizer.hpp"

namespace helix::text {

expected<std::string> read_file_bounded(const std::filesystem::path& file, std::size_t max_bytes) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) return not_found("{}: {}", file.string(), ec.message());
  if (size > max_bytes) {
    return resource_exhausted("{} is {} bytes, more than the limit of {}", file.string(), size,
                              max_bytes);
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) return not_found("{}: cannot open", file.string());
  std::string data(static_cast<std::size_t>(size), '\0');
  in.read(data.data(), static_cast<std::streamsize>(size));
  if (static_cast<std::uintmax_t>(in.gcount()) != size) {
    return invalid_argument("{}: read {} of {} bytes", file.string(), in.gcount(), size);
  }
  return data;
}

expected<std::unique_ptr<tokenizer>> load_tokenizer(const std::filesystem::path& dir,
                                                    const tokenizer_limits& limits) {
  std::error_code ec;
  const auto json_path = dir / "tokenizer.json";
  const auto model_path = dir / "tokenizer.model";
  const auto config_path = dir / "tokenizer_config.json";

  tokenizer_config config;
  if (std::filesystem::is_regular_file(config_path, ec)) {
    HELIX_ASSIGN_OR_RETURN(const std::string text,
                           read_file_bounded(config_path, limits.max_config_bytes));
    auto parsed = parse_tokenizer_config(text, limits);
    if (!parsed) return parsed.error().with_context(config_path.string());
    config = std::move(parsed).value();
  }

  const bool has_model = std::filesystem::is_regular_file(model_path, ec);
  if (std::filesystem::is_regular_file(json_path, ec)) {
    HELIX_ASSIGN_OR_RETURN(const std::string text,
                           read_file_bounded(json_path, limits.max_file_bytes));
    auto parts = parse_tokenizer_json(text, limits);
    // A tokenizer.json converted from SentencePiece (Llama 2, Mistral: Metaspace, Replace, Strip)
    // uses features this parser refuses; the tokenizer.model beside it is the same tokenizer.
    const bool use_model_instead =
        !parts && parts.error().code() == errc::failed_precondition && has_model;
    if (!parts && !use_model_instead) return parts.error().with_context(json_path.string());
    if (parts) {
      auto tok = hf_tokenizer::create(std::move(parts).value(), config);
      if (!tok) return tok.error().with_context(json_path.string());
      return std::unique_ptr<tokenizer>(std::move(tok).value());
    }
  }
  if (has_model) {
    HELIX_ASSIGN_OR_RETURN(const std::string bytes,
                           read_file_bounded(model_path, limits.max_file_bytes));
    auto tok = sentencepiece_tokenizer::create(bytes, config);
    if (!tok) return tok.error().with_context(model_path.string());
    return std::unique_ptr<tokenizer>(std::move(tok).value());
  }
  return not_found("{} has no tokenizer.json or tokenizer.model", dir.string());
}

}  // namespace helix::text
