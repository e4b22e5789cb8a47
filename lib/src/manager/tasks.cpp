// Named task queues, client side: collecting results, serve_tasks() and its workers.
#include "manager/tasks.hpp"

#include "common/log.hpp"

#include <mpx/managers.hpp>
#include <mpx/process.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

namespace mpx {
namespace detail {

// ---------------------------------------------------------------------------------------
// TaskCollector

TaskCollector::TaskCollector(std::unique_ptr<ClientConn> conn) : conn_(std::move(conn)) {
  if (conn_ && conn_->fileno() >= 0) wake_fd_ = ::fcntl(conn_->fileno(), F_DUPFD_CLOEXEC, 0);
}

TaskCollector::~TaskCollector() {
  if (wake_fd_ >= 0) ::close(wake_fd_);
  // In a forked child the handle names a thread of the parent; it must not be joined or
  // destroyed as a joinable thread, so it is left behind.
  if (abandoned_ && thread_.joinable()) new std::thread(std::move(thread_));
  if (thread_.joinable()) thread_.detach();
}

void TaskCollector::start() {
  thread_ = std::thread([self = shared_from_this()] { self->run(); });
}

void TaskCollector::run() {
  try {
    for (;;) {
      Request req(*conn_, proto::Op::task_wait, 0);
      req.w().u64(4096);
      req.w().i64(proto::kForever);
      auto r = req.call();
      std::uint64_t n = r.count(9);
      for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t id = r.u64();
        if (r.u8() == 0) {
          finish(id, r.blob(), nullptr);
        } else {
          finish(id, {}, error_to_exception(proto::read_error(r)));
        }
      }
    }
  } catch (...) {
  }
  if (stopping_)
    fail_all(std::make_exception_ptr(
        StateError("mpx: the manager session ended before the task's result arrived")));
  else
    fail_all(std::make_exception_ptr(
        ConnectionClosed("mpx: lost the connection to the manager; the task's result cannot arrive")));
}

void TaskCollector::finish(std::uint64_t id, std::span<const std::byte> result, std::exception_ptr error) {
  Entry e;
  {
    std::lock_guard lock(m_);
    auto it = waiting_.find(id);
    if (it == waiting_.end()) {
      early_[id] = Early{Bytes(result.begin(), result.end()), error};
      return;
    }
    e = std::move(it->second);
    waiting_.erase(it);
  }
  if (error)
    e.state->set_exception(error);
  else
    e.complete(*e.state, result);
}

void TaskCollector::fail_all(std::exception_ptr error) {
  std::unordered_map<std::uint64_t, Entry> waiting;
  {
    std::lock_guard lock(m_);
    dead_ = error;
    waiting.swap(waiting_);
  }
  for (auto& [id, e] : waiting) e.state->set_exception(error);
}

void TaskCollector::track(std::uint64_t id, std::shared_ptr<ResultStateBase> state, TaskCompleter complete) {
  std::unique_lock lock(m_);
  if (auto it = early_.find(id); it != early_.end()) {
    Early early = std::move(it->second);
    early_.erase(it);
    lock.unlock();
    if (early.error)
      state->set_exception(early.error);
    else
      complete(*state, early.result);
    return;
  }
  if (dead_) {
    auto error = dead_;
    lock.unlock();
    state->set_exception(error);
    return;
  }
  waiting_[id] = Entry{std::move(state), complete};
}

void TaskCollector::stop() noexcept {
  if (abandoned_) return;
  stopping_ = true;
  if (wake_fd_ >= 0) ::shutdown(wake_fd_, SHUT_RDWR);
  if (!thread_.joinable()) return;
  if (thread_.get_id() == std::this_thread::get_id())
    thread_.detach();  // the last handle went away in a callback: the thread ends by itself
  else
    thread_.join();
}

void TaskCollector::abandon_after_fork() noexcept {
  abandoned_ = true;
  new (&m_) std::mutex;
  if (wake_fd_ >= 0) ::close(wake_fd_);  // the parent's socket: never shut it down from here
  wake_fd_ = -1;
  if (conn_) conn_->abandon_after_fork();
}

void Session::track_task(std::uint64_t id, std::shared_ptr<ResultStateBase> state, TaskCompleter complete) {
  std::shared_ptr<TaskCollector> collector;
  {
    std::lock_guard lock(m_);
    if (!tasks_) {
      auto c = std::make_shared<TaskCollector>(std::make_unique<ClientConn>(address_, authkey_, token_));
      c->start();
      tasks_ = std::move(c);
    }
    collector = tasks_;
  }
  collector->track(id, std::move(state), complete);
}

// ---------------------------------------------------------------------------------------
// Workers and their supervisor

namespace {

// A worker process: takes tasks one at a time until the server goes away. Its worker
// connection joins the supervisor's session (`token`): the server takes a report of a worker's
// exit only from that session. The tasks it runs that use a manager get a session of their own.
int run_worker(const Address& address, const std::string& authkey, const std::string& queue,
               std::span<const std::byte> token) {
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGINT, SIG_DFL);
  try {
    ClientConn conn(address, authkey, token);
    std::uint64_t oid;
    {
      Request req(conn, proto::Op::open, 0);
      req.w().u8(static_cast<std::uint8_t>(proto::Kind::task_queue));
      req.w().str(queue);
      req.w().str("");
      oid = req.call().u64();
    }
    {
      Request req(conn, proto::Op::task_serve, oid);
      req.w().i32(static_cast<std::int32_t>(::getpid()));
      req.call();
    }
    Bytes body, out;
    for (;;) {
      std::uint64_t tid;
      {
        Request req(conn, proto::Op::task_next, oid);
        req.w().i64(proto::kForever);
        auto r = req.call();
        tid = r.u64();
        r.str();
        auto b = r.blob();
        body.assign(b.begin(), b.end());
      }
      out.clear();
      run_task(body, out);
      // The result rides with the next task_next: one round trip per task.
      Request res(conn, proto::Op::task_result, oid);
      res.w().u64(tid);
      res.w().blob(out);
      res.call_async(nullptr);
    }
  } catch (const ConnectionError&) {
    return 0;  // the server stopped
  }
}

std::atomic<int> g_signal_fd{-1};

extern "C" void on_stop_signal(int) {
  int saved = errno;
  int fd = g_signal_fd.load();
  if (fd >= 0) {
    char c = 1;
    (void)!::write(fd, &c, 1);
  }
  errno = saved;
}

}  // namespace
}  // namespace detail

