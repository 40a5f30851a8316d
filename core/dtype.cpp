#include "core/dtype.hpp"

namespace helix {

std::string_view dtype_name(dtype t) noexcept {
  switch (t) {
    case dtype::f32:
      return "f32";
    case dtype::bf16:
      return "bf16";
    case dtype::f16:
      return "f16";
    case dtype::fp8_e4m3:
      return "fp8_e4m3";
  }
  return "unknown";
}

expected<dtype> parse_dtype(std::string_view name) {
  for (dtype t : {dtype::f32, dtype::bf16, dtype::f16, dtype::fp8_e4m3}) {
    if (name == dtype_name(t)) return t;
  }
  return invalid_argument("unknown dtype '{}' (expected one of f32, bf16, f16, fp8_e4m3)", name);
}

}  // namespace helix
