// The tutorial's drivers in CPython (apps/bench/python/{primes,matrices,options}.py, standard
// library only, multiprocessing.Pool(2)) next to the C++ workloads, serial and on Pool(2), at the
// same sizes. The sizes are cut down from the tutorial's (which take minutes in CPython) so the
// three scripts run in seconds; every line's name says its size. The C++ times are medians, the
// Python ones single runs (each script times its serial map and its pool map once), and each
// script checks its own known answers: one that fails prints why and no figures.
#include "bench.hpp"

#include "workloads/matrices.hpp"
#include "workloads/options.hpp"
#include "workloads/primes.hpp"
#include "workloads/serial.hpp"

#include <mpx/pool.hpp>

#include <sys/wait.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace wl = mpx::workloads;
using Json = nlohmann::json;

// The script's --json document, or nothing (with the reason on stdout as a comment line).
std::optional<Json> run_script(const std::string& script, const std::string& args) {
  const std::string cmd = "python3 '" + mpx::bench::python_script(script).string() +
                          "' --json --processes 2 " + args + " 2>/dev/null";
  std::FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return std::nullopt;
  std::string out;
  char buf[4096];
  for (std::size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = ::pclose(p);
  const Json doc = Json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (status != 0 || doc.is_discarded() || doc.value("ok", false) != true) {
    fmt::print("# workloads.python: {} {} failed (exit status {}); run it by hand to see why\n", script, args,
               WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return std::nullopt;
  }
  return doc;
}

[[noreturn]] void fail(const std::string& what) {
  throw std::runtime_error("workloads.python bench: " + what);
}

// `<name>.cpp_serial`, `.cpp_pool2`, `.python_serial`, `.python_pool2`, the Python pool's speedup
// over its serial run, and how many times faster the C++ pool is than Python's.
template <class Serial, class Parallel>
void compare(mpx::bench::Context& ctx, const std::string& name, Serial&& serial, Parallel&& parallel,
             double py_serial, double py_pool) {
  const int runs = ctx.runs(3);
  const double ts = mpx::bench::median_of(runs, [&] { return mpx::bench::time_seconds(serial); });
  const double tp = mpx::bench::median_of(runs, [&] { return mpx::bench::time_seconds(parallel); });
  mpx::bench::report(name + ".cpp_serial", ts, "s");
  mpx::bench::report(name + ".cpp_pool2", tp, "s");
  mpx::bench::report(name + ".python_serial", py_serial, "s");
  mpx::bench::report(name + ".python_pool2", py_pool, "s");
  mpx::bench::report_ratio(name + ".python_speedup", py_serial, py_pool);
  mpx::bench::report_ratio(name + ".cpp_pool2_vs_python_pool2", py_pool, tp);
}

}  // namespace

MPX_BENCH_GROUP(workloads_python, "workloads.python",
                "the tutorial's drivers in CPython (stdlib, Pool(2)) next to C++ serial and Pool(2), at "
                "reduced sizes") {
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) {
    fmt::print("# workloads.python: skipped: no python3 on PATH\n");
    return;
  }
  mpx::Pool pool(2);
  const std::uint64_t seed = 2024;

  {
    // sum_primes costs about n^1.5 each, so CPython takes tens of seconds for the tutorial's 0..4999.
    const std::int64_t sum_items = ctx.quick ? 300 : 1000;
    std::vector<std::int64_t> xs(20000), ys(static_cast<std::size_t>(sum_items));
    std::iota(xs.begin(), xs.end(), 0);
    std::iota(ys.begin(), ys.end(), 0);
    if (auto py = run_script("primes.py", fmt::format("--sum-primes-items {}", sum_items))) {
      const Json& r = (*py)["run"];
      std::vector<int> is_serial, is_pool;
      std::vector<std::int64_t> sum_serial, sum_pool;
      compare(
          ctx, fmt::format("primes_isprime20000_sumprimes{}", sum_items),
          [&] {
            is_serial = wl::serial_map(wl::isprime, xs);
            sum_serial = wl::serial_map(wl::sum_primes, ys);
          },
          [&] {
            is_pool = pool.map(wl::isprime, xs);
            sum_pool = pool.map(wl::sum_primes, ys);
          },
          r["isprime"]["serial_seconds"].get<double>() + r["sum_primes"]["serial_seconds"].get<double>(),
          r["isprime"]["pool_seconds"].get<double>() + r["sum_primes"]["pool_seconds"].get<double>());
      if (is_pool != is_serial || sum_pool != sum_serial) fail("pool primes differ from the serial ones");
    }
  }
  {
    wl::EnsembleOptions o;
    o.n = 20;
    o.count = ctx.quick ? 40 : 200;
    o.seed = seed;
    if (auto py =
            run_script("matrices.py", fmt::format("--size {} --count {} --seed {}", o.n, o.count, seed))) {
      const Json& r = (*py)["run"];
      std::vector<double> a, b;
      compare(
          ctx, fmt::format("matrices_{}_of_{}x{}", o.count, o.n, o.n),
          [&] { a = wl::goe_spacings_serial(o); }, [&] { b = wl::goe_spacings(pool, o); },
          r["serial_seconds"].get<double>(), r["pool_seconds"].get<double>());
      if (a != b) fail("pool spacings differ from the serial ones");
    }
  }
  {
    const int paths = ctx.quick ? 200 : 1000, days = 52;
    const wl::Grid g = wl::tutorial_grid(days, paths, 5);
    if (auto py = run_script("options.py",
                             fmt::format("--paths {} --days {} --grid 5 --seed {}", paths, days, seed))) {
      const Json& r = (*py)["run"];
      std::vector<wl::OptionPrices> a, b;
      compare(
          ctx, fmt::format("options_5x5_{}paths_{}days", paths, days),
          [&] { a = wl::price_grid_serial(g, seed); }, [&] { b = wl::price_grid(pool, g, seed); },
          r["serial_seconds"].get<double>(), r["pool_seconds"].get<double>());
      if (a != b) fail("pool option prices differ from the serial ones");
    }
  }
}