void serve_tasks(const Address& address, std::string authkey, std::string_view queue_name,
                 unsigned processes) {
  using namespace std::chrono;
  if (processes == 0) processes = cpu_count();
  const std::string queue(queue_name);
  auto m = Manager::connect(address, authkey);
  auto tq = m.task_queue(queue);
  const std::uint64_t oid = tq.core().oid();
  detail::ClientConn& conn = tq.core().conn();
  std::array<std::byte, proto::kSessionTokenSize> token{};
  {
    auto mine = tq.core().session()->current().token();
    std::copy(mine.begin(), mine.end(), token.begin());
  }

  // SIGTERM/SIGINT end the loop below; the handlers are this call's only.
  int sig_pipe[2];
  if (::pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) != 0) throw Error("mpx: serve_tasks: pipe failed");
  int expected = -1;
  if (!detail::g_signal_fd.compare_exchange_strong(expected, sig_pipe[1])) {
    ::close(sig_pipe[0]);
    ::close(sig_pipe[1]);
    throw StateError("mpx: serve_tasks is already running in this process");
  }
  struct sigaction sa {
  }, old_term{}, old_int{};
  sa.sa_handler = detail::on_stop_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, &old_term);
  ::sigaction(SIGINT, &sa, &old_int);
  sigset_t stop_set, old_mask;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGTERM);
  sigaddset(&stop_set, SIGINT);
  ::pthread_sigmask(SIG_UNBLOCK, &stop_set, &old_mask);
  // Puts the signal handling back however this call ends.
  struct Restore {
    int* pipe;
    struct sigaction *term, *intr;
    sigset_t* mask;
    ~Restore() {
      detail::g_signal_fd = -1;
      ::sigaction(SIGTERM, term, nullptr);
      ::sigaction(SIGINT, intr, nullptr);
      ::pthread_sigmask(SIG_SETMASK, mask, nullptr);
      ::close(pipe[0]);
      ::close(pipe[1]);
    }
  } restore{sig_pipe, &old_term, &old_int, &old_mask};

  struct Slot {
    std::shared_ptr<detail::ChildProcess> child;
    steady_clock::time_point started;
    steady_clock::time_point respawn_at;
  };
  std::vector<Slot> slots(processes);
  auto spawn = [&](std::size_t i) {
    detail::ForkOptions o;
    o.name = "TaskWorker-" + queue + "-" + std::to_string(i + 1);
    o.daemon = true;
    slots[i].child =
        detail::fork_child(o, [&]() -> int { return detail::run_worker(address, authkey, queue, token); });
    slots[i].started = steady_clock::now();
  };
  auto report_exit = [&](pid_t pid, int code) {
    try {
      detail::Request req(conn, proto::Op::task_worker_exit, oid);
      req.w().i32(static_cast<std::int32_t>(pid));
      req.w().i32(code);
      req.call();
    } catch (const Error&) {  // the server may be gone; the loop notices that next
    }
  };

  try {
    for (std::size_t i = 0; i < slots.size(); ++i) spawn(i);
    bool running = true;
    while (running) {
      if (conn.broken()) {  // a failed exit report found the server gone
        detail::logger().info("serve_tasks '{}': the manager went away, stopping the workers", queue);
        break;
      }
      std::vector<pollfd> fds;
      fds.push_back({sig_pipe[0], POLLIN, 0});
      fds.push_back({conn.fileno(), POLLIN | POLLRDHUP, 0});  // nothing is outstanding: any event is EOF
      std::vector<std::size_t> index;
      auto now = steady_clock::now();
      int wait_ms = -1;
      for (std::size_t i = 0; i < slots.size(); ++i) {
        if (slots[i].child) {
          fds.push_back({slots[i].child->sentinel(), POLLIN, 0});
          index.push_back(i);
        } else {
          auto ms = duration_cast<milliseconds>(slots[i].respawn_at - now).count();
          ms = std::max<long long>(ms, 0);
          wait_ms = wait_ms < 0 ? static_cast<int>(ms) : std::min(wait_ms, static_cast<int>(ms));
        }
      }
      int r = ::poll(fds.data(), fds.size(), wait_ms);
      if (r < 0 && errno != EINTR)
        throw Error(std::string("mpx: serve_tasks: poll: ") + std::strerror(errno));
      if (fds[0].revents) {
        detail::logger().info("serve_tasks '{}': stop signal, stopping the workers", queue);
        break;
      }
      if (fds[1].revents) {
        detail::logger().info("serve_tasks '{}': the manager went away, stopping the workers", queue);
        break;
      }
      for (std::size_t k = 0; k < index.size(); ++k) {
        auto& s = slots[index[k]];
        if (!fds[k + 2].revents || !s.child->wait(milliseconds(0))) continue;
        int code = s.child->exitcode().value_or(0);
        pid_t pid = s.child->pid();
        // A worker ends cleanly when it finds the server gone; this process is about to see
        // that too, and must not start workers for a server that has stopped.
        if (code == 0) {
          pollfd eof{conn.fileno(), POLLIN | POLLRDHUP, 0};
          if (::poll(&eof, 1, 200) > 0) {
            running = false;
            break;
          }
        }
        detail::logger().warn("serve_tasks '{}': worker {} ended (exit code {}); replacing it", queue, pid,
                              code);
        report_exit(pid, code);
        s.child.reset();
        // A worker that dies at once (a crash loop) is replaced after a pause, not in a spin.
        s.respawn_at = steady_clock::now() +
                       (steady_clock::now() - s.started < seconds(1) ? milliseconds(500) : milliseconds(0));
      }
      if (!running) {
        detail::logger().info("serve_tasks '{}': the manager went away, stopping the workers", queue);
        break;
      }
      now = steady_clock::now();
      for (std::size_t i = 0; i < slots.size() && running; ++i)
        if (!slots[i].child && now >= slots[i].respawn_at) spawn(i);
    }
  } catch (...) {
    for (auto& s : slots)
      if (s.child) s.child->signal(SIGKILL);
    throw;
  }
  for (auto& s : slots)
    if (s.child) s.child->signal(SIGTERM);
  for (auto& s : slots)
    if (s.child && !s.child->wait(seconds(5))) {
      s.child->signal(SIGKILL);
      s.child->wait();
    }
}

}  // namespace mpx
