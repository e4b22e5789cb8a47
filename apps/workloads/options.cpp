#include "options.hpp"

#include "serial.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <utility>

namespace mpx::workloads {

OptionPrices price_options(const OptionParams& p, std::mt19937_64& rng) {
  if (p.days < 1 || p.paths < 2) throw std::invalid_argument("price_options: needs days >= 1 and paths >= 2");
  const double h = 1.0 / p.days;
  const double c1 = std::exp((p.r - p.sigma * p.sigma / 2) * h);
  const double c2 = p.sigma * std::sqrt(h);
  std::normal_distribution<double> normal;
  std::array<double, 4> sum{}, sumsq{};
  for (int path = 0; path < p.paths; ++path) {
    double price = p.S;
    double total = 0;
    for (int day = 0; day < p.days; ++day) {
      price *= c1 * std::exp(c2 * normal(rng));
      total += price;
    }
    const double avg = total / p.days;
    const std::array<double, 4> payoff{std::max(price - p.K, 0.0), std::max(p.K - price, 0.0),
                                       std::max(avg - p.K, 0.0), std::max(p.K - avg, 0.0)};
    for (std::size_t k = 0; k < 4; ++k) {
      sum[k] += payoff[k];
      sumsq[k] += payoff[k] * payoff[k];
    }
  }
  const double df = std::exp(-p.r);
  const auto n = static_cast<double>(p.paths);
  OptionPrices out;
  for (std::size_t k = 0; k < 4; ++k) {
    const double mean = sum[k] / n;
    const double var = std::max(0.0, (sumsq[k] - sum[k] * mean) / (n - 1));
    out.price[k] = df * mean;
    out.se[k] = df * std::sqrt(var / n);
  }
  return out;
}

OptionPrices PriceOptions::operator()(const OptionParams& p) const {
  std::mt19937_64 rng = task_rng(seed);
  return price_options(p, rng);
}

namespace {
double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }
}  // namespace

double black_scholes_call(double S, double K, double sigma, double r, double T) {
  const double d1 = (std::log(S / K) + (r + sigma * sigma / 2) * T) / (sigma * std::sqrt(T));
  const double d2 = d1 - sigma * std::sqrt(T);
  return S * normal_cdf(d1) - K * std::exp(-r * T) * normal_cdf(d2);
}

double black_scholes_put(double S, double K, double sigma, double r, double T) {
  const double d1 = (std::log(S / K) + (r + sigma * sigma / 2) * T) / (sigma * std::sqrt(T));
  const double d2 = d1 - sigma * std::sqrt(T);
  return K * std::exp(-r * T) * normal_cdf(-d2) - S * normal_cdf(-d1);
}

Grid tutorial_grid(int days, int paths, int size) {
  Grid g;
  // numpy.linspace: start + i * step, the end point included.
  for (int i = 0; i < size; ++i) {
    const double t = size > 1 ? static_cast<double>(i) / (size - 1) : 0.0;
    g.strikes.push_back(90 + t * 20);
    g.sigmas.push_back(0.1 + t * 0.3);
  }
  for (double sigma : g.sigmas)
    for (double K : g.strikes) g.points.push_back({100, K, sigma, 0.05, days, paths});
  return g;
}

std::vector<OptionPrices> price_grid_serial(const Grid& g, std::uint64_t seed,
                                            const std::function<void(std::size_t, std::size_t)>& progress) {
  if (!progress) return serial_map(PriceOptions{seed}, g.points);
  std::size_t done = 0;
  // serial_map runs point i as task i, so the wrapper draws exactly what PriceOptions alone does.
  return serial_map(
      [&](const OptionParams& p) {
        OptionPrices r = PriceOptions{seed}(p);
        progress(++done, g.points.size());
        return r;
      },
      g.points);
}

std::string render_tables(const Grid& g, const std::vector<OptionPrices>& prices) {
  std::string out;
  const std::size_t cols = g.strikes.size();
  for (std::size_t k = 0; k < 4; ++k) {
    out += fmt::format("{} (price ± standard error)\n{:>9}", kPayoffNames[k], "sigma\\K");
    for (double K : g.strikes) out += fmt::format(" {:>17.2f}", K);
    out += "\n";
    for (std::size_t i = 0; i < g.sigmas.size(); ++i) {
      out += fmt::format("{:>9.3f}", g.sigmas[i]);
      for (std::size_t j = 0; j < cols; ++j) {
        const OptionPrices& p = prices.at(i * cols + j);
        out += fmt::format(" {:>8.4f} ± {:<6.4f}", p.price[k], p.se[k]);
      }
      out += "\n";
    }
    out += "\n";
  }
  return out;
}

BsCheck check_black_scholes(const Grid& g, const std::vector<OptionPrices>& prices) {
  BsCheck c;
  for (std::size_t i = 0; i < g.points.size() && i < prices.size(); ++i) {
    const OptionParams& p = g.points[i];
    const double bs[2] = {black_scholes_call(p.S, p.K, p.sigma, p.r),
                          black_scholes_put(p.S, p.K, p.sigma, p.r)};
    for (std::size_t k : {kEuroCall, kEuroPut}) {
      const double z = std::abs(prices[i].price[k] - bs[k]) / prices[i].se[k];
      if (z > c.worst_z) c = {z, i, static_cast<Payoff>(k)};
    }
  }
  return c;
}

}  // namespace mpx::workloads
