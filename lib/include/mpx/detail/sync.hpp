// The shared-memory state behind Lock and RLock, for templates (Value, Array) that embed one.
//
// Why a robust pthread mutex underneath, rather than a bare futex with an owner tid: when a
// thread dies holding a robust mutex, the kernel itself marks it (FUTEX_OWNER_DIED, walking the
// thread's robust list at exit), so the next acquirer learns it for certain and at once — no
// /proc polling, and no pid-reuse guesswork (pid_max is often 32768). The mutex is only ever
// try-locked: sleeping happens on our own futex word `seq`, so every wait takes a
// CLOCK_MONOTONIC deadline and spins adaptively first; a sleeper re-tries every few tens of
// milliseconds so that a holder's death (which wakes nobody on `seq`) is noticed promptly.
// Ownership for recursion and release checks is a random 64-bit token per thread, renewed in a
// forked child: it tells processes and threads apart and cannot be confused by a reused tid.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#include <mpx/detail/futex.hpp>
#include <mpx/detail/shm.hpp>
#include <mpx/timeout.hpp>

namespace mpx::detail {

struct LockState {
  LockState();  // a robust, process-shared mutex; not copyable (lives at one address)
  LockState(const LockState&) = delete;
  LockState& operator=(const LockState&) = delete;

  pthread_mutex_t mutex;
  std::atomic<std::uint64_t> owner{0};     // holder's thread token; 0 = free
  std::atomic<std::int32_t> owner_pid{0};  // holder's pid, for the death warning and unmapping
  std::atomic<std::uint32_t> depth{0};     // recursion depth (RLock)
  std::atomic<std::uint32_t> seq{0};       // futex word: bumped by a release that has sleepers
  std::atomic<std::uint32_t> sleepers{0};  // threads asleep on seq (dead ones linger: harmless)
  SpinStats spin;
};

// The calling thread's ownership token (nonzero; new in every forked child).
std::uint64_t thread_token();

// Lock operations shared by Lock, RLock, Condition and the sharedctypes.
bool lock_acquire(LockState& s, bool recursive, bool block, Timeout timeout);
void lock_release(LockState& s, bool recursive, const char* who);
inline bool lock_held_by_me(const LockState& s) {
  return s.owner.load(std::memory_order_relaxed) == thread_token();
}
// Condition::wait: drop every recursion level at once, and take them back.
std::uint32_t lock_release_all(LockState& s);
void lock_restore(LockState& s, std::uint32_t depth);

// Unmaps a shared object unless a thread of this process holds the lock inside it: glibc keeps
// a held robust mutex on the thread's robust list, which the kernel walks when the thread dies
// and which glibc updates on the next lock operation — it must never point into an unmapping.
// In that (rare, user-error) case the mapping is kept for the life of the process.
void release_locked_mapping(void* p, std::size_t bytes, const LockState& lock) noexcept;

// Like make_shared_object_with_extra, for a LockState or a T whose member `lock` is one.
template <class T, class... Args>
std::shared_ptr<T> make_locked_object(std::size_t extra, Args&&... args) {
  return make_shared_object_releasing<T>(
      extra,
      [](T* o, std::size_t bytes) {
        if constexpr (std::is_same_v<T, LockState>)
          release_locked_mapping(o, bytes, *o);
        else
          release_locked_mapping(o, bytes, o->lock);
      },
      std::forward<Args>(args)...);
}

}  // namespace mpx::detail
