// Prime numbers: the tutorial's isprime/sum_primes, and prime counting far beyond them with a
// segmented sieve whose segments are pool tasks.
#pragma once

#include <mpx/pool.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

namespace mpx::workloads {

// The tutorial's definitions, kept as they are (their cost grows with n, which is the point):
// 0 for n < 2, 1 for n == 2, else trial division by every i in 2..ceil(sqrt(n)).
int isprime(std::int64_t n);
// The sum of the primes strictly below n, each found with isprime().
std::int64_t sum_primes(std::int64_t n);

// A half-open range [lo, hi) of integers: one pool task of the segmented sieve.
struct SieveRange {
  std::uint64_t lo = 0;
  std::uint64_t hi = 0;
  template <class A>
  void serialize(A& a) {
    a(lo, hi);
  }
};

// How many primes p satisfy lo <= p < hi (segmented sieve of Eratosthenes over odd numbers;
// memory stays cache-sized whatever the range).
std::uint64_t count_primes_in(SieveRange r);

// [0, n) cut into consecutive ranges of `segment` numbers (the last may be shorter).
std::vector<SieveRange> split_range(std::uint64_t n, std::uint64_t segment);

// A segment size that gives every worker many tasks while each stays long enough for the
// per-task cost to vanish: about 64 per worker, so the one task a worker may hold queued when
// the others run dry is ~1/64 of its share (at 16 per worker that tail cost up to 6%).
std::uint64_t default_segment(std::uint64_t n, unsigned processes);

// pi(n): the number of primes below n, one pool task per segment (0 = default_segment). Results
// arrive in completion order; `progress(done, total)` is called after each, in this thread.
// `pool` is an mpx::Pool or an mpx::mpi::Pool: the same tasks, the same count.
template <class P>
std::uint64_t count_primes_below(P& pool, std::uint64_t n, std::uint64_t segment = 0,
                                 const std::function<void(std::size_t, std::size_t)>& progress = {}) {
  const auto ranges = split_range(n, segment ? segment : default_segment(n, pool.processes()));
  std::uint64_t total = 0;
  std::size_t done = 0;
  for (std::uint64_t c : pool.imap_unordered(count_primes_in, ranges)) {
    total += c;
    if (progress) progress(++done, ranges.size());
  }
  return total;
}
// The same segments, one after another in this process: the serial baseline.
std::uint64_t count_primes_below_serial(std::uint64_t n, std::uint64_t segment = 0);

// pi(n) for the powers of ten whose prime counts are well known (10^1 .. 10^12), else nothing.
std::optional<std::uint64_t> known_prime_count(std::uint64_t n);

}  // namespace mpx::workloads
