// Where the workloads run their tasks (--backend): `pool`, an mpx::Pool of forked workers on this
// machine; `mpi`, an mpx::mpi::Pool on the ranks of MPI_COMM_WORLD (started by mpirun: rank 0
// runs the program, every other rank computes tasks); or `mpxd`, a named task queue of a running
// mpxd worked by task_worker processes (--address, --authkey-file, --queue). All run the same
// tasks with the same task indices, so the results are the same, bit for bit.
#pragma once

#include <mpx/managers.hpp>
#include <mpx/pool.hpp>
#include <mpx/process.hpp>

#include <fmt/core.h>

#include "authkey_file.hpp"
#include "cli.hpp"
#include "task_queue_pool.hpp"

#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#ifdef MPX_APPS_WITH_MPI
#include <mpx/mpi.hpp>
#endif

namespace mpx::apps {

struct Backend {
  std::string name = "pool";  // "pool", "mpi" or "mpxd"
  unsigned processes = 0;     // --processes (under MPI the worker ranks are mpirun's; with mpxd the
                              // count the chunking plans for, as task_workers come and go)
  std::string address, authkey_file;
  std::string queue = "work";  // task_worker's default queue, so neither side needs --queue
  double start_seconds = 0;    // how long the pool took to be ready for tasks
  // "Pool(2)", "mpi::Pool(2 worker ranks)" or "mpxd queue 'work' at unix:/x", for the text.
  std::string describe(unsigned workers) const {
    if (name == "mpi") return fmt::format("mpi::Pool({} worker ranks)", workers);
    if (name == "mpxd") return fmt::format("{} (chunks for {} workers)", where(), workers);
    return fmt::format("Pool({})", workers);
  }
  std::string where() const { return fmt::format("mpxd queue '{}' at {}", queue, address); }
};

// --backend, with what this build offers.
inline void add_backend_option(CLI::App& app, Backend& b) {
  app.add_option("--backend", b.name,
                 "pool: forked workers on this machine (--processes); mpi: MPI ranks, run under "
                 "mpirun -n N (rank 0 dispatches, N-1 compute); mpxd: a task queue of a running "
                 "mpxd (--address, --authkey-file), worked by task_worker processes")
      ->capture_default_str()
      ->check(CLI::IsMember({"pool", "mpi", "mpxd"}));
  app.add_option("--address", b.address,
                 "--backend mpxd: the daemon, unix:/path, unix:@name or tcp:host:port");
  app.add_option("--authkey-file", b.authkey_file, "--backend mpxd: the file holding the daemon's authkey");
  app.add_option("--queue", b.queue, "--backend mpxd: the task queue the task_workers serve")
      ->capture_default_str();
}

// Runs body(pool, backend) with an mpx::Pool, for "mpi" an mpx::mpi::Pool, for "mpxd" a
// TaskQueuePool, and returns its exit code (2 if the backend cannot be had; 1 if the daemon
// cannot be reached or its queue fails a task). Under MPI only rank 0 runs the body.
template <class Body>
int run_on_backend(Backend& b, int& argc, char**& argv, const char* program, Body&& body) {
  const auto t0 = std::chrono::steady_clock::now();
  auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  if (b.name != "mpxd" && (!b.address.empty() || !b.authkey_file.empty())) {
    fmt::print(stderr, "{}: --address and --authkey-file are for --backend mpxd\n", program);
    return kUsageError;
  }
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
  if (b.name == "mpxd") {
    if (b.address.empty() || b.authkey_file.empty()) {
      fmt::print(stderr, "{}: --backend mpxd needs --address and --authkey-file\n", program);
      return kUsageError;
    }
    // The daemon and the workers are other programs: what goes wrong with them is said in one line.
    try {
      auto manager = mpx::Manager::connect(mpx::Address::parse(b.address), read_authkey_file(b.authkey_file));
      TaskQueuePool pool(manager.task_queue(b.queue), b.processes ? b.processes : mpx::cpu_count(),
                         b.where());
      b.start_seconds = since();
      return body(pool, static_cast<const Backend&>(b));
    } catch (const std::exception& e) {
      fmt::print(stderr, "{}: --backend mpxd: {}\n", program, e.what());
      return 1;
    }
  }
  mpx::Pool pool(b.processes);
  b.start_seconds = since();
  const int rc = body(pool, static_cast<const Backend&>(b));
  pool.close();
  pool.join();
  return rc;
}

}  // namespace mpx::apps
