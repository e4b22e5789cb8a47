// Process pool: Python's multiprocessing.Pool.
//
//   mpx::Pool pool(4);
//   long y = pool.apply(f, 10);                        // f(10) in a worker
//   std::vector<long> ys = pool.map(f, xs);            // in input order
//   auto r = pool.apply_async(g, 1.0).then([](const std::string& s) { ... });
//   for (long v : pool.imap_unordered(f, std::views::iota(0, 1000000))) ...
//
// Task functions: a function pointer, a captureless lambda, a default-constructible function
// object, or a transferable (serializable) function object, whose state then travels with every
// task (also when it is default-constructible). Anything else — a capturing lambda, a
// std::function — is a compile-time error saying what to do. Arguments and results are any
// transferable types. On the wire a function is identified by its code's place in its module
// (build-id + offset), so it must stay loaded (no dlclose) and workers run the same binary.
//
// Workers are forked from a single-threaded server process that the pool forks when it is built,
// so a pool made while other threads run (another pool, say) gives its workers a consistent
// copy of the program as it was at that moment (later changes to globals are not seen by
// workers, replacements included). They ignore SIGINT, and die when the pool's process dies,
// however it dies: Ctrl-C stops a program and its pools. A pool belongs to the process that made
// it; in a forked child its members throw StateError and its destructor does nothing.
//
// I/O: a thread blocked on a result (get, wait, apply, map, iterating imap) drives the pool's
// sockets itself, so results reach it without a hand-off between threads; otherwise the pool's
// result thread does. Callbacks (then/on_error) always run on the result thread (or at once in
// the registering thread if the result is already settled), never inside another thread's get().
//
// Errors: an exception in a task fails that task only, as RemoteError (demangled type name and
// message). A worker that dies (crash, abort, SIGKILL, OOM) fails only the task it was running,
// with WorkerLost (its exit code, -N for signal N), and is replaced; tasks queued behind it that
// had not started run elsewhere. A finished task whose result was lost with its worker (still
// in the worker's send buffer) runs again. A result that cannot be encoded fails its task.
//
// Random numbers: a worker is a fork, so a generator seeded before the pool was built would give
// every worker the same stream. task_rng(seed) gives each task item its own stream, derived from
// the seed and task_index() only, so results do not depend on the number of workers or on
// chunking.
#pragma once

#include <mpx/detail/async_result.hpp>
#include <mpx/detail/pool.hpp>
#include <mpx/detail/pool_api.hpp>
#include <mpx/detail/task.hpp>
#include <mpx/errors.hpp>
#include <mpx/serialize.hpp>
#include <mpx/timeout.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <random>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx {

// The identity of the task item running in this thread: for map/starmap/imap*, the item's
// position in the input (0, 1, 2, ...); for apply/apply_async, how many apply calls this pool
// had accepted before it. 0 outside a task.
std::uint64_t task_index() noexcept;

// A generator for the current task item, seeded from (seed, task_index()) only: independent
// streams for different items, the same stream for the same item whichever worker runs it.
std::mt19937_64 task_rng(std::uint64_t seed);

class Pool {
 public:
  struct Options {
    unsigned processes = 0;               // 0 = cpu_count()
    std::function<void()> initializer{};  // runs once in every worker, before its first task
    unsigned maxtasksperchild = 0;        // 0 = unlimited; else a worker is replaced after n tasks
  };

  explicit Pool(unsigned processes = 0);
  explicit Pool(Options options);
  ~Pool();  // close() + join() unless terminate() was called; then join()
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  template <class F, class... Args>
  auto apply(F f, Args&&... args) -> typename detail::apply_traits<F, Args...>::result {
    using R = typename detail::apply_traits<F, Args...>::result;
    auto st = submit_call<R>(true, f, args...);
    AsyncResult<R> r(st);
    if constexpr (std::is_void_v<R>) {
      r.get();
    } else {
      r.get();
      return std::move(st->mutable_value());
    }
  }

  template <class F, class... Args>
  auto apply_async(F f, Args&&... args) -> AsyncResult<typename detail::apply_traits<F, Args...>::result> {
    using R = typename detail::apply_traits<F, Args...>::result;
    return AsyncResult<R>(submit_call<R>(false, f, args...));
  }

  // chunksize 0: Python's rule, ceil(len / (4 * processes())).
  template <class F, class Range>
  auto map(F f, Range&& xs, std::size_t chunksize = 0)
      -> std::vector<typename detail::map_traits<F, Range, false>::result> {
    return run_map<false>(f, std::forward<Range>(xs), chunksize);
  }
  template <class F, class Range>
  auto map_async(F f, Range&& xs, std::size_t chunksize = 0)
      -> AsyncResult<std::vector<typename detail::map_traits<F, Range, false>::result>> {
    using R = typename detail::map_traits<F, Range, false>::result;
    return AsyncResult<std::vector<R>>(submit_map<false, R>(f, std::forward<Range>(xs), chunksize, false));
  }
  template <class F, class Range>
  auto starmap(F f, Range&& tuples, std::size_t chunksize = 0)
      -> std::vector<typename detail::map_traits<F, Range, true>::result> {
    return run_map<true>(f, std::forward<Range>(tuples), chunksize);
  }
  template <class F, class Range>
  auto starmap_async(F f, Range&& tuples, std::size_t chunksize = 0)
      -> AsyncResult<std::vector<typename detail::map_traits<F, Range, true>::result>> {
    using R = typename detail::map_traits<F, Range, true>::result;
    return AsyncResult<std::vector<R>>(submit_map<true, R>(f, std::forward<Range>(tuples), chunksize, false));
  }

