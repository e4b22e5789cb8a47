// PoolCore: the pool's engine in the caller's process, put together from its parts: the task
// flow and lifecycle (pool.cpp), dispatch (dispatcher.*), worker channels (channel.*), who
// drives the I/O (leader.*), the worker processes (supervisor.*), spare frames (frame_arena.hpp).
#pragma once

#include <mpx/detail/pool.hpp>

#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <span>
#include <utility>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#pragma GCC diagnostic pop

#include "pool/dispatcher.hpp"
#include "pool/frame_arena.hpp"
#include "pool/leader.hpp"
#include "pool/supervisor.hpp"

namespace mpx::detail {

// The pool's lifecycle. Changed only by PoolCore::advance_locked, which refuses any other step:
//
//   running --close()--> closing --join()--> draining --(all answered)--> joining --> joined
//      |                    |                   |                            |
//      +--------------------+---terminate()-----+----------------------------+--> terminated
//
//   running    apply/map/imap accepted
//   closing    close() was called: new work refused (StateError), but lazy feeding of an imap
//              already under way (pool_feed) is still accepted
//   draining   join() waits for every task to be answered; feeding refused; dead workers are
//              still replaced (their requeued tasks need somewhere to run)
//   joining    every worker was told to exit: none is replaced, the spawner's end is expected
//   joined     done; join() returns at once, terminate() does nothing
//   terminated every unfinished task failed, every worker killed; final (a join() after it only
//              waits for the processes and callbacks, which is cheap once they are gone)
// join() in `running` throws StateError; close() after `running` does nothing.
enum class PoolState : std::uint8_t { running, closing, draining, joining, joined, terminated };

// Locks and who may touch what:
// - m_ (the pool mutex) guards state_, pending_, next_seq_, broken_, every worker's Lane and
//   pid/dead, the Supervisor's worker lists and spawner state, the Leader's flags and queues,
//   and the Dispatcher's running average. Callbacks, sinks and socket writes run without it.
// - Supervisor::ctl_mutex_ serializes writes to the spawner; never taken with m_ held.
// - Supervisor::direct_mutex_ guards the WorkerSet of workers forked here; it may be taken with
//   m_ held, never the other way round (join waits for those workers under it alone).
// - FrameArena's mutex is a leaf.
// - The thread that leads (Leader: leader_active_ set under m_) alone runs io_, every handler
//   (reads, writes, exit reports, handle_exit) and touches Channel buffers and completed_.
// - outstanding_ counts tasks pending or in flight: raised under m_ at submit, lowered only
//   after the task's sink has run (join() waits for 0, then every callback is scheduled).
// - Until settled, a task is in exactly one of pending_ and one Lane's inflight (its queued
//   part not yet handed to a write); a Channel's wkeep only keeps large frames alive mid-write.
//   Only the thread that takes it out of there runs its sink, so each sink runs once.
class PoolCore final : public Driver, public std::enable_shared_from_this<PoolCore> {
 public:
  explicit PoolCore(PoolConfig cfg);
  ~PoolCore() override;
  void start();

  bool submit(TaskSubmission* tasks, std::size_t n, bool caller_waits, bool feed);
  bool wait(const Waitable& w, const Deadline& d) override { return leader_.wait(w, d); }
  bool on_callback_thread() const noexcept override { return leader_.on_callback_thread(); }
  void schedule_callbacks(std::shared_ptr<ResultStateBase> s) override {
    leader_.schedule_callbacks(std::move(s));
  }

  Bytes take_frame(std::size_t reserve) { return arena_.take_task_frame(reserve); }
  std::uint64_t next_apply_index() noexcept { return apply_index_.fetch_add(1, std::memory_order_relaxed); }
  unsigned processes() const noexcept { return processes_; }
  std::size_t inflight_hint() const noexcept { return std::size_t{processes_} * (dispatcher_.window() + 1); }
  void check_open();
  bool owned_here() const noexcept;
  void check_here() const;
  void close();
  void terminate();
  void join();
  void shutdown() noexcept;

 private:
  friend class Leader;
  friend class Supervisor;

  bool advance_locked(PoolState to);
  // No worker may be (re)started: they were told to exit, or killed.
  bool stopping_workers_locked() const noexcept {
    return state_ == PoolState::joining || state_ == PoolState::joined || state_ == PoolState::terminated;
  }
  [[noreturn]] void throw_closed() const;
  void join_workers();

  // The task flow (on the leader unless said otherwise).
  void dispatch_and_write();  // any thread that may do I/O
  void start_write(const WorkerPtr& w);
  void continue_write(const WorkerPtr& w);
  void end_write(const WorkerPtr& w, bool ok);
  void start_read(const WorkerPtr& w);
  void on_readable(const WorkerPtr& w, const boost::system::error_code& ec);
  bool read_available(const WorkerPtr& w, bool until_empty);
  void process_frames(const WorkerPtr& w);
  void settle(std::size_t answered, std::vector<TaskPtr>& failed);
  void break_pool_locked(std::exception_ptr e, std::vector<TaskPtr>& failed);
  // The one worker a waiter may read directly (see Leader::direct_wait), with an fd that tells
  // its exit (or -1); null if there is no such worker.
  WorkerPtr sole_busy_worker_locked(int& exit_fd);

  PoolConfig cfg_;
  const unsigned generation_;
  unsigned processes_ = 1;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  FrameArena arena_;
  Dispatcher dispatcher_;
  std::atomic<std::uint64_t> apply_index_{0};

  std::mutex m_;
  PoolState state_ = PoolState::running;
  std::deque<TaskPtr> pending_;
  std::uint64_t next_seq_ = 1;
  std::exception_ptr broken_;  // set when no task can run any more (failed initializer, lost spawner)
  std::atomic<std::size_t> outstanding_{0};

  std::vector<std::pair<TaskPtr, std::span<const std::byte>>> completed_;  // leader scratch

  // Declared after io_: their sockets go before the io_context does.
  Supervisor sup_;
  Leader leader_;
};

}  // namespace mpx::detail
