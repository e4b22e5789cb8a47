#include "primes.hpp"

#include <algorithm>
#include <cmath>

namespace mpx::workloads {

namespace {

std::uint64_t isqrt(std::uint64_t n) {
  auto r = static_cast<std::uint64_t>(std::sqrt(static_cast<double>(n)));
  // The double's rounding can be off by one either way for large n.
  while (r > 0 && r > n / r) --r;
  while (r + 1 <= n / (r + 1)) ++r;  // divisions: (r + 1)^2 may not fit near 2^64
  return r;
}

// Odd primes p <= limit (the sieving primes of a segment).
std::vector<std::uint32_t> odd_primes_upto(std::uint64_t limit) {
  std::vector<std::uint32_t> out;
  if (limit < 3) return out;
  std::vector<std::uint8_t> composite(limit + 1, 0);
  for (std::uint64_t i = 3; i <= limit; i += 2) {
    if (composite[i]) continue;
    out.push_back(static_cast<std::uint32_t>(i));
    for (std::uint64_t j = i * i; j <= limit; j += 2 * i) composite[j] = 1;
  }
  return out;
}

}  // namespace

int isprime(std::int64_t n) {
  if (n < 2) return 0;
  if (n == 2) return 1;
  // ceil(sqrt(n)) in integers: exact where the double would not be.
  auto un = static_cast<std::uint64_t>(n);
  std::uint64_t max = isqrt(un);
  if (max * max < un) ++max;
  for (std::uint64_t i = 2; i <= max; ++i)
    if (un % i == 0) return 0;
  return 1;
}

std::int64_t sum_primes(std::int64_t n) {
  std::int64_t sum = 0;
  for (std::int64_t x = 2; x < n; ++x)
    if (isprime(x)) sum += x;
  return sum;
}

std::uint64_t count_primes_in(SieveRange r) {
  if (r.hi <= r.lo) return 0;
  std::uint64_t count = (r.lo <= 2 && 2 < r.hi) ? 1 : 0;
  std::uint64_t first = std::max<std::uint64_t>(r.lo, 3) | 1;  // first odd candidate >= 3
  if (first >= r.hi) return count;
  const std::vector<std::uint32_t> primes = odd_primes_upto(isqrt(r.hi - 1));

  // A block of odd numbers small enough to stay in cache while every sieving prime crosses it.
  constexpr std::uint64_t kBlockOdds = std::uint64_t{1} << 18;
  std::vector<std::uint8_t> alive(kBlockOdds);
  for (std::uint64_t base = first; base < r.hi; base += 2 * kBlockOdds) {
    const std::uint64_t end = std::min(r.hi, base + 2 * kBlockOdds);
    const std::uint64_t len = (end - base + 1) / 2;  // odd numbers base, base+2, ... < end
    std::fill_n(alive.begin(), len, std::uint8_t{1});
    for (std::uint32_t p32 : primes) {
      const std::uint64_t p = p32;
      if (p * p >= end) break;
      // Smaller multiples of p were crossed out by smaller primes, so start at p*p (also keeps p).
      std::uint64_t start = p * p;
      if (start < base) {
        start = (base + p - 1) / p * p;
        if (start % 2 == 0) start += p;
      }
      for (std::uint64_t j = (start - base) / 2; j < len; j += p) alive[j] = 0;
    }
    count += static_cast<std::uint64_t>(
        std::count(alive.begin(), alive.begin() + static_cast<std::ptrdiff_t>(len), std::uint8_t{1}));
  }
  return count;
}

std::vector<SieveRange> split_range(std::uint64_t n, std::uint64_t segment) {
  std::vector<SieveRange> out;
  if (segment == 0) segment = 1;
  for (std::uint64_t lo = 0; lo < n; lo += std::min(segment, n - lo))
    out.push_back({lo, lo + std::min(segment, n - lo)});
  return out;
}

std::uint64_t default_segment(std::uint64_t n, unsigned processes) {
  const std::uint64_t per = 64 * std::uint64_t{std::max(1U, processes)};
  return std::clamp<std::uint64_t>(n / per, std::uint64_t{1} << 16, std::uint64_t{1} << 24);
}

std::uint64_t count_primes_below_serial(std::uint64_t n, std::uint64_t segment) {
  std::uint64_t total = 0;
  for (const SieveRange& r : split_range(n, segment ? segment : default_segment(n, 1)))
    total += count_primes_in(r);
  return total;
}

std::optional<std::uint64_t> known_prime_count(std::uint64_t n) {
  static constexpr std::uint64_t kPi[] = {0,      4,       25,       168,       1229,       9592,       78498,
                                          664579, 5761455, 50847534, 455052511, 4118054813, 37607912018};
  std::uint64_t p = 1;
  for (std::uint64_t pi : kPi) {
    if (p == n) return pi;
    p *= 10;
  }
  return std::nullopt;
}

}  // namespace mpx::workloads
