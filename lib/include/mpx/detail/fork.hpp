// Forking helper processes: what Process is built on, and what the pool and the manager use
// for the processes they start. Kept apart from <mpx/process.hpp> so that header shows users
// the Process API only.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <mpx/detail/transfer.hpp>
#include <mpx/errors.hpp>
#include <mpx/timeout.hpp>

namespace mpx {

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

  struct Private;  // construction is reserved to fork_child and the fork server

  ChildProcess(const Private&, pid_t pid, int fd, bool pidfd);
  // A child that the fork server forked: its exit status arrives on status_fd (then closed by
  // the server: EOF without a status means the server died); signals go through signal_fd, a
  // pidfd the server opened before it could reap the child, or by pid when that is -1.
  struct Forwarded {};
  ChildProcess(const Private&, pid_t pid, int status_fd, int signal_fd, Forwarded);

 private:
  bool read_forwarded_status();

  pid_t pid_;
  int fd_;
  bool pidfd_;
  bool forwarded_ = false;
  int signal_fd_ = -1;
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
  // Appends the target as bytes another process can run (run_encoded_target); false when the
  // function or an argument cannot cross a process boundary.
  // Shared mappings the arguments' handles need go to maps.
  virtual bool encode(Bytes& out, std::vector<SharedMappingRef>& maps) const = 0;
  // For the error that says which target could not cross.
  virtual const std::type_info& function_type() const noexcept = 0;
};

template <class F, class... Args>
class BoundTarget final : public Target {
 public:
  template <class G, class... A>
  explicit BoundTarget(G&& f, A&&... args) : f_(std::forward<G>(f)), args_(std::forward<A>(args)...) {}
  void run() override { std::apply(std::move(f_), std::move(args_)); }
  bool encode(Bytes& out, std::vector<SharedMappingRef>& maps) const override {
    if constexpr (transferable_target<F, Args...>) {
      encode_target(out, maps, f_, args_);
      return true;
    } else {
      (void)out;
      (void)maps;
      return false;
    }
  }
  const std::type_info& function_type() const noexcept override { return typeid(F); }

 private:
  F f_;
  std::tuple<Args...> args_;
};

}  // namespace detail

}  // namespace mpx
