// mpx_bench_mpi: mpx::mpi::Pool next to raw MPI in the same run (start with mpirun -n 3: a root
// and two workers). Prints `name: value unit` lines like mpx_bench:
//   mpi_raw.pingpong_rtt        8-byte MPI_Send/MPI_Recv round trip, rank 0 <-> rank 1 (median)
//   mpi_pool.apply_rtt          sequential pool.apply of a tiny task (median), and its ratio
//   mpi_pool.map_items_per_s    map of x*x over a vector of 10^6 longs, default chunksize
//   mpi_pool.apply_async_per_s  20,000 apply_async, then get each
#include <mpx/mpi.hpp>

#include "bench.hpp"

#include <mpi.h>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <cstring>
#include <numeric>
#include <ranges>
#include <string_view>
#include <vector>

namespace {

long square(long x) { return x * x; }

// Rank 0 times `rounds` round trips with rank 1, `samples` times; other ranks wait.
std::vector<double> raw_pingpong(const boost::mpi::communicator& world, int samples, int rounds) {
  std::vector<double> rtt;
  char buf[8] = {};
  MPI_Comm comm = world;
  for (int s = 0; s < samples; ++s) {
    MPI_Barrier(comm);
    auto t0 = mpx::bench::Clock::now();
    for (int i = 0; i < rounds; ++i) {
      if (world.rank() == 0) {
        MPI_Send(buf, 8, MPI_BYTE, 1, 0, comm);
        MPI_Recv(buf, 8, MPI_BYTE, 1, 0, comm, MPI_STATUS_IGNORE);
      } else if (world.rank() == 1) {
        MPI_Recv(buf, 8, MPI_BYTE, 0, 0, comm, MPI_STATUS_IGNORE);
        MPI_Send(buf, 8, MPI_BYTE, 0, 0, comm);
      }
    }
    rtt.push_back(mpx::bench::seconds(mpx::bench::Clock::now() - t0) / rounds);
  }
  return rtt;
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv, boost::mpi::threading::serialized);
  boost::mpi::communicator world;
  bool quick = argc > 1 && std::string_view(argv[1]) == "--quick";
  if (argc > 1 && !quick) {
    if (world.rank() == 0)
      fmt::print(
          "usage: mpirun -n 3 {} [--quick]\n  mpx::mpi::Pool next to raw MPI, as name: value unit lines\n",
          argv[0]);
    return std::string_view(argv[1]) == "--help" ? 0 : 2;
  }
  if (world.size() < 2) {
    fmt::print(stderr, "mpx_bench_mpi: start it with mpirun -n 2 or more\n");
    return 2;
  }
  mpx::bench::Context ctx{quick};

  auto raw = raw_pingpong(world, ctx.runs(15), static_cast<int>(ctx.iterations(2000)));
  return mpx::mpi::run_pool(world, [&](mpx::mpi::Pool& pool) {
    double raw_rtt = mpx::bench::median(raw);
    mpx::bench::report("mpi_raw.pingpong_rtt", raw_rtt * 1e6, "us");

    std::vector<double> rtt;
    for (long i = 0, n = ctx.iterations(3000); i < n; ++i) {
      auto t0 = mpx::bench::Clock::now();
      if (pool.apply(square, i) != i * i) return 1;
      rtt.push_back(mpx::bench::seconds(mpx::bench::Clock::now() - t0));
    }
    mpx::bench::report("mpi_pool.apply_rtt", mpx::bench::median(rtt) * 1e6, "us");
    mpx::bench::report_ratio("mpi_pool.apply_rtt_vs_raw_pingpong", mpx::bench::median(rtt), raw_rtt);

    const long n = ctx.iterations(1'000'000);
    std::vector<long> xs(static_cast<std::size_t>(n));
    std::iota(xs.begin(), xs.end(), 0L);
    pool.map(square, xs);  // warm-up: pages, buffers
    std::vector<double> map_s;
    for (int r = 0; r < ctx.runs(5); ++r) {
      std::vector<long> ys;
      map_s.push_back(mpx::bench::time_seconds([&] { ys = pool.map(square, xs); }));
      if (ys.size() != static_cast<std::size_t>(n) || ys.back() != (n - 1) * (n - 1)) return 1;
    }
    mpx::bench::report("mpi_pool.map_items_per_s", static_cast<double>(n) / mpx::bench::median(map_s),
                       "items/s");

    const long k = ctx.iterations(20'000);
    std::vector<double> async_s;
    for (int r = 0; r < ctx.runs(5); ++r) {
      async_s.push_back(mpx::bench::time_seconds([&] {
        std::vector<mpx::AsyncResult<long>> rs;
        rs.reserve(static_cast<std::size_t>(k));
        for (long i = 0; i < k; ++i) rs.push_back(pool.apply_async(square, i));
        for (long i = 0; i < k; ++i)
          if (rs[static_cast<std::size_t>(i)].get() != i * i) throw std::runtime_error("wrong result");
      }));
    }
    mpx::bench::report("mpi_pool.apply_async_per_s", static_cast<double>(k) / mpx::bench::median(async_s),
                       "tasks/s");
    return 0;
  });
}
