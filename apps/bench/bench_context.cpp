// Start methods: what starting a child costs under fork, forkserver and spawn.
//   process.start_join_<m>_us: an mpx::Process with an empty target made, started and joined
//     under each start method, next to the floor, a bare fork/_exit/waitpid, all measured in
//     turn in the same run so they see the same machine.
//   pool.start_shutdown_<m>_ms: Pool(2) built and shut down (close + join) under each method,
//     next to two bare fork/_exit/waitpid.
// When python3 is on PATH, Python's multiprocessing.get_context(m).Process start + join and
// get_context(m).Pool(2) start + close/join (apps/bench/python/context_bench.py) run in the same
// run, and each `_vs_python` line is Python's median over mpx's: how many times faster mpx is.
#include "bench.hpp"

#include <mpx/context.hpp>
#include <mpx/errors.hpp>
#include <mpx/pool.hpp>
#include <mpx/process.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using mpx::StartMethod;
using mpx::bench::Clock;

constexpr StartMethod kMethods[] = {StartMethod::fork, StartMethod::forkserver, StartMethod::spawn};

void nothing() {}

// n bare fork/_exit/waitpid, in µs: the kernel's part of starting and joining n children.
double fork_floor_us(int n) {
  auto t0 = Clock::now();
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    pid_t p = ::fork();
    if (p == 0) ::_exit(0);
    if (p < 0) throw std::runtime_error("fork");
    pids.push_back(p);
  }
  for (pid_t p : pids) mpx::bench::join_child(p);
  return mpx::bench::seconds(Clock::now() - t0) * 1e6;
}

// One mpx::Process made, started and joined under `method`, in µs.
double process_us(StartMethod method) {
  auto t0 = Clock::now();
  mpx::Process p({.name = "", .daemon = false, .context = mpx::get_context(method)}, &nothing);
  p.start();
  p.join();
  if (p.exitcode() != 0) throw std::runtime_error("benchmark child failed");
  return mpx::bench::seconds(Clock::now() - t0) * 1e6;
}

// Pool(2) built and shut down under `method`, in ms.
double pool_ms(StartMethod method) {
  return 1e3 * mpx::bench::time_seconds(
                   [&] { mpx::Pool p({.processes = 2, .context = mpx::get_context(method)}); });
}

// Whether this library starts children under `method`: nullopt if so (after one warm-up child,
// which also starts forkserver's server), else why not.
std::optional<std::string> unavailable(StartMethod method) {
  try {
    process_us(method);
    return std::nullopt;
  } catch (const mpx::ValueError& e) {
    return std::string(e.what());
  }
}

}  // namespace

MPX_BENCH_GROUP(
    context, "context",
    "start methods: Process start + join under fork/forkserver/spawn vs a bare fork/_exit/waitpid, "
    "Pool(2) start + shutdown, and Python's get_context(m).Process / .Pool(2) side by side") {
  using mpx::bench::median;
  using mpx::bench::report;
  using mpx::bench::report_ratio;
  const int runs = ctx.runs(5);

  // ---- Process start + join, each available method in turn with the floor.
  std::vector<StartMethod> methods;
  for (StartMethod m : kMethods) {
    if (auto why = unavailable(m))
      fmt::print("# context: {} skipped: {}\n", mpx::to_string(m), *why);
    else
      methods.push_back(m);
  }
  std::map<StartMethod, std::vector<double>> process_samples;
  std::vector<double> floor_samples;
  const int per_run = static_cast<int>(ctx.iterations(40));
  for (int r = 0; r < runs; ++r)
    for (int i = 0; i < per_run; ++i) {
      floor_samples.push_back(fork_floor_us(1));
      for (StartMethod m : methods) process_samples[m].push_back(process_us(m));
    }
  const double floor = median(floor_samples);
  std::map<StartMethod, double> process_median;
  report("process.start_join_floor_us", floor, "us");
  for (StartMethod m : methods) {
    const std::string name = fmt::format("process.start_join_{}", mpx::to_string(m));
    process_median[m] = median(process_samples[m]);
    report(name + "_us", process_median[m], "us");
    report_ratio(name + "_vs_floor", process_median[m], floor);
  }

  // ---- Pool(2) start + shutdown under each method, with two bare forks.
  auto pool_name = [](StartMethod m) { return fmt::format("pool.start_shutdown_{}", mpx::to_string(m)); };
  std::map<StartMethod, std::vector<double>> pool_samples;
  std::vector<double> pool_floor_samples;
  for (StartMethod m : methods) pool_ms(m);  // warm-up
  for (int i = 0; i < runs * 4; ++i) {
    pool_floor_samples.push_back(fork_floor_us(2));
    for (StartMethod m : methods) pool_samples[m].push_back(pool_ms(m));
  }
  const double pool_floor = median(pool_floor_samples);
  std::map<StartMethod, double> pool_median;
  report("pool.start_shutdown_floor_us", pool_floor, "us");
  for (StartMethod m : methods) {
    pool_median[m] = median(pool_samples[m]);
    report(pool_name(m) + "_ms", pool_median[m], "ms");
    report_ratio(pool_name(m) + "_vs_floor", pool_median[m] * 1e3, pool_floor);
  }

  // ---- Python, same run.
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) {
    fmt::print("# context: Python skipped: no python3 on PATH\n");
    return;
  }
  auto py = mpx::bench::python_figures("context_bench.py", ctx.quick, runs);
  if (py.empty()) {
    fmt::print("# context: no Python figures (context_bench.py failed?)\n");
    return;
  }
  for (StartMethod m : kMethods) {
    const std::string method(mpx::to_string(m));
    const std::string py_process = "python.process.start_join_" + method + "_us";
    const std::string py_pool = "python.pool.start_shutdown_" + method + "_ms";
    if (py.count(py_process)) {
      report(py_process, py[py_process], "us");
      if (process_median.count(m))
        report_ratio("process.start_join_" + method + "_vs_python", py[py_process], process_median[m]);
    }
    if (py.count(py_pool)) {
      report(py_pool, py[py_pool], "ms");
      if (pool_median.count(m)) report_ratio(pool_name(m) + "_vs_python", py[py_pool], pool_median[m]);
    }
  }
}
