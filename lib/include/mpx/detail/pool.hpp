// The pool's engine (lib/src/pool/pool.cpp) as the templates in <mpx/pool.hpp> see it: submit
// encoded task frames with a sink that receives each outcome, and wait through the pool's driver.
#pragma once

#include <mpx/context.hpp>
#include <mpx/detail/async_result.hpp>
#include <mpx/detail/task.hpp>
#include <mpx/errors.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <span>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mpx::detail {

// Receives the outcome of one task (a single call or a chunk) exactly once, on whichever thread
// drives the pool's I/O at that moment, with no pool lock held.
class TaskSink {
 public:
  virtual ~TaskSink() = default;
  virtual void on_result(std::uint64_t tag, std::span<const std::byte> result) noexcept = 0;
  virtual void on_failure(std::uint64_t tag, std::exception_ptr error) noexcept = 0;
};

// A task frame starts with room for the longest frame header, the message type and the task's
// sequence number; the pool fills them in. The task body follows.
inline constexpr std::size_t kTaskPrefix = 12 + 1 + 8;
inline Bytes new_task_frame(std::size_t reserve = 96) {
  Bytes b;
  b.reserve(kTaskPrefix + reserve);
  b.resize(kTaskPrefix);
  return b;
}

class PoolCore;
// A task frame from the pool's spare buffers (large ones are reused).
Bytes pool_frame(PoolCore& core, std::size_t reserve);

struct TaskSubmission {
  Bytes frame;
  std::shared_ptr<TaskSink> sink;
  std::uint64_t tag = 0;
};

struct PoolConfig {
  unsigned processes = 0;
  std::function<void()> initializer;
  unsigned maxtasksperchild = 0;
  StartMethod method = StartMethod::fork;
};

std::shared_ptr<PoolCore> make_pool_core(PoolConfig config);
// Queues tasks. StateError once the pool is closed. `caller_waits`: the caller blocks on the
// result right away and will drive the pool itself, so no other thread needs waking.
void pool_submit(PoolCore& core, std::vector<TaskSubmission>&& tasks, bool caller_waits);
void pool_submit_one(PoolCore& core, TaskSubmission&& task, bool caller_waits);
// For lazy feeding (imap): accepted after close() until join()/terminate()/~Pool; false then.
bool pool_feed(PoolCore& core, std::vector<TaskSubmission>&& tasks);
// Not owning: the pool settles every result before it goes away.
Driver* pool_driver(PoolCore& core) noexcept;
std::uint64_t pool_next_apply_index(PoolCore& core) noexcept;
unsigned pool_processes(const PoolCore& core) noexcept;
// How many tasks lazy feeding should keep in flight (adapts to the measured task duration).
std::size_t pool_inflight_hint(const PoolCore& core) noexcept;
void pool_check_open(PoolCore& core);  // StateError once closed
void pool_close(PoolCore& core);
void pool_terminate(PoolCore& core);
void pool_join(PoolCore& core);
void pool_shutdown(PoolCore& core) noexcept;          // ~Pool
bool pool_owned_here(const PoolCore& core) noexcept;  // false in a forked copy of the pool's process

// ------------------------------------------------------------------------------------------
// Sinks.
// ------------------------------------------------------------------------------------------

// apply / apply_async: the result state is the sink.
template <class T>
class CallState final : public ResultState<T>, public TaskSink {
 public:
  using ResultState<T>::ResultState;
  void on_result(std::uint64_t, std::span<const std::byte> bytes) noexcept override {
    this->set_from_bytes(bytes, &decode_call_result<T>);
  }
  void on_failure(std::uint64_t, std::exception_ptr e) noexcept override {
    this->set_exception(std::move(e));
  }
};

// map / starmap: one result assembled from every chunk; the first failure fails it.
template <class R>
class MapState final : public ResultState<std::vector<R>>, public TaskSink {
  static constexpr bool kFlat = std::is_arithmetic_v<R> && !std::is_same_v<R, bool> && all_cereal<R>;

 public:
  MapState(Driver* driver, std::size_t total, std::vector<std::size_t> starts)
      : ResultState<std::vector<R>>(std::move(driver)),
        total_(total),
        starts_(std::move(starts)),
        left_(starts_.size()) {
    if constexpr (kFlat)
      flat_.resize(total);
    else
      chunks_.resize(starts_.size());
  }

