// The allocation counter of the transport_alloc binary: its own replacement of the global
// operator new (counting_new.cpp) counts the calls made while counting is on, either on one
// thread or on every thread of the process. Only this binary links it, so no other test runs
// with the replacement.
#pragma once

namespace helix::test_alloc {

/// Counts the allocations of the calling thread while on (per thread; starts off).
void count_this_thread(bool on) noexcept;
/// The calling thread's count so far.
[[nodiscard]] long this_thread_allocations() noexcept;

/// Counts the allocations of every thread of this process while on (starts off).
void count_all_threads(bool on) noexcept;
/// Every thread's count so far (while count_all_threads was on).
[[nodiscard]] long all_thread_allocations() noexcept;

}  // namespace helix::test_alloc
