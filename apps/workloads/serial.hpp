// In-process baselines of a pool map: the same function over the same items in this process,
// serially or on plain threads.
#pragma once

#include <mpx/pool.hpp>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <mutex>
#include <ranges>
#include <thread>
#include <type_traits>
#include <vector>

namespace mpx::workloads {

// Item i runs with task_index() == first + i, exactly as in a pool worker, so anything drawn
// from task_rng() — and therefore every result — is bit for bit the pool's. (The pool has no
// public way to do this; its own workers use the same scope.) `first` lets a chunk of a map that
// runs elsewhere (a named task queue's worker) keep the indices its items have in the whole map.
template <class F, class Range>
auto serial_map(const F& f, const Range& xs, std::uint64_t first = 0) {
  using R = std::decay_t<std::invoke_result_t<const F&, std::ranges::range_reference_t<const Range>>>;
  std::vector<R> out;
  std::uint64_t index = first;
  detail::TaskIndexScope scope(&index);
  for (auto&& x : xs) {
    out.push_back(f(x));
    ++index;
  }
  return out;
}

// The pool's map on `threads` std::threads of this process: chunks of `chunksize` items taken in
// order by whichever thread is free, as the pool's workers take them. The same results as
// serial_map and the pool; the yardstick for what separate processes cost.
template <class F, class Range>
auto thread_map(const F& f, const Range& xs, unsigned threads, std::size_t chunksize = 1) {
  using R = std::decay_t<std::invoke_result_t<const F&, std::ranges::range_reference_t<const Range>>>;
  std::vector<std::ranges::range_value_t<const Range>> items;
  for (auto&& x : xs) items.push_back(x);
  std::vector<R> out(items.size());
  chunksize = std::max<std::size_t>(1, chunksize);
  std::atomic<std::size_t> next{0};
  std::mutex m;
  std::exception_ptr failed;  // the first exception a task threw; the others stop taking work
  auto work = [&] {
    std::uint64_t index = 0;
    detail::TaskIndexScope scope(&index);
    try {
      for (std::size_t lo; (lo = next.fetch_add(chunksize)) < items.size();)
        for (std::size_t i = lo; i < std::min(items.size(), lo + chunksize); ++i) {
          index = i;
          out[i] = f(items[i]);
        }
    } catch (...) {
      next = items.size();
      std::lock_guard lk(m);
      if (!failed) failed = std::current_exception();
    }
  };
  {
    std::vector<std::jthread> helpers;
    for (unsigned t = 1; t < std::max(1U, threads); ++t) helpers.emplace_back(work);
    work();
  }
  if (failed) std::rethrow_exception(failed);
  return out;
}

}  // namespace mpx::workloads
