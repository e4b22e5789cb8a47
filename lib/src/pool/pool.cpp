// pool/ — mpx::Pool: the engine in the caller's process is PoolCore (core.hpp; this file holds
// its task flow and lifecycle, the other parts are named there), worker.cpp the worker side and
// the spawner process, wire.hpp their messages (proto/pool.md), task.cpp how a task and its
// result are encoded and run (a function crosses as its build id + offset; the managers' named
// task queues and the MPI pool use the same encoding). May include: process, ipc, serialize,
// common.
//
// I/O runs on one Boost.Asio io_context over Unix stream sockets (one per worker, one to the
// spawner). Whichever thread needs progress drives it ("leader/follower", leader.hpp): a thread
// blocked in get()/apply()/map()/imap becomes the leader and does the socket I/O itself, so a
// result reaches it without a hand-off between threads; other waiters follow and are woken when
// results land. With nobody waiting, the pool's result thread leads; it also runs every callback.
//
// Tasks go to workers with a small adaptive window each (about 1 ms of measured work, 1 for
// long tasks; dispatcher.hpp), many tasks per write; workers answer many results per write.
#include <mpx/pool.hpp>
#include <mpx/process.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/post.hpp>
#pragma GCC diagnostic pop

#include "common/log.hpp"
#include "pool/core.hpp"
#include "pool/wire.hpp"

