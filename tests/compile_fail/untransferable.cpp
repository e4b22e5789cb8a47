// Must NOT compile: mpx refuses, with a readable message, to encode a type it cannot transfer.
#include <mpx/serialize.hpp>

struct Opaque {
  int fd;
};

int main() { return static_cast<int>(mpx::encode(Opaque{3}).size()); }
