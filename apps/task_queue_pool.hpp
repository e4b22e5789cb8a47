// --backend mpxd: the workloads' tasks on a named task queue of a running mpxd, worked by any
// number of task_worker processes on any host that reaches the daemon. TaskQueuePool offers the
// part of the Pool interface the workloads use (map, imap, imap_unordered, apply, processes), so
// the programs and the workloads' templates run on it unchanged. Each call cuts its items into
// chunks as the pool would and submits every chunk as one named task (workloads/tasks.hpp),
// which keeps each item's task index: the results are the pool's, bit for bit.
#pragma once

#include <mpx/managers.hpp>

#include <fmt/core.h>

#include "workloads/tasks.hpp"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace mpx::apps {

class TaskQueuePool {
 public:
  // `processes` only plans the chunking (the pool's rules need a worker count, and the queue
  // cannot tell how many task_workers serve it); `where` names the queue in messages.
  TaskQueuePool(TaskQueueProxy queue, unsigned processes, std::string where)
      : queue_(std::move(queue)), processes_(std::max(1U, processes)), where_(std::move(where)) {}

  unsigned processes() const noexcept { return processes_; }

  // The results of a map's chunks, item by item in input order, each chunk awaited when reached.
  template <class R>
  class Results {
   public:
    class iterator {
     public:
      using value_type = R;
      using difference_type = std::ptrdiff_t;
      iterator() = default;
      iterator(Results* r, std::size_t chunk) : r_(r), chunk_(chunk) {}
      const R& operator*() const { return r_->chunk(chunk_)[item_]; }
      iterator& operator++() {
        if (++item_ == r_->chunk(chunk_).size()) {
          ++chunk_;
          item_ = 0;
        }
        return *this;
      }
      void operator++(int) { ++*this; }
      bool operator==(std::default_sentinel_t) const { return chunk_ == r_->chunks_.size(); }

     private:
      Results* r_ = nullptr;
      std::size_t chunk_ = 0, item_ = 0;
    };

    Results(const TaskQueuePool* pool, std::vector<AsyncResult<std::vector<R>>> chunks)
        : pool_(pool), chunks_(std::move(chunks)) {}
    iterator begin() { return {this, 0}; }
    std::default_sentinel_t end() const { return {}; }

   private:
    const std::vector<R>& chunk(std::size_t k) const { return pool_->await(chunks_[k]); }
    const TaskQueuePool* pool_;
    std::vector<AsyncResult<std::vector<R>>> chunks_;
  };

  // The same chunks' results, chunk by chunk in the order they finish (mpx::as_completed).
  template <class R>
  class UnorderedResults {
   public:
    class iterator {
     public:
      using value_type = R;
      using difference_type = std::ptrdiff_t;
      iterator() = default;
      explicit iterator(UnorderedResults* r) : r_(r) { settle(); }
      const R& operator*() const { return (*chunk_)[item_]; }
      iterator& operator++() {
        ++item_;
        settle();
        return *this;
      }
      void operator++(int) { ++*this; }
      bool operator==(std::default_sentinel_t) const { return r_ == nullptr; }

     private:
      // Moves on to the next finished chunk that has items, or to the end.
      void settle() {
        while (!chunk_ || item_ == chunk_->size()) {
          chunk_ = r_->next_chunk();
          item_ = 0;
          if (!chunk_) {
            r_ = nullptr;
            return;
          }
        }
      }
      UnorderedResults* r_ = nullptr;
      const std::vector<R>* chunk_ = nullptr;
      std::size_t item_ = 0;
    };

    UnorderedResults(const TaskQueuePool* pool, std::vector<AsyncResult<std::vector<R>>> chunks)
        : pool_(pool), chunks_(std::move(chunks)), finished_(mpx::as_completed(chunks_)) {}
    iterator begin() { return iterator(this); }
    std::default_sentinel_t end() const { return {}; }