  void on_result(std::uint64_t k, std::span<const std::byte> bytes) noexcept override {
    try {
      std::unique_lock lk(m_);
      if (failed_) return;
      std::size_t start = starts_[k], count = (k + 1 < starts_.size() ? starts_[k + 1] : total_) - start;
      if (!take_flat(bytes, start, count)) {
        auto o = decode_chunk_result<R>(bytes, count);
        if (o.all_failed) return fail(lk, o.all_failed);
        if (!o.items.empty()) {
          std::vector<R> values;
          values.reserve(count);
          for (auto& it : o.items) {
            if (it.index() == 1) return fail(lk, std::get<1>(it));
            values.push_back(std::move(std::get<0>(it)));
          }
          o.values = std::move(values);
        }
        if constexpr (kFlat)
          std::copy(o.values.begin(), o.values.end(), flat_.begin() + static_cast<std::ptrdiff_t>(start));
        else
          chunks_[k] = std::move(o.values);
      }
      if (--left_ == 0) {
        std::vector<R> all;
        if constexpr (kFlat) {
          all = std::move(flat_);
        } else {
          all.reserve(total_);
          for (auto& c : chunks_)
            for (auto&& v : c) all.push_back(std::move(v));
          chunks_.clear();
        }
        lk.unlock();
        this->set_value(std::move(all));
      }
    } catch (...) {
      on_failure(k, std::current_exception());
    }
  }
  void on_failure(std::uint64_t, std::exception_ptr e) noexcept override {
    std::unique_lock lk(m_);
    if (!failed_) fail(lk, std::move(e));
  }

 private:
  void fail(std::unique_lock<std::mutex>& lk, std::exception_ptr e) {
    failed_ = true;
    chunks_.clear();
    lk.unlock();
    this->set_exception(std::move(e));
  }
  // Arithmetic results land in place: status, u64 count, the values as one block.
  bool take_flat(std::span<const std::byte> bytes, std::size_t start, std::size_t count) {
    if constexpr (kFlat) {
      if (bytes.size() < 9 || static_cast<std::uint8_t>(bytes[0]) != kResultOk) return false;
      auto in = task_reader(bytes.subspan(1));
      if (in.u64() != count || in.remaining() != count * sizeof(R))
        throw ProtocolError("mpx: chunk result has the wrong number of items");
      if (count) std::memcpy(flat_.data() + start, in.take(count * sizeof(R)).data(), count * sizeof(R));
      return true;
    } else {
      (void)bytes, (void)start, (void)count;
      return false;
    }
  }

  std::mutex m_;
  std::size_t total_;
  std::vector<std::size_t> starts_;
  std::size_t left_;
  bool failed_ = false;
  std::vector<R> flat_;
  std::vector<std::vector<R>> chunks_;
};

// imap / imap_unordered: per-item outcomes, handed to the iterating thread.
template <class R>
struct ImapOutcome {
  std::optional<R> value;
  std::exception_ptr error;
};

template <class R>
class ImapState final : public TaskSink, public Waitable {
 public:
  explicit ImapState(bool ordered) : ordered_(ordered) {}

  void expect_chunk(std::uint64_t start, std::size_t count) {
    std::lock_guard lk(m_);
    counts_[start] = count;
  }
  void forget_chunk(std::uint64_t start) {
    std::lock_guard lk(m_);
    counts_.erase(start);
  }

  void on_result(std::uint64_t start, std::span<const std::byte> bytes) noexcept override {
    std::size_t count = count_of(start);
    ChunkOutcome<R> o;
    try {
      o = decode_chunk_result<R>(bytes, count);
    } catch (...) {
      o.all_failed = std::current_exception();
    }
    std::lock_guard lk(m_);
    for (std::size_t i = 0; i < count; ++i) {
      ImapOutcome<R> out;
      if (o.all_failed)
        out.error = o.all_failed;
      else if (!o.items.empty()) {
        if (o.items[i].index() == 0)
          out.value.emplace(std::move(std::get<0>(o.items[i])));
        else
          out.error = std::get<1>(o.items[i]);
      } else {
        out.value.emplace(std::move(o.values[i]));
      }
      put(start + i, std::move(out));
    }
    counts_.erase(start);
  }
  void on_failure(std::uint64_t start, std::exception_ptr e) noexcept override {
    std::size_t count = count_of(start);
    std::lock_guard lk(m_);
    for (std::size_t i = 0; i < count; ++i) put(start + i, ImapOutcome<R>{std::nullopt, e});
    counts_.erase(start);
  }

  bool is_ready() const noexcept override { return ready_.load(std::memory_order_acquire); }

  std::optional<ImapOutcome<R>> try_pop() {
    std::lock_guard lk(m_);
    std::optional<ImapOutcome<R>> r;
    if (ordered_) {
      if (!window_.empty() && window_.front()) {
        r = std::move(window_.front());
        window_.pop_front();
        ++base_;
      }
    } else if (!done_.empty()) {
      r = std::move(done_.front());
      done_.pop_front();
    }
    update_ready();
    return r;
  }

 private:
  std::size_t count_of(std::uint64_t start) {
    std::lock_guard lk(m_);
    auto it = counts_.find(start);
    return it == counts_.end() ? 0 : it->second;
  }
  void put(std::uint64_t index, ImapOutcome<R>&& o) {
    if (ordered_) {
      std::size_t slot = static_cast<std::size_t>(index - base_);
      if (window_.size() <= slot) window_.resize(slot + 1);
      window_[slot] = std::move(o);
    } else {
      done_.push_back(std::move(o));
    }
    update_ready();
  }
  void update_ready() {
    bool r = ordered_ ? (!window_.empty() && window_.front().has_value()) : !done_.empty();
    ready_.store(r, std::memory_order_release);
  }

