// primes: the tutorial's prime-number driver on mpx::Pool — serial map(isprime, 0..19999) and
// map(sum_primes, 0..4999) against the same maps on the pool, with times and speedup — and,
// with --count-below N, pi(N) by a segmented sieve whose segments are pool tasks. Every answer
// with a known value is checked; a wrong one makes the exit status 1. With --json, one JSON
// document on stdout holds the inputs, the answers and their checks, and the timings.
#include "workloads/primes.hpp"
#include "workloads/progress.hpp"

#include <fmt/core.h>
#include <nlohmann/json.hpp>

#include "backend.hpp"
#include "cli.hpp"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace wl = mpx::workloads;
using Json = nlohmann::ordered_json;

namespace {

// "1000000", "1e9", "10^9".
std::uint64_t parse_count(const std::string& s) {
  std::size_t pos = 0;
  if (auto caret = s.find('^'); caret != std::string::npos) {
    const double base = std::stod(s.substr(0, caret)), exp = std::stod(s.substr(caret + 1));
    return static_cast<std::uint64_t>(std::llround(std::pow(base, exp)));
  }
  if (s.find_first_of("eE.") != std::string::npos) {
    const double v = std::stod(s, &pos);
    if (pos != s.size() || v < 0 || v > 1.8e19) throw std::invalid_argument(s);
    return static_cast<std::uint64_t>(std::llround(v));
  }
  const unsigned long long v = std::stoull(s, &pos);
  if (pos != s.size()) throw std::invalid_argument(s);
  return v;
}

// Prints the check to `out` and adds {"name", "value", "expected", "ok"} to `checks`.
bool report_check(std::FILE* out, Json& checks, const std::string& what, std::int64_t got,
                  std::int64_t expected) {
  const bool ok = got == expected;
  fmt::print(out, "  {:<24} {:>12}  (expected {}) {}\n", what, got, expected, ok ? "ok" : "WRONG");
  checks.push_back({{"name", what}, {"value", got}, {"expected", expected}, {"ok", ok}});
  return ok;
}

std::string speedup(double serial, double pool) {
  return pool > 0 ? fmt::format("{:.2f}x", serial / pool) : "-";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Prime numbers on an mpx::Pool: the tutorial's isprime/sum_primes driver (serial vs pool), "
      "and prime counting with a segmented sieve split into pool tasks (--count-below).",
      "primes"};
  mpx::apps::Backend backend;
  std::size_t chunksize = 0;
  std::string count_below;
  std::uint64_t segment = 0;
  bool no_serial = false, no_progress = false, skip_tutorial = false, json = false;
  int repeat = 3;
  app.add_option("-p,--processes", backend.processes, "Worker processes (0: one per CPU)");
  mpx::apps::add_backend_option(app, backend);
  app.add_option("--chunksize", chunksize, "Items per task for the tutorial's maps (0: Python's rule)");
  app.add_option("--repeat", repeat, "Tutorial timings: the median of this many runs")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  app.add_option("--count-below", count_below, "Count the primes below N (e.g. 1e9 or 10^9) on the pool");
  app.add_option("--segment", segment, "Numbers per sieve task for --count-below (0: automatic)");
  app.add_flag("--no-serial", no_serial, "With --count-below: skip the serial baseline run");
  app.add_flag("--no-progress", no_progress, "With --count-below: no progress on stderr");
  app.add_flag("--skip-tutorial", skip_tutorial, "Only run --count-below");
  app.add_flag("--json", json,
               "Print one JSON document on stdout (the text goes to stderr); all but its \"run\" "
               "object is the same for any --processes, --chunksize, --segment and --backend");
  MPX_APP_PARSE(app, argc, argv);
  std::FILE* out = json ? stderr : stdout;

  std::optional<std::uint64_t> n_count;
  if (!count_below.empty()) {
    try {
      n_count = parse_count(count_below);
    } catch (const std::exception&) {
      fmt::print(stderr, "primes: --count-below: not a number: {}\n", count_below);
      return mpx::apps::kUsageError;
    }
  }