  // Lazy: input is read by the iterating thread, with a bounded number of tasks in flight. An
  // rvalue range is kept alive by the result. A failed item rethrows from operator*; iteration
  // may go on (a WorkerLost fails every item of its chunk). Feeding goes on after close(); after
  // join()/terminate()/~Pool the first item that could not be sent throws StateError and the
  // range ends there. The result must not outlive the pool.
  template <class F, class Range>
  auto imap(F f, Range&& xs, std::size_t chunksize = 1) {
    return make_imap<true>(f, std::forward<Range>(xs), chunksize);
  }
  template <class F, class Range>
  auto imap_unordered(F f, Range&& xs, std::size_t chunksize = 1) {
    return make_imap<false>(f, std::forward<Range>(xs), chunksize);
  }

  void close();      // no more submissions (StateError after)
  void terminate();  // stop the workers now; pending results fail with StateError
  void join();       // after close() or terminate() (else StateError): wait for the workers to exit
  unsigned processes() const noexcept { return processes_; }

 private:
  template <class R, class F, class... Args>
  std::shared_ptr<detail::CallState<R>> submit_call(bool caller_waits, const F& f, const Args&... args) {
    auto st = std::make_shared<detail::CallState<R>>(detail::pool_driver(*core_));
    detail::TaskSubmission t{detail::new_task_frame(), st, 0};
    detail::encode_call_task(t.frame, f, detail::pool_next_apply_index(*core_), args...);
    detail::pool_submit_one(*core_, std::move(t), caller_waits);
    return st;
  }

  template <bool Star, class R, class F, class Range>
  std::shared_ptr<detail::ResultState<std::vector<R>>> submit_map(const F& f, Range&& xs,
                                                                  std::size_t chunksize, bool caller_waits) {
    using Item = typename detail::map_traits<F, Range, Star>::Item;
    using D = std::decay_t<F>;
    if constexpr (std::ranges::sized_range<Range> && std::ranges::forward_range<Range>) {
      return submit_chunks<Star, R, Item, D>(f, std::ranges::begin(xs), std::ranges::size(xs), chunksize,
                                             caller_waits);
    } else {
      std::vector<Item> all;  // the length decides the chunk size, as in Python
      for (auto&& x : xs) all.push_back(static_cast<Item>(std::forward<decltype(x)>(x)));
      return submit_chunks<Star, R, Item, D>(f, all.begin(), all.size(), chunksize, caller_waits);
    }
  }

  template <bool Star, class R, class Item, class D, class It>
  std::shared_ptr<detail::ResultState<std::vector<R>>> submit_chunks(const D& f, It first, std::size_t n,
                                                                     std::size_t chunksize,
                                                                     bool caller_waits) {
    if (chunksize == 0) {
      std::size_t per = std::size_t{4} * processes_;
      chunksize = std::max<std::size_t>(1, (n + per - 1) / per);
    }
    std::vector<std::size_t> starts;
    for (std::size_t s = 0; s < n; s += chunksize) starts.push_back(s);
    auto st = std::make_shared<detail::MapState<R>>(detail::pool_driver(*core_), n, starts);
    if (n == 0) {
      check_open();
      st->set_value({});
      return st;
    }
    std::vector<detail::TaskSubmission> tasks;
    tasks.reserve(starts.size());
    for (std::size_t k = 0; k < starts.size(); ++k) {
      std::size_t count = std::min(chunksize, n - starts[k]);
      detail::TaskSubmission t{detail::pool_frame(*core_, count * sizeof(Item) + 64), st, k};
      detail::encode_chunk_task<D, Item, Star>(t.frame, f, starts[k], first, count);
      std::advance(first, static_cast<std::ptrdiff_t>(count));
      tasks.push_back(std::move(t));
    }
    detail::pool_submit(*core_, std::move(tasks), caller_waits);
    return st;
  }

  template <bool Star, class F, class Range>
  auto run_map(const F& f, Range&& xs, std::size_t chunksize) {
    using R = typename detail::map_traits<F, Range, Star>::result;
    auto st = submit_map<Star, R>(f, std::forward<Range>(xs), chunksize, true);
    AsyncResult<std::vector<R>> r(st);
    r.get();
    return std::move(st->mutable_value());
  }

  template <bool Ordered, class F, class Range>
  auto make_imap(const F& f, Range&& xs, std::size_t chunksize) {
    using T = detail::map_traits<F, Range, false>;
    using R = typename T::result;
    check_open();
    return detail::ImapRange<R, Range&&, std::decay_t<F>, typename T::Item, false>(
        core_, std::forward<Range>(xs), f, chunksize, Ordered);
  }

  void check_open() const;

  std::shared_ptr<detail::PoolCore> core_;
  unsigned processes_ = 0;
};

}  // namespace mpx
