// sync/ — process-shared locks, semaphores, conditions, events and barriers
// (<mpx/synchronize.hpp>), robust against a holder that dies. May include: process, common.
#include <mpx/synchronize.hpp>

#include <fcntl.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include <mpx/detail/futex.hpp>
#include <mpx/process.hpp>
#include "common/log.hpp"

namespace mpx {
namespace detail {
namespace {

// A sleeper on a Lock re-tries this often: the death of a holder marks the mutex but wakes
// nobody on our futex word.
constexpr std::chrono::milliseconds kDeadHolderPoll{20};

std::string error_text(int err) { return std::error_code(err, std::generic_category()).message(); }

// --- identity -------------------------------------------------------------------------------

std::atomic<std::uint64_t> g_fork_epoch{0};
std::atomic<pid_t> g_pid{0};

void on_fork_child() {
  g_pid.store(::getpid(), std::memory_order_relaxed);
  g_fork_epoch.fetch_add(1, std::memory_order_relaxed);
}

void ensure_fork_hook() {
  static const bool registered = [] {
    g_pid.store(::getpid(), std::memory_order_relaxed);
    ::pthread_atfork(nullptr, nullptr, on_fork_child);
    return true;
  }();
  (void)registered;
}

pid_t my_pid() {
  ensure_fork_hook();
  return g_pid.load(std::memory_order_relaxed);
}

std::uint64_t splitmix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t new_token() {
  std::uint64_t t = 0;
  if (::getrandom(&t, sizeof t, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof t)) {
    static std::atomic<std::uint64_t> counter{0};
    t = splitmix(static_cast<std::uint64_t>(::getpid()) << 32 ^ static_cast<std::uint64_t>(::gettid()) ^
                 static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()) ^
                 counter.fetch_add(1) << 48);
  }
  return t ? t : 1;
}

struct TokenCache {
  std::uint64_t epoch = ~std::uint64_t{0};
  std::uint64_t token = 0;
};
thread_local TokenCache t_token;

// --- lock internals ---------------------------------------------------------------------------

bool try_take(LockState& s, std::uint64_t me) {
  int r = ::pthread_mutex_trylock(&s.mutex);
  if (r == EBUSY) return false;
  if (r == EOWNERDEAD) {
    ::pthread_mutex_consistent(&s.mutex);
    logger().warn(
        "lock recovered: its holder (a thread of pid {}) ended while holding it; the data it protects may be "
        "inconsistent",
        s.owner_pid.load(std::memory_order_relaxed));
  } else if (r != 0) {
    throw Error("lock: pthread_mutex_trylock: " + error_text(r));
  }
  s.owner.store(me, std::memory_order_relaxed);
  s.owner_pid.store(my_pid(), std::memory_order_relaxed);
  s.depth.store(1, std::memory_order_relaxed);
  return true;
}

void unlock_now(LockState& s) {
  s.depth.store(0, std::memory_order_relaxed);
  s.owner_pid.store(0, std::memory_order_relaxed);
  s.owner.store(0, std::memory_order_relaxed);
  ::pthread_mutex_unlock(&s.mutex);
  // A sleeper does sleepers++, reads seq, try-locks, then sleeps on seq. Either we see it counted
  // here (and bump seq, so its futex wait returns at once, then wake it), or its count comes
  // after our unlock in the total order of locked operations and its try-lock succeeds. The
  // unlock is a locked RMW on x86 (a full barrier); elsewhere say so explicitly.
#if !(defined(__x86_64__) || defined(__i386__))
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
  if (s.sleepers.load() != 0) {
    s.seq.fetch_add(1);
    s.spin.note_wake();
    futex_wake(s.seq, 1);
  }
}

}  // namespace

bool spare_cpu() {
  static const long cpus = std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN));
  static std::atomic<std::uint64_t> sampled_at{0};
  static std::atomic<bool> spare{true};
  std::uint64_t now = steady_ns();
  std::uint64_t at = sampled_at.load(std::memory_order_relaxed);
  if (now - at < 4'000'000 || !sampled_at.compare_exchange_strong(at, now, std::memory_order_relaxed))
    return spare.load(std::memory_order_relaxed);
  // "0.52 0.58 0.59 3/412 12345": the fourth field counts runnable tasks, this one included.
  int fd = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;
  char text[128];
  ssize_t n = ::read(fd, text, sizeof text - 1);
  ::close(fd);
  if (n <= 0) return true;
  text[n] = '\0';
  const char* p = text;
  for (int field = 0; field < 3 && p; ++field) {
    p = std::strchr(p, ' ');
    if (p) ++p;
  }
  if (!p) return true;
  bool s = std::strtol(p, nullptr, 10) <= cpus + 1;
  spare.store(s, std::memory_order_relaxed);
  return s;
}

