// Monte Carlo pricing of European and Asian options, one pool task per point of a (strike,
// volatility) grid, checked against the Black-Scholes closed form.
#pragma once

#include <mpx/pool.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace mpx::workloads {

struct OptionParams {
  double S = 100;       // spot
  double K = 100;       // strike
  double sigma = 0.25;  // volatility
  double r = 0.05;      // risk-free rate
  int days = 260;       // steps in the one-year path
  int paths = 10000;
  template <class A>
  void serialize(A& a) {
    a(S, K, sigma, r, days, paths);
  }
};

enum Payoff : std::size_t { kEuroCall, kEuroPut, kAsianCall, kAsianPut };
inline constexpr const char* kPayoffNames[] = {"European call", "European put", "Asian call", "Asian put"};
// The same as identifiers (JSON keys).
inline constexpr const char* kPayoffKeys[] = {"european_call", "european_put", "asian_call", "asian_put"};

// Discounted mean payoffs and their Monte Carlo standard errors (sample sd / sqrt(paths)).
struct OptionPrices {
  std::array<double, 4> price{};
  std::array<double, 4> se{};
  template <class A>
  void serialize(A& a) {
    a(price, se);
  }
  bool operator==(const OptionPrices&) const = default;
};

// The tutorial's price_options, step for step: h = 1/days, c1 = exp((r - sigma^2/2) h),
// c2 = sigma sqrt(h); each path starts at S and `days` times does price *= c1 exp(c2 Z),
// sum += price; avg = sum / days; discounted by exp(-r). Z comes from `rng`.
OptionPrices price_options(const OptionParams& p, std::mt19937_64& rng);

// One grid point as a pool task: its normals come from task_rng(seed), fixed by (seed, task index).
struct PriceOptions {
  std::uint64_t seed = 0;
  OptionPrices operator()(const OptionParams& p) const;
  template <class A>
  void serialize(A& a) {
    a(seed);
  }
};

// Black-Scholes closed form for the European options (maturity one year, as in price_options).
double black_scholes_call(double S, double K, double sigma, double r, double T = 1);
double black_scholes_put(double S, double K, double sigma, double r, double T = 1);

// The tutorial's grid: K over linspace(90, 110, 5) (columns), sigma over linspace(0.1, 0.4, 5)
// (rows), S = 100, r = 0.05; row-major, so point (i, j) is index i * 5 + j.
struct Grid {
  std::vector<double> strikes;
  std::vector<double> sigmas;
  std::vector<OptionParams> points;
};
Grid tutorial_grid(int days = 260, int paths = 10000, int size = 5);

// The grid's prices, in point order. `progress(done, total)` runs in this thread as points
// are priced. `pool` is an mpx::Pool or an mpx::mpi::Pool: the same tasks, the same prices.
template <class P>
std::vector<OptionPrices> price_grid(P& pool, const Grid& g, std::uint64_t seed, std::size_t chunksize = 1,
                                     const std::function<void(std::size_t, std::size_t)>& progress = {}) {
  std::vector<OptionPrices> out;
  out.reserve(g.points.size());
  // imap keeps point order and lets progress be reported; task i is point i, as with map.
  for (auto&& p : pool.imap(PriceOptions{seed}, g.points, chunksize)) {
    out.push_back(std::forward<decltype(p)>(p));
    if (progress) progress(out.size(), g.points.size());
  }
  return out;
}
// The same prices computed in this process (the serial baseline; identical values).
std::vector<OptionPrices> price_grid_serial(
    const Grid& g, std::uint64_t seed, const std::function<void(std::size_t, std::size_t)>& progress = {});

// "price ± se" tables, one per payoff.
std::string render_tables(const Grid& g, const std::vector<OptionPrices>& prices);

// How far each European price is from Black-Scholes, in standard errors: the worst over the grid.
struct BsCheck {
  double worst_z = 0;
  std::size_t worst_point = 0;
  Payoff worst_payoff = kEuroCall;
};
BsCheck check_black_scholes(const Grid& g, const std::vector<OptionPrices>& prices);

}  // namespace mpx::workloads
