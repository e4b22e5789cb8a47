// The serial baseline of a pool map: the same function over the same items in this process.
#pragma once

#include <mpx/pool.hpp>

#include <cstdint>
#include <ranges>
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

}  // namespace mpx::workloads
