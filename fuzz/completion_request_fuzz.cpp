// Fuzz target: the body of `POST /v1/completions` (serve::parse_completion), what helix serve
// reads from any client.
//
// Invariants: a refusal is a 4xx with a message and a JSON error body; an accepted request has a
// non-empty prompt (text within the byte limit, or ids in [0, 2^31) within the count limit),
// max_tokens >= 1, sampling parameters the engine accepts the ranges of, at most 4 non-empty stop
// strings.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <variant>

#include "fuzz/fuzz_check.hpp"
#include "serve/openai.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  helix::serve::request_limits limits;
  limits.max_prompt_tokens = 4096;
  limits.max_prompt_bytes = 1 << 16;
  const auto r = helix::serve::parse_completion(body, limits);
  if (const auto* e = std::get_if<helix::serve::api_error>(&r)) {
    HELIX_FUZZ_CHECK(e->http_status >= 400 && e->http_status < 500);
    HELIX_FUZZ_CHECK(!e->message.empty());
    HELIX_FUZZ_CHECK(helix::serve::error_body(*e).contains("error"));
    return 0;
  }
  const auto& c = std::get<helix::serve::completion_request>(r);
  if (c.prompt_is_text) {
    HELIX_FUZZ_CHECK(!c.prompt_text.empty() &&
                     static_cast<std::int64_t>(c.prompt_text.size()) <= limits.max_prompt_bytes);
  } else {
    HELIX_FUZZ_CHECK(!c.prompt_tokens.empty() &&
                     static_cast<std::int64_t>(c.prompt_tokens.size()) <= limits.max_prompt_tokens);
    for (const std::int32_t t : c.prompt_tokens) HELIX_FUZZ_CHECK(t >= 0);
  }
  HELIX_FUZZ_CHECK(c.max_tokens >= 1);
  HELIX_FUZZ_CHECK(std::isfinite(c.sampling.temperature) && c.sampling.temperature >= 0.0f);
  HELIX_FUZZ_CHECK(c.sampling.top_p > 0.0f && c.sampling.top_p <= 1.0f);
  HELIX_FUZZ_CHECK(c.sampling.top_k >= 0);
  HELIX_FUZZ_CHECK(static_cast<std::int64_t>(c.stop.size()) <= limits.max_stop_strings);
  for (const auto& s : c.stop) HELIX_FUZZ_CHECK(!s.empty());
  for (const std::int32_t t : c.stop_token_ids) HELIX_FUZZ_CHECK(t >= 0);
  HELIX_FUZZ_CHECK(!c.include_usage || c.stream);
  return 0;
}