  return mpx::apps::run_on_backend(
      backend, argc, argv, "primes", [&](auto& pool, const mpx::apps::Backend& b) {
        bool ok = true;
        const double t_start = b.start_seconds;
        const unsigned workers = pool.processes();
        // The document --json prints: everything outside "run" depends on the inputs alone.
        Json checks = Json::array(), tutorial_doc, count_doc;
        Json run{{"backend", b.name},
                 {"processes", workers},
                 {"chunksize", chunksize},
                 {"pool_start_seconds", t_start}};
        auto timing = [](double serial, double parallel) {
          return Json{{"serial_seconds", serial}, {"pool_seconds", parallel}, {"speedup", serial / parallel}};
        };

        if (!skip_tutorial) {
          std::vector<std::int64_t> xs(20000), ys(5000);
          std::iota(xs.begin(), xs.end(), 0);
          std::iota(ys.begin(), ys.end(), 0);
          fmt::print(out,
                     "Tutorial driver: isprime over 0..19999, sum_primes over 0..4999; {} started in "
                     "{:.1f} ms; "
                     "median of {} runs\n",
                     b.describe(workers), t_start * 1e3, repeat);

          std::vector<int> is_serial, is_pool;
          std::vector<std::int64_t> sum_serial, sum_pool;
          const double t1 = wl::median_seconds(repeat, [&] {
            is_serial.resize(xs.size());
            for (std::size_t i = 0; i < xs.size(); ++i) is_serial[i] = wl::isprime(xs[i]);
          });
          const double t2 =
              wl::median_seconds(repeat, [&] { is_pool = pool.map(wl::isprime, xs, chunksize); });
          const double t3 = wl::median_seconds(repeat, [&] {
            sum_serial.resize(ys.size());
            for (std::size_t i = 0; i < ys.size(); ++i) sum_serial[i] = wl::sum_primes(ys[i]);
          });
          const double t4 =
              wl::median_seconds(repeat, [&] { sum_pool = pool.map(wl::sum_primes, ys, chunksize); });
          fmt::print(out, "  {:<12} serial {:8.4f} s   pool {:8.4f} s   speedup {} on {} workers\n",
                     "isprime", t1, t2, speedup(t1, t2), workers);
          fmt::print(
              out, "  {:<12} serial {:8.4f} s   pool {:8.4f} s   speedup {} on {} workers ({})\n",
              "sum_primes", t3, t4, speedup(t3, t4), workers,
              chunksize ? fmt::format("chunksize {}", chunksize) : std::string("Python's chunksize rule"));

          // sum_primes(n) costs about n^1.5, so Python's 8 equal-length chunks are far from equal work:
          // the last one is over a quarter of the total. Finer chunks let the workers even out.
          std::vector<std::int64_t> sum_fine;
          run["repeat"] = repeat;
          run["isprime"] = timing(t1, t2);
          run["sum_primes"] = timing(t3, t4);
          if (chunksize == 0) {
            const double t5 =
                wl::median_seconds(repeat, [&] { sum_fine = pool.map(wl::sum_primes, ys, 10); });
            run["sum_primes_chunksize_10"] = timing(t3, t5);
            fmt::print(
                out, "  {:<12} serial {:8.4f} s   pool {:8.4f} s   speedup {} on {} workers (chunksize 10)\n",
                "sum_primes", t3, t5, speedup(t3, t5), workers);
            if (sum_fine != sum_serial) ok = false;
          }

          const bool same = is_pool == is_serial && sum_pool == sum_serial && ok;
          if (!same) {
            fmt::print(out, "  pool results differ from the serial results: WRONG\n");
            ok = false;
          }
          const auto below = std::accumulate(is_pool.begin(), is_pool.end(), std::int64_t{0});
          const auto sum_5000 = pool.apply(wl::sum_primes, std::int64_t{5000});
          ok &= report_check(out, checks, "primes below 20000", below, 2262);
          ok &= report_check(out, checks, "sum_primes(100)", sum_pool.at(100), 1060);
          ok &= report_check(out, checks, "sum_primes(1000)", sum_pool.at(1000), 76127);
          ok &= report_check(out, checks, "sum_primes(5000)", sum_5000, 1548136);
          tutorial_doc = {
              {"isprime_items", xs.size()},
              {"sum_primes_items", ys.size()},
              {"primes_below_20000", below},
              {"sum_primes", {{"100", sum_pool.at(100)}, {"1000", sum_pool.at(1000)}, {"5000", sum_5000}}},
              {"pool_equals_serial", same}};
        }

        if (n_count) {
          const std::uint64_t n = *n_count;
          const std::uint64_t seg = segment ? segment : wl::default_segment(n, workers);
          const auto tasks = wl::split_range(n, seg).size();
          fmt::print(out, "Counting primes below {} with a segmented sieve: {} tasks of {} numbers on {}\n",
                     n, tasks, seg, b.describe(workers));
          std::uint64_t pi_pool = 0, pi_serial = 0;
          double tp = 0, ts = 0;
          {
            wl::Progress progress("pool sieve", !no_progress);
            tp =
                wl::time_seconds([&] { pi_pool = wl::count_primes_below(pool, n, seg, std::ref(progress)); });
          }
          fmt::print(out, "  pool    pi({}) = {}   {:.3f} s\n", n, pi_pool, tp);
          count_doc = {{"n", n}, {"pi", pi_pool}, {"pool_equals_serial", nullptr}};
          run["count_below"] = {{"segment", seg}, {"tasks", tasks}, {"pool_seconds", tp}};
          if (!no_serial) {
            ts = wl::time_seconds([&] { pi_serial = wl::count_primes_below_serial(n, seg); });
            fmt::print(out, "  serial  pi({}) = {}   {:.3f} s   speedup {} on {} workers\n", n, pi_serial, ts,
                       speedup(ts, tp), workers);
            run["count_below"].update(timing(ts, tp));
            count_doc["pool_equals_serial"] = pi_serial == pi_pool;
            if (pi_serial != pi_pool) {
              fmt::print(out, "  serial and pool counts differ: WRONG\n");
              ok = false;
            }
          }
          if (auto known = wl::known_prime_count(n))
            ok &= report_check(out, checks, fmt::format("pi({})", n), static_cast<std::int64_t>(pi_pool),
                               static_cast<std::int64_t>(*known));
        }

        fmt::print(out, "{}\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
        if (json) {
          const Json doc{{"program", "primes"},
                         {"tutorial", tutorial_doc},
                         {"count_below", count_doc},
                         {"checks", checks},
                         {"ok", ok},
                         {"run", run}};
          fmt::print("{}\n", doc.dump(2));
        }
        return ok ? 0 : 1;
      });
}
