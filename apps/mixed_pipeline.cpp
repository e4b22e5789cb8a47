// The C++ half of a pipeline shared with a stock Python program through mpxd: this producer
// feeds jobs (dicts of floats) to the named queue "pipeline-jobs", apps/python/mixed_pipeline.py
// takes them, and its answers come back on the named queue "pipeline-results", checked here.
//
//   python3 apps/python/mixed_pipeline.py --address unix:/tmp/mpxd.sock --authkey-file key &
//   mixed_pipeline --address unix:/tmp/mpxd.sock --authkey-file key --count 1000
//
// Both sides name the same queues; whichever opens a queue first, the values cross as C++
// std::map<std::string, double> here and as Python dicts there (proto/manager.md, "Python
// clients"). An empty optional is the end-of-work marker (None in Python).
#include <mpx/managers.hpp>

#include "authkey_file.hpp"
#include "cli.hpp"

#include <fmt/core.h>

#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <string>

namespace {

using Job = std::map<std::string, double>;

int run(mpx::Manager& m, long count, long consumers, std::chrono::seconds timeout) {
  auto jobs = m.queue<std::optional<Job>>(0, "pipeline-jobs");
  auto results = m.queue<Job>(0, "pipeline-results");
  for (long i = 0; i < count; ++i)
    jobs.put(Job{{"i", static_cast<double>(i)}, {"x", 0.5 * static_cast<double>(i)}});
  for (long i = 0; i < consumers; ++i) jobs.put(std::nullopt);
  long wrong = 0;
  double total = 0;
  for (long i = 0; i < count; ++i) {
    Job r = results.get(timeout);
    double x = 0.5 * r.at("i");
    if (r.at("y") != x * x + 1) ++wrong;
    total += r.at("y");
  }
  fmt::print("mixed_pipeline: {} jobs out as C++ maps, {} answers back from Python, {} wrong, sum {:.2f}\n",
             count, count, wrong, total);
  return wrong == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "The C++ producer of a pipeline shared with a stock Python consumer (apps/python/mixed_pipeline.py) "
      "through mpxd's named queues 'pipeline-jobs' and 'pipeline-results'."};
  std::string address, keyfile;
  long count = 1000, consumers = 1, timeout = 30;
  app.add_option("--address", address, "the manager: unix:/path, unix:@name or tcp:host:port")->required();
  app.add_option("--authkey-file", keyfile, "file holding the manager's authkey (mode 0600)")->required();
  app.add_option("--count", count, "how many jobs")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--consumers", consumers, "Python consumers to send an end marker to")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--timeout", timeout, "seconds to wait for any one answer")->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);
  try {
    auto m = mpx::Manager::connect(mpx::Address::parse(address), mpx::apps::read_authkey_file(keyfile));
    return run(m, count, consumers, std::chrono::seconds(timeout));
  } catch (const std::exception& e) {
    fmt::print(stderr, "mixed_pipeline: {}\n", e.what());
    return 1;
  }
}
