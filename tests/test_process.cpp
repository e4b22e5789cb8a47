#include <mpx/detail/shm.hpp>
#include <mpx/process.hpp>
#include <support.hpp>

#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__SANITIZE_THREAD__)
// Some tests start threads in children of a multi-threaded parent (the case this library handles).
extern "C" const char* __tsan_default_options() { return "die_after_fork=0"; }
#endif

using namespace std::chrono_literals;

namespace {

const mpx::Process::Options kDaemon{"", true};

// Children inherit signal handlers, among them the test framework's crash reporter (installed for
// each test case): children these tests terminate or abort should just die.
struct PlainSignals {
  PlainSignals() {
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGABRT, SIG_DFL);
  }
};

[[noreturn]] void sleep_forever() {
  for (;;) ::pause();
}

mpx::detail::ForkOptions helper_options(std::string name) {
  mpx::detail::ForkOptions o;
  o.name = std::move(name);
  return o;
}

// What children report back: plain shared memory, since a doctest CHECK in a child is lost.
struct Board {
  std::atomic<int> ints[16];
  std::atomic<pid_t> pids[8];
  char text[4][128];
};

std::shared_ptr<Board> board() { return mpx::detail::make_shared_object<Board>(); }

void put_text(char* dst, const std::string& s) { std::snprintf(dst, 128, "%s", s.c_str()); }

std::size_t count_fds() {
  std::size_t n = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

bool reaped(pid_t pid) {  // not our child any more (no zombie left behind)
  int status;
  return ::waitpid(pid, &status, WNOHANG) == -1 && errno == ECHILD;
}

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 5000ms) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return pred();
}

