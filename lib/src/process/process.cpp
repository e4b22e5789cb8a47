// process/ — starting, watching and reaping processes (<mpx/process.hpp>). May include: ipc,
// serialize, common.
#include <mpx/context.hpp>
#include <mpx/process.hpp>

#include <cxxabi.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio_ext.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <ios>
#include <iostream>
#include <thread>
#include <typeinfo>

#include "common/log.hpp"
#include "process/forkserver.hpp"
#include "process/shared_mappings.hpp"

namespace mpx {
namespace detail {
namespace {

// A daemon's parent gets this long to let SIGTERM end it before ~Process sends SIGKILL.
constexpr std::chrono::seconds kDaemonGrace{1};

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

std::string demangle(const char* mangled) {
  int status = 0;
  char* out = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string result = (status == 0 && out) ? out : mangled;
  std::free(out);
  return result;
}

}  // namespace

bool have_pidfd() {
  static const bool have = [] {
    if (const char* off = std::getenv("MPX_NO_PIDFD"); off && *off && std::strcmp(off, "0") != 0)
      return false;
    int fd = static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0));
    if (fd < 0) return false;
    ::close(fd);
    return true;
  }();
  return have;
}

namespace {

// What this process knows about itself and the Processes it started. A forked child replaces it
// (another thread of the parent may have held the mutex at fork time); the old one is kept
// reachable through `abandoned` so leak checkers do not flag it.
// A child started with mpx::Process, as active_children() reports it.
struct ChildEntry {
  std::weak_ptr<ChildProcess> child;
  std::string name;
  bool daemon = false;
};

struct Globals {
  std::mutex m;
  ProcessInfo current{"MainProcess", 0, false};
  std::optional<ProcessInfo> parent;
  std::string identity;  // "" in the main process, "1" in Process-1, "1:2" in its second child
  unsigned counter = 0;
  std::vector<ChildEntry> children;
  Globals* abandoned = nullptr;
};

std::atomic<Globals*> g_globals{nullptr};

// set_start_method is refused once this is set, as Python refuses it once the context is used.
std::atomic<bool> g_child_started{false};
std::atomic<StartMethod> g_start_method{StartMethod::fork};

// Made on first use; a child replaces it before its target runs (a spawned child, before any
// other use, so nothing here may assume a parent made it first).
Globals& globals() {
  Globals* g = g_globals.load(std::memory_order_acquire);
  if (g) return *g;
  auto* fresh = new Globals;
  if (g_globals.compare_exchange_strong(g, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *g;
}

struct ForkRequest {
  const ForkOptions* options;
  ChildFn fn;
  void* ctx;
  sigset_t mask;
  pid_t parent;
  int pipe_read;
  Globals* child_globals;
  pid_t pid = -1;
  int err = 0;
  bool done = false;
  // Set for a child that is not a fork (spawn): how to start it instead.
  LaunchFn launch = nullptr;
  void* launch_ctx = nullptr;
  int sentinel_write = -1;
};

// The thread that forks die-with-parent children for threads other than the main one: it lives
// until the process ends, so PDEATHSIG (tied to the forking thread) means "the process died".
// Made on first use, so a child that never needs one pays nothing for it.
struct Forker {
  std::mutex m;
  std::condition_variable cv;
  std::deque<ForkRequest*> queue;
  bool running = false;
  Forker* abandoned = nullptr;
};

std::atomic<Forker*> g_forker{nullptr};
// A forked child starts without a Forker (the parent's thread is not there) but keeps the
// parent's copy reachable, so leak checkers do not flag it.
Forker* g_abandoned_forker = nullptr;

Forker& forker() {
  Forker* f = g_forker.load(std::memory_order_acquire);
  if (f) return *f;
  auto* fresh = new Forker;
  if (g_forker.compare_exchange_strong(f, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *f;
}

// What the child's Globals will be, made in the parent: allocating and copying strings in the
// child would fault in heap pages (copy-on-write) and code the child otherwise never touches.
Globals* prepare_child_globals(const ForkOptions& options) {
  Globals& old = globals();
  auto* g = new Globals;
  g->abandoned = &old;
  g->parent = ProcessInfo{old.current.name, ::getpid(), old.current.daemon};
  g->current = ProcessInfo{options.name.empty() ? old.current.name : options.name, 0, options.daemon};
  g->identity = options.identity;
  return g;
}

// In the child, before any user code: start from a clean slate for everything mpx keeps.
void after_fork_in_child(Globals* prepared) {
  reset_logger_after_fork();
  g_globals.store(prepared, std::memory_order_release);
  if (Forker* old = g_forker.exchange(nullptr, std::memory_order_acq_rel)) {
    old->abandoned = g_abandoned_forker;
    g_abandoned_forker = old;
  }
  forkserver_forget_after_fork();
  shared_mappings_after_fork();
  g_child_started.store(false, std::memory_order_relaxed);
}

void report_exception(const std::string& header) noexcept {
  try {
    std::string type = "unknown exception";
    std::string what;
    try {
      throw;
    } catch (const std::exception& e) {
      type = demangle(typeid(e).name());
      what = e.what();
    } catch (...) {
      if (const std::type_info* t = abi::__cxa_current_exception_type()) type = demangle(t->name());
    }
    std::string text = header + "\n" + type + (what.empty() ? "" : ": " + what) + "\n";
    std::fflush(stdout);
    std::fputs(text.c_str(), stderr);
    std::fflush(stderr);
  } catch (...) {
  }
}

// Anything written but still buffered: iostreams keep their own buffers only when not synced
// with stdio, and stdout is the only standard FILE that buffers. Checking first keeps the child
// from touching stdio's locks and code when it printed nothing.
template <class Stream>
bool has_pending_output(Stream& stream) {
  struct Peek : std::remove_reference_t<decltype(*stream.rdbuf())> {
    static bool pending(std::basic_streambuf<typename Stream::char_type, typename Stream::traits_type>* b) {
      auto pbase = &Peek::pbase;  // protected members, reached through a derived class
      auto pptr = &Peek::pptr;
      return b && (b->*pptr)() != (b->*pbase)();
    }
  };
  return Peek::pending(stream.rdbuf());
}

void flush_child_output() noexcept {
  try {
    if (has_pending_output(std::cout)) std::cout.flush();
    if (has_pending_output(std::cerr)) std::cerr.flush();
    if (has_pending_output(std::clog)) std::clog.flush();
    if (has_pending_output(std::wcout)) std::wcout.flush();
    if (has_pending_output(std::wcerr)) std::wcerr.flush();
    if (has_pending_output(std::wclog)) std::wclog.flush();
  } catch (...) {
  }
  if (::__fpending(stdout) != 0) std::fflush(stdout);
  if (::__fpending(stderr) != 0) std::fflush(stderr);
}

// Lazy binding is paid per process: a function the parent never called costs each child a
// symbol lookup that faults in the hash tables of every loaded library (tens of microseconds).
// So the parent calls, once, what the child's start and exit paths call, and what mpx's own
// waits (queues, locks) call when a child blocks: the clock. The logger is made here too, so a
// child replacing it does not have to make the first one as well.
void bind_what_children_call() {
  static const bool bound = [] {
    (void)::__fpending(stdout);
    (void)std::chrono::steady_clock::now();
    (void)logger();
    return true;
  }();
  (void)bound;
}

// The child calls only what the parent has already called through the same PLT slots (syscall,
// pthread_sigmask, __fpending; see bind_what_children_call).
[[noreturn]] void child_main(const ForkRequest& req) {
  const ForkOptions& options = *req.options;
  if (options.die_with_parent) {
    ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0L, 0L, 0L);
    // The parent may have died between fork and prctl: then nobody will send the signal.
    if (::syscall(SYS_getppid) != req.parent) ::raise(SIGKILL);
  }
  ::pthread_sigmask(SIG_SETMASK, &req.mask, nullptr);
  if (req.pipe_read >= 0) ::close(req.pipe_read);
  int status = 1;
  try {
    after_fork_in_child(req.child_globals);
    status = req.fn(req.ctx);
  } catch (...) {
    report_exception("mpx child " + options.name + ":");
    status = 1;
  }
  flush_child_output();
  ::syscall(SYS_exit_group, status);  // _exit(2), without its first-call binding
  __builtin_unreachable();
}

void do_fork(ForkRequest& req) {
  if (req.launch) {
    req.pid = req.launch(req.launch_ctx, req.sentinel_write);
    req.err = req.pid < 0 ? errno : 0;
    return;
  }
  pid_t pid = ::fork();
  if (pid == 0) child_main(req);
  req.pid = pid;
  req.err = pid < 0 ? errno : 0;
}

void forker_main(Forker* f) {
  // Signals for the process must land on the caller's threads, not here; the child restores the
  // caller's mask anyway.
  sigset_t all;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, nullptr);
  std::unique_lock lock(f->m);
  for (;;) {
    f->cv.wait(lock, [&] { return !f->queue.empty(); });
    ForkRequest* req = f->queue.front();
    f->queue.pop_front();
    lock.unlock();
    do_fork(*req);
    lock.lock();
    req->done = true;
    f->cv.notify_all();
  }
}

void fork_on_forker(ForkRequest& req) {
  Forker& f = forker();
  std::unique_lock lock(f.m);
  if (!f.running) {
    std::thread(forker_main, &f).detach();  // throws std::system_error if no thread can be had
    f.running = true;
  }
  f.queue.push_back(&req);
  f.cv.notify_all();
  f.cv.wait(lock, [&] { return req.done; });
}

}  // namespace

int exitcode_from_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return status;
}

struct ChildProcess::Private {};

void flush_std_streams() noexcept {
  std::fflush(nullptr);
  try {
    std::cout.flush();
    std::cerr.flush();
    std::clog.flush();
    std::wcout.flush();
    std::wcerr.flush();
    std::wclog.flush();
  } catch (...) {
  }
}

namespace {

std::shared_ptr<ChildProcess> start_direct_child(ForkRequest& req, int pipe_fds[2]);

std::shared_ptr<ChildProcess> fork_child_impl(const ForkOptions& options, ChildFn fn, void* ctx) {
  int pipe_fds[2] = {-1, -1};
  if (!have_pidfd() && ::pipe2(pipe_fds, O_CLOEXEC) != 0)
    throw Error("cannot start a child: pipe: " + errno_text(errno));
  ForkRequest req{&options, fn, ctx, {}, ::getpid(), pipe_fds[0], nullptr};
  std::unique_ptr<Globals> child_globals(prepare_child_globals(options));
  req.child_globals = child_globals.get();
  ::pthread_sigmask(SIG_SETMASK, nullptr, &req.mask);
  flush_std_streams();
  bind_what_children_call();
  return start_direct_child(req, pipe_fds);
}

}  // namespace

std::shared_ptr<ChildProcess> launch_direct_child(bool die_with_parent, LaunchFn launch, void* ctx) {
  int pipe_fds[2] = {-1, -1};
  if (!have_pidfd() && ::pipe2(pipe_fds, O_CLOEXEC) != 0)
    throw Error("cannot start a child: pipe: " + errno_text(errno));
  ForkOptions options{"", false, die_with_parent, {}};
  ForkRequest req{&options, nullptr, nullptr, {}, ::getpid(), pipe_fds[0], nullptr};
  req.launch = launch;
  req.launch_ctx = ctx;
  req.sentinel_write = pipe_fds[1];
  g_child_started.store(true, std::memory_order_relaxed);
  return start_direct_child(req, pipe_fds);
}

namespace {

// Forks (or launches) req's child on the right thread and makes the parent's handle on it.
std::shared_ptr<ChildProcess> start_direct_child(ForkRequest& req, int pipe_fds[2]) {
  // The main thread lives as long as the process; any other thread may exit first, and would
  // take PDEATHSIG children with it, so those forks go through the long-lived internal thread.
  if (req.options->die_with_parent && ::gettid() != ::getpid())
    fork_on_forker(req);
  else
    do_fork(req);
  if (pipe_fds[1] >= 0) ::close(pipe_fds[1]);
  if (req.pid < 0) {
    if (pipe_fds[0] >= 0) ::close(pipe_fds[0]);
    throw Error(std::string("cannot start a child: ") + (req.launch ? "spawn: " : "fork: ") +
                errno_text(req.err));
  }
  int fd = pipe_fds[0];
  bool is_pidfd = false;
  if (have_pidfd()) {
    fd = static_cast<int>(::syscall(SYS_pidfd_open, req.pid, 0));
    is_pidfd = fd >= 0;
  }
  return std::make_shared<ChildProcess>(ChildProcess::Private{}, req.pid, fd, is_pidfd);
}

}  // namespace

std::shared_ptr<ChildProcess> fork_child_raw(const ForkOptions& options, ChildFn fn, void* ctx) {
  g_child_started.store(true, std::memory_order_relaxed);
  return fork_child_impl(options, fn, ctx);
}

// Not a child the user started: choosing forkserver starts it, and must not then count as the
// first child that fixes the choice.
std::shared_ptr<ChildProcess> fork_server_process(ChildFn fn, void* ctx) {
  return fork_child_impl({"ForkServer", true, true, {}}, fn, ctx);
}

void inherit_start_method(StartMethod method) noexcept {
  g_start_method.store(method, std::memory_order_relaxed);
  if (method == StartMethod::spawn) share_mappings_for_spawn();
}

std::shared_ptr<ChildProcess> make_forwarded_child(pid_t pid, int status_fd, int signal_fd) {
  return std::make_shared<ChildProcess>(ChildProcess::Private{}, pid, status_fd, signal_fd,
                                        ChildProcess::Forwarded{});
}

namespace {
std::vector<int>* g_passed_fds = nullptr;  // set once, in a child, before its target runs
}  // namespace

int passed_fd(std::size_t i) noexcept {
  return g_passed_fds && i < g_passed_fds->size() ? (*g_passed_fds)[i] : -1;
}

void set_passed_fds(std::vector<int> fds) { g_passed_fds = new std::vector<int>(std::move(fds)); }

std::shared_ptr<ChildProcess> start_forwarded(StartMethod method, ForwardedStart& req) {
  // Both methods: a spawn child given more would die reading its request.
  if (req.fds.size() > kMaxPassedFds)
    throw ValueError("mpx: a child can be passed at most " + std::to_string(kMaxPassedFds) + " descriptors");
  req.parent = current_process();
  ::pthread_sigmask(SIG_SETMASK, nullptr, &req.mask);
  flush_std_streams();
  if (method == StartMethod::spawn) return spawn_start_child(req, get_start_method());
  std::erase_if(req.maps, [](auto& m) { return m.fd < 0; });  // in the server's snapshot
  g_child_started.store(true, std::memory_order_relaxed);
  return forkserver_start_child(req);
}

void forwarded_child_main(const ForwardedStart& req, pid_t server) {
  if (req.daemon) {
    // Daemons die with the server, and the server dies with the starter: the same chain of
    // PDEATHSIG that a forked daemon has, one link longer.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0L, 0L, 0L);
    if (::getppid() != server) ::raise(SIGKILL);
  }
  ::pthread_sigmask(SIG_SETMASK, &req.mask, nullptr);
  int status = 1;
  try {
    reset_logger_after_fork();
    auto* g = new Globals;
    g->abandoned = g_globals.load(std::memory_order_relaxed);
    g->parent = req.parent;
    g->current = ProcessInfo{req.name, 0, req.daemon};
    g->identity = req.identity;
    g_globals.store(g, std::memory_order_release);
    try {
      run_encoded_target(req.target);
      status = 0;
    } catch (...) {
      report_exception("Process " + req.name + ":");
    }
  } catch (...) {
    report_exception("mpx child " + req.name + ":");
  }
  flush_child_output();
  ::_exit(status);
}

using InitFn = void (*)(int, char**, char**);
extern "C" {
// The linker's bounds of the static initializers of the module this file is linked into.
extern InitFn __init_array_start[] __attribute__((weak, visibility("hidden")));
extern InitFn __init_array_end[] __attribute__((weak, visibility("hidden")));
}

namespace {

// Runs the initializers that come after `self` in this module's table, as the loader would have:
// the program's own globals (and the library's) are then built as at any start of the program,
// the way Python's spawn child imports the main module before it runs its target.
void run_later_initializers(InitFn self, int argc, char** argv, char** envp) {
  if (!__init_array_start || !__init_array_end) return;
  InitFn* last = __init_array_end;
  InitFn* at = std::find(__init_array_start, last, self);
  if (at == last) return;
  for (++at; at != last; ++at)
    if (*at && *at != reinterpret_cast<InitFn>(-1)) (*at)(argc, argv, envp);
}

// A spawned child is recognised here, ahead of the program's own static initializers: it runs
// them, then its target, and exits without returning to the loader or reaching main
// (spawn.cpp). This TU is linked into every program that starts a Process, so the initializer is
// always there when spawn can be used.
__attribute__((constructor(101))) void enter_spawned_child(int argc, char** argv, char** envp) {
  const char* marker = std::getenv(kSpawnMarker);
  if (!marker) return;
  const std::string value = marker;
  ::unsetenv(kSpawnMarker);  // an initializer that starts a Process starts an ordinary child
  // Before any initializer can print: the streams are set up by initializers of their own.
  static std::ios_base::Init streams;
  run_later_initializers(&enter_spawned_child, argc, argv, envp);
  spawned_child_main(value.c_str());
}

}  // namespace

ChildProcess::ChildProcess(const Private&, pid_t pid, int fd, bool pidfd)
    : pid_(pid), fd_(fd), pidfd_(pidfd), owner_(::getpid()) {}

ChildProcess::ChildProcess(const Private&, pid_t pid, int status_fd, int signal_fd, Forwarded)
    : pid_(pid), fd_(status_fd), pidfd_(false), forwarded_(true), signal_fd_(signal_fd), owner_(::getpid()) {}

ChildProcess::~ChildProcess() {
  if (owned_here() && !poll()) {
    signal(SIGKILL);
    if (forwarded_) {
      wait();
    } else {
      int status = 0;
      while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
      }
    }
  }
  if (fd_ >= 0) ::close(fd_);
  if (signal_fd_ >= 0) ::close(signal_fd_);
}

