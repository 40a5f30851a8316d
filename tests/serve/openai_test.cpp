// The completions wire format alone (no sockets): prompt forms, defaults, limits, responses.
#include <gtest/gtest.h>

#include "serve/openai.hpp"

namespace helix::serve {
namespace {

using json = nlohmann::json;

completion_request parsed(const std::string& body, const request_limits& limits = {}) {
  auto r = parse_completion(body, limits);
  if (auto* e = std::get_if<api_error>(&r)) {
    ADD_FAILURE() << body << " -> " << e->message;
    return {};
  }
  return std::get<completion_request>(r);
}

api_error refused(const std::string& body, const request_limits& limits = {}) {
  auto r = parse_completion(body, limits);
  if (auto* e = std::get_if<api_error>(&r)) return *e;
  ADD_FAILURE() << body << " was accepted";
  return {};
}

TEST(OpenAiFormat, EveryPromptFormIsAccepted) {
  EXPECT_EQ(parsed(R"({"prompt": [1, 2, 3]})").prompt_tokens, (std::vector<std::int32_t>{1, 2, 3}));
  EXPECT_EQ(parsed(R"({"prompt": [[4, 5]]})").prompt_tokens, (std::vector<std::int32_t>{4, 5}));
  EXPECT_EQ(parsed(R"({"prompt": [6.0]})").prompt_tokens, (std::vector<std::int32_t>{6}));
  const completion_request text = parsed(R"({"prompt": ["héllo 🤖"]})");
  EXPECT_TRUE(text.prompt_is_text);
  EXPECT_EQ(text.prompt_text, "héllo 🤖");
  EXPECT_EQ(refused(R"({"prompt": ""})").param, "prompt");
  EXPECT_EQ(refused(R"({"prompt": []})").param, "prompt");
  EXPECT_EQ(refused(R"({"prompt": [2147483648]})").param, "prompt");
  EXPECT_EQ(refused(R"({"prompt": {"a": 1}})").param, "prompt");
}

TEST(OpenAiFormat, DefaultsAndSamplingFields) {
  const completion_request d = parsed(R"({"prompt": [1]})");
  EXPECT_EQ(d.max_tokens, 16);
  EXPECT_EQ(d.sampling.temperature, 0.0f);  // the server's default: greedy
  EXPECT_FALSE(d.stream);
  request_limits warm;
  warm.default_temperature = 1.0f;
  EXPECT_EQ(parsed(R"({"prompt": [1]})", warm).sampling.temperature, 1.0f);
  const completion_request s = parsed(
      R"({"prompt": [1], "temperature": 0.7, "top_p": 0.9, "top_k": -1, "seed": 42, "max_tokens": null,
          "stop": ["a", "bc"], "stop_token_ids": [7], "stream": true, "n": 1, "echo": false,
          "stream_options": {"include_usage": true}, "user": "u", "logprobs": null})");
  EXPECT_FLOAT_EQ(s.sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(s.sampling.top_p, 0.9f);
  EXPECT_EQ(s.sampling.top_k, 0);
  EXPECT_EQ(s.sampling.seed, 42u);
  EXPECT_EQ(s.max_tokens, 16);
  EXPECT_EQ(s.stop, (std::vector<std::string>{"a", "bc"}));
  EXPECT_EQ(s.stop_token_ids, (std::vector<std::int32_t>{7}));
  EXPECT_TRUE(s.stream && s.include_usage);
}

TEST(OpenAiFormat, LimitsAreCheckedBeforeAnythingIsKept) {
  request_limits small;
  small.max_prompt_tokens = 3;
  small.max_prompt_bytes = 4;
  EXPECT_EQ(refused(R"({"prompt": [1, 2, 3, 4]})", small).param, "prompt");
  EXPECT_EQ(refused(R"({"prompt": "12345"})", small).param, "prompt");
  EXPECT_EQ(refused(R"({"prompt": [1], "stop": ["a", "b", "c", "d", "e"]})").param, "stop");
  EXPECT_EQ(refused(R"({"prompt": [1], "stop": [""]})").param, "stop");
}

TEST(OpenAiFormat, ResponsesAndChunksHaveOpenAisShape) {
  const completion_id id{"cmpl-1", 1700000000, "m"};
  const json r = completion_response(id, "hi", {5, 6}, "length", 3);
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0]["text"], "hi");
  EXPECT_EQ(r["choices"][0]["token_ids"], json::array({5, 6}));
  EXPECT_EQ(r["usage"]["total_tokens"], 5);
  const json c = completion_chunk(id, "", {7}, nullptr);
  EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(c.contains("usage"));
  EXPECT_EQ(usage_chunk(id, 3, 2)["usage"]["completion_tokens"], 2);
  const json e = error_body({400, "invalid_request_error", "prompt", "bad"});
  EXPECT_EQ(e["error"]["param"], "prompt");
  EXPECT_TRUE(e["error"]["code"].is_null());
  EXPECT_EQ(error_from_status(status(errc::resource_exhausted, "submit: 9 requests in flight"))
                .http_status,
            429);
  EXPECT_EQ(error_from_status(status(errc::resource_exhausted, "... this request can never fit"))
                .http_status,
            400);
  EXPECT_EQ(error_from_status(status(errc::unavailable, "engine failed")).http_status, 503);
}

}  // namespace
}  // namespace helix::serve
