// Children watched through pipes instead of pidfds, as on kernels older than Linux 5.3 (no
// pidfd_open): CTest runs this program with MPX_NO_PIDFD=1 (tests/CMakeLists.txt), which the
// library reads once, so the switch holds from the start for every process it starts.
// Process under fork, forkserver and spawn, and Pool workers (forked directly, and started by the
// spawner of a forkserver or spawn pool) are all watched by their pipe, never by a pidfd.
#include <mpx/context.hpp>
#include <mpx/mpx.hpp>
#include <support.hpp>

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

// Spawn children can be given only shared objects made after the program chose spawn.
struct PlainSignals : mpx::test::PlainSignals {
  PlainSignals() { (void)mpx::get_context(mpx::StartMethod::spawn); }
};

const mpx::StartMethod kMethods[] = {mpx::StartMethod::fork, mpx::StartMethod::forkserver,
                                     mpx::StartMethod::spawn};

mpx::Process::Options with(mpx::StartMethod method, bool daemon = false) {
  return {.name = "", .daemon = daemon, .context = mpx::get_context(method)};
}

bool pipes_forced() {
  const char* v = std::getenv("MPX_NO_PIDFD");
  return v && std::string(v) == "1";
}

// What descriptor fd of this process is ("pipe:[123]", "anon_inode:[pidfd]"...).
std::string fd_kind(int fd) {
  auto all = mpx::test::open_fd_set();
  auto it = all.find(fd);
  return it == all.end() ? "closed" : it->second;
}

// pidfds open in process `pid` (0: this one): none at all while the switch is on.
int pidfds_open(pid_t pid = 0) {
  std::string dir = "/proc/" + (pid ? std::to_string(pid) : std::string("self")) + "/fd";
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string().find("pidfd") != std::string::npos) ++n;
  }
  return n;
}

// Readable within `ms` (0: now)?
bool readable(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do r = ::poll(&p, 1, ms);
  while (r < 0 && errno == EINTR);
  return r == 1;
}

void exit_with(int code) { std::exit(code); }
void raise_signal(int sig) { ::raise(sig); }
[[noreturn]] void sleeper() {
  for (;;) ::pause();
}
// Ends with 3 once `go` is set (or 4 after 60 s, so it never outlives the test).
void wait_then_exit(mpx::Event go) { std::exit(go.wait(60s) ? 3 : 4); }

int square(int x) { return x * x; }
int pid_of(int) { return static_cast<int>(::getpid()); }

using mpx::test::gone;

// pool(2) maps; one of its workers, SIGKILLed while idle, is replaced and the pool keeps working.
void check_pool_replaces_a_killed_worker(mpx::Pool& pool) {
  std::vector<int> xs(40);
  for (int i = 0; i < 40; ++i) xs[static_cast<std::size_t>(i)] = i;
  auto squares = pool.map(&square, xs, 1);
  REQUIRE(squares.size() == xs.size());
  for (int i = 0; i < 40; ++i) CHECK(squares[static_cast<std::size_t>(i)] == i * i);

  std::set<int> before;
  for (int p : pool.map(&pid_of, std::vector<int>(20, 0), 1)) before.insert(p);
  REQUIRE(!before.empty());
  CHECK(before.size() <= 2);
  CHECK(before.count(::getpid()) == 0);
  pid_t victim = *before.begin();
  // Whoever watches the workers (this process, or a forkserver or spawn pool's spawner) holds
  // no pidfd for them.
  pid_t watcher = mpx::test::parent_of(victim);
  REQUIRE(watcher > 0);
  CHECK(pidfds_open(watcher) == 0);
  REQUIRE(::kill(victim, SIGKILL) == 0);
  CHECK(gone(victim, 10s));
  auto again = pool.map(&square, xs, 1);
  REQUIRE(again.size() == xs.size());
  CHECK(again[39] == 39 * 39);
  std::set<int> after;
  for (int p : pool.map(&pid_of, std::vector<int>(20, 0), 1)) after.insert(p);
  CHECK(after.count(victim) == 0);
  CHECK(after.size() <= 2);
  CHECK(pool.apply(&square, 12) == 144);
}

}  // namespace

