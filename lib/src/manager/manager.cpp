// manager/ — the client side of managers: Manager, the proxies' connection and session
// (client.cpp), named task queues and their workers (tasks.cpp). The only layer that may include
// server/ (a private Manager() runs one).
//
// mpx::Manager: the private server process it forks, and the handle.
#include <mpx/managers.hpp>
#include <mpx/process.hpp>

#include "common/log.hpp"
#include "server/serve.hpp"

#include <openssl/rand.h>
#include <poll.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>

namespace mpx {
namespace detail {

struct ManagerState {
  explicit ManagerState(Address a) : address(std::move(a)) {}
  ~ManagerState() {
    if (::getpid() == owner) stop();
  }

  // Asks the server to finish (SIGTERM: it drains and removes its socket), then makes sure.
  void stop() noexcept {
    std::lock_guard lock(m);
    if (stopped) return;
    stopped = true;
    if (server) {
      server->signal(SIGTERM);
      if (!server->wait(std::chrono::seconds(5))) {
        logger().warn("manager server {} did not stop on SIGTERM; killing it", server->pid());
        server->signal(SIGKILL);
        server->wait();
      }
    }
    remove_dir();
  }
  void remove_dir() noexcept {
    if (dir.empty()) return;
    ::unlink(address.path().c_str());
    ::rmdir(dir.c_str());
  }

  Address address;
  std::string authkey;
  std::string dir;
  pid_t owner = ::getpid();
  std::shared_ptr<ChildProcess> server;
  std::mutex m;
  bool stopped = false;
};

namespace {

std::string random_authkey() {
  std::string key(32, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) != 1)
    throw Error("mpx: no randomness for a manager authkey");
  return key;
}

std::string make_private_dir() {
  // sockaddr_un holds 108 bytes: a long TMPDIR falls back to /tmp.
  std::string base = "/tmp";
  if (const char* t = std::getenv("TMPDIR"); t && *t && std::strlen(t) < 60) base = t;
  std::string templ = base + "/mpx-XXXXXX";
  if (!::mkdtemp(templ.data())) {
    templ = "/tmp/mpx-XXXXXX";
    if (!::mkdtemp(templ.data()))
      throw Error(std::string("mpx: cannot create a directory for the manager socket: ") +
                  std::strerror(errno));
  }
  return templ;  // mkdtemp makes it 0700
}

void write_all(int fd, std::string_view s) noexcept {
  while (!s.empty()) {
    ssize_t n = ::write(fd, s.data(), s.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    s.remove_prefix(static_cast<std::size_t>(n));
  }
}

// The body of the private server process.
int run_private_server(const Address& address, const std::string& authkey, const std::string& dir,
                       std::shared_ptr<TypeRegistry> types, int ready_fd, pid_t parent) {
  // Die with the owner, but through SIGTERM, so the socket and its directory are removed.
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != parent) return 0;
  // Ctrl-C reaches the whole foreground group; the owner decides, this server follows it.
  ::signal(SIGINT, SIG_IGN);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  int status = 0;
  try {
    Listener listener(address);
    ServerOptions options;
    options.authkey = authkey;
    options.allow_remote_shutdown = true;
    options.types = std::move(types);
    options.description = "mpx private manager";
    serve_listener(
        listener, std::move(options), {SIGTERM, SIGHUP},
        [&] {
          write_all(ready_fd, "R");
          ::close(ready_fd);
          ready_fd = -1;
        },
        nullptr);
  } catch (const std::exception& e) {
    if (ready_fd >= 0) write_all(ready_fd, std::string("E") + e.what());
    status = 1;
  }
  if (ready_fd >= 0) ::close(ready_fd);
  ::rmdir(dir.c_str());
  return status;
}

}  // namespace
}  // namespace detail

Manager::Manager(std::shared_ptr<detail::Session> session, std::shared_ptr<detail::ManagerState> state)
    : session_(std::move(session)), state_(std::move(state)) {}

