// A fingerprint of a run's floating-point results, bit for bit, so runs with different worker
// counts can be compared at a glance.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>

namespace mpx::workloads {

inline std::uint64_t fnv1a(std::span<const double> xs) {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (double x : xs) {
    std::uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    for (int i = 0; i < 8; ++i) {
      h ^= (bits >> (8 * i)) & 0xff;
      h *= 0x100000001b3ULL;
    }
  }
  return h;
}

}  // namespace mpx::workloads