TEST_SUITE("process: pipe sentinels") {
  TEST_CASE("this program runs with MPX_NO_PIDFD=1 (CTest sets it)") {
    REQUIRE_MESSAGE(pipes_forced(), "run it through ctest, or with MPX_NO_PIDFD=1 in the environment");
  }

  TEST_CASE_FIXTURE(PlainSignals, "exit codes under fork, forkserver and spawn") {
    for (auto method : kMethods) {
      const std::string method_name(mpx::to_string(method));
      CAPTURE(method_name);
      mpx::Process ok(with(method), &exit_with, 0);
      ok.start();
      REQUIRE(ok.join(30s));
      CHECK(ok.exitcode() == 0);

      mpx::Process seven(with(method), &exit_with, 7);
      seven.start();
      REQUIRE(seven.join(30s));
      CHECK(seven.exitcode() == 7);

      mpx::Process usr1(with(method), &raise_signal, SIGUSR1);
      usr1.start();
      REQUIRE(usr1.join(30s));
      CHECK(usr1.exitcode() == -SIGUSR1);

      mpx::Process killed(with(method), &sleeper);
      killed.start();
      CHECK(killed.is_alive());
      killed.kill();
      REQUIRE(killed.join(30s));
      CHECK(killed.exitcode() == -SIGKILL);
    }
    CHECK(mpx::active_children().empty());
  }

  TEST_CASE_FIXTURE(PlainSignals, "the sentinel is a pipe, readable only once the child has ended") {
    for (auto method : kMethods) {
      const std::string method_name(mpx::to_string(method));
      CAPTURE(method_name);
      mpx::Event go;
      mpx::Process p(with(method), &wait_then_exit, go);
      p.start();
      int s = p.sentinel();
      CHECK(fd_kind(s).rfind("pipe:", 0) == 0);
      CHECK(pidfds_open() == 0);
      CHECK_FALSE(readable(s, 200));
      CHECK(p.is_alive());
      CHECK_FALSE(readable(s, 0));
      go.set();
      CHECK(readable(s, 30000));
      REQUIRE(p.join(30s));
      CHECK(p.exitcode() == 3);
      CHECK_FALSE(p.is_alive());
    }
  }

  TEST_CASE_FIXTURE(PlainSignals, "join(timeout) times out on a live child; terminate ends it") {
    for (auto method : kMethods) {
      const std::string method_name(mpx::to_string(method));
      CAPTURE(method_name);
      mpx::Process p(with(method), &sleeper);
      p.start();
      CHECK(p.is_alive());
      auto t0 = std::chrono::steady_clock::now();
      CHECK_FALSE(p.join(100ms));
      CHECK(std::chrono::steady_clock::now() - t0 >= 100ms);
      CHECK_FALSE(p.exitcode().has_value());
      CHECK_FALSE(readable(p.sentinel(), 0));
      CHECK(pidfds_open() == 0);
      p.terminate();  // kill(pid), there being no pidfd to signal through
      CHECK(readable(p.sentinel(), 30000));
      REQUIRE(p.join(30s));
      CHECK(p.exitcode() == -SIGTERM);
      CHECK_FALSE(p.is_alive());
      CHECK(p.join(0ms));  // ended: an expired timeout still succeeds
    }
    CHECK(mpx::active_children().empty());
  }

  TEST_CASE_FIXTURE(PlainSignals, "Pool(2) maps and replaces a killed worker, forked directly") {
    mpx::Pool pool(2);
    check_pool_replaces_a_killed_worker(pool);
    CHECK(pidfds_open() == 0);
    pool.close();
    pool.join();
  }

  TEST_CASE_FIXTURE(PlainSignals, "Pool(2) maps and replaces a killed worker, started by the spawner") {
    for (auto method : {mpx::StartMethod::forkserver, mpx::StartMethod::spawn}) {
      const std::string method_name(mpx::to_string(method));
      CAPTURE(method_name);
      mpx::Pool pool({.processes = 2, .context = mpx::get_context(method)});
      check_pool_replaces_a_killed_worker(pool);
      CHECK(pidfds_open() == 0);
      pool.close();
      pool.join();
    }
  }

  TEST_CASE_FIXTURE(PlainSignals, "nothing is left behind") {
    {  // what the library makes once per process (the fork server, its socket) is there already
      mpx::Process warm(with(mpx::StartMethod::forkserver), &exit_with, 0);
      warm.start();
      REQUIRE(warm.join(30s));
    }
    const auto before = mpx::test::open_fd_set();
    for (auto method : kMethods) {
      const std::string method_name(mpx::to_string(method));
      CAPTURE(method_name);
      mpx::Process a(with(method), &exit_with, 5);
      a.start();
      REQUIRE(a.join(30s));
      CHECK(a.exitcode() == 5);
      mpx::Process b(with(method), &sleeper);
      b.start();
      b.terminate();
      REQUIRE(b.join(30s));
      mpx::Process c(with(method, true), &sleeper);
      c.start();
    }  // ~Process terminates the daemon c and joins it
    {
      mpx::Pool pool(2);
      CHECK(pool.apply(&square, 9) == 81);
      pool.close();
      pool.join();
    }
    CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
    CHECK(mpx::active_children().empty());
  }
}