std::atomic<std::uint32_t>& spin_limit_ns() {
  static std::atomic<std::uint32_t> limit = [] {
    std::uint32_t ns = 100'000;
    if (cpu_count() < 2) ns = 0;  // the holder cannot run while we spin
    if (const char* env = std::getenv("MPX_SPIN_NS"))
      ns = static_cast<std::uint32_t>(std::strtoul(env, nullptr, 10));
    return ns;
  }();
  return limit;
}

std::uint64_t thread_token() {
  ensure_fork_hook();
  std::uint64_t epoch = g_fork_epoch.load(std::memory_order_relaxed);
  if (t_token.epoch != epoch) {
    t_token.token = new_token();
    t_token.epoch = epoch;
  }
  return t_token.token;
}

LockState::LockState() {
  pthread_mutexattr_t attr;
  ::pthread_mutexattr_init(&attr);
  ::pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  ::pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  ::pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_NORMAL);
  int r = ::pthread_mutex_init(&mutex, &attr);
  ::pthread_mutexattr_destroy(&attr);
  if (r != 0) throw Error("lock: pthread_mutex_init: " + error_text(r));
}

bool lock_acquire(LockState& s, bool recursive, bool block, Timeout timeout) {
  const std::uint64_t me = thread_token();
  if (s.owner.load(std::memory_order_relaxed) == me) {
    if (recursive) {
      s.depth.fetch_add(1, std::memory_order_relaxed);
      return true;
    }
    // Only this thread could release it: waiting can only time out.
    if (!block) return false;
    if (!timeout) throw StateError("Lock.acquire(): the calling thread already holds this Lock (deadlock)");
    std::this_thread::sleep_for(std::max(*timeout, std::chrono::nanoseconds{0}));
    return false;
  }
  if (try_take(s, me)) return true;
  if (!block) return false;
  Deadline deadline(timeout);
  AdaptiveSpin spinner(s.spin);
  if (spinner.spin([&] { return s.owner.load(std::memory_order_relaxed) == 0 && try_take(s, me); }, deadline))
    return true;
  s.sleepers.fetch_add(1);
  struct Leave {
    LockState& s;
    ~Leave() { s.sleepers.fetch_sub(1); }
  } leave{s};
  for (;;) {
    std::uint32_t seen = s.seq.load();
    if (try_take(s, me)) return true;
    if (deadline.expired()) return false;
    auto wake_at = std::chrono::steady_clock::now() + kDeadHolderPoll;
    if (auto at = deadline.at(); at && *at < wake_at) wake_at = *at;
    spinner.sleep(s.seq, seen, wake_at);
  }
}

void lock_release(LockState& s, bool recursive, const char* who) {
  if (s.owner.load(std::memory_order_relaxed) != thread_token())
    throw StateError(std::string(who) + ".release(): the calling thread does not hold it");
  if (recursive) {
    std::uint32_t depth = s.depth.load(std::memory_order_relaxed);
    if (depth > 1) {
      s.depth.store(depth - 1, std::memory_order_relaxed);
      return;
    }
  }
  unlock_now(s);
}

std::uint32_t lock_release_all(LockState& s) {
  std::uint32_t depth = s.depth.load(std::memory_order_relaxed);
  unlock_now(s);
  return depth;
}

