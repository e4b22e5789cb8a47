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
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <string>
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

  // Runs f once the result is done, whatever the outcome (as then()/on_error() callbacks do).
  void on_done(std::function<void()> f) { add_callback(true, std::move(f), true); }

 protected:
  struct Callback {
    bool on_success;
    std::function<void()> fn;
    bool always = false;  // runs on success and on failure
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

  void add_callback(bool on_success, std::function<void()> fn, bool always = false) {
    if (!fn) return;
    {
      std::lock_guard lk(m_);
      if (phase_.load(std::memory_order_relaxed) != kSettled) {
        callbacks_.push_back({on_success, std::move(fn), always});
        return;
      }
    }
    invoke(Callback{on_success, std::move(fn), always});  // already settled: at once, here
  }

 private:
  static constexpr int kPending = 0, kDone = 1, kSettled = 2;

  void invoke(const Callback& cb) const noexcept {
    if (!cb.always && cb.on_success == failed()) return;
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
  // Completes `token` (a callback, asio::use_future, asio::use_awaitable, ...) with
  // (std::exception_ptr, T) -- (std::exception_ptr) for T = void -- on the executor associated
  // with it. Defined in <mpx/futures.hpp>, which brings the Asio headers it needs.
  template <class Token>
  auto async_get(Token&& token) const;
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

// ------------------------------------------------------------------------------------------
// concurrent.futures' wait() and as_completed(), over any range of AsyncResult<T>.
//
//   std::vector<mpx::AsyncResult<int>> rs;
//   for (int x : xs) rs.push_back(pool.submit(f, x));
//   auto [done, not_done] = mpx::wait(rs, mpx::ReturnWhen::first_completed, 5s);
//   for (const auto& r : mpx::as_completed(rs)) use(r.get());
// ------------------------------------------------------------------------------------------

enum class ReturnWhen { first_completed, first_exception, all_completed };

// Indices into the range that was waited on, in ascending order.
struct WaitResult {
  std::vector<std::size_t> done, not_done;
};

namespace detail {

template <class R>
struct async_result_value {};
template <class T>
struct async_result_value<AsyncResult<T>> {
  using type = T;
};
template <class R>
concept IsAsyncResult = requires {
  typename async_result_value<R>::type;
};

template <class Range>
concept AsyncResultRange =
    std::ranges::input_range<Range> && IsAsyncResult<std::remove_cvref_t<std::ranges::range_value_t<Range>>>;

// Completion order of a set of results, told by their on_done callbacks.
class CompletionLog {
 public:
  explicit CompletionLog(std::size_t n) : failed_(n, false) {}
  template <class T>
  void watch(const AsyncResult<T>& r, std::size_t index, const std::shared_ptr<CompletionLog>& self) {
    auto& st = *r.state_ptr();
    st.on_done([self, index, &st] { self->record(index, st.failed()); });
  }
  // The next completed index, in completion order; nullopt when the deadline passes first.
  std::optional<std::size_t> next(const Deadline& deadline) {
    std::unique_lock lk(m_);
    auto pred = [&] { return !order_.empty() && taken_ < order_.size(); };
    if (deadline.infinite())
      cv_.wait(lk, pred);
    else if (!cv_.wait_until(lk, *deadline.at(), pred))
      return std::nullopt;
    return order_[taken_++];
  }
  // Blocks until `stop` (given the completed count and whether any failed) holds or the deadline.
  template <class Stop>
  void wait(const Deadline& deadline, Stop stop) {
    std::unique_lock lk(m_);
    auto pred = [&] { return stop(order_.size(), any_failed_); };
    if (deadline.infinite())
      cv_.wait(lk, pred);
    else
      cv_.wait_until(lk, *deadline.at(), pred);
  }

 private:
  void record(std::size_t index, bool failed) {
    std::lock_guard lk(m_);
    order_.push_back(index);
    failed_[index] = failed;
    any_failed_ = any_failed_ || failed;
    cv_.notify_all();
  }
  std::mutex m_;
  std::condition_variable cv_;
  std::vector<std::size_t> order_;
  std::vector<bool> failed_;
  std::size_t taken_ = 0;
  bool any_failed_ = false;
};

}  // namespace detail

// Waits until the condition `when` holds for `results` or the timeout passes (no exception on
// timeout: whatever is not done is in not_done). Empty handles count as not done.
template <detail::AsyncResultRange Range>
WaitResult wait(const Range& results, ReturnWhen when = ReturnWhen::all_completed,
                Timeout timeout = forever) {
  std::vector<std::ranges::range_value_t<Range>> rs(std::ranges::begin(results), std::ranges::end(results));
  detail::Deadline deadline(timeout);
  if (when == ReturnWhen::all_completed) {
    // One at a time through each result's own wait: its driver may let this thread do the I/O.
    for (const auto& r : rs)
      if (r.valid() && !r.wait(deadline.remaining())) break;
  } else {
    auto log = std::make_shared<detail::CompletionLog>(rs.size());
    std::size_t watched = 0;
    for (std::size_t i = 0; i < rs.size(); ++i)
      if (rs[i].valid()) {
        log->watch(rs[i], i, log);
        ++watched;
      }
    log->wait(deadline, [&](std::size_t completed, bool any_failed) {
      return completed == watched || (when == ReturnWhen::first_completed && completed > 0) ||
             (when == ReturnWhen::first_exception && any_failed);
    });
  }
  WaitResult out;
  for (std::size_t i = 0; i < rs.size(); ++i) {
    // A result completes, then its callbacks run: give one that is done its last moment to settle.
    bool done = rs[i].valid() && (rs[i].ready() || (rs[i].state_ptr()->is_done() && rs[i].wait(forever)));
    (done ? out.done : out.not_done).push_back(i);
  }
  return out;
}

// The results in the order they complete, as an input range; advancing past the last one that
// completed in time throws TimeoutError. Empty handles are skipped.
template <class T>
class AsCompleted {
 public:
  template <class Range>
  AsCompleted(const Range& results, Timeout timeout)
      : results_(std::ranges::begin(results), std::ranges::end(results)),
        log_(std::make_shared<detail::CompletionLog>(results_.size())),
        deadline_(timeout) {
    for (std::size_t i = 0; i < results_.size(); ++i)
      if (results_[i].valid()) {
        log_->watch(results_[i], i, log_);
        ++left_;
      }
  }

  class iterator {
   public:
    using value_type = AsyncResult<T>;
    using difference_type = std::ptrdiff_t;
    iterator() = default;
    const AsyncResult<T>& operator*() const { return owner_->results_[current_]; }
    iterator& operator++() {
      current_ = owner_->next();
      return *this;
    }
    void operator++(int) { ++*this; }
    bool operator==(std::default_sentinel_t) const { return current_ == kEnd; }

   private:
    friend class AsCompleted;
    iterator(AsCompleted* owner, std::size_t current) : owner_(owner), current_(current) {}
    AsCompleted* owner_ = nullptr;
    std::size_t current_ = kEnd;
  };

  iterator begin() { return iterator(this, next()); }
  std::default_sentinel_t end() const { return {}; }

 private:
  static constexpr std::size_t kEnd = static_cast<std::size_t>(-1);
  std::size_t next() {
    if (left_ == 0) return kEnd;
    auto i = log_->next(deadline_);
    if (!i)
      throw TimeoutError("mpx::as_completed: timed out with " + std::to_string(left_) + " results pending");
    --left_;
    results_[*i].wait(forever);  // done; its callbacks may still be finishing
    return *i;
  }

  std::vector<AsyncResult<T>> results_;
  std::shared_ptr<detail::CompletionLog> log_;
  detail::Deadline deadline_;
  std::size_t left_ = 0;
};

template <detail::AsyncResultRange Range>
auto as_completed(const Range& results, Timeout timeout = forever) {
  using Result = std::remove_cvref_t<std::ranges::range_value_t<Range>>;
  return AsCompleted<typename detail::async_result_value<Result>::type>(results, timeout);
}

}  // namespace mpx
