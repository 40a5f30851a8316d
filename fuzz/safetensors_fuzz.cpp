// Fuzz target: the safetensors reader (model/safetensors.hpp), on the bytes of a whole file.
//
// parse_safetensors() is the validation safetensors_file::open() runs on its mapping, so this
// covers the file path without a temporary file per input. Beyond "no crash, no sanitizer
// report", an accepted file must satisfy what readers rely on: entries sorted by name, each inside
// the data section, byte size = numel * element size, and together covering the data section
// exactly once.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "fuzz/fuzz_check.hpp"
#include "model/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  const auto h = helix::model::parse_safetensors(file, "fuzz-input");
  if (!h.has_value()) {
    HELIX_FUZZ_CHECK(h.error().code() == helix::errc::invalid_argument);
    return 0;
  }
  HELIX_FUZZ_CHECK(h->data_start >= 8 && h->data_start <= size);
  const std::size_t data_bytes = size - h->data_start;
  std::vector<std::pair<std::size_t, std::size_t>> ranges;
  for (std::size_t i = 0; i < h->entries.size(); ++i) {
    const helix::model::safetensors_entry& e = h->entries[i];
    if (i > 0) HELIX_FUZZ_CHECK(h->entries[i - 1].name < e.name);
    HELIX_FUZZ_CHECK(e.data_offset <= data_bytes && e.data_bytes <= data_bytes - e.data_offset);
    const std::size_t elem = helix::model::safetensors_dtype_bytes(e.dtype_name);
    HELIX_FUZZ_CHECK(elem > 0);
    // numel() cannot overflow here: numel * elem equals a size inside the input.
    HELIX_FUZZ_CHECK(static_cast<std::size_t>(e.numel()) * elem == e.data_bytes);
    for (const std::int64_t d : e.shape) HELIX_FUZZ_CHECK(d >= 0);
    (void)e.shape_string();
    ranges.emplace_back(e.data_offset, e.data_offset + e.data_bytes);
  }
  std::sort(ranges.begin(), ranges.end());
  std::size_t covered = 0;
  for (const auto& [begin, end] : ranges) {
    HELIX_FUZZ_CHECK(begin == covered);
    covered = end;
  }
  HELIX_FUZZ_CHECK(covered == data_bytes);
  return 0;
}
