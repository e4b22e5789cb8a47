// The three workloads, serial against Pool(2), at sizes where the pool's per-task cost is lost in
// the work: pi(2*10^8) by the segmented sieve, 400 GOE matrices of 100 x 100, the 5 x 5 options
// grid at the tutorial's 10,000 paths x 260 days. Medians of the runs; each run's result is
// checked (a wrong answer stops the program).
#include "bench.hpp"

#include "workloads/matrices.hpp"
#include "workloads/options.hpp"
#include "workloads/primes.hpp"

#include <mpx/pool.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace wl = mpx::workloads;

// A wrong answer makes every figure meaningless: stop the run.
[[noreturn]] void fail(const std::string& what) { throw std::runtime_error("workloads bench: " + what); }

// CPU seconds (user + system) used so far by this process and all its live descendants: the
// pool's spawner and workers. Wall-clock speedup needs idle cores; on a shared, busy machine this
// still shows what the pool costs in extra work.
double tree_cpu_seconds() {
  std::map<long, std::pair<long, double>> procs;  // pid -> (parent, cpu seconds)
  const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(e.path() / "stat");
    std::string line;
    if (!std::getline(f, line)) continue;
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 2));  // fields from 3 (state) on
    std::vector<std::string> field;
    for (std::string t; rest >> t && field.size() < 13;) field.push_back(t);
    if (field.size() < 13) continue;
    procs[std::stol(name)] = {std::stol(field[1]), (std::stod(field[11]) + std::stod(field[12])) / tick};
  }
  double total = 0;
  std::vector<long> todo{static_cast<long>(::getpid())};
  while (!todo.empty()) {
    const long pid = todo.back();
    todo.pop_back();
    if (auto it = procs.find(pid); it != procs.end()) total += it->second.second;
    for (const auto& [child, info] : procs)
      if (info.first == pid) todo.push_back(child);
  }
  return total;
}

// Serial and pool times (medians), `<name>.speedup: x`, and the pool's CPU seconds (all its
// processes) over the serial run's, `<name>.cpu_ratio: x` (1.00 = no extra work).
template <class Serial, class Parallel>
void compare(mpx::bench::Context& ctx, const std::string& name, Serial&& serial, Parallel&& parallel) {
  const int runs = ctx.runs(3);
  std::vector<double> cs, cp;
  const double ts = mpx::bench::median_of(runs, [&] {
    const double c0 = tree_cpu_seconds();
    const double t = mpx::bench::time_seconds(serial);
    cs.push_back(tree_cpu_seconds() - c0);
    return t;
  });
  const double tp = mpx::bench::median_of(runs, [&] {
    const double c0 = tree_cpu_seconds();
    const double t = mpx::bench::time_seconds(parallel);
    cp.push_back(tree_cpu_seconds() - c0);
    return t;
  });
  mpx::bench::report(name + ".serial", ts, "s");
  mpx::bench::report(name + ".pool2", tp, "s");
  mpx::bench::report_ratio(name + ".speedup", ts, tp);
  mpx::bench::report_ratio(name + ".cpu_ratio", mpx::bench::median(cp), mpx::bench::median(cs));
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
