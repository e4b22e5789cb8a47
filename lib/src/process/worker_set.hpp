// A supervisor for a set of forked workers, for single-threaded poll loops (the pool's spawner,
// serve_tasks) and for anything that can watch file descriptors (the pool, through the
// sentinels). No threads, no Asio: the caller owns the loop and calls in when it wakes; a
// caller with threads guards it with one mutex of its own (the pool does).
//
//   WorkerSet workers(4);                       // slots 0..3, crash-loop back-off by default
//   for (;;) {
//     for (std::size_t slot : workers.due()) workers.start(slot, {.name = "W"}, [] { return work(); });
//     std::vector<pollfd> fds = {{my_fd, POLLIN, 0}};
//     for (int fd : workers.sentinels()) fds.push_back({fd, POLLIN, 0});
//     ::poll(fds.data(), fds.size(), workers.ms_until_due());
//     for (const WorkerSet::Exit& e : workers.reap()) log(e.slot, e.pid, e.exitcode);
//     if (fds[0].revents) break;
//   }
//   workers.stop(std::chrono::seconds(5));     // SIGTERM, then SIGKILL whoever is left; all reaped
//
// A slot is a worker's place (its index); each start in a slot is a new generation. A slot may
// hold more than one child for a while: starting it again does not end the previous child (the
// pool replaces a worker that is finishing its last tasks before that one has exited), and
// every child's exit is reported with the generation it was started as.
#pragma once

#include <mpx/detail/fork.hpp>

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

namespace mpx::detail {

class WorkerSet {
 public:
  using Clock = std::chrono::steady_clock;

  // The crash-loop rule: a worker that ends less than `crash_window` after it started may have
  // died of its own start-up (a bad configuration, a server that refuses it); its slot is due
  // again only `crash_pause` after the exit, so a crash loop does not spin the machine.
  struct BackOff {
    Clock::duration crash_window = std::chrono::seconds(1);
    Clock::duration crash_pause = std::chrono::milliseconds(500);
  };

  struct Started {
    std::uint32_t generation;
    pid_t pid;
  };

  // A child that ended and was reaped.
  struct Exit {
    std::size_t slot;
    std::uint32_t generation;
    pid_t pid;
    // 0..255 an exit status, -N killed by signal N; nullopt if something else reaped it (SIGCHLD
    // set to SIG_IGN, waitpid(-1) elsewhere in the process).
    std::optional<int> exitcode;
    Clock::duration lived;
  };

  explicit WorkerSet(std::size_t slots = 0) : WorkerSet(slots, BackOff{}) {}
  WorkerSet(std::size_t slots, BackOff back_off);
  WorkerSet(const WorkerSet&) = delete;
  WorkerSet& operator=(const WorkerSet&) = delete;
  // Kills and reaps every child still running (in the process that forked them).
  ~WorkerSet();

  std::size_t slots() const { return slots_.size(); }

  // Forks a child for `slot` (the set grows to hold it) that runs body() and exits with its
  // result, as fork_child does; the child closes the sentinels of its siblings first, so no
  // worker keeps another alive in anyone's eyes. `generation` defaults to the slot's previous
  // one plus one. Throws mpx::Error if the child cannot be forked or watched (no fd left for its
  // sentinel: then it is killed and reaped before the throw).
  template <class Body>
  Started start(std::size_t slot, const ForkOptions& options, Body&& body,
                std::optional<std::uint32_t> generation = std::nullopt) {
    std::vector<int> inherited = sentinels();
    auto proc = fork_child(options, [&]() -> int {
      close_in_child(inherited);
      return std::invoke(body);
    });
    return adopt(slot, std::move(proc), generation);
  }

  // A child started some other way (by forkserver or spawn) takes `slot`, as start() would.
  // Throws mpx::Error (after killing and reaping it) if it cannot be watched.
  Started adopt(std::size_t slot, std::shared_ptr<ChildProcess> proc,
                std::optional<std::uint32_t> generation = std::nullopt);

  // The fds to poll for POLLIN: one readable means its child ended and reap() will report it.
  std::vector<int> sentinels() const;
  // The sentinel of one child, -1 if it is not running (never started, or reaped).
  int sentinel(std::size_t slot, std::uint32_t generation) const;
  // True while that child has not been reaped.
  bool running(std::size_t slot, std::uint32_t generation) const;
  // Reaps the children that have ended (non-blocking) and reports them, in start order.
  std::vector<Exit> reap();

  // Signals every running child of `slot` (old generations too) / of every slot. False if none
  // was signalled.
  bool signal(std::size_t slot, int sig);
  void signal_all(int sig);

  // Children started and not yet reaped.
  std::size_t running() const { return children_.size(); }
  // True while the slot's latest child has not been reaped.
  bool occupied(std::size_t slot) const;

  // When `slot` may be started again under the back-off rule (a past time when it may now).
  Clock::time_point start_allowed_at(std::size_t slot) const;
  // The unoccupied slots whose back-off has passed, lowest first.
  std::vector<std::size_t> due(Clock::time_point now = Clock::now()) const;
  // For poll(): milliseconds (rounded up) until the next unoccupied slot is due, 0 if one is due
  // now, -1 if every slot is occupied.
  int ms_until_due(Clock::time_point now = Clock::now()) const;

  // The orderly end: SIGTERM to every child, up to `grace` for them all to end, then SIGKILL
  // to whoever is left. Every child is reaped when it returns; their exits are returned.
  std::vector<Exit> stop(Clock::duration grace);
  // SIGKILL to every child, then reaps them all.
  std::vector<Exit> kill_all();
  // Waits (one budget for all) until every child has ended; reaps and reports those that did.
  std::vector<Exit> wait_all(Timeout timeout = forever);

 private:
  struct Child {
    std::size_t slot;
    std::uint32_t generation;
    std::shared_ptr<ChildProcess> proc;
    Clock::time_point started;
  };
  struct Slot {
    std::uint32_t generation = 0;  // of the latest child started here
    bool occupied = false;         // the latest child has not been reaped yet
    Clock::time_point allowed_at{};
  };

  static void close_in_child(const std::vector<int>& fds) noexcept;
  // Removes children_[i] (reaped) and books its exit, back-off included.
  Exit retire(std::size_t i, Clock::time_point now);
  const Child* find(std::size_t slot, std::uint32_t generation) const;

  BackOff back_off_;
  std::vector<Slot> slots_;
  std::vector<Child> children_;  // in start order
};

}  // namespace mpx::detail
