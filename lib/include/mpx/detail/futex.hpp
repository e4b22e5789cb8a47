// Futex waits on 32-bit words in shared memory, and the brief spin that precedes them.
//
// The words are std::atomic<std::uint32_t> living in MAP_SHARED mappings: lock-free atomics are
// address-free, so every process that inherited the mapping sees one word, and the shared (not
// FUTEX_PRIVATE) futex ops key on the physical page.
#pragma once

#include <linux/futex.h>
#include <sched.h>
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

#include <mpx/detail/timespec.hpp>
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
    ts = to_timespec(ns < 0 ? 0 : ns);
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

// The process-wide spin limit: a wait spins at most this long before sleeping on the futex.
// 0 disables spinning (the default on a single CPU, where the holder cannot run meanwhile).
// MPX_SPIN_NS in the environment sets it at first use; children inherit it through fork.
std::atomic<std::uint32_t>& spin_limit_ns();

// False while the machine has more than one runnable task beyond its CPUs (this one included;
// one more is allowed because the spinner's own peer often is that one), sampled from
// /proc/loadavg at most every few milliseconds. Spinning then takes a CPU that the party being
// waited for, or anyone else, needs: it slows the hand-off down instead of speeding it up.
bool spare_cpu();

inline std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

// What a primitive has learnt about its waits; lives in its shared state.
struct SpinStats {
  std::atomic<std::uint32_t> wait_ns{10'000};  // running average of whole waits
  std::atomic<std::uint32_t> wake_ns{25'000};  // running average of wake-up latency
  std::atomic<std::uint64_t> woke_at{0};       // steady_ns() of the latest futex wake
  std::atomic<std::uint32_t> hits{1024};       // how often spinning paid off, 0..1024
  std::atomic<std::uint32_t> waits{0};
  // Wakers call this just before futex_wake.
  void note_wake() { woke_at.store(steady_ns(), std::memory_order_relaxed); }
};

// Spin-then-sleep. A wake-up through the futex costs a sleeper anything from a few
// microseconds (busy CPUs) to tens of them (an idle vCPU must be woken first), while a waiter
// that is still spinning sees the change in well under one. Spinning for about as long as a
// wake-up costs is never worse than twice the best choice, so the budget is learnt per
// primitive: twice the measured wake-up latency (wakers stamp the time, sleepers measure it),
// at most the process-wide limit, at least 2 µs — and only 2 µs when this primitive's waits
// typically outlast the limit anyway. The waits are measured whole (spinning or sleeping,
// start to end): learning only from successful spins would let two processes that hand off to
// each other settle into both sleeping, each wait then lasting a wake-up, never spinning again.
// On a busy machine spinning steals the CPU from the very party it waits for: no wait spins
// while spare_cpu() says the machine is oversubscribed, a spin that finds it was descheduled
// stops and backs off hard, and when fewer than half the recent spins paid off only every
// eighth wait spins (to notice when things improve). While spinning, the waiter yields the CPU
// now and then: the party it waits for may be queued behind it.
//
//   AdaptiveSpin spin(state.stats);
//   if (spin.spin([&] { return ready(); }, deadline)) return true;
//   while (!ready()) spin.sleep(word, expected, deadline);   // the destructor records the wait
class AdaptiveSpin {
 public:
  explicit AdaptiveSpin(SpinStats& stats)
      : stats_(stats), limit_(spin_limit_ns().load(std::memory_order_relaxed)), start_(steady_ns()) {}
  AdaptiveSpin(const AdaptiveSpin&) = delete;
  AdaptiveSpin& operator=(const AdaptiveSpin&) = delete;

  ~AdaptiveSpin() { fold(stats_.wait_ns, std::min<std::uint64_t>(steady_ns() - start_, 4ull * limit_ + 1)); }

  // Spins until ready() holds (true), or the budget or the deadline runs out (false).
  template <class Pred>
  bool spin(Pred&& ready, const Deadline& deadline) {
    return spin_loop(ready, deadline, 15);
  }
  // The same for a ready() that is itself a system call (a non-blocking recv or poll): each
  // miss costs half a microsecond, so the clock is read, and the CPU yielded once the first
  // microsecond is spent, after every miss rather than every 16 (with a peer sharing this CPU,
  // ~10 µs between yields made round trips twice as slow).
  template <class Pred>
  bool spin_polling(Pred&& ready, const Deadline& deadline) {
    return spin_loop(ready, deadline, 0);
  }

  // futex_wait that also measures the wake-up latency when a waker stamped one.
  bool sleep(std::atomic<std::uint32_t>& word, std::uint32_t expected,
             std::optional<std::chrono::steady_clock::time_point> until) {
    std::uint64_t before = steady_ns();
    bool in_time = futex_wait(word, expected, until);
    std::uint64_t woke_at = stats_.woke_at.load(std::memory_order_relaxed);
    if (limit_ != 0 && woke_at >= before) {
      std::uint64_t latency = steady_ns() - woke_at;
      if (latency < 1'000'000) fold(stats_.wake_ns, latency);
    }
    return in_time;
  }
  bool sleep(std::atomic<std::uint32_t>& word, std::uint32_t expected, const Deadline& deadline) {
    return sleep(word, expected, deadline.at());
  }

 private:
  template <class Pred>
  bool spin_loop(Pred& ready, const Deadline& deadline, unsigned check_mask) {
    if (limit_ == 0 || !spare_cpu()) return false;
    std::uint32_t n = stats_.waits.load(std::memory_order_relaxed);
    stats_.waits.store(n + 1, std::memory_order_relaxed);
    std::uint32_t hits = stats_.hits.load(std::memory_order_relaxed);
    if (hits < 512 && (n & 7) != 0) return false;
    std::uint64_t wait = stats_.wait_ns.load(std::memory_order_relaxed);
    std::uint64_t wake = stats_.wake_ns.load(std::memory_order_relaxed);
    std::uint64_t budget = 2000;
    if (wait <= limit_) budget = std::clamp<std::uint64_t>(std::min(2 * wake, 2 * wait + 2000), 2000, limit_);
    if (auto left = deadline.remaining())
      budget = std::min<std::uint64_t>(budget, static_cast<std::uint64_t>(left->count()));
    std::uint64_t checked = start_;
    for (unsigned i = 1;; ++i) {
      if (ready()) {
        stats_.hits.store(hits + (1024 - hits) / 8, std::memory_order_relaxed);
        return true;
      }
      cpu_relax();
      if ((i & check_mask) == 0) {
        std::uint64_t now = steady_ns();
        if (now - checked > kLostCpuNs) {
          // Descheduled mid-spin: the CPUs are oversubscribed, so back off hard.
          stats_.hits.store(hits / 4, std::memory_order_relaxed);
          return false;
        }
        checked = now;
        std::uint64_t spent = now - start_;
        if (spent >= budget) {
          stats_.hits.store(hits - hits / 8, std::memory_order_relaxed);
          return false;
        }
        if (spent >= 1000) ::sched_yield();
      }
    }
  }

  static void fold(std::atomic<std::uint32_t>& avg, std::uint64_t sample) {
    std::int64_t a = avg.load(std::memory_order_relaxed);
    std::int64_t next = a + (static_cast<std::int64_t>(sample) - a) / 8;
    avg.store(static_cast<std::uint32_t>(std::clamp<std::int64_t>(next, 0, UINT32_MAX)),
              std::memory_order_relaxed);
  }
  static constexpr std::uint64_t kLostCpuNs = 50'000;  // a gap between checks this long
  SpinStats& stats_;
  std::uint64_t limit_;
  std::uint64_t start_;
};

}  // namespace mpx::detail
