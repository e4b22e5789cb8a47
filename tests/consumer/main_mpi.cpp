// Built against an installed mpx::mpi: the README's example, run with mpirun -n 3.
#include <mpx/mpi.hpp>

#include <cstdio>
#include <ranges>

long square(long x) { return x * x; }

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv, boost::mpi::threading::serialized);
  boost::mpi::communicator world;
  return mpx::mpi::run_pool(world, [](mpx::mpi::Pool& pool) {
    auto ys = pool.map(square, std::views::iota(0L, 1000L));
    std::printf("installed mpx::mpi works: %ld on %u worker ranks\n", ys[999], pool.processes());
    return ys[999] == 998001 ? 0 : 1;
  });
}
