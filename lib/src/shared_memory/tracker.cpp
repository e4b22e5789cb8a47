#include "shared_memory/tracker.hpp"

#include <mpx/detail/fork.hpp>
#include <mpx/errors.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace mpx::detail::shm_tracker {
namespace {

constexpr char kRegister = 'R';
constexpr char kUnregister = 'U';

std::mutex g_mutex;         // only while g_fd is set: never held across a fork
std::atomic<int> g_fd{-1};  // the tree's end; children forked later inherit it (and so the same tracker)

// A fork while another thread holds g_mutex must not leave the child's copy locked.
const bool g_atfork = [] {
  ::pthread_atfork([] { g_mutex.lock(); }, [] { g_mutex.unlock(); }, [] { g_mutex.unlock(); });
  return true;
}();

void say(const std::string& s) { [[maybe_unused]] ssize_t r = ::write(2, s.data(), s.size()); }

[[noreturn]] void run_tracker(int fd) {
  // It outlives the tree it serves: Ctrl-C, a terminal hang-up or a group SIGTERM reach the
  // tree's processes, and the tracker cleans up after them.
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) ::signal(sig, SIG_IGN);
  // Nothing else inherited stays open here: a socket or pipe end kept by the tracker would hide
  // its peer's end of file from other processes for as long as the tree lives.
  if (fd != 3) {
    ::dup2(fd, 3);
    fd = 3;
  }
  int null = ::open("/dev/null", O_RDWR);
  if (null >= 0) {
    ::dup2(null, 0);
    ::dup2(null, 1);
  }
  ::close_range(4, UINT_MAX, 0);

  std::vector<std::string> names;
  char buf[512];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // every process of the tree has ended
    std::string name(buf + 1, static_cast<std::size_t>(n) - 1);
    if (buf[0] == kRegister) {
      names.push_back(std::move(name));
    } else if (buf[0] == kUnregister) {
      auto it = std::find(names.begin(), names.end(), name);
      if (it != names.end()) names.erase(it);
    }
  }
  std::string left;
  for (auto& name : names)
    if (::shm_unlink(("/" + name).c_str()) == 0) left += (left.empty() ? "" : ", ") + name;
  if (!left.empty())
    say("mpx: resource tracker: unlinked shared memory left by ended processes: " + left + "\n");
  ::_exit(0);
}

// Starts the tracker as a grandchild, so that no process of the tree has it as a child to reap
// (or to kill with its own children).
int start_tracker() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    throw Error(std::string("mpx::SharedMemory: cannot start the resource tracker: socketpair: ") +
                std::strerror(errno));
  ForkOptions options;
  options.name = "ResourceTracker";
  options.die_with_parent = false;
  std::shared_ptr<ChildProcess> middle;
  try {
    middle = fork_child(options, [&]() -> int {
      pid_t pid = ::fork();
      if (pid == 0) {
        ::close(sv[1]);
        run_tracker(sv[0]);
      }
      return pid < 0 ? 1 : 0;
    });
  } catch (const std::exception& e) {
    ::close(sv[0]);
    ::close(sv[1]);
    throw Error(std::string("mpx::SharedMemory: cannot start the resource tracker: ") + e.what());
  }
  ::close(sv[0]);
  middle->wait();
  if (middle->exitcode() != 0) {
    ::close(sv[1]);
    throw Error("mpx::SharedMemory: cannot start the resource tracker: fork failed");
  }
  return sv[1];
}

bool send_message(int fd, char kind, std::string_view name) noexcept {
  char buf[512];
  if (name.size() + 1 > sizeof buf) return false;
  buf[0] = kind;
  std::memcpy(buf + 1, name.data(), name.size());
  for (;;) {  // one datagram: messages from the tree's processes never interleave
    ssize_t n = ::send(fd, buf, name.size() + 1, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    return n >= 0;
  }
}

// The tree's end of the tracker's socket, starting the tracker on first use.
int tree_fd() {
  if (int fd = g_fd.load(); fd >= 0) return fd;
  int fd = start_tracker();  // not under g_mutex: fork's prepare handler takes it
  std::lock_guard lk(g_mutex);
  int expected = -1;
  if (g_fd.compare_exchange_strong(expected, fd)) return fd;
  ::close(fd);  // another thread won the race; the spare tracker sees end of file and exits
  return expected;
}

}  // namespace

void track(std::string_view name) {
  if (!send_message(tree_fd(), kRegister, name))
    throw Error("mpx::SharedMemory: the resource tracker is gone: " + std::string(std::strerror(errno)));
}

void untrack(std::string_view name) noexcept {
  if (int fd = g_fd.load(); fd >= 0) send_message(fd, kUnregister, name);
}

}  // namespace mpx::detail::shm_tracker
