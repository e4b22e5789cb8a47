// The user-facing members of a pool (apply, map, starmap, imap, their _async forms), written once
// for every engine that runs tasks: mpx::Pool (forked workers) and mpx::mpi::Pool (MPI ranks).
// An engine type provides, found by argument-dependent lookup:
//   Driver* pool_driver(Engine&);            std::uint64_t pool_next_apply_index(Engine&);
//   Bytes pool_frame(Engine&, std::size_t);  void pool_check_open(Engine&);
//   void pool_submit(Engine&, std::vector<TaskSubmission>&&, bool caller_waits);
//   void pool_submit_one(Engine&, TaskSubmission&&, bool caller_waits);
//   bool pool_feed(Engine&, std::vector<TaskSubmission>&&);   std::size_t pool_inflight_hint(const Engine&);
#pragma once

#include <mpx/detail/async_result.hpp>
#include <mpx/detail/pool.hpp>
#include <mpx/detail/task.hpp>

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <memory>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx::detail {

template <bool Ok, class D, class... A>
struct lazy_call_result {
  using type = void;
};
template <class D, class... A>
struct lazy_call_result<true, D, A...> {
  using type = call_result_t<D, A...>;
};
template <bool Ok, class D, class Item, bool Star>
struct lazy_item_result {
  using type = int;
};
template <class D, class Item, bool Star>
struct lazy_item_result<true, D, Item, Star> {
  using type = item_result_t<D, Item, Star>;
};

template <class F, class... Args>
struct apply_traits {
  using D = std::decay_t<F>;
  static constexpr bool fn_ok = check_task_function<F>();
  static constexpr bool args_ok = (transferable<std::decay_t<Args>> && ...);
  static constexpr bool callable =
      std::is_invocable_v<D&, std::decay_t<Args>&&...> || std::is_invocable_v<D&, std::decay_t<Args>&...>;
  static_assert(args_ok,
                "mpx::Pool: every task argument must be transferable (serializable with cereal, or opted in "
                "to Boost.Serialization with mpx::use_boost_serialization)");
  static_assert(!fn_ok || callable, "mpx::Pool: the task function cannot be called with these arguments");
  static constexpr bool ok = fn_ok && args_ok && callable;
  using result = typename lazy_call_result<ok, D, std::decay_t<Args>...>::type;
  static_assert(std::is_void_v<result> || transferable<result>,
                "mpx::Pool: the task function's result must be transferable (or void)");
};

template <class F, class Range, bool Star>
struct map_traits {
  static_assert(std::ranges::input_range<Range>, "mpx::Pool: the input must be a std::ranges::input_range");
  using D = std::decay_t<F>;
  using Item = std::ranges::range_value_t<Range>;
  static constexpr bool fn_ok = check_task_function<F>();
  static_assert(transferable<Item>,
                "mpx::Pool: the input's items must be transferable (serializable with cereal, or opted in "
                "to Boost.Serialization)");
  static constexpr bool callable = [] {
    if constexpr (Star) return requires(D & f, Item & x) {
        std::apply(f, x);
      };
    else
      return std::is_invocable_v<D&, Item&&> || std::is_invocable_v<D&, Item&>;
  }();
  static_assert(!fn_ok || callable || !Star,
                "mpx::Pool::starmap: the function cannot be called with the elements of an item");
  static_assert(!fn_ok || callable || Star,
                "mpx::Pool: the function cannot be called with an item of the input");
  static constexpr bool ok = fn_ok && callable && transferable<Item>;
  using result = typename lazy_item_result<ok, D, Item, Star>::type;
  static_assert(!std::is_void_v<result>, "mpx::Pool: map/starmap/imap need a function that returns a value");
  static_assert(std::is_void_v<result> || transferable<result>,
                "mpx::Pool: the task function's result must be transferable");
};

template <class Engine>
class PoolApi {
 public:
  template <class F, class... Args>
  auto apply(F f, Args&&... args) -> typename apply_traits<F, Args...>::result {
    using R = typename apply_traits<F, Args...>::result;
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
  auto apply_async(F f, Args&&... args) -> AsyncResult<typename apply_traits<F, Args...>::result> {
    using R = typename apply_traits<F, Args...>::result;
    return AsyncResult<R>(submit_call<R>(false, f, args...));
  }
  // concurrent.futures' name for apply_async.
  template <class F, class... Args>
  auto submit(F f, Args&&... args) -> AsyncResult<typename apply_traits<F, Args...>::result> {
    return apply_async(std::move(f), std::forward<Args>(args)...);
  }

  // chunksize 0: Python's rule, ceil(len / (4 * processes())).
  template <class F, class Range>
  auto map(F f, Range&& xs, std::size_t chunksize = 0)
      -> std::vector<typename map_traits<F, Range, false>::result> {
    return run_map<false>(f, std::forward<Range>(xs), chunksize);
  }
  template <class F, class Range>
  auto map_async(F f, Range&& xs, std::size_t chunksize = 0)
      -> AsyncResult<std::vector<typename map_traits<F, Range, false>::result>> {
    using R = typename map_traits<F, Range, false>::result;
    return AsyncResult<std::vector<R>>(submit_map<false, R>(f, std::forward<Range>(xs), chunksize, false));
  }
  template <class F, class Range>
  auto starmap(F f, Range&& tuples, std::size_t chunksize = 0)
      -> std::vector<typename map_traits<F, Range, true>::result> {
    return run_map<true>(f, std::forward<Range>(tuples), chunksize);
  }
  template <class F, class Range>
  auto starmap_async(F f, Range&& tuples, std::size_t chunksize = 0)
      -> AsyncResult<std::vector<typename map_traits<F, Range, true>::result>> {
    using R = typename map_traits<F, Range, true>::result;
    return AsyncResult<std::vector<R>>(submit_map<true, R>(f, std::forward<Range>(tuples), chunksize, false));
  }

  // Lazy: input is read by the iterating thread, with a bounded number of tasks in flight. An
  // rvalue range is kept alive by the result. A failed item rethrows from operator*; iteration
  // may go on (a WorkerLost fails every item of its chunk). Feeding goes on after close(); after
  // join()/terminate()/the pool's end the first item that could not be sent throws StateError
  // and the range ends there. The result must not outlive the pool.
  template <class F, class Range>
  auto imap(F f, Range&& xs, std::size_t chunksize = 1) {
    return make_imap<true>(f, std::forward<Range>(xs), chunksize);
  }
  template <class F, class Range>
  auto imap_unordered(F f, Range&& xs, std::size_t chunksize = 1) {
    return make_imap<false>(f, std::forward<Range>(xs), chunksize);
  }

  unsigned processes() const noexcept { return processes_; }

 protected:
  PoolApi() = default;
  PoolApi(std::shared_ptr<Engine> core, unsigned processes) : core_(std::move(core)), processes_(processes) {}
  ~PoolApi() = default;

  std::shared_ptr<Engine> core_;
  unsigned processes_ = 0;

 private:
  template <class R, class F, class... Args>
  std::shared_ptr<CallState<R>> submit_call(bool caller_waits, const F& f, const Args&... args) {
    auto st = std::make_shared<CallState<R>>(pool_driver(*core_));
    TaskSubmission t{new_task_frame(), st, 0};
    encode_call_task(t.frame, f, pool_next_apply_index(*core_), args...);
    pool_submit_one(*core_, std::move(t), caller_waits);
    return st;
  }

  template <bool Star, class R, class F, class Range>
  std::shared_ptr<ResultState<std::vector<R>>> submit_map(const F& f, Range&& xs, std::size_t chunksize,
                                                          bool caller_waits) {
    using Item = typename map_traits<F, Range, Star>::Item;
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
  std::shared_ptr<ResultState<std::vector<R>>> submit_chunks(const D& f, It first, std::size_t n,
                                                             std::size_t chunksize, bool caller_waits) {
    if (chunksize == 0) {
      std::size_t per = std::size_t{4} * processes_;
      chunksize = std::max<std::size_t>(1, (n + per - 1) / per);
    }
    std::vector<std::size_t> starts;
    for (std::size_t s = 0; s < n; s += chunksize) starts.push_back(s);
    auto st = std::make_shared<MapState<R>>(pool_driver(*core_), n, starts);
    if (n == 0) {
      pool_check_open(*core_);
      st->set_value({});
      return st;
    }
    std::vector<TaskSubmission> tasks;
    tasks.reserve(starts.size());
    for (std::size_t k = 0; k < starts.size(); ++k) {
      std::size_t count = std::min(chunksize, n - starts[k]);
      TaskSubmission t{pool_frame(*core_, count * sizeof(Item) + 64), st, k};
      encode_chunk_task<D, Item, Star>(t.frame, f, starts[k], first, count);
      std::ranges::advance(first, static_cast<std::iter_difference_t<It>>(count));
      tasks.push_back(std::move(t));
    }
    pool_submit(*core_, std::move(tasks), caller_waits);
    return st;
  }

  template <bool Star, class F, class Range>
  auto run_map(const F& f, Range&& xs, std::size_t chunksize) {
    using R = typename map_traits<F, Range, Star>::result;
    auto st = submit_map<Star, R>(f, std::forward<Range>(xs), chunksize, true);
    AsyncResult<std::vector<R>> r(st);
    r.get();
    return std::move(st->mutable_value());
  }

  template <bool Ordered, class F, class Range>
  auto make_imap(const F& f, Range&& xs, std::size_t chunksize) {
    using T = map_traits<F, Range, false>;
    using R = typename T::result;
    pool_check_open(*core_);
    return ImapRange<R, Range&&, std::decay_t<F>, typename T::Item, false, Engine>(
        core_, std::forward<Range>(xs), f, chunksize, Ordered);
  }
};

}  // namespace mpx::detail
