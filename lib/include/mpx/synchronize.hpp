// Process-shared synchronization primitives, like Python's multiprocessing.synchronize.
//
// Each primitive lives in its own anonymous shared mapping; a handle is a cheap copyable
// reference to it. Create the primitive before forking (mpx::Process::start, a pool...) and use
// the handle (or a copy) in the children: all copies in all those processes share one
// primitive. Handles are not transferable: another process gets them only by inheritance.
//
// Lock and RLock survive their holder's death: if a thread or process dies holding one, the
// next acquire() succeeds (and logs a warning; the data the lock protected may be half-updated).
// Ownership is per thread of a process: only the holding thread may release, and a thread in a
// forked child never holds what its parent held.
//
// Every wait takes a Timeout. Waits spin briefly before they sleep, which turns a cross-CPU
// handoff into well under a microsecond instead of a futex wake-up (tens of microseconds on a
// small VM); the spin adapts per primitive and is bounded by detail::spin_limit_ns().
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>

#include <mpx/detail/process_handle.hpp>
#include <mpx/detail/sync.hpp>
#include <mpx/errors.hpp>
#include <mpx/timeout.hpp>

namespace mpx {

namespace detail {
struct SemaphoreState;
struct ConditionState;
struct EventState;
struct BarrierState;

// The time left until a time point of any clock, as a Timeout (0 once it has passed).
template <class Clock, class Duration>
Timeout until(const std::chrono::time_point<Clock, Duration>& t) {
  auto left = std::chrono::ceil<std::chrono::nanoseconds>(t - Clock::now());
  return left < std::chrono::nanoseconds{0} ? std::chrono::nanoseconds{0} : left;
}
template <class Rep, class Period>
Timeout for_duration(const std::chrono::duration<Rep, Period>& d) {
  return std::chrono::ceil<std::chrono::nanoseconds>(d);
}

// Adds lock()/unlock()/try_lock()/try_lock_for()/try_lock_until() over acquire()/release().
template <class Derived>
class Lockable {
 public:
  void lock() { self().acquire(true, forever); }
  void unlock() { self().release(); }
  bool try_lock() { return self().acquire(false); }
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    return self().acquire(true, detail::for_duration(d));
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    return self().acquire(true, detail::until(t));
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
};

}  // namespace detail

// A non-recursive lock. acquire() by the thread that already holds it cannot succeed: it
// returns false (non-blocking or timed, after the timeout) and throws StateError when it would
// wait forever, instead of deadlocking.
class Lock : public detail::Lockable<Lock> {
 public:
  Lock();
  bool acquire(bool block = true, Timeout timeout = forever);
  bool acquire(Timeout timeout) { return acquire(true, timeout); }
  void release();  // StateError unless the calling thread holds it
  // Whether the calling thread holds it.
  bool held() const { return detail::lock_held_by_me(*s_); }

 private:
  friend class Condition;
  template <class>
  friend struct detail::process_handle;
  explicit Lock(std::shared_ptr<detail::LockState> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::LockState> s_;
};

// A recursive lock: the holding thread may acquire again; it is free after as many releases.
class RLock : public detail::Lockable<RLock> {
 public:
  RLock();
  bool acquire(bool block = true, Timeout timeout = forever);
  bool acquire(Timeout timeout) { return acquire(true, timeout); }
  void release();  // StateError unless the calling thread holds it
  bool held() const { return detail::lock_held_by_me(*s_); }
  // How many times the calling thread holds it (0 if it does not).
  unsigned depth() const;

  // For shared objects that embed their own lock (Value, Array): a handle on that state.
  explicit RLock(std::shared_ptr<detail::LockState> state) : s_(std::move(state)) {}

 private:
  friend class Condition;
  template <class>
  friend struct detail::process_handle;
  std::shared_ptr<detail::LockState> s_;
};

// Counts (a semaphore's value, release(n), notify(n), a barrier's parties) are at most 2^32-1 (the
// value lives in a 32-bit futex word). They are taken as 64-bit so that a larger one, or a negative
// one converted to unsigned, is refused with ValueError instead of being cut down to its low 32
// bits (release(2^32) used to release nothing), as the manager proxies do.
class Semaphore {
 public:
  explicit Semaphore(std::uint64_t value = 1);  // ValueError above 2^32-1
  bool acquire(bool block = true, Timeout timeout = forever);
  bool acquire(Timeout timeout) { return acquire(true, timeout); }
  // Adds n (0 does nothing). ValueError if n or the new value would exceed 2^32-1; on a
  // BoundedSemaphore, StateError if it would exceed the initial value. A refused release leaves
  // the value unchanged.
  void release(std::uint64_t n = 1);
  unsigned get_value() const;

  // Lockable too, so std::lock_guard works on a semaphore used as a mutex.
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }

 protected:
  Semaphore(std::uint64_t value, bool bounded);
  explicit Semaphore(std::shared_ptr<detail::SemaphoreState> s) : s_(std::move(s)) {}

 private:
  template <class>
  friend struct detail::process_handle;
  std::shared_ptr<detail::SemaphoreState> s_;
};

class BoundedSemaphore : public Semaphore {
 public:
  explicit BoundedSemaphore(std::uint64_t value = 1) : Semaphore(value, true) {}

