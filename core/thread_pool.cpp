#include "core/thread_pool.hpp"

#include <system_error>

#include "core/log.hpp"

namespace helix {

thread_pool::thread_pool(int num_threads) {
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

void thread_pool::run_tasks() {
  std::unique_lock lock(mutex_);
  while (next_task_ < num_tasks_) {
    const std::int64_t task = next_task_++;
    const task_fn fn = fn_;
    void* ctx = ctx_;
    lock.unlock();
    fn(ctx, task);
    lock.lock();
    if (++tasks_done_ == num_tasks_) done_cv_.notify_all();
  }
}

void thread_pool::worker_loop() {
  std::uint64_t seen = 0;
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      work_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_tasks();
  }
}

void thread_pool::run(std::int64_t num_tasks, task_fn fn, void* ctx) {
  if (num_tasks <= 0) return;
  if (workers_.empty() || num_tasks == 1) {
    for (std::int64_t i = 0; i < num_tasks; ++i) fn(ctx, i);
    return;
  }
  std::lock_guard call_lock(call_mutex_);
  {
    std::lock_guard lock(mutex_);
    fn_ = fn;
    ctx_ = ctx;
    num_tasks_ = num_tasks;
    next_task_ = 0;
    tasks_done_ = 0;
    ++generation_;
  }
  work_cv_.notify_all();
  run_tasks();
  std::unique_lock lock(mutex_);
  done_cv_.wait(lock, [&] { return tasks_done_ == num_tasks_; });
  fn_ = nullptr;
  ctx_ = nullptr;
}

}  // namespace helix
