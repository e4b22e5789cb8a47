#include "log.hpp"

#include <spdlog/cfg/helpers.h>
#include <spdlog/sinks/stdout_sinks.h>

#include <cstdlib>

namespace mpx::detail {

spdlog::logger& logger() {
  // Unsynchronised stderr sink: a forked child never inherits a held sink mutex.
  static std::shared_ptr<spdlog::logger> log = [] {
    auto l = std::make_shared<spdlog::logger>("mpx", std::make_shared<spdlog::sinks::stderr_sink_st>());
    l->set_level(spdlog::level::warn);
    l->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [mpx] [%l] [pid %P] %v");
    if (const char* env = std::getenv("MPX_LOG_LEVEL")) l->set_level(spdlog::level::from_str(env));
    return l;
  }();
  return *log;
}

}  // namespace mpx::detail