Manager::Manager() {
  std::string dir = detail::make_private_dir();
  auto state = std::make_shared<detail::ManagerState>(Address::unix_path(dir + "/manager.sock"));
  state->dir = dir;
  state->authkey = detail::random_authkey();
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    state->remove_dir();
    throw Error(std::string("mpx: pipe: ") + std::strerror(errno));
  }
  pid_t parent = ::getpid();
  auto types = detail::global_type_registry();
  try {
    detail::ForkOptions fork_options;
    fork_options.name = "SyncManager";
    fork_options.daemon = true;
    state->server = detail::fork_child(fork_options, [&]() -> int {
      ::close(p[0]);
      return detail::run_private_server(state->address, state->authkey, dir, types, p[1], parent);
    });
  } catch (...) {
    ::close(p[0]);
    ::close(p[1]);
    state->remove_dir();
    throw;
  }
  ::close(p[1]);
  // Wait for "R" (serving) or "E<message>"; EOF means the server died before it could say.
  std::string reply;
  detail::Deadline deadline(std::chrono::seconds(30));
  for (;;) {
    pollfd pfd{p[0], POLLIN, 0};
    int r = ::poll(&pfd, 1, deadline.poll_ms());
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    char buf[512];
    ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    reply.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  if (reply != "R") {
    state->stop();
    throw Error("mpx: the manager server did not start" +
                (reply.size() > 1 ? ": " + reply.substr(1) : std::string(" (it exited or timed out)")));
  }
  session_ = detail::Session::get(state->address, state->authkey);
  state_ = std::move(state);
  session_->current().conn();  // connect now: the session outlives short-lived threads
}

Manager Manager::connect(const Address& address, std::string authkey) {
  auto session = detail::Session::get(address, authkey);
  session->current().conn();  // fail here, not on first use: ConnectionError, AuthenticationError ...
  return Manager(std::move(session), nullptr);
}

const Address& Manager::address() const { return session_->address(); }
const std::string& Manager::authkey() const { return session_->authkey(); }

void Manager::shutdown() {
  if (!state_)
    throw StateError("mpx: shutdown() of a manager this process connected to (only its owner stops it)");
  if (state_->owner != ::getpid())
    throw StateError("mpx: only the process that started a manager can shut it down");
  state_->stop();
}

void Manager::erase(std::string_view name) {
  detail::Request req(session_->current().conn(), proto::Op::erase_name, 0);
  req.w().str(name);
  req.call();
}

void Manager::flush() { session_->current().conn().flush(); }

detail::ProxyCore Manager::open(proto::Kind kind, std::string_view name, const std::string& tag,
                                const std::function<void(proto::Writer&)>& init) {
  return detail::open_object(session_, state_, kind, name, tag, init);
}

NamespaceProxy Manager::namespace_(std::string_view name) {
  return NamespaceProxy(open(proto::Kind::namespace_, name, "", {}));
}
LockProxy Manager::lock(std::string_view name) { return LockProxy(open(proto::Kind::lock, name, "", {})); }
RLockProxy Manager::rlock(std::string_view name) {
  return RLockProxy(open(proto::Kind::rlock, name, "", {}));
}
SemaphoreProxy Manager::semaphore(std::uint64_t value, std::string_view name) {
  auto v = detail::wire_u32(value, "a semaphore's initial value");
  return SemaphoreProxy(open(proto::Kind::semaphore, name, "", [&](proto::Writer& w) { w.u32(v); }));
}
BoundedSemaphoreProxy Manager::bounded_semaphore(std::uint64_t value, std::string_view name) {
  auto v = detail::wire_u32(value, "a semaphore's initial value");
  return BoundedSemaphoreProxy(
      open(proto::Kind::bounded_semaphore, name, "", [&](proto::Writer& w) { w.u32(v); }));
}
ConditionProxy Manager::condition(std::string_view name) {
  return ConditionProxy(open(proto::Kind::condition, name, "", {}));
}
EventProxy Manager::event(std::string_view name) {
  return EventProxy(open(proto::Kind::event, name, "", {}));
}
TaskQueueProxy Manager::task_queue(std::string_view name) {
  if (name.empty()) throw ValueError("mpx: a task queue needs a name");
  return TaskQueueProxy(open(proto::Kind::task_queue, name, "", {}));
}
BarrierProxy Manager::barrier(std::uint64_t parties, std::string_view name) {
  if (parties == 0) throw ValueError("mpx: a barrier needs at least one party");
  auto p = detail::wire_u32(parties, "a barrier's parties");
  return BarrierProxy(open(proto::Kind::barrier, name, "", [&](proto::Writer& w) { w.u32(p); }));
}

}  // namespace mpx