// The server writes the exit code once, then closes: a read either has it, finds nothing yet, or
// finds EOF because the server died before it could reap the child.
bool ChildProcess::read_forwarded_status() {
  std::int32_t code = 0;
  ssize_t n;
  do n = ::read(fd_, &code, sizeof code);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  ended_ = true;
  if (n == static_cast<ssize_t>(sizeof code))
    exitcode_ = code;
  else
    logger().warn("child {}: the fork server ended before reporting its exit: exit code unknown", pid_);
  return true;
}

bool ChildProcess::owned_here() const { return ::getpid() == owner_; }

bool ChildProcess::poll() {
  std::lock_guard lock(m_);
  if (ended_) return true;
  if (!owned_here()) return false;
  if (forwarded_) return read_forwarded_status();
  int status = 0;
  pid_t r;
  do r = ::waitpid(pid_, &status, WNOHANG);
  while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  ended_ = true;
  if (r == pid_) {
    exitcode_ = exitcode_from_status(status);
  } else {
    logger().warn("child {} was reaped elsewhere (SIGCHLD ignored or waitpid(-1)?): exit code unknown", pid_);
  }
  return true;
}

bool ChildProcess::wait(Timeout timeout) {
  Deadline deadline(timeout);
  for (;;) {
    if (poll()) return true;
    if (deadline.expired()) return false;
    int ms = deadline.poll_ms();
    // A pipe sentinel may be held open by a grandchild, and without any fd there is nothing to
    // poll: check the status at a short interval then.
    if (!pidfd_ && !forwarded_ && (ms < 0 || ms > 20)) ms = 20;
    if (fd_ >= 0) {
      pollfd p{fd_, POLLIN, 0};
      ::poll(&p, 1, ms);
    } else {
      ::poll(nullptr, 0, ms);
    }
  }
}

