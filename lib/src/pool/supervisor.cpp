// Worker supervision: forking workers (here while the process has no other thread, else through
// the spawner process), watching and reporting their exits, replacing them, and the control
// channel to the spawner (proto/pool.md).
#include "pool/supervisor.hpp"

#include <mpx/detail/futex.hpp>
#include <mpx/detail/shm.hpp>
#include <mpx/detail/transfer.hpp>
#include <mpx/process.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/buffer.hpp>
#pragma GCC diagnostic pop

#include "common/log.hpp"
#include "ipc/wire_errors.hpp"
#include "pool/core.hpp"
#include "process/forkserver.hpp"

namespace mpx::detail {

namespace asio = boost::asio;
using namespace poolwire;

namespace {

std::string describe_exit(int code) {
  if (code < 0) {
    const char* name = ::strsignal(-code);
    return "killed by signal " + std::to_string(-code) + (name ? std::string(" (") + name + ")" : "");
  }
  return "exit code " + std::to_string(code);
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

// Lazy binding is paid per process: a libc function first called in a child costs it a symbol
// lookup that faults in the loader's hash tables (tens of microseconds), in every worker and
// spawner anew. Called once here, with arguments they refuse, what the worker and the spawner
// call at their start is bound before they are forked, and they inherit the binding.
void bind_what_workers_call() {
  static const bool bound = [] {
    int saved = errno;
    (void)::signal(0, SIG_DFL);  // EINVAL: no signal 0
    (void)::mallopt(0, 0);       // no such parameter: nothing changes
    char byte;
    (void)::recv(-1, &byte, 1, MSG_DONTWAIT);  // EBADF
    msghdr mh{};
    (void)::recvmsg(-1, &mh, 0);  // EBADF
    errno = saved;
    return true;
  }();
  (void)bound;
}

// A control message: type, worker index, one more 32-bit field (generation or signal).

}  // namespace

Supervisor::Supervisor(PoolCore& core, asio::io_context& io) : core_(core), io_(io), ctl_(io) {}

Supervisor::~Supervisor() {
  if (slots_) unmap_shared(slots_, slots_bytes_);
}

void Supervisor::start(unsigned processes, const std::function<void()>* initializer,
                       unsigned maxtasksperchild, StartMethod method) {
  method_ = method;
  // The slots must reach a spawner that is not a fork of this process: made by fd, they can.
  if (method_ == StartMethod::forkserver) forkserver_ensure_started();
  slots_bytes_ = sizeof(Slot) * processes;
  slots_ = static_cast<Slot*>(map_shared(slots_bytes_));
  for (unsigned i = 0; i < processes; ++i) ::new (&slots_[i]) Slot;
  spawner_config_ = SpawnerConfig{slots_, initializer, maxtasksperchild, 0};
  workers_.resize(processes);
  // A worker's first wait asks both; answered here once, every worker (and the spawner, and
  // the workers it forks) inherits the answers instead of reading /sys and /proc itself.
  (void)spin_limit_ns();
  (void)spare_cpu();
  bind_what_workers_call();
  // With no other thread here, the workers are forked right away (not asked of a spawner
  // forked first: the spawner's fork is no longer on their way). The spawner, which forks the
  // replacements, is still forked now, while no other thread can hold a lock: forked later, it
  // would copy the program as it is then, locks held by other threads included. With threads,
  // the spawner is forked first and forks every worker.
  bool direct = method_ == StartMethod::fork && only_thread();
  if (!direct) start_spawner();
  for (unsigned i = 0; i < processes; ++i) spawn_worker(i, direct);
  if (direct) start_spawner();
}

void Supervisor::close_all() noexcept {
  boost::system::error_code ec;
  auto close_worker = [&](const WorkerPtr& w) {
    if (!w) return;
    w->ch.sock.close(ec);
    if (w->exit_watch) w->exit_watch->close(ec);
  };
  for (auto& w : workers_) close_worker(w);
  for (auto& w : retired_) close_worker(w);
  {
    std::lock_guard d(direct_mutex_);
    try {
      direct_.kill_all();  // a failed start: whatever was forked here goes
    } catch (...) {        // out of memory for the reports: ~WorkerSet kills and reaps them still
    }
  }
  ctl_.close(ec);
  spawner_.reset();  // kills and reaps the spawner if it still runs (a failed start)
}

bool Supervisor::any_retired_busy_locked() const {
  for (auto& k : retired_)
    if (!k->inflight.empty()) return true;
  return false;
}

int Supervisor::exit_fd_locked(const Worker& w) {
  if (w.exit_watch) return w.exit_watch->native_handle();
  if (spawner_alive_locked()) return ctl_.native_handle();
  return -1;
}

// Every fd of this pool a child must not keep: copies would hold the workers' channels open
// past their end, and the pool's own ends are no business of a child.
std::vector<int> Supervisor::fds_children_drop() {
  std::vector<int> fds{core_.leader_.wake_fd()};
  std::lock_guard lk(core_.m_);
  auto add = [&](const WorkerPtr& w) {
    if (!w) return;
    if (w->ch.sock.is_open()) fds.push_back(w->ch.sock.native_handle());
    if (w->exit_watch && w->exit_watch->is_open()) fds.push_back(w->exit_watch->native_handle());
  };
  for (auto& w : workers_) add(w);
  for (auto& w : retired_) add(w);
  {
    std::lock_guard d(direct_mutex_);
    for (int fd : direct_.sentinels()) fds.push_back(fd);
  }
  if (ctl_.is_open()) fds.push_back(ctl_.native_handle());
  return fds;
}

void Supervisor::start_spawner(int also_drop) {
  int ctl[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl) != 0)
    throw Error(std::string("mpx::Pool: socketpair: ") + std::strerror(errno));
  std::shared_ptr<ChildProcess> spawner;
  try {
    if (method_ != StartMethod::fork) {
      spawner = start_spawner_by_method(ctl[1]);
    } else {
      std::vector<int> drop = fds_children_drop();
      if (also_drop >= 0) drop.push_back(also_drop);
      SpawnerConfig sc = spawner_config_;
      sc.spawned = spawned_;
      ForkOptions fo;
      fo.name = "PoolSpawner";
      fo.daemon = true;
      fo.die_with_parent = true;
      spawner = fork_child(fo, [&]() -> int {
        ::close(ctl[0]);
        for (int fd : drop) ::close(fd);
        return spawner_main(ctl[1], sc);
      });
    }
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
    std::lock_guard lk(core_.m_);
    spawner_ = std::move(spawner);
  }
  start_ctl_read();
}

// Under forkserver and spawn: the spawner is a child started by that method, given the control
// socket, the slots (made by fd) and the initializer by its code's identity.
std::shared_ptr<ChildProcess> Supervisor::start_spawner_by_method(int ctl) {
  ForwardedStart req;
  req.name = "PoolSpawner";
  req.daemon = true;
  Bytes scratch;
  encode_shared_pointer(scratch, req.maps, slots_);
  if (req.maps.empty() || req.maps.front().fd < 0)
    throw Error("mpx::Pool: the workers' slots are not in a mapping a " + std::string(to_string(method_)) +
                " child can be given");
  CodeRef init{};
  if (const auto* f = spawner_config_.initializer; f && *f)
    init = code_ref(reinterpret_cast<std::uintptr_t>(*f->target<void (*)()>()));
  encode_target(req.target, req.maps, &spawner_child_main,
                std::tuple{std::uint64_t{reinterpret_cast<std::uintptr_t>(slots_)}, init.module, init.offset,
                           spawner_config_.maxtasksperchild, spawned_});
  req.fds.push_back(ctl);
  return start_forwarded(method_, req);
}

// The spawner (forked when the pool is built; this only reports whether it is still
// there). False when it cannot be had: then no worker can be replaced, and the pool is broken.
bool Supervisor::ensure_spawner(int also_drop) {
  {
    std::lock_guard lk(core_.m_);
    if (spawner_) return !spawner_gone_;
  }
  try {
    start_spawner(also_drop);
    return true;
  } catch (const std::exception& e) {
    logger().error("mpx::Pool: cannot start the spawner: {}", e.what());
    std::vector<TaskPtr> failed;
    {
      std::lock_guard lk(core_.m_);
      spawner_gone_ = true;
      if (!core_.broken_)
        core_.break_pool_locked(
            std::make_exception_ptr(Error(std::string("mpx::Pool: cannot replace a worker: ") + e.what())),
            failed);
    }
    fail_all(failed, core_.broken_);
    core_.leader_.notify_followers();
    return false;
  }
}

void Supervisor::watch_exit(const WorkerPtr& w) {
  int fd;
  {
    std::lock_guard d(direct_mutex_);
    fd = direct_.sentinel(w->index, w->gen);
  }
  if (fd < 0) return;
  int dup = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) return;  // no fd left: the end of its channel tells (exit_without_watch)
  w->exit_watch = std::make_unique<asio::posix::stream_descriptor>(io_, dup);
  w->exit_watch->async_wait(asio::posix::stream_descriptor::wait_read,
                            [this, w](const boost::system::error_code& ec) {
                              if (!ec) on_direct_exit(w);
                            });
}

