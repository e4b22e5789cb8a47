// The spawn start method (see <mpx/context.hpp>): the child is a fresh image of this executable.
//
// The parent posix_spawns /proc/self/exe (no fork of a threaded parent: the child shares nothing
// with it but what exec keeps) with argv[0] kept, so ps shows the program, and with
// MPX_SPAWNED=<fd>[:<sentinel fd>] in its environment: <fd> is one end of a socket pair. Over
// it the parent then sends the request forkserver sends its server (write_forwarded: name,
// daemon, identity, the starter, its signal mask, the target's bytes, the shared mappings),
// prefixed by its u64 length and the parent's default start method, with one memfd per shared
// mapping (SCM_RIGHTS).
//
// In the child, process.cpp's library initializer sees the marker before the program's own
// static initializers run, and calls spawned_child_main: it drops the marker (the child's own
// children are not spawned children), reads the request, maps each mapping wherever there is
// room (this image's address space is laid out afresh, so the starter's addresses mean nothing
// here: handles are translated, see shared_state_here) and becomes the child as a forkserver
// child does (forwarded_child_main). It never returns, so the program's initializers and main
// never run in it. Everything it touches before the target must therefore work without dynamic
// initialization: function-local statics and constant-initialized globals only, and the
// standard streams are initialized here first.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "process/forkserver.hpp"
#include "process/shared_mappings.hpp"

extern char** environ;

