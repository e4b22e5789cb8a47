// Futex waits on 32-bit words in shared memory, and the brief spin that precedes them.
//
// The words are std::atomic<std::uint32_t> living in MAP_SHARED mappings: lock-free atomics are
// address-free, so every process that inherited the mapping sees one word, and the shared (not
// FUTEX_PRIVATE) futex ops key on the physical page.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <ctime>
#include <optional>

#include <mpx/timeout.hpp>

namespace mpx::detail {

static_assert(sizeof(std::atomic<std::uint32_t>) == 4 && std::atomic<std::uint32_t>::is_always_lock_free);

// Sleeps while `word` still holds `expected`, until woken or `deadline` (steady_clock, i.e.
// CLOCK_MONOTONIC, absolute). Returns false only when the deadline has passed. Spurious returns
// happen: callers re-check their condition.
inline bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected,
                       std::optional<std::chrono::steady_clock::time_point> deadline) {
  timespec ts{};
  if (deadline) {
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline->time_since_epoch()).count();
    if (ns < 0) ns = 0;
    ts.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(ns % 1'000'000'000);
  }
  // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC time, so repeated waits keep one budget.
  long r = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_BITSET, expected,
                     deadline ? &ts : nullptr, nullptr, FUTEX_BITSET_MATCH_ANY);
  return !(r < 0 && errno == ETIMEDOUT);
}

inline bool futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected, const Deadline& deadline) {
  return futex_wait(word, expected, deadline.at());
}

inline void futex_wake(std::atomic<std::uint32_t>& word, int count = INT_MAX) {
  ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE, count, nullptr, nullptr, 0);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// The process-wide spin budget: waits spin at most this long before sleeping on the futex.
// 0 disables spinning (the default on a single CPU, where the holder cannot run meanwhile).
// MPX_SPIN_NS in the environment sets it at first use; children inherit it through fork.
std::atomic<std::uint32_t>& spin_limit_ns();

// Spin-then-sleep: waking a sleeper on another CPU costs tens of microseconds, while a handoff
// to a spinning waiter costs well under one. Each primitive keeps `hint` (shared, in its
// mapping): a running average of how long successful spins took, so a primitive whose waits
// are long soon spins only briefly (2 µs floor), and one with quick handoffs keeps spinning.
template <class Pred>
bool adaptive_spin(std::atomic<std::uint32_t>& hint, Pred&& ready) {
  std::uint32_t limit = spin_limit_ns().load(std::memory_order_relaxed);
  if (limit == 0) return false;
  std::uint32_t avg = hint.load(std::memory_order_relaxed);
  std::uint64_t budget = std::min<std::uint64_t>(limit, 2ull * avg + 2000);
  auto start = std::chrono::steady_clock::now();
  for (unsigned i = 1;; ++i) {
    if (ready()) {
      auto took = static_cast<std::int64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
              .count());
      std::int64_t next = static_cast<std::int64_t>(avg) + (took - static_cast<std::int64_t>(avg)) / 8;
      hint.store(static_cast<std::uint32_t>(std::clamp<std::int64_t>(next, 0, limit)),
                 std::memory_order_relaxed);
      return true;
    }
    cpu_relax();
    if ((i & 15) == 0 && static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                        std::chrono::steady_clock::now() - start)
                                                        .count()) >= budget)
      break;
  }
  hint.store(avg - avg / 8, std::memory_order_relaxed);  // spinning did not pay: spin less next time
  return false;
}

}  // namespace mpx::detail
