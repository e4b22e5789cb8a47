// Start methods and contexts: Python's multiprocessing.set_start_method / get_context.
//
// fork copies the calling process, threads' held mutexes and all, so a program with threads
// risks a child that deadlocks on a lock some vanished thread held. forkserver avoids that: a
// small single-threaded server process forks the children, and the target with its arguments
// crosses to it as bytes. So under forkserver the target must be transferable (a function
// pointer, a captureless lambda, or a function object with serialize()) and so must each
// argument; anything else makes Process::start() throw ValueError naming the method, at run
// time, since the method is a run-time choice.
//
// Lock, RLock, Semaphore, BoundedSemaphore, Event, Value, Array, RawValue, RawArray and the
// queues (Queue, JoinableQueue, SimpleQueue) passed as arguments reach the child too: once the
// server runs, such objects are made in memfd mappings (one descriptor each, while they live),
// which start() hands to the server so the child maps them where this process has them. Objects
// made before the server started are in its snapshot already. Condition and Barrier are not
// passed yet and make start() throw ValueError; shared memory blocks cross by name
// (SharedMemory::attach).
//
// The server is forked from this process (exec'ing a fresh image is what spawn is for), closes
// every descriptor it inherited but its control socket, and then only forks. It is a snapshot of
// the process at the moment it starts, so start it while the process is still single-threaded:
// set_start_method(StartMethod::forkserver) at the top of main starts it at once; otherwise it
// starts at the first forkserver Process::start(). It dies with this process (PR_SET_PDEATHSIG,
// and it ends when its control socket reports this process gone), and its daemon children die
// with it, so nothing outlives the program that started it.
//
// spawn starts a fresh image of this executable (/proc/self/exe, argv[0] kept) as a direct
// child, so exit codes, sentinel, join, terminate and daemon/parent-death handling are those of
// a forked child; the target and its arguments cross as under forkserver. The child is entered
// from a library initializer that runs ahead of the program's own: it runs the program's static
// initializers, as Python's spawn child imports the main module, then the target, and exits
// without reaching main, so no guard in main is needed (unlike Python's
// `if __name__ == "__main__"`). The target sees the program's globals as they are built at any
// start of the program, not as the parent left them; an initializer with side effects (output,
// threads) repeats in every spawn child. (This holds when mpx is linked statically into the
// program, as its CMake package builds it.)
// The standard streams work. A spawn child shares nothing it is not given, so a shared object
// passed to it must be made after the program chose spawn (set_start_method(spawn), or
// constructing a spawn Context, e.g. get_context(StartMethod::spawn)): from then on shared
// objects are made in memfd mappings, which start() hands to the child, and it maps them
// wherever its own address space has room. An object made before makes start() throw ValueError.
//
// Pools and task workers follow the method too. Pool::Options::context (default: the default
// method) starts the pool's spawner process by it, and the spawner forks every worker, so under
// forkserver and spawn no worker is a fork of the pool's process; the pool's initializer must
// then be a function pointer. serve_tasks(address, authkey, queue, processes, context) starts its
// workers by the method; they register the starter's tasks themselves (see <mpx/managers.hpp>).
#pragma once

#include <string_view>

namespace mpx {

enum class StartMethod { fork, forkserver, spawn };

// "fork", "forkserver", "spawn", as Python names them.
std::string_view to_string(StartMethod method) noexcept;

// The default method for Processes whose Options name no context. StateError once this process
// has started a child (as Python refuses to change it once used). Choosing forkserver starts its
// server now, from the state the process is in; choosing spawn makes shared objects by fd from
// now on (see above). A spawn child's default is its starter's.
void set_start_method(StartMethod method);
StartMethod get_start_method();  // fork unless set

class Context {
 public:
  // A spawn Context also commits the program to spawn's way of making shared objects (see above).
  explicit Context(StartMethod method) noexcept;
  StartMethod start_method() const noexcept { return method_; }
  friend bool operator==(const Context&, const Context&) = default;

 private:
  StartMethod method_;
};

Context get_context(StartMethod method);

}  // namespace mpx