void lock_restore(LockState& s, std::uint32_t depth) {
  lock_acquire(s, false, true, forever);
  s.depth.store(depth, std::memory_order_relaxed);
}

void release_locked_mapping(void* p, std::size_t bytes, const LockState& lock) noexcept {
  if (lock.owner.load(std::memory_order_relaxed) != 0 &&
      lock.owner_pid.load(std::memory_order_relaxed) == my_pid())
    return;  // see the header: kept mapped while this process holds the lock inside
  unmap_shared(p, bytes);
}

// --- other shared states -------------------------------------------------------------------------

struct SemaphoreState {
  SemaphoreState(std::uint32_t v, std::uint32_t m, bool b) : value(v), max(m), bounded(b) {}
  std::atomic<std::uint32_t> value;  // futex word
  std::atomic<std::uint32_t> sleepers{0};
  SpinStats spin;
  const std::uint32_t max;
  const bool bounded;
};

struct ConditionState {
  std::atomic<std::uint32_t> seq{0};      // futex word: bumped by every notify that wakes someone
  std::atomic<std::uint32_t> tokens{0};   // wake-ups handed out and not yet taken
  std::atomic<std::uint32_t> pending{0};  // waiters not yet handed a wake-up (under the lock)
  SpinStats spin;
};

struct EventState {
  // bit 0: set; bit 1: someone sleeps on it; bits 2..31: count of set() calls that set it.
  std::atomic<std::uint32_t> word{0};
  SpinStats spin;
};

struct BarrierState {
  BarrierState(std::uint32_t n, std::int64_t t) : parties(n), timeout_ns(t) {}
  LockState lock;                      // guards everything below; robust against a dying party
  std::atomic<std::uint32_t> seq{0};   // futex word: bumped by every state change
  std::atomic<std::int32_t> state{0};  // 0 filling, 1 draining, -1 resetting, -2 broken
  std::atomic<std::uint32_t> count{0};
  SpinStats spin;
  const std::uint32_t parties;
  const std::int64_t timeout_ns;  // -1 = forever
};

}  // namespace detail

// --- Lock / RLock ---------------------------------------------------------------------------------

Lock::Lock() : s_(detail::make_locked_object<detail::LockState>(0)) {}
bool Lock::acquire(bool block, Timeout timeout) { return detail::lock_acquire(*s_, false, block, timeout); }
void Lock::release() { detail::lock_release(*s_, false, "Lock"); }

RLock::RLock() : s_(detail::make_locked_object<detail::LockState>(0)) {}
bool RLock::acquire(bool block, Timeout timeout) { return detail::lock_acquire(*s_, true, block, timeout); }
void RLock::release() { detail::lock_release(*s_, true, "RLock"); }
unsigned RLock::depth() const { return held() ? s_->depth.load(std::memory_order_relaxed) : 0; }

// --- Semaphore ------------------------------------------------------------------------------------

namespace {
// Counts live in 32-bit futex words. They come in as u64 so that one too large for that (or a
// negative one converted to unsigned) is refused here rather than cut to its low 32 bits.
std::uint32_t checked_count(std::uint64_t n, const char* what) {
  if (n > UINT32_MAX)
    throw ValueError(std::string("mpx: ") + what + " must be at most " + std::to_string(UINT32_MAX) +
                     ", not " + std::to_string(n) + " (a negative number converts to a huge one)");
  return static_cast<std::uint32_t>(n);
}

bool try_decrement(detail::SemaphoreState& s) {
  std::uint32_t v = s.value.load();
  while (v > 0)
    if (s.value.compare_exchange_weak(v, v - 1)) return true;
  return false;
}
}  // namespace

Semaphore::Semaphore(std::uint64_t value) : Semaphore(value, false) {}

Semaphore::Semaphore(std::uint64_t value, bool bounded) {
  const std::uint32_t v = checked_count(value, bounded ? "BoundedSemaphore(value)" : "Semaphore(value)");
  s_ = detail::make_shared_object<detail::SemaphoreState>(v, bounded ? v : UINT32_MAX, bounded);
}

