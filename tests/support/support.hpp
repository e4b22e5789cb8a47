// What the test programs share: scratch directories, programs run as child processes, and
// counting this process's descriptors. Linked into every test through mpx_test_main.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

// Whether a child forked while other threads allocate may allocate itself. glibc's malloc makes
// sure of it (its locks are taken around fork and reset in the child); AddressSanitizer's runtime
// in GCC 12 (and in LLVM before 18, which added a pthread_atfork handler for its allocator:
// llvm/llvm-project#75290) does not: a child forked while another thread holds one of the
// allocator's spin locks inherits it held and spins forever on the first allocation that needs
// it. Nothing a library does can help when it must fork a copy of a multi-threaded program (the
// pool's spawner is one by design). Tests that fork while their own threads allocate do that
// only where this holds.
#if defined(__SANITIZE_ADDRESS__)
#define MPX_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MPX_TEST_ASAN 1
#endif
#endif

namespace mpx::test {

#if defined(MPX_TEST_ASAN) && !(defined(__clang__) && __clang_major__ >= 18)
inline constexpr bool kForkWhileThreadsAllocateIsSafe = false;
#else
inline constexpr bool kForkWhileThreadsAllocateIsSafe = true;
#endif

// Another thread that only sleeps, from construction (once past its start, which allocates) to
// destruction: makes the process multi-threaded, so a Pool built meanwhile forks its workers
// from its spawner, without forking while a thread allocates (kForkWhileThreadsAllocateIsSafe).
class SleepingThread {
 public:
  SleepingThread();
  ~SleepingThread();
  SleepingThread(const SleepingThread&) = delete;
  SleepingThread& operator=(const SleepingThread&) = delete;

 private:
  std::atomic<bool> stop_{false}, running_{false};
  std::thread thread_;
};

// A fresh directory under $TMPDIR (which ctest points at the build tree), removed with
// everything in it at scope exit.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "mpx-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const noexcept { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Writes `content` to `path` and gives it `mode`.
std::string write_file(const std::string& path, const std::string& content, mode_t mode = 0600);
std::string slurp(const std::string& path);

// A program run as a child process, its stdout and stderr in `log`; killed and reaped at scope
// exit if still running.
class ChildProcess {
 public:
  ChildProcess(const std::vector<std::string>& args, std::string log);
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;
  // The exit code (-N for signal N), or nullopt if still running after `timeout`.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  void signal(int sig);
  std::string output() const { return slurp(log_); }
  pid_t pid() const noexcept { return pid_; }

 private:
  std::string log_;
  pid_t pid_ = 0;
  int pidfd_ = -1;
  std::optional<int> status_;
};

// Runs a program to its end (at most `timeout`): its exit code, nullopt if it did not end.
std::optional<int> run(const std::vector<std::string>& args, const std::string& log,
                       std::chrono::milliseconds timeout = std::chrono::seconds(30));

// The python3 on PATH, for the tests that talk to stock Python; nullopt without one.
std::optional<std::string> find_python3();

// Whether a Unix socket at `path` is listening (its file appears at bind(), before listen()).
bool unix_socket_listening(const std::string& path);
// Binds `var` to python3's path, or ends the test case with a message when there is none.
#define MPX_REQUIRE_PYTHON(var)                                 \
  auto var = ::mpx::test::find_python3();                       \
  if (!var) {                                                   \
    MESSAGE("python3 not found on PATH: this test is skipped"); \
    return;                                                     \
  }

// The test process adopts orphaned descendants while this lives, so it can reap them and see
// how they died.
struct Subreaper {
  Subreaper();
  ~Subreaper();
  Subreaper(const Subreaper&) = delete;
  Subreaper& operator=(const Subreaper&) = delete;
};
// Waits (bounded) for an adopted pid and returns its wait status, or -1.
int reap_adopted(pid_t pid, std::chrono::milliseconds limit = std::chrono::seconds(5));

// Descriptors open in this process now.
std::size_t open_fds();

// Descriptors open in this process now, each with what it refers to (its /proc/self/fd link:
// a path, "socket:[inode]", "pipe:[inode]", "anon_inode:[eventfd]"...).
using FdSet = std::map<int, std::string>;
FdSet open_fd_set();
// What differs between two snapshots, one line per descriptor ("+7 socket:[1234]" opened,
// "-7 ..." closed, "~7 a -> b" replaced); empty when they are the same.
std::string fd_changes(const FdSet& before, const FdSet& after);

// Resident memory of a process, in bytes (0 if it is gone).
std::size_t resident_bytes(pid_t pid);

// Whether process `pid` is gone (or a zombie: ended, not yet reaped) within `within`.
bool gone(pid_t pid, std::chrono::milliseconds within);

// The parent of a live process (from /proc/<pid>/stat), 0 if it cannot be read.
pid_t parent_of(pid_t pid);

// A fixture: children inherit signal handlers, among them the test framework's crash reporter;
// children the tests terminate should just die.
struct PlainSignals {
  PlainSignals();
};

}  // namespace mpx::test
