// stream_registry (runtime.hpp): what the API and the engine actor share about each request's
// events, cancellations, the engine's health and its last published stats.
#include "actors/runtime.hpp"

namespace helix::actors {

namespace {
thread_local const stream_registry* callback_owner = nullptr;
}  // namespace

void stream_registry::add(std::uint64_t id, std::shared_ptr<token_stream> stream,
                          std::function<void(const token_event&)> on_token) {
  std::lock_guard lk(mu_);
  entries_[id] = {std::move(stream), std::move(on_token)};
}

status stream_registry::deliver(const token_event& e) {
  std::shared_ptr<token_stream> stream;
  std::function<void(const token_event&)> on_token;
  {
    std::lock_guard lk(mu_);
    auto it = entries_.find(e.request_id);
    if (it == entries_.end()) return ok_status();
    stream = it->second.stream;
    on_token = it->second.on_token;
    if (e.last) entries_.erase(it);
  }
  // The callback first: a client that pulled an event from the stream can rely on the callback
  // having seen it. The client's code may throw anything: that is this request's error only.
  status result = ok_status();
  if (on_token) {
    const stream_registry* outer = callback_owner;
    callback_owner = this;
    try {
      on_token(e);
    } catch (const std::exception& ex) {
      result = internal_error("callback threw: {}", ex.what());
    } catch (...) {
      result = internal_error("callback threw a non-std::exception");
    }
    callback_owner = outer;
  }
  stream->push(e);
  return result;
}

std::size_t stream_registry::size() const {
  std::lock_guard lk(mu_);
  return entries_.size();
}

status stream_registry::request_cancel(std::uint64_t id) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.closing) {
    return not_found("cancel: request {} is not queued or running", id);
  }
  it->second.cancel_requested = true;
  return ok_status();
}

bool stream_registry::cancel_requested(std::uint64_t id) const {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  return it != entries_.end() && it->second.cancel_requested;
}

finish_reason stream_registry::close(std::uint64_t id, finish_reason reason) {
  std::lock_guard lk(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) return reason;
  it->second.closing = true;
  return it->second.cancel_requested ? finish_reason::cancelled : reason;
}

void stream_registry::set_failure(const status& failure) {
  std::lock_guard lk(mu_);
  if (failure_.ok()) failure_ = failure;
}

status stream_registry::failure() const {
  std::lock_guard lk(mu_);
  return failure_;
}

void stream_registry::publish(const engine_stats& s) {
  std::lock_guard lk(mu_);
  snapshot_ = s;
}

engine_stats stream_registry::snapshot() const {
  std::lock_guard lk(mu_);
  return snapshot_;
}

bool stream_registry::in_callback() {
  return callback_owner != nullptr;
}

}  // namespace helix::actors
