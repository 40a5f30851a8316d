#include "core/tensor.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

#include <unistd.h>

namespace helix {

shape::shape(std::initializer_list<std::int64_t> d) {
  HELIX_CHECK(d.size() <= max_rank, "shape rank {} > {}", d.size(), max_rank);
  for (std::int64_t v : d) dims[static_cast<std::size_t>(rank++)] = v;
}

std::int64_t shape::numel() const {
  if (rank == 0) return 0;  // a default shape describes no tensor, not a scalar
  std::int64_t n = 1;
  for (int i = 0; i < rank; ++i) n *= dims[static_cast<std::size_t>(i)];
  return n;
}

std::string shape::to_string() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[static_cast<std::size_t>(i)]);
  }
  return s + "]";
}

bool operator==(const shape& a, const shape& b) {
  if (a.rank != b.rank) return false;
  for (int i = 0; i < a.rank; ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

std::size_t physical_memory_bytes() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page_size <= 0) return 0;
  return static_cast<std::size_t>(pages) * static_cast<std::size_t>(page_size);
}

expected<buffer> buffer::try_host(std::size_t bytes) {
  buffer b;
  if (bytes == 0) return b;
  // With overcommit, an allocation larger than the machine may succeed and the zero fill would
  // then swap or be killed; refuse it up front.
  const std::size_t phys = physical_memory_bytes();
  if (bytes > SIZE_MAX - 63 || (phys != 0 && bytes > phys)) {
    return resource_exhausted(
        "host allocation of {} bytes exceeds this machine's {} bytes of memory", bytes, phys);
  }
  const std::size_t rounded = (bytes + 63) / 64 * 64;
  b.data_ = std::aligned_alloc(64, rounded);
  if (b.data_ == nullptr) return resource_exhausted("host allocation of {} bytes failed", bytes);
  std::memset(b.data_, 0, rounded);
  b.bytes_ = bytes;
  return b;
}

buffer buffer::host(std::size_t bytes) {
  expected<buffer> b = try_host(bytes);
  // As operator new does: the edges (engine::create, the worker actors, the CLI's main) turn it
  // into resource_exhausted, so a failed allocation never aborts the host process.
  if (!b.has_value()) throw std::bad_alloc();
  return std::move(b).value();
}

buffer::buffer(buffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)),
      dev_(other.dev_) {}

buffer& buffer::operator=(buffer&& other) noexcept {
  if (this != &other) {
    reset();
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
    dev_ = other.dev_;
  }
  return *this;
}

buffer::~buffer() {
  reset();
}

void buffer::reset() noexcept {
  if (data_ != nullptr) {
    HELIX_CHECK(dev_.kind == device_kind::cpu, "device buffers are owned by their backend");
    std::free(data_);
  }
  data_ = nullptr;
  bytes_ = 0;
}

tensor_view buffer::view(dtype type, helix::shape dims) const {
  tensor_view v{data_, type, dims, dev_};
  HELIX_CHECK(v.bytes() <= bytes_, "view {} of {} needs {} bytes, buffer has {}", dims.to_string(),
              dtype_name(type), v.bytes(), bytes_);
  return v;
}

tensor::tensor(dtype type, helix::shape dims)
    : buf_(buffer::host(static_cast<std::size_t>(dims.numel()) * dtype_bytes(type))),
      type_(type),
      dims_(dims) {}

std::span<float> tensor::f32() const {
  HELIX_CHECK(type_ == dtype::f32, "tensor is {}, not f32", dtype_name(type_));
  return {buf_.as<float>(), static_cast<std::size_t>(numel())};
}

float tensor::element(std::int64_t i) const {
  const float v = load_as_f32(buf_.data(), type_, static_cast<std::size_t>(i));
  if (scales_ == nullptr) return v;
  const std::int64_t cols = dims_.rank == 2 ? dims_[1] : numel();
  const std::int64_t r = i / cols;
  const std::int64_t c = i % cols;
  return v * scales_->row_scales[static_cast<std::size_t>(r * scales_->per_row +
                                                          (c + scales_->phase) / scales_->block_k)];
}

}  // namespace helix