std::optional<int> ChildProcess::exitcode() const {
  std::lock_guard lock(m_);
  return exitcode_;
}

bool ChildProcess::ended() const {
  std::lock_guard lock(m_);
  return ended_;
}

bool ChildProcess::signal(int sig) {
  std::lock_guard lock(m_);
  if (ended_ || !owned_here()) return false;
  int pidfd = forwarded_ ? signal_fd_ : (pidfd_ ? fd_ : -1);
  int r = pidfd >= 0 ? static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0))
                     : ::kill(pid_, sig);
  return r == 0;
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------

struct Process::State {
  std::string name;
  bool daemon = false;
  std::string identity;
  pid_t created_in = 0;
  std::unique_ptr<detail::Target> target;
  std::optional<Context> context;
  std::shared_ptr<detail::ChildProcess> child;
  bool closed = false;
};

Process::Process(Options options) : Process(std::move(options), nullptr) {}

void Process::run() {
  if (state_ && state_->target) state_->target->run();
}

void Process::close() {
  State& s = checked_owner("close");
  if (s.child && !s.child->poll())
    throw ValueError("Process::close: " + s.name + " is still running; join() or terminate() it first");
  s.child.reset();
  s.target.reset();
  s.closed = true;
}

Process::Process(Options options, std::unique_ptr<detail::Target> target)
    : state_(std::make_unique<State>()) {
  auto& g = detail::globals();
  unsigned n;
  std::string prefix;
  {
    std::lock_guard lock(g.m);
    n = ++g.counter;
    prefix = g.identity;
  }
  state_->identity = prefix.empty() ? std::to_string(n) : prefix + ":" + std::to_string(n);
  state_->name = options.name.empty() ? "Process-" + state_->identity : std::move(options.name);
  state_->daemon = options.daemon;
  state_->context = options.context;
  state_->created_in = ::getpid();
  state_->target = std::move(target);
}