bool Semaphore::acquire(bool block, Timeout timeout) {
  auto& s = *s_;
  if (try_decrement(s)) return true;
  if (!block) return false;
  detail::Deadline deadline(timeout);
  detail::AdaptiveSpin spinner(s.spin);
  if (spinner.spin([&] { return try_decrement(s); }, deadline)) return true;
  s.sleepers.fetch_add(1);
  struct Leave {
    detail::SemaphoreState& s;
    ~Leave() { s.sleepers.fetch_sub(1); }
  } leave{s};
  for (;;) {
    if (try_decrement(s)) return true;
    if (deadline.expired()) return false;
    spinner.sleep(s.value, 0, deadline);
  }
}

void Semaphore::release(std::uint64_t count) {
  auto& s = *s_;
  const std::uint32_t n =
      checked_count(count, s.bounded ? "BoundedSemaphore.release(n)" : "Semaphore.release(n)");
  if (n == 0) return;
  std::uint32_t v = s.value.load();
  do {
    if (static_cast<std::uint64_t>(v) + n > s.max) {
      if (s.bounded) throw StateError("BoundedSemaphore.release(): released too many times");
      throw ValueError("Semaphore.release(): the value would overflow");
    }
  } while (!s.value.compare_exchange_weak(v, v + n));
  if (s.sleepers.load() != 0) {
    s.spin.note_wake();
    detail::futex_wake(s.value, n > INT_MAX ? INT_MAX : static_cast<int>(n));
  }
}

unsigned Semaphore::get_value() const { return s_->value.load(); }

// --- Condition ------------------------------------------------------------------------------------

Condition::Condition() : Condition(RLock()) {}
Condition::Condition(Lock lock)
    : lock_(std::move(lock.s_)),
      recursive_(false),
      s_(detail::make_shared_object<detail::ConditionState>()) {}
Condition::Condition(RLock lock)
    : lock_(std::move(lock.s_)), recursive_(true), s_(detail::make_shared_object<detail::ConditionState>()) {}

bool Condition::acquire(bool block, Timeout timeout) {
  return detail::lock_acquire(*lock_, recursive_, block, timeout);
}
void Condition::release() { detail::lock_release(*lock_, recursive_, "Condition"); }

bool Condition::wait(Timeout timeout) {
  auto& lock = *lock_;
  auto& c = *s_;
  if (!detail::lock_held_by_me(lock))
    throw StateError("Condition.wait(): the calling thread does not hold the lock");
  c.pending.fetch_add(1, std::memory_order_relaxed);
  const std::uint32_t registered = c.seq.load();
  // Only a notify after this waiter registered (seq moved on) may wake it: earlier wake-ups
  // belong to earlier waiters.
  auto take_wakeup = [&] {
    if (c.seq.load() == registered) return false;
    std::uint32_t t = c.tokens.load();
    while (t > 0)
      if (c.tokens.compare_exchange_weak(t, t - 1)) return true;
    return false;
  };
  std::uint32_t depth = detail::lock_release_all(lock);
  detail::Deadline deadline(timeout);
  bool woken;
  {
    detail::AdaptiveSpin spinner(c.spin);
    woken = spinner.spin(take_wakeup, deadline);
    while (!woken) {
      std::uint32_t seen = c.seq.load();
      if (take_wakeup()) {
        woken = true;
        break;
      }
      if (deadline.expired()) break;
      spinner.sleep(c.seq, seen, deadline);
    }
  }
  detail::lock_restore(lock, depth);
  if (!woken) {
    // A notify may have come between the timeout and getting the lock back: take it then;
    // otherwise stop counting as a waiter.
    if (take_wakeup())
      woken = true;
    else
      c.pending.fetch_sub(1, std::memory_order_relaxed);
  }
  return woken;
}