// Redirects a standard fd into a pipe for the duration of a scope; read() collects what arrived.
class Capture {
 public:
  explicit Capture(int fd) : fd_(fd) {
    std::fflush(nullptr);
    REQUIRE(::pipe(p_) == 0);
    saved_ = ::dup(fd_);
    ::dup2(p_[1], fd_);
  }
  ~Capture() { restore(); }
  void restore() {
    if (saved_ >= 0) {
      std::fflush(nullptr);
      ::dup2(saved_, fd_);
      ::close(saved_);
      ::close(p_[1]);
      saved_ = -1;
    }
  }
  // Everything written, once every writer (children included) has closed its end.
  std::string read() {
    restore();
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(p_[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
    ::close(p_[0]);
    p_[0] = -1;
    return out;
  }

 private:
  int fd_;
  int p_[2] = {-1, -1};
  int saved_ = -1;
};

// At scope exit, kills and reaps each listed process that is still our child (never a pid
// already reaped, which may belong to someone else by now), in order: a parent listed before
// its children hands them to us (see mpx::test::Subreaper) before we get to them. A failing test thus
// leaves nothing behind.
struct KillOnExit {
  std::vector<pid_t> pids;
  ~KillOnExit() {
    for (pid_t p : pids) {
      siginfo_t info{};
      if (p <= 0 || ::waitid(P_PID, static_cast<id_t>(p), &info, WEXITED | WNOHANG | WNOWAIT) != 0) continue;
      ::kill(p, SIGKILL);
      int status;
      ::waitpid(p, &status, 0);
    }
  }
};

std::atomic<pid_t> g_main_pid{::getpid()};
std::shared_ptr<Board> g_atexit_board;
void atexit_marker() {
  if (::getpid() != g_main_pid.load() && g_atexit_board) g_atexit_board->ints[0] = 1;
}
struct StaticDtorMarker {
  ~StaticDtorMarker() {
    if (::getpid() != g_main_pid.load() && g_atexit_board) g_atexit_board->ints[1] = 1;
  }
} g_static_marker;

}  // namespace

TEST_SUITE("process") {
  TEST_CASE_FIXTURE(PlainSignals, "constructor templates never hijack copy or move") {
    static_assert(!std::is_copy_constructible_v<mpx::Process>);
    static_assert(!std::is_copy_assignable_v<mpx::Process>);
    static_assert(std::is_nothrow_move_constructible_v<mpx::Process>);
    static_assert(std::is_nothrow_move_assignable_v<mpx::Process>);
    static_assert(!std::is_constructible_v<mpx::Process, int>);            // not callable
    static_assert(!std::is_constructible_v<mpx::Process, void (*)(int)>);  // missing argument
    static_assert(std::is_constructible_v<mpx::Process, void (*)(int), int>);
    static_assert(!std::is_convertible_v<void (*)(), mpx::Process>);  // explicit

    mpx::Process p([] {});
    mpx::Process q(std::move(p));
    CHECK(q.name().rfind("Process-", 0) == 0);
    q.start();
    CHECK(q.join(10s));
    CHECK(q.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "mp1: child sees its own pid and the parent's pid") {
    auto b = board();
    pid_t parent = ::getpid();
    mpx::Process p([b] {
      b->pids[0] = ::getpid();
      b->pids[1] = ::getppid();
    });
    CHECK(p.pid() == 0);
    p.start();
    REQUIRE(p.join(10s));
    CHECK(p.exitcode() == 0);
    CHECK(b->pids[0] == p.pid());
    CHECK(b->pids[0] != parent);
    CHECK(b->pids[1] == parent);
    CHECK(reaped(p.pid()));
  }

  TEST_CASE_FIXTURE(PlainSignals, "capturing lambdas, function pointers, functors, move-only arguments") {
    auto b = board();
    std::string word = "hello";
    mpx::Process a(
        [b, word](int x, const std::string& s) { b->ints[0] = x + static_cast<int>(s.size() + word.size()); },
        10, std::string("abc"));
    struct MoveOnly {
      std::unique_ptr<int> v;
      void operator()(std::unique_ptr<int> extra, std::shared_ptr<Board> bb) { bb->ints[1] = *v + *extra; }
    };
    mpx::Process c(MoveOnly{std::make_unique<int>(40)}, std::make_unique<int>(2), b);
    a.start();
    c.start();
    CHECK(a.join(10s));
    CHECK(c.join(10s));
    CHECK(b->ints[0] == 18);
    CHECK(b->ints[1] == 42);
  }

  TEST_CASE_FIXTURE(PlainSignals, "after start the parent's copy of target and arguments is gone") {
    auto token = std::make_shared<int>(1);
    mpx::Process p(
        kDaemon, [token](std::shared_ptr<int> again) { (void)again; }, token);
    CHECK(token.use_count() == 3);
    p.start();
    CHECK(token.use_count() == 1);
    CHECK(p.join(10s));
  }

  TEST_CASE_FIXTURE(PlainSignals, "exit codes follow Python") {
    mpx::Process ok([] {});
    mpx::Process ex([] { std::exit(7); });
    mpx::Process underscore([] { ::_exit(9); });
    mpx::Process killed([] { ::raise(SIGKILL); });
    mpx::Process aborted([] { std::abort(); });
    for (auto* p : {&ok, &ex, &underscore, &killed, &aborted}) p->start();
    for (auto* p : {&ok, &ex, &underscore, &killed, &aborted}) REQUIRE(p->join(10s));
    CHECK(ok.exitcode() == 0);
    CHECK(ex.exitcode() == 7);
    CHECK(underscore.exitcode() == 9);
    CHECK(killed.exitcode() == -SIGKILL);
    CHECK(aborted.exitcode() == -SIGABRT);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "a target that throws prints 'Process <name>:' and the exception, exit code 1") {
    Capture err(STDERR_FILENO);
    mpx::Process p({"thrower", false}, [] { throw std::runtime_error("boom in child"); });
    mpx::Process q([] { throw 42; });
    p.start();
    q.start();
    err.restore();
    REQUIRE(p.join(10s));
    REQUIRE(q.join(10s));
    std::string text = err.read();
    CHECK(p.exitcode() == 1);
    CHECK(q.exitcode() == 1);
    CHECK(text.find("Process thrower:\nstd::runtime_error: boom in child\n") != std::string::npos);
    CHECK(text.find("Process " + q.name() + ":\nint\n") != std::string::npos);
  }

  TEST_CASE_FIXTURE(PlainSignals, "stdio: flushed before fork (no duplicates) and at the child's exit") {
    Capture out(STDOUT_FILENO);
    std::printf("parent-before;");  // buffered: start() must flush it once, not let the child copy it
    mpx::Process p([] { std::printf("child-unflushed;"); });
    p.start();
    REQUIRE(p.join(10s));
    std::printf("parent-after;");
    CHECK(out.read() == "parent-before;child-unflushed;parent-after;");
  }

  TEST_CASE_FIXTURE(PlainSignals, "the child runs no atexit handlers or static destructors of the parent") {
    g_atexit_board = board();
    std::atexit(atexit_marker);
    mpx::Process normal([] {});
    mpx::Process thrower([] { throw std::logic_error("x"); });
    Capture err(STDERR_FILENO);
    normal.start();
    thrower.start();
    err.restore();
    CHECK(normal.join(10s));
    CHECK(thrower.join(10s));
    (void)err.read();
    CHECK(g_atexit_board->ints[0] == 0);
    CHECK(g_atexit_board->ints[1] == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "join with timeout, is_alive, terminate, kill, sentinel") {
    KillOnExit guard;
    mpx::Process p(kDaemon, [] { sleep_forever(); });
    CHECK_FALSE(p.is_alive());
    CHECK(p.exitcode() == std::nullopt);
    p.start();
    guard.pids.push_back(p.pid());
    CHECK(p.is_alive());
    auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(p.join(50ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
    CHECK(p.exitcode() == std::nullopt);
    pollfd pfd{p.sentinel(), POLLIN, 0};
    CHECK(::poll(&pfd, 1, 0) == 0);
    p.terminate();
    CHECK(::poll(&pfd, 1, 10000) == 1);
    REQUIRE(p.join(10s));
    CHECK_FALSE(p.is_alive());
    CHECK(p.exitcode() == -SIGTERM);
    p.terminate();  // after the end: nothing happens
    p.kill();
    CHECK(p.exitcode() == -SIGTERM);
    CHECK(reaped(p.pid()));

    mpx::Process q(kDaemon, [] {
      ::signal(SIGTERM, SIG_IGN);
      sleep_forever();
    });
    q.start();
    guard.pids.push_back(q.pid());
    q.kill();
    REQUIRE(q.join(10s));
    CHECK(q.exitcode() == -SIGKILL);
  }

  TEST_CASE_FIXTURE(PlainSignals, "state errors: start twice, use before start") {
    mpx::Process p([] {});
    CHECK_THROWS_AS(p.join(), mpx::StateError);
    CHECK_THROWS_AS(p.terminate(), mpx::StateError);
    CHECK_THROWS_AS(p.kill(), mpx::StateError);
    CHECK_THROWS_AS((void)p.sentinel(), mpx::StateError);
    p.start();
    CHECK_THROWS_AS(p.start(), mpx::StateError);
    CHECK(p.join(10s));
    CHECK_THROWS_AS(p.start(), mpx::StateError);
    mpx::Process moved_to(std::move(p));
    CHECK_THROWS_AS(p.join(), mpx::StateError);  // NOLINT(bugprone-use-after-move): moved-from is defined
    CHECK(moved_to.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "names, daemon flag, current_process and parent_process") {
    mpx::Process a([] {});
    mpx::Process b([] {});
    mpx::Process named({"worker", true}, [] {});
    mpx::Process empty_name({"", false}, [] {});
    auto number = [](const std::string& n) { return std::stoi(n.substr(std::string("Process-").size())); };
    REQUIRE(a.name().rfind("Process-", 0) == 0);
    CHECK(number(b.name()) == number(a.name()) + 1);
    CHECK(named.name() == "worker");
    CHECK(number(empty_name.name()) == number(a.name()) + 3);
    CHECK_FALSE(a.daemon());
    CHECK(named.daemon());

    auto main_info = mpx::current_process();
    CHECK(main_info.name == "MainProcess");
    CHECK(main_info.pid == ::getpid());
    CHECK_FALSE(main_info.daemon);
    CHECK_FALSE(mpx::parent_process().has_value());

    auto bd = board();
    mpx::Process child({"kid", true}, [bd] {
      auto me = mpx::current_process();
      auto parent = mpx::parent_process();
      put_text(bd->text[0], me.name);
      bd->pids[0] = me.pid;
      bd->ints[0] = me.daemon;
      bd->ints[1] = parent.has_value();
      if (parent) {
        put_text(bd->text[1], parent->name);
        bd->pids[1] = parent->pid;
      }
      mpx::Process grandchild([] {});  // names nest like Python's: Process-<n>:<m>
      put_text(bd->text[2], grandchild.name());
      grandchild.start();
      grandchild.join();
    });
    child.start();
    REQUIRE(child.join(10s));
    CHECK(child.exitcode() == 0);
    CHECK(std::string(bd->text[0]) == "kid");
    CHECK(bd->pids[0] == child.pid());
    CHECK(bd->ints[0] == 1);
    CHECK(bd->ints[1] == 1);
    CHECK(std::string(bd->text[1]) == "MainProcess");
    CHECK(bd->pids[1] == ::getpid());
    std::string grandchild_name = bd->text[2];
    CHECK(grandchild_name.rfind("Process-", 0) == 0);
    CHECK(grandchild_name.find(':') != std::string::npos);
    CHECK(grandchild_name.substr(grandchild_name.find(':')) == ":1");
  }

  TEST_CASE_FIXTURE(PlainSignals, "another process may read pid/name/daemon but not join, signal or poll") {
    auto bd = board();
    KillOnExit guard;
    mpx::Process sleeper(kDaemon, [] { sleep_forever(); });
    sleeper.start();
    guard.pids.push_back(sleeper.pid());
    mpx::Process prober([&sleeper, bd] {
      int refused = 0;
      auto expect_state_error = [&](auto fn) {
        try {
          fn();
        } catch (const mpx::StateError&) {
          ++refused;
        }
      };
      expect_state_error([&] { sleeper.join(1ms); });
      expect_state_error([&] { (void)sleeper.is_alive(); });
      expect_state_error([&] { (void)sleeper.exitcode(); });
      expect_state_error([&] { sleeper.terminate(); });
      expect_state_error([&] { sleeper.kill(); });
      expect_state_error([&] { sleeper.start(); });
      bd->ints[0] = refused;
      bd->pids[0] = sleeper.pid();
      bd->ints[1] = sleeper.name().empty() ? 0 : 1;
      bd->ints[2] = sleeper.daemon();
    });
    prober.start();
    REQUIRE(prober.join(10s));
    CHECK(prober.exitcode() == 0);
    CHECK(bd->ints[0] == 6);
    CHECK(bd->pids[0] == sleeper.pid());
    CHECK(bd->ints[1] == 1);
    CHECK(bd->ints[2] == 1);
    CHECK(sleeper.is_alive());  // the prober's attempts did nothing to it
    sleeper.kill();
    CHECK(sleeper.join(10s));
  }

  TEST_CASE_FIXTURE(PlainSignals, "active_children lists live children and reaps finished ones") {
    KillOnExit guard;
    mpx::Process a(kDaemon, [] { sleep_forever(); });
    mpx::Process b(kDaemon, [] { sleep_forever(); });
    a.start();
    b.start();
    guard.pids = {a.pid(), b.pid()};
    auto kids = mpx::active_children();
    CHECK(std::set<pid_t>(kids.begin(), kids.end()) >= std::set<pid_t>{a.pid(), b.pid()});
    ::kill(a.pid(), SIGKILL);  // behind the Process's back: active_children must notice and reap
    CHECK(eventually([&] {
      auto k = mpx::active_children();
      return std::find(k.begin(), k.end(), a.pid()) == k.end();
    }));
    CHECK(reaped(a.pid()));
    CHECK(a.exitcode() == -SIGKILL);  // the status was kept for the Process
    kids = mpx::active_children();
    CHECK(std::find(kids.begin(), kids.end(), b.pid()) != kids.end());
    b.kill();
    CHECK(b.join(10s));
    kids = mpx::active_children();
    CHECK(std::find(kids.begin(), kids.end(), b.pid()) == kids.end());
  }

  TEST_CASE_FIXTURE(PlainSignals, "never steals the status of children it did not start") {
    pid_t other = ::fork();
    if (other == 0) ::_exit(33);
    mpx::Process p([] {});
    p.start();
    CHECK(p.join(10s));
    (void)mpx::active_children();
    int status = 0;
    REQUIRE(::waitpid(other, &status, 0) == other);
    CHECK(WEXITSTATUS(status) == 33);
  }

  TEST_CASE_FIXTURE(PlainSignals, "cpu_count respects the affinity mask") {
    cpu_set_t set;
    CPU_ZERO(&set);
    REQUIRE(::sched_getaffinity(0, sizeof set, &set) == 0);
    CHECK(mpx::cpu_count() == static_cast<unsigned>(CPU_COUNT(&set)));
    CHECK(mpx::cpu_count() >= 1);
    auto bd = board();
    mpx::Process p([bd] {
      cpu_set_t one;
      CPU_ZERO(&one);
      CPU_SET(0, &one);
      ::sched_setaffinity(0, sizeof one, &one);
      bd->ints[0] = static_cast<int>(mpx::cpu_count());
    });
    p.start();
    CHECK(p.join(10s));
    CHECK(bd->ints[0] == 1);
  }

  TEST_CASE_FIXTURE(PlainSignals, "~Process joins a non-daemon child and terminates a daemon one") {
    auto bd = board();
    pid_t plain_pid, daemon_pid, stubborn_pid;
    {
      mpx::Process plain([bd] {
        std::this_thread::sleep_for(100ms);
        bd->ints[0] = 1;
      });
      plain.start();
      plain_pid = plain.pid();
    }
    CHECK(bd->ints[0] == 1);  // the destructor waited for it
    CHECK(reaped(plain_pid));
    auto t0 = std::chrono::steady_clock::now();
    {
      mpx::Process d(kDaemon, [] { sleep_forever(); });
      d.start();
      daemon_pid = d.pid();
    }
    CHECK(std::chrono::steady_clock::now() - t0 < 900ms);
    CHECK(reaped(daemon_pid));
    {
      mpx::Process stubborn(kDaemon, [bd] {
        ::signal(SIGTERM, SIG_IGN);
        bd->ints[1] = 1;
        sleep_forever();
      });
      stubborn.start();
      stubborn_pid = stubborn.pid();
      CHECK(eventually([&] { return bd->ints[1] == 1; }));
    }  // SIGTERM ignored: SIGKILL after the grace period
    CHECK(reaped(stubborn_pid));
  }

  TEST_CASE_FIXTURE(PlainSignals, "move assignment finishes the process it replaces") {
    mpx::Process a(kDaemon, [] { sleep_forever(); });
    a.start();
    pid_t first = a.pid();
    KillOnExit guard{{first}};
    a = mpx::Process([] {});
    CHECK(reaped(first));
    a.start();
    CHECK(a.join(10s));
  }

  TEST_CASE_FIXTURE(PlainSignals, "processes started from other threads, concurrently") {
    std::vector<std::thread> threads;
    std::atomic<int> good{0};
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 5; ++i) {
          mpx::Process p(
              {"", i % 2 == 0}, [](int code) { ::_exit(code); }, t * 10 + i);
          p.start();
          if (p.join(20s) && p.exitcode() == t * 10 + i) ++good;
        }
      });
    for (auto& th : threads) th.join();
    CHECK(good == 20);
  }

  TEST_CASE_FIXTURE(PlainSignals, "no leaked fds, no zombies") {
    (void)mpx::active_children();
    std::size_t before = count_fds();
    std::vector<pid_t> pids;
    for (int i = 0; i < 20; ++i) {
      mpx::Process p({"", i % 2 == 1}, [] {});
      p.start();
      CHECK(p.join(10s));
      pids.push_back(p.pid());
    }
    for (int i = 0; i < 5; ++i) {
      mpx::Process p(kDaemon, [] { sleep_forever(); });
      p.start();
      pids.push_back(p.pid());
    }  // destroyed while running
    CHECK(count_fds() == before);
    for (pid_t p : pids) CHECK(reaped(p));
    CHECK(mpx::active_children().empty());
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "daemon children die with their parent process, even when it is SIGKILLed") {
    mpx::test::Subreaper adopt;
    auto bd = board();
    mpx::Process middle([bd] {
      mpx::Process d(kDaemon, [] { sleep_forever(); });
      mpx::Process independent([] { sleep_forever(); });
      d.start();
      independent.start();
      bd->pids[0] = d.pid();
      bd->pids[1] = independent.pid();
      bd->ints[0] = 1;
      sleep_forever();
    });
    middle.start();
    KillOnExit guard{{middle.pid()}};  // destroyed first: ~Process (non-daemon: join) then returns
    REQUIRE(eventually([&] { return bd->ints[0] == 1; }));
    pid_t daemon_child = bd->pids[0];
    pid_t independent = bd->pids[1];
    guard.pids.push_back(daemon_child);
    guard.pids.push_back(independent);
    middle.kill();
    REQUIRE(middle.join(10s));
    int status = mpx::test::reap_adopted(daemon_child);
    CHECK((status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
    // A non-daemon child is independent, as in Python: still running.
    CHECK(::kill(independent, 0) == 0);
    CHECK(::waitpid(independent, &status, WNOHANG) == 0);
    ::kill(independent, SIGKILL);
    CHECK(mpx::test::reap_adopted(independent) != -1);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "a daemon started by a thread that exits lives on, and still dies with the process") {
    mpx::test::Subreaper adopt;
    auto bd = board();
    mpx::Process middle([bd] {
      std::shared_ptr<mpx::Process> keep;
      std::thread([&] {
        keep = std::make_shared<mpx::Process>(kDaemon, [] { sleep_forever(); });
        keep->start();
      }).join();  // the forking thread is gone now
      bd->pids[0] = keep->pid();
      bd->ints[0] = 1;
      std::this_thread::sleep_for(200ms);  // PDEATHSIG tied to that thread would have fired by now
      bd->ints[1] = keep->is_alive() ? 1 : 2;
      sleep_forever();
    });
    middle.start();
    KillOnExit guard{{middle.pid()}};  // destroyed first: ~Process (non-daemon: join) then returns
    REQUIRE(eventually([&] { return bd->ints[1] != 0; }));
    pid_t daemon_child = bd->pids[0];
    guard.pids.push_back(daemon_child);
    CHECK(bd->ints[1] == 1);
    CHECK(::kill(daemon_child, 0) == 0);
    middle.kill();
    REQUIRE(middle.join(10s));
    int status = mpx::test::reap_adopted(daemon_child);
    CHECK((status != -1 && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  }

  TEST_CASE_FIXTURE(PlainSignals, "detail::fork_child: status, exceptions, signals, and reaping by pid") {
    auto ok = mpx::detail::fork_child(helper_options("helper"),
                                      [] { return mpx::current_process().name == "helper" ? 5 : 6; });
    CHECK(ok->wait(10s));
    CHECK(ok->exitcode() == 5);
    CHECK(ok->ended());
    CHECK_FALSE(ok->signal(SIGTERM));  // reaped: never signals a recycled pid

    Capture err(STDERR_FILENO);
    auto bad =
        mpx::detail::fork_child(helper_options("bad"), []() -> int { throw std::runtime_error("nope"); });
    err.restore();
    CHECK(bad->wait(10s));
    CHECK(bad->exitcode() == 1);
    CHECK(err.read().find("nope") != std::string::npos);

    auto sleeper = mpx::detail::fork_child(helper_options(""), [] {
      sleep_forever();
      return 0;
    });
    CHECK_FALSE(sleeper->poll());
    CHECK_FALSE(sleeper->wait(20ms));
    CHECK(sleeper->signal(SIGTERM));
    CHECK(sleeper->wait(10s));
    CHECK(sleeper->exitcode() == -SIGTERM);

    pid_t abandoned_pid;
    {
      auto abandoned = mpx::detail::fork_child(helper_options(""), [] {
        sleep_forever();
        return 0;
      });
      abandoned_pid = abandoned->pid();
    }  // the last handle kills and reaps
    CHECK(reaped(abandoned_pid));
  }

  TEST_CASE_FIXTURE(PlainSignals, "a subclass overrides run(), Python's other way to define a process") {
    struct Exits : mpx::Process {
      explicit Exits(int exit_code) : mpx::Process(Options{"Exits", false}), code(exit_code) {}
      void run() override { std::exit(code); }
      int code;
    };
    struct Throws : mpx::Process {
      void run() override { throw std::runtime_error("from run()"); }
    };
    Exits e(42);
    e.start();
    CHECK(e.join(10s));
    CHECK(e.exitcode() == 42);
    CHECK(e.name() == "Exits");
    Throws t;
    t.start();
    CHECK(t.join(10s));
    CHECK(t.exitcode() == 1);
    mpx::Process nothing;  // no target: run() does nothing
    nothing.start();
    CHECK(nothing.join(10s));
    CHECK(nothing.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "close() releases the handle: ValueError while running and on use afterwards") {
    auto before = mpx::test::open_fd_set();
    mpx::Process p(mpx::Process::Options{"Closing", true}, [] { sleep_forever(); });
    p.start();
    CHECK(p.ident() == p.pid());
    CHECK(p.ident() > 0);
    CHECK_THROWS_AS(p.close(), mpx::ValueError);
    p.kill();
    CHECK(p.join(10s));
    p.close();
    CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");  // the sentinel is gone
    CHECK_THROWS_AS(p.join(), mpx::ValueError);
    CHECK_THROWS_AS(p.exitcode(), mpx::ValueError);
    CHECK_THROWS_AS(p.pid(), mpx::ValueError);
    CHECK_THROWS_AS(p.ident(), mpx::ValueError);
    CHECK_THROWS_AS(p.sentinel(), mpx::ValueError);
    CHECK_THROWS_AS(p.start(), mpx::ValueError);
    CHECK(p.name() == "Closing");
    CHECK(p.daemon());
    mpx::Process unstarted([] {});
    unstarted.close();  // nothing to release but the target
    CHECK_THROWS_AS(unstarted.start(), mpx::ValueError);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "active_children gives name, pid and daemon, and still reads as a pid list") {
    mpx::Process a(mpx::Process::Options{"Alpha", true}, [] { sleep_forever(); });
    mpx::Process b(mpx::Process::Options{"Beta", false}, [] { sleep_forever(); });
    a.start();
    b.start();
    auto kids = mpx::active_children();
    auto find = [&](pid_t pid) {
      return std::find_if(kids.begin(), kids.end(), [&](auto& k) { return k.pid == pid; });
    };
    REQUIRE(find(a.pid()) != kids.end());
    REQUIRE(find(b.pid()) != kids.end());
    CHECK(find(a.pid())->name == "Alpha");
    CHECK(find(a.pid())->daemon);
    CHECK(find(b.pid())->name == "Beta");
    CHECK_FALSE(find(b.pid())->daemon);
    std::vector<pid_t> pids = mpx::active_children();  // the spelling of earlier versions
    CHECK(std::find(pids.begin(), pids.end(), a.pid()) != pids.end());
    CHECK(std::find(kids.begin(), kids.end(), b.pid()) != kids.end());
    a.kill();
    b.kill();
    CHECK(a.join(10s));
    CHECK(b.join(10s));
    CHECK(mpx::active_children().empty());
  }
}
