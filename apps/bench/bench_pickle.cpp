// Python objects: the pickle codec and Python clients of the object server, each next to
// Python itself in the same run (apps/bench/python/pickle_bench.py).
//   pickle.dict1000.*       py::dumps / py::loads of a 1,000-entry dict of str -> float, against
//                           Python's pickle (protocol 4) of the same dict
//   pickle.sync_manager.*   a stock Python SyncManager dict proxy, d[k] = v then d[k], against an
//                           mpx::Server and against Python's own manager server, alternated by
//                           the script in one run
#include "bench.hpp"

#include <mpx/managers.hpp>
#include <mpx/pickle.hpp>

#include <fcntl.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <thread>

namespace py = mpx::py;

namespace {

// Microseconds per call of f: the best of 5 timed loops of n calls (the machine's noise is
// one-sided), the median of `runs` such figures.
template <class F>
double micros_per_call(int runs, long n, F&& f) {
  return mpx::bench::median_of(runs, [&] {
    double best = 1e300;
    for (int k = 0; k < 5; ++k) {
      double s = mpx::bench::time_seconds([&] {
        for (long i = 0; i < n; ++i) f();
      });
      best = std::min(best, s / static_cast<double>(n) * 1e6);
    }
    return best;
  });
}

}  // namespace

MPX_BENCH_GROUP(
    pickle, "pickle",
    "pickle dumps/loads and a stock Python SyncManager against mpx's server, each next to Python") {
  py::Dict d;
  for (int i = 0; i < 1000; ++i) d.set(py::Object(fmt::format("key{:04d}", i)), py::Object(i * 0.5));
  const py::Object dict(d);
  const mpx::Bytes blob = py::dumps(dict);
  if (py::loads(blob) != dict) throw std::runtime_error("pickle bench: the dict does not come back equal");
  long n = ctx.iterations(500);
  int runs = ctx.runs(3);
  double dumps_us = micros_per_call(runs, n, [&] { py::dumps(dict); });
  double loads_us = micros_per_call(runs, n, [&] { py::loads(blob); });
  mpx::bench::report("pickle.dict1000.dumps_us", dumps_us, "us");
  mpx::bench::report("pickle.dict1000.loads_us", loads_us, "us");

  // A server in this process for the script's SyncManager; its key in a private file.
  auto dir = std::filesystem::temp_directory_path() / fmt::format("mpx-bench-pickle-{}", ::getpid());
  std::filesystem::create_directories(dir);
  std::string key_file = (dir / "key").string();
  {
    std::ofstream(key_file) << "bench-key\n";
    ::chmod(key_file.c_str(), 0600);
  }
  std::string sock = (dir / "s.sock").string();
  std::map<std::string, double> py_figures;
  {
    mpx::Server server(mpx::Address::unix_path(sock), "bench-key");
    std::thread serving([&] { server.serve_forever(); });
    py_figures = mpx::bench::python_figures("pickle_bench.py", ctx.quick, runs,
                                            "--server '" + sock + "' --authkey-file '" + key_file + "'");
    server.shutdown();
    serving.join();
  }
  std::filesystem::remove_all(dir);
  if (py_figures.empty()) {
    fmt::print("# pickle: no Python figures (python3 missing?)\n");
    return;
  }
  auto figure = [&](const std::string& name) {
    auto it = py_figures.find(name);
    return it == py_figures.end() ? 0.0 : it->second;
  };
  double py_dumps = figure("python.pickle.dict1000.dumps_us"),
         py_loads = figure("python.pickle.dict1000.loads_us");
  double mpx_calls = figure("python.pickle.sync_manager.mpx_server.calls_per_s");
  double py_calls = figure("python.pickle.sync_manager.python_server.calls_per_s");
  mpx::bench::report("python.pickle.dict1000.dumps_us", py_dumps, "us");
  mpx::bench::report("python.pickle.dict1000.loads_us", py_loads, "us");
  mpx::bench::report_ratio("pickle.dict1000.dumps.speedup_vs_python", py_dumps, dumps_us);
  mpx::bench::report_ratio("pickle.dict1000.loads.speedup_vs_python", py_loads, loads_us);
  mpx::bench::report("pickle.sync_manager.mpx_server.calls_per_s", mpx_calls, "calls/s");
  mpx::bench::report("pickle.sync_manager.python_server.calls_per_s", py_calls, "calls/s");
  mpx::bench::report_ratio("pickle.sync_manager.mpx_vs_python_server", mpx_calls, py_calls);
}