void Condition::notify(std::uint64_t count) {
  auto& c = *s_;
  if (!detail::lock_held_by_me(*lock_))
    throw StateError("Condition.notify(): the calling thread does not hold the lock");
  const std::uint32_t n = checked_count(count, "Condition.notify(n)");
  std::uint32_t pending = c.pending.load(std::memory_order_relaxed);
  std::uint32_t k = std::min<std::uint32_t>(n, pending);
  if (k == 0) return;
  c.pending.store(pending - k, std::memory_order_relaxed);
  c.tokens.fetch_add(k);
  c.seq.fetch_add(1);
  // Wake them all: the kernel does not know which sleepers registered before this notify.
  c.spin.note_wake();
  detail::futex_wake(c.seq);
}

void Condition::notify_all() { notify(UINT32_MAX); }

// --- Event ----------------------------------------------------------------------------------------

Event::Event() : s_(detail::make_shared_object<detail::EventState>()) {}

bool Event::is_set() const { return s_->word.load() & 1u; }

void Event::set() {
  auto& w = s_->word;
  std::uint32_t old = w.load();
  std::uint32_t next;
  do {
    if (old & 1u) return;
    next = (((old >> 2) + 1) << 2) | 1u;  // new generation, set, nobody asleep
  } while (!w.compare_exchange_weak(old, next));
  if (old & 2u) {
    s_->spin.note_wake();
    detail::futex_wake(w);
  }
}

void Event::clear() { s_->word.fetch_and(~1u); }

bool Event::wait(Timeout timeout) {
  auto& w = s_->word;
  std::uint32_t seen = w.load();
  if (seen & 1u) return true;
  const std::uint32_t generation = seen >> 2;
  auto fired = [&](std::uint32_t v) { return (v & 1u) || (v >> 2) != generation; };
  detail::Deadline deadline(timeout);
  detail::AdaptiveSpin spinner(s_->spin);
  if (spinner.spin([&] { return fired(w.load()); }, deadline)) return true;
  for (;;) {
    seen = w.load();
    if (fired(seen)) return true;
    if (deadline.expired()) return false;
    if (!(seen & 2u) && !w.compare_exchange_strong(seen, seen | 2u)) continue;
    spinner.sleep(w, seen | 2u, deadline);
  }
}

// --- Barrier --------------------------------------------------------------------------------------

namespace {
enum : std::int32_t { kFilling = 0, kDraining = 1, kResetting = -1, kBroken = -2 };

struct BarrierGuard {
  detail::LockState& lock;
  explicit BarrierGuard(detail::LockState& l) : lock(l) { detail::lock_acquire(lock, false, true, forever); }
  ~BarrierGuard() { detail::lock_release(lock, false, "Barrier"); }
  BarrierGuard(const BarrierGuard&) = delete;
  BarrierGuard& operator=(const BarrierGuard&) = delete;
};

void barrier_notify_all(detail::BarrierState& s) {
  s.seq.fetch_add(1);
  s.spin.note_wake();
  detail::futex_wake(s.seq);
}

void barrier_break(detail::BarrierState& s) {
  s.state.store(kBroken);
  barrier_notify_all(s);
}

// With the lock held: releases it, waits for a state change or the deadline, takes it back.
// False once the deadline has passed.
bool barrier_wait_change(detail::BarrierState& s, const detail::Deadline& deadline) {
  if (deadline.expired()) return false;
  std::uint32_t seen = s.seq.load();
  detail::lock_release(s.lock, false, "Barrier");
  {
    detail::AdaptiveSpin spinner(s.spin);
    if (!spinner.spin([&] { return s.seq.load() != seen; }, deadline)) spinner.sleep(s.seq, seen, deadline);
  }
  detail::lock_acquire(s.lock, false, true, forever);
  return !deadline.expired();
}
}  // namespace

Barrier::Barrier(std::uint64_t parties, std::function<void()> action, Timeout timeout) {
  if (parties == 0) throw ValueError("Barrier: parties must be at least 1");
  const std::uint32_t n = checked_count(parties, "Barrier(parties)");
  s_ = detail::make_locked_object<detail::BarrierState>(0, n, timeout ? timeout->count() : -1);
  if (action) action_ = std::make_shared<const std::function<void()>>(std::move(action));
}