Process::Process(Process&&) noexcept = default;

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    finish();
    state_ = std::move(other.state_);
  }
  return *this;
}

Process::~Process() { finish(); }

void Process::finish() noexcept {
  if (!state_ || !state_->child) return;
  auto& child = *state_->child;
  if (!child.owned_here()) return;
  try {
    if (state_->daemon) {
      if (!child.poll()) {
        child.signal(SIGTERM);
        if (!child.wait(detail::kDaemonGrace)) {
          child.signal(SIGKILL);
          child.wait();
        }
      }
    } else {
      child.wait();
    }
  } catch (...) {
  }
}

Process::State& Process::checked_owner(const char* what) const {
  if (!state_) throw StateError(std::string("Process::") + what + ": moved-from Process");
  if (state_->closed) throw ValueError(std::string("Process::") + what + ": " + state_->name + " is closed");
  pid_t owner = state_->child ? (state_->child->owned_here() ? ::getpid() : -1) : state_->created_in;
  if (owner != ::getpid())
    throw StateError(std::string("Process::") + what + ": only the process that started " + state_->name +
                     " may do this");
  return *state_;
}

void Process::start() {
  State& s = checked_owner("start");
  if (s.child) throw StateError("Process::start: " + s.name + " was already started");
  StartMethod method = s.context ? s.context->start_method() : get_start_method();
  if (method == StartMethod::fork) {
    detail::ForkOptions options{s.name, s.daemon, s.daemon, s.identity};
    auto body = [this, &s]() -> int {
      try {
        run();
        return 0;
      } catch (...) {
        detail::report_exception("Process " + s.name + ":");
        return 1;
      }
    };
    s.child = detail::fork_child(options, body);
  } else {
    std::string prefix = "Process::start: start method " + std::string(to_string(method)) + ": ";
    if (typeid(*this) != typeid(Process))
      throw ValueError(
          prefix + "cannot start a Process subclass (" + detail::demangle(typeid(*this).name()) +
          "): its run() exists only in this process; give a Process a transferable target instead");
    detail::ForwardedStart req;
    if (s.target && !s.target->encode(req.target, req.maps))
      throw ValueError(prefix + "the target " + detail::demangle(s.target->function_type().name()) +
                       " or one of its arguments is not transferable; pass a function pointer, a "
                       "captureless lambda or a serializable function object, with serializable arguments "
                       "(a capturing lambda cannot cross to another process; of the process-shared handles, "
                       "only Condition and Barrier cannot yet: start such children with fork)");
    if (method == StartMethod::spawn) {
      // A fresh image shares only what it is given by descriptor.
      if (std::any_of(req.maps.begin(), req.maps.end(), [](auto& m) { return m.fd < 0; }))
        throw ValueError(prefix +
                         "an argument's shared object (a lock, event, Value, Array or queue) was made before "
                         "this program chose spawn, so a spawn child cannot be given it: choose the start "
                         "method (set_start_method or get_context(StartMethod::spawn)) before making the "
                         "objects you pass to spawn children");
      if (req.maps.size() > detail::kMaxMaps)
        throw ValueError(prefix + "the arguments hold more than " + std::to_string(detail::kMaxMaps) +
                         " shared objects");
    }
    req.name = s.name;
    req.daemon = s.daemon;
    req.identity = s.identity;
    s.child = detail::start_forwarded(method, req);
  }
  s.target.reset();
  auto& g = detail::globals();
  std::lock_guard lock(g.m);
  std::erase_if(g.children, [](const detail::ChildEntry& e) {
    auto c = e.child.lock();
    return !c || c->ended();
  });
  g.children.push_back({s.child, s.name, s.daemon});
}

