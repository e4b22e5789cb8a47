// Processes: Python's multiprocessing.Process on fork(2).
//
// A Process runs any callable (capturing lambdas included) with its arguments in a forked child.
// Exit codes follow Python: 0 after a normal return, 1 when the target throws, n for exit(n),
// -N when killed by signal N. The child ends with _exit after flushing what it left buffered in
// stdout/stderr and the standard iostreams (other FILEs it opened are its to fclose, as with
// Python's os._exit), so it never runs the parent's static destructors or atexit handlers.
//
// Reaping: every child is waited for by pid (never waitpid(-1)), so mpx never steals the status of
// a child that other code started. The sentinel is a pidfd (pidfd_open), or on kernels without it
// the read end of a pipe whose write end only the child holds.
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

#include <mpx/errors.hpp>
#include <mpx/timeout.hpp>

namespace mpx {

struct ProcessInfo {
  std::string name;
  pid_t pid = 0;
  bool daemon = false;
};

namespace detail {

// ---------------------------------------------------------------------------------------------
// Forking helper processes (used by Process, and meant for the pool and the manager too).
//
//   auto child = detail::fork_child({.name = "PoolWorker-1"}, [&] { serve(); return 0; });
//   child->wait(5s); child->signal(SIGTERM); child->exitcode();
//
// The body runs in the child and returns its exit status; an exception escaping it is printed
// to stderr and gives status 1. The child then flushes the standard streams and _exits. Before the body runs,
// the child has already: set PDEATHSIG (die_with_parent), restored the caller's signal mask,
// replaced the library logger, and forgotten the parent's children, threads and locks that
// mpx keeps (so it may start its own Processes and pools). The caller's copy of everything the
// body references is untouched; destroy it in the parent afterwards if it must not linger.
// The parent flushes stdio/iostreams before forking so buffered output is not duplicated.
// ---------------------------------------------------------------------------------------------
struct ForkOptions {
  std::string name;             // the child's current_process().name ("" keeps the parent's)
  bool daemon = true;           // the child's current_process().daemon
  bool die_with_parent = true;  // SIGKILLed when this process dies, whichever thread forks
  std::string identity;         // internal: the child's Process-name prefix ("1" -> "Process-1:1")
};

// One forked child, owned (reaped, signalled) only by the process that forked it. Thread-safe.
// Obtain with fork_child(); hold it in a shared_ptr.
class ChildProcess {
 public:
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // In the owning process, a child still running is SIGKILLed and reaped: no zombie is left.
  ~ChildProcess();

  pid_t pid() const { return pid_; }
  // Readable once the child has ended (a pidfd, or a pipe on kernels without pidfd_open); -1 if
  // neither could be had (then wait() polls).
  int sentinel() const { return fd_; }
  // True in the process that forked the child; everything below is only meaningful there.
  bool owned_here() const;
  // Non-blocking: reaps the child if it has ended. True once ended.
  bool poll();
  // Waits until the child has ended and is reaped; false on timeout.
  bool wait(Timeout timeout = forever);
  // nullopt while running (or when something else reaped it: SIGCHLD ignored, waitpid(-1));
  // 0..255 for an exit status, -N for a fatal signal N.
  std::optional<int> exitcode() const;
  bool ended() const;
  // Sends sig unless the child has already been reaped (no pid-reuse race). False if not sent.
  bool signal(int sig);

  struct Private;  // construction is reserved to fork_child

  ChildProcess(const Private&, pid_t pid, int fd, bool pidfd);

 private:
  pid_t pid_;
  int fd_;
  bool pidfd_;
  pid_t owner_;
  mutable std::mutex m_;
  bool ended_ = false;
  std::optional<int> exitcode_;
};

using ChildFn = int (*)(void* ctx);
std::shared_ptr<ChildProcess> fork_child_raw(const ForkOptions& options, ChildFn fn, void* ctx);

// Forks a child that runs body() and exits with its result (see above). Throws mpx::Error if
// fork fails.
template <class Body>
requires std::invocable<Body&> && std::convertible_to < std::invoke_result_t<Body&>,
int > std::shared_ptr<ChildProcess> fork_child(const ForkOptions& options, Body&& body) {
  return fork_child_raw(
      options,
      [](void* ctx) -> int { return std::invoke(*static_cast<std::remove_reference_t<Body>*>(ctx)); },
      const_cast<void*>(static_cast<const void*>(std::addressof(body))));
}

// Flushes C stdio and the standard iostreams (before fork, and in a child before _exit).
void flush_std_streams() noexcept;

// The target and its arguments, decay-copied like std::thread, run once in the child.
class Target {
 public:
  virtual ~Target() = default;
  virtual void run() = 0;
};

template <class F, class... Args>
class BoundTarget final : public Target {
 public:
  template <class G, class... A>
  explicit BoundTarget(G&& f, A&&... args) : f_(std::forward<G>(f)), args_(std::forward<A>(args)...) {}
  void run() override { std::apply(std::move(f_), std::move(args_)); }

 private:
  F f_;
  std::tuple<Args...> args_;
};

}  // namespace detail

class Process {  // movable, not copyable
 public:
  struct Options {
    std::string name;  // "" -> "Process-<n>"
    bool daemon = false;
  };

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
  ~Process();

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

 private:
  struct State;
  Process(Options options, std::unique_ptr<detail::Target> target);
  void finish() noexcept;
  State& checked_owner(const char* what) const;

  std::unique_ptr<State> state_;
};

ProcessInfo current_process();
std::optional<ProcessInfo> parent_process();  // nullopt in the main process
std::vector<pid_t> active_children();         // live children started with mpx::Process; reaps finished ones
unsigned cpu_count();                         // CPUs this process may run on (sched_getaffinity)

}  // namespace mpx
