// The KV page layout: how one block of `block_tokens` tokens of one layer is laid out in memory.
//
// Head-major pages, chosen for bandwidth: a page holds, for every KV head of the shard, the keys of
// all its tokens contiguously, then the values likewise:
//   GQA: [K: num_kv_heads][block_tokens][key_dim]  then  [V: num_kv_heads][block_tokens][value_dim]
//   MLA: [block_tokens][kv_lora_rank + qk_rope_head_dim]  (the value is the first kv_lora_rank
//        entries of each cached key: the normalised latent; the rest is the rotated rope key)
// An attention kernel streams each head's keys of a block as one contiguous run, and a GQA group of
// query heads shares that one read. Elements are of the KV storage dtype, scaled by a per-tensor
// scale (1 unless fp8 calibration says otherwise). Header-only; host and device.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/dtype.hpp"

namespace helix {

inline constexpr std::int64_t default_block_tokens = 16;

struct kv_page_layout {
  std::int64_t num_kv_heads = 1;  // heads held in the page (the shard's heads); 1 for MLA
  std::int64_t key_dim = 0;       // GQA head_dim; MLA kv_lora_rank + qk_rope_head_dim
  std::int64_t value_dim = 0;     // GQA head_dim; MLA kv_lora_rank (stored inside the key)
  std::int64_t block_tokens = default_block_tokens;
  dtype type = dtype::bf16;
  bool value_in_key = false;  // MLA: V is the leading value_dim entries of K

  [[nodiscard]] HELIX_HD std::int64_t key_elems() const {
    return num_kv_heads * block_tokens * key_dim;
  }
  [[nodiscard]] HELIX_HD std::int64_t value_elems() const {
    return value_in_key ? 0 : num_kv_heads * block_tokens * value_dim;
  }
  [[nodiscard]] HELIX_HD std::int64_t page_elems() const { return key_elems() + value_elems(); }
  [[nodiscard]] HELIX_HD std::size_t page_bytes() const {
    return static_cast<std::size_t>(page_elems()) * dtype_bytes(type);
  }
  /// Element offset of key (head, token) inside a page.
  [[nodiscard]] HELIX_HD std::int64_t key_offset(std::int64_t head, std::int64_t token) const {
    return (head * block_tokens + token) * key_dim;
  }
  /// Element offset of value (head, token) inside a page.
  [[nodiscard]] HELIX_HD std::int64_t value_offset(std::int64_t head, std::int64_t token) const {
    return value_in_key ? key_offset(head, token)
                        : key_elems() + (head * block_tokens + token) * value_dim;
  }
};

}  // namespace helix