namespace mpx::detail {
namespace {

// Where the child finds the socket (and the sentinel pipe, without pidfds). Every other
// descriptor from here up is closed in the child.
constexpr int kChildSocket = 3;
constexpr int kChildSentinel = 4;

std::string errno_text(int err) { return std::error_code(err, std::generic_category()).message(); }

// Everything posix_spawn needs, made before it runs (the child is started vfork-style).
struct SpawnPlan {
  std::string argv0;
  std::string marker;                // MPX_SPAWNED=<socket>
  std::string marker_with_sentinel;  // MPX_SPAWNED=<socket>:<sentinel>
  std::vector<char*> argv;
  std::vector<char*> envp;
  sigset_t all_blocked{};
  int socket = -1;  // the child's end, at a descriptor above the ones dup2'd to
};

// Descriptors below 10 could be the very ones dup2 targets in the child.
int high_copy(int fd) {
  int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 10);
  if (copy < 0) throw Error("cannot start a child: spawn: fcntl: " + errno_text(errno));
  return copy;
}

pid_t launch(void* ctx, int sentinel_write_end) {
  auto& plan = *static_cast<SpawnPlan*>(ctx);
  int sentinel = -1;
  if (sentinel_write_end >= 0) {
    sentinel = ::fcntl(sentinel_write_end, F_DUPFD_CLOEXEC, 10);
    if (sentinel < 0) return -1;
  }
  plan.envp[plan.envp.size() - 2] = (sentinel >= 0 ? plan.marker_with_sentinel : plan.marker).data();

  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  ::posix_spawn_file_actions_init(&actions);
  ::posix_spawnattr_init(&attr);
  int rc = ::posix_spawn_file_actions_adddup2(&actions, plan.socket, kChildSocket);
  if (rc == 0 && sentinel >= 0) rc = ::posix_spawn_file_actions_adddup2(&actions, sentinel, kChildSentinel);
  // A fresh image gets the standard streams and what it is given, as Python's spawn does.
  if (rc == 0)
    rc = ::posix_spawn_file_actions_addclosefrom_np(&actions,
                                                    sentinel >= 0 ? kChildSentinel + 1 : kChildSocket + 1);
  // Signals wait until the child has become what the request says; then it takes the starter's
  // mask. Dispositions are exec's: caught ones back to default, ignored ones stay ignored.
  if (rc == 0) rc = ::posix_spawnattr_setsigmask(&attr, &plan.all_blocked);
  if (rc == 0) rc = ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  if (rc == 0)
    rc = ::posix_spawn(&pid, "/proc/self/exe", &actions, &attr, plan.argv.data(), plan.envp.data());
  ::posix_spawnattr_destroy(&attr);
  ::posix_spawn_file_actions_destroy(&actions);
  if (sentinel >= 0) ::close(sentinel);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

[[noreturn]] void die(const std::string& text) {
  std::string line = "mpx: spawned child: " + text + "\n";
  (void)!::write(2, line.data(), line.size());
  ::_exit(1);
}

void read_failed(const char*) { throw ProtocolError("mpx: malformed spawn request"); }

}  // namespace

std::shared_ptr<ChildProcess> spawn_start_child(const ForwardedStart& req, StartMethod default_method) {
  Bytes body;
  proto::Writer w(body);
  w.u8(static_cast<std::uint8_t>(default_method));
  write_forwarded(w, req);

  SpawnPlan plan;
  plan.argv0 = program_invocation_name ? program_invocation_name : "mpx-spawned-child";
  plan.argv = {plan.argv0.data(), nullptr};
  std::size_t marker_len = std::strlen(kSpawnMarker);
  for (char** e = environ; e && *e; ++e) {
    bool is_marker = std::strncmp(*e, kSpawnMarker, marker_len) == 0 && (*e)[marker_len] == '=';
    if (!is_marker) plan.envp.push_back(*e);
  }
  plan.marker = std::string(kSpawnMarker) + "=" + std::to_string(kChildSocket);
  plan.marker_with_sentinel = plan.marker + ":" + std::to_string(kChildSentinel);
  plan.envp.push_back(nullptr);  // launch puts the marker here
  plan.envp.push_back(nullptr);
  ::sigfillset(&plan.all_blocked);

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw Error("cannot start a child: spawn: socketpair: " + errno_text(errno));
  std::shared_ptr<ChildProcess> child;
  try {
    plan.socket = high_copy(sv[1]);
    ::close(sv[1]);
    sv[1] = -1;
    child = launch_direct_child(req.daemon, &launch, &plan);
  } catch (...) {
    ::close(sv[0]);
    close_fd(sv[1]);
    close_fd(plan.socket);
    throw;
  }
  ::close(plan.socket);

  std::vector<int> fds;
  for (auto& m : req.maps) fds.push_back(m.fd);
  fds.insert(fds.end(), req.fds.begin(), req.fds.end());
  std::uint64_t length = body.size();
  bool sent = send_with_fds(sv[0], &length, sizeof length, fds.data(), fds.size()) &&
              write_all(sv[0], body.data(), body.size());
  int err = errno;
  ::close(sv[0]);
  if (!sent) {
    child->signal(SIGKILL);
    child->wait();
    throw Error("cannot start a child: spawn: the child did not take its request: " + errno_text(err));
  }
  return child;
}

void spawned_child_main(const char* marker_value) {
  int sock = -1, sentinel = -1;
  if (std::sscanf(marker_value, "%d:%d", &sock, &sentinel) < 1 || sock < 0) die("malformed marker");
  if (sentinel >= 0) ::fcntl(sentinel, F_SETFD, FD_CLOEXEC);  // held open until this process ends

  std::uint64_t length = 0;
  int fds[kMaxFds];
  std::size_t nfds = 0;
  if (!recv_with_fds(sock, &length, sizeof length, fds, nfds))
    die("the starter went away before sending its request");
  if (length > (std::uint64_t{1} << 32)) die("request too large");
  Bytes body(static_cast<std::size_t>(length));
  if (!read_all(sock, body.data(), body.size())) die("the starter went away while sending its request");
  ::close(sock);
  ForwardedStart req;
  StartMethod method = StartMethod::spawn;
  try {
    proto::Reader in(body, &read_failed);
    std::uint8_t m = in.u8();
    if (m > static_cast<std::uint8_t>(StartMethod::spawn)) die("malformed request");
    method = static_cast<StartMethod>(m);
    req = read_forwarded(in);
    if (in.remaining() != 0) die("malformed request");
  } catch (const std::exception& e) {
    die(e.what());
  }
  if (req.maps.size() + req.fds.size() != nfds) die("the request's descriptors did not all arrive");
  for (std::size_t i = 0; i < req.fds.size(); ++i) req.fds[i] = fds[req.maps.size() + i];
  set_passed_fds(req.fds);
  for (std::size_t i = 0; i < req.maps.size(); ++i) {
    req.maps[i].fd = fds[i];
    void* here = ::mmap(nullptr, req.maps[i].bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fds[i], 0);
    if (here == MAP_FAILED) die("cannot map a shared object: " + errno_text(errno));
    adopt_received_mapping(req.maps[i], here);
  }
  // The starter's default method is this child's too, as Python passes it to a spawned child.
  inherit_start_method(method);
  forwarded_child_main(req, req.parent.pid);
}

}  // namespace mpx::detail
