// Where the workloads run their tasks (--backend): `pool`, an mpx::Pool of forked workers on this
// machine, or `mpi`, an mpx::mpi::Pool on the ranks of MPI_COMM_WORLD (started by mpirun: rank 0
// runs the program, every other rank computes tasks). Both run the same tasks with the same
// task indices, so the results are the same, bit for bit.
#pragma once

#include <mpx/pool.hpp>

#include <fmt/core.h>

#include "cli.hpp"

#include <chrono>
#include <cstdio>
#include <string>

#ifdef MPX_APPS_WITH_MPI
#include <mpx/mpi.hpp>
#endif

namespace mpx::apps {

struct Backend {
  std::string name = "pool";  // "pool" or "mpi"
  unsigned processes = 0;     // --processes (pool only: under MPI the worker ranks are mpirun's)
  double start_seconds = 0;   // how long the pool took to be ready for tasks
  // "Pool(2)" or "mpi::Pool(2 worker ranks)", for the programs' text.
  std::string describe(unsigned workers) const {
    return name == "mpi" ? fmt::format("mpi::Pool({} worker ranks)", workers)
                         : fmt::format("Pool({})", workers);
  }
};

// --backend, with what this build offers.
inline void add_backend_option(CLI::App& app, Backend& b) {
  app.add_option("--backend", b.name,
                 "pool: forked workers on this machine (--processes); mpi: MPI ranks, run under "
                 "mpirun -n N (rank 0 dispatches, N-1 compute)")
      ->capture_default_str()
      ->check(CLI::IsMember({"pool", "mpi"}));
}

// Runs body(pool, backend) with an mpx::Pool or, for "mpi", an mpx::mpi::Pool, and returns its
// exit code (2 if the backend cannot be had). Under MPI only rank 0 runs the body.
template <class Body>
int run_on_backend(Backend& b, int& argc, char**& argv, const char* program, Body&& body) {
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  if (b.name == "mpi") {
#ifdef MPX_APPS_WITH_MPI
    boost::mpi::environment env(argc, argv, boost::mpi::threading::serialized);
    boost::mpi::communicator world;
    if (world.size() < 2) {
      fmt::print(stderr,
                 "{}: --backend mpi needs a root and at least one worker rank: mpirun -n 2 (or more)\n",
                 program);
      return kUsageError;
    }
    if (b.processes != 0 && world.rank() == 0)
      fmt::print(stderr, "{}: --processes is ignored with --backend mpi: mpirun's ranks are the workers\n",
                 program);
    return mpx::mpi::run_pool(world, [&](mpx::mpi::Pool& pool) {
      b.start_seconds = since();
      return body(pool, static_cast<const Backend&>(b));
    });
#else
    (void)argc;
    (void)argv;
    fmt::print(stderr, "{}: --backend mpi: this build has no MPI (configured with MPX_MPI=OFF)\n", program);
    return kUsageError;
#endif
  }
  mpx::Pool pool(b.processes);
  b.start_seconds = since();
  const int rc = body(pool, static_cast<const Backend&>(b));
  pool.close();
  pool.join();
  return rc;
}

}  // namespace mpx::apps
