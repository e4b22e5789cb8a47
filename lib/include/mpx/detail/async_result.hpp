// The completion side of an asynchronous result, shared by the pool and the managers' task
// queues: any layer fulfils a ResultState<T> with a value, an exception, or bytes plus a
// decoder, and the user holds an AsyncResult<T> (a copyable handle, like std::shared_future).
//
// Callbacks registered with then()/on_error() run on the producing layer's callback thread (its
// Driver decides), or at once in the registering thread when the result is already settled. A
// result counts as ready for get()/wait() only once the callbacks registered before completion
// have run ("settled"), so code after get() sees their effects.
#pragma once

#include <mpx/errors.hpp>
#include <mpx/timeout.hpp>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdio>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx {

template <class T>
class AsyncResult;

namespace detail {

// Something a waiting thread can test without taking locks.
class Waitable {
 public:
  virtual bool is_ready() const noexcept = 0;

 protected:
  ~Waitable() = default;
};

class ResultStateBase;

// The layer that produces results. A thread about to block on one of its results asks the driver
// instead, so the driver can let that thread do the I/O itself (no hand-off on the way back).
class Driver {
 public:
  virtual ~Driver() = default;
  // Blocks until w.is_ready() or the deadline passes; true when ready.
  virtual bool wait(const Waitable& w, const Deadline& deadline) = 0;
  // True on the thread that runs this driver's callbacks.
  virtual bool on_callback_thread() const noexcept = 0;
  // Arranges for s->run_callbacks() on the callback thread.
  virtual void schedule_callbacks(std::shared_ptr<ResultStateBase> s) = 0;
};

void report_callback_exception(std::exception_ptr e) noexcept;  // lib/src/pool/task.cpp

class ResultStateBase : public Waitable, public std::enable_shared_from_this<ResultStateBase> {
 public:
  // The driver is kept alive by the state ...
  explicit ResultStateBase(std::shared_ptr<Driver> driver = {}) : owned_driver_(std::move(driver)) {
    driver_ = owned_driver_.get();
  }
  // ... or, for a producer that settles every result before it goes away (the pool does), not.
  explicit ResultStateBase(Driver* driver) : driver_(driver) {}
  ResultStateBase(const ResultStateBase&) = delete;
  ResultStateBase& operator=(const ResultStateBase&) = delete;
  virtual ~ResultStateBase() = default;

  bool is_ready() const noexcept final { return phase_.load(std::memory_order_acquire) == kSettled; }
  // Completed, callbacks possibly still running.
  bool is_done() const noexcept { return phase_.load(std::memory_order_acquire) >= kDone; }

  bool wait(Timeout timeout) const {
    if (is_ready()) return true;
    Deadline deadline(timeout);
    if (driver_) return driver_->wait(*this, deadline);
    std::unique_lock lk(m_);
    auto pred = [&] { return is_ready(); };
    if (deadline.infinite()) {
      cv_.wait(lk, pred);
      return true;
    }
    return cv_.wait_until(lk, *deadline.at(), pred);
  }

  // Precondition for the accessors below: is_done().
  bool failed() const noexcept { return error_ != nullptr; }
  const std::exception_ptr& error() const noexcept { return error_; }
  void rethrow_if_failed() const {
    if (error_) std::rethrow_exception(error_);
  }

  // First completion wins; later ones are ignored (false).
  bool set_exception(std::exception_ptr e) {
    std::unique_lock lk(m_);
    if (phase_.load(std::memory_order_relaxed) != kPending) return false;
    error_ = std::move(e);
    finish(lk);
    return true;
  }

  // Runs the callbacks pending on a completed result, then marks it settled. Called by the
  // driver's callback thread (or by the completing thread when there is no driver).
  void run_callbacks() {
    for (;;) {
      std::vector<Callback> batch;
      {
        std::lock_guard lk(m_);
        if (callbacks_.empty()) {
          phase_.store(kSettled, std::memory_order_release);
          cv_.notify_all();
          return;
        }
        batch.swap(callbacks_);
      }
      for (auto& cb : batch) invoke(cb);
    }
  }

  Driver* driver() const noexcept { return driver_; }

 protected:
  struct Callback {
    bool on_success;
    std::function<void()> fn;
  };

  // For derived states: lock, check pending, store the value, then finish().
  std::unique_lock<std::mutex> lock() const { return std::unique_lock(m_); }
  bool pending_locked() const noexcept { return phase_.load(std::memory_order_relaxed) == kPending; }

  void finish(std::unique_lock<std::mutex>& lk) {
    if (callbacks_.empty()) {
      phase_.store(kSettled, std::memory_order_release);
      cv_.notify_all();
      return;
    }
    phase_.store(kDone, std::memory_order_release);
    lk.unlock();
    if (!driver_ || driver_->on_callback_thread())
      run_callbacks();
    else
      driver_->schedule_callbacks(shared_from_this());
  }

  void add_callback(bool on_success, std::function<void()> fn) {
    if (!fn) return;
    {
      std::lock_guard lk(m_);
      if (phase_.load(std::memory_order_relaxed) != kSettled) {
        callbacks_.push_back({on_success, std::move(fn)});
        return;
      }
    }
    invoke(Callback{on_success, std::move(fn)});  // already settled: at once, here
  }

