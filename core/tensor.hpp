// Tensor views and owning buffers.
//
// A `tensor_view` is a non-owning, contiguous, row-major view: data pointer, dtype, shape (up to
// 4 dims) and the device the memory lives on. Kernels and transport take views and never allocate.
// A `buffer` owns memory (64-byte aligned host memory, or device memory through a backend), is
// move-only, and knows its device and size. Neither type is thread-safe; ownership moves
// explicitly.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/dtype.hpp"

namespace helix {

enum class device_kind : std::uint8_t { cpu, cuda };

/// Where memory lives and where compute runs.
struct device {
  device_kind kind = device_kind::cpu;
  int index = 0;
  friend bool operator==(const device&, const device&) = default;
};

/// Opaque stream handle: a cudaStream_t on CUDA, unused (nullptr) on the CPU. Keeps CUDA types out
/// of public headers.
using stream_handle = void*;

inline constexpr int max_rank = 4;

/// Row-major shape with up to four dimensions. The default (rank 0) shape is empty: numel() 0.
struct shape {
  std::array<std::int64_t, max_rank> dims{};
  int rank = 0;

  shape() = default;
  shape(std::initializer_list<std::int64_t> d);
  [[nodiscard]] std::int64_t operator[](int i) const { return dims[static_cast<std::size_t>(i)]; }
  [[nodiscard]] std::int64_t numel() const;
  [[nodiscard]] std::string to_string() const;  // "[2, 3]"
  friend bool operator==(const shape& a, const shape& b);
};

/// Non-owning contiguous view. The viewed memory must outlive the view.
struct tensor_view {
  void* data = nullptr;
  dtype type = dtype::f32;
  helix::shape dims;
  helix::device dev;

  [[nodiscard]] std::int64_t numel() const { return dims.numel(); }
  [[nodiscard]] std::size_t bytes() const {
    return static_cast<std::size_t>(numel()) * dtype_bytes(type);
  }
  template <class T>
  [[nodiscard]] T* as() const {
    return static_cast<T*>(data);
  }
};

/// Owning, move-only memory block of `bytes` bytes on `dev`, zero-initialised.
/// Physical memory of this machine in bytes (sysconf); 0 when unknown. The bound that allocations
/// and benchmarks check their sizes against before making them.
[[nodiscard]] std::size_t physical_memory_bytes();

class buffer {
 public:
  buffer() = default;
  /// Host allocation for sizes the code derives; throws std::bad_alloc on failure, as operator new
  /// does (the API and CLI edges catch it and return resource_exhausted).
  static buffer host(std::size_t bytes);
  /// Host allocation for sizes that come from users: resource_exhausted instead of aborting.
  [[nodiscard]] static expected<buffer> try_host(std::size_t bytes);
  buffer(buffer&& other) noexcept;
  buffer& operator=(buffer&& other) noexcept;
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
  ~buffer();

  [[nodiscard]] void* data() const { return data_; }
  [[nodiscard]] std::size_t bytes() const { return bytes_; }
  [[nodiscard]] helix::device dev() const { return dev_; }
  [[nodiscard]] bool empty() const { return bytes_ == 0; }
  template <class T>
  [[nodiscard]] T* as() const {
    return static_cast<T*>(data_);
  }
  /// A view of the whole buffer as `type` with `dims` (dims.numel() * size must fit).
  [[nodiscard]] tensor_view view(dtype type, helix::shape dims) const;

 private:
  void reset() noexcept;
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  helix::device dev_;
};

/// An owning f32/bf16/... tensor: a buffer plus its dtype and shape.
/// The block scales of an fp8_e4m3 weight [rows, cols] (HF's block-scaled FP8, weight-only
/// dequantization): element (r, c) is e4m3(w[r, c]) x row_scales[r * per_row + (c + phase) /
/// block_k]. Each row carries its scales (the rows of one block repeat them), so a cut of rows
/// takes its rows' scales and a cut of columns moves the phase (kernels::gemm_params).
struct block_scales {
  std::int64_t block_k = 0;  // columns per block
  std::int64_t phase = 0;    // column 0's offset into its block, in [0, block_k)
  std::int64_t per_row = 0;  // scales per row: the blocks the columns touch
  std::vector<float> row_scales;
};

class tensor {
 public:
  tensor() = default;
  /// Zero-filled host tensor.
  tensor(dtype type, helix::shape dims);

  [[nodiscard]] tensor_view view() const { return {buf_.data(), type_, dims_, buf_.dev()}; }
  [[nodiscard]] dtype type() const { return type_; }
  [[nodiscard]] const helix::shape& dims() const { return dims_; }
  [[nodiscard]] std::int64_t numel() const { return dims_.numel(); }
  [[nodiscard]] std::size_t bytes() const { return buf_.bytes(); }
  [[nodiscard]] void* data() const { return buf_.data(); }
  template <class T>
  [[nodiscard]] T* as() const {
    return buf_.as<T>();
  }
  /// f32 span; HELIX_CHECKs that the dtype is f32.
  [[nodiscard]] std::span<float> f32() const;
  /// fp8_e4m3 weights: their block scales (null otherwise).
  [[nodiscard]] const block_scales* scales() const { return scales_.get(); }
  void set_scales(block_scales s) { scales_ = std::make_shared<const block_scales>(std::move(s)); }
  /// Element i as f32 (fp8 weights dequantized with their scales), for code that reads weights
  /// element by element outside the kernels (MLA's absorbed matrices, tests).
  [[nodiscard]] float element(std::int64_t i) const;

 private:
  buffer buf_;
  std::shared_ptr<const block_scales> scales_;
  dtype type_ = dtype::f32;
  helix::shape dims_;
};

}  // namespace helix
