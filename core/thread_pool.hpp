// A fixed pool of worker threads for data-parallel CPU kernels.
//
// parallel_for(n, fn) runs fn(task_idx) for task_idx in [0, n) on the pool and the calling thread,
// and returns when all are done. Waiting blocks on a condition variable (never spins), so pools of
// many simulated workers share two cores well. How work is split into tasks is the caller's
// business: kernels split by fixed sizes, never by thread count, so results do not depend on the
// number of threads. One parallel_for at a time per pool (calls are serialised by a mutex).
#pragma once

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
  explicit thread_pool(int num_threads = 0);
  ~thread_pool();
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  [[nodiscard]] int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
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
  void run(std::int64_t num_tasks, task_fn fn, void* ctx);
  void worker_loop();
  void run_tasks();

  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  task_fn fn_ = nullptr;
  void* ctx_ = nullptr;
  std::int64_t num_tasks_ = 0;
  std::int64_t next_task_ = 0;
  std::int64_t tasks_done_ = 0;
  std::uint64_t generation_ = 0;
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
