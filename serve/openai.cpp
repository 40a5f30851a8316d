#include "serve/openai.hpp"

#include <cmath>
#include <limits>
#include <set>

#include <fmt/format.h>

namespace helix::serve {
namespace {

using json = nlohmann::json;

api_error bad(std::string param, std::string message) {
  return {400, "invalid_request_error", std::move(param), std::move(message)};
}

const char* type_name(const json& v) {
  return v.type_name();
}

// An integer field: a JSON integer (or a float with an integral value, as some clients send)
// within [lo, hi].
std::optional<api_error> get_int(const json& v, const char* field, std::int64_t lo, std::int64_t hi,
                                 std::int64_t& out) {
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<std::uint64_t>() > static_cast<std::uint64_t>(hi)) {
      return bad(field, fmt::format("'{}' must be at most {}", field, hi));
    }
    out = v.get<std::int64_t>();
  } else if (v.is_number_float() && std::isfinite(v.get<double>()) &&
             std::floor(v.get<double>()) == v.get<double>() && std::fabs(v.get<double>()) < 9e15) {
    out = static_cast<std::int64_t>(v.get<double>());
  } else {
    return bad(field, fmt::format("'{}' must be an integer, got {}", field, type_name(v)));
  }
  if (out < lo || out > hi) {
    return bad(field, fmt::format("'{}' must be in [{}, {}], got {}", field, lo, hi, out));
  }
  return std::nullopt;
}

std::optional<api_error> get_float(const json& v, const char* field, double lo, double hi,
                                   float& out) {
  if (!v.is_number() || !std::isfinite(v.get<double>())) {
    return bad(field, fmt::format("'{}' must be a number, got {}", field, type_name(v)));
  }
  const double d = v.get<double>();
  if (d < lo || d > hi) return bad(field, fmt::format("'{}' must be in [{}, {}]", field, lo, hi));
  out = static_cast<float>(d);
  return std::nullopt;
}

std::optional<api_error> get_token_ids(const json& v, const char* field, std::int64_t max_count,
                                       std::vector<std::int32_t>& out) {
  if (static_cast<std::int64_t>(v.size()) > max_count) {
    return bad(field, fmt::format("'{}' has {} token ids; at most {} are accepted", field, v.size(),
                                  max_count));
  }
  out.reserve(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) {
    std::int64_t id = 0;
    if (auto e = get_int(v[i], field, 0, std::numeric_limits<std::int32_t>::max(), id)) {
      e->message = fmt::format("'{}[{}]': a token id must be an integer in [0, {}]", field, i,
                               std::numeric_limits<std::int32_t>::max());
      return e;
    }
    out.push_back(static_cast<std::int32_t>(id));
  }
  return std::nullopt;
}

bool all_integers(const json& v) {
  for (const json& x : v) {
    if (!x.is_number()) return false;
  }
  return true;
}

std::optional<api_error> parse_prompt(const json& v, const request_limits& limits,
                                      completion_request& r) {
  const json* p = &v;
  if (v.is_array() && !v.empty() && (v[0].is_string() || v[0].is_array())) {
    if (v.size() != 1) {
      return bad("prompt", fmt::format("'prompt' holds {} prompts; one prompt per request is "
                                       "served (send one request each)",
                                       v.size()));
    }
    p = &v[0];
  }
  if (p->is_string()) {
    const auto& text = p->get_ref<const std::string&>();
    if (text.empty()) return bad("prompt", "'prompt' is empty");
    if (static_cast<std::int64_t>(text.size()) > limits.max_prompt_bytes) {
      return bad("prompt", fmt::format("'prompt' has {} bytes; at most {} are accepted",
                                       text.size(), limits.max_prompt_bytes));
    }
    r.prompt_is_text = true;
    r.prompt_text = text;
    return std::nullopt;
  }
  if (p->is_array() && all_integers(*p)) {
    if (p->empty()) return bad("prompt", "'prompt' is empty");
    return get_token_ids(*p, "prompt", limits.max_prompt_tokens, r.prompt_tokens);
  }
  return bad("prompt", fmt::format("'prompt' must be a string or a list of token ids, got {}",
                                   type_name(*p)));
}

