// common/ — what every layer may use: the library's spdlog logger (log.hpp). Includes nothing
// of the library but its own folder.
#include "common/log.hpp"

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

// A forked child replaces the logger it inherited, whose sink state may belong to the parent,
// and never destroys the old one; the list keeps those reachable so leak checkers stay quiet.
struct Retired {
  spdlog::logger* logger;
  Retired* next;
};
Retired* retired = nullptr;

}  // namespace

spdlog::logger& logger() {
  spdlog::logger* l = current.load(std::memory_order_acquire);
  if (l) return *l;
  spdlog::logger* fresh = make_logger();
  if (current.compare_exchange_strong(l, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread made one first
  return *l;
}

// Cheap on purpose (every forked child calls it): the next logger() call makes the new logger,
// so a child that never logs never builds one.
void reset_logger_after_fork() {
  if (spdlog::logger* old = current.exchange(nullptr, std::memory_order_acq_rel))
    retired = new Retired{old, retired};
}

}  // namespace mpx::detail
