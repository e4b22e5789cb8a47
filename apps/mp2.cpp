// mp2, the tutorial's Pool example: apply, map, apply_async, map_async on a default Pool.
// Prints what the Python version prints.
#include <mpx/pool.hpp>

#include "cli.hpp"

#include <chrono>
#include <cstdint>
#include <iostream>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

namespace {

std::int64_t f(std::int64_t x) {
  std::int64_t r = 1;
  for (int i = 0; i < 10; ++i) r *= x;
  return r;
}

std::string g(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  return "I just woke up!";
}

std::string py(bool b) { return b ? "True" : "False"; }

std::string py(const std::vector<std::int64_t>& v) {
  std::string s = "[";
  for (std::size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"The tutorial's Pool example: apply, map, apply_async and map_async on an mpx::Pool.", "mp2"};
  unsigned processes = 0;
  app.add_option("-p,--processes", processes, "Worker processes (0: one per CPU, as Pool() in Python)")
      ->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  using namespace std::chrono_literals;
  mpx::Pool p(processes);
  std::vector<std::int64_t> xs(10);
  std::iota(xs.begin(), xs.end(), 0);

  std::cout << p.apply(f, std::int64_t{10}) << "\n";
  std::cout << py(p.map(f, xs)) << "\n";

  auto r = p.apply_async(g, 1.0);
  std::cout << py(r.ready()) << "\n";
  std::cout << r.get(2s) << "\n";

  auto m = p.map_async(f, xs);
  m.wait();
  std::cout << py(m.successful()) << "\n";
  std::cout << py(m.get()) << "\n";

  p.close();
  p.join();
}