std::optional<api_error> parse_stop(const json& v, const request_limits& limits,
                                    completion_request& r) {
  if (v.is_null()) return std::nullopt;
  std::vector<const json*> items;
  if (v.is_string()) {
    items.push_back(&v);
  } else if (v.is_array()) {
    for (const json& s : v) items.push_back(&s);
  } else {
    return bad("stop",
               fmt::format("'stop' must be a string or a list of strings, got {}", type_name(v)));
  }
  if (static_cast<std::int64_t>(items.size()) > limits.max_stop_strings) {
    return bad("stop", fmt::format("'stop' has {} strings; at most {}", items.size(),
                                   limits.max_stop_strings));
  }
  for (const json* s : items) {
    if (!s->is_string()) return bad("stop", "'stop' must hold strings only");
    const auto& text = s->get_ref<const std::string&>();
    if (text.empty()) return bad("stop", "'stop' strings must not be empty");
    if (static_cast<std::int64_t>(text.size()) > limits.max_stop_bytes) {
      return bad("stop", fmt::format("a 'stop' string has {} bytes; at most {}", text.size(),
                                     limits.max_stop_bytes));
    }
    r.stop.push_back(text);
  }
  return std::nullopt;
}

// Fields OpenAI defines that are accepted only at their neutral value.
std::optional<api_error> check_neutral(const std::string& key, const json& v) {
  if (key == "n" || key == "best_of") {
    std::int64_t n = 0;
    if (auto e = get_int(v, key.c_str(), 1, 1, n)) {
      e->message = fmt::format("'{}' must be 1: one choice per request is served", key);
      return e;
    }
    return std::nullopt;
  }
  if (key == "echo") {
    if (v.is_boolean() && !v.get<bool>()) return std::nullopt;
    return bad(key, "'echo' must be false: the prompt is not echoed");
  }
  if (key == "presence_penalty" || key == "frequency_penalty") {
    if (v.is_number() && v.get<double>() == 0.0) return std::nullopt;
    return bad(key, fmt::format("'{}' must be 0: penalties are not served", key));
  }
  if (key == "logprobs" || key == "suffix" || key == "logit_bias") {
    if (v.is_null()) return std::nullopt;
    return bad(key, fmt::format("'{}' is not served (send null or leave it out)", key));
  }
  return bad(key, fmt::format("unknown field '{}'", key));
}

}  // namespace

json error_body(const api_error& e) {
  return json{{"error",
               {{"message", e.message},
                {"type", e.type},
                {"param", e.param.empty() ? json(nullptr) : json(e.param)},
                {"code", nullptr}}}};
}

api_error error_from_status(const status& st) {
  api_error e;
  e.message = st.message();
  switch (st.code()) {
    case errc::invalid_argument:
      e.http_status = 400;
      if (e.message.find("prompt") != std::string::npos) e.param = "prompt";
      if (e.message.find("max_tokens") != std::string::npos) e.param = "max_tokens";
      break;
    case errc::resource_exhausted:
      if (e.message.find("never fit") != std::string::npos) {
        e.http_status = 400;  // the reason says why; retrying cannot help
        e.param = "max_tokens";
      } else {
        e.http_status = 429;  // in flight at the configured maximum: retry later
        e.type = "rate_limit_error";
      }
      break;
    case errc::unavailable:
      e.http_status = 503;
      e.type = "service_unavailable";
      break;
    case errc::deadline_exceeded:
      e.http_status = 408;
      e.type = "timeout";
      break;
    default:
      e.http_status = 500;
      e.type = "internal_error";
      break;
  }
  return e;
}