bool Process::join(Timeout timeout) {
  State& s = checked_owner("join");
  if (!s.child) throw StateError("Process::join: " + s.name + " was not started");
  return s.child->wait(timeout);
}

bool Process::is_alive() const {
  State& s = checked_owner("is_alive");
  return s.child && !s.child->poll();
}

std::optional<int> Process::exitcode() const {
  State& s = checked_owner("exitcode");
  if (!s.child) return std::nullopt;
  s.child->poll();
  return s.child->exitcode();
}

pid_t Process::pid() const {
  if (state_ && state_->closed) throw ValueError("Process::pid: " + state_->name + " is closed");
  return state_ && state_->child ? state_->child->pid() : 0;
}

const std::string& Process::name() const {
  if (!state_) throw StateError("Process::name: moved-from Process");
  return state_->name;
}

bool Process::daemon() const {
  if (!state_) throw StateError("Process::daemon: moved-from Process");
  return state_->daemon;
}

void Process::terminate() {
  State& s = checked_owner("terminate");
  if (!s.child) throw StateError("Process::terminate: " + s.name + " was not started");
  s.child->signal(SIGTERM);
}

void Process::kill() {
  State& s = checked_owner("kill");
  if (!s.child) throw StateError("Process::kill: " + s.name + " was not started");
  s.child->signal(SIGKILL);
}

