#include "tasks.hpp"

#include "serial.hpp"

#include <string>

namespace mpx::workloads {

namespace {

// The worker's side of submit_chunk: the same argument types, in the same order.
template <class F>
void register_chunked(std::string_view name, F f) {
  using Items = std::vector<task_item_t<F>>;
  if constexpr (std::is_class_v<F>)
    register_task(std::string(name),
                  [](F g, std::uint64_t first, Items items) { return serial_map(g, items, first); });
  else
    register_task(std::string(name),
                  [f](std::uint64_t first, Items items) { return serial_map(f, items, first); });
}

}  // namespace

void register_tasks() {
  std::apply([](const auto&... e) { (register_chunked(e.name, e.f), ...); }, kTasks);
}

}  // namespace mpx::workloads
