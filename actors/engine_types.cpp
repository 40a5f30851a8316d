// The client-side pieces of the embedding API that need no actor: the token stream.
#include "actors/engine.hpp"

namespace helix::actors {

const char* finish_reason_name(finish_reason r) noexcept {
  switch (r) {
    case finish_reason::none:
      return "none";
    case finish_reason::length:
      return "length";
    case finish_reason::stop_token:
      return "stop_token";
    case finish_reason::cancelled:
      return "cancelled";
    case finish_reason::error:
      return "error";
  }
  return "unknown";
}

void token_stream::push(token_event e) {
  {
    std::lock_guard lk(mu_);
    if (closed_) return;  // nothing follows the last event
    closed_ = e.last;
    events_.push_back(std::move(e));
  }
  cv_.notify_all();
}

std::optional<token_event> token_stream::next() {
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return !events_.empty() || taken_last_; });
  if (events_.empty()) return std::nullopt;
  token_event e = std::move(events_.front());
  events_.pop_front();
  taken_last_ = e.last;
  return e;
}

std::optional<token_event> token_stream::next_for(std::chrono::milliseconds timeout) {
  std::unique_lock lk(mu_);
  if (!cv_.wait_for(lk, timeout, [&] { return !events_.empty() || taken_last_; })) {
    return std::nullopt;
  }
  if (events_.empty()) return std::nullopt;
  token_event e = std::move(events_.front());
  events_.pop_front();
  taken_last_ = e.last;
  return e;
}

std::vector<std::int32_t> token_stream::wait_all() {
  std::vector<std::int32_t> out;
  while (auto e = next()) {
    if (e->token >= 0) out.push_back(e->token);
  }
  return out;
}

bool token_stream::finished() const {
  std::lock_guard lk(mu_);
  return taken_last_;
}

}  // namespace helix::actors
