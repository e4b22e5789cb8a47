// Named task queues, client side: collecting results, serve_tasks() and its workers.
#include "manager/tasks.hpp"

#include "common/log.hpp"
#include "process/forkserver.hpp"
#include "process/worker_set.hpp"

#include <mpx/context.hpp>
#include <mpx/detail/transfer.hpp>
#include <mpx/managers.hpp>
#include <mpx/process.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
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
    try {
      // What this worker runs, so that the server can take tasks from Python clients.
      auto tasks = named_tasks();
      Request req(conn, proto::Op::task_catalog, oid);
      req.w().u32(static_cast<std::uint32_t>(tasks.size()));
      for (const auto& [name, task] : tasks) {
        req.w().str(name);
        req.w().u64(task.tag);
        req.w().str(task.args_tag);
        req.w().str(task.result_tag);
      }
      req.call();
    } catch (const ProtocolError&) {
      // A server from before task_catalog: C++ clients are served all the same.
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

// A worker as the target of a forkserver or spawn child. It has not run the code that registered
// the tasks in its starter, so it registers them from the starter's list first: those with a
// portable identity from their encoding; those it lacks and cannot rebuild (capturing lambdas)
// are named in a warning, and tasks of that name then fail with ValueError.
void task_worker_child(std::string address, std::string authkey, std::string queue, std::string token,
                       std::vector<std::string> names, std::vector<std::string> portables) {
  for (std::size_t i = 0; i < names.size() && i < portables.size(); ++i) {
    if (find_named_task(names[i])) continue;
    if (portables[i].empty())
      logger().warn(
          "serve_tasks '{}': task '{}' is registered with a capturing lambda, which a worker that is not a "
          "fork cannot rebuild; register a function, a captureless lambda or a function object instead",
          queue, names[i]);
    else
      register_portable_task(names[i], std::as_bytes(std::span(portables[i])));
  }
  int status = run_worker(Address::parse(address), authkey, queue, std::as_bytes(std::span(token)));
  if (status != 0) {
    flush_std_streams();
    ::_exit(status);
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

// While it lives, SIGTERM and SIGINT make the pipe readable instead of ending the process; the
// handlers, the mask and the pipe are put back however serve_tasks ends. One per process.
class StopSignals {
 public:
  StopSignals() {
    if (::pipe2(pipe_, O_CLOEXEC | O_NONBLOCK) != 0) throw Error("mpx: serve_tasks: pipe failed");
    int expected = -1;
    if (!g_signal_fd.compare_exchange_strong(expected, pipe_[1])) {
      ::close(pipe_[0]);
      ::close(pipe_[1]);
      throw StateError("mpx: serve_tasks is already running in this process");
    }
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGTERM, &sa, &old_term_);
    ::sigaction(SIGINT, &sa, &old_int_);
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGTERM);
    sigaddset(&stop_set, SIGINT);
    ::pthread_sigmask(SIG_UNBLOCK, &stop_set, &old_mask_);
  }
  ~StopSignals() {
    g_signal_fd = -1;
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
    ::close(pipe_[0]);
    ::close(pipe_[1]);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;
  int fd() const { return pipe_[0]; }

 private:
  int pipe_[2] = {-1, -1};
  struct sigaction old_term_ {
  }, old_int_{};
  sigset_t old_mask_{};
};

// serve_tasks' supervisor: keeps `processes` workers on the queue, replaces the ones that end
// (a crash loop after a pause), and tells the server of each exit so it fails the task that
// worker was running.
class TaskSupervisor {
 public:
  // SIGTERM ends a worker at once unless its task handles the signal: then it gets this long.
  static constexpr auto kStopGrace = std::chrono::seconds(5);

  TaskSupervisor(const Address& address, const std::string& authkey, const std::string& queue,
                 std::span<const std::byte> token, ClientConn& conn, std::uint64_t oid, unsigned processes,
                 StartMethod method)
      : address_(address),
        authkey_(authkey),
        queue_(queue),
        token_(token),
        conn_(conn),
        oid_(oid),
        method_(method),
        workers_(processes) {
    if (method_ == StartMethod::fork) return;
    for (const auto& [name, task] : named_tasks()) {
      Bytes portable = portable_task(task);
      task_names_.push_back(name);
      task_portables_.emplace_back(reinterpret_cast<const char*>(portable.data()), portable.size());
    }
  }

  // Returns on a stop signal (readable `stop_fd`) or when the manager goes away; the workers
  // are still running then (stop() ends them; the destructor kills them).
  void run(int stop_fd) {
    for (;;) {
      start_due_workers();
      if (conn_.broken()) {  // a failed exit report found the server gone
        log_stop("the manager went away");
        return;
      }
      switch (wait(stop_fd)) {
        case Wake::stop_signal:
          log_stop("stop signal");
          return;
        case Wake::manager_gone:
          log_stop("the manager went away");
          return;
        case Wake::timeout:
          break;
      }
      if (!handle_exits()) {
        log_stop("the manager went away");
        return;
      }
    }
  }

  void stop() { workers_.stop(kStopGrace); }

 private:
  enum class Wake { timeout, stop_signal, manager_gone };

  void log_stop(const char* why) const {
    logger().info("serve_tasks '{}': {}, stopping the workers", queue_, why);
  }

  void start_due_workers() {
    for (std::size_t slot : workers_.due()) {
      ForkOptions o;
      o.name = "TaskWorker-" + queue_ + "-" + std::to_string(slot + 1);
      o.daemon = true;
      if (method_ == StartMethod::fork) {
        workers_.start(slot, o, [this]() -> int { return run_worker(address_, authkey_, queue_, token_); });
        continue;
      }
      ForwardedStart req;
      req.name = o.name;
      req.daemon = true;
      std::string token(reinterpret_cast<const char*>(token_.data()), token_.size());
      encode_target(req.target, req.maps, &task_worker_child,
                    std::tuple{address_.str(), authkey_, queue_, token, task_names_, task_portables_});
      workers_.adopt(slot, start_forwarded(method_, req));
    }
  }

  // Sleeps until a signal, the manager's end of file, a worker's exit or the next respawn.
  Wake wait(int stop_fd) {
    std::vector<pollfd> fds;
    fds.push_back({stop_fd, POLLIN, 0});
    fds.push_back({conn_.fileno(), POLLIN | POLLRDHUP, 0});  // nothing is outstanding: any event is EOF
    for (int fd : workers_.sentinels()) fds.push_back({fd, POLLIN, 0});
    if (::poll(fds.data(), fds.size(), workers_.ms_until_due()) < 0 && errno != EINTR)
      throw Error(std::string("mpx: serve_tasks: poll: ") + std::strerror(errno));
    if (fds[0].revents) return Wake::stop_signal;
    if (fds[1].revents) return Wake::manager_gone;
    return Wake::timeout;
  }

  // Reports the workers that ended; their slots are started again by the next round. False
  // when an exit shows the manager has gone.
  bool handle_exits() {
    for (const WorkerSet::Exit& e : workers_.reap()) {
      int code = e.exitcode.value_or(0);
      // A worker ends cleanly when it finds the server gone; this process is about to see that
      // too, and must not start workers for a server that has stopped.
      if (code == 0 && manager_closing()) return false;
      logger().warn("serve_tasks '{}': worker {} ended (exit code {}); replacing it", queue_, e.pid, code);
      report_exit(e.pid, code);
    }
    return true;
  }

  // True if the manager's connection reaches end of file within a short while.
  bool manager_closing() const {
    pollfd eof{conn_.fileno(), POLLIN | POLLRDHUP, 0};
    return ::poll(&eof, 1, 200) > 0;
  }

  void report_exit(pid_t pid, int code) {
    try {
      Request req(conn_, proto::Op::task_worker_exit, oid_);
      req.w().i32(static_cast<std::int32_t>(pid));
      req.w().i32(code);
      req.call();
    } catch (const Error&) {  // the server may be gone; the loop notices that next
    }
  }

  const Address& address_;
  const std::string& authkey_;
  const std::string& queue_;
  std::span<const std::byte> token_;
  ClientConn& conn_;
  const std::uint64_t oid_;
  const StartMethod method_;
  std::vector<std::string> task_names_, task_portables_;  // the registrations, for forkserver and spawn
  WorkerSet workers_;  // default back-off: a worker that dies within 1 s waits 500 ms
};

}  // namespace
}  // namespace detail

void serve_tasks(const Address& address, std::string authkey, std::string_view queue_name,
                 unsigned processes) {
  serve_tasks(address, std::move(authkey), queue_name, processes, get_context(get_start_method()));
}

void serve_tasks(const Address& address, std::string authkey, std::string_view queue_name, unsigned processes,
                 Context context) {
  if (processes == 0) processes = cpu_count();
  const std::string queue(queue_name);
  auto m = Manager::connect(address, authkey);
  auto tq = m.task_queue(queue);
  std::array<std::byte, proto::kSessionTokenSize> token{};
  {
    auto mine = tq.core().session()->current().token();
    std::copy(mine.begin(), mine.end(), token.begin());
  }
  detail::StopSignals signals;
  // Its destructor kills and reaps the workers if run() throws.
  detail::TaskSupervisor supervisor(address, authkey, queue, token, tq.core().conn(), tq.core().oid(),
                                    processes, context.start_method());
  supervisor.run(signals.fd());
  supervisor.stop();
}

}  // namespace mpx
