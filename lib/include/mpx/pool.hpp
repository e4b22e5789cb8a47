// Process pool: Python's multiprocessing.Pool.
//
//   mpx::Pool pool(4);
//   long y = pool.apply(f, 10);                        // f(10) in a worker
//   std::vector<long> ys = pool.map(f, xs);            // in input order
//   auto r = pool.apply_async(g, 1.0).then([](const std::string& s) { ... });
//   for (long v : pool.imap_unordered(f, std::views::iota(0, 1000000))) ...
//
// Task functions: a function pointer, a captureless lambda, a default-constructible function
// object, or a transferable (serializable) function object, whose state then travels with every
// task (also when it is default-constructible). Anything else — a capturing lambda, a
// std::function — is a compile-time error saying what to do. Arguments and results are any
// transferable types. On the wire a function is identified by its code's place in its module
// (build-id + offset), so it must stay loaded (no dlclose) and workers run the same binary.
//
// Workers are copies of the program as it was when the pool was built (later changes to globals
// are not seen by workers, replacements included). A pool built in a process with no other
// thread forks its workers itself; otherwise, and for every replacement, a single-threaded
// server process forked when the pool was built forks them, so a pool made while other threads
// run (another pool, say) never copies a lock that some thread holds. They ignore SIGINT, and die when the
// pool's process dies, however it dies: Ctrl-C stops a program and its pools. A pool belongs to the process
// that made it; in a forked child its members throw StateError and its destructor does nothing.
//
// I/O: a thread blocked on a result (get, wait, apply, map, iterating imap) drives the pool's
// sockets itself, so results reach it without a hand-off between threads; otherwise the pool's
// result thread does. Callbacks (then/on_error) always run on the result thread (or at once in
// the registering thread if the result is already settled), never inside another thread's get().
// A thread waiting on one busy worker's answer, and a worker waiting for its next tasks, poll
// their socket briefly before they sleep, as the synchronize primitives spin: an answer that
// comes within a wake-up's time (tens of microseconds on a small VM) then costs no wake-up. The
// poll adapts to how long answers take, yields the CPU while it lasts, and mostly stops on a
// busy machine; MPX_SPIN_NS bounds it, 0 turns it off.
//
// Errors: an exception in a task fails that task only, as RemoteError (demangled type name and
// message). A worker that dies (crash, abort, SIGKILL, OOM) fails only the task it was running,
// with WorkerLost (its exit code, -N for signal N), and is replaced; tasks queued behind it that
// had not started run elsewhere. A finished task whose result was lost with its worker (still
// in the worker's send buffer) runs again. A result that cannot be encoded fails its task.
//
// Random numbers: a worker is a fork, so a generator seeded before the pool was built would give
// every worker the same stream. task_rng(seed) gives each task item its own stream, derived from
// the seed and task_index() only, so results do not depend on the number of workers or on
// chunking.
#pragma once

#include <mpx/context.hpp>
#include <mpx/detail/async_result.hpp>
#include <mpx/detail/pool.hpp>
#include <mpx/detail/pool_api.hpp>
#include <mpx/detail/process_count.hpp>
#include <mpx/detail/task.hpp>
#include <mpx/errors.hpp>
#include <mpx/serialize.hpp>
#include <mpx/timeout.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <random>
#include <ranges>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx {

// The identity of the task item running in this thread: for map/starmap/imap*, the item's
// position in the input (0, 1, 2, ...); for apply/apply_async, how many apply calls this pool
// had accepted before it. 0 outside a task.
std::uint64_t task_index() noexcept;

// A generator for the current task item, seeded from (seed, task_index()) only: independent
// streams for different items, the same stream for the same item whichever worker runs it.
std::mt19937_64 task_rng(std::uint64_t seed);

class Pool : public detail::PoolApi<detail::PoolCore> {
 public:
  struct Options {
    unsigned processes = 0;               // 0 = cpu_count()
    std::function<void()> initializer{};  // runs once in every worker, before its first task
    unsigned maxtasksperchild = 0;        // 0 = unlimited; else a worker is replaced after n tasks
    // How the workers start (<mpx/context.hpp>); none: get_start_method(). Under forkserver
    // and spawn the pool's spawner process is started by that method and forks every worker,
    // so nothing of this process's threads or locks reaches them; the initializer must then be
    // a function pointer (&init, or +[] { ... }), or the constructor throws ValueError.
    std::optional<Context> context{};
  };

  explicit Pool(unsigned processes = 0);
  // Any other integer type: a negative count or one beyond unsigned is a ValueError.
  template <detail::other_integer I>
  explicit Pool(I processes) : Pool(detail::process_count(processes, "mpx::Pool")) {}
  explicit Pool(Options options);
  ~Pool();  // close() + join() unless terminate() was called; then join()
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // The submitting members, with the same rules as Python's Pool. They are written once for
  // this pool and the MPI one (<mpx/detail/pool_api.hpp>); the using-declarations make them
  // Pool's own, so they are found, documented and named here. R is f's decayed result.

  // template <class F, class... Args> R apply(F f, Args&&... args);    f(args...) in a worker; blocks
  using PoolApi::apply;
  // template <class F, class... Args> AsyncResult<R> apply_async(F f, Args&&... args);
  using PoolApi::apply_async;
  // template <class F, class... Args> AsyncResult<R> submit(F f, Args&&... args);  apply_async's
  // concurrent.futures name; mpx::wait, mpx::as_completed and async_get (<mpx/futures.hpp>) take it.
  using PoolApi::submit;
  // template <class F, class Range> std::vector<R> map(F f, Range&& xs, std::size_t chunksize = 0);
  // in input order; chunksize 0 is Python's rule, ceil(len / (4 * processes())).
  using PoolApi::map;
  // template <class F, class Range> AsyncResult<std::vector<R>> map_async(F f, Range&& xs, std::size_t
  // chunksize = 0);
  using PoolApi::map_async;
  // template <class F, class Range> std::vector<R> starmap(F f, Range&& tuples, std::size_t chunksize = 0);
  // f(get<0>(t), get<1>(t), ...) for each tuple-like item t.
  using PoolApi::starmap;
  // template <class F, class Range> AsyncResult<std::vector<R>> starmap_async(F f, Range&& tuples,
  // std::size_t chunksize = 0);
  using PoolApi::starmap_async;
  // template <class F, class Range> /*input range of R*/ auto imap(F f, Range&& xs, std::size_t chunksize =
  // 1); template <class F, class Range> /*input range of R*/ auto imap_unordered(F f, Range&& xs, std::size_t
  // chunksize = 1); They read the input lazily in the iterating thread with a bounded number of tasks in
  // flight; an rvalue range is kept alive by the result, which must not outlive the pool. A failed item
  // rethrows from operator* and iteration may go on (a WorkerLost fails every item of its chunk).
  // Feeding goes on after close(); after join()/terminate()/~Pool the first item that could not
  // be sent throws StateError and the range ends there.
  using PoolApi::imap;
  using PoolApi::imap_unordered;
  // unsigned processes() const noexcept;
  using PoolApi::processes;

  void close();      // no more submissions (StateError after)
  void terminate();  // stop the workers now; pending results fail with StateError
  void join();       // after close() or terminate() (else StateError): wait for the workers to exit

 private:
  void check_open() const;
};

}  // namespace mpx
