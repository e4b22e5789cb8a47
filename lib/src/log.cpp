#include "log.hpp"

#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <cstdlib>

namespace mpx::detail {
namespace {

spdlog::logger* make_logger() {
  auto* l = new spdlog::logger("mpx", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  l->set_level(spdlog::level::warn);
  l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [mpx] [%l] [pid %P] %v");
  if (const char* env = std::getenv("MPX_LOG_LEVEL")) l->set_level(spdlog::level::from_str(env));
  return l;
}

std::atomic<spdlog::logger*> current{nullptr};

}  // namespace

spdlog::logger& logger() {
  static spdlog::logger* first = [] {
    auto* l = make_logger();
    current.store(l);
    return l;
  }();
  (void)first;
  return *current.load(std::memory_order_acquire);
}

void reset_logger_after_fork() {
  (void)logger();
  current.store(make_logger(), std::memory_order_release);  // the old one is leaked on purpose
}

}  // namespace mpx::detail
