// The pool's worker processes: forking them (directly or through the spawner process), watching
// their exits, replacing them, signalling them, and the control channel to the spawner.
#pragma once

#include <mpx/detail/fork.hpp>

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#pragma GCC diagnostic pop

#include "pool/channel.hpp"
#include "pool/dispatcher.hpp"
#include "pool/wire.hpp"
#include "process/worker_set.hpp"

namespace mpx::detail {

class PoolCore;

// A worker process and its channel. The Lane part and `pid`/`dead` are guarded by the pool
// mutex; `ch` belongs to the thread driving I/O; the rest is fixed once the worker is set up.
struct Worker : Lane {
  explicit Worker(boost::asio::io_context& io) : ch(io) {}
  std::uint32_t index = 0, gen = 0;
  Channel ch;
  // Forked by the pool's process itself (not by the spawner): the Supervisor's WorkerSet holds
  // its process, and this watches (a duplicate of) its sentinel.
  bool direct = false;
  std::unique_ptr<boost::asio::posix::stream_descriptor> exit_watch;
  pid_t pid = 0;
  bool dead = false;  // its exit was reported
};
using WorkerPtr = std::shared_ptr<Worker>;

// Kept apart from the task flow: it reaches into the core only through PoolCore's small
// supervision hooks (requeue, break_pool, ...). The workers it forks itself are a WorkerSet,
// as the spawner's are; their exits come from its reap(), in the leader's exit watches.
class Supervisor {
 public:
  Supervisor(PoolCore& core, boost::asio::io_context& io);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Forks the first `processes` workers and the spawner; under forkserver and spawn, starts the
  // spawner by that method and has it fork every worker. Throws if a worker cannot be started.
  void start(unsigned processes, const std::function<void()>* initializer, unsigned maxtasksperchild,
             StartMethod method);
  // Closes every channel and kills what still runs (a failed start); for ~PoolCore.
  void close_all() noexcept;

  // Under the pool mutex: the current worker of each index (null before its first spawn).
  const std::vector<WorkerPtr>& workers() const noexcept { return workers_; }
  // Under the pool mutex: one busy worker (of any index or a retired one) means none is alone.
  bool any_retired_busy_locked() const;
  bool spawner_alive_locked() const noexcept { return spawner_ && !spawner_gone_; }
  // Under the pool mutex: an fd readable when `w` exits (its sentinel, else the control
  // channel that reports it), or -1.
  int exit_fd_locked(const Worker& w);

  void signal_worker(std::uint32_t index, int sig);
  // A worker forked here whose sentinel could not be watched (no fd left for the duplicate):
  // its channel's end is all that tells. Waits up to a second for its exit and reports it;
  // false if it has not ended by then.
  bool exit_without_watch(const WorkerPtr& w);
  // Tells the spawner to exit once its workers have (one never asked for a worker is killed);
  // `who` prefixes the warning if it cannot.
  void quit_spawner(const char* who);
  // Waits for every process of the pool (the workers it forked itself and the spawner).
  void wait_children();
  // A worker that reached maxtasksperchild: a fresh one takes its index.
  void retire(const WorkerPtr& w);
  // The worker's exit (or its failed spawn) was reported: settle its tasks, replace it.
  void handle_exit(std::uint32_t index, std::uint32_t gen, int code, bool spawn_failed);

 private:
  void spawn_worker(std::uint32_t index, bool direct);
  void fork_worker(const WorkerPtr& w, int fd);
  bool ask_spawner(const WorkerPtr& w, int fd);
  std::vector<int> fds_children_drop();
  void start_spawner(int also_drop = -1);
  std::shared_ptr<ChildProcess> start_spawner_by_method(int ctl);
  bool ensure_spawner(int also_drop);
  void spawner_lost();
  void watch_exit(const WorkerPtr& w);
  void on_direct_exit(const WorkerPtr& w);
  // Under direct_mutex_: the exits of directly forked workers reaped and not yet reported.
  std::vector<WorkerSet::Exit> take_direct_exits_locked();
  WorkerPtr find_exited_locked(std::uint32_t index, std::uint32_t gen, bool& retired);
  void drain(const WorkerPtr& w);
  void ctl_send(const Bytes& frame, int fd = -1);
  void start_ctl_read();
  void on_ctl_read(const boost::system::error_code& ec, std::size_t n);

  PoolCore& core_;
  boost::asio::io_context& io_;
  StartMethod method_ = StartMethod::fork;
  poolwire::SpawnerConfig spawner_config_;
  poolwire::Slot* slots_ = nullptr;  // shared with the workers: what each one runs
  std::size_t slots_bytes_ = 0;
  unsigned spawned_ = 0;  // workers forked here (for their names); at start and on the leader only

  // The control channel: writes under ctl_mutex_ (never taken with the pool mutex held),
  // reads (ctl_buf_) on the leader only.
  Socket ctl_;
  std::mutex ctl_mutex_;
  poolwire::ReadBuffer ctl_buf_;

  // The workers forked here (at start, while no other thread runs), under direct_mutex_, which
  // is never taken before the pool mutex: waiting for them to end (at join) blocks nobody else.
  std::mutex direct_mutex_;
  WorkerSet direct_;
  std::vector<WorkerSet::Exit> direct_exits_;  // reaped by wait_all, reported by the watches

  // Under the pool mutex:
  std::vector<WorkerPtr> workers_;         // by index: the current generation
  std::vector<WorkerPtr> retired_;         // done with maxtasksperchild, exit not reported yet
  std::shared_ptr<ChildProcess> spawner_;  // none until a worker is forked there
  bool spawner_gone_ = false;
  bool spawner_asked_ = false;  // a worker was asked of the spawner: it has children to wait for
  std::uint32_t next_gen_ = 0;
  unsigned spawn_failures_ = 0;  // in a row; three break the pool
};

}  // namespace mpx::detail
