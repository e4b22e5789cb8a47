// Built against an installed mpx: encodes a value, sends it through a Pipe, checks it back.
#include <mpx/mpx.hpp>

#include <cstdio>
#include <string>

int main() {
  auto [a, b] = mpx::Pipe();
  a.send(std::string("installed mpx works"));
  auto got = b.recv<std::string>();
  std::printf("%s\n", got.c_str());
  return got == "installed mpx works" ? 0 : 1;
}
