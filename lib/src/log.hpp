// The library's logger: spdlog to stderr, named "mpx", level from MPX_LOG_LEVEL (default warn).
#pragma once

#include <spdlog/spdlog.h>

namespace mpx::detail {
spdlog::logger& logger();
}  // namespace mpx::detail
