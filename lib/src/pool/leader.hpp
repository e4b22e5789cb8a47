// Who drives the pool's I/O: a waiting caller leads (runs the reactor, or reads its one busy
// worker directly), other waiters follow; with no caller waiting, the result thread leads. The
// result thread also runs every callback.
#pragma once

#include <mpx/detail/async_result.hpp>
#include <mpx/detail/futex.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

namespace mpx::detail {

class PoolCore;

// Leadership, in one sentence: whoever sets leader_active_ (under the pool mutex) is the only
// thread that runs the io_context and touches channel buffers until it clears it again; a
// cross-thread hand-off costs ~25 us here, so the thread that wants a result does the I/O.
class Leader {
 public:
  explicit Leader(PoolCore& core) : core_(core) {}
  ~Leader();
  Leader(const Leader&) = delete;
  Leader& operator=(const Leader&) = delete;

  void start();  // makes the wake eventfd
  int wake_fd() const noexcept { return wake_fd_; }

  bool wait(const Waitable& w, const Deadline& d);
  bool on_callback_thread() const noexcept {
    return std::this_thread::get_id() == rt_id_.load(std::memory_order_acquire);
  }
  void schedule_callbacks(std::shared_ptr<ResultStateBase> s);

  // Under the pool mutex, after `n` tasks were queued (`pending` now wait in all): wakes
  // whoever must dispatch them. True when the caller must post a kick() to the leader.
  bool tasks_queued_locked(std::size_t n, std::size_t pending, bool caller_waits);
  void kick();  // on the leader: the posted dispatch after tasks_queued_locked
  bool kick_pending_locked() const noexcept { return kick_pending_; }
  // Results landed (or tasks failed): followers and a direct_wait re-check theirs.
  void notify_followers();
  // Makes the leader's run_one() return.
  void wake_io();
  // For join(): waits until the callbacks scheduled so far have run (or there is no thread).
  void wait_callbacks_done(std::unique_lock<std::mutex>& lk);
  // Stops the result thread and joins it (detaches it when called on it).
  void stop_thread() noexcept;

 private:
  void lead(const Waitable* w, const Deadline& d, bool rt);
  void release_lead(bool rt);
  void wake_rt_locked();
  void wake_direct_locked();
  bool direct_wait(const Waitable& w, const Deadline& d);
  void rt_main();
  bool run_callbacks(std::unique_lock<std::mutex>& lk);

  PoolCore& core_;
  int wake_fd_ = -1;       // eventfd: wakes a leader in direct_wait
  SpinStats direct_spin_;  // what polling before sleeping in direct_wait has paid (the leader's)

  // Under the pool mutex (condition variables wait on it too):
  std::condition_variable lead_cv_;            // followers: results landed, or the lead is free
  std::condition_variable rt_cv_;              // the result thread: something to do
  std::condition_variable callbacks_done_cv_;  // join(): the callback queue ran dry
  bool leader_active_ = false;
  bool direct_active_ = false;  // the leader sleeps in direct_wait's ppoll: wake it by wake_fd_
  bool rt_leads_ = false;       // the leader is the result thread (callbacks must wake it)
  bool kick_pending_ = false;   // a kick() is posted and has not run yet
  unsigned followers_ = 0;
  std::deque<std::shared_ptr<ResultStateBase>> callbacks_;
  std::thread* rt_ = nullptr;  // a raw pointer: a forked copy of this object must never destroy it
  bool rt_stop_ = false;
  bool rt_in_callbacks_ = false;
  // Read without the mutex by the leading result thread and by on_callback_thread():
  std::atomic<bool> callbacks_pending_{false};
  std::atomic<bool> rt_stop_flag_{false};
  std::atomic<std::thread::id> rt_id_{};
};

}  // namespace mpx::detail
