// The workloads' tasks by name, for a named task queue on mpxd worked by task_worker. A pool
// names a task function by its code address, which only a process running the same binary can
// resolve; task_worker is another program, so the two sides agree on names instead. Both link
// this library, and this header is the whole agreement — the names, the argument types and the
// index convention — so neither side can drift: task_worker calls register_tasks(), the
// programs submit through submit_chunk().
//
// One named task runs a chunk of consecutive items of a map, each under the task index it has in
// the whole map (serial_map's `first`), because a named task by itself always runs as index 0:
// task_rng streams, and so every result, are then the pool's bit for bit, whatever the chunking.
#pragma once

#include <mpx/managers.hpp>

#include "matrices.hpp"
#include "options.hpp"
#include "primes.hpp"

#include <cstdint>
#include <stdexcept>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

namespace mpx::workloads {

template <class F>
struct TaskEntry {
  std::string_view name;
  F f;  // a function pointer, or a function object whose state travels with each chunk
};

// Every workload task the programs submit, with its name on the queue.
inline constexpr std::tuple kTasks{
    TaskEntry<decltype(&isprime)>{"workloads.isprime", &isprime},
    TaskEntry<decltype(&sum_primes)>{"workloads.sum_primes", &sum_primes},
    TaskEntry<decltype(&count_primes_in)>{"workloads.count_primes_in", &count_primes_in},
    TaskEntry<GoeSpacing>{"workloads.goe_spacing", GoeSpacing{}},
    TaskEntry<PriceOptions>{"workloads.price_options", PriceOptions{}},
};

// Registers every entry of kTasks in this process (task_worker does, before serve_tasks).
void register_tasks();

// What one item of a map of F is, and what F makes of it.
template <class F>
using task_item_t = std::tuple_element_t<0, typename detail::signature_of<F>::args>;
template <class F>
using task_result_t = std::decay_t<typename detail::signature_of<F>::result>;

// kTasks' name for `f`; std::invalid_argument for a function that is not a workload task.
template <class F>
std::string_view task_name(const F& f) {
  std::string_view name;
  auto match = [&](const auto& e) {
    using T = std::decay_t<decltype(e.f)>;
    if constexpr (std::is_same_v<T, F>) {
      // A function object is named by its type; functions of one signature by their address.
      if constexpr (std::is_class_v<F>)
        name = e.name;
      else if (e.f == f)
        name = e.name;
    }
  };
  std::apply([&](const auto&... e) { (match(e), ...); }, kTasks);
  if (name.empty()) throw std::invalid_argument("not a workload task: it has no name on a task queue");
  return name;
}

// Submits items first, first + 1, ... of a map of `f` as one named task.
template <class F>
AsyncResult<std::vector<task_result_t<F>>> submit_chunk(TaskQueueProxy& queue, const F& f,
                                                        std::uint64_t first,
                                                        const std::vector<task_item_t<F>>& items) {
  using R = std::vector<task_result_t<F>>;
  if constexpr (std::is_class_v<F>)
    return queue.submit<R>(task_name(f), f, first, items);
  else
    return queue.submit<R>(task_name(f), first, items);
}

}  // namespace mpx::workloads
