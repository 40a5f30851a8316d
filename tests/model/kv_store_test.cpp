#include "model/kv_store.hpp"

#include <set>

#include <gtest/gtest.h>

namespace helix::model {
namespace {

kv_page_layout gqa_layout(dtype t) {
  return {.num_kv_heads = 2, .key_dim = 4, .value_dim = 4, .block_tokens = 4, .type = t};
}

TEST(KvStore, CapacityAccountingAndDoubleFree) {
  auto s = kv_store::create(gqa_layout(dtype::bf16), 3, 5);
  ASSERT_TRUE(s.has_value());
  EXPECT_EQ(s->slot_bytes(), 3u * 2 * 2 * 4 * 4 * 2);
  EXPECT_EQ(s->capacity_bytes(), 5 * s->slot_bytes());
  EXPECT_EQ(kv_store::slots_for_bytes(gqa_layout(dtype::bf16), 3, s->capacity_bytes() + 1), 5);
  std::set<std::int32_t> slots;
  for (int i = 0; i < 5; ++i) {
    auto slot = s->allocate();
    ASSERT_TRUE(slot.has_value());
    slots.insert(*slot);
  }
  EXPECT_EQ(slots.size(), 5u);
  EXPECT_EQ(s->free_slots(), 0);
  auto full = s->allocate();
  EXPECT_EQ(full.error().code(), errc::resource_exhausted);
  ASSERT_TRUE(s->release(2).ok());
  EXPECT_EQ(s->release(2).code(), errc::invalid_argument);
  EXPECT_EQ(s->release(99).code(), errc::invalid_argument);
  EXPECT_EQ(s->used_slots(), 4);
  EXPECT_EQ(kv_store::create(gqa_layout(dtype::f32), 0, 5).error().code(), errc::invalid_argument);
}

TEST(KvStore, WriteTokenUsesTheHeadMajorLayout) {
  auto s = kv_store::create(gqa_layout(dtype::f32), 2, 3);
  ASSERT_TRUE(s.has_value());
  const float k[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const float v[8] = {-1, -2, -3, -4, -5, -6, -7, -8};
  s->write_token(1, 2, 3, k, v, 2.0f, 1.0f);
  const auto* page = static_cast<const float*>(s->page(1, 2));
  const kv_page_layout& l = s->layout();
  EXPECT_EQ(page[l.key_offset(1, 3) + 2],
            7.0f / 2.0f);  // head 1, token 3, dim 2; divided by k_scale
  EXPECT_EQ(page[l.value_offset(0, 3) + 0], -1.0f);
  EXPECT_EQ(page[l.key_offset(0, 0)], 0.0f);                                          // untouched
  EXPECT_EQ(static_cast<const float*>(s->page(0, 2))[l.key_offset(1, 3) + 2], 0.0f);  // other layer
}

}  // namespace
}  // namespace helix::model