int Process::sentinel() const {
  if (state_ && state_->closed) throw ValueError("Process::sentinel: " + state_->name + " is closed");
  if (!state_ || !state_->child) throw StateError("Process::sentinel: the process was not started");
  return state_->child->sentinel();
}

std::string_view to_string(StartMethod method) noexcept {
  switch (method) {
    case StartMethod::fork:
      return "fork";
    case StartMethod::forkserver:
      return "forkserver";
    case StartMethod::spawn:
      return "spawn";
  }
  return "unknown";
}

void set_start_method(StartMethod method) {
  if (detail::g_child_started.load(std::memory_order_relaxed))
    throw StateError("set_start_method: this process has already started a child with start method " +
                     std::string(to_string(get_start_method())));
  // Stored first, so the server's children inherit it as their own default, as Python's do.
  StartMethod before = detail::g_start_method.exchange(method, std::memory_order_relaxed);
  try {
    if (method == StartMethod::forkserver) detail::forkserver_ensure_started();
    if (method == StartMethod::spawn) detail::share_mappings_for_spawn();
  } catch (...) {
    detail::g_start_method.store(before, std::memory_order_relaxed);
    throw;
  }
}

StartMethod get_start_method() { return detail::g_start_method.load(std::memory_order_relaxed); }

// A program that takes up spawn makes its shared objects by fd from then on, so they can be
// given to spawn children (see <mpx/context.hpp>).
Context::Context(StartMethod method) noexcept : method_(method) {
  if (method == StartMethod::spawn) detail::share_mappings_for_spawn();
}

