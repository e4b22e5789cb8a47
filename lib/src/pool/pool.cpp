// pool/ — mpx::Pool: this file is the engine in the caller's process, worker.cpp the worker side
// and the spawner process, wire.hpp their messages (proto/pool.md), task.cpp how a task and its
// result are encoded and run (a function crosses as its build id + offset; the managers' named
// task queues and the MPI pool use the same encoding). May include: process, ipc, serialize,
// common.
//
// The pool's engine in the pool's own process.
//
// I/O runs on one Boost.Asio io_context over Unix stream sockets (one per worker, one to the
// spawner). Whichever thread needs progress drives it ("leader/follower"): a thread blocked
// in get()/apply()/map()/imap becomes the leader and does the socket I/O itself, so a result
// reaches it without a hand-off between threads; other waiters follow and are woken when results
// land. With nobody waiting, the pool's result thread leads; it also runs every callback.
//
// Tasks go to workers with a small adaptive window each (about 1 ms of measured work, 1 for
// long tasks), many tasks per write; workers answer many results per write.
#include <mpx/detail/shm.hpp>
#include <mpx/detail/timespec.hpp>
#include <mpx/pool.hpp>
#include <mpx/process.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <climits>

// GCC's -Wnull-dereference flags code inlined from Asio's scheduler (the pragma takes effect
// where those headers are first included).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#pragma GCC diagnostic pop

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/log.hpp"
#include "ipc/wire_errors.hpp"
#include "pool/wire.hpp"

