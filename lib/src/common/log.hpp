// The library's logger: spdlog to stderr, named "mpx", level from MPX_LOG_LEVEL (default warn).
#pragma once

#include <spdlog/spdlog.h>

namespace mpx::detail {
spdlog::logger& logger();
// In a freshly forked child: another thread of the parent may have held the sink's mutex
// at fork time, so the child swaps in a new logger and abandons the old one.
void reset_logger_after_fork();
}  // namespace mpx::detail
