#include "model/kv_store.hpp"

#include "core/rng.hpp"

namespace helix::model {

expected<kv_store> kv_store::create(const kv_page_layout& layout, std::int64_t num_layers,
                                    std::int64_t num_slots) {
  if (layout.num_kv_heads <= 0 || layout.key_dim <= 0 || layout.block_tokens <= 0 ||
      (!layout.value_in_key && layout.value_dim <= 0)) {
    return invalid_argument(
        "kv store: bad page layout (heads {}, key_dim {}, value_dim {}, "
        "block_tokens {})",
        layout.num_kv_heads, layout.key_dim, layout.value_dim, layout.block_tokens);
  }
  if (num_layers <= 0 || num_slots < 0 || num_slots > INT32_MAX) {
    return invalid_argument("kv store: {} layers, {} slots", num_layers, num_slots);
  }
  const std::size_t pool_bytes = layout.page_bytes() * static_cast<std::size_t>(num_slots);
  if (pool_bytes / layout.page_bytes() != static_cast<std::size_t>(num_slots)) {
    return invalid_argument("kv store: {} slots of {} bytes overflow", num_slots,
                            layout.page_bytes());
  }
  kv_store s;
  s.layout_ = layout;
  s.num_slots_ = num_slots;
  for (std::int64_t l = 0; l < num_layers; ++l) {
    expected<buffer> pool = buffer::try_host(pool_bytes);
    if (!pool) {
      return pool.error().with_context(
          fmt::format("kv store of {} blocks x {} layers ({} bytes per layer)", num_slots,
                      num_layers, pool_bytes));
    }
    s.pools_.push_back(std::move(pool).value());
  }
  s.free_.reserve(static_cast<std::size_t>(num_slots));
  for (std::int64_t i = num_slots - 1; i >= 0; --i) s.free_.push_back(static_cast<std::int32_t>(i));
  s.in_use_.assign(static_cast<std::size_t>(num_slots), 0);
  return s;
}

std::int64_t kv_store::slots_for_bytes(const kv_page_layout& layout, std::int64_t num_layers,
                                       std::size_t bytes) {
  const std::size_t per_slot = layout.page_bytes() * static_cast<std::size_t>(num_layers);
  return per_slot == 0 ? 0 : static_cast<std::int64_t>(bytes / per_slot);
}

expected<std::int32_t> kv_store::allocate() {
  if (free_.empty()) {
    return resource_exhausted("kv store: all {} slots in use ({} bytes)", num_slots_,
                              capacity_bytes());
  }
  const std::int32_t slot = free_.back();
  free_.pop_back();
  in_use_[static_cast<std::size_t>(slot)] = 1;
  return slot;
}

status kv_store::release(std::int32_t slot) {
  if (slot < 0 || slot >= num_slots_ || in_use_[static_cast<std::size_t>(slot)] == 0) {
    return invalid_argument("kv store: release of slot {} that is not allocated ({} slots)", slot,
                            num_slots_);
  }
  in_use_[static_cast<std::size_t>(slot)] = 0;
  free_.push_back(slot);
  return ok_status();
}

const void* kv_store::layer_pool(std::int64_t layer_idx) const {
  HELIX_CHECK(layer_idx >= 0 && layer_idx < num_layers(), "layer {}", layer_idx);
  return pools_[static_cast<std::size_t>(layer_idx)].data();
}

void* kv_store::page(std::int64_t layer_idx, std::int32_t slot) {
  HELIX_CHECK(layer_idx >= 0 && layer_idx < num_layers(), "layer {}", layer_idx);
  HELIX_CHECK(slot >= 0 && slot < num_slots_, "slot {} of {}", slot, num_slots_);
  return pools_[static_cast<std::size_t>(layer_idx)].as<std::uint8_t>() +
         layout_.page_bytes() * static_cast<std::size_t>(slot);
}

void kv_store::write_token(std::int64_t layer_idx, std::int32_t slot, std::int64_t token_idx,
                           const float* k, const float* v, float k_scale, float v_scale) {
  HELIX_CHECK(token_idx >= 0 && token_idx < layout_.block_tokens, "token {} of block {}", token_idx,
              layout_.block_tokens);
  void* p = page(layer_idx, slot);
  const float k_inv = 1.0f / k_scale;
  const float v_inv = 1.0f / v_scale;
  for (std::int64_t h = 0; h < layout_.num_kv_heads; ++h) {
    const std::int64_t ko = layout_.key_offset(h, token_idx);
    for (std::int64_t d = 0; d < layout_.key_dim; ++d) {
      store_from_f32(p, layout_.type, static_cast<std::size_t>(ko + d),
                     k[h * layout_.key_dim + d] * k_inv);
    }
    if (layout_.value_in_key) continue;
    const std::int64_t vo = layout_.value_offset(h, token_idx);
    for (std::int64_t d = 0; d < layout_.value_dim; ++d) {
      store_from_f32(p, layout_.type, static_cast<std::size_t>(vo + d),
                     v[h * layout_.value_dim + d] * v_inv);
    }
  }
}

void fill_synthetic_page(void* page, const kv_page_layout& layout, std::uint64_t seed,
                         std::uint64_t stream, std::int64_t first_head) {
  // One run per (head, keys or values), keyed by the global head; four values per Philox call.
  auto fill_run = [&](std::int64_t offset, std::int64_t elems, std::uint64_t position) {
    const auto n = static_cast<std::uint64_t>(elems);
    for (std::uint64_t i = 0; i < n; i += 4) {
      const auto w = random_words(seed, stream, position, rng_purpose::synthetic_kv, i / 4);
      for (std::uint64_t j = 0; j < 4 && i + j < n; ++j) {
        store_from_f32(page, layout.type, static_cast<std::size_t>(offset) + i + j,
                       2.0f * uniform_open01(w[j]) - 1.0f);
      }
    }
  };
  for (std::int64_t h = 0; h < layout.num_kv_heads; ++h) {
    const auto head = static_cast<std::uint64_t>(first_head + h);
    fill_run(layout.key_offset(h, 0), layout.block_tokens * layout.key_dim, 2 * head);
    if (!layout.value_in_key) {
      fill_run(layout.value_offset(h, 0), layout.block_tokens * layout.value_dim, 2 * head + 1);
    }
  }
}

}  // namespace helix::model
