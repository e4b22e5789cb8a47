// Leader/follower waiting, the direct read of a single busy worker, and the result thread that
// leads when nobody waits and runs every callback.
#include "pool/leader.hpp"

#include <mpx/detail/timespec.hpp>
#include <mpx/errors.hpp>

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/post.hpp>
#pragma GCC diagnostic pop

#include "pool/core.hpp"

namespace mpx::detail {

Leader::~Leader() {
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void Leader::start() {
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) throw Error(std::string("mpx::Pool: eventfd: ") + std::strerror(errno));
}

void Leader::wake_io() {
  boost::asio::post(core_.io_, [] {});
}

// A leader reading one worker's socket directly (direct_wait) sleeps in ppoll, not in the
// reactor: whatever would wake the reactor wakes it too.
void Leader::wake_direct_locked() {
  if (!direct_active_) return;
  std::uint64_t one = 1;
  [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
}

void Leader::notify_followers() {
  std::lock_guard lk(core_.m_);
  if (followers_) lead_cv_.notify_all();
  wake_direct_locked();
}

bool Leader::tasks_queued_locked(std::size_t n, std::size_t pending, bool caller_waits) {
  if (leader_active_) {
    // Tasks already waiting mean every worker's window is full (results will make room and
    // the leader dispatches then) or a kick is on its way: no need to wake it.
    if (!kick_pending_ && pending == n) {
      kick_pending_ = true;
      wake_direct_locked();
      return true;
    }
  } else if (!caller_waits) {
    wake_rt_locked();
  }
  return false;
}

void Leader::kick() {
  {
    std::lock_guard lk(core_.m_);
    kick_pending_ = false;
  }
  core_.dispatch_and_write();
}

bool Leader::wait(const Waitable& w, const Deadline& d) {
  if (w.is_ready()) return true;
  if (on_callback_thread())
    throw StateError("mpx::Pool: waiting for a pool result inside a pool callback would deadlock");
  std::unique_lock lk(core_.m_);
  for (;;) {
    if (w.is_ready()) return true;
    if (!leader_active_) {
      leader_active_ = true;
      lk.unlock();
      try {
        lead(&w, d, false);
      } catch (...) {
        lk.lock();
        release_lead(false);
        throw;
      }
      lk.lock();
      release_lead(false);
      if (w.is_ready()) return true;
      if (d.expired()) return false;
      continue;
    }
    if (d.expired()) return false;
    ++followers_;
    if (d.infinite())
      lead_cv_.wait(lk);
    else
      lead_cv_.wait_until(lk, *d.at());
    --followers_;
  }
}

// rt: the result thread leads for nobody in particular, until nothing is outstanding or it has
// callbacks to run.
void Leader::lead(const Waitable* w, const Deadline& d, bool rt) {
  core_.dispatch_and_write();
  for (;;) {
    if (w && w->is_ready()) return;
    if (rt && (core_.outstanding_.load() == 0 || callbacks_pending_.load() || rt_stop_flag_.load())) return;
    if (d.expired()) return;
    if (w && direct_wait(*w, d)) continue;
    if (d.infinite()) {
      core_.io_.run_one();
    } else {
      auto left = d.remaining();
      if (*left <= std::chrono::nanoseconds::zero()) return;
      core_.io_.run_one_for(*left);
    }
  }
}

// Under the pool mutex.
void Leader::release_lead(bool rt) {
  leader_active_ = false;
  if (followers_) lead_cv_.notify_all();
  if (!rt && core_.outstanding_.load() > 0) wake_rt_locked();
}

void Leader::wake_rt_locked() {
  if (rt_stop_) return;
  if (!rt_) {
    rt_ = new std::thread([self = core_.shared_from_this()] { self->leader_.rt_main(); });
    rt_id_.store(rt_->get_id(), std::memory_order_release);
  } else {
    rt_cv_.notify_one();
  }
}

void Leader::schedule_callbacks(std::shared_ptr<ResultStateBase> s) {
  {
    std::lock_guard lk(core_.m_);
    if (!rt_stop_) {
      callbacks_.push_back(std::move(s));
      callbacks_pending_ = true;
      wake_rt_locked();
      if (rt_leads_) wake_io();  // it is inside run_one(): make it look at its queue
      return;
    }
  }
  s->run_callbacks();  // the pool is gone: nobody else will
}

// Runs the queued callbacks without the mutex; false if there were none.
bool Leader::run_callbacks(std::unique_lock<std::mutex>& lk) {
  if (callbacks_.empty()) return false;
  auto batch = std::move(callbacks_);
  callbacks_.clear();
  callbacks_pending_ = false;
  rt_in_callbacks_ = true;
  lk.unlock();
  for (auto& s : batch) s->run_callbacks();
  batch.clear();
  lk.lock();
  rt_in_callbacks_ = false;
  if (callbacks_.empty()) callbacks_done_cv_.notify_all();
  if (followers_) lead_cv_.notify_all();
  if (leader_active_) {  // its result may be one that just settled
    wake_io();
    wake_direct_locked();
  }
  return true;
}

void Leader::rt_main() {
  std::unique_lock lk(core_.m_);
  for (;;) {
    if (run_callbacks(lk)) continue;
    if (rt_stop_) return;
    if (!leader_active_ && core_.outstanding_.load() > 0) {
      leader_active_ = rt_leads_ = true;
      lk.unlock();
      lead(nullptr, Deadline::never(), true);
      lk.lock();
      rt_leads_ = false;
      release_lead(true);
      continue;
    }
    rt_cv_.wait(lk);
  }
}

void Leader::wait_callbacks_done(std::unique_lock<std::mutex>& lk) {
  // As in Python, callbacks have run once join() returns (unless it is called from one).
  if (!on_callback_thread())
    callbacks_done_cv_.wait(lk, [&] { return (callbacks_.empty() && !rt_in_callbacks_) || !rt_; });
}

void Leader::stop_thread() noexcept {
  std::thread* t;
  {
    std::lock_guard lk(core_.m_);
    rt_stop_ = true;
    rt_stop_flag_ = true;
    rt_cv_.notify_all();
    t = std::exchange(rt_, nullptr);
  }
  wake_io();
  if (t) {
    if (t->get_id() == std::this_thread::get_id())
      t->detach();  // ~Pool inside a callback: the thread ends after it returns
    else
      t->join();
    delete t;
  }
}

// A caller waiting for a result while only one worker has tasks in flight, nothing waits to be
// sent and no write is pending, reads that worker's socket itself: one ppoll and one recv per
// answer instead of a reactor round (epoll_wait, completion queue, possibly a speculative read).
// It also wakes for the wake eventfd (new tasks, callbacks, terminate) and for the worker's exit
// (its pidfd, or the spawner's reports), and leaves those to the reactor. True when it
// waited (the caller re-checks its result), false when the reactor must run.
bool Leader::direct_wait(const Waitable& w, const Deadline& d) {
  WorkerPtr x;
  int exit_fd = -1;
  {
    std::lock_guard lk(core_.m_);
    if (kick_pending_) return false;
    x = core_.sole_busy_worker_locked(exit_fd);
    if (!x) return false;
    if (w.is_ready()) return true;
    direct_active_ = true;
  }
  pollfd p[3] = {{x->ch.sock.native_handle(), POLLIN, 0}, {wake_fd_, POLLIN, 0}, {exit_fd, POLLIN, 0}};
  const nfds_t nfds = exit_fd >= 0 ? 3 : 2;
  int r = 0;
  {
    // The answer often comes within a cross-CPU wake-up's time: polling the same fds that long
    // first saves this thread the wake-up (the budget adapts, as in the synchronize waits).
    AdaptiveSpin spin(direct_spin_);
    if (!spin.spin_polling([&] { return (r = ::poll(p, nfds, 0)) != 0; }, d)) {
      timespec ts{};
      if (auto left = d.remaining()) {
        ts = to_timespec(left->count());
      }
      r = ::ppoll(p, nfds, d.infinite() ? nullptr : &ts, nullptr);
    }
  }
  {
    std::lock_guard lk(core_.m_);
    direct_active_ = false;
  }
  if (r <= 0) return true;  // timeout or signal: the caller checks its deadline
  if (p[1].revents) {
    std::uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(wake_fd_, &v, sizeof v);
  }
  if (p[0].revents && !core_.read_available(x, false)) {
    std::lock_guard lk(core_.m_);  // EOF or error: the exit report follows
    x->usable = false;
  }
  return !p[1].revents && !p[2].revents;
}

}  // namespace mpx::detail
