// The three workloads, serial against Pool(2), at sizes where the pool's per-task cost is lost in
// the work: pi(2*10^8) by the segmented sieve, 400 GOE matrices of 100 x 100, the 5 x 5 options
// grid at the tutorial's 10,000 paths x 260 days. Medians of the runs; each run's result is
// checked (a wrong answer stops the program).
#include "bench.hpp"

#include "workloads/matrices.hpp"
#include "workloads/options.hpp"
#include "workloads/primes.hpp"

#include <mpx/pool.hpp>

#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace wl = mpx::workloads;

// A wrong answer makes every figure meaningless: stop the run.
[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("workloads bench: " + what); }

// Serial and pool times (medians), then `<name>.speedup: x`.
template <class Serial, class Parallel>
void compare(mpx::bench::Context& ctx, const std::string& name, Serial&& serial, Parallel&& parallel) {
  const int runs = ctx.runs(3);
  const double ts = mpx::bench::median_of(runs, [&] { return mpx::bench::time_seconds(serial); });
  const double tp = mpx::bench::median_of(runs, [&] { return mpx::bench::time_seconds(parallel); });
  mpx::bench::report(name + ".serial", ts, "s");
  mpx::bench::report(name + ".pool2", tp, "s");
  mpx::bench::report_ratio(name + ".speedup", ts, tp);
}

}  // namespace

MPX_BENCH_GROUP(workloads, "workloads", "primes, GOE matrices, options pricing: serial vs Pool(2) speedup") {
  mpx::Pool pool(2);

  {
    const std::uint64_t n = ctx.quick ? 20'000'000 : 200'000'000;
    const std::uint64_t expected = ctx.quick ? 1270607 : 11078937;
    const std::uint64_t seg = wl::default_segment(n, 2);
    compare(
        ctx, "primes",
        [&] {
          if (wl::count_primes_below_serial(n, seg) != expected) fail("serial prime count wrong");
        },
        [&] {
          if (wl::count_primes_below(pool, n, seg) != expected) fail("pool prime count wrong");
        });
  }
  {
    wl::EnsembleOptions o;
    o.n = 100;
    o.count = ctx.quick ? 40 : 400;
    std::vector<double> a, b;
    compare(
        ctx, "matrices", [&] { a = wl::goe_spacings_serial(o); }, [&] { b = wl::goe_spacings(pool, o); });
    if (a != b) fail("pool spacings differ from the serial ones");
  }
  {
    const wl::Grid g = wl::tutorial_grid(260, ctx.quick ? 1000 : 10000);
    std::vector<wl::OptionPrices> a, b;
    compare(
        ctx, "options", [&] { a = wl::price_grid_serial(g, 1); }, [&] { b = wl::price_grid(pool, g, 1); });
    if (a != b) fail("pool option prices differ from the serial ones");
  }
}
