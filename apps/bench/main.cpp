// mpx_bench: runs every registered benchmark group, or those whose name contains one of
// the filters given on the command line. Prints `name: value unit` lines.
#include "bench.hpp"

#include "cli.hpp"

#include <csignal>

int main(int argc, char** argv) {
  CLI::App app{"mpx benchmarks: prints `name: value unit` lines, with the raw-system baseline alongside"};
  std::vector<std::string> filters;
  bool list = false;
  mpx::bench::Context ctx;
  app.add_option("filters", filters, "run only groups whose name contains one of these");
  app.add_flag("--list", list, "list the groups and exit");
  app.add_flag("--quick", ctx.quick, "a short smoke run (few iterations; figures are rough)");
  MPX_APP_PARSE(app, argc, argv);

  std::signal(SIGPIPE, SIG_IGN);
  auto& groups = mpx::bench::registry();
  std::sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  int ran = 0;
  for (const auto& g : groups) {
    bool selected = filters.empty() || std::any_of(filters.begin(), filters.end(), [&](const std::string& f) {
                      return g.name.find(f) != std::string::npos;
                    });
    if (!selected) continue;
    if (list) {
      fmt::print("{}: {}\n", g.name, g.description);
      continue;
    }
    fmt::print("# {}: {}\n", g.name, g.description);
    std::fflush(stdout);
    g.run(ctx);
    ++ran;
  }
  if (!list && ran == 0) {
    fmt::print(stderr, "mpx_bench: no group matches; --list shows them\n");
    return 1;
  }
  return 0;
}
