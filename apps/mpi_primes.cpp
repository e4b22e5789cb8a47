// mpi_primes: the primes workload on MPI ranks with mpx::mpi::Pool — the tutorial's checks
// (isprime over 0..19999, sum_primes) and pi(N) by a segmented sieve whose segments are tasks,
// every known answer checked (exit status 1 on a wrong one). Run it with mpirun; rank 0
// dispatches, the other ranks (on any hosts that have this binary) compute:
//   mpirun -n 3 build/apps/mpi_primes --count-below 1e9
#include <mpx/mpi.hpp>

#include "workloads/primes.hpp"
#include "workloads/progress.hpp"

#include <fmt/core.h>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include "cli.hpp"

#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

namespace wl = mpx::workloads;

namespace {

bool check(const std::string& what, std::uint64_t got, std::uint64_t expected) {
  fmt::print("  {:<24} {:>12}  (expected {}) {}\n", what, got, expected, got == expected ? "ok" : "WRONG");
  return got == expected;
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv, boost::mpi::threading::serialized);
  boost::mpi::communicator world;

  CLI::App app{
      "The primes workload on MPI ranks: rank 0 dispatches mpx::mpi::Pool tasks, the others "
      "compute. Start it with mpirun -n 2 or more."};
  double count_below = 1e8;
  std::uint64_t segment = 0;
  app.add_option("--count-below", count_below, "Count the primes below N (e.g. 1e9)")
      ->capture_default_str()
      ->check(CLI::Range(1.0, 1e13));
  app.add_option("--segment", segment, "Numbers per sieve task (0: automatic)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Only rank 0 prints; every rank exits as apps/cli.hpp says (0 after --help, 2 on a usage error).
    const int rc = world.rank() == 0 ? app.exit(e) : e.get_exit_code();
    return rc == 0 ? 0 : mpx::apps::kUsageError;
  }
  if (world.size() < 2) {
    fmt::print(stderr, "mpi_primes: needs a root and at least one worker rank: mpirun -n 2 (or more) {}\n",
               argv[0]);
    return 2;
  }

  return mpx::mpi::run_pool(world, [&](mpx::mpi::Pool& pool) {
    bool ok = true;
    fmt::print("mpx::mpi::Pool on {} ranks: 1 root + {} workers\n", world.size(), pool.processes());

    std::vector<std::int64_t> xs(20000), ys{100, 1000, 5000};
    std::iota(xs.begin(), xs.end(), 0);
    auto flags = pool.map(wl::isprime, xs);
    ok &= check("primes below 20000",
                static_cast<std::uint64_t>(std::accumulate(flags.begin(), flags.end(), 0)), 2262);
    auto sums = pool.map(wl::sum_primes, ys);
    ok &= check("sum_primes(100)", static_cast<std::uint64_t>(sums[0]), 1060);
    ok &= check("sum_primes(1000)", static_cast<std::uint64_t>(sums[1]), 76127);
    ok &= check("sum_primes(5000)", static_cast<std::uint64_t>(sums[2]), 1548136);

    const auto n = static_cast<std::uint64_t>(std::llround(count_below));
    const auto ranges = wl::split_range(n, segment ? segment : wl::default_segment(n, pool.processes()));
    std::uint64_t pi = 0;
    const double t = wl::time_seconds([&] {
      for (std::uint64_t c : pool.imap_unordered(wl::count_primes_in, ranges)) pi += c;
    });
    fmt::print("  pi({}) = {} in {:.3f} s ({} tasks on {} worker ranks)\n", n, pi, t, ranges.size(),
               pool.processes());
    if (auto known = wl::known_prime_count(n)) ok &= check(fmt::format("pi({})", n), pi, *known);
    fmt::print("{}\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
    return ok ? 0 : 1;
  });
}