unsigned Barrier::wait(Timeout timeout) {
  auto& s = *s_;
  if (!timeout && s.timeout_ns >= 0) timeout = std::chrono::nanoseconds{s.timeout_ns};
  detail::Deadline deadline(timeout);
  BarrierGuard guard(s.lock);
  // Wait while the previous round drains or a reset completes.
  while (s.state.load() == kDraining || s.state.load() == kResetting) {
    if (!barrier_wait_change(s, deadline) && (s.state.load() == kDraining || s.state.load() == kResetting)) {
      barrier_break(s);
      throw BrokenBarrierError("Barrier.wait(): timed out waiting for the previous round to drain");
    }
  }
  if (s.state.load() < 0) throw BrokenBarrierError("Barrier.wait(): the barrier is broken");
  const std::uint32_t index = s.count.fetch_add(1);
  struct Exit {  // Python's `finally: count -= 1; _exit()`
    detail::BarrierState& s;
    ~Exit() {
      if (s.count.fetch_sub(1) == 1) {
        std::int32_t st = s.state.load();
        if (st == kResetting || st == kDraining) {
          s.state.store(kFilling);
          barrier_notify_all(s);
        }
      }
    }
  } exit{s};
  if (index + 1 == s.parties) {
    try {
      if (action_) (*action_)();
      s.state.store(kDraining);
      barrier_notify_all(s);
    } catch (...) {
      barrier_break(s);
      throw;
    }
  } else {
    while (s.state.load() == kFilling) {
      if (!barrier_wait_change(s, deadline) && s.state.load() == kFilling) {
        barrier_break(s);
        throw BrokenBarrierError("Barrier.wait(): timed out");
      }
    }
    if (s.state.load() < 0) throw BrokenBarrierError("Barrier.wait(): the barrier was broken or reset");
  }
  return index;
}

void Barrier::reset() {
  auto& s = *s_;
  BarrierGuard guard(s.lock);
  if (s.count.load() > 0) {
    std::int32_t st = s.state.load();
    if (st == kFilling || st == kBroken) s.state.store(kResetting);
  } else {
    s.state.store(kFilling);
  }
  barrier_notify_all(s);
}

void Barrier::abort() {
  auto& s = *s_;
  BarrierGuard guard(s.lock);
  barrier_break(s);
}

unsigned Barrier::parties() const { return s_->parties; }
unsigned Barrier::n_waiting() const { return s_->state.load() == kFilling ? s_->count.load() : 0; }
bool Barrier::broken() const { return s_->state.load() == kBroken; }

// --- Crossing to children that are not forks (forkserver, spawn) ----------------------------------

namespace detail {

void process_handle<Condition>::encode(const Condition& h, StateWriter& w) {
  w.state(h.lock_.get());
  w.state(h.s_.get());
  w.word(h.recursive_ ? 1 : 0);
}

Condition process_handle<Condition>::decode(StateReader& r) {
  auto lock = adopt_shared_state<LockState>(r.state());
  auto s = adopt_shared_state<ConditionState>(r.state());
  return Condition(std::move(lock), r.word() != 0, std::move(s));
}

void process_handle<Barrier>::encode(const Barrier& h, StateWriter& w) {
  w.state(h.s_.get());
  if (!h.action_) {
    w.word(0);
    return;
  }
  auto* f = h.action_->target<void (*)()>();
  if (!f)
    throw ValueError(
        "Barrier: its action exists only in this process (it is no plain function pointer), so the barrier "
        "cannot cross to a child that is not a fork; make the action a function (&f or +[] { ... })");
  w.word(1);
  w.code(reinterpret_cast<const void*>(*f));
}

Barrier process_handle<Barrier>::decode(StateReader& r) {
  auto s = adopt_shared_state<BarrierState>(r.state());
  std::shared_ptr<const std::function<void()>> action;
  if (r.word() != 0)
    action = std::make_shared<const std::function<void()>>(reinterpret_cast<void (*)()>(r.code()));
  return Barrier(std::move(s), std::move(action));
}

}  // namespace detail

}  // namespace mpx
