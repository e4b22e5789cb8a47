// The tutorial's first multiprocessing example: the parent prints its pid, a Process runs a
// function that prints its own pid and its parent's, and the parent waits for it.
#include <mpx/process.hpp>

#include <unistd.h>

#include "cli.hpp"

#include <cstdio>

namespace {

void worker() { std::printf("worker: process id %d, parent process id %d\n", ::getpid(), ::getppid()); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "The tutorial's first example: this process prints its pid, starts an mpx::Process that "
      "prints its own pid and its parent's, and waits for it. Takes no options but --help.",
      "mp1"};
  MPX_APP_PARSE(app, argc, argv);
  std::printf("parent: process id %d\n", ::getpid());
  mpx::Process p(worker);
  p.start();
  p.join();
  std::printf("parent: %s exited with code %d\n", p.name().c_str(), p.exitcode().value_or(-1));
  return p.exitcode() == 0 ? 0 : 1;
}