std::vector<WorkerSet::Exit> Supervisor::take_direct_exits_locked() {
  std::vector<WorkerSet::Exit> exits = direct_.reap();
  exits.insert(exits.begin(), direct_exits_.begin(), direct_exits_.end());
  direct_exits_.clear();
  return exits;
}

// A directly forked worker's sentinel is readable: report every exit reaped since (others' too;
// their own watches then find nothing left to report).
void Supervisor::on_direct_exit(const WorkerPtr& w) {
  std::vector<WorkerSet::Exit> exits;
  bool still_running;
  {
    std::lock_guard d(direct_mutex_);
    exits = take_direct_exits_locked();
    still_running = direct_.running(w->index, w->gen);
  }
  if (still_running) {
    // A pipe sentinel reads as closed a moment before the child can be reaped.
    w->exit_watch->async_wait(asio::posix::stream_descriptor::wait_read,
                              [this, w](const boost::system::error_code& ec) {
                                if (!ec) on_direct_exit(w);
                              });
  } else {
    boost::system::error_code ignored;
    w->exit_watch->close(ignored);
  }
  for (const WorkerSet::Exit& e : exits)
    handle_exit(static_cast<std::uint32_t>(e.slot), e.generation, e.exitcode.value_or(-SIGKILL), false);
}

