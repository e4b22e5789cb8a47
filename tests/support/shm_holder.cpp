// Test helper: creates a shared memory block, has a forked child create another, prints both
// names and waits to be killed. The suite kills it with SIGKILL and expects the resource
// tracker to remove both blocks.
#include <mpx/process.hpp>
#include <mpx/shared_memory.hpp>

#include <unistd.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: shm_holder <name prefix>\n");
    return 2;
  }
  const std::string prefix = argv[1];
  auto mine = mpx::SharedMemory::create(4096, prefix + "-parent");
  mpx::Process child(mpx::Process::Options{"holder-child", true}, [&] {
    auto theirs = mpx::SharedMemory::create(4096, prefix + "-child");
    std::printf("%s\n", theirs.name().c_str());
    std::fflush(stdout);
    for (;;) ::pause();
  });
  child.start();
  std::printf("%s\n", mine.name().c_str());
  std::fflush(stdout);
  for (;;) ::pause();
}
