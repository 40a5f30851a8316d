#include "core/thread_pool.hpp"

#include <algorithm>
#include <limits>
#include <system_error>

#include "core/log.hpp"

namespace helix {

thread_pool::thread_pool(int num_threads, bool spin) : spin_(spin) {
  if (num_threads <= 0) num_threads = static_cast<int>(std::thread::hardware_concurrency());
  if (num_threads <= 0) num_threads = 1;
  workers_.reserve(static_cast<std::size_t>(num_threads - 1));
  for (int i = 1; i < num_threads; ++i) {
    // The system may refuse a thread (limits, memory): run with the ones it gave, rather than
    // terminate with joinable threads in a half-built pool.
    try {
      workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::system_error& e) {
      module_logger("core")->warn("thread_pool: {} of {} threads started ({}); running with those",
                                  workers_.size() + 1, num_threads, e.what());
      break;
    }
  }
}

thread_pool::~thread_pool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

// Claims runs of tasks of call `c` until none is left. A claim names its call's generation, so a
// thread that is late for a call can never take (or count) a task of the next one.
void thread_pool::run_tasks(const call& c) {
  for (;;) {
    std::uint64_t w = claim_.load(std::memory_order_acquire);
    std::uint32_t first = 0;
    std::uint32_t count = 0;
    for (;;) {
      if (static_cast<std::uint32_t>(w >> 32) != c.generation) return;
      first = static_cast<std::uint32_t>(w);
      if (first >= c.num_tasks) return;
      count = std::min(c.chunk, c.num_tasks - first);
      if (claim_.compare_exchange_weak(w, w + count, std::memory_order_acq_rel)) break;
    }
    for (std::uint32_t t = first; t < first + count; ++t) c.fn(c.ctx, t);
    if (pending_.fetch_sub(count, std::memory_order_acq_rel) == count) {
      std::lock_guard lock(mutex_);
      done_cv_.notify_all();
    }
  }
}

void thread_pool::worker_loop() {
  std::uint32_t seen = 0;
  for (;;) {
    if (spin_) {
      const auto until = std::chrono::steady_clock::now() + spin_for;
      while (generation_.load(std::memory_order_acquire) == seen &&
             std::chrono::steady_clock::now() < until) {
        std::this_thread::yield();
      }
    }
    call c;
    {
      std::unique_lock lock(mutex_);
      work_cv_.wait(lock, [&] { return stop_ || current_.generation != seen; });
      if (stop_) return;
      c = current_;
      seen = c.generation;
    }
    run_tasks(c);
  }
}

void thread_pool::run(std::int64_t num_tasks, task_fn fn, void* ctx) {
  if (num_tasks <= 0) return;
  if (workers_.empty() || num_tasks == 1) {
    for (std::int64_t i = 0; i < num_tasks; ++i) fn(ctx, i);
    return;
  }
  std::lock_guard call_lock(call_mutex_);
  // Task indices are 32-bit in a claim: more tasks run as several calls of consecutive ranges.
  constexpr std::int64_t max_part = std::numeric_limits<std::int32_t>::max();
  for (std::int64_t base = 0; base < num_tasks; base += max_part) {
    const auto part = static_cast<std::uint32_t>(std::min(max_part, num_tasks - base));
    if (base == 0) {
      run_part(part, fn, ctx);
      continue;
    }
    struct shifted {
      task_fn fn;
      void* ctx;
      std::int64_t base;
    } sh{fn, ctx, base};
    run_part(
        part,
        [](void* p, std::int64_t i) {
          const auto* s = static_cast<const shifted*>(p);
          s->fn(s->ctx, s->base + i);
        },
        &sh);
  }
}

void thread_pool::run_part(std::uint32_t num_tasks, task_fn fn, void* ctx) {
  call c;
  {
    std::lock_guard lock(mutex_);
    c.generation = current_.generation + 1;
    c.fn = fn;
    c.ctx = ctx;
    c.num_tasks = num_tasks;
    const auto threads = static_cast<std::uint32_t>(workers_.size() + 1);
    c.chunk = std::max<std::uint32_t>(1, num_tasks / (threads * 8));
    current_ = c;
    pending_.store(num_tasks, std::memory_order_relaxed);
    claim_.store(std::uint64_t{c.generation} << 32, std::memory_order_release);
    generation_.store(c.generation, std::memory_order_release);
  }
  work_cv_.notify_all();
  run_tasks(c);
  if (spin_) {
    const auto until = std::chrono::steady_clock::now() + spin_for;
    while (pending_.load(std::memory_order_acquire) != 0 &&
           std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
    }
  }
  std::unique_lock lock(mutex_);
  done_cv_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
}

}  // namespace helix
