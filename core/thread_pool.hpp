// A fixed pool of worker threads for data-parallel CPU kernels.
//
// parallel_for(n, fn) runs fn(task_idx) for task_idx in [0, n) on the pool and the calling thread,
// and returns when all are done. Threads claim runs of consecutive tasks (about an eighth of a
// thread's share at a time) with one atomic operation, so each streams a contiguous stretch of
// memory and none waits on a lock per task. Waiting blocks on a condition variable; a pool made
// with `spin` first looks for the next call (or, the caller, for the last task's end) for
// spin_for, yielding its core to anyone runnable, because waking a sleeping thread takes about
// as long as a small call runs: for pools whose threads have cores of their own, never for many
// simulated workers sharing two cores. How work is split into tasks is the caller's business:
// kernels split by fixed sizes, never by thread count, so results do not depend on the number of
// threads. One parallel_for at a time per pool (calls are serialised by a mutex).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace helix {

class thread_pool {
 public:
  /// `num_threads` total participants including the caller; 0 means hardware concurrency. When
  /// the system refuses to start a thread, the pool runs with those it started (num_threads()
  /// says how many) and logs a warning.
  explicit thread_pool(int num_threads = 0, bool spin = false);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  [[nodiscard]] int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  /// How long a spinning pool looks for work before it sleeps.
  static constexpr std::chrono::microseconds spin_for{100};
  /// `fn` is any callable taking the task index; it is called by reference, never copied, so a
  /// call allocates nothing whatever the callable captures.
  template <class Fn>
  void parallel_for(std::int64_t num_tasks, Fn&& fn) {
    using F = std::remove_reference_t<Fn>;
    run(
        num_tasks, [](void* f, std::int64_t i) { (*static_cast<F*>(f))(i); },
        const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using task_fn = void (*)(void*, std::int64_t);
  // One call's work as every participant sees it.
  struct call {
    std::uint32_t generation = 0;
    task_fn fn = nullptr;
    void* ctx = nullptr;
    std::uint32_t num_tasks = 0;
    std::uint32_t chunk = 1;
  };
  void run(std::int64_t num_tasks, task_fn fn, void* ctx);
  void run_part(std::uint32_t num_tasks, task_fn fn, void* ctx);
  void worker_loop();
  void run_tasks(const call& c);

  const bool spin_;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  call current_;                              // under mutex_
  std::atomic<std::uint32_t> generation_{0};  // current_.generation, read without mutex_
  std::atomic<std::uint64_t> claim_{0};       // (generation << 32) | next unclaimed task
  std::atomic<std::int64_t> pending_{0};      // tasks of the current call not yet done
  bool stop_ = false;
};

/// Runs fn(task_idx) for task_idx in [0, num_tasks) on `pool`, or on the calling thread when
/// pool is null (kernels take an optional pool).
template <class Fn>
void parallel_for(thread_pool* pool, std::int64_t num_tasks, Fn&& fn) {
  if (pool == nullptr) {
    for (std::int64_t i = 0; i < num_tasks; ++i) fn(i);
    return;
  }
  pool->parallel_for(num_tasks, fn);
}

}  // namespace helix
