// The fork server: a single-threaded process that forks Process children for the forkserver
// start method (see <mpx/context.hpp> for why it exists and when it starts).
//
// Protocol on one Unix stream socket, one request at a time (the parent holds a mutex):
//   request: u64 body length, with SCM_RIGHTS [status pipe write end, working directory, the
//            caller's stdin/stdout/stderr that are open, one memfd per shared mapping]; the body:
//            u8 which std streams came, name, daemon, identity, the caller's ProcessInfo, its
//            signal mask, the target bytes, u32 n and n × (u64 base, u64 bytes) for the mappings.
//   reply:   i32 pid (or -1), i32 errno, with SCM_RIGHTS [pidfd of the child] when there is one.
// The server keeps each child's status pipe and writes its exit code there when it reaps it;
// the parent's read end is the child's sentinel. The pidfd is opened before the server can reap
// the child, so the parent's signals can never reach a recycled pid.
//
// The streams and the working directory cross on every request so a child writes where its
// starter writes now, not where the starter wrote when the server was forked.
#include "process/forkserver.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#include <mpx/proto/codec.hpp>

#include "common/log.hpp"
#include "process/shared_mappings.hpp"

namespace mpx::detail {

void close_fd(int fd) noexcept {
  if (fd >= 0) ::close(fd);
}

void close_from(int from, std::span<const int> keep) noexcept {
  auto close_range = [](unsigned lo, unsigned hi) {
    if (lo > hi) return;
    if (::syscall(SYS_close_range, lo, hi, 0) == 0) return;
    long max = ::sysconf(_SC_OPEN_MAX);
    unsigned top = max > 0 && max < 65536 ? static_cast<unsigned>(max) : 65536u;
    for (unsigned fd = lo; fd <= hi && fd < top; ++fd) ::close(static_cast<int>(fd));
  };
  // Lowest kept descriptor first, each time: the ranges between them go (no allocation here,
  // in a freshly forked child).
  unsigned lo = static_cast<unsigned>(from);
  for (;;) {
    unsigned next = ~0u;
    for (int fd : keep)
      if (fd >= 0 && static_cast<unsigned>(fd) >= lo) next = std::min(next, static_cast<unsigned>(fd));
    if (next == ~0u) break;
    if (next > lo) close_range(lo, next - 1);
    lo = next + 1;
  }
  close_range(lo, ~0u);
}

bool write_all(int fd, const void* data, std::size_t n) {
  auto* p = static_cast<const char*>(data);
  while (n) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool read_all(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

bool send_with_fds(int sock, const void* data, std::size_t n, const int* fds, std::size_t nfds) {
  iovec iov{const_cast<void*>(data), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  if (nfds) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    if (!c) return false;
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    std::memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t w;
  do w = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  if (w < 0) return false;
  return write_all(sock, static_cast<const char*>(data) + w, n - static_cast<std::size_t>(w));
}

bool recv_with_fds(int sock, void* data, std::size_t n, int* fds, std::size_t& nfds) {
  nfds = 0;
  iovec iov{data, n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t r;
  do r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  while (r < 0 && errno == EINTR);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < k; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (nfds < kMaxFds)
        fds[nfds++] = fd;
      else
        ::close(fd);
    }
  }
  if (r <= 0 || (msg.msg_flags & MSG_CTRUNC)) {
    for (std::size_t i = 0; i < nfds; ++i) ::close(fds[i]);
    nfds = 0;
    return false;
  }
  return read_all(sock, static_cast<char*>(data) + r, n - static_cast<std::size_t>(r));
}

void write_forwarded(proto::Writer& w, const ForwardedStart& req) {
  w.str(req.name);
  w.u8(req.daemon ? 1 : 0);
  w.str(req.identity);
  w.str(req.parent.name);
  w.i32(req.parent.pid);
  w.u8(req.parent.daemon ? 1 : 0);
  w.raw(&req.mask, sizeof req.mask);
  w.blob(req.target);
  w.u32(static_cast<std::uint32_t>(req.maps.size()));
  for (auto& m : req.maps) {
    w.u64(m.base);
    w.u64(m.bytes);
  }
  w.u32(static_cast<std::uint32_t>(req.fds.size()));
}

ForwardedStart read_forwarded(proto::Reader& in) {
  ForwardedStart req;
  req.name = std::string(in.str());
  req.daemon = in.u8() != 0;
  req.identity = std::string(in.str());
  req.parent.name = std::string(in.str());
  req.parent.pid = static_cast<pid_t>(in.i32());
  req.parent.daemon = in.u8() != 0;
  auto mask = in.take(sizeof(sigset_t));
  std::memcpy(&req.mask, mask.data(), sizeof(sigset_t));
  auto target = in.take(in.u64());
  req.target.assign(target.begin(), target.end());
  std::uint32_t n = in.u32();
  if (n > kMaxMaps) throw ProtocolError("mpx: a start request with too many shared mappings");
  for (std::uint32_t i = 0; i < n; ++i) {
    SharedMappingRef m;
    m.base = static_cast<std::uintptr_t>(in.u64());
    m.bytes = static_cast<std::size_t>(in.u64());
    req.maps.push_back(m);
  }
  std::uint32_t nfds = in.u32();
  if (nfds > kMaxPassedFds) throw ProtocolError("mpx: a start request passing too many descriptors");
  req.fds.assign(nfds, -1);
  return req;
}

namespace {

// A request larger than this is not one the parent sent: the server drops the connection.
constexpr std::uint64_t kMaxRequest = std::uint64_t{1} << 32;

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

// The inode of the file mapped at exactly `base` here, 0 if no mapping starts there.
ino_t inode_mapped_at(std::uintptr_t base) {
  FILE* f = std::fopen("/proc/self/maps", "re");
  if (!f) return 0;
  char line[512];
  ino_t found = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0, inode = 0;
    char perms[8];
    if (std::sscanf(line, "%lx-%lx %7s %*s %*s %lu", &lo, &hi, perms, &inode) == 4 && lo == base) {
      found = static_cast<ino_t>(inode);
      break;
    }
  }
  std::fclose(f);
  return found;
}

// Maps a shared object where its starter has it, so the addresses in the arguments hold. A
// mapping already there is either this very one (made after the server was chosen but before
// it forked: in its snapshot) or one the starter has since unmapped (its address reused): the
// first stays, the second is replaced.
bool map_at_starters_address(const SharedMappingRef& m) {
  void* want = reinterpret_cast<void*>(m.base);
  void* p = ::mmap(want, m.bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED_NOREPLACE, m.fd, 0);
  if (p == want) return true;
  if (p != MAP_FAILED) {
    ::munmap(p, m.bytes);  // a kernel without MAP_FIXED_NOREPLACE took it as a hint
    return false;
  }
  if (errno != EEXIST) return false;
  struct stat st {};
  if (::fstat(m.fd, &st) != 0) return false;
  ino_t there = inode_mapped_at(m.base);
  if (there == st.st_ino) return true;
  if (there == 0) return false;  // something of this process's own overlaps: leave it alone
  return ::mmap(want, m.bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, m.fd, 0) == want;
}

void read_failed(const char*) { throw ProtocolError("mpx: malformed fork server request"); }

// ---------------------------------------------------------------------------------------------
// The server.
// ---------------------------------------------------------------------------------------------

struct ServerChild {
  int status_fd;
};

// One request: fork the child it describes. False when the parent is gone or spoke nonsense.
bool serve_one(int sock, std::map<pid_t, ServerChild>& children) {
  std::uint64_t length = 0;
  std::array<int, kMaxFds> fds{};
  std::size_t nfds = 0;
  if (!recv_with_fds(sock, &length, sizeof length, fds.data(), nfds)) return false;
  auto drop = [&] {
    for (std::size_t i = 0; i < nfds; ++i) ::close(fds[i]);
    return false;
  };
  if (nfds < 2 || length > kMaxRequest) return drop();
  Bytes body(static_cast<std::size_t>(length));
  if (!read_all(sock, body.data(), body.size())) return drop();
  ForwardedStart req;
  std::uint8_t streams = 0;
  try {
    proto::Reader in(body, &read_failed);
    streams = in.u8();
    req = read_forwarded(in);
  } catch (const std::exception&) {
    return drop();
  }
  std::size_t expected = 2;
  for (int i = 0; i < 3; ++i)
    if (streams & (1u << i)) ++expected;
  if (nfds != expected + req.maps.size() + req.fds.size()) return drop();
  for (auto& m : req.maps) m.fd = fds[expected++];
  for (int& fd : req.fds) fd = fds[expected++];

  pid_t server = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    // The starter's working directory now, not the one it had when the server was forked.
    if (::fchdir(fds[1]) != 0) ::_exit(1);
    std::size_t next = 2;
    for (int i = 0; i < 3; ++i) {
      if (!(streams & (1u << i))) continue;
      ::dup2(fds[next++], i);  // dup2 clears CLOEXEC on the copy
    }
    for (auto& m : req.maps) {
      if (!map_at_starters_address(m)) {
        std::string text =
            "mpx: forkserver child " + req.name + ": cannot map a shared object at its address\n";
        (void)!::write(2, text.data(), text.size());
        ::_exit(1);
      }
    }
    // The control socket, the other children's status pipes, the copies above go.
    close_from(3, req.fds);
    set_passed_fds(req.fds);
    forwarded_child_main(req, server);
  }
  std::int32_t reply[2] = {static_cast<std::int32_t>(pid), pid < 0 ? errno : 0};
  for (std::size_t i = 1; i < nfds; ++i) ::close(fds[i]);
  int pidfd = -1;
  if (pid > 0) {
    if (have_pidfd()) pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    children[pid] = ServerChild{fds[0]};
  } else {
    ::close(fds[0]);
  }
  bool sent = send_with_fds(sock, reply, sizeof reply, &pidfd, pidfd >= 0 ? 1 : 0);
  close_fd(pidfd);
  return sent;
}

void reap(std::map<pid_t, ServerChild>& children) {
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    auto it = children.find(pid);
    if (it == children.end()) continue;
    std::int32_t code = exitcode_from_status(status);
    (void)!::write(it->second.status_fd, &code, sizeof code);  // a pipe write this small is atomic
    ::close(it->second.status_fd);
    children.erase(it);
  }
}

// Runs in the server: fork on request, report exits, and end when the parent is gone.
int server_main(int sock) {
  close_from(3, std::span<const int>(&sock, 1));
  disable_module_rescan();  // a target missing from the inherited table is an error, not a scan
  // A starter that ignores SIGCHLD would have its children reaped by the kernel, exit codes lost.
  ::signal(SIGCHLD, SIG_DFL);
  sigset_t all;
  ::sigfillset(&all);
  // The server is only reached through its socket; terminal signals are for its children.
  ::pthread_sigmask(SIG_SETMASK, &all, nullptr);
  sigset_t chld;
  ::sigemptyset(&chld);
  ::sigaddset(&chld, SIGCHLD);
  int sfd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) return 1;
  std::map<pid_t, ServerChild> children;
  for (;;) {
    pollfd p[2] = {{sock, POLLIN, 0}, {sfd, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    if (p[1].revents) {
      signalfd_siginfo info;
      while (::read(sfd, &info, sizeof info) > 0) {
      }
      reap(children);
    }
    if (p[0].revents && !serve_one(sock, children)) {
      // The parent is gone (or broken): reporting exits is pointless now. Daemon children die
      // with this process; the others go on, as with fork.
      return 0;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The parent's side.
// ---------------------------------------------------------------------------------------------

struct ServerHandle {
  std::mutex m;
  int sock = -1;
  std::shared_ptr<ChildProcess> process;
  ServerHandle* abandoned = nullptr;
};

std::atomic<ServerHandle*> g_server{nullptr};
ServerHandle* g_abandoned_server = nullptr;  // kept reachable after fork, for leak checkers

ServerHandle& handle() {
  ServerHandle* h = g_server.load(std::memory_order_acquire);
  if (h) return *h;
  auto* fresh = new ServerHandle;
  if (g_server.compare_exchange_strong(h, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *h;
}

// With h.m held.
void stop_locked(ServerHandle& h) {
  close_fd(h.sock);
  h.sock = -1;
  h.process.reset();  // kills and reaps a server that is still there
}

// At a normal exit the server is reaped here rather than left to whoever adopts it (an init that
// does not reap would keep it as a zombie). A thread still inside start() keeps the mutex: then
// the server is left to die with this process instead.
void shut_down_at_exit() {
  ServerHandle* h = g_server.load(std::memory_order_acquire);
  if (!h || !h->m.try_lock()) return;
  std::lock_guard lock(h->m, std::adopt_lock);
  close_fd(h->sock);
  h->sock = -1;
  if (h->process) (void)h->process->wait(std::chrono::seconds(1));
}

// With h.m held.
void ensure_started_locked(ServerHandle& h) {
  if (h.process && !h.process->poll() && h.sock >= 0) return;
  stop_locked(h);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw Error("mpx: cannot start the fork server: socketpair: " + errno_text(errno));
  int server_end = sv[1];
  // Mappings made from here on are not in the server's snapshot: they must be given by fd.
  share_mappings_by_fd();
  // The children look their target up in the module table; reading it now means none of them
  // calls into the loader, whose lock a thread of this process may hold when the server forks.
  prepare_code_refs();
  auto body = [](void* ctx) -> int { return server_main(*static_cast<int*>(ctx)); };
  try {
    h.process = fork_server_process(body, &server_end);
  } catch (...) {
    ::close(sv[0]);
    ::close(sv[1]);
    throw;
  }
  ::close(sv[1]);
  h.sock = sv[0];
  static const bool registered = [] {
    std::atexit(shut_down_at_exit);
    return true;
  }();
  (void)registered;
}

}  // namespace

void forkserver_ensure_started() {
  ServerHandle& h = handle();
  std::lock_guard lock(h.m);
  ensure_started_locked(h);
}

void forkserver_forget_after_fork() noexcept {
  ServerHandle* old = g_server.exchange(nullptr, std::memory_order_acq_rel);
  if (!old) return;
  // Its mutex may be held by a thread that is not here; its socket must not keep the server
  // alive after the parent has gone.
  close_fd(old->sock);
  old->abandoned = g_abandoned_server;
  g_abandoned_server = old;
}

std::shared_ptr<ChildProcess> forkserver_start_child(const ForwardedStart& req) {
  Bytes body;
  proto::Writer w(body);
  std::uint8_t streams = 0;
  std::array<int, kMaxFds> fds{};
  std::size_t nfds = 2;  // status pipe and working directory, set below
  for (int i = 0; i < 3; ++i) {
    if (::fcntl(i, F_GETFD) < 0) continue;
    streams |= static_cast<std::uint8_t>(1u << i);
    fds[nfds++] = i;
  }
  w.u8(streams);
  if (req.maps.size() > kMaxMaps)
    throw ValueError("Process::start: start method forkserver: the arguments hold more than " +
                     std::to_string(kMaxMaps) + " shared objects made after the fork server started");
  write_forwarded(w, req);

  int cwd = ::open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (cwd < 0) throw Error("mpx: cannot start a child: open the working directory: " + errno_text(errno));
  int status[2];
  if (::pipe2(status, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(cwd);
    throw Error("mpx: cannot start a child: pipe: " + errno_text(err));
  }
  fds[0] = status[1];
  fds[1] = cwd;
  for (auto& m : req.maps) fds[nfds++] = m.fd;
  for (int fd : req.fds) fds[nfds++] = fd;
  ServerHandle& h = handle();
  std::int32_t reply[2] = {-1, 0};
  int pidfd = -1;
  {
    std::lock_guard lock(h.m);
    bool ok = false;
    try {
      ensure_started_locked(h);
      std::uint64_t length = body.size();
      std::size_t got = 0;
      ok = send_with_fds(h.sock, &length, sizeof length, fds.data(), nfds) &&
           write_all(h.sock, body.data(), body.size()) &&
           recv_with_fds(h.sock, reply, sizeof reply, &pidfd, got);
      if (got == 0) pidfd = -1;
    } catch (...) {
      ::close(status[0]);
      ::close(status[1]);
      ::close(cwd);
      throw;
    }
    ::close(status[1]);
    ::close(cwd);
    if (!ok) {
      stop_locked(h);  // the next start() starts a new one
      ::close(status[0]);
      throw Error("mpx: cannot start a child: the fork server is gone");
    }
  }
  if (reply[0] < 0) {
    close_fd(pidfd);
    ::close(status[0]);
    throw Error("mpx: cannot start a child: fork: " + errno_text(reply[1]));
  }
  ::fcntl(status[0], F_SETFL, O_NONBLOCK);
  return make_forwarded_child(static_cast<pid_t>(reply[0]), status[0], pidfd);
}

void* TargetStateReader::code() {
  CodeRef ref{in_.u64(), in_.u64()};
  return reinterpret_cast<void*>(loaded_code_address(ref, "mpx: a function handed to the child"));
}

void run_encoded_target(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  auto in = task_reader(bytes);
  CodeRef ref{in.u64(), in.u64()};
  std::uint64_t tag = in.u64();
  auto inv = reinterpret_cast<TargetInvoker>(loaded_code_address(
      ref, "mpx: the process target's code", "the child must run the same binary as its starter"));
  if (inv(nullptr) != tag)
    throw TypeMismatch("mpx: the process target does not have the types its starter encoded");
  auto payload = in.rest();
  inv(&payload);
}

}  // namespace mpx::detail