 private:
  template <class>
  friend struct detail::process_handle;
  explicit BoundedSemaphore(std::shared_ptr<detail::SemaphoreState> s) : Semaphore(std::move(s)) {}
};

// Over a Lock or an RLock (a new RLock by default). wait() releases the lock completely (every
// level of an RLock), sleeps, and takes it back as it was. notify(n) lets at most n of the
// threads waiting at that moment return true; a waiter whose wait ends by timeout returns false.
class Condition : public detail::Lockable<Condition> {
 public:
  Condition();
  explicit Condition(Lock lock);
  explicit Condition(RLock lock);

  bool acquire(bool block = true, Timeout timeout = forever);
  bool acquire(Timeout timeout) { return acquire(true, timeout); }
  void release();

  // StateError unless the calling thread holds the lock. False on timeout.
  bool wait(Timeout timeout = forever);
  // Waits until pred() holds (checked with the lock held); returns its last value.
  template <class Pred>
  bool wait_for(Pred pred, Timeout timeout = forever) {
    return detail::wait_for_predicate([this](Timeout left) { return wait(left); }, pred, timeout);
  }
  // Wakes at most n waiters (0: none). StateError unless the calling thread holds the lock;
  // ValueError if n exceeds 2^32-1 (notify_all() wakes them all).
  void notify(std::uint64_t n = 1);
  void notify_all();

 private:
  template <class>
  friend struct detail::process_handle;
  Condition(std::shared_ptr<detail::LockState> lock, bool recursive,
            std::shared_ptr<detail::ConditionState> s)
      : lock_(std::move(lock)), recursive_(recursive), s_(std::move(s)) {}
  std::shared_ptr<detail::LockState> lock_;
  bool recursive_;
  std::shared_ptr<detail::ConditionState> s_;
};

class Event {
 public:
  Event();
  bool is_set() const;
  void set();
  void clear();
  // True once the flag is set (also if it was set and cleared again while waiting); false on
  // timeout.
  bool wait(Timeout timeout = forever);

 private:
  template <class>
  friend struct detail::process_handle;
  explicit Event(std::shared_ptr<detail::EventState> s) : s_(std::move(s)) {}
  std::shared_ptr<detail::EventState> s_;
};

// Python's threading.Barrier semantics, across processes. The action runs in the last party to
// arrive (only in that process); if it throws, that wait() rethrows and the others get
// BrokenBarrierError.
class Barrier {
 public:
  // ValueError unless 1 <= parties <= 2^32-1.
  explicit Barrier(std::uint64_t parties, std::function<void()> action = {}, Timeout timeout = forever);
  // Returns this party's arrival index, 0..parties-1. `forever` means the constructor's timeout.
  // A wait that times out breaks the barrier; waiting on a broken barrier (or one reset/aborted
  // meanwhile) throws BrokenBarrierError.
  unsigned wait(Timeout timeout = forever);
  void reset();
  void abort();
  unsigned parties() const;
  unsigned n_waiting() const;
  bool broken() const;

 private:
  template <class>
  friend struct detail::process_handle;
  Barrier(std::shared_ptr<detail::BarrierState> s, std::shared_ptr<const std::function<void()>> action)
      : s_(std::move(s)), action_(std::move(action)) {}
  std::shared_ptr<detail::BarrierState> s_;
  std::shared_ptr<const std::function<void()>> action_;
};

// Handles a forkserver child can be given as Process arguments (<mpx/detail/process_handle.hpp>).
namespace detail {
template <>
struct process_handle<Lock> {
  static const void* state(const Lock& h) { return h.s_.get(); }
  static Lock adopt(void* p) { return Lock(adopt_shared_state<LockState>(p)); }
};
template <>
struct process_handle<RLock> {
  static const void* state(const RLock& h) { return h.s_.get(); }
  static RLock adopt(void* p) { return RLock(adopt_shared_state<LockState>(p)); }
};
template <>
struct process_handle<Semaphore> {
  static const void* state(const Semaphore& h) { return h.s_.get(); }
  static Semaphore adopt(void* p) { return Semaphore(adopt_shared_state<SemaphoreState>(p)); }
};
template <>
struct process_handle<BoundedSemaphore> {
  static const void* state(const BoundedSemaphore& h) { return h.s_.get(); }
  static BoundedSemaphore adopt(void* p) { return BoundedSemaphore(adopt_shared_state<SemaphoreState>(p)); }
};
template <>
struct process_handle<Event> {
  static const void* state(const Event& h) { return h.s_.get(); }
  static Event adopt(void* p) { return Event(adopt_shared_state<EventState>(p)); }
};
// lib/src/sync/synchronize.cpp
template <>
struct process_handle<Condition> {
  static void encode(const Condition& h, StateWriter& w);
  static Condition decode(StateReader& r);
};
template <>
struct process_handle<Barrier> {
  static void encode(const Barrier& h,
                     StateWriter& w);  // ValueError for an action that is no function pointer
  static Barrier decode(StateReader& r);
};
}  // namespace detail

}  // namespace mpx