std::variant<completion_request, api_error> parse_completion(std::string_view body,
                                                             const request_limits& limits) {
  const json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return bad("", "the body is not valid JSON");
  if (!doc.is_object()) {
    return bad("", fmt::format("the body must be a JSON object, got {}", type_name(doc)));
  }
  completion_request r;
  r.sampling.temperature = limits.default_temperature;
  bool have_prompt = false;
  for (const auto& [key, v] : doc.items()) {
    std::optional<api_error> e;
    if (key == "model") {
      if (!v.is_string()) return bad("model", "'model' must be a string");
      r.model = v.get<std::string>();
    } else if (key == "prompt") {
      e = parse_prompt(v, limits, r);
      have_prompt = true;
    } else if (key == "max_tokens") {
      if (!v.is_null()) {
        e = get_int(v, "max_tokens", 1, std::numeric_limits<std::int32_t>::max(), r.max_tokens);
      }
    } else if (key == "temperature") {
      if (!v.is_null()) e = get_float(v, "temperature", 0.0, 100.0, r.sampling.temperature);
    } else if (key == "top_p") {
      if (!v.is_null()) e = get_float(v, "top_p", 0.0, 1.0, r.sampling.top_p);
      if (!e && !v.is_null() && r.sampling.top_p <= 0.0f) e = bad("top_p", "'top_p' must be > 0");
    } else if (key == "top_k") {
      std::int64_t k = 0;
      if (!v.is_null()) e = get_int(v, "top_k", -1, std::numeric_limits<std::int32_t>::max(), k);
      r.sampling.top_k = static_cast<std::int32_t>(k < 0 ? 0 : k);  // -1: off, as vLLM
    } else if (key == "seed") {
      std::int64_t s = 0;
      if (!v.is_null()) e = get_int(v, "seed", 0, std::numeric_limits<std::int64_t>::max(), s);
      r.sampling.seed = static_cast<std::uint64_t>(s);
    } else if (key == "stop") {
      e = parse_stop(v, limits, r);
    } else if (key == "stop_token_ids") {
      if (!v.is_null() && !v.is_array()) {
        return bad("stop_token_ids", "'stop_token_ids' must be a list of token ids");
      }
      if (!v.is_null()) {
        e = get_token_ids(v, "stop_token_ids", limits.max_stop_token_ids, r.stop_token_ids);
      }
    } else if (key == "stream") {
      if (!v.is_boolean() && !v.is_null()) return bad("stream", "'stream' must be a boolean");
      r.stream = v.is_boolean() && v.get<bool>();
    } else if (key == "stream_options") {
      if (v.is_null()) continue;
      if (!v.is_object()) return bad("stream_options", "'stream_options' must be an object");
      for (const auto& [k2, v2] : v.items()) {
        if (k2 != "include_usage") {
          return bad("stream_options", fmt::format("unknown field 'stream_options.{}'", k2));
        }
        if (!v2.is_boolean()) {
          return bad("stream_options", "'stream_options.include_usage' must be a boolean");
        }
        r.include_usage = v2.get<bool>();
      }
    } else if (key == "user") {
      if (!v.is_string() && !v.is_null()) return bad("user", "'user' must be a string");
    } else {
      e = check_neutral(key, v);
    }
    if (e) return *e;
  }
  if (!have_prompt) return bad("prompt", "'prompt' is required");
  if (doc.contains("stream_options") && !doc["stream_options"].is_null() && !r.stream) {
    return bad("stream_options", "'stream_options' is only allowed with 'stream': true");
  }
  return r;
}

const char* finish_reason_text(actors::finish_reason r) {
  switch (r) {
    case actors::finish_reason::length:
      return "length";
    case actors::finish_reason::stop_token:
      return "stop";
    case actors::finish_reason::cancelled:
      return "cancelled";
    case actors::finish_reason::error:
      return "error";
    case actors::finish_reason::none:
      break;
  }
  return nullptr;
}

json completion_response(const completion_id& id, const std::string& text,
                         const std::vector<std::int32_t>& tokens, const char* finish_reason,
                         std::int64_t prompt_tokens) {
  const auto completion_tokens = static_cast<std::int64_t>(tokens.size());
  return json{
      {"id", id.id},
      {"object", "text_completion"},
      {"created", id.created},
      {"model", id.model},
      {"choices", json::array({{{"index", 0},
                                {"text", text},
                                {"token_ids", tokens},
                                {"logprobs", nullptr},
                                {"finish_reason", finish_reason ? json(finish_reason) : json()}}})},
      {"usage",
       {{"prompt_tokens", prompt_tokens},
        {"completion_tokens", completion_tokens},
        {"total_tokens", prompt_tokens + completion_tokens}}}};
}

json completion_chunk(const completion_id& id, const std::string& text,
                      const std::vector<std::int32_t>& tokens, const char* finish_reason) {
  return json{{"id", id.id},
              {"object", "text_completion"},
              {"created", id.created},
              {"model", id.model},
              {"choices",
               json::array({{{"index", 0},
                             {"text", text},
                             {"token_ids", tokens},
                             {"logprobs", nullptr},
                             {"finish_reason", finish_reason ? json(finish_reason) : json()}}})}};
}

json usage_chunk(const completion_id& id, std::int64_t prompt_tokens,
                 std::int64_t completion_tokens) {
  return json{{"id", id.id},
              {"object", "text_completion"},
              {"created", id.created},
              {"model", id.model},
              {"choices", json::array()},
              {"usage",
               {{"prompt_tokens", prompt_tokens},
                {"completion_tokens", completion_tokens},
                {"total_tokens", prompt_tokens + completion_tokens}}}};
}

json models_response(const std::string& model, std::int64_t created, std::int64_t vocab,
                     std::int64_t max_model_len) {
  return json{{"object", "list"},
              {"data", json::array({{{"id", model},
                                     {"object", "model"},
                                     {"created", created},
                                     {"owned_by", "helix"},
                                     {"max_model_len", max_model_len},
                                     {"vocab_size", vocab}}})}};
}

}  // namespace helix::serve