  const bool ordered_;
  std::mutex m_;
  std::unordered_map<std::uint64_t, std::size_t> counts_;
  std::deque<std::optional<ImapOutcome<R>>> window_;  // ordered: items base_, base_+1, ...
  std::uint64_t base_ = 0;
  std::deque<ImapOutcome<R>> done_;  // unordered: completion order
  std::atomic<bool> ready_{false};
};

// The input range of imap: lazily fed, a bounded number of tasks in flight. Only the thread
// that iterates advances the input.
template <class R, class Range, class D, class Item, bool Star, class Engine = PoolCore>
class ImapRange {
  // An lvalue range is referenced, an rvalue one is kept alive here.
  using Stored = std::conditional_t<std::is_lvalue_reference_v<Range>, Range, std::remove_cvref_t<Range>>;
  using It = std::ranges::iterator_t<std::remove_reference_t<Stored>>;
  using Sent = std::ranges::sentinel_t<std::remove_reference_t<Stored>>;

  struct Impl {
    Impl(std::shared_ptr<Engine> c, Range&& r, D fn, std::size_t cs, bool ordered)
        : core(std::move(c)),
          range(std::forward<Range>(r)),
          f(std::move(fn)),
          chunksize(cs ? cs : 1),
          state(std::make_shared<ImapState<R>>(ordered)) {}

    std::shared_ptr<Engine> core;
    Stored range;
    D f;
    std::size_t chunksize;
    std::shared_ptr<ImapState<R>> state;
    std::optional<It> it;
    std::optional<Sent> end;
    std::uint64_t submitted = 0, consumed = 0;
    bool input_done = false, cut = false, cut_reported = false, at_end = false;
    ImapOutcome<R> current;

    void top_up() {
      if (input_done || cut) return;
      std::size_t bound = std::max<std::size_t>(1, pool_inflight_hint(*core)) * chunksize;
      std::size_t inflight = static_cast<std::size_t>(submitted - consumed);
      if (inflight > 0 && inflight >= bound / 2) return;
      std::vector<TaskSubmission> batch;
      std::vector<Item> chunk;
      std::uint64_t first = submitted;
      while (inflight < bound) {
        chunk.clear();
        for (; chunk.size() < chunksize && *it != *end; ++*it) chunk.push_back(static_cast<Item>(**it));
        if (chunk.empty()) {
          input_done = true;
          break;
        }
        Bytes frame = new_task_frame(chunk.size() * sizeof(Item) + 64);
        encode_chunk_task<D, Item, Star>(frame, f, submitted, chunk.begin(), chunk.size());
        state->expect_chunk(submitted, chunk.size());
        batch.push_back({std::move(frame), state, submitted});
        submitted += chunk.size();
        inflight += chunk.size();
        if (chunk.size() < chunksize) {
          input_done = true;
          break;
        }
      }
      if (batch.empty()) return;
      if (!pool_feed(*core, std::move(batch))) {
        for (std::uint64_t s = first; s < submitted; s += chunksize) state->forget_chunk(s);
        submitted = first;
        cut = true;
      }
    }

    // Moves to the next outcome; false at the end.
    bool fetch() {
      Driver* driver = pool_driver(*core);
      for (;;) {
        top_up();
        if (consumed == submitted && (input_done || cut)) {
          if (cut && !cut_reported) {
            cut_reported = true;
            current = {std::nullopt,
                       std::make_exception_ptr(
                           StateError("mpx::Pool: the pool stopped taking tasks before this item was sent"))};
            return true;
          }
          return false;
        }
        if (auto o = state->try_pop()) {
          current = std::move(*o);
          ++consumed;
          return true;
        }
        driver->wait(*state, Deadline::never());
      }
    }
  };

 public:
  class iterator {
   public:
    using value_type = R;
    using difference_type = std::ptrdiff_t;
    using iterator_concept = std::input_iterator_tag;
    iterator() = default;
    explicit iterator(Impl* impl) : impl_(impl) {}
    // A failed item rethrows its exception here; iteration may continue past it.
    R& operator*() const {
      if (impl_->current.error) std::rethrow_exception(impl_->current.error);
      return *impl_->current.value;
    }
    iterator& operator++() {
      if (!impl_->fetch()) impl_->at_end = true;
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& i, std::default_sentinel_t) { return !i.impl_ || i.impl_->at_end; }

   private:
    Impl* impl_ = nullptr;
  };

  ImapRange(std::shared_ptr<Engine> core, Range&& range, D f, std::size_t chunksize, bool ordered)
      : impl_(std::make_unique<Impl>(std::move(core), std::forward<Range>(range), std::move(f), chunksize,
                                     ordered)) {}

  // Starts feeding; call once (the input may be a single-pass range).
  iterator begin() {
    if (!impl_->it) {
      impl_->it.emplace(std::ranges::begin(impl_->range));
      impl_->end.emplace(std::ranges::end(impl_->range));
      if (!impl_->fetch()) impl_->at_end = true;
    }
    return iterator(impl_.get());
  }
  std::default_sentinel_t end() const noexcept { return {}; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mpx::detail
