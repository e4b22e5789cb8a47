// Processes: Python's multiprocessing.Process on fork(2).
//
// A Process runs any callable (capturing lambdas included) with its arguments in a forked child.
// Under the forkserver start method (<mpx/context.hpp>: Options::context or set_start_method)
// the child is forked by the fork server instead, and under spawn it is a fresh image of this
// executable; either way the target and its arguments must be transferable, and everything
// below holds for those children too.
// Exit codes follow Python: 0 after a normal return, 1 when the target throws, n for exit(n),
// -N when killed by signal N. The child ends with _exit after flushing what it left buffered in
// stdout/stderr and the standard iostreams (other FILEs it opened are its to fclose, as with
// Python's os._exit), so it never runs the parent's static destructors or atexit handlers.
//
// Reaping: every child is waited for by pid (never waitpid(-1)), so mpx never steals the status of
// a child that other code started. The sentinel is a pidfd (pidfd_open), or on kernels without it
// (or with MPX_NO_PIDFD=1 in the environment, for tests) a pipe's read end only the child holds.
//
// Parent death: a daemon child (and every helper mpx forks through detail::fork_child with
// die_with_parent) gets PR_SET_PDEATHSIG(SIGKILL) and re-checks getppid() to close the race
// with a parent that died during fork. The kernel sends that signal when the *thread* that
// forked exits, not the process. So only the main thread forks such children itself (it lives
// as long as the process, unless it calls pthread_exit while other threads keep the process
// going — then its daemon children end with it). Any other thread hands the fork to one
// internal thread that lives until the process ends; the child then runs on a copy of that
// thread, with the caller's signal mask restored, so thread_local variables in the target start
// from their initial values there.
#pragma once

#include <sys/types.h>

#include <concepts>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <mpx/context.hpp>
#include <mpx/detail/fork.hpp>
#include <mpx/errors.hpp>
#include <mpx/timeout.hpp>

namespace mpx {

struct ProcessInfo {
  std::string name;
  pid_t pid = 0;
  bool daemon = false;
};

// A child process, as Python's multiprocessing.Process: give it a target, or derive from it and
// override run() (Python's other way):
//
//   struct Counter : mpx::Process {
//     explicit Counter(mpx::Queue<int> q) : q(std::move(q)) {}
//     void run() override { for (int i = 0; i < 3; ++i) q.put(i); }
//     mpx::Queue<int> q;
//   };
//   Counter c(q);
//   c.start();   // the child runs c.run()
//   c.join();
//
// A subclass is used where it was made: moving it into a plain Process keeps the target only.
class Process {  // movable, not copyable
 public:
  struct Options {
    std::string name;  // "" -> "Process-<n>"
    bool daemon = false;
    std::optional<Context> context{};  // none: get_start_method() at start()
  };

  // No target: run() does nothing unless a subclass overrides it.
  Process() : Process(Options{}) {}
  explicit Process(Options options);

  template <class F, class... Args>
  requires(!std::same_as<std::remove_cvref_t<F>, Process> && !std::same_as<std::remove_cvref_t<F>, Options> &&
           std::invocable<std::decay_t<F>, std::decay_t<Args>...>) explicit Process(F&& target,
                                                                                    Args&&... args)
      : Process(Options{}, std::forward<F>(target), std::forward<Args>(args)...) {}

  template <class F, class... Args>
  requires(!std::same_as<std::remove_cvref_t<F>, Process> &&
           std::invocable<std::decay_t<F>, std::decay_t<Args>...>)
      Process(Options options, F&& target, Args&&... args)
      : Process(std::move(options),
                std::make_unique<detail::BoundTarget<std::decay_t<F>, std::decay_t<Args>...>>(
                    std::forward<F>(target), std::forward<Args>(args)...)) {}

  Process(Process&&) noexcept;
  Process& operator=(Process&&) noexcept;  // finishes the process held before, as ~Process does
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  // Joins a started non-daemon child; terminates (SIGTERM, then SIGKILL after a grace period)
  // and reaps a daemon one. Does nothing to the child in a process other than the starter.
  virtual ~Process();

  // What the child runs: the target with its arguments. A subclass may override it.
  virtual void run();

  // Flushes stdio/iostreams and forks. StateError if already started, or if this object was
  // made in another process. Afterwards the parent's copy of target and args is destroyed.
  void start();
  // True once the child has exited and been reaped; false on timeout. StateError before start.
  bool join(Timeout timeout = forever);
  bool is_alive() const;
  // nullopt while running (and before start); 0 ok; 1 target threw; -N killed by signal N.
  std::optional<int> exitcode() const;
  pid_t pid() const;  // 0 before start
  const std::string& name() const;
  bool daemon() const;
  void terminate();  // SIGTERM; nothing once the child has ended
  void kill();       // SIGKILL; nothing once the child has ended
  // An fd that becomes readable when the child ends (valid until this object goes). StateError
  // before start.
  int sentinel() const;
  // Python's ident: the pid (0 before start).
  pid_t ident() const { return pid(); }
  // Releases what this handle holds (the child's sentinel fd, the target). ValueError while the
  // child runs; afterwards every member but name() and daemon() throws ValueError, as in Python.
  void close();

 private:
  struct State;
  Process(Options options, std::unique_ptr<detail::Target> target);
  void finish() noexcept;
  State& checked_owner(const char* what) const;

  std::unique_ptr<State> state_;
};

// A live child, as active_children() lists it. It reads as its pid where a pid_t is expected,
// so code written when active_children() listed pids keeps working.
struct ChildInfo : ProcessInfo {
  operator pid_t() const noexcept { return pid; }  // NOLINT(google-explicit-constructor)
};
// The live children started with mpx::Process (finished ones are reaped on the way).
class ActiveChildren : public std::vector<ChildInfo> {
 public:
  using std::vector<ChildInfo>::vector;
  operator std::vector<pid_t>() const { return {begin(), end()}; }  // NOLINT(google-explicit-constructor)
};

ProcessInfo current_process();
std::optional<ProcessInfo> parent_process();  // nullopt in the main process
ActiveChildren active_children();
unsigned cpu_count();  // CPUs this process may run on (sched_getaffinity)

}  // namespace mpx
