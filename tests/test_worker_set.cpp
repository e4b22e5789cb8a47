// WorkerSet (lib/src/process/worker_set.hpp): the supervisor under the pool's spawner and
// serve_tasks. Real children, real signals; every case ends with no child and no fd left.
#include "process/worker_set.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "support.hpp"

using namespace std::chrono_literals;
using mpx::detail::WorkerSet;
using Clock = std::chrono::steady_clock;

namespace {

mpx::detail::ForkOptions named(std::string name) {
  mpx::detail::ForkOptions o;
  o.name = std::move(name);
  return o;
}

// Children inherit the test framework's crash handlers (installed for each test case): the
// children these tests terminate should just die.
struct PlainSignals {
  PlainSignals() { ::signal(SIGTERM, SIG_DFL); }
};

[[noreturn]] int sleep_forever() {
  for (;;) ::pause();
}

// Polls the sentinels as a caller's loop would until `n` exits were reaped or `limit` passed.
std::vector<WorkerSet::Exit> wait_for_exits(WorkerSet& ws, std::size_t n, Clock::duration limit = 10s) {
  std::vector<WorkerSet::Exit> exits;
  auto deadline = Clock::now() + limit;
  while (exits.size() < n && Clock::now() < deadline) {
    std::vector<pollfd> fds;
    for (int fd : ws.sentinels()) fds.push_back({fd, POLLIN, 0});
    ::poll(fds.data(), fds.size(), 100);
    for (auto& e : ws.reap()) exits.push_back(e);
  }
  return exits;
}

bool gone(pid_t pid) {  // reaped by us, so neither running nor a zombie
  int status;
  return ::waitpid(pid, &status, WNOHANG) == -1 && errno == ECHILD && ::kill(pid, 0) == -1;
}

// Every case: the fds it opened are closed and its children reaped when the set is gone.
struct NoLeaks {
  PlainSignals plain;
  std::size_t fds = mpx::test::open_fds();
  std::vector<pid_t> pids;
  ~NoLeaks() {
    CHECK(mpx::test::open_fds() == fds);
    for (pid_t p : pids) CHECK(gone(p));
  }
};

}  // namespace

TEST_CASE("a killed worker is reported with its slot and -SIGKILL; the others keep running") {
  NoLeaks check;
  {
    WorkerSet ws(3);
    std::vector<pid_t> pids;
    for (std::size_t slot : ws.due()) pids.push_back(ws.start(slot, named("W"), sleep_forever).pid);
    check.pids = pids;
    REQUIRE(pids.size() == 3);
    CHECK(ws.due().empty());
    CHECK(ws.sentinels().size() == 3);

    CHECK(ws.signal(1, SIGKILL));
    auto exits = wait_for_exits(ws, 1);
    REQUIRE(exits.size() == 1);
    CHECK(exits[0].slot == 1);
    CHECK(exits[0].generation == 1);
    CHECK(exits[0].pid == pids[1]);
    CHECK(exits[0].exitcode == -SIGKILL);
    CHECK(gone(pids[1]));

    // The others are untouched: still running, and nothing more to report.
    CHECK(ws.running() == 2);
    CHECK(ws.occupied(0));
    CHECK(!ws.occupied(1));
    CHECK(ws.occupied(2));
    CHECK(::kill(pids[0], 0) == 0);
    CHECK(::kill(pids[2], 0) == 0);
    CHECK(wait_for_exits(ws, 1, 200ms).empty());

    auto stopped = ws.stop(5s);
    REQUIRE(stopped.size() == 2);
    for (auto& e : stopped) CHECK(e.exitcode == -SIGTERM);
    CHECK(ws.running() == 0);
  }
}

TEST_CASE("an exit status is reported as is, with the generation the worker was started as") {
  NoLeaks check;
  WorkerSet ws;
  auto started = ws.start(
      4, named("W"), [] { return 7; }, 42u);
  check.pids = {started.pid};
  CHECK(started.generation == 42);
  CHECK(ws.slots() == 5);  // grows to hold the slot
  auto exits = wait_for_exits(ws, 1);
  REQUIRE(exits.size() == 1);
  CHECK(exits[0].slot == 4);
  CHECK(exits[0].generation == 42);
  CHECK(exits[0].pid == started.pid);
  CHECK(exits[0].exitcode == 7);
  CHECK(exits[0].lived > Clock::duration::zero());
  CHECK(ws.running() == 0);
}

TEST_CASE("a worker does not inherit its siblings' sentinels") {
  NoLeaks check;
  WorkerSet ws(2);
  auto first = ws.start(0, named("W"), sleep_forever);
  const int sentinel = ws.sentinels().at(0);
  auto second = ws.start(1, named("W"), [sentinel] { return ::fcntl(sentinel, F_GETFD) == -1 ? 0 : 3; });
  check.pids = {first.pid, second.pid};
  auto exits = wait_for_exits(ws, 1);
  REQUIRE(exits.size() == 1);
  CHECK(exits[0].slot == 1);
  CHECK(exits[0].exitcode == 0);
}