namespace mpx {
namespace detail {

namespace asio = boost::asio;
using namespace poolwire;

namespace {

constexpr std::size_t kLargeFrame = std::size_t{64} << 10;       // written from its own buffer
constexpr std::size_t kMaxInflightBytes = std::size_t{8} << 20;  // per worker, beyond its first task
constexpr double kTargetQueueNs = 1e6;                           // measured work queued per worker
constexpr double kLongTaskNs = 20e6;                             // from here on: one task at a time
constexpr unsigned kMaxWindow = 1024;
constexpr std::size_t kRecycleMin = std::size_t{64} << 10;  // frames worth keeping for reuse
constexpr std::size_t kRecycleMax = std::size_t{32} << 20;  // at most this much kept

using Socket = asio::local::stream_protocol::socket;

struct TaskRec {
  std::uint64_t seq = 0;
  Bytes frame;  // kTaskPrefix area (frame header at `off`), then type, seq, body
  std::size_t off = 0;
  std::shared_ptr<TaskSink> sink;
  std::uint64_t tag = 0;
  std::span<const std::byte> wire() const { return {frame.data() + off, frame.size() - off}; }
};
using TaskPtr = std::shared_ptr<TaskRec>;

struct Worker {
  explicit Worker(asio::io_context& io) : sock(io) {}
  std::uint32_t index = 0, gen = 0;
  Socket sock;
  // A worker forked by the pool's process itself (not by the spawner): its process, and
  // a watch on (a duplicate of) its exit sentinel.
  std::shared_ptr<ChildProcess> proc;
  std::unique_ptr<asio::posix::stream_descriptor> exit_watch;
  // Under the pool mutex:
  pid_t pid = 0;
  std::deque<TaskPtr> inflight;  // sent or about to be, unanswered, in send order
  std::vector<TaskPtr> queued;   // dispatched, not yet handed to a write
  std::size_t inflight_bytes = 0;
  std::uint64_t sent = 0, answered = 0;
  bool usable = true;  // may be given tasks
  bool dead = false;   // its exit was reported
  bool write_scheduled = false;
  // Only by the thread driving I/O:
  bool writing = false;
  Bytes wsmall;
  std::vector<iovec> wbufs;
  std::size_t wnext = 0;
  std::vector<TaskPtr> wkeep;
  ReadBuffer rbuf;
};
using WorkerPtr = std::shared_ptr<Worker>;

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

std::string describe_exit(int code) {
  if (code < 0) {
    const char* name = ::strsignal(-code);
    return "killed by signal " + std::to_string(-code) + (name ? std::string(" (") + name + ")" : "");
  }
  return "exit code " + std::to_string(code);
}

Bytes small_frame(std::uint8_t type) {
  Bytes f;
  std::size_t at = proto::begin_frame(f);
  proto::Writer(f).u8(type);
  proto::end_frame(f, at);
  return f;
}

// Forking the workers from the pool's process is only safe while it has no other thread (one
// could hold a lock the workers need); then the spawner's fork is not on their way.
bool only_thread() {
  int fd = ::open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  // Fields after the command name (which may hold spaces and parentheses): state is field 3,
  // num_threads field 20.
  const char* p = std::strrchr(buf, ')');
  if (!p) return false;
  int field = 2;
  for (; *p && field < 20; ++p)
    if (*p == ' ') ++field;
  return field == 20 && std::strtol(p, nullptr, 10) == 1;
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

class PoolCore final : public Driver, public std::enable_shared_from_this<PoolCore> {
 public:
  explicit PoolCore(PoolConfig cfg)
      : cfg_(std::move(cfg)), generation_(fork_generation()), work_(io_.get_executor()), ctl_(io_) {}
  ~PoolCore() override;
  void start();

  bool submit(TaskSubmission* tasks, std::size_t n, bool caller_waits, bool feed);
  bool wait(const Waitable& w, const Deadline& d) override;
  bool on_callback_thread() const noexcept override {
    return std::this_thread::get_id() == rt_id_.load(std::memory_order_acquire);
  }
  void schedule_callbacks(std::shared_ptr<ResultStateBase> s) override;

  // Large task frames are recycled: fresh pages cost a fault each, and big maps come in series.
  Bytes take_frame(std::size_t capacity) {
    if (capacity >= kRecycleMin) {
      std::lock_guard lk(spare_mutex_);
      for (auto it = spare_.begin(); it != spare_.end(); ++it) {
        if (it->capacity() >= capacity) {
          Bytes b = std::move(*it);
          spare_bytes_ -= b.capacity();
          spare_.erase(it);
          b.clear();
          return b;
        }
      }
    }
    Bytes b;
    b.reserve(capacity);
    return b;
  }
  void recycle(Bytes&& b) {
    if (b.capacity() < kRecycleMin) return;
    std::lock_guard lk(spare_mutex_);
    if (spare_bytes_ + b.capacity() > kRecycleMax) return;
    spare_bytes_ += b.capacity();
    spare_.push_back(std::move(b));
  }

  std::uint64_t next_apply_index() noexcept { return apply_index_.fetch_add(1, std::memory_order_relaxed); }
  unsigned processes() const noexcept { return processes_; }
  std::size_t inflight_hint() const noexcept {
    return std::size_t{processes_} * (window_.load(std::memory_order_relaxed) + 1);
  }
  void check_open() {
    check_here();
    std::lock_guard lk(m_);
    if (!accepting_) throw_closed();
  }
  bool owned_here() const noexcept {
    return generation_ == g_fork_generation.load(std::memory_order_relaxed);
  }
  void check_here() const {
    if (!owned_here()) throw StateError("mpx::Pool: a pool can only be used by the process that made it");
  }
  void close();
  void terminate();
  void join();
  void shutdown() noexcept;

 private:
  static TaskPtr make_rec(TaskSubmission& t);
  [[noreturn]] void throw_closed() const {
    throw StateError(terminated_ ? "mpx::Pool: the pool was terminated" : "mpx::Pool: the pool is closed");
  }
  // Leadership.
  void lead(const Waitable* w, const Deadline& d, bool rt);
  void release_lead(std::unique_lock<std::mutex>& lk, bool rt);
  void wake_rt_locked();
  void wake_leader() {
    asio::post(io_, [] {});
  }
  // A leader reading one worker's socket directly (direct_wait) sleeps in ppoll, not in the
  // reactor: whatever would wake the reactor wakes it too.
  void wake_direct_locked() {
    if (!direct_active_) return;
    std::uint64_t one = 1;
    [[maybe_unused]] ssize_t r = ::write(wake_fd_, &one, sizeof one);
  }
  void notify_followers() {
    std::lock_guard lk(m_);
    if (followers_) lead_cv_.notify_all();
    wake_direct_locked();
  }
  void rt_main();
  // I/O, on the leader.
  void dispatch_and_write();
  void dispatch_locked(std::vector<WorkerPtr>& start);
  void start_write(const WorkerPtr& w);
  void continue_write(const WorkerPtr& w);
  void end_write(const WorkerPtr& w, bool ok);
  bool direct_wait(const Waitable& w, const Deadline& d);
  void start_read(const WorkerPtr& w);
  void on_readable(const WorkerPtr& w, const boost::system::error_code& ec);
  bool read_available(const WorkerPtr& w, bool until_empty);
  void process_frames(const WorkerPtr& w);
  void start_ctl_read();
  void on_ctl_read(const boost::system::error_code& ec, std::size_t n);
  void handle_exit(std::uint32_t index, std::uint32_t gen, int code, bool spawn_failed);
  void spawn_worker(std::uint32_t index, bool direct);
  std::vector<int> fds_children_drop();
  void start_spawner(int also_drop = -1);
  bool ensure_spawner(int also_drop);
  void watch_exit(const WorkerPtr& w);
  void wait_children();
  void retire(const WorkerPtr& w);
  void ctl_send(const Bytes& frame, int fd = -1);
  void signal_worker(std::uint32_t index, int sig);
  void spawner_lost();
  void break_pool_locked(std::exception_ptr e, std::vector<TaskPtr>& failed);
  void update_window_locked(std::uint64_t ns);
  static void fail_all(std::vector<TaskPtr>& recs, const std::exception_ptr& e) {
    for (auto& r : recs) r->sink->on_failure(r->tag, e);
    recs.clear();
  }

  PoolConfig cfg_;
  unsigned generation_;
  unsigned processes_ = 1;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  Socket ctl_;
  std::mutex ctl_mutex_;
  ReadBuffer ctl_buf_;
  std::shared_ptr<ChildProcess> spawner_;  // set under m_; none until a worker is forked there
  SpawnerConfig spawner_config_;
  Slot* slots_ = nullptr;
  std::size_t slots_bytes_ = 0;
  int wake_fd_ = -1;       // eventfd: wakes a leader in direct_wait
  SpinStats direct_spin_;  // what polling before sleeping in direct_wait has paid
  unsigned spawned_ = 0;

  std::mutex m_;
  std::condition_variable lead_cv_, rt_cv_, callbacks_done_cv_;
  std::vector<WorkerPtr> workers_;  // by index: the current generation
  std::vector<WorkerPtr> retired_;  // done with maxtasksperchild, exit not reported yet
  std::deque<TaskPtr> pending_;
  std::uint64_t next_seq_ = 1;
  std::uint32_t next_gen_ = 0;
  std::atomic<std::size_t> outstanding_{0};  // pending + in flight
  bool accepting_ = true, feeding_ = true, terminated_ = false, joining_ = false, joined_ = false;
  bool spawner_gone_ = false;
  std::exception_ptr broken_;  // set when no task can run any more (failed initializer, lost spawner)
  unsigned spawn_failures_ = 0;
  bool leader_active_ = false;
  bool direct_active_ = false;
  bool rt_leads_ = false;
  unsigned followers_ = 0;
  bool kick_pending_ = false;
  std::deque<std::shared_ptr<ResultStateBase>> callbacks_;
  std::atomic<bool> callbacks_pending_{false};
  std::thread* rt_ = nullptr;  // a raw pointer: a forked copy of this object must never destroy it
  std::atomic<std::thread::id> rt_id_{};
  bool rt_stop_ = false;
  bool rt_in_callbacks_ = false;
  std::atomic<bool> rt_stop_flag_{false};
  double avg_ns_ = 0;
  bool have_avg_ = false;
  std::atomic<unsigned> window_{2};
  std::atomic<std::uint64_t> apply_index_{0};
  std::mutex spare_mutex_;
  std::vector<Bytes> spare_;
  std::size_t spare_bytes_ = 0;

  struct Answer {
    std::uint64_t seq, ns;
    std::span<const std::byte> result;
  };
  std::vector<Answer> answers_;                                            // leader scratch
  std::vector<std::pair<TaskPtr, std::span<const std::byte>>> completed_;  // leader scratch
};

// ---------------------------------------------------------------------------------------------
// Start and stop.
// ---------------------------------------------------------------------------------------------

void PoolCore::start() {
  processes_ = cfg_.processes ? cfg_.processes : std::max(1u, cpu_count());
  prepare_code_refs();  // before forking: workers then never need the loader's lock
  slots_bytes_ = sizeof(Slot) * processes_;
  slots_ = static_cast<Slot*>(map_shared(slots_bytes_));
  for (unsigned i = 0; i < processes_; ++i) ::new (&slots_[i]) Slot;
  spawner_config_ = SpawnerConfig{slots_, &cfg_.initializer, cfg_.maxtasksperchild, 0};
  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) throw Error(std::string("mpx::Pool: eventfd: ") + std::strerror(errno));
  workers_.resize(processes_);
  // With no other thread here, the workers are forked right away (not asked of a spawner
  // forked first: the spawner's fork is no longer on their way). The spawner, which forks the
  // replacements, is still forked now, while no other thread can hold a lock: forked later, it
  // would copy the program as it is then, locks held by other threads included. With threads,
  // the spawner is forked first and forks every worker.
  bool direct = only_thread();
  if (!direct) start_spawner();
  for (unsigned i = 0; i < processes_; ++i) spawn_worker(i, direct);
  if (direct) start_spawner();
}

// Every fd of this pool a child must not keep: copies would hold the workers' channels open
// past their end, and the pool's own ends are no business of a child.
std::vector<int> PoolCore::fds_children_drop() {
  std::vector<int> fds{wake_fd_};
  std::lock_guard lk(m_);
  auto add = [&](const WorkerPtr& w) {
    if (!w) return;
    if (w->sock.is_open()) fds.push_back(w->sock.native_handle());
    if (w->exit_watch && w->exit_watch->is_open()) fds.push_back(w->exit_watch->native_handle());
    if (w->proc && w->proc->sentinel() >= 0) fds.push_back(w->proc->sentinel());
  };
  for (auto& w : workers_) add(w);
  for (auto& w : retired_) add(w);
  if (ctl_.is_open()) fds.push_back(ctl_.native_handle());
  return fds;
}

void PoolCore::start_spawner(int also_drop) {
  int ctl[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0)
    throw Error(std::string("mpx::Pool: socketpair: ") + std::strerror(errno));
  std::vector<int> drop = fds_children_drop();
  if (also_drop >= 0) drop.push_back(also_drop);
  SpawnerConfig sc = spawner_config_;
  sc.spawned = spawned_;
  ForkOptions fo;
  fo.name = "PoolSpawner";
  fo.daemon = true;
  fo.die_with_parent = true;
  std::shared_ptr<ChildProcess> spawner;
  try {
    spawner = fork_child(fo, [&]() -> int {
      ::close(ctl[0]);
      for (int fd : drop) ::close(fd);
      return spawner_main(ctl[1], sc);
    });
  } catch (...) {
    ::close(ctl[0]);
    ::close(ctl[1]);
    throw;
  }
  ::close(ctl[1]);
  {
    std::lock_guard lk(ctl_mutex_);
    ctl_.assign(asio::local::stream_protocol(), ctl[0]);
  }
  {
    std::lock_guard lk(m_);
    spawner_ = std::move(spawner);
  }
  start_ctl_read();
}

// The spawner (forked when the pool is built; this only reports whether it is still
// there). False when it cannot be had: then no worker can be replaced, and the pool is broken.
bool PoolCore::ensure_spawner(int also_drop) {
  {
    std::lock_guard lk(m_);
    if (spawner_) return !spawner_gone_;
  }
  try {
    start_spawner(also_drop);
    return true;
  } catch (const std::exception& e) {
    logger().error("mpx::Pool: cannot start the spawner: {}", e.what());
    std::vector<TaskPtr> failed;
    {
      std::lock_guard lk(m_);
      spawner_gone_ = true;
      if (!broken_)
        break_pool_locked(
            std::make_exception_ptr(Error(std::string("mpx::Pool: cannot replace a worker: ") + e.what())),
            failed);
    }
    fail_all(failed, broken_);
    notify_followers();
    return false;
  }
}

void PoolCore::watch_exit(const WorkerPtr& w) {
  int fd = w->proc->sentinel();
  if (fd < 0) return;  // no sentinel at all: the end of its channel tells (on_readable)
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return;
  w->exit_watch = std::make_unique<asio::posix::stream_descriptor>(io_, dup);
  w->exit_watch->async_wait(asio::posix::stream_descriptor::wait_read,
                            [this, w](const boost::system::error_code& ec) {
                              if (ec) return;
                              // A pipe sentinel reads as closed a moment before the child can be reaped.
                              if (!w->proc->poll() && !w->proc->wait(std::chrono::seconds(1))) {
                                watch_exit(w);
                                return;
                              }
                              boost::system::error_code ignored;
                              w->exit_watch->close(ignored);
                              handle_exit(w->index, w->gen, w->proc->exitcode().value_or(-SIGKILL), false);
                            });
}

// Every process of this pool that runs: the workers it forked itself, and the spawner
// (which exits after its own workers).
void PoolCore::wait_children() {
  std::vector<std::shared_ptr<ChildProcess>> procs;
  {
    std::lock_guard lk(m_);
    for (auto& w : workers_)
      if (w && w->proc) procs.push_back(w->proc);
    for (auto& w : retired_)
      if (w->proc) procs.push_back(w->proc);
    if (spawner_) procs.push_back(spawner_);
  }
  for (auto& p : procs) p->wait();
}

PoolCore::~PoolCore() {
  if (rt_) {
    {
      std::lock_guard lk(m_);
      rt_stop_ = true;
      rt_stop_flag_ = true;
      rt_cv_.notify_all();
    }
    if (rt_->get_id() == std::this_thread::get_id())
      rt_->detach();
    else
      rt_->join();
    delete rt_;
  }
  boost::system::error_code ec;
  auto close_worker = [&](const WorkerPtr& w) {
    if (!w) return;
    w->sock.close(ec);
    if (w->exit_watch) w->exit_watch->close(ec);
    w->proc.reset();  // kills and reaps it if it still runs (a failed start)
  };
  for (auto& w : workers_) close_worker(w);
  for (auto& w : retired_) close_worker(w);
  ctl_.close(ec);
  spawner_.reset();  // kills and reaps the spawner if it still runs (a failed start)
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (slots_) unmap_shared(slots_, slots_bytes_);
}

void PoolCore::close() {
  check_here();
  std::lock_guard lk(m_);
  accepting_ = false;
}

void PoolCore::terminate() {
  check_here();
  std::vector<TaskPtr> failed;
  {
    std::lock_guard lk(m_);
    if (terminated_ || joined_) return;
    terminated_ = true;
    accepting_ = feeding_ = false;
    failed.assign(pending_.begin(), pending_.end());
    pending_.clear();
    for (auto& w : workers_) {
      if (!w) continue;
      failed.insert(failed.end(), w->inflight.begin(), w->inflight.end());
      w->inflight.clear();
      w->queued.clear();
      w->inflight_bytes = 0;
      w->usable = false;
    }
    outstanding_.store(0);
  }
  fail_all(failed, std::make_exception_ptr(StateError("mpx::Pool: terminated before this task finished")));
  notify_followers();
  wake_leader();
  bool spawner_alive;
  {
    std::lock_guard lk(m_);
    spawner_alive = spawner_ && !spawner_gone_;
  }
  signal_worker(kAllWorkers, SIGKILL);
  if (spawner_alive) {
    try {
      ctl_send(small_frame(kQuit));
    } catch (const std::exception& e) {
      logger().warn("mpx::Pool::terminate: {}", e.what());
    }
  }
  wait_children();
}

void PoolCore::join() {
  check_here();
  bool terminated;
  {
    std::lock_guard lk(m_);
    if (accepting_ && !terminated_) throw StateError("mpx::Pool::join(): call close() or terminate() first");
    if (joined_) return;
    feeding_ = false;
    terminated = terminated_;
  }
  if (!terminated) {
    struct Idle final : Waitable {
      explicit Idle(const std::atomic<std::size_t>& n) : n_(n) {}
      bool is_ready() const noexcept override { return n_.load() == 0; }
      const std::atomic<std::size_t>& n_;
    } idle(outstanding_);
    wait(idle, Deadline::never());
    // Every task is answered, so no write is in progress: tell each worker to exit and the
    // spawner to quit once they have.
    std::vector<WorkerPtr> live;
    bool spawner_alive;
    {
      std::lock_guard lk(m_);
      joining_ = true;
      for (auto& w : workers_)
        if (w && !w->dead) live.push_back(w);
      spawner_alive = spawner_ && !spawner_gone_;
    }
    Bytes bye = small_frame(kExit);
    for (auto& w : live) send_all_raw(w->sock.native_handle(), bye);
    if (spawner_alive) {
      try {
        ctl_send(small_frame(kQuit));
      } catch (const std::exception& e) {
        logger().warn("mpx::Pool::join: {}", e.what());
      }
    }
  }
  wait_children();
  std::unique_lock lk(m_);
  // As in Python, callbacks have run once join() returns (unless it is called from one).
  if (!on_callback_thread())
    callbacks_done_cv_.wait(lk, [&] { return (callbacks_.empty() && !rt_in_callbacks_) || !rt_; });
  joined_ = true;
}

void PoolCore::shutdown() noexcept {
  try {
    bool terminated;
    {
      std::lock_guard lk(m_);
      terminated = terminated_;
    }
    if (!terminated) close();
    join();
  } catch (const std::exception& e) {
    logger().error("mpx::~Pool: {}", e.what());
  }
  std::thread* t;
  {
    std::lock_guard lk(m_);
    rt_stop_ = true;
    rt_stop_flag_ = true;
    rt_cv_.notify_all();
    t = std::exchange(rt_, nullptr);
  }
  wake_leader();
  if (t) {
    if (t->get_id() == std::this_thread::get_id())
      t->detach();  // ~Pool inside a callback: the thread ends after it returns
    else
      t->join();
    delete t;
  }
}

// ---------------------------------------------------------------------------------------------
// Submitting and waiting.
// ---------------------------------------------------------------------------------------------

TaskPtr PoolCore::make_rec(TaskSubmission& t) {
  auto r = std::make_shared<TaskRec>();
  r->frame = std::move(t.frame);
  std::uint64_t len = r->frame.size() - proto::kLongHeaderSize;
  auto h = proto::encode_header(len);
  r->off = proto::kLongHeaderSize - h.size();
  std::memcpy(r->frame.data() + r->off, h.bytes().data(), h.size());
  r->frame[proto::kLongHeaderSize] = static_cast<std::byte>(kTask);
  r->sink = std::move(t.sink);
  r->tag = t.tag;
  return r;
}

bool PoolCore::submit(TaskSubmission* tasks, std::size_t n, bool caller_waits, bool feed) {
  check_here();
  TaskPtr one;
  std::vector<TaskPtr> many;
  TaskPtr* recs = &one;
  if (n == 1) {
    one = make_rec(tasks[0]);
  } else {
    many.reserve(n);
    for (std::size_t i = 0; i < n; ++i) many.push_back(make_rec(tasks[i]));
    recs = many.data();
  }
  bool post = false;
  std::exception_ptr broken;
  {
    std::unique_lock lk(m_);
    if (feed ? !feeding_ : !accepting_) {
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
      if (leader_active_) {
        // Tasks already waiting mean every worker's window is full (results will make room
        // and the leader dispatches then) or a kick is on its way: no need to wake it.
        if (!kick_pending_ && pending_.size() == n) {
          kick_pending_ = post = true;
          wake_direct_locked();
        }
      } else if (!caller_waits) {
        wake_rt_locked();
      }
    }
  }
  if (broken) {
    for (std::size_t i = 0; i < n; ++i) recs[i]->sink->on_failure(recs[i]->tag, broken);
    return true;
  }
  if (post)
    asio::post(io_, [this] {
      {
        std::lock_guard lk(m_);
        kick_pending_ = false;
      }
      dispatch_and_write();
    });
  return true;
}

bool PoolCore::wait(const Waitable& w, const Deadline& d) {
  if (w.is_ready()) return true;
  if (on_callback_thread())
    throw StateError("mpx::Pool: waiting for a pool result inside a pool callback would deadlock");
  std::unique_lock lk(m_);
  for (;;) {
    if (w.is_ready()) return true;
    if (!leader_active_) {
      leader_active_ = true;
      lk.unlock();
      try {
        lead(&w, d, false);
      } catch (...) {
        lk.lock();
        release_lead(lk, false);
        throw;
      }
      lk.lock();
      release_lead(lk, false);
      if (w.is_ready()) return true;
      if (d.expired()) return false;
      continue;
    }
    if (d.expired()) return false;
    ++followers_;
    if (d.infinite())
      lead_cv_.wait(lk);
    else
      lead_cv_.wait_until(lk, *d.at());
    --followers_;
  }
}

void PoolCore::lead(const Waitable* w, const Deadline& d, bool rt) {
  dispatch_and_write();
  for (;;) {
    if (w && w->is_ready()) return;
    if (rt && (outstanding_.load() == 0 || callbacks_pending_.load() || rt_stop_flag_.load())) return;
    if (d.expired()) return;
    if (w && direct_wait(*w, d)) continue;
    if (d.infinite()) {
      io_.run_one();
    } else {
      auto left = d.remaining();
      if (*left <= std::chrono::nanoseconds::zero()) return;
      io_.run_one_for(*left);
    }
  }
}

void PoolCore::release_lead(std::unique_lock<std::mutex>&, bool rt) {
  leader_active_ = false;
  if (followers_) lead_cv_.notify_all();
  if (!rt && outstanding_.load() > 0) wake_rt_locked();
}

void PoolCore::wake_rt_locked() {
  if (rt_stop_) return;
  if (!rt_) {
    rt_ = new std::thread([self = shared_from_this()] { self->rt_main(); });
    rt_id_.store(rt_->get_id(), std::memory_order_release);
  } else {
    rt_cv_.notify_one();
  }
}

void PoolCore::schedule_callbacks(std::shared_ptr<ResultStateBase> s) {
  {
    std::lock_guard lk(m_);
    if (!rt_stop_) {
      callbacks_.push_back(std::move(s));
      callbacks_pending_ = true;
      wake_rt_locked();
      if (rt_leads_) wake_leader();  // it is inside run_one(): make it look at its queue
      return;
    }
  }
  s->run_callbacks();  // the pool is gone: nobody else will
}

void PoolCore::rt_main() {
  std::unique_lock lk(m_);
  for (;;) {
    if (!callbacks_.empty()) {
      auto batch = std::move(callbacks_);
      callbacks_.clear();
      callbacks_pending_ = false;
      rt_in_callbacks_ = true;
      lk.unlock();
      for (auto& s : batch) s->run_callbacks();
      batch.clear();
      lk.lock();
      rt_in_callbacks_ = false;
      if (callbacks_.empty()) callbacks_done_cv_.notify_all();
      if (followers_) lead_cv_.notify_all();
      if (leader_active_) {  // its result may be one that just settled
        wake_leader();
        wake_direct_locked();
      }
      continue;
    }
    if (rt_stop_) return;
    if (!leader_active_ && outstanding_.load() > 0) {
      leader_active_ = rt_leads_ = true;
      lk.unlock();
      lead(nullptr, Deadline::never(), true);
      lk.lock();
      rt_leads_ = false;
      release_lead(lk, true);
      continue;
    }
    rt_cv_.wait(lk);
  }
}

// ---------------------------------------------------------------------------------------------
// Dispatch and socket I/O (only on the leader).
// ---------------------------------------------------------------------------------------------

void PoolCore::dispatch_and_write() {
  std::vector<WorkerPtr> start;
  {
    std::lock_guard lk(m_);
    dispatch_locked(start);
  }
  for (auto& w : start) start_write(w);
}

void PoolCore::dispatch_locked(std::vector<WorkerPtr>& start) {
  unsigned window = window_.load(std::memory_order_relaxed);
  while (!pending_.empty()) {
    Worker* best = nullptr;
    for (auto& w : workers_) {
      if (!w || !w->usable || w->inflight.size() >= window) continue;
      if (cfg_.maxtasksperchild && w->sent >= cfg_.maxtasksperchild) continue;
      if (!w->inflight.empty() && w->inflight_bytes >= kMaxInflightBytes) continue;
      if (!best || w->inflight.size() < best->inflight.size()) best = w.get();
    }
    if (!best) break;
    TaskPtr rec = std::move(pending_.front());
    pending_.pop_front();
    best->inflight_bytes += rec->frame.size();
    best->queued.push_back(rec);
    best->inflight.push_back(std::move(rec));
    ++best->sent;
    if (!best->write_scheduled) {
      best->write_scheduled = true;
      start.push_back(workers_[best->index]);
    }
  }
}

void PoolCore::start_write(const WorkerPtr& w) {
  std::vector<TaskPtr> batch;
  {
    std::lock_guard lk(m_);
    if (w->writing) return;  // the write in progress picks up what was queued meanwhile
    w->write_scheduled = false;
    batch.swap(w->queued);
  }
  if (batch.empty() || w->dead) return;
  // Small frames are copied into one buffer, large ones written from their own.
  std::size_t small = 0;
  for (auto& r : batch)
    if (r->wire().size() < kLargeFrame) small += r->wire().size();
  w->wsmall.clear();
  w->wsmall.reserve(small);
  w->wbufs.clear();
  w->wkeep.clear();
  bool last_small = false;
  for (auto& r : batch) {
    auto b = r->wire();
    if (b.size() < kLargeFrame) {
      std::size_t at = w->wsmall.size();
      w->wsmall.insert(w->wsmall.end(), b.begin(), b.end());
      if (last_small)
        w->wbufs.back().iov_len += b.size();
      else
        w->wbufs.push_back({w->wsmall.data() + at, b.size()});
      last_small = true;
    } else {
      w->wbufs.push_back({const_cast<std::byte*>(b.data()), b.size()});
      w->wkeep.push_back(r);
      last_small = false;
    }
  }
  w->wnext = 0;
  w->writing = true;
  continue_write(w);
}

// Writes as much as the socket takes right now (one sendmsg for many frames); waits for
// writability only when it is full.
void PoolCore::continue_write(const WorkerPtr& w) {
  int fd = w->sock.native_handle();
  while (w->wnext < w->wbufs.size()) {
    msghdr mh{};
    mh.msg_iov = w->wbufs.data() + w->wnext;
    mh.msg_iovlen = std::min<std::size_t>(w->wbufs.size() - w->wnext, IOV_MAX);
    ssize_t n = ::sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        w->sock.async_wait(Socket::wait_write, [this, w](const boost::system::error_code& ec) {
          if (ec) return end_write(w, false);
          continue_write(w);
        });
        return;
      }
      return end_write(w, false);  // the worker is gone or going: its exit report decides the rest
    }
    auto left = static_cast<std::size_t>(n);
    while (left && w->wnext < w->wbufs.size()) {
      auto& b = w->wbufs[w->wnext];
      if (left >= b.iov_len) {
        left -= b.iov_len;
        ++w->wnext;
      } else {
        b.iov_base = static_cast<std::byte*>(b.iov_base) + left;
        b.iov_len -= left;
        left = 0;
      }
    }
  }
  end_write(w, true);
}

void PoolCore::end_write(const WorkerPtr& w, bool ok) {
  w->writing = false;
  w->wkeep.clear();
  bool more;
  {
    std::lock_guard lk(m_);
    if (!ok) w->usable = false;
    more = ok && !w->queued.empty();
  }
  if (more) start_write(w);
}

// A caller waiting for a result while only one worker has tasks in flight, nothing waits to be
// sent and no write is pending, reads that worker's socket itself: one ppoll and one recv per
// answer instead of a reactor round (epoll_wait, completion queue, possibly a speculative read).
// It also wakes for the wake eventfd (new tasks, callbacks, terminate) and for the worker's exit
// (its pidfd, or the spawner's reports), and leaves those to the reactor. True when it
// waited (the caller re-checks its result), false when the reactor must run.
bool PoolCore::direct_wait(const Waitable& w, const Deadline& d) {
  WorkerPtr x;
  int exit_fd = -1;
  {
    std::lock_guard lk(m_);
    if (!pending_.empty() || kick_pending_ || terminated_ || broken_) return false;
    for (auto& k : workers_) {
      if (!k || k->inflight.empty()) continue;
      if (x) return false;
      x = k;
    }
    for (auto& k : retired_)
      if (!k->inflight.empty()) return false;
    if (!x || !x->usable || x->dead || x->writing || x->write_scheduled || !x->queued.empty()) return false;
    if (x->exit_watch)
      exit_fd = x->exit_watch->native_handle();
    else if (spawner_ && !spawner_gone_)
      exit_fd = ctl_.native_handle();
    if (w.is_ready()) return true;
    direct_active_ = true;
  }
  pollfd p[3] = {{x->sock.native_handle(), POLLIN, 0}, {wake_fd_, POLLIN, 0}, {exit_fd, POLLIN, 0}};
  const nfds_t nfds = exit_fd >= 0 ? 3 : 2;
  int r = 0;
  {
    // The answer often comes within a cross-CPU wake-up's time: polling the same fds that long
    // first saves this thread the wake-up (the budget adapts, as in the synchronize waits).
    AdaptiveSpin spin(direct_spin_);
    if (!spin.spin_polling([&] { return (r = ::poll(p, nfds, 0)) != 0; }, d)) {
      timespec ts{};
      if (auto left = d.remaining()) {
        ts = to_timespec(left->count());
      }
      r = ::ppoll(p, nfds, d.infinite() ? nullptr : &ts, nullptr);
    }
  }
  {
    std::lock_guard lk(m_);
    direct_active_ = false;
  }
  if (r <= 0) return true;  // timeout or signal: the caller checks its deadline
  if (p[1].revents) {
    std::uint64_t v;
    [[maybe_unused]] ssize_t n = ::read(wake_fd_, &v, sizeof v);
  }
  if (p[0].revents && !read_available(x, false)) {
    std::lock_guard lk(m_);  // EOF or error: the exit report follows
    x->usable = false;
  }
  return !p[1].revents && !p[2].revents;
}

// The reactor only reports readability; the read itself is ours, so a direct_wait may read the
// same socket in between without a reactor operation holding a buffer into rbuf.
void PoolCore::start_read(const WorkerPtr& w) {
  if (w->dead) return;
  w->sock.async_wait(Socket::wait_read,
                     [this, w](const boost::system::error_code& ec) { on_readable(w, ec); });
}

void PoolCore::on_readable(const WorkerPtr& w, const boost::system::error_code& ec) {
  if (ec == asio::error::operation_aborted) return;
  if (!ec && read_available(w, true)) return start_read(w);
  if (w->proc && !w->exit_watch && w->proc->wait(std::chrono::seconds(1))) {
    // No sentinel to watch: the end of its channel is all that tells the worker's exit.
    handle_exit(w->index, w->gen, w->proc->exitcode().value_or(-SIGKILL), false);
    return;
  }
  std::lock_guard lk(m_);  // EOF or error: the exit report follows
  w->usable = false;
}

// Reads what the socket holds (the reactor is edge-triggered: at least until a short read) and
// handles every complete frame. until_empty: also whatever arrived while they were handled, until
// the socket is empty; a busy worker's next results are then read without a reactor round. A
// direct_wait stops at the short read instead (its next answer comes after its next task).
// False at EOF or on an error.
bool PoolCore::read_available(const WorkerPtr& w, bool until_empty) {
  int fd = w->sock.native_handle();
  for (;;) {
    std::size_t need = kReadChunk / 4;
    auto avail = w->rbuf.data();
    try {
      if (auto f = proto::peek_frame(avail)) need = std::max<std::size_t>(need, f->missing());
    } catch (const proto::ProtocolError&) {
      logger().error("mpx::Pool: garbage from worker {}; stopping it", w->pid);
      signal_worker(w->index, SIGKILL);
      return false;
    }
    auto room = w->rbuf.prepare(need);
    ssize_t n = ::recv(fd, room.data(), room.size(), MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    w->rbuf.commit(static_cast<std::size_t>(n));
    process_frames(w);
    if (!until_empty && static_cast<std::size_t>(n) < room.size()) return true;
  }
}

void PoolCore::update_window_locked(std::uint64_t ns) {
  double x = static_cast<double>(ns);
  avg_ns_ = have_avg_ ? avg_ns_ + (x - avg_ns_) / 8 : x;
  have_avg_ = true;
  unsigned window;
  if (avg_ns_ >= kLongTaskNs)
    window = 1;
  else
    window =
        static_cast<unsigned>(std::clamp(kTargetQueueNs / std::max(avg_ns_, 1.0), 2.0, double{kMaxWindow}));
  window_.store(window, std::memory_order_relaxed);
}

void PoolCore::process_frames(const WorkerPtr& w) {
  answers_.clear();
  std::exception_ptr init_error;
  bool bad = false;
  proto::FrameReader frames(w->rbuf.data());
  try {
    while (auto frame = with_mpx_errors([&] { return frames.next(); })) {
      auto msg = *frame;
      if (msg.empty()) throw ProtocolError("empty message");
      auto in = task_reader(msg.subspan(1));
      auto type = static_cast<std::uint8_t>(msg[0]);
      if (type == kResult) {
        std::uint64_t seq = in.u64(), ns = in.u64();
        answers_.push_back({seq, ns, in.rest()});
      } else if (type == kInitError) {
        init_error = read_raised_fields(in);
      } else {
        throw ProtocolError("unknown message type " + std::to_string(type));
      }
    }
  } catch (const ProtocolError& e) {
    logger().error("mpx::Pool: bad message from worker {}: {}", w->pid, e.what());
    bad = true;
  }

  std::vector<WorkerPtr> start;
  std::vector<TaskPtr> failed;
  bool retiring = false;
  std::size_t finished = 0;
  {
    std::lock_guard lk(m_);
    for (auto& a : answers_) {
      if (w->inflight.empty() || w->inflight.front()->seq != a.seq) continue;  // failed meanwhile
      TaskPtr rec = std::move(w->inflight.front());
      w->inflight.pop_front();
      w->inflight_bytes -= rec->frame.size();
      ++w->answered;
      ++finished;
      update_window_locked(a.ns);
      completed_.emplace_back(std::move(rec), a.result);
    }
    if (init_error) {
      w->usable = false;
      if (!broken_) break_pool_locked(init_error, failed);
    } else if (cfg_.maxtasksperchild && w->usable && w->answered >= cfg_.maxtasksperchild) {
      w->usable = false;  // it exits by itself now
      retiring = true;
    }
    dispatch_locked(start);
  }
  if (retiring) retire(w);
  for (auto& s : start) start_write(s);
  bool any = !completed_.empty() || !failed.empty();
  for (auto& [rec, result] : completed_) {
    rec->sink->on_result(rec->tag, result);
    if (rec.use_count() == 1) recycle(std::move(rec->frame));
  }
  completed_.clear();
  // Counted out only once delivered: join() then knows every callback has been scheduled.
  if (finished) outstanding_.fetch_sub(finished);
  if (!failed.empty()) fail_all(failed, broken_);
  w->rbuf.consume(frames.consumed());
  if (any) notify_followers();
  if (bad) signal_worker(w->index, SIGKILL);
}

void PoolCore::break_pool_locked(std::exception_ptr e, std::vector<TaskPtr>& failed) {
  broken_ = std::move(e);
  failed.insert(failed.end(), pending_.begin(), pending_.end());
  pending_.clear();
  for (auto& w : workers_) {
    if (!w) continue;
    failed.insert(failed.end(), w->inflight.begin(), w->inflight.end());
    w->inflight.clear();
    w->queued.clear();
    w->inflight_bytes = 0;
  }
  outstanding_.fetch_sub(failed.size());
}

// A worker that reached maxtasksperchild exits by itself after its last answer; a fresh one
// takes its index (and its shared-memory slot, which it no longer writes).
void PoolCore::retire(const WorkerPtr& w) {
  {
    std::lock_guard lk(m_);
    if (workers_[w->index] != w) return;
    retired_.push_back(w);
  }
  spawn_worker(w->index, false);
  dispatch_and_write();  // the fresh worker has room for what waits
}

// direct: fork it here (only while the pool's process has no other thread); else the process
// spawner forks it.
void PoolCore::spawn_worker(std::uint32_t index, bool direct) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    logger().error("mpx::Pool: socketpair: {}", std::strerror(errno));
    return;
  }
  // Bigger socket buffers mean fewer round trips for large chunks (the kernel caps the value).
  int bufsize = 1 << 20;
  for (int fd : sv) {
    ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
  }
  auto w = std::make_shared<Worker>(io_);
  w->index = index;
  boost::system::error_code ec;
  w->sock.assign(asio::local::stream_protocol(), sv[0], ec);
  {
    std::lock_guard lk(m_);
    if (terminated_ || joining_ || spawner_gone_ || broken_) {
      ::close(sv[1]);
      w->sock.close(ec);
      w->dead = true;
      w->usable = false;
      workers_[index] = w;
      return;
    }
    w->gen = ++next_gen_;
    slots_[index].running.store(0, std::memory_order_relaxed);
    workers_[index] = w;
  }
  if (direct) {
    std::vector<int> drop = fds_children_drop();
    ForkOptions fo;
    fo.name = "PoolWorker-" + std::to_string(++spawned_);
    fo.daemon = true;
    fo.die_with_parent = true;
    try {
      w->proc = fork_child(fo, [&]() -> int {
        for (int fd : drop) ::close(fd);
        return worker_main(sv[1], &slots_[index], spawner_config_);
      });
    } catch (...) {
      ::close(sv[1]);
      throw;  // only while the pool is built: the constructor fails
    }
    ::close(sv[1]);
    {
      std::lock_guard lk(m_);
      w->pid = w->proc->pid();
    }
    watch_exit(w);
  } else {
    if (!ensure_spawner(sv[1])) {
      ::close(sv[1]);
      std::lock_guard lk(m_);
      w->sock.close(ec);
      w->dead = true;
      w->usable = false;
      return;
    }
    Bytes f;
    std::size_t at = proto::begin_frame(f);
    proto::Writer out(f);
    out.u8(kSpawn);
    out.u32(index);
    out.u32(w->gen);
    proto::end_frame(f, at);
    try {
      ctl_send(f, sv[1]);
    } catch (const std::exception& e) {
      logger().error("mpx::Pool: cannot reach the spawner: {}", e.what());
    }
    ::close(sv[1]);
  }
  start_read(w);
}