Context get_context(StartMethod method) { return Context(method); }

ProcessInfo current_process() {
  auto& g = detail::globals();
  ProcessInfo info = g.current;  // immutable once this process runs user code
  info.pid = ::getpid();
  return info;
}

std::optional<ProcessInfo> parent_process() { return detail::globals().parent; }

ActiveChildren active_children() {
  auto& g = detail::globals();
  std::vector<detail::ChildEntry> children;
  {
    std::lock_guard lock(g.m);
    for (auto& e : g.children)
      if (auto c = e.child.lock()) children.push_back(e);
  }
  ActiveChildren live;
  for (auto& e : children) {
    auto c = e.child.lock();
    if (c && !c->poll()) live.push_back(ChildInfo{{e.name, c->pid(), e.daemon}});
  }
  std::lock_guard lock(g.m);
  std::erase_if(g.children, [](const detail::ChildEntry& e) {
    auto c = e.child.lock();
    return !c || c->ended();
  });
  return live;
}

unsigned cpu_count() {
  for (int n = 1024; n <= (1 << 20); n *= 2) {
    cpu_set_t* set = CPU_ALLOC(n);
    if (!set) break;
    std::size_t size = CPU_ALLOC_SIZE(n);
    CPU_ZERO_S(size, set);
    if (::sched_getaffinity(0, size, set) == 0) {
      int count = CPU_COUNT_S(size, set);
      CPU_FREE(set);
      return count > 0 ? static_cast<unsigned>(count) : 1u;
    }
    int err = errno;
    CPU_FREE(set);
    if (err != EINVAL) break;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? hw : 1u;
}

}  // namespace mpx
