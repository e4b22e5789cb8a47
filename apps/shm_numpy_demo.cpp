// A C++ process fills a named shared memory block with doubles; a stock Python script opens
// the same block by name (numpy when installed, else memoryview) and writes its sum back.
// Nothing is copied between the two: both map the same pages.
//
//   shm_numpy_demo --count 1000000 --script apps/python/shm_reader.py
#include <mpx/shared_memory.hpp>

#include <fmt/core.h>
#include <spawn.h>
#include <sys/wait.h>

#include "cli.hpp"

#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

extern char** environ;

namespace {

// Runs argv to its end; its exit code (-1 if it could not start or was killed).
int run(std::vector<std::string> args) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid;
  if (::posix_spawnp(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Shares doubles with a stock Python script through a named shared memory block"};
  std::size_t count = 1'000'000;
  std::string script = std::string(MPX_SOURCE_DIR) + "/apps/python/shm_reader.py";
  std::string python = "python3";
  app.add_option("--count", count, "how many doubles")->capture_default_str()->check(CLI::Range(1, 1 << 27));
  app.add_option("--script", script, "the Python reader")->capture_default_str();
  app.add_option("--python", python, "the Python interpreter")->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  try {
    // One more double than the data: the script leaves its answer there.
    auto shm = mpx::SharedMemory::create((count + 1) * sizeof(double));
    auto xs = shm.as<double>();
    std::iota(xs.begin(), xs.end() - 1, 0.0);  // 0, 1, 2, ...: the sum is exact in a double
    const double expected = static_cast<double>(count) * static_cast<double>(count - 1) / 2;
    fmt::print("c++: {} doubles in block '{}' ({} bytes), sum {:.1f}\n", count, shm.name(), shm.size(),
               expected);
    std::fflush(stdout);  // before the script's output, not after
    int rc = run({python, script, shm.name(), std::to_string(count)});
    double answer = xs[count];
    shm.unlink();
    if (rc != 0) {
      fmt::print(stderr, "shm_numpy_demo: {} {} failed (exit code {})\n", python, script, rc);
      return 1;
    }
    if (answer != expected) {
      fmt::print(stderr, "shm_numpy_demo: Python's sum {} is not {}\n", answer, expected);
      return 1;
    }
    fmt::print("c++: Python's sum, read from the same block: {:.1f} (matches)\n", answer);
  } catch (const mpx::Error& e) {
    fmt::print(stderr, "shm_numpy_demo: {}\n", e.what());
    return 1;
  }
  return 0;
}
