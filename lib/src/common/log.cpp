// common/ — what every layer may use: the library's spdlog logger (log.hpp, and its public face
// <mpx/logging.hpp>). Includes nothing of the library but its own folder and that header.
#include "common/log.hpp"

#include <mpx/logging.hpp>

#include <spdlog/sinks/stdout_sinks.h>

#include <atomic>
#include <cstdlib>

namespace mpx::detail {
namespace {

constexpr const char* kPattern = "[%Y-%m-%d %H:%M:%S.%e] [mpx] [%l] [pid %P] %v";
constexpr int kUnset = -1;
std::atomic<int> chosen_level{kUnset};  // by log_to_stderr(level); outlives a fork

spdlog::logger* make_logger() {
  auto* l = new spdlog::logger("mpx", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  l->set_level(spdlog::level::warn);
  l->set_pattern(kPattern);
  if (const char* env = std::getenv("MPX_LOG_LEVEL")) l->set_level(spdlog::level::from_str(env));
  if (int chosen = chosen_level.load(std::memory_order_relaxed); chosen != kUnset)
    l->set_level(static_cast<spdlog::level::level_enum>(chosen));
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

namespace mpx {

spdlog::logger& get_logger() { return detail::logger(); }

spdlog::logger& log_to_stderr() {
  spdlog::logger& l = detail::logger();
  for (const auto& sink : l.sinks())
    if (dynamic_cast<spdlog::sinks::stderr_sink_mt*>(sink.get())) return l;
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  sink->set_pattern(detail::kPattern);
  l.sinks().push_back(std::move(sink));
  return l;
}

spdlog::logger& log_to_stderr(spdlog::level::level_enum level) {
  detail::chosen_level.store(static_cast<int>(level), std::memory_order_relaxed);
  spdlog::logger& l = log_to_stderr();
  l.set_level(level);
  return l;
}

}  // namespace mpx