   private:
    // The next chunk to finish; nullptr after the last.
    const std::vector<R>* next_chunk() {
      if (!started_) {
        pool_->await_any(chunks_);
        at_ = finished_.begin();
        started_ = true;
      } else {
        ++at_;
      }
      return at_ == finished_.end() ? nullptr : &(*at_).get();
    }

    const TaskQueuePool* pool_;
    std::vector<AsyncResult<std::vector<R>>> chunks_;
    AsCompleted<std::vector<R>> finished_;
    typename AsCompleted<std::vector<R>>::iterator at_;
    bool started_ = false;
  };

  // chunksize 0: Python's rule, as Pool::map.
  template <class F, class Range>
  auto map(F f, Range&& xs, std::size_t chunksize = 0) {
    std::vector<workloads::task_result_t<F>> out;
    for (auto&& r : imap(f, std::forward<Range>(xs), chunksize)) out.push_back(r);
    return out;
  }
  template <class F, class Range>
  auto imap(F f, Range&& xs, std::size_t chunksize = 1) {
    return Results<workloads::task_result_t<F>>(this, submit_chunks(f, std::forward<Range>(xs), chunksize));
  }
  // As chunks finish, whichever task_worker ran them: a slow chunk holds back nothing.
  template <class F, class Range>
  auto imap_unordered(F f, Range&& xs, std::size_t chunksize = 1) {
    return UnorderedResults<workloads::task_result_t<F>>(
        this, submit_chunks(f, std::forward<Range>(xs), chunksize));
  }
  // Task index: how many apply calls came before, as Pool::apply.
  template <class F, class Arg>
  auto apply(F f, Arg&& x) {
    std::vector<workloads::task_item_t<F>> one{std::forward<Arg>(x)};
    return await(workloads::submit_chunk(queue_, f, applied_++, one)).front();
  }

 private:
  template <class F, class Range>
  std::vector<AsyncResult<std::vector<workloads::task_result_t<F>>>> submit_chunks(const F& f, Range&& xs,
                                                                                   std::size_t chunksize) {
    using Item = workloads::task_item_t<F>;
    std::vector<Item> items;
    for (auto&& x : xs) items.push_back(static_cast<Item>(x));
    if (chunksize == 0) {
      const std::size_t per = std::size_t{4} * processes_;
      chunksize = std::max<std::size_t>(1, (items.size() + per - 1) / per);
    }
    std::vector<AsyncResult<std::vector<workloads::task_result_t<F>>>> chunks;
    for (std::size_t s = 0; s < items.size(); s += chunksize) {
      const auto first = items.begin() + static_cast<std::ptrdiff_t>(s);
      const std::vector<Item> chunk(
          first, first + static_cast<std::ptrdiff_t>(std::min(chunksize, items.size() - s)));
      chunks.push_back(workloads::submit_chunk(queue_, f, s, chunk));
    }
    return chunks;
  }

  // The chunk's results. A queue nobody serves looks exactly like a long task, so a long wait is
  // mentioned once on stderr.
  template <class R>
  const R& await(const AsyncResult<R>& r) const {
    if (!warned_ && !r.wait(kQuiet)) warn_quiet();
    return r.get();
  }
  // Until one of `rs` is done, with the same mention.
  template <class R>
  void await_any(const std::vector<AsyncResult<R>>& rs) const {
    if (!warned_ && !rs.empty() && mpx::wait(rs, ReturnWhen::first_completed, kQuiet).done.empty())
      warn_quiet();
  }
  void warn_quiet() const {
    warned_ = true;
    fmt::print(stderr, "no result from {} for {} s: is a task_worker serving it?\n", where_, kQuiet.count());
  }
  static constexpr std::chrono::seconds kQuiet{10};

  TaskQueueProxy queue_;
  unsigned processes_;
  std::string where_;
  std::uint64_t applied_ = 0;
  mutable bool warned_ = false;
};

}  // namespace mpx::apps