namespace mpx {
namespace detail {

namespace asio = boost::asio;
using namespace poolwire;

namespace {

constexpr std::size_t kRecycleMin = std::size_t{64} << 10;  // frames worth keeping for reuse
constexpr std::size_t kRecycleMax = std::size_t{32} << 20;  // at most this much kept

// Bumped in every child forked after the first pool was made: a pool is usable only where its
// generation matches (a forked copy of the pool's process must not touch its channels).
std::atomic<unsigned> g_fork_generation{0};
unsigned fork_generation() {
  static const bool registered = [] {
    ::pthread_atfork(nullptr, nullptr, [] { g_fork_generation.fetch_add(1, std::memory_order_relaxed); });
    return true;
  }();
  (void)registered;
  return g_fork_generation.load(std::memory_order_relaxed);
}

bool send_all_raw(int fd, std::span<const std::byte> data) {
  while (!data.empty()) {
    ssize_t w = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd p{fd, POLLOUT, 0};
        ::poll(&p, 1, 1000);
        continue;
      }
      return false;
    }
    data = data.subspan(static_cast<std::size_t>(w));
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Lifecycle.
// ---------------------------------------------------------------------------------------------

PoolCore::PoolCore(PoolConfig cfg)
    : cfg_(std::move(cfg)),
      generation_(fork_generation()),
      work_(io_.get_executor()),
      arena_(kRecycleMin, kRecycleMax),
      dispatcher_(cfg_.maxtasksperchild),
      sup_(*this, io_),
      leader_(*this) {}

void PoolCore::start() {
  processes_ = cfg_.processes ? cfg_.processes : std::max(1u, cpu_count());
  prepare_code_refs();  // before forking: workers then never need the loader's lock
  leader_.start();
  sup_.start(processes_, &cfg_.initializer, cfg_.maxtasksperchild, cfg_.method);
}

PoolCore::~PoolCore() {
  leader_.stop_thread();
  sup_.close_all();
}

bool PoolCore::owned_here() const noexcept {
  return generation_ == g_fork_generation.load(std::memory_order_relaxed);
}

void PoolCore::check_here() const {
  if (!owned_here()) throw StateError("mpx::Pool: a pool can only be used by the process that made it");
}

// The only place state_ changes (the diagram in core.hpp); false, changing nothing, for a step
// the diagram does not have.
bool PoolCore::advance_locked(PoolState to) {
  using S = PoolState;
  bool legal = false;
  switch (to) {
    case S::running:
      break;
    case S::closing:
      legal = state_ == S::running;
      break;
    case S::draining:
      legal = state_ == S::closing;
      break;
    case S::joining:
      legal = state_ == S::draining;
      break;
    case S::joined:
      legal = state_ == S::joining;
      break;
    case S::terminated:
      legal = state_ != S::terminated && state_ != S::joined;
      break;
  }
  if (legal) state_ = to;
  return legal;
}

void PoolCore::throw_closed() const {
  throw StateError(state_ == PoolState::terminated ? "mpx::Pool: the pool was terminated"
                                                   : "mpx::Pool: the pool is closed");
}

void PoolCore::check_open() {
  check_here();
  std::lock_guard lk(m_);
  if (state_ != PoolState::running) throw_closed();
}

void PoolCore::close() {
  check_here();
  std::lock_guard lk(m_);
  advance_locked(PoolState::closing);  // after `running` there is nothing left to close
}

void PoolCore::terminate() {
  check_here();
  std::vector<TaskPtr> failed;
  {
    std::lock_guard lk(m_);
    if (!advance_locked(PoolState::terminated)) return;
    failed.assign(pending_.begin(), pending_.end());
    pending_.clear();
    for (auto& w : sup_.workers()) {
      if (!w) continue;
      w->drop_all(failed);
      w->usable = false;
    }
    outstanding_.store(0);
  }
  fail_all(failed, std::make_exception_ptr(StateError("mpx::Pool: terminated before this task finished")));
  leader_.notify_followers();
  leader_.wake_io();
  bool spawner_alive;
  {
    std::lock_guard lk(m_);
    spawner_alive = sup_.spawner_alive_locked();
  }
  sup_.signal_worker(kAllWorkers, SIGKILL);
  if (spawner_alive) sup_.quit_spawner("mpx::Pool::terminate");
  sup_.wait_children();
}

void PoolCore::join() {
  check_here();
  bool terminated;
  {
    std::lock_guard lk(m_);
    if (state_ == PoolState::running)
      throw StateError("mpx::Pool::join(): call close() or terminate() first");
    if (state_ == PoolState::joined) return;
    advance_locked(PoolState::draining);  // unless a join() already is, or it was terminated
    terminated = state_ == PoolState::terminated;
  }
  if (!terminated) join_workers();
  sup_.wait_children();
  std::unique_lock lk(m_);
  leader_.wait_callbacks_done(lk);
  advance_locked(PoolState::joined);
}

// Waits for every task to be answered, then tells each worker to exit and the spawner to quit
// once they have.
void PoolCore::join_workers() {
  struct Idle final : Waitable {
    explicit Idle(const std::atomic<std::size_t>& n) : n_(n) {}
    bool is_ready() const noexcept override { return n_.load() == 0; }
    const std::atomic<std::size_t>& n_;
  } idle(outstanding_);
  wait(idle, Deadline::never());
  // Every task is answered, so no write is in progress.
  std::vector<WorkerPtr> live;
  bool spawner_alive;
  {
    std::lock_guard lk(m_);
    advance_locked(PoolState::joining);  // not if terminate() came meanwhile
    for (auto& w : sup_.workers())
      if (w && !w->dead) live.push_back(w);
    spawner_alive = sup_.spawner_alive_locked();
  }
  Bytes bye = type_only_frame(kExit);
  for (auto& w : live) send_all_raw(w->ch.sock.native_handle(), bye);
  if (spawner_alive) sup_.quit_spawner("mpx::Pool::join");
}

void PoolCore::shutdown() noexcept {
  try {
    bool terminated;
    {
      std::lock_guard lk(m_);
      terminated = state_ == PoolState::terminated;
    }
    if (!terminated) close();
    join();
  } catch (const std::exception& e) {
    logger().error("mpx::~Pool: {}", e.what());
  }
  leader_.stop_thread();
}

// ---------------------------------------------------------------------------------------------
// Submitting.
// ---------------------------------------------------------------------------------------------

bool PoolCore::submit(TaskSubmission* tasks, std::size_t n, bool caller_waits, bool feed) {
  check_here();
  TaskPtr one;
  std::vector<TaskPtr> many;
  TaskPtr* recs = &one;
  if (n == 1) {
    one = TaskRec::make(tasks[0]);
  } else {
    many.reserve(n);
    for (std::size_t i = 0; i < n; ++i) many.push_back(TaskRec::make(tasks[i]));
    recs = many.data();
  }
  bool post = false;
  std::exception_ptr broken;
  {
    std::unique_lock lk(m_);
    // Lazy feeding (imap) goes on after close(): its tasks belong to an iteration under way.
    bool open = state_ == PoolState::running || (feed && state_ == PoolState::closing);
    if (!open) {
      if (feed) return false;
      throw_closed();
    }
    broken = broken_;
    if (!broken) {
      for (std::size_t i = 0; i < n; ++i) {
        recs[i]->seq = next_seq_++;
        proto::Writer(recs[i]->frame).patch(proto::kLongHeaderSize + 1, recs[i]->seq);
        pending_.push_back(recs[i]);
      }
      outstanding_.fetch_add(n);
      post = leader_.tasks_queued_locked(n, pending_.size(), caller_waits);
    }
  }
  if (broken) {
    for (std::size_t i = 0; i < n; ++i) recs[i]->sink->on_failure(recs[i]->tag, broken);
    return true;
  }
  if (post) asio::post(io_, [this] { leader_.kick(); });
  return true;
}

// Under the pool mutex; see Leader::direct_wait.
WorkerPtr PoolCore::sole_busy_worker_locked(int& exit_fd) {
  if (!pending_.empty() || state_ == PoolState::terminated || broken_) return nullptr;
  WorkerPtr x;
  for (auto& k : sup_.workers()) {
    if (!k || k->inflight.empty()) continue;
    if (x) return nullptr;
    x = k;
  }
  if (sup_.any_retired_busy_locked()) return nullptr;
  if (!x || !x->usable || x->dead || x->ch.writing() || x->write_scheduled || !x->queued.empty())
    return nullptr;
  exit_fd = sup_.exit_fd_locked(*x);
  return x;
}

// ---------------------------------------------------------------------------------------------
// Dispatch and socket I/O (only on the leader).
// ---------------------------------------------------------------------------------------------

void PoolCore::dispatch_and_write() {
  std::vector<WorkerPtr> start;
  {
    std::lock_guard lk(m_);
    dispatcher_.dispatch(pending_, sup_.workers(),
                         [&](std::size_t i) { start.push_back(sup_.workers()[i]); });
  }
  for (auto& w : start) start_write(w);
}

void PoolCore::start_write(const WorkerPtr& w) {
  std::vector<TaskPtr> batch;
  {
    std::lock_guard lk(m_);
    if (w->ch.writing()) return;  // the write in progress picks up what was queued meanwhile
    w->write_scheduled = false;
    batch.swap(w->queued);
  }
  if (batch.empty() || w->dead) return;
  w->ch.stage(batch);
  continue_write(w);
}

// Waits for writability only when the socket is full.
void PoolCore::continue_write(const WorkerPtr& w) {
  switch (w->ch.write_some()) {
    case Channel::Write::done:
      return end_write(w, true);
    case Channel::Write::failed:
      return end_write(w, false);  // the worker is gone or going: its exit report decides the rest
    case Channel::Write::blocked:
      w->ch.sock.async_wait(Socket::wait_write, [this, w](const boost::system::error_code& ec) {
        if (ec) return end_write(w, false);
        continue_write(w);
      });
      return;
  }
}

void PoolCore::end_write(const WorkerPtr& w, bool ok) {
  w->ch.end_write();
  bool more;
  {
    std::lock_guard lk(m_);
    if (!ok) w->usable = false;
    more = ok && !w->queued.empty();
  }
  if (more) start_write(w);
}

// The reactor only reports readability; the read itself is ours, so a direct_wait may read the
// same socket in between without a reactor operation holding a buffer into the channel.
void PoolCore::start_read(const WorkerPtr& w) {
  if (w->dead) return;
  w->ch.sock.async_wait(Socket::wait_read,
                        [this, w](const boost::system::error_code& ec) { on_readable(w, ec); });
}

void PoolCore::on_readable(const WorkerPtr& w, const boost::system::error_code& ec) {
  if (ec == asio::error::operation_aborted) return;
  if (!ec && read_available(w, true)) return start_read(w);
  if (w->direct && !w->exit_watch && sup_.exit_without_watch(w)) return;
  std::lock_guard lk(m_);  // EOF or error: the exit report follows
  w->usable = false;
}

// Reads what the socket holds (the reactor is edge-triggered: at least until a short read) and
// handles every complete frame. until_empty: also whatever arrived while they were handled, until
// the socket is empty; a busy worker's next results are then read without a reactor round. A
// direct_wait stops at the short read instead (its next answer comes after its next task).
// False at EOF or on an error.
bool PoolCore::read_available(const WorkerPtr& w, bool until_empty) {
  for (;;) {
    bool short_read = false;
    switch (w->ch.recv_some(short_read)) {
      case Channel::Read::garbage:
        logger().error("mpx::Pool: garbage from worker {}; stopping it", w->pid);
        sup_.signal_worker(w->index, SIGKILL);
        return false;
      case Channel::Read::empty:
        return true;
      case Channel::Read::closed:
        return false;
      case Channel::Read::data:
        break;
    }
    process_frames(w);
    if (!until_empty && short_read) return true;
  }
}

// Settles what the worker answered, hands freed window room to waiting tasks, and retires the
// worker at maxtasksperchild.
void PoolCore::process_frames(const WorkerPtr& w) {
  Channel::Decoded d = w->ch.decode(w->pid);
  std::vector<WorkerPtr> start;
  std::vector<TaskPtr> failed;
  bool retiring = false;
  std::size_t finished = 0;
  {
    std::lock_guard lk(m_);
    for (auto& a : d.answers) {
      TaskPtr rec = w->take_answer(a.seq);
      if (!rec) continue;  // failed meanwhile
      ++finished;
      dispatcher_.record(a.ns);
      completed_.emplace_back(std::move(rec), a.result);
    }
    if (d.init_error) {
      w->usable = false;
      if (!broken_) break_pool_locked(d.init_error, failed);
    } else if (w->usable && dispatcher_.used_up(*w)) {
      w->usable = false;  // it exits by itself now
      retiring = true;
    }
    dispatcher_.dispatch(pending_, sup_.workers(),
                         [&](std::size_t i) { start.push_back(sup_.workers()[i]); });
  }
  if (retiring) sup_.retire(w);
  for (auto& s : start) start_write(s);
  bool any = !completed_.empty() || !failed.empty();
  settle(finished, failed);
  w->ch.consume(d.consumed);
  if (any) leader_.notify_followers();
  if (d.bad) sup_.signal_worker(w->index, SIGKILL);
}

// Runs the sinks of completed_ (`answered` of them) and of `failed`, with no lock held.
void PoolCore::settle(std::size_t answered, std::vector<TaskPtr>& failed) {
  for (auto& [rec, result] : completed_) {
    rec->sink->on_result(rec->tag, result);
    if (rec.use_count() == 1) arena_.recycle(std::move(rec->frame));
  }
  completed_.clear();
  // Counted out only once delivered: join() then knows every callback has been scheduled.
  if (answered) outstanding_.fetch_sub(answered);
  if (!failed.empty()) fail_all(failed, broken_);
}

void PoolCore::break_pool_locked(std::exception_ptr e, std::vector<TaskPtr>& failed) {
  broken_ = std::move(e);
  std::size_t before = failed.size();
  failed.insert(failed.end(), pending_.begin(), pending_.end());
  pending_.clear();
  for (auto& w : sup_.workers())
    if (w) w->drop_all(failed);
  outstanding_.fetch_sub(failed.size() - before);
}

// ---------------------------------------------------------------------------------------------
// The non-template API.
// ---------------------------------------------------------------------------------------------

std::shared_ptr<PoolCore> make_pool_core(PoolConfig config) {
  auto core = std::make_shared<PoolCore>(std::move(config));
  core->start();
  return core;
}
void pool_submit(PoolCore& core, std::vector<TaskSubmission>&& tasks, bool caller_waits) {
  core.submit(tasks.data(), tasks.size(), caller_waits, false);
}
void pool_submit_one(PoolCore& core, TaskSubmission&& task, bool caller_waits) {
  core.submit(&task, 1, caller_waits, false);
}
bool pool_feed(PoolCore& core, std::vector<TaskSubmission>&& tasks) {
  return core.submit(tasks.data(), tasks.size(), true, true);
}
Driver* pool_driver(PoolCore& core) noexcept { return &core; }
Bytes pool_frame(PoolCore& core, std::size_t reserve) { return core.take_frame(reserve); }
std::uint64_t pool_next_apply_index(PoolCore& core) noexcept { return core.next_apply_index(); }
unsigned pool_processes(const PoolCore& core) noexcept { return core.processes(); }
std::size_t pool_inflight_hint(const PoolCore& core) noexcept { return core.inflight_hint(); }
void pool_check_open(PoolCore& core) { core.check_open(); }
void pool_close(PoolCore& core) { core.close(); }
void pool_terminate(PoolCore& core) { core.terminate(); }
void pool_join(PoolCore& core) { core.join(); }
void pool_shutdown(PoolCore& core) noexcept { core.shutdown(); }
bool pool_owned_here(const PoolCore& core) noexcept { return core.owned_here(); }

}  // namespace detail

Pool::Pool(unsigned processes) : Pool(Options{processes, {}, 0}) {}

Pool::Pool(Options options) {
  StartMethod method = options.context ? options.context->start_method() : get_start_method();
  if (method != StartMethod::fork && options.initializer && !options.initializer.target<void (*)()>())
    throw ValueError("mpx::Pool: start method " + std::string(to_string(method)) +
                     ": the initializer must be a function pointer (&init, or +[] { ... }): a "
                     "std::function holding anything else exists only in this process");
  core_ = detail::make_pool_core(detail::PoolConfig{options.processes, std::move(options.initializer),
                                                    options.maxtasksperchild, method});
  processes_ = detail::pool_processes(*core_);
}

Pool::~Pool() {
  if (!core_) return;
  if (!detail::pool_owned_here(*core_)) {
    // A forked copy of the pool's process: the workers, threads and locks belong to the
    // original. Keep the copy's state untouched (and reachable) rather than tear it down.
    static std::vector<std::shared_ptr<detail::PoolCore>>* kept =
        new std::vector<std::shared_ptr<detail::PoolCore>>;
    kept->push_back(std::move(core_));
    return;
  }
  detail::pool_shutdown(*core_);
}

void Pool::close() { detail::pool_close(*core_); }
void Pool::terminate() { detail::pool_terminate(*core_); }
void Pool::join() { detail::pool_join(*core_); }
void Pool::check_open() const { detail::pool_check_open(*core_); }

}  // namespace mpx
