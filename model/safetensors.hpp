// Safetensors files: a validating, memory-mapped reader and an atomic writer.
//
// Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, an
// N-byte JSON object {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
// {string: string}} and then the data section; offsets are relative to the data section.
// checkpoint.cpp reads HF checkpoints with this; tests and save_checkpoint() write with it.
//
// The reader maps the file read-only (POSIX mmap) so that a large checkpoint is not copied twice,
// and validates the whole header at open, with the reference implementation's rules: the tensors'
// data_offsets, sorted, tile the data section exactly (no hole, no overlap, no trailing byte), so
// that a header length that is off by one cannot shift every tensor unnoticed. Every malformed file
// is an error status naming the file and the tensor, never a crash. parse_safetensors() is the
// same validation on bytes in memory (the fuzz target uses it). All safetensors dtypes are accepted
// in the header (so that a checkpoint with, say, an unused I64 buffer still opens); only F32, BF16
// and F16 can be read as tensors, the others are refused by name when a tensor is read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.hpp"
#include "core/status.hpp"
#include "core/tensor.hpp"

namespace helix::model {

/// One tensor of a safetensors header.
struct safetensors_entry {
  std::string name;
  std::string dtype_name;           // as written in the file: "F32", "BF16", "F8_E4M3", ...
  std::optional<dtype> type;        // F32 / BF16 / F16; empty for dtypes we cannot read
  std::vector<std::int64_t> shape;  // any rank; [] is a scalar
  std::size_t data_offset = 0;      // from the start of the data section
  std::size_t data_bytes = 0;
  [[nodiscard]] std::int64_t numel() const;
  [[nodiscard]] std::string shape_string() const;  // "[97, 64]"
};

/// A read-only, memory-mapped safetensors file. Move-only; the mapping lives as long as the
/// object. Immutable after open(), so concurrent reads from several threads are safe. The file
/// must not be truncated in place while open (a mapped read past its end is SIGBUS);
/// write_safetensors() replaces files by rename, which is safe.
class safetensors_file {
 public:
  /// Maps `path` and validates it as parse_safetensors() does. not_found if the file does not
  /// exist; invalid_argument naming the file if it is not a regular file or cannot be mapped, and
  /// for everything parse_safetensors() refuses.
  [[nodiscard]] static expected<safetensors_file> open(const std::string& path);

  safetensors_file() = default;
  safetensors_file(safetensors_file&& other) noexcept;
  safetensors_file& operator=(safetensors_file&& other) noexcept;
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;
  ~safetensors_file();

  [[nodiscard]] const std::string& path() const { return path_; }
  /// All tensors, sorted by name.
  [[nodiscard]] const std::vector<safetensors_entry>& entries() const { return entries_; }
  /// The "__metadata__" map (empty when absent or null).
  [[nodiscard]] const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The entry called `name`, or nullptr.
  [[nodiscard]] const safetensors_entry* find(std::string_view name) const;
  /// The raw bytes of an entry of this file (inside the mapping; not necessarily aligned).
  [[nodiscard]] std::span<const std::byte> bytes(const safetensors_entry& e) const;

  /// Copies tensor `name` into `dst` (an allocated host tensor of the same numel), converting
  /// from the stored dtype to dst's dtype (f32/bf16/f16; rounding to nearest even).
  /// not_found if absent; invalid_argument if the stored dtype cannot be read (e.g. F8_E4M3,
  /// whose block scales load_checkpoint applies) or the element counts differ.
  [[nodiscard]] status read_into(std::string_view name, tensor& dst) const;

 private:
  void unmap() noexcept;
  std::string path_;
  const std::byte* map_ = nullptr;
  std::size_t map_bytes_ = 0;
  std::size_t data_start_ = 0;  // 8 + header length
  std::vector<safetensors_entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// The validated header of a safetensors file: what parse_safetensors() returns.
struct safetensors_header {
  std::vector<safetensors_entry> entries;  // sorted by name
  std::map<std::string, std::string> metadata;
  std::size_t data_start = 0;  // 8 + header length: where the data section begins in the file
};

/// Validates the bytes of a whole safetensors file (`file`: length, header and data section);
/// `name` (the path) is only used in messages. invalid_argument naming `name` (and the tensor)
/// for: fewer than 8 bytes; a header length beyond the file or above 100,000,000 bytes (the
/// reference implementation's bound); a header that is not a JSON object; a duplicate key; a
/// tensor entry that is not an object, lacks or mistypes dtype/shape/data_offsets or has any
/// other key; an unknown dtype string; a shape dim that is not a non-negative integer; offsets
/// with begin > end or beyond the data section; byte size != numel * element size (overflow
/// included); __metadata__ that is neither null nor an object of strings; and tensors that do
/// not cover the data section exactly once: sorted by offset, the first must begin at 0, each
/// must begin where the previous one ended (a hole or an overlap otherwise), and the last must
/// end where the file ends (trailing bytes otherwise: typically a wrong header length).
/// Pure; thread-safe; nothing returned points into `file`.
[[nodiscard]] expected<safetensors_header> parse_safetensors(std::span<const std::byte> file,
                                                             std::string_view name);

/// One tensor to write. `data` points at numel(shape) contiguous elements of `type`; it is only
/// read during the call.
struct safetensors_tensor {
  std::string name;
  dtype type = dtype::f32;
  std::vector<std::int64_t> shape;
  const void* data = nullptr;
};

/// Writes a safetensors file: header with sorted names and __metadata__ {"format": "pt"}, padded
/// with spaces to a multiple of 8 bytes; data ordered by element size (largest first) then name
/// so that every tensor is aligned to its element size, as the reference writer does. Written to
/// a temporary file in the same folder and renamed, so readers never see a partial file.
/// invalid_argument for duplicate or empty names, negative dims or a null pointer with a non-empty
/// shape; internal for I/O failures (naming the path and errno text).
[[nodiscard]] status write_safetensors(const std::string& path,
                                       std::span<const safetensors_tensor> tensors);

/// The element size of a safetensors dtype string ("F32" -> 4), or 0 if unknown.
[[nodiscard]] std::size_t safetensors_dtype_bytes(std::string_view dtype_name);
/// The safetensors string of a dtype: "F32", "BF16", "F16", "F8_E4M3".
[[nodiscard]] std::string_view safetensors_dtype_name(dtype t);

}  // namespace helix::model