bool Supervisor::exit_without_watch(const WorkerPtr& w) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  for (;;) {
    std::vector<WorkerSet::Exit> exits;
    bool still_running;
    {
      std::lock_guard d(direct_mutex_);
      exits = take_direct_exits_locked();
      still_running = direct_.running(w->index, w->gen);
    }
    for (const WorkerSet::Exit& e : exits)
      handle_exit(static_cast<std::uint32_t>(e.slot), e.generation, e.exitcode.value_or(-SIGKILL), false);
    if (!still_running) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void Supervisor::wait_children() {
  std::shared_ptr<ChildProcess> spawner;
  {
    std::lock_guard lk(core_.m_);
    spawner = spawner_;
  }
  {
    std::lock_guard d(direct_mutex_);
    std::vector<WorkerSet::Exit> exits = direct_.wait_all();
    direct_exits_.insert(direct_exits_.end(), exits.begin(), exits.end());
  }
  if (spawner) spawner->wait();
}

// A worker that reached maxtasksperchild exits by itself after its last answer; a fresh one
// takes its index (and its shared-memory slot, which it no longer writes).
void Supervisor::retire(const WorkerPtr& w) {
  {
    std::lock_guard lk(core_.m_);
    if (workers_[w->index] != w) return;
    retired_.push_back(w);
  }
  spawn_worker(w->index, false);
  core_.dispatch_and_write();  // the fresh worker has room for what waits
}

// direct: fork it here (only while the pool's process has no other thread); else the
// spawner forks it.
void Supervisor::spawn_worker(std::uint32_t index, bool direct) {
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
  w->ch.sock.assign(asio::local::stream_protocol(), sv[0], ec);
  {
    std::lock_guard lk(core_.m_);
    if (core_.stopping_workers_locked() || spawner_gone_ || core_.broken_) {
      ::close(sv[1]);
      w->ch.sock.close(ec);
      w->dead = true;
      w->usable = false;
      workers_[index] = w;
      return;
    }
    w->gen = ++next_gen_;
    if (!direct) spawner_asked_ = true;
    slots_[index].running.store(0, std::memory_order_relaxed);
    workers_[index] = w;
  }
  if (direct) {
    fork_worker(w, sv[1]);
  } else if (!ask_spawner(w, sv[1])) {
    return;
  }
  core_.start_read(w);
}

void Supervisor::fork_worker(const WorkerPtr& w, int fd) {
  std::vector<int> drop = fds_children_drop();
  ForkOptions fo;
  fo.name = "PoolWorker-" + std::to_string(++spawned_);
  fo.daemon = true;
  fo.die_with_parent = true;
  WorkerSet::Started started{};
  try {
    std::lock_guard d(direct_mutex_);
    started = direct_.start(
        w->index, fo,
        [&]() -> int {
          for (int dropped : drop) ::close(dropped);
          return worker_main(fd, &slots_[w->index], spawner_config_);
        },
        w->gen);
  } catch (...) {
    ::close(fd);
    throw;  // only while the pool is built: the constructor fails
  }
  ::close(fd);
  {
    std::lock_guard lk(core_.m_);
    w->pid = started.pid;
    w->direct = true;
  }
  watch_exit(w);
}

// Hands the worker's end of its channel to the spawner; false when there is no spawner.
bool Supervisor::ask_spawner(const WorkerPtr& w, int fd) {
  if (!ensure_spawner(fd)) {
    ::close(fd);
    std::lock_guard lk(core_.m_);
    boost::system::error_code ec;
    w->ch.sock.close(ec);
    w->dead = true;
    w->usable = false;
    return false;
  }
  try {
    ctl_send(control_frame({.type = kSpawn, .index = w->index, .gen = w->gen}), fd);
  } catch (const std::exception& e) {
    logger().error("mpx::Pool: cannot reach the spawner: {}", e.what());
  }
  ::close(fd);
  return true;
}

// The exited worker by index and generation; a retired one is taken off the retired list.
WorkerPtr Supervisor::find_exited_locked(std::uint32_t index, std::uint32_t gen, bool& retired) {
  retired = false;
  if (index >= workers_.size()) return nullptr;
  if (workers_[index] && workers_[index]->gen == gen) return workers_[index];
  for (auto it = retired_.begin(); it != retired_.end(); ++it) {
    if ((*it)->index == index && (*it)->gen == gen) {
      WorkerPtr w = *it;
      retired_.erase(it);
      retired = true;
      return w;
    }
  }
  return nullptr;
}

// Everything a dead worker wrote before dying is still in its socket: its answers count.
void Supervisor::drain(const WorkerPtr& w) {
  bool short_read;
  while (w->ch.recv_some(short_read) == Channel::Read::data) core_.process_frames(w);
}

void Supervisor::handle_exit(std::uint32_t index, std::uint32_t gen, int code, bool spawn_failed) {
  WorkerPtr w;
  boost::system::error_code ec;
  {
    std::lock_guard lk(core_.m_);
    bool retired;
    w = find_exited_locked(index, gen, retired);
    if (!w) return;
    if (retired) {
      // A retired worker: its tasks were all answered (any left run elsewhere).
      core_.pending_.insert(core_.pending_.begin(), w->inflight.begin(), w->inflight.end());
      w->inflight.clear();
      w->dead = true;
      w->ch.sock.close(ec);
      return;
    }
    w->usable = false;  // nothing more for it, and no retirement while its last words are read
  }
  w->ch.sock.cancel(ec);
  if (!spawn_failed) drain(w);
  std::vector<TaskPtr> lost;
  std::vector<TaskPtr> failed;
  bool respawn;
  pid_t pid;
  {
    std::lock_guard lk(core_.m_);
    // The task its slot names was running when it died: that one failed; the rest run again.
    std::uint64_t running = slots_[index].running.load(std::memory_order_acquire);
    std::vector<TaskPtr> all, again;
    w->drop_all(all);
    for (auto& r : all) (r->seq == running && !spawn_failed ? lost : again).push_back(std::move(r));
    core_.pending_.insert(core_.pending_.begin(), again.begin(), again.end());
    w->usable = false;
    w->dead = true;
    pid = w->pid;
    if (spawn_failed) {
      if (++spawn_failures_ >= 3 && !core_.broken_)
        core_.break_pool_locked(std::make_exception_ptr(Error("mpx::Pool: cannot start worker processes: " +
                                                              std::string(std::strerror(code)))),
                                failed);
    } else {
      spawn_failures_ = 0;
    }
    respawn = !core_.stopping_workers_locked() && !spawner_gone_ && !core_.broken_;
  }
  w->ch.sock.close(ec);
  if (std::size_t n_lost = lost.size()) {
    fail_all(lost, std::make_exception_ptr(WorkerLost("mpx::Pool: worker process " + std::to_string(pid) +
                                                          " died while running this task (" +
                                                          describe_exit(code) + ")",
                                                      code)));
    core_.outstanding_.fetch_sub(n_lost);
  }
  if (!failed.empty()) fail_all(failed, core_.broken_);
  if (respawn) spawn_worker(index, false);
  core_.dispatch_and_write();
  core_.leader_.notify_followers();
}

void Supervisor::spawner_lost() {
  std::vector<TaskPtr> failed;
  {
    std::lock_guard lk(core_.m_);
    if (spawner_gone_) return;
    spawner_gone_ = true;
    if (core_.stopping_workers_locked()) return;  // it was told to quit
    if (!core_.broken_)
      core_.break_pool_locked(
          std::make_exception_ptr(
              WorkerLost("mpx::Pool: the pool's spawner process died, and its workers with it", -SIGKILL)),
          failed);
    for (auto& w : workers_)
      if (w) w->usable = false;
  }
  fail_all(failed, core_.broken_);
  core_.leader_.notify_followers();
}

void Supervisor::ctl_send(const Bytes& frame, int fd) {
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

void Supervisor::quit_spawner(const char* who) {
  std::shared_ptr<ChildProcess> idle;
  {
    std::lock_guard lk(core_.m_);
    if (!spawner_asked_) idle = spawner_;
  }
  // A spawner that never forked a worker has nothing to wait for or report: killed, it ends
  // without running its own way out (it may not even have run since its fork), and the pool's
  // join waits for one process less to be scheduled.
  if (idle && idle->signal(SIGKILL)) return;
  try {
    ctl_send(control_frame({.type = kQuit}));
  } catch (const std::exception& e) {
    logger().warn("{}: {}", who, e.what());
  }
}

void Supervisor::signal_worker(std::uint32_t index, int sig) {
  bool via_spawner = false;
  {
    std::lock_guard lk(core_.m_);
    via_spawner = spawner_alive_locked() && (index == kAllWorkers || index >= workers_.size() ||
                                             !workers_[index] || !workers_[index]->direct);
  }
  {
    std::lock_guard d(direct_mutex_);
    if (index == kAllWorkers)
      direct_.signal_all(sig);
    else
      direct_.signal(index, sig);
  }
  if (!via_spawner) return;
  try {
    ctl_send(control_frame({.type = kSignal, .index = index, .value = sig}));
  } catch (const std::exception& e) {
    logger().warn("mpx::Pool: {}", e.what());
  }
}

void Supervisor::start_ctl_read() {
  auto room = ctl_buf_.prepare(4096);
  ctl_.async_read_some(asio::buffer(room.data(), room.size()),
                       [this](const boost::system::error_code& ec, std::size_t n) { on_ctl_read(ec, n); });
}

void Supervisor::on_ctl_read(const boost::system::error_code& ec, std::size_t n) {
  if (ec == asio::error::operation_aborted) return;
  if (ec) {
    spawner_lost();
    return;
  }
  ctl_buf_.commit(n);
  std::vector<ControlMessage> reports;
  proto::FrameReader frames(ctl_buf_.data());
  try {
    while (auto frame = with_mpx_errors([&] { return frames.next(); }))
      reports.push_back(read_control(*frame));
  } catch (const ProtocolError& e) {
    logger().error("mpx::Pool: bad message from the spawner: {}", e.what());
  }
  ctl_buf_.consume(frames.consumed());
  for (auto& r : reports) {
    if (r.type == kSpawned) {
      std::lock_guard lk(core_.m_);
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

}  // namespace mpx::detail
