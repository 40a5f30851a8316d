#include "transport/communicator.hpp"

namespace helix::transport {

std::string_view wire_type_name(wire_type t) noexcept {
  switch (t) {
    case wire_type::bytes:
      return "bytes";
    case wire_type::f32:
      return "f32";
    case wire_type::bf16:
      return "bf16";
    case wire_type::f16:
      return "f16";
    case wire_type::fp8_e4m3:
      return "fp8_e4m3";
    case wire_type::i32:
      return "i32";
    case wire_type::i64:
      return "i64";
  }
  return "?";
}

wire_type to_wire_type(dtype t) noexcept {
  switch (t) {
    case dtype::f32:
      return wire_type::f32;
    case dtype::bf16:
      return wire_type::bf16;
    case dtype::f16:
      return wire_type::f16;
    case dtype::fp8_e4m3:
      return wire_type::fp8_e4m3;
  }
  return wire_type::bytes;
}

namespace {
// A request that completed before it was posted (argument errors found locally).
class done_request final : public request_impl {
 public:
  explicit done_request(status st) : st_(std::move(st)) {}
  status wait() override { return st_; }
  bool test() override { return true; }

 private:
  status st_;
};
}  // namespace

request request::done(status st) {
  return request(std::make_unique<done_request>(std::move(st)));
}

request& request::operator=(request&& other) noexcept {
  if (this != &other) {
    if (impl_) (void)impl_->wait();  // the old operation may still use its buffers
    impl_ = std::move(other.impl_);
  }
  return *this;
}

request::~request() {
  if (impl_) (void)impl_->wait();
}

status request::wait() {
  return impl_ ? impl_->wait() : ok_status();
}

bool request::test() {
  return impl_ ? impl_->test() : true;
}

}  // namespace helix::transport