TEST_CASE("crash-loop back-off: a worker that dies at once is due again only after the pause") {
  NoLeaks check;
  WorkerSet ws(1);  // the default rule: dead within 1 s, replaced after 500 ms
  check.pids.push_back(ws.start(0, named("W"), [] { return 1; }).pid);
  std::vector<WorkerSet::Exit> exits;
  Clock::time_point before_reap;
  for (auto deadline = Clock::now() + 10s; exits.empty() && Clock::now() < deadline;) {
    ::usleep(1000);
    before_reap = Clock::now();
    exits = ws.reap();
  }
  REQUIRE(exits.size() == 1);
  CHECK(exits[0].lived < 1s);
  CHECK(ws.start_allowed_at(0) >= before_reap + 500ms);
  CHECK(ws.due().empty());
  CHECK(ws.ms_until_due() > 0);
  CHECK(ws.ms_until_due() <= 500);

  // A caller's loop: sleep in poll() as told until the slot is due, then start it again.
  while (ws.due().empty()) ::poll(nullptr, 0, ws.ms_until_due());
  auto waited = Clock::now() - before_reap;
  CHECK(waited >= 500ms);
  CHECK(waited < 5s);  // generous for a loaded machine
  auto again = ws.start(0, named("W"), [] { return 0; });
  check.pids.push_back(again.pid);
  CHECK(again.generation == 2);
  REQUIRE(wait_for_exits(ws, 1).size() == 1);
}

TEST_CASE("a worker that lived past the crash window is due again at once") {
  NoLeaks check;
  WorkerSet ws(1, {.crash_window = 100ms, .crash_pause = 10s});
  check.pids.push_back(ws.start(0, named("W"), [] {
                           ::usleep(300'000);
                           return 0;
                         }).pid);
  auto exits = wait_for_exits(ws, 1);
  REQUIRE(exits.size() == 1);
  CHECK(exits[0].lived >= 300ms);
  CHECK(ws.due() == std::vector<std::size_t>{0});
  CHECK(ws.ms_until_due() == 0);
}

TEST_CASE("stop() gives SIGTERM a grace, then SIGKILLs a worker that ignores it") {
  NoLeaks check;
  WorkerSet ws(2);
  int ready[2];
  REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
  check.pids.push_back(ws.start(0, named("stubborn"), [&] {
                           ::signal(SIGTERM, SIG_IGN);
                           char c = 1;
                           (void)!::write(ready[1], &c, 1);
                           for (;;) ::pause();
                           return 0;
                         }).pid);
  check.pids.push_back(ws.start(1, named("polite"), sleep_forever).pid);
  ::close(ready[1]);
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);  // SIGTERM is ignored from here on
  ::close(ready[0]);

  auto t0 = Clock::now();
  auto exits = ws.stop(300ms);
  auto took = Clock::now() - t0;
  CHECK(took >= 300ms);
  CHECK(took < 10s);
  REQUIRE(exits.size() == 2);
  for (auto& e : exits) CHECK(e.exitcode == (e.slot == 0 ? -SIGKILL : -SIGTERM));
  CHECK(ws.running() == 0);
}

TEST_CASE("kill_all() and the destructor leave no child behind") {
  NoLeaks check;
  {
    WorkerSet ws(2);
    for (std::size_t slot : ws.due()) check.pids.push_back(ws.start(slot, named("W"), sleep_forever).pid);
    auto exits = ws.kill_all();
    REQUIRE(exits.size() == 2);
    for (auto& e : exits) CHECK(e.exitcode == -SIGKILL);
    // Killed within the crash window counts as a crash: the back-off holds, start() does not.
    CHECK(ws.due().empty());
    for (std::size_t slot : {0, 1}) check.pids.push_back(ws.start(slot, named("W"), sleep_forever).pid);
    CHECK(ws.running() == 2);
  }  // ~WorkerSet kills and reaps these two
  CHECK(check.pids.size() == 4);
}

TEST_CASE("one child's sentinel and liveness by slot and generation; wait_all reaps and reports them all") {
  NoLeaks check;
  WorkerSet ws;
  auto a = ws.start(0, named("A"), [] { return 3; });
  auto b = ws.start(1, named("B"), [] { return 4; });
  check.pids = {a.pid, b.pid};
  CHECK(ws.running(0, a.generation));
  CHECK(ws.running(1, b.generation));
  CHECK_FALSE(ws.running(0, a.generation + 1));
  CHECK_FALSE(ws.running(2, 1));
  int fd = ws.sentinel(1, b.generation);
  CHECK(fd >= 0);
  auto all = ws.sentinels();
  CHECK(std::find(all.begin(), all.end(), fd) != all.end());
  CHECK(ws.sentinel(0, a.generation + 1) == -1);
  pollfd p{fd, POLLIN, 0};
  CHECK(::poll(&p, 1, 10000) == 1);  // readable once B ended

  auto exits = ws.wait_all(10s);
  REQUIRE(exits.size() == 2);
  CHECK(exits[0].slot == 0);
  CHECK(exits[0].exitcode == 3);
  CHECK(exits[1].slot == 1);
  CHECK(exits[1].exitcode == 4);
  CHECK_FALSE(ws.running(0, a.generation));
  CHECK(ws.sentinel(1, b.generation) == -1);
  CHECK(ws.reap().empty());  // each exit is reported once
}
