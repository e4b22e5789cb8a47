// matrices: the spacing of the two central eigenvalues of GOE matrices over an ensemble computed
// on mpx::Pool, normalised by its mean and compared with the Wigner surmise — moments, a
// terminal histogram, and (with --svg) a picture. Each matrix draws from its own task_rng
// stream, so the ensemble is identical for any --processes; the program checks that the pool's
// ensemble equals the serial one bit for bit (exit status 1 otherwise).
#include "workloads/matrices.hpp"
#include "workloads/checksum.hpp"
#include "workloads/progress.hpp"

#include <fmt/core.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

namespace wl = mpx::workloads;

int main(int argc, char** argv) {
  CLI::App app{
      "Random matrix theory on an mpx::Pool: central eigenvalue spacings of GOE(N) matrices "
      "against the Wigner surmise."};
  unsigned processes = 0;
  wl::EnsembleOptions o;
  bool tutorial = false, no_serial = false, no_progress = false;
  std::size_t bins = 0;
  std::string svg;
  app.add_option("-p,--processes", processes, "Worker processes (0: one per CPU)");
  app.add_option("-n,--size", o.n, "Matrix size N")->capture_default_str()->check(CLI::Range(2, 100000));
  app.add_option("-c,--count", o.count, "Matrices in the ensemble")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", o.seed, "Seed of the ensemble's random streams")->capture_default_str();
  app.add_option("--chunksize", o.chunksize, "Matrices per task (0: about 8 tasks per worker)");
  app.add_flag("--tutorial", tutorial, "The tutorial's eigenvalue job: 4 matrices of 500 x 500");
  app.add_option("--bins", bins, "Histogram bins on [0, 3.5) (0: from the ensemble size)");
  app.add_option("--svg", svg, "Write the histogram and the surmise as an SVG picture to this file");
  app.add_flag("--no-serial", no_serial, "Skip the serial baseline (and the pool-vs-serial check)");
  app.add_flag("--no-progress", no_progress, "No progress on stderr");
  CLI11_PARSE(app, argc, argv);
  if (tutorial) {
    o.n = 500;
    o.count = 4;
  }

  mpx::Pool pool(processes);
  fmt::print("GOE ensemble: {} matrices of {} x {}, seed {}, Pool({})\n", o.count, o.n, o.n, o.seed,
             pool.processes());
  std::vector<double> raw;
  double tp = 0;
  {
    wl::Progress progress("matrices", !no_progress);
    tp = wl::time_seconds([&] { raw = wl::goe_spacings(pool, o, std::ref(progress)); });
  }
  bool ok = true;
  std::optional<double> ts;
  if (!no_serial) {
    std::vector<double> serial;
    ts = wl::time_seconds([&] { serial = wl::goe_spacings_serial(o); });
    if (serial != raw) {
      fmt::print("the pool's spacings differ from the serial ones: WRONG\n");
      ok = false;
    }
  }
  pool.close();
  pool.join();

  fmt::print("pool {:.3f} s", tp);
  if (ts) fmt::print(", serial {:.3f} s, speedup {:.2f}x on {} workers", *ts, *ts / tp, pool.processes());
  fmt::print("\nspacings checksum {:016x} (the same for any --processes and --chunksize)\n", wl::fnv1a(raw));

  const std::vector<double> s = wl::normalise_by_mean(raw);
  const wl::Moments m = wl::moments(s);
  const wl::Moments mr = wl::moments(raw);
  fmt::print("raw central spacing: mean {:.6f}, variance {:.6f}\n", mr.mean, mr.variance);
  fmt::print(
      "normalised spacing s: mean {:.6f}, variance {:.6f}  (Wigner surmise {:.4f}, large-N GOE {:.3f})\n",
      m.mean, m.variance, wl::kSurmiseVariance, wl::kGoeVariance);
  if (std::abs(m.mean - 1) > 1e-9) ok = false;

  if (bins == 0) bins = s.size() >= 1000 ? 35 : s.size() >= 100 ? 14 : 7;  // widths 0.1, 0.25, 0.5
  const wl::Histogram h = wl::histogram(s, bins, 3.5);
  if (s.size() >= 20) fmt::print("\n{}", wl::render_terminal(h));
  if (!svg.empty()) {
    std::ofstream f(svg);
    f << wl::render_svg(
        h,
        fmt::format("Central eigenvalue spacing of {} GOE({}) matrices vs the Wigner surmise", o.count, o.n),
        fmt::format("normalised: mean 1, variance {:.4f}", m.variance));
    if (!f.flush()) {
      fmt::print(stderr, "cannot write {}\n", svg);
      return 2;
    }
    fmt::print("\nwrote {}\n", svg);
  }
  if (!ok) fmt::print("SOME CHECKS FAILED\n");
  return ok ? 0 : 1;
}
