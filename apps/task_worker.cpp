// Workers for a named task queue on a running manager (mpxd, or any mpx::Server): registers
// a few task functions by name, and the workloads' tasks (workloads/tasks.hpp), and serves the
// queue with N forked worker processes until the manager stops or this program gets
// SIGTERM/SIGINT. Clients in other programs submit to the queue by name (see manager_client's
// `submit`, and primes, matrices and options with --backend mpxd).
//
//   task_worker --address unix:/tmp/mpxd.sock --authkey-file key --queue work --processes 2
#include <mpx/managers.hpp>

#include "authkey_file.hpp"
#include "workloads/tasks.hpp"

#include <fmt/core.h>
#include <unistd.h>

#include "cli.hpp"

#include <cctype>
#include <sstream>
#include <stdexcept>
#include <string>

namespace {

long square(long x) { return x * x; }

// Words separated by white space, as str.split() counts them.
int word_count(std::string text) {
  std::istringstream in(text);
  int n = 0;
  for (std::string w; in >> w;) ++n;
  return n;
}

std::string shout(std::string text) {
  for (auto& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text + "!";
}

long checked_sqrt(long x) {
  if (x < 0) throw std::domain_error("sqrt of a negative number");
  long r = 0;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Serves a named task queue on a running mpx manager (mpxd) with forked workers.\n"
      "Tasks: square(long) -> long, word_count(string) -> int, shout(string) -> string,\n"
      "isqrt(long) -> long (fails with RemoteError for a negative number), pid() -> int;\n"
      "and the workloads' tasks, for primes, matrices and options run with --backend mpxd.",
      "task_worker"};
  std::string address, keyfile, queue = "work";
  unsigned processes = 2;
  app.add_option("--address", address, "the manager: unix:/path, unix:@name or tcp:host:port")->required();
  app.add_option("--authkey-file", keyfile, "file holding the manager's authkey (mode 0600)")->required();
  app.add_option("--queue", queue, "the task queue's name")->capture_default_str();
  app.add_option("--processes", processes, "worker processes (0: one per CPU)")->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  mpx::register_task("square", square);
  mpx::register_task("word_count", word_count);
  mpx::register_task("shout", shout);
  mpx::register_task("isqrt", checked_sqrt);
  mpx::register_task("pid", [] { return static_cast<int>(::getpid()); });
  mpx::workloads::register_tasks();

  try {
    auto a = mpx::Address::parse(address);
    auto key = mpx::apps::read_authkey_file(keyfile);
    fmt::print("task_worker: serving queue '{}' on {} with {} processes\n", queue, a.str(), processes);
    std::fflush(stdout);
    mpx::serve_tasks(a, key, queue, processes);
    fmt::print("task_worker: stopped\n");
  } catch (const std::exception& e) {
    fmt::print(stderr, "task_worker: {}\n", e.what());
    return 1;
  }
  return 0;
}
