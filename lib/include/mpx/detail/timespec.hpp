// Nanoseconds as the timespec that ppoll, futex and pthread timed waits take.
#pragma once

#include <cstdint>
#include <ctime>

namespace mpx::detail {

// ns >= 0; the result is normalised (0 <= tv_nsec < 1e9), which the kernel requires.
constexpr timespec to_timespec(std::int64_t ns) noexcept {
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

}  // namespace mpx::detail