 private:
  static constexpr int kPending = 0, kDone = 1, kSettled = 2;

  void invoke(const Callback& cb) const noexcept {
    if (cb.on_success == failed()) return;
    try {
      cb.fn();
    } catch (...) {
      report_callback_exception(std::current_exception());
    }
  }

  mutable std::mutex m_;
  mutable std::condition_variable cv_;
  std::atomic<int> phase_{kPending};
  std::exception_ptr error_;
  std::vector<Callback> callbacks_;
  Driver* driver_ = nullptr;
  std::shared_ptr<Driver> owned_driver_;
};

// A result of type T (T = void: completion only).
template <class T>
class ResultState : public ResultStateBase {
 public:
  using ResultStateBase::ResultStateBase;

  bool set_value(T value) {
    auto lk = lock();
    if (!pending_locked()) return false;
    value_.emplace(std::move(value));
    finish(lk);
    return true;
  }
  // Decodes in the completing thread; a decoder that throws fails the result instead.
  template <class Decoder>
  bool set_from_bytes(std::span<const std::byte> bytes, Decoder&& decode) {
    try {
      return set_value(std::forward<Decoder>(decode)(bytes));
    } catch (...) {
      return set_exception(std::current_exception());
    }
  }
  const T& value() const { return *value_; }  // precondition: is_done() && !failed()
  T& mutable_value() { return *value_; }

  void then(std::function<void(const T&)> f) {
    if (f) add_callback(true, [this, f = std::move(f)] { f(*value_); });
  }
  void on_error(std::function<void(std::exception_ptr)> f) {
    if (f) add_callback(false, [this, f = std::move(f)] { f(error()); });
  }

 private:
  std::optional<T> value_;
};

template <>
class ResultState<void> : public ResultStateBase {
 public:
  using ResultStateBase::ResultStateBase;

  bool set_value() {
    auto lk = lock();
    if (!pending_locked()) return false;
    finish(lk);
    return true;
  }
  template <class Decoder>
  bool set_from_bytes(std::span<const std::byte> bytes, Decoder&& decode) {
    try {
      std::forward<Decoder>(decode)(bytes);
      return set_value();
    } catch (...) {
      return set_exception(std::current_exception());
    }
  }
  void then(std::function<void()> f) {
    if (f) add_callback(true, std::move(f));
  }
  void on_error(std::function<void(std::exception_ptr)> f) {
    if (f) add_callback(false, [this, f = std::move(f)] { f(error()); });
  }
};

template <class T>
class AsyncResultBase {
 public:
  bool wait(Timeout timeout = forever) const { return state().wait(timeout); }
  bool ready() const { return state().is_ready(); }
  bool successful() const {
    if (!ready()) throw StateError("AsyncResult::successful(): the result is not ready");
    return !state().failed();
  }
  bool valid() const noexcept { return state_ != nullptr; }
  // The completion side, for layers that produce results.
  const std::shared_ptr<ResultState<T>>& state_ptr() const noexcept { return state_; }

 protected:
  AsyncResultBase() = default;
  explicit AsyncResultBase(std::shared_ptr<ResultState<T>> s) : state_(std::move(s)) {}
  ResultState<T>& state() const {
    if (!state_) throw StateError("AsyncResult: empty handle");
    return *state_;
  }
  void wait_or_throw(Timeout timeout) const {
    if (!state().wait(timeout)) throw TimeoutError("AsyncResult::get(): timed out");
    state_->rethrow_if_failed();
  }

  std::shared_ptr<ResultState<T>> state_;
};

}  // namespace detail

// The result of an asynchronous task: a copyable handle, like std::shared_future.
template <class T>
class AsyncResult : public detail::AsyncResultBase<T> {
 public:
  AsyncResult() = default;
  explicit AsyncResult(std::shared_ptr<detail::ResultState<T>> s)
      : detail::AsyncResultBase<T>(std::move(s)) {}

  // The value, or rethrows RemoteError / WorkerLost / StateError ...; TimeoutError on timeout.
  const T& get(Timeout timeout = forever) const {
    this->wait_or_throw(timeout);
    return this->state_->value();
  }
  // Python's callback: runs with the value on success.
  AsyncResult& then(std::function<void(const T&)> f) {
    this->state().then(std::move(f));
    return *this;
  }
  // Python's error_callback: runs with the exception on failure.
  AsyncResult& on_error(std::function<void(std::exception_ptr)> f) {
    this->state().on_error(std::move(f));
    return *this;
  }
};

template <>
class AsyncResult<void> : public detail::AsyncResultBase<void> {
 public:
  AsyncResult() = default;
  explicit AsyncResult(std::shared_ptr<detail::ResultState<void>> s)
      : detail::AsyncResultBase<void>(std::move(s)) {}

  void get(Timeout timeout = forever) const { wait_or_throw(timeout); }
  AsyncResult& then(std::function<void()> f) {
    state().then(std::move(f));
    return *this;
  }
  AsyncResult& on_error(std::function<void(std::exception_ptr)> f) {
    state().on_error(std::move(f));
    return *this;
  }
};

}  // namespace mpx
