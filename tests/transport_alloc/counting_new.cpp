#include "tests/transport_alloc/counting_new.hpp"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {

thread_local bool this_thread_on = false;
thread_local long this_thread_count = 0;
std::atomic<bool> all_on{false};
std::atomic<long> all_count{0};

}  // namespace

namespace helix::test_alloc {

void count_this_thread(bool on) noexcept {
  this_thread_on = on;
}
long this_thread_allocations() noexcept {
  return this_thread_count;
}
void count_all_threads(bool on) noexcept {
  all_on.store(on, std::memory_order_seq_cst);
}
long all_thread_allocations() noexcept {
  return all_count.load(std::memory_order_seq_cst);
}

}  // namespace helix::test_alloc

void* operator new(std::size_t n) {
  if (this_thread_on) ++this_thread_count;
  if (all_on.load(std::memory_order_relaxed)) all_count.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) {
  return operator new(n);
}
void* operator new(std::size_t n, std::align_val_t align) {
  if (this_thread_on) ++this_thread_count;
  if (all_on.load(std::memory_order_relaxed)) all_count.fetch_add(1, std::memory_order_relaxed);
  const auto a = static_cast<std::size_t>(align);
  if (void* p = std::aligned_alloc(a, (n + a - 1) / a * a)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n, std::align_val_t align) {
  return operator new(n, align);
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete[](void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept {
  std::free(p);
}
