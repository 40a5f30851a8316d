// The OpenAI-compatible wire format of `helix serve`: parsing a `POST /v1/completions` body into
// an engine request, and the JSON of responses, streamed chunks and errors.
//
// Requests follow OpenAI's completions API (https://platform.openai.com/docs/api-reference/
// completions) with vLLM's extensions where OpenAI has none: `top_k`, `stop_token_ids`, and the
// generated `token_ids` carried by every choice and every streamed chunk (vLLM's
// `return_token_ids`), since built-in models have no tokenizer. Supported: `prompt` (a string, a
// list of token ids, or a list holding one of those), `max_tokens`, `temperature`, `top_p`,
// `top_k`, `seed`, `stop` (a string or up to 4 strings), `stop_token_ids`, `stream`,
// `stream_options.include_usage`, `n` = 1, `echo` = false, `user` (ignored). Any other field is
// refused by name (a client relying on `logprobs` or `best_of` learns it is not served rather
// than getting silently different output).
//
// Every function is pure (no I/O, no engine): the server glues them to sockets and the engine.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "actors/engine.hpp"
#include "core/status.hpp"

namespace helix::serve {

/// Limits applied while parsing, before anything is allocated for a request.
struct request_limits {
  std::int64_t max_prompt_tokens = 1 << 20;  // ids in a token prompt
  std::int64_t max_prompt_bytes = 4 << 20;   // bytes of a text prompt
  std::int64_t max_stop_strings = 4;
  std::int64_t max_stop_bytes = 256;  // per stop string
  std::int64_t max_stop_token_ids = 64;
  float default_temperature = 0.0f;  // when the request gives none (0: greedy)
};

/// A parsed completion request.
struct completion_request {
  std::string model;
  bool prompt_is_text = false;
  std::string prompt_text;                  // prompt_is_text
  std::vector<std::int32_t> prompt_tokens;  // !prompt_is_text
  std::int64_t max_tokens = 16;
  actors::sampling_params sampling;
  std::vector<std::string> stop;  // stop strings (need a tokenizer to apply)
  std::vector<std::int32_t> stop_token_ids;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
};

/// A request error: the HTTP status, OpenAI's error type, the parameter it concerns (may be
/// empty) and the message.
struct api_error {
  int http_status = 400;
  std::string type = "invalid_request_error";
  std::string param;
  std::string message;
};

/// OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
[[nodiscard]] nlohmann::json error_body(const api_error& e);
/// The api_error for an engine refusal (submit's status): invalid_argument 400,
/// resource_exhausted 400 for a request that can never fit (param max_tokens) and 429 otherwise
/// (requests in flight at the configured maximum),
/// unavailable 503, deadline_exceeded 408, anything else 500.
[[nodiscard]] api_error error_from_status(const status& st);

/// Parses and checks a body. 400 errors name the field (`param`) and say what was expected.
[[nodiscard]] std::variant<completion_request, api_error> parse_completion(
    std::string_view body, const request_limits& limits);

/// Why a choice ended, in OpenAI's words: "length" or "stop" (a stop string or token).
[[nodiscard]] const char* finish_reason_text(actors::finish_reason r);

/// The identity and creation time of one completion, shared by its response or chunks.
struct completion_id {
  std::string id;        // "cmpl-..."
  std::int64_t created;  // unix seconds
  std::string model;
};

/// The non-streaming response: one choice with its text (empty without a tokenizer), token_ids
/// and finish_reason, and `usage`.
[[nodiscard]] nlohmann::json completion_response(const completion_id& id, const std::string& text,
                                                 const std::vector<std::int32_t>& tokens,
                                                 const char* finish_reason,
                                                 std::int64_t prompt_tokens);
/// One streamed chunk: new text and token ids, finish_reason null until the last one.
[[nodiscard]] nlohmann::json completion_chunk(const completion_id& id, const std::string& text,
                                              const std::vector<std::int32_t>& tokens,
                                              const char* finish_reason);
/// The usage-only chunk sent last when stream_options.include_usage is set.
[[nodiscard]] nlohmann::json usage_chunk(const completion_id& id, std::int64_t prompt_tokens,
                                         std::int64_t completion_tokens);
/// `GET /v1/models`: the one model served, with vLLM's `max_model_len` (the most tokens a request
/// may hold) and `vocab_size` (ids of token prompts are in [0, vocab_size)).
[[nodiscard]] nlohmann::json models_response(const std::string& model, std::int64_t created,
                                             std::int64_t vocab, std::int64_t max_model_len);

}  // namespace helix::serve
