#include "support.hpp"

#include <dirent.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

extern char** environ;

namespace mpx::test {

SleepingThread::SleepingThread() {
  thread_ = std::thread([this] {
    running_ = true;
    while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!running_) std::this_thread::yield();
}

SleepingThread::~SleepingThread() {
  stop_ = true;
  thread_.join();
}

namespace fs = std::filesystem;

TempDir::TempDir(const std::string& prefix) {
  std::string t = (fs::temp_directory_path() / (prefix + "-XXXXXX")).string();
  REQUIRE(::mkdtemp(t.data()) != nullptr);
  path_ = t;
}

TempDir::~TempDir() {
  std::error_code ignored;
  fs::remove_all(path_, ignored);
}

std::string write_file(const std::string& path, const std::string& content, mode_t mode) {
  {
    std::ofstream f(path, std::ios::binary);
    f << content;
  }
  ::chmod(path.c_str(), mode);
  return path;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

ChildProcess::ChildProcess(const std::vector<std::string>& args, std::string log) : log_(std::move(log)) {
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  // The test runner may block or ignore signals the child must act on.
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGTERM);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGPIPE);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  REQUIRE(posix_spawnp(&pid_, argv[0], &fa, &attr, argv.data(), environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0));
}

ChildProcess::~ChildProcess() {
  if (!status_) {
    ::kill(pid_, SIGKILL);
    wait(std::chrono::seconds(10));
  }
  if (pidfd_ >= 0) ::close(pidfd_);
}

std::optional<int> ChildProcess::wait(std::chrono::milliseconds timeout) {
  if (status_) return status_;
  pollfd p{pidfd_, POLLIN, 0};
  if (pidfd_ >= 0 && ::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return std::nullopt;
  int st = 0;
  if (::waitpid(pid_, &st, pidfd_ >= 0 ? 0 : WNOHANG) != pid_) return std::nullopt;
  status_ = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
  return status_;
}

void ChildProcess::signal(int sig) {
  if (!status_) ::kill(pid_, sig);
}

std::optional<int> run(const std::vector<std::string>& args, const std::string& log,
                       std::chrono::milliseconds timeout) {
  ChildProcess p(args, log);
  return p.wait(timeout);
}

Subreaper::Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 1); }
Subreaper::~Subreaper() { ::prctl(PR_SET_CHILD_SUBREAPER, 0); }

bool gone(pid_t pid, std::chrono::milliseconds within) {
  auto until = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < until) {
    if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
    std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    if (!std::getline(st, line)) return true;
    auto p = line.rfind(')');
    if (p != std::string::npos && p + 2 < line.size() && line[p + 2] == 'Z') return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

pid_t parent_of(pid_t pid) {
  std::ifstream st("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(st, line);
  auto p = line.rfind(')');  // the command name before it may hold spaces and parentheses
  return p == std::string::npos || p + 4 > line.size() ? 0
                                                       : static_cast<pid_t>(std::atoi(line.c_str() + p + 4));
}

PlainSignals::PlainSignals() {
  ::signal(SIGTERM, SIG_DFL);
  ::signal(SIGABRT, SIG_DFL);
}

int reap_adopted(pid_t pid, std::chrono::milliseconds limit) {
  auto end = std::chrono::steady_clock::now() + limit;
  int status = 0;
  while (std::chrono::steady_clock::now() < end) {
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return -1;
}

std::optional<std::string> find_python3() {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/bin:/bin";
  for (std::size_t start = 0; start <= dirs.size();) {
    auto end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    auto candidate = dirs.substr(start, end - start) + "/python3";
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return std::nullopt;
}

bool unix_socket_listening(const std::string& path) {
  // /proc/net/unix: "Num RefCount Protocol Flags Type St Inode Path"; flag 0x10000 is
  // __SO_ACCEPTCON, set by listen().
  std::ifstream in("/proc/net/unix");
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string num, refs, protocol, flags, type, state, inode, name;
    if (!(fields >> num >> refs >> protocol >> flags >> type >> state >> inode >> name)) continue;
    if (name == path && (std::stoul(flags, nullptr, 16) & 0x10000U)) return true;
  }
  return false;
}

std::size_t open_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator("/proc/self/fd")) ++n;
  return n - 1;  // the iterator's own
}

FdSet open_fd_set() {
  FdSet fds;
  DIR* d = ::opendir("/proc/self/fd");
  REQUIRE(d != nullptr);
  const int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::atoi(e->d_name);
    if (fd == own) continue;
    char target[PATH_MAX];
    ssize_t n = ::readlinkat(own, e->d_name, target, sizeof target - 1);
    fds.emplace(fd, n < 0 ? std::string("?") : std::string(target, static_cast<std::size_t>(n)));
  }
  ::closedir(d);
  return fds;
}

std::string fd_changes(const FdSet& before, const FdSet& after) {
  std::string out;
  auto line = [&](char sign, int fd, const std::string& what) {
    out += sign + std::to_string(fd) + ' ' + what + '\n';
  };
  for (const auto& [fd, what] : before) {
    auto it = after.find(fd);
    if (it == after.end())
      line('-', fd, what);
    else if (it->second != what)
      line('~', fd, what + " -> " + it->second);
  }
  for (const auto& [fd, what] : after)
    if (!before.count(fd)) line('+', fd, what);
  return out;
}

std::size_t resident_bytes(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

}  // namespace mpx::test
