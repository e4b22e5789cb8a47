// The process pool on MPI ranks, for work that outgrows one machine: the same apply / map /
// starmap / imap / AsyncResult as mpx::Pool, with the other ranks of a communicator as workers.
// Link mpx::mpi (built when Open MPI and Boost.MPI are installed) and start the program with
// mpirun; every rank runs main, and run_pool decides who does what:
//
//   #include <mpx/mpi.hpp>
//   long square(long x) { return x * x; }
//
//   int main(int argc, char** argv) {
//     boost::mpi::environment env(argc, argv, boost::mpi::threading::serialized);
//     boost::mpi::communicator world;
//     return mpx::mpi::run_pool(world, [](mpx::mpi::Pool& pool) {
//       std::vector<long> ys = pool.map(square, std::views::iota(0L, 1000L));
//       fmt::print("{} on {} ranks\n", ys[999], pool.processes());
//       return 0;
//     });
//   }
//
// run_pool runs `main` on the root rank with a pool whose workers are all the other ranks; they
// serve tasks until `main` returns, then every rank leaves run_pool. Tasks are named on the wire
// by build-id + offset (see <mpx/pool.hpp>), so all ranks must run the same binary; hosts may
// differ. The root rank dispatches and collects, it runs no tasks. MPI must be initialised with
// at least MPI_THREAD_SERIALIZED: the root talks MPI from the pool's dispatch thread, so while the
// pool lives, the root's own threads may call MPI only if the level is MPI_THREAD_MULTIPLE.
//
// Differences from mpx::Pool, all MPI's rules: a rank that dies ends the MPI job (there is no
// WorkerLost and no replacement, so no maxtasksperchild); terminate() cannot interrupt a running
// task, it fails every pending result with StateError and lets the workers go once the tasks
// already sent to them end. Idle ranks poll with a short spin then a sleep that grows to 1 ms,
// so they leave the CPU to others instead of spinning as a blocking MPI receive would. A worker
// rank keeps large buffers in its heap while it serves (mallopt), as a forked worker does.
//
// Cost: results come back through the root's dispatch thread, so a sequential apply() pays two
// thread hand-offs on the root on top of the MPI round trip; batch (map, apply_async) where
// latency matters.
#pragma once

#include <mpx/detail/pool.hpp>
#include <mpx/detail/pool_api.hpp>
#include <mpx/errors.hpp>
#include <mpx/pool.hpp>  // task_index(), task_rng(): the same on MPI ranks

#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx {
namespace detail {

class MpiPoolCore;
Driver* pool_driver(MpiPoolCore& core) noexcept;
std::uint64_t pool_next_apply_index(MpiPoolCore& core) noexcept;
Bytes pool_frame(MpiPoolCore& core, std::size_t reserve);
void pool_check_open(MpiPoolCore& core);
void pool_submit(MpiPoolCore& core, std::vector<TaskSubmission>&& tasks, bool caller_waits);
void pool_submit_one(MpiPoolCore& core, TaskSubmission&& task, bool caller_waits);
bool pool_feed(MpiPoolCore& core, std::vector<TaskSubmission>&& tasks);
std::size_t pool_inflight_hint(const MpiPoolCore& core) noexcept;

}  // namespace detail

namespace mpi {

struct Options {
  int root = 0;                         // the rank that runs main and dispatches
  std::function<void()> initializer{};  // runs once on every worker rank, before its first task
};

class Pool : public detail::PoolApi<detail::MpiPoolCore> {
 public:
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  ~Pool();  // close() + join() unless terminate() was called; then join()

  void close();      // no more submissions (StateError after)
  void terminate();  // pending results fail with StateError; workers stop after the tasks sent to them
  void join();       // after close() or terminate() (else StateError): all work done, workers released
  const boost::mpi::communicator& communicator() const noexcept { return comm_; }

 private:
  friend int run_pool(const boost::mpi::communicator&, const std::function<int(Pool&)>&, Options);
  Pool(const boost::mpi::communicator& comm, const Options& options);

  boost::mpi::communicator comm_;
};

// Collective: every rank of `comm` calls it. On the root, builds the pool, calls main(pool),
// then closes and joins the pool (terminates it if main throws, then rethrows) and returns
// main's value. On the other ranks, runs options.initializer, serves tasks until the root's pool
// is done, and returns 0. ValueError for a communicator with fewer than two ranks or a bad root;
// StateError when MPI's thread level is below MPI_THREAD_SERIALIZED.
int run_pool(const boost::mpi::communicator& comm, const std::function<int(Pool&)>& main,
             Options options = {});

}  // namespace mpi
}  // namespace mpx
