// options: the tutorial's Monte Carlo pricing of European and Asian options, one pool task per
// (strike, volatility) point of a 5 x 5 grid, printed as four tables with standard errors (or,
// with --json, as one JSON document on stdout). European prices are checked against
// Black-Scholes (exit status 1 beyond 4 standard errors), and the pool's prices against a serial
// run bit for bit: every task draws from its own task_rng stream, so the numbers do not depend
// on --processes or --chunksize.
#include "workloads/options.hpp"
#include "workloads/checksum.hpp"
#include "workloads/progress.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "cli.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <vector>

namespace wl = mpx::workloads;

int main(int argc, char** argv) {
  CLI::App app{
      "Options pricing on an mpx::Pool: Monte Carlo European and Asian calls and puts over a "
      "(strike, volatility) grid, checked against Black-Scholes.",
      "options"};
  mpx::apps::Backend backend;
  int paths = 10000, days = 260, size = 5;
  std::uint64_t seed = 2024;
  std::size_t chunksize = 1;
  bool no_serial = false, no_progress = false, json = false;
  app.add_option("-p,--processes", backend.processes, "Worker processes (0: one per CPU)");
  mpx::apps::add_backend_option(app, backend);
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
  app.add_flag("--no-progress", no_progress, "No progress on stderr");
  app.add_flag("--json", json,
               "Print one JSON document on stdout (the tables go to stderr); all but its \"run\" "
               "object is the same for any --processes, --chunksize and --backend");
  MPX_APP_PARSE(app, argc, argv);
  std::FILE* out = json ? stderr : stdout;

  const wl::Grid grid = wl::tutorial_grid(days, paths, size);
  return mpx::apps::run_on_backend(
      backend, argc, argv, "options", [&](auto& pool, const mpx::apps::Backend& b) {
        fmt::print(out, "Options: {} grid points, {} paths of {} days each, seed {}, {}\n\n",
                   grid.points.size(), paths, days, seed, b.describe(pool.processes()));
        std::vector<wl::OptionPrices> prices;
        double tp = 0;
        {
          wl::Progress progress("pool", !no_progress);
          tp = wl::time_seconds(
              [&] { prices = wl::price_grid(pool, grid, seed, chunksize, std::ref(progress)); });
        }
        bool ok = true;
        std::optional<double> ts;
        std::optional<bool> serial_equal;
        if (!no_serial) {
          std::vector<wl::OptionPrices> serial;
          {
            wl::Progress progress("serial", !no_progress);
            ts = wl::time_seconds([&] { serial = wl::price_grid_serial(grid, seed, std::ref(progress)); });
          }
          serial_equal = serial == prices;
          if (!*serial_equal) {
            fmt::print(out, "the pool's prices differ from the serial ones: WRONG\n");
            ok = false;
          }
        }

        fmt::print(out, "{}", wl::render_tables(grid, prices));
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
            fmt::print(out,
                       "K=100 sigma=0.25 {:<13}: {:.4f} ± {:.4f}, Black-Scholes {:.4f}, off by {:+.2f} SE\n",
                       wl::kPayoffNames[k], prices[i].price[k], prices[i].se[k], bs[k], z);
          }
        }
        const wl::BsCheck c = wl::check_black_scholes(grid, prices);
        const wl::OptionParams& w = grid.points[c.worst_point];
        const bool bs_ok = c.worst_z <= 4;
        fmt::print(out,
                   "largest Black-Scholes deviation over the grid: {:.2f} SE ({} at K={:g} sigma={:g}) {}\n",
                   c.worst_z, wl::kPayoffNames[c.worst_payoff], w.K, w.sigma,
                   bs_ok ? "ok (<= 4 SE)" : "WRONG (> 4 SE)");
        ok &= bs_ok;

        const std::string checksum = fmt::format("{:016x}", wl::fnv1a(flat));
        fmt::print(out, "pool {:.3f} s", tp);
        if (ts)
          fmt::print(out, ", serial {:.3f} s, speedup {:.2f}x on {} workers", *ts, *ts / tp,
                     pool.processes());
        fmt::print(out, "\nprices checksum {} (the same for any --processes and --chunksize)\n", checksum);
        if (!ok) fmt::print(out, "SOME CHECKS FAILED\n");

        if (json) {
          using Json = nlohmann::ordered_json;
          Json points = Json::array();
          for (std::size_t i = 0; i < grid.points.size(); ++i) {
            const wl::OptionParams& q = grid.points[i];
            Json p{{"K", q.K}, {"sigma", q.sigma}};
            for (std::size_t k = 0; k < 4; ++k) p[wl::kPayoffKeys[k]] = prices[i].price[k];
            for (std::size_t k = 0; k < 4; ++k) p[std::string(wl::kPayoffKeys[k]) + "_se"] = prices[i].se[k];
            p["black_scholes_call"] = wl::black_scholes_call(q.S, q.K, q.sigma, q.r);
            p["black_scholes_put"] = wl::black_scholes_put(q.S, q.K, q.sigma, q.r);
            points.push_back(std::move(p));
          }
          Json run{{"backend", b.name},
                   {"processes", pool.processes()},
                   {"chunksize", chunksize},
                   {"pool_seconds", tp}};
          if (ts) {
            run["serial_seconds"] = *ts;
            run["speedup"] = *ts / tp;
          }
          const Json doc{
              {"program", "options"},
              {"inputs",
               {{"S", grid.points.front().S},
                {"r", grid.points.front().r},
                {"days", days},
                {"paths", paths},
                {"grid", size},
                {"seed", seed}}},
              {"points", std::move(points)},
              {"prices_checksum", checksum},
              {"checks",
               {{"black_scholes",
                 {{"worst_se", c.worst_z},
                  {"payoff", wl::kPayoffKeys[c.worst_payoff]},
                  {"K", w.K},
                  {"sigma", w.sigma},
                  {"limit_se", 4.0},
                  {"ok", bs_ok}}},
                {"pool_equals_serial", serial_equal ? Json(*serial_equal) : Json(nullptr)}}},
              {"ok", ok},
              {"run", std::move(run)},
          };
          fmt::print("{}\n", doc.dump(2));
        }
        return ok ? 0 : 1;
      });
}
