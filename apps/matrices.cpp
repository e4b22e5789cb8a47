// matrices: the spacing of the two central eigenvalues of GOE matrices over an ensemble computed
// on mpx::Pool, normalised by its mean and compared with the Wigner surmise — moments, a
// terminal histogram, (with --svg) a picture, and (with --json) one JSON document on stdout.
// Each matrix draws from its own task_rng stream, so the ensemble is identical for any
// --processes; the program checks that the pool's ensemble equals the serial one bit for bit
// (exit status 1 otherwise). The --svg file is opened before any work (exit status 2 if it
// cannot be written).
#include "workloads/matrices.hpp"
#include "workloads/checksum.hpp"
#include "workloads/progress.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "cli.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace wl = mpx::workloads;

int main(int argc, char** argv) {
  CLI::App app{
      "Random matrix theory on an mpx::Pool: central eigenvalue spacings of GOE(N) matrices "
      "against the Wigner surmise.",
      "matrices"};
  mpx::apps::Backend backend;
  wl::EnsembleOptions o;
  bool tutorial = false, no_serial = false, no_progress = false, json = false;
  std::size_t bins = 0;
  std::string svg;
  app.add_option("-p,--processes", backend.processes, "Worker processes (0: one per CPU)");
  mpx::apps::add_backend_option(app, backend);
  app.add_option("-n,--size", o.n, "Matrix size N")->capture_default_str()->check(CLI::Range(2, 100000));
  app.add_option("-c,--count", o.count, "Matrices in the ensemble")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--seed", o.seed, "Seed of the ensemble's random streams")->capture_default_str();
  app.add_option("--chunksize", o.chunksize, "Matrices per task (0: about 8 tasks per worker)");
  app.add_flag("--tutorial", tutorial, "The tutorial's eigenvalue job: 4 matrices of 500 x 500");
  app.add_option("--bins", bins, "Histogram bins on [0, 3.5) (0: from the ensemble size)");
  app.add_option("--svg", svg,
                 "Write the histogram and the surmise as an SVG picture to this file (checked for "
                 "writing before any work)");
  app.add_flag("--no-serial", no_serial, "Skip the serial baseline (and the pool-vs-serial check)");
  app.add_flag("--no-progress", no_progress, "No progress on stderr");
  app.add_flag("--json", json,
               "Print one JSON document on stdout (the text goes to stderr); all but its \"run\" "
               "object is the same for any --processes, --chunksize and --backend");
  MPX_APP_PARSE(app, argc, argv);
  if (tutorial) {
    o.n = 500;
    o.count = 4;
  }
  std::optional<mpx::apps::OutputFile> svg_file;
  if (!svg.empty()) {
    try {
      svg_file.emplace(svg);
    } catch (const mpx::apps::OutputFile::Error& e) {
      fmt::print(stderr, "matrices: --svg: {}\n", e.what());
      return mpx::apps::kUsageError;
    }
  }
  std::FILE* out = json ? stderr : stdout;

  return mpx::apps::run_on_backend(
      backend, argc, argv, "matrices", [&](auto& pool, const mpx::apps::Backend& b) {
        fmt::print(out, "GOE ensemble: {} matrices of {} x {}, seed {}, {}\n", o.count, o.n, o.n, o.seed,
                   b.describe(pool.processes()));
        std::vector<double> raw;
        double tp = 0;
        {
          wl::Progress progress("matrices", !no_progress);
          tp = wl::time_seconds([&] { raw = wl::goe_spacings(pool, o, std::ref(progress)); });
        }
        bool ok = true;
        std::optional<double> ts;
        std::optional<bool> serial_equal;
        if (!no_serial) {
          std::vector<double> serial;
          ts = wl::time_seconds([&] { serial = wl::goe_spacings_serial(o); });
          serial_equal = serial == raw;
          if (!*serial_equal) {
            fmt::print(out, "the pool's spacings differ from the serial ones: WRONG\n");
            ok = false;
          }
        }

        const std::string checksum = fmt::format("{:016x}", wl::fnv1a(raw));
        fmt::print(out, "pool {:.3f} s", tp);
        if (ts)
          fmt::print(out, ", serial {:.3f} s, speedup {:.2f}x on {} workers", *ts, *ts / tp,
                     pool.processes());
        fmt::print(out, "\nspacings checksum {} (the same for any --processes and --chunksize)\n", checksum);

        const std::vector<double> s = wl::normalise_by_mean(raw);
        const wl::Moments m = wl::moments(s);
        const wl::Moments mr = wl::moments(raw);
        fmt::print(out, "raw central spacing: mean {:.6f}, variance {:.6f}\n", mr.mean, mr.variance);
        fmt::print(out,
                   "normalised spacing s: mean {:.6f}, variance {:.6f}  (Wigner surmise {:.4f}, large-N GOE "
                   "{:.3f})\n",
                   m.mean, m.variance, wl::kSurmiseVariance, wl::kGoeVariance);
        const bool mean_ok = std::abs(m.mean - 1) <= 1e-9;
        ok &= mean_ok;

        if (bins == 0) bins = s.size() >= 1000 ? 35 : s.size() >= 100 ? 14 : 7;  // widths 0.1, 0.25, 0.5
        const wl::Histogram h = wl::histogram(s, bins, 3.5);
        if (s.size() >= 20) fmt::print(out, "\n{}", wl::render_terminal(h));
        if (svg_file) {
          try {
            svg_file->write(wl::render_svg(
                h,
                fmt::format("Central eigenvalue spacing of {} GOE({}) matrices vs the Wigner surmise",
                            o.count, o.n),
                fmt::format("normalised: mean 1, variance {:.4f}", m.variance)));
          } catch (const mpx::apps::OutputFile::Error& e) {
            fmt::print(stderr, "matrices: {}\n", e.what());
            return 2;
          }
          fmt::print(out, "\nwrote {}\n", svg);
        }
        if (!ok) fmt::print(out, "SOME CHECKS FAILED\n");

        if (json) {
          using Json = nlohmann::ordered_json;
          Json run{{"backend", b.name},
                   {"processes", pool.processes()},
                   {"chunksize", o.chunksize},
                   {"pool_seconds", tp}};
          if (ts) {
            run["serial_seconds"] = *ts;
            run["speedup"] = *ts / tp;
          }
          const Json doc{
              {"program", "matrices"},
              {"inputs", {{"size", o.n}, {"count", o.count}, {"seed", o.seed}, {"bins", bins}}},
              {"spacings", raw},
              {"spacings_checksum", checksum},
              {"raw_moments", {{"mean", mr.mean}, {"variance", mr.variance}}},
              {"normalised_moments", {{"mean", m.mean}, {"variance", m.variance}}},
              {"wigner_surmise_variance", wl::kSurmiseVariance},
              {"goe_variance", wl::kGoeVariance},
              {"histogram",
               {{"max", h.max}, {"width", h.width()}, {"total", h.total}, {"density", h.density}}},
              {"checks",
               {{"normalised_mean_is_one", mean_ok},
                {"pool_equals_serial", serial_equal ? Json(*serial_equal) : Json(nullptr)}}},
              {"ok", ok},
              {"run", std::move(run)},
          };
          fmt::print("{}\n", doc.dump(2));
        }
        return ok ? 0 : 1;
      });
}