void PoolCore::handle_exit(std::uint32_t index, std::uint32_t gen, int code, bool spawn_failed) {
  WorkerPtr w;
  {
    std::lock_guard lk(m_);
    if (index >= workers_.size()) return;
    if (workers_[index] && workers_[index]->gen == gen) {
      w = workers_[index];
    } else {
      for (auto it = retired_.begin(); it != retired_.end(); ++it) {
        if ((*it)->index == index && (*it)->gen == gen) {
          w = *it;
          retired_.erase(it);
          break;
        }
      }
      if (!w) return;
      // A retired worker: its tasks were all answered (any left run elsewhere).
      std::vector<TaskPtr> left(w->inflight.begin(), w->inflight.end());
      w->inflight.clear();
      w->dead = true;
      pending_.insert(pending_.begin(), left.begin(), left.end());
      boost::system::error_code ec;
      w->sock.close(ec);
      return;
    }
  }
  {
    std::lock_guard lk(m_);
    w->usable = false;  // nothing more for it, and no retirement while its last words are read
  }
  // Everything it wrote before dying is in the socket: read it all first.
  boost::system::error_code ec;
  w->sock.cancel(ec);
  if (!spawn_failed) {
    int fd = w->sock.native_handle();
    for (;;) {
      std::size_t need = kReadChunk / 4;
      auto avail = w->rbuf.data();
      try {
        if (auto f = proto::peek_frame(avail)) need = std::max<std::size_t>(need, f->missing());
      } catch (const proto::ProtocolError&) {
        break;
      }
      auto room = w->rbuf.prepare(need);
      ssize_t n = ::recv(fd, room.data(), room.size(), MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      w->rbuf.commit(static_cast<std::size_t>(n));
      process_frames(w);
    }
  }
  std::vector<TaskPtr> lost;
  std::vector<TaskPtr> failed;
  bool respawn;
  pid_t pid;
  {
    std::lock_guard lk(m_);
    std::uint64_t running = slots_[index].running.load(std::memory_order_acquire);
    std::vector<TaskPtr> again;
    for (auto& r : w->inflight) (r->seq == running && !spawn_failed ? lost : again).push_back(r);
    pending_.insert(pending_.begin(), again.begin(), again.end());
    w->inflight.clear();
    w->queued.clear();
    w->inflight_bytes = 0;
    w->usable = false;
    w->dead = true;
    pid = w->pid;
    if (spawn_failed) {
      if (++spawn_failures_ >= 3 && !broken_)
        break_pool_locked(std::make_exception_ptr(Error("mpx::Pool: cannot start worker processes: " +
                                                        std::string(std::strerror(code)))),
                          failed);
    } else {
      spawn_failures_ = 0;
    }
    respawn = !terminated_ && !joining_ && !spawner_gone_ && !broken_;
  }
  w->sock.close(ec);
  if (std::size_t n_lost = lost.size()) {
    fail_all(lost, std::make_exception_ptr(WorkerLost("mpx::Pool: worker process " + std::to_string(pid) +
                                                          " died while running this task (" +
                                                          describe_exit(code) + ")",
                                                      code)));
    outstanding_.fetch_sub(n_lost);
  }
  if (!failed.empty()) fail_all(failed, broken_);
  if (respawn) spawn_worker(index, false);
  dispatch_and_write();
  notify_followers();
}

void PoolCore::spawner_lost() {
  std::vector<TaskPtr> failed;
  {
    std::lock_guard lk(m_);
    if (spawner_gone_) return;
    spawner_gone_ = true;
    if (joining_ || terminated_) return;  // it was told to quit
    if (!broken_)
      break_pool_locked(std::make_exception_ptr(WorkerLost(
                            "mpx::Pool: the pool's spawner process died, and its workers with it", -SIGKILL)),
                        failed);
    for (auto& w : workers_)
      if (w) w->usable = false;
  }
  fail_all(failed, broken_);
  notify_followers();
}

void PoolCore::ctl_send(const Bytes& frame, int fd) {
  std::lock_guard lk(ctl_mutex_);
  int s = ctl_.native_handle();
  const std::byte* p = frame.data();
  std::size_t n = frame.size();
  bool first = true;
  while (n) {
    iovec iov{const_cast<std::byte*>(p), n};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
    if (first && fd >= 0) {
      std::memset(cbuf, 0, sizeof cbuf);
      mh.msg_control = cbuf;
      mh.msg_controllen = sizeof cbuf;
      cmsghdr* c = CMSG_FIRSTHDR(&mh);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    ssize_t w = ::sendmsg(s, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd pf{s, POLLOUT, 0};
        ::poll(&pf, 1, 1000);
        continue;
      }
      throw ConnectionError(std::string("pool control channel: ") + std::strerror(errno));
    }
    first = false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

void PoolCore::signal_worker(std::uint32_t index, int sig) {
  std::vector<std::shared_ptr<ChildProcess>> direct;
  bool via_spawner = false;
  {
    std::lock_guard lk(m_);
    auto add = [&](const WorkerPtr& w) {
      if (w && w->proc && (index == kAllWorkers || w->index == index)) direct.push_back(w->proc);
    };
    for (auto& w : workers_) add(w);
    for (auto& w : retired_) add(w);
    via_spawner =
        spawner_ && !spawner_gone_ &&
        (index == kAllWorkers || index >= workers_.size() || !workers_[index] || !workers_[index]->proc);
  }
  for (auto& p : direct) p->signal(sig);
  if (!via_spawner) return;
  Bytes f;
  std::size_t at = proto::begin_frame(f);
  proto::Writer out(f);
  out.u8(kSignal);
  out.u32(index);
  out.i32(sig);
  proto::end_frame(f, at);
  try {
    ctl_send(f);
  } catch (const std::exception& e) {
    logger().warn("mpx::Pool: {}", e.what());
  }
}

void PoolCore::start_ctl_read() {
  auto room = ctl_buf_.prepare(4096);
  ctl_.async_read_some(asio::buffer(room.data(), room.size()),
                       [this](const boost::system::error_code& ec, std::size_t n) { on_ctl_read(ec, n); });
}

void PoolCore::on_ctl_read(const boost::system::error_code& ec, std::size_t n) {
  if (ec == asio::error::operation_aborted) return;
  if (ec) {
    spawner_lost();
    return;
  }
  ctl_buf_.commit(n);
  struct Report {
    std::uint8_t type;
    std::uint32_t index, gen;
    std::int32_t value;
  };
  std::vector<Report> reports;
  proto::FrameReader frames(ctl_buf_.data());
  try {
    while (auto frame = with_mpx_errors([&] { return frames.next(); })) {
      auto in = task_reader(*frame);
      Report r;
      r.type = in.u8();
      r.index = in.u32();
      r.gen = in.u32();
      r.value = in.i32();
      reports.push_back(r);
    }
  } catch (const ProtocolError& e) {
    logger().error("mpx::Pool: bad message from the spawner: {}", e.what());
  }
  ctl_buf_.consume(frames.consumed());
  for (auto& r : reports) {
    if (r.type == kSpawned) {
      std::lock_guard lk(m_);
      if (r.index < workers_.size() && workers_[r.index] && workers_[r.index]->gen == r.gen)
        workers_[r.index]->pid = r.value;
      for (auto& w : retired_)
        if (w->index == r.index && w->gen == r.gen) w->pid = r.value;
    } else if (r.type == kExited || r.type == kSpawnFailed) {
      handle_exit(r.index, r.gen, r.value, r.type == kSpawnFailed);
    }
  }
  start_ctl_read();
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
Bytes pool_frame(PoolCore& core, std::size_t reserve) {
  Bytes b = core.take_frame(kTaskPrefix + reserve);
  b.resize(kTaskPrefix);
  return b;
}
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
  core_ = detail::make_pool_core(
      detail::PoolConfig{options.processes, std::move(options.initializer), options.maxtasksperchild});
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
