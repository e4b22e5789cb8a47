// The serial baseline of a pool map: the same function over the same items in this process.
#pragma once

#include <mpx/pool.hpp>

#include <cstdint>
#include <ranges>
#include <type_traits>
#include <vector>

namespace mpx::workloads {

// Item i runs with task_index() == i, exactly as in a pool worker, so anything drawn from
// task_rng() — and therefore every result — is bit for bit the pool's. (The pool has no public
// way to do this; its own workers use the same scope.)
template <class F, class Range>
auto serial_map(const F& f, const Range& xs) {
  using R = std::decay_t<std::invoke_result_t<const F&, std::ranges::range_reference_t<const Range>>>;
  std::vector<R> out;
  std::uint64_t index = 0;
  detail::TaskIndexScope scope(&index);
  for (auto&& x : xs) {
    out.push_back(f(x));
    ++index;
  }
  return out;
}

}  // namespace mpx::workloads
