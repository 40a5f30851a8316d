// Paged KV store of one worker: a pool of page slots per layer, with capacity accounting.
//
// A slot is one KV block (block_tokens tokens) in every layer: layer l's pages live in one
// contiguous pool, page `slot` at byte offset slot * layout.page_bytes(), in the head-major layout
// of core/kv_layout.hpp. Block tables (core/block_table.hpp) name slots; attention kernels get a
// layer's pool base and the request's blocks. Owned by exactly one worker; not thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "core/kv_layout.hpp"
#include "core/tensor.hpp"

namespace helix::model {

class kv_store {
 public:
  /// invalid_argument for a bad layout or counts; the pool is allocated up front.
  [[nodiscard]] static expected<kv_store> create(const kv_page_layout& layout,
                                                 std::int64_t num_layers, std::int64_t num_slots);
  /// Slots that fit in `bytes` for this layout and layer count (at least 0).
  [[nodiscard]] static std::int64_t slots_for_bytes(const kv_page_layout& layout,
                                                    std::int64_t num_layers, std::size_t bytes);

  [[nodiscard]] const kv_page_layout& layout() const { return layout_; }
  [[nodiscard]] std::int64_t num_layers() const { return static_cast<std::int64_t>(pools_.size()); }
  [[nodiscard]] std::int64_t num_slots() const { return num_slots_; }
  [[nodiscard]] std::int64_t free_slots() const { return static_cast<std::int64_t>(free_.size()); }
  [[nodiscard]] std::int64_t used_slots() const { return num_slots_ - free_slots(); }
  /// Bytes one slot takes over all layers.
  [[nodiscard]] std::size_t slot_bytes() const { return layout_.page_bytes() * pools_.size(); }
  [[nodiscard]] std::size_t capacity_bytes() const {
    return slot_bytes() * static_cast<std::size_t>(num_slots_);
  }

  /// A free slot; resource_exhausted (with used/total counts) when the store is full.
  [[nodiscard]] expected<std::int32_t> allocate();
  /// Returns a slot to the pool; invalid_argument if it is out of range or not allocated.
  [[nodiscard]] status release(std::int32_t slot);

  /// Base of layer `layer_idx`'s page pool (what attention kernels take as kv_pool).
  [[nodiscard]] const void* layer_pool(std::int64_t layer_idx) const;
  [[nodiscard]] void* page(std::int64_t layer_idx, std::int32_t slot);

  /// Stores one token's keys [num_kv_heads, key_dim] and values [num_kv_heads, value_dim] (f32,
  /// rounded to the layout dtype after dividing by the scales) at `token_idx` of the slot's page.
  /// For MLA (value_in_key) `v` is ignored. HELIX_CHECKs the indices.
  void write_token(std::int64_t layer_idx, std::int32_t slot, std::int64_t token_idx,
                   const float* k, const float* v, float k_scale = 1.0f, float v_scale = 1.0f);

 private:
  kv_page_layout layout_;
  std::int64_t num_slots_ = 0;
  std::vector<buffer> pools_;         // one per layer
  std::vector<std::int32_t> free_;    // free slots, allocated from the back
  std::vector<std::uint8_t> in_use_;  // per slot
};

/// Fills one page with seeded synthetic values, uniform in [-1, 1) and rounded to the layout's
/// dtype; `stream` tells pages apart (e.g. layer, sequence and block). Each KV head's keys and
/// values are drawn by the head's global index (`first_head` + its index in the page), so a
/// block's values do not depend on how the heads are split over ranks: every layout of a model
/// sees the same synthetic context. For long-context benchmarks and demos, whose KV is labelled
/// synthetic wherever it is reported.
void fill_synthetic_page(void* page, const kv_page_layout& layout, std::uint64_t seed,
                         std::uint64_t stream, std::int64_t first_head = 0);

}  // namespace helix::model
