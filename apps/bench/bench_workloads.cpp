// The three workloads, serial against two threads and Pool(2), at sizes where the pool's per-task cost is
// lost in the work: pi(2*10^8) by the segmented sieve, 400 GOE matrices of 100 x 100, the 5 x 5 options grid
// at the tutorial's 10,000 paths x 260 days. Medians of the runs; each run's result is checked (a wrong
// answer stops the program).
#include "bench.hpp"

#include "workloads/matrices.hpp"
#include "workloads/options.hpp"
#include "workloads/primes.hpp"
#include "workloads/serial.hpp"

#include <mpx/pool.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <numeric>
#include <ranges>
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

// Serial, std::thread and pool times (medians) of the same tasks: `<name>.speedup` is the pool's
// over serial, `<name>.pool2_vs_threads2` the pool's time over two in-process threads' (1.00 = no
// cost for separate processes), `<name>.balance_bound` the best speedup `tasks` equal tasks allow
// on two workers. `<name>.cpu_ratio` is the pool's CPU seconds (all its processes) over the serial
// run's (1.00 = no extra work).
template <class Serial, class Threads, class Parallel>
void compare(mpx::bench::Context& ctx, const std::string& name, std::size_t tasks, Serial&& serial,
             Threads&& threads, Parallel&& parallel) {
  const int runs = ctx.runs(7);  // short runs on a shared machine: more of them for a steady median
  std::vector<double> cs, cp;
  auto timed = [&](auto& fn, std::vector<double>& cpu) {
    const double c0 = tree_cpu_seconds();
    const double t = mpx::bench::time_seconds(fn);
    cpu.push_back(tree_cpu_seconds() - c0);
    return t;
  };
  // Interleaved, so a burst of load elsewhere on the machine hits all three alike.
  std::vector<double> ts, tt, tp, unused;
  for (int i = 0; i < runs; ++i) {
    ts.push_back(timed(serial, cs));
    tt.push_back(timed(threads, unused));
    tp.push_back(timed(parallel, cp));
  }
  const double s = mpx::bench::median(ts), t = mpx::bench::median(tt), p = mpx::bench::median(tp);
  mpx::bench::report(name + ".serial", s, "s");
  mpx::bench::report(name + ".threads2", t, "s");
  mpx::bench::report(name + ".pool2", p, "s");
  mpx::bench::report_ratio(name + ".threads_speedup", s, t);
  mpx::bench::report_ratio(name + ".speedup", s, p);
  mpx::bench::report_ratio(name + ".pool2_vs_threads2", p, t);
  mpx::bench::report_ratio(name + ".balance_bound", static_cast<double>(tasks),
                           static_cast<double>((tasks + 1) / 2));
  mpx::bench::report_ratio(name + ".cpu_ratio", mpx::bench::median(cp), mpx::bench::median(cs));
}

}  // namespace

MPX_BENCH_GROUP(workloads, "workloads",
                "primes, GOE matrices, options pricing: serial vs 2 threads vs Pool(2) speedup") {
  mpx::Pool pool(2);

  {
    const std::uint64_t n = ctx.quick ? 20'000'000 : 200'000'000;
    const std::uint64_t expected = ctx.quick ? 1270607 : 11078937;
    const std::uint64_t seg = wl::default_segment(n, 2);
    const auto ranges = wl::split_range(n, seg);
    compare(
        ctx, "primes", ranges.size(),
        [&] {
          if (wl::count_primes_below_serial(n, seg) != expected) fail("serial prime count wrong");
        },
        [&] {
          const auto counts = wl::thread_map(wl::count_primes_in, ranges, 2);
          if (std::accumulate(counts.begin(), counts.end(), std::uint64_t{0}) != expected)
            fail("threads prime count wrong");
        },
        [&] {
          if (wl::count_primes_below(pool, n, seg) != expected) fail("pool prime count wrong");
        });
  }
  {
    wl::EnsembleOptions o;
    o.n = 100;
    o.count = ctx.quick ? 40 : 400;
    o.chunksize = wl::default_chunksize(static_cast<std::size_t>(o.count), pool.processes());
    std::vector<double> a, b, c;
    compare(
        ctx, "matrices", (static_cast<std::size_t>(o.count) + o.chunksize - 1) / o.chunksize,
        [&] { a = wl::goe_spacings_serial(o); },
        [&] {
          b = wl::thread_map(wl::GoeSpacing{o.n, o.seed}, std::views::iota(std::int64_t{0}, o.count), 2,
                             o.chunksize);
        },
        [&] { c = wl::goe_spacings(pool, o); });
    if (a != b || a != c) fail("threads or pool spacings differ from the serial ones");
  }
  {
    const wl::Grid g = wl::tutorial_grid(260, ctx.quick ? 1000 : 10000);
    std::vector<wl::OptionPrices> a, b, c;
    compare(
        ctx, "options", g.points.size(), [&] { a = wl::price_grid_serial(g, 1); },
        [&] { b = wl::thread_map(wl::PriceOptions{1}, g.points, 2); },
        [&] { c = wl::price_grid(pool, g, 1); });
    if (a != b || a != c) fail("threads or pool option prices differ from the serial ones");
  }
}
