// options: the tutorial's Monte Carlo pricing of European and Asian options, one pool task per
// (strike, volatility) point of a 5 x 5 grid, printed as four tables with standard errors.
// European prices are checked against Black-Scholes (exit status 1 beyond 4 standard errors),
// and the pool's prices against a serial run bit for bit: every task draws from its own
// task_rng stream, so the numbers do not depend on --processes or --chunksize.
#include "workloads/options.hpp"
#include "workloads/checksum.hpp"
#include "workloads/progress.hpp"

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

namespace wl = mpx::workloads;

int main(int argc, char** argv) {
  CLI::App app{
      "Options pricing on an mpx::Pool: Monte Carlo European and Asian calls and puts over a "
      "(strike, volatility) grid, checked against Black-Scholes."};
  unsigned processes = 0;
  int paths = 10000, days = 260, size = 5;
  std::uint64_t seed = 2024;
  std::size_t chunksize = 1;
  bool no_serial = false;
  app.add_option("-p,--processes", processes, "Worker processes (0: one per CPU)");
  app.add_option("--paths", paths, "Monte Carlo paths per grid point")
      ->capture_default_str()
      ->check(CLI::Range(2, 1 << 30));
  app.add_option("--days", days, "Time steps of each one-year path")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--grid", size, "Grid points per axis (K in 90..110, sigma in 0.1..0.4)")
      ->capture_default_str()
      ->check(CLI::Range(1, 101));
  app.add_option("--seed", seed, "Seed of the tasks' random streams")->capture_default_str();
  app.add_option("--chunksize", chunksize, "Grid points per task")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_flag("--no-serial", no_serial, "Skip the serial baseline (and the pool-vs-serial check)");
  CLI11_PARSE(app, argc, argv);

  const wl::Grid grid = wl::tutorial_grid(days, paths, size);
  mpx::Pool pool(processes);
  fmt::print("Options: {} grid points, {} paths of {} days each, seed {}, Pool({})\n\n", grid.points.size(),
             paths, days, seed, pool.processes());
  std::vector<wl::OptionPrices> prices;
  const double tp = wl::time_seconds([&] { prices = wl::price_grid(pool, grid, seed, chunksize); });
  bool ok = true;
  std::optional<double> ts;
  if (!no_serial) {
    std::vector<wl::OptionPrices> serial;
    ts = wl::time_seconds([&] { serial = wl::price_grid_serial(grid, seed); });
    if (serial != prices) {
      fmt::print("the pool's prices differ from the serial ones: WRONG\n");
      ok = false;
    }
  }
  pool.close();
  pool.join();

  fmt::print("{}", wl::render_tables(grid, prices));
  std::vector<double> flat;
  for (const auto& p : prices) {
    flat.insert(flat.end(), p.price.begin(), p.price.end());
    flat.insert(flat.end(), p.se.begin(), p.se.end());
  }

  for (std::size_t i = 0; i < grid.points.size(); ++i) {
    const wl::OptionParams& q = grid.points[i];
    if (q.K != 100 || std::abs(q.sigma - 0.25) > 1e-12) continue;
    const double bs[2] = {wl::black_scholes_call(q.S, q.K, q.sigma, q.r),
                          wl::black_scholes_put(q.S, q.K, q.sigma, q.r)};
    for (std::size_t k : {wl::kEuroCall, wl::kEuroPut}) {
      const double z = (prices[i].price[k] - bs[k]) / prices[i].se[k];
      fmt::print("K=100 sigma=0.25 {:<13}: {:.4f} ± {:.4f}, Black-Scholes {:.4f}, off by {:+.2f} SE\n",
                 wl::kPayoffNames[k], prices[i].price[k], prices[i].se[k], bs[k], z);
    }
  }
  const wl::BsCheck c = wl::check_black_scholes(grid, prices);
  const wl::OptionParams& w = grid.points[c.worst_point];
  fmt::print("largest Black-Scholes deviation over the grid: {:.2f} SE ({} at K={:g} sigma={:g}) {}\n",
             c.worst_z, wl::kPayoffNames[c.worst_payoff], w.K, w.sigma,
             c.worst_z <= 4 ? "ok (<= 4 SE)" : "WRONG (> 4 SE)");
  ok &= c.worst_z <= 4;

  fmt::print("pool {:.3f} s", tp);
  if (ts) fmt::print(", serial {:.3f} s, speedup {:.2f}x on {} workers", *ts, *ts / tp, pool.processes());
  fmt::print("\nprices checksum {:016x} (the same for any --processes and --chunksize)\n", wl::fnv1a(flat));
  if (!ok) fmt::print("SOME CHECKS FAILED\n");
  return ok ? 0 : 1;
}
