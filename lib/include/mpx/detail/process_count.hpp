// A number of processes given as any integer type. Without the check, Pool(-1) or
// serve_tasks(..., n) with a 64-bit n converts silently to a huge or truncated unsigned count.
#pragma once

#include <mpx/errors.hpp>

#include <concepts>
#include <limits>
#include <string>
#include <utility>

namespace mpx::detail {

template <std::integral I>
unsigned process_count(I n, const char* who) {
  if (std::cmp_less(n, 0) || std::cmp_greater(n, std::numeric_limits<unsigned>::max()))
    throw ValueError(std::string(who) + ": the number of processes must be between 0 (cpu_count()) and " +
                     std::to_string(std::numeric_limits<unsigned>::max()) + ", not " + std::to_string(n));
  return static_cast<unsigned>(n);
}

// Integer types other than unsigned, which the overloads taking unsigned take as they are.
template <class I>
concept other_integer = std::integral<I> && !std::same_as<I, unsigned> && !std::same_as<I, bool>;

}  // namespace mpx::detail
