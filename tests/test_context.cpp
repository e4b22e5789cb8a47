// Start methods: set/get, contexts, Process and Pool under forkserver and spawn.
#include <mpx/context.hpp>
#include <mpx/detail/shm.hpp>
#include <mpx/mpx.hpp>
#include <support.hpp>

#include "process/forkserver.hpp"

#include <dlfcn.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

using namespace std::chrono_literals;

namespace {

using mpx::test::PlainSignals;

mpx::Process::Options forkserver(bool daemon = false) {
  return {.name = "", .daemon = daemon, .context = mpx::get_context(mpx::StartMethod::forkserver)};
}

[[noreturn]] void sleep_forever() {
  for (;;) ::pause();
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

std::string read_file(const std::string& path) { return mpx::test::slurp(path); }

mpx::detail::ForkOptions helper(std::string name) {
  mpx::detail::ForkOptions o;
  o.name = std::move(name);
  return o;
}

// Written whole, then renamed, so a reader never sees half of it.
void write_file_atomically(const std::string& path, const std::string& text) {
  {
    std::ofstream out(path + ".tmp");
    out << text;
  }
  std::filesystem::rename(path + ".tmp", path);
}

// Forkserver children share no memory with the test: they report through files.
int write_and_exit(std::string path, std::string text, int code) {
  write_file_atomically(path, text);
  return code;  // the return value of a target is ignored; exit(code) below gives the code
}

void report_identity(std::string path) {
  auto me = mpx::current_process();
  auto parent = mpx::parent_process();
  write_file_atomically(path, me.name + " " + std::to_string(me.daemon) + " " +
                                  std::to_string(parent ? parent->pid : 0) + " " +
                                  std::to_string(::getppid()));
}

void exit_with(int code) { std::exit(code); }
void throw_runtime_error() { throw std::runtime_error("from the forkserver child"); }
void sleeper() { sleep_forever(); }

struct Adder {
  int base = 0;
  void operator()(std::string path, int x) const { write_file_atomically(path, std::to_string(base + x)); }
  template <class Archive>
  void serialize(Archive& ar) {
    ar(base);
  }
};

void takes_barrier(mpx::Barrier) {}

// A Condition and a Barrier (with its action) shared with a child that is not a fork.
int g_barrier_actions = 0;
void count_barrier_action() { ++g_barrier_actions; }
void meet(mpx::Condition cond, mpx::Value<int> flag, mpx::Barrier barrier, mpx::Value<int> actions_here) {
  const int before = g_barrier_actions;
  {
    std::lock_guard guard(cond);
    if (!cond.wait_for([&] { return flag.load() == 1; }, 30s)) std::exit(3);
    flag.store(2);
    cond.notify_all();
  }
  barrier.wait(30s);
  actions_here.store(g_barrier_actions - before);
}

void check_condition_and_barrier(mpx::Process::Options opts, mpx::Condition cond) {
  mpx::Value<int> flag(0), child_actions(-1);
  mpx::Barrier barrier(2, &count_barrier_action);
  const int before = g_barrier_actions;
  mpx::Process p(std::move(opts), &meet, cond, flag, barrier, child_actions);
  p.start();
  {
    std::lock_guard guard(cond);
    flag.store(1);
    cond.notify_all();
    CHECK(cond.wait_for([&] { return flag.load() == 2; }, 30s));
  }
  barrier.wait(30s);
  REQUIRE(p.join(30s));
  CHECK(p.exitcode() == 0);
  CHECK(g_barrier_actions - before + child_actions.load() ==
        1);  // the action ran once, in the last to arrive
  CHECK(barrier.n_waiting() == 0);
  CHECK_FALSE(barrier.broken());
}

// Each kind of handle, used in the child: sums what it saw into the RawValue.
void use_every_handle(mpx::RLock rl, mpx::Semaphore sem, mpx::BoundedSemaphore bsem, mpx::Array<int> a,
                      mpx::RawArray<double> ra, mpx::RawValue<long> total, mpx::SimpleQueue<int> sq) {
  {
    std::lock_guard g1(rl);
    std::lock_guard g2(rl);  // recursive
  }
  sem.release();
  if (!bsem.acquire(1s)) std::exit(4);
  long sum = 0;
  for (int x : a) sum += x;
  for (double x : ra) sum += static_cast<long>(x);
  a[0] = -1;
  total.store(sum);
  sq.put(static_cast<int>(sum));
}

// `a` runs `sleeper`: its sentinel turns readable once terminate() ends it; then a second
// sleeper started with `opts` is killed. Nothing is left running.
void check_terminate_then_kill(mpx::Process& a, mpx::Process::Options opts) {
  pollfd pfd{a.sentinel(), POLLIN, 0};
  CHECK(::poll(&pfd, 1, 0) == 0);
  a.terminate();
  CHECK(::poll(&pfd, 1, 10000) == 1);
  REQUIRE(a.join(10s));
  CHECK(a.exitcode() == -SIGTERM);
  CHECK_FALSE(a.is_alive());

  mpx::Process b(std::move(opts), &sleeper);
  b.start();
  b.kill();
  REQUIRE(b.join(10s));
  CHECK(b.exitcode() == -SIGKILL);
  CHECK(mpx::active_children().empty());
}
// The handle kinds not checked one by one, passed together to a child started with `opts`.
void check_every_other_handle(mpx::Process::Options opts) {
  mpx::RLock rl;
  mpx::Semaphore sem(0);
  mpx::BoundedSemaphore bsem(1);
  mpx::Array<int> a(std::vector<int>{1, 2, 3});
  mpx::RawArray<double> ra(std::vector<double>{10, 20});
  mpx::RawValue<long> total(0);
  mpx::SimpleQueue<int> sq;
  mpx::Process p(std::move(opts), &use_every_handle, rl, sem, bsem, a, ra, total, sq);
  p.start();
  CHECK(sem.acquire(30s));
  CHECK(sq.get() == 36);
  REQUIRE(p.join(30s));
  CHECK(p.exitcode() == 0);
  CHECK(total.load() == 36);
  CHECK(a[0] == -1);
  CHECK_FALSE(bsem.acquire(0ms));  // the child holds it
}

void echo_doubled(mpx::Queue<int> in, mpx::JoinableQueue<std::string> out) {
  for (int x; (x = in.get()) >= 0;) out.put(std::to_string(2 * x));
}

// Process-shared handles cross to a forkserver child as arguments.
void count_and_signal(mpx::Event ev, mpx::Value<int> v, mpx::Lock lock) {
  {
    std::lock_guard guard(lock);
    v.store(v.load() + 1);
  }
  ev.set();
}

void report_server(mpx::Value<int> v) { v.store(static_cast<int>(::getppid())); }

// Exits 3 if the lock, held by the starter, could be taken.
void try_held_lock(mpx::Lock lock) {
  if (lock.acquire(50ms)) std::exit(3);
}

// A shared memory block crosses by name, as in Python: the child attaches to it.
void fill_block(std::string name, int value) {
  auto shm = mpx::SharedMemory::attach(name);
  for (int& x : shm.as<int>()) x = value;
}

std::mutex g_churned;
void lock_churned_mutex(std::string path) {
  std::lock_guard lock(g_churned);
  write_file_atomically(path, std::to_string(::getppid()));
}

// Spawn children can be given shared objects made after the program chose spawn: each test
// chooses it before making any.
struct SpawnChosen : PlainSignals {
  SpawnChosen() { (void)mpx::get_context(mpx::StartMethod::spawn); }
};

mpx::Process::Options spawned(bool daemon = false, std::string name = "") {
  return {.name = std::move(name), .daemon = daemon, .context = mpx::get_context(mpx::StartMethod::spawn)};
}

// Constant-initialized: a spawn child sees this value, whatever its starter made of it since.
int g_changed_by_starter = 1;
void report_global(mpx::Value<int> seen) { seen.store(g_changed_by_starter); }

// Dynamically initialized: a spawn child runs the program's initializers before its target.
const std::string g_built_at_start = std::to_string(::getpid() > 0 ? 42 : 0);
void report_built_global(mpx::Value<int> seen) { seen.store(g_built_at_start == "42" ? 1 : -1); }

void raise_signal(int sig) { ::raise(sig); }

void print_to_cout(std::string text) { std::cout << text << std::flush; }

void report_spawned_identity(mpx::Value<int> ppid, mpx::Array<int> flags, mpx::Queue<std::string> out) {
  auto me = mpx::current_process();
  auto parent = mpx::parent_process();
  ppid.store(static_cast<int>(::getppid()));
  flags[0] = me.daemon ? 1 : 0;
  flags[1] = parent ? static_cast<int>(parent->pid) : 0;
  flags[2] = mpx::get_start_method() == mpx::StartMethod::spawn ? 1 : 0;
  out.put(me.name + "|" + (parent ? parent->name : std::string("none")));
}

// In a spawn child: the marker is gone, and children of its own (forked and spawned) work.
void start_grandchildren(mpx::Queue<std::string> out) {
  out.put(std::getenv("MPX_SPAWNED") ? "marker kept" : "no marker");
  mpx::Process forked(
      {.name = "", .daemon = false, .context = mpx::get_context(mpx::StartMethod::fork)},
      [out]() mutable { out.put(std::string("forked grandchild ") + mpx::current_process().name); });
  forked.start();
  forked.join();
  mpx::Process spawned_child(
      spawned(),
      [](mpx::Queue<std::string> q) {
        q.put(std::string("spawned grandchild ") + mpx::current_process().name +
              (std::getenv("MPX_SPAWNED") ? " marker" : ""));
      },
      out);
  spawned_child.start();
  spawned_child.join();
  mpx::Process failing(spawned(), &exit_with, 5);
  failing.start();
  failing.join();
  out.put("exit codes " + std::to_string(*forked.exitcode()) + " " +
          std::to_string(*spawned_child.exitcode()) + " " + std::to_string(*failing.exitcode()));
}

// In a spawn child of a fork-default program: a Value made before it chooses spawn cannot go
// to a spawn child; one made after can.
void refuse_early_object() {
  mpx::Value<int> early(0);
  mpx::Process p(spawned(), &report_global, early);
  try {
    p.start();
    std::exit(2);
  } catch (const mpx::ValueError& e) {
    std::string what = e.what();
    if (what.find("spawn") == std::string::npos || what.find("before") == std::string::npos) std::exit(3);
  }
  mpx::Value<int> late(0);
  mpx::Process q(spawned(), &report_global, late);
  q.start();
  if (!q.join(30s) || q.exitcode() != 0 || late.load() != 1) std::exit(4);
}

long square(long x) { return x * x; }
void use_a_pool(mpx::Value<long> total) {
  mpx::Pool pool(2);
  long sum = 0;
  for (long y : pool.map(&square, std::vector<long>{1, 2, 3, 4})) sum += y;
  total.store(sum);
}

void report_pid_and_sleep(mpx::Value<int> pid) {
  pid.store(static_cast<int>(::getpid()));
  sleep_forever();
}

// A Pool started by forkserver or spawn, while a thread of this process holds a mutex its tasks
// take: forked workers would copy it held and deadlock; these workers never see it held.
std::mutex g_pool_mutex;
int g_initialized = 0;  // 0 at any start of the program; the pool's initializer makes it 7
void initialize_worker() { g_initialized = 7; }
long locked_triple(long x) {
  std::lock_guard lock(g_pool_mutex);
  return 3 * x + g_initialized;
}
int parent_pid(int) { return static_cast<int>(::getppid()); }

void check_pool_started_by(mpx::StartMethod method) {
  const auto before = mpx::test::open_fd_set();
  std::promise<void> locked;
  std::atomic<bool> release{false};
  std::thread holder([&] {
    std::lock_guard lock(g_pool_mutex);
    locked.set_value();
    while (!release.load()) std::this_thread::sleep_for(1ms);
  });
  locked.get_future().wait();
  {
    mpx::Pool pool({.processes = 2,
                    .initializer = &initialize_worker,
                    .maxtasksperchild = 3,  // replacements come from the spawner too
                    .context = mpx::get_context(method)});
    std::vector<long> xs(20);
    for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = static_cast<long>(i);
    auto tripled = pool.map_async(&locked_triple, xs, 1);
    REQUIRE(tripled.wait(60s));
    auto got = tripled.get();
    REQUIRE(got.size() == xs.size());
    for (std::size_t i = 0; i < xs.size(); ++i) CHECK(got[i] == 3 * xs[i] + 7);
    // The workers are the spawner's children, and the spawner is no fork of this process.
    for (int ppid : pool.map(&parent_pid, std::vector<int>(4, 0), 1)) CHECK(ppid != ::getpid());
    int k = 1;
    CHECK_THROWS_WITH_AS(
        mpx::Pool({.processes = 1, .initializer = [k] { (void)k; }, .context = mpx::get_context(method)}),
        doctest::Contains("function pointer"), mpx::ValueError);
    pool.close();
    pool.join();
  }
  release = true;
  holder.join();
  CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
}

// Shared-mapping limit: a forkserver or spawn child is handed each shared mapping its arguments
// lie in (one descriptor each), at most detail::kMaxMaps = 64 of them. Every Value is a mapping
// of its own, so a target with n Value parameters needs n.
template <std::size_t>
using IntValue = mpx::Value<int>;
template <std::size_t... I>
void increment_each(IntValue<I>... v) {
  (..., v.store(v.load() + 1));
}
// A Process whose target adds 1 to values[0], ..., values[n - 1].
template <std::size_t... I>
mpx::Process incrementing(mpx::Process::Options opts, const std::vector<mpx::Value<int>>& values,
                          std::index_sequence<I...>) {
  return mpx::Process(std::move(opts), &increment_each<I...>, values[I]...);
}

void check_shared_mapping_limit(mpx::StartMethod method) {
  const mpx::Process::Options opts{.name = "", .daemon = false, .context = mpx::get_context(method)};
  {  // the fork server, when there is one, runs before the values are made: they are made by fd
    mpx::Process warm(opts, &exit_with, 0);
    warm.start();
    REQUIRE(warm.join(30s));
  }
  const auto before = mpx::test::open_fd_set();
  {
    std::vector<mpx::Value<int>> values;
    for (int i = 0; i < 65; ++i) values.emplace_back(100 * i);
    // 65 distinct mappings, each with its descriptor.
    mpx::Bytes encoded;
    std::vector<mpx::detail::SharedMappingRef> maps;
    for (const auto& v : values) mpx::detail::encode_target_arg(encoded, maps, v);
    REQUIRE(maps.size() == 65);
    CHECK(std::all_of(maps.begin(), maps.end(), [](auto& m) { return m.fd >= 0; }));

    // Exactly at the limit: the child gets all 64 and adds 1 to each; the 65th is not its.
    mpx::Process at_limit = incrementing(opts, values, std::make_index_sequence<64>{});
    at_limit.start();
    REQUIRE(at_limit.join(60s));
    CHECK(at_limit.exitcode() == 0);
    for (int i = 0; i < 64; ++i) CHECK(values[static_cast<std::size_t>(i)].load() == 100 * i + 1);
    CHECK(values[64].load() == 6400);

    // One past it: start() refuses, naming the method and the limit, and starts nothing.
    mpx::Process over = incrementing(opts, values, std::make_index_sequence<65>{});
    const auto fds_before_start = mpx::test::open_fd_set();
    const std::string expected = "start method " + std::string(mpx::to_string(method)) +
                                 ": the arguments hold more than 64 shared objects";
    CHECK_THROWS_WITH_AS(over.start(), doctest::Contains(expected.c_str()), mpx::ValueError);
    CHECK(mpx::test::fd_changes(fds_before_start, mpx::test::open_fd_set()) == "");
    CHECK_FALSE(over.is_alive());
    CHECK_FALSE(over.exitcode().has_value());
    CHECK(mpx::active_children().empty());
    for (int i = 0; i < 64; ++i) CHECK(values[static_cast<std::size_t>(i)].load() == 100 * i + 1);
    CHECK(values[64].load() == 6400);

    // A forked child inherits every mapping: no limit there.
    mpx::Process forked =
        incrementing({.name = "", .daemon = false, .context = mpx::get_context(mpx::StartMethod::fork)},
                     values, std::make_index_sequence<65>{});
    forked.start();
    REQUIRE(forked.join(60s));
    CHECK(forked.exitcode() == 0);
    for (int i = 0; i < 64; ++i) CHECK(values[static_cast<std::size_t>(i)].load() == 100 * i + 2);
    CHECK(values[64].load() == 6401);
  }
  // The values' descriptors went with them; the refused start left none behind either.
  CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
}

// Passed descriptors: the library's own children (the pool's spawner) are handed descriptors
// through ForwardedStart::fds, at most detail::kMaxPassedFds = 4. The child writes its index to
// each passed pipe and checks that there is no fifth.
void write_to_passed_fds(int count) {
  for (int i = 0; i < count; ++i) {
    char c = static_cast<char>('0' + i);
    if (::write(mpx::detail::passed_fd(static_cast<std::size_t>(i)), &c, 1) != 1) std::exit(10 + i);
  }
  if (mpx::detail::passed_fd(static_cast<std::size_t>(count)) != -1) std::exit(9);
}

mpx::detail::ForwardedStart passing(int count, const std::vector<int>& write_ends) {
  mpx::detail::ForwardedStart req;
  req.name = "passed-fds";
  mpx::detail::encode_target(req.target, req.maps, &write_to_passed_fds, std::tuple<int>(count));
  req.fds = write_ends;
  return req;
}

void check_passed_fd_limit(mpx::StartMethod method) {
  {  // the fork server, when there is one, is not forked while the pipes below are open
    mpx::Process warm({.name = "", .daemon = false, .context = mpx::get_context(method)}, &exit_with, 0);
    warm.start();
    REQUIRE(warm.join(30s));
  }
  const auto before = mpx::test::open_fd_set();
  {
    std::vector<int> read_ends, write_ends;
    struct Closer {  // the pipes go even when a REQUIRE ends the test early
      std::vector<int>& a;
      std::vector<int>& b;
      ~Closer() {
        for (int fd : a) ::close(fd);
        for (int fd : b) ::close(fd);
      }
    } closer{read_ends, write_ends};
    for (int i = 0; i < 5; ++i) {
      int p[2];
      REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
      read_ends.push_back(p[0]);
      write_ends.push_back(p[1]);
    }
    auto four = passing(4, {write_ends.begin(), write_ends.begin() + 4});
    auto child = mpx::detail::start_forwarded(method, four);
    REQUIRE(child->wait(30s));
    CHECK(child->exitcode() == 0);
    for (int i = 0; i < 4; ++i) {
      char c = 0;
      CHECK(::read(read_ends[static_cast<std::size_t>(i)], &c, 1) == 1);
      CHECK(c == '0' + i);
    }
    const auto fds_before_start = mpx::test::open_fd_set();
    auto five = passing(5, write_ends);
    CHECK_THROWS_WITH_AS(mpx::detail::start_forwarded(method, five),
                         doctest::Contains("at most 4 descriptors"), mpx::ValueError);
    CHECK(mpx::test::fd_changes(fds_before_start, mpx::test::open_fd_set()) == "");
    for (int fd : write_ends) ::close(fd);
    write_ends.clear();
    char c = 0;
    CHECK(::read(read_ends[4], &c, 1) == 0);  // EOF: no child holds the fifth write end
  }
  CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
}
}  // namespace

TEST_SUITE("context") {
  TEST_CASE_FIXTURE(PlainSignals, "set_start_method and get_start_method; StateError once a child started") {
    // A fresh process, so this test does not depend on what others started before it.
    mpx::test::Subreaper adopt;  // the helper's server, once the helper is gone
    mpx::test::TempDir dir;
    auto child = mpx::detail::fork_child(helper("setter"), [&dir] {
      if (mpx::get_start_method() != mpx::StartMethod::fork) return 2;
      mpx::set_start_method(mpx::StartMethod::forkserver);
      if (mpx::get_start_method() != mpx::StartMethod::forkserver) return 3;
      mpx::set_start_method(mpx::StartMethod::fork);  // starting the server is not starting a child
      mpx::Process served(forkserver(), &lock_churned_mutex, dir / "server");
      served.start();
      served.join();
      try {
        mpx::set_start_method(mpx::StartMethod::forkserver);
        return 4;
      } catch (const mpx::StateError& e) {
        if (std::string(e.what()).find("fork") == std::string::npos) return 5;
      }
      return mpx::get_start_method() == mpx::StartMethod::fork ? 0 : 6;
    });
    REQUIRE(child->wait(30s));
    CHECK(child->exitcode() == 0);
    CHECK(mpx::test::reap_adopted(std::stoi(read_file(dir / "server"))) != -1);
  }

  TEST_CASE("get_context and Context") {
    mpx::Context c = mpx::get_context(mpx::StartMethod::forkserver);
    CHECK(c.start_method() == mpx::StartMethod::forkserver);
    CHECK(c == mpx::Context(mpx::StartMethod::forkserver));
    CHECK(mpx::to_string(mpx::StartMethod::fork) == "fork");
    CHECK(mpx::to_string(mpx::StartMethod::forkserver) == "forkserver");
    CHECK(mpx::to_string(mpx::StartMethod::spawn) == "spawn");
    mpx::Process::Options designated{.name = "x", .daemon = true};  // still warning-free
    CHECK(!designated.context);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: function pointer and function object targets, exit codes") {
    mpx::test::TempDir dir;
    mpx::Process p(forkserver(), &write_and_exit, dir / "a", std::string("hello"), 0);
    p.start();
    CHECK(p.pid() > 0);
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(read_file(dir / "a") == "hello");

    mpx::Process q(forkserver(), Adder{40}, dir / "b", 2);
    q.start();
    REQUIRE(q.join(30s));
    CHECK(q.exitcode() == 0);
    CHECK(read_file(dir / "b") == "42");

    mpx::Process lambda(
        forkserver(), [](std::string path) { write_file_atomically(path, "captureless"); }, dir / "c");
    lambda.start();
    REQUIRE(lambda.join(30s));
    CHECK(read_file(dir / "c") == "captureless");

    mpx::Process e(forkserver(), &exit_with, 7);
    e.start();
    REQUIRE(e.join(30s));
    CHECK(e.exitcode() == 7);

    mpx::Process none(forkserver());
    none.start();
    REQUIRE(none.join(30s));
    CHECK(none.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: a target that throws prints it and exits with 1") {
    std::fflush(nullptr);
    int p[2];
    REQUIRE(::pipe(p) == 0);
    int saved = ::dup(2);
    ::dup2(p[1], 2);
    ::close(p[1]);
    mpx::Process t(forkserver(), &throw_runtime_error);
    t.start();
    ::dup2(saved, 2);  // the child got the stderr of start() time: the pipe
    ::close(saved);
    REQUIRE(t.join(30s));
    CHECK(t.exitcode() == 1);
    std::string out;
    char buf[1024];
    ssize_t n;
    while ((n = ::read(p[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
    ::close(p[0]);
    CHECK(out.find("Process " + t.name() + ":") != std::string::npos);
    CHECK(out.find("from the forkserver child") != std::string::npos);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: the child starts in its starter's working directory now") {
    mpx::Process warm(forkserver());  // the server's snapshot has the old directory
    warm.start();
    REQUIRE(warm.join(30s));
    mpx::test::TempDir dir;
    auto old = std::filesystem::current_path();
    std::filesystem::current_path(dir.path());
    mpx::Process p(forkserver(), &write_and_exit, std::string("relative"), std::string("here"), 0);
    try {
      p.start();
    } catch (...) {
      std::filesystem::current_path(old);
      throw;
    }
    std::filesystem::current_path(old);
    REQUIRE(p.join(30s));
    CHECK(read_file(dir / "relative") == "here");
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: sentinel, is_alive, join timeout, terminate, kill") {
    mpx::Process a(forkserver(), &sleeper);
    a.start();
    CHECK(a.is_alive());
    CHECK_FALSE(a.join(50ms));
    check_terminate_then_kill(a, forkserver());
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "forkserver: ~Process terminates a daemon child and joins a non-daemon one") {
    mpx::test::TempDir dir;
    pid_t daemon_pid = 0;
    {
      mpx::Process d(forkserver(true), &sleeper);
      d.start();
      daemon_pid = d.pid();
    }
    // Not our child (the server reaps it), so "gone" is: no such process any more.
    CHECK(eventually([&] { return ::kill(daemon_pid, 0) != 0; }));
    {
      mpx::Process n(
          forkserver(false),
          [](std::string path) {
            std::this_thread::sleep_for(100ms);
            write_file_atomically(path, "done");
          },
          dir / "late");
      n.start();
    }
    CHECK(read_file(dir / "late") == "done");
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: the child knows its name, daemon flag and its starter") {
    mpx::test::TempDir dir;
    mpx::Process p(
        {.name = "Reporter", .daemon = true, .context = mpx::Context(mpx::StartMethod::forkserver)},
        &report_identity, dir / "id");
    p.start();
    REQUIRE(p.join(30s));
    REQUIRE(p.exitcode() == 0);
    std::string id = read_file(dir / "id");
    CHECK(id.rfind("Reporter 1 " + std::to_string(::getpid()) + " ", 0) == 0);
    // Its real parent is the server, not this process.
    CHECK(id != "Reporter 1 " + std::to_string(::getpid()) + " " + std::to_string(::getpid()));
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "forkserver: a Lock, Event and Value made after the server started reach the child") {
    mpx::Process warm(forkserver());  // the server runs before the objects are made
    warm.start();
    REQUIRE(warm.join(30s));
    auto memfds = [] {
      int n = 0;
      for (auto& [fd, what] : mpx::test::open_fd_set()) n += what.find("memfd:mpx") != std::string::npos;
      return n;
    };
    int before = memfds();
    mpx::Event ev;
    mpx::Value<int> v(41);
    mpx::Lock lock;
    CHECK(memfds() == before + 3);  // made by fd: not in the server's snapshot
    mpx::Process p(forkserver(), &count_and_signal, ev, v, lock);
    p.start();
    CHECK(ev.wait(30s));
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(v.load() == 42);

    lock.acquire();
    mpx::Process q(forkserver(), &try_held_lock, lock);
    q.start();
    REQUIRE(q.join(30s));
    CHECK(q.exitcode() == 0);  // the child saw the lock held
    lock.release();
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: queues made after the server started reach the child") {
    mpx::Queue<int> in;
    mpx::JoinableQueue<std::string> out;
    mpx::Process p(forkserver(), &echo_doubled, in, out);
    p.start();
    for (int i = 0; i < 100; ++i) in.put(i);
    in.put(-1);
    for (int i = 0; i < 100; ++i) {
      CHECK(out.get(30s) == std::to_string(2 * i));
      out.task_done();
    }
    CHECK(out.join(1s));
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: every other crossing handle kind reaches the child") {
    check_every_other_handle(forkserver());
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: handles made before the server started reach the child too") {
    mpx::test::Subreaper adopt;  // the helper's server, once the helper is gone
    mpx::Value<int> server(0);
    auto child = mpx::detail::fork_child(helper("early"), [server] {
      mpx::Event ev;  // in the server's snapshot
      mpx::Value<int> v(1);
      mpx::Lock lock;
      mpx::set_start_method(mpx::StartMethod::forkserver);
      mpx::Event late;  // made by fd
      mpx::Process p(&count_and_signal, ev, v, lock);
      p.start();
      if (!p.join(30s) || p.exitcode() != 0) return 2;
      if (!ev.is_set() || v.load() != 2) return 3;
      mpx::Process q(&count_and_signal, late, v, lock);
      q.start();
      if (!q.join(30s) || q.exitcode() != 0) return 4;
      mpx::Process r(&report_server, server);
      r.start();
      r.join(30s);
      return late.is_set() && v.load() == 3 ? 0 : 5;
    });
    REQUIRE(child->wait(60s));
    CHECK(child->exitcode() == 0);
    REQUIRE(server.load() > 0);
    CHECK(mpx::test::reap_adopted(server.load()) != -1);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: a shared memory block made before start() reaches the child") {
    auto shm = mpx::SharedMemory::create(64 * sizeof(int));
    mpx::Process p(forkserver(), &fill_block, shm.name(), 7);
    p.start();
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    auto xs = shm.as<int>();
    CHECK(std::all_of(xs.begin(), xs.end(), [](int x) { return x == 7; }));
    shm.unlink();
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: what cannot cross makes start() throw ValueError naming it") {
    int captured = 1;
    mpx::Process capturing(forkserver(), [captured] { (void)captured; });
    try {
      capturing.start();
      FAIL("a capturing lambda started under forkserver");
    } catch (const mpx::ValueError& e) {
      CHECK(std::string(e.what()).find("forkserver") != std::string::npos);
    }
    CHECK(capturing.pid() == 0);

    int parties_seen = 0;
    mpx::Barrier with_closure(2, [&parties_seen] { ++parties_seen; });
    mpx::Process with_barrier(forkserver(), &takes_barrier, with_closure);
    CHECK_THROWS_WITH_AS(with_barrier.start(), doctest::Contains("action"), mpx::ValueError);
    CHECK(with_barrier.pid() == 0);

    struct Sub : mpx::Process {
      Sub() : mpx::Process(forkserver()) {}
      void run() override {}
    } sub;
    CHECK_THROWS_AS(sub.start(), mpx::ValueError);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: children of a threaded parent never inherit a held mutex") {
    mpx::test::Subreaper adopt;  // the helper's server, once the helper is gone
    mpx::test::TempDir dir;
    auto child = mpx::detail::fork_child(helper("threaded"), [&dir] {
      mpx::set_start_method(mpx::StartMethod::forkserver);  // the server starts single-threaded
      std::atomic<bool> stop{false};
      std::vector<std::thread> churn;
      for (int i = 0; i < 8; ++i)
        churn.emplace_back([&] {
          while (!stop.load()) {
            std::lock_guard lock(g_churned);
            std::this_thread::yield();
          }
        });
      int ok = 0;
      for (int i = 0; i < 20; ++i) {
        mpx::Process p(&lock_churned_mutex, dir / ("m" + std::to_string(i)));
        p.start();
        if (p.join(10s) && p.exitcode() == 0)
          ++ok;
        else
          p.kill();
      }
      stop = true;
      for (auto& t : churn) t.join();
      return ok == 20 ? 0 : 1;
    });
    REQUIRE(child->wait(120s));
    CHECK(child->exitcode() == 0);
    CHECK(mpx::test::reap_adopted(std::stoi(read_file(dir / "m0"))) != -1);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: the server and daemon children die with their starter") {
    mpx::test::Subreaper adopt;
    mpx::test::TempDir dir;
    std::string report = dir / "pids";
    // A starter that starts a daemon and a non-daemon forkserver child, then is killed.
    auto starter = mpx::detail::fork_child(helper("starter"), [report] {
      mpx::Process d(
          forkserver(true),
          [](std::string path) {
            write_file_atomically(path, std::to_string(::getpid()) + " " + std::to_string(::getppid()));
            sleep_forever();
          },
          report + ".d");
      d.start();
      mpx::Process n(
          forkserver(false),
          [](std::string path) {
            write_file_atomically(path, std::to_string(::getpid()));
            sleep_forever();
          },
          report + ".n");
      n.start();
      sleep_forever();
      return 0;
    });
    REQUIRE(eventually(
        [&] { return std::filesystem::exists(report + ".d") && std::filesystem::exists(report + ".n"); }));
    pid_t daemon_child = 0, server = 0, independent = 0;
    {
      std::istringstream in(read_file(report + ".d"));
      in >> daemon_child >> server;
      independent = std::stoi(read_file(report + ".n"));
    }
    REQUIRE(daemon_child > 0);
    REQUIRE(server > 0);
    CHECK(::kill(server, 0) == 0);
    starter->signal(SIGKILL);
    REQUIRE(starter->wait(10s));
    // Orphans are adopted by this process (the subreaper). The server sees its socket close or
    // gets its PDEATHSIG, whichever comes first; the daemon child dies of the server's death.
    int s = mpx::test::reap_adopted(server);
    CHECK(s != -1);
    CHECK(((WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL) || (WIFEXITED(s) && WEXITSTATUS(s) == 0)));
    s = mpx::test::reap_adopted(daemon_child);
    CHECK((s != -1 && WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL));
    // The non-daemon child is independent, as under fork.
    CHECK(::kill(independent, 0) == 0);
    ::kill(independent, SIGKILL);
    CHECK(mpx::test::reap_adopted(independent) != -1);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: the server ends when its starter exits normally") {
    mpx::test::Subreaper adopt;
    mpx::test::TempDir dir;
    std::string report = dir / "server";
    auto starter = mpx::detail::fork_child(helper("starter"), [report] {
      mpx::Process p(
          forkserver(), [](std::string path) { write_file_atomically(path, std::to_string(::getppid())); },
          report);
      p.start();
      p.join();
      return p.exitcode() == 0 ? 0 : 1;
    });
    REQUIRE(starter->wait(30s));
    CHECK(starter->exitcode() == 0);
    pid_t server = std::stoi(read_file(report));
    REQUIRE(server > 0);
    int s = mpx::test::reap_adopted(server);
    CHECK(s != -1);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: children started from several threads at once") {
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 5; ++i) {
          mpx::Process p(forkserver(t % 2 == 0), &exit_with, t * 10 + i);
          p.start();
          if (p.join(30s) && p.exitcode() == t * 10 + i) ++ok;
        }
      });
    for (auto& t : threads) t.join();
    CHECK(ok == 20);
    CHECK(mpx::active_children().empty());
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: starting children leaks no descriptors") {
    {
      mpx::Process warm(forkserver());  // the server's socket stays for the process's life
      warm.start();
      REQUIRE(warm.join(30s));
    }
    auto before = mpx::test::open_fd_set();
    for (int i = 0; i < 5; ++i) {
      mpx::Process p(forkserver(), &exit_with, i);
      p.start();
      REQUIRE(p.join(30s));
      CHECK(p.exitcode() == i);
    }
    {
      mpx::Process k(forkserver(), &sleeper);
      k.start();
      k.kill();
    }  // ~Process joins it
    CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: exit codes, pid, sentinel, is_alive, join timeout, terminate, kill") {
    mpx::Process ok(spawned(), &exit_with, 0);
    ok.start();
    CHECK(ok.pid() > 0);
    REQUIRE(ok.join(30s));
    CHECK(ok.exitcode() == 0);

    mpx::Process none(spawned());
    none.start();
    REQUIRE(none.join(30s));
    CHECK(none.exitcode() == 0);

    mpx::Process seven(spawned(), &exit_with, 7);
    seven.start();
    REQUIRE(seven.join(30s));
    CHECK(seven.exitcode() == 7);

    mpx::Process usr1(spawned(), &raise_signal, SIGUSR1);
    usr1.start();
    REQUIRE(usr1.join(30s));
    CHECK(usr1.exitcode() == -SIGUSR1);

    mpx::Process a(spawned(), &sleeper);
    a.start();
    CHECK(a.is_alive());
    auto argv0 = [](const std::string& cmdline) {
      std::ifstream in(cmdline);
      std::string first;
      std::getline(in, first, '\0');
      return first;
    };
    // For ps. Eventually: a sanitizer runtime may still be setting up (or re-executing) the image.
    CHECK(eventually([&] {
      return argv0("/proc/" + std::to_string(a.pid()) + "/cmdline") == argv0("/proc/self/cmdline");
    }));
    CHECK_FALSE(a.join(50ms));
    auto live = mpx::active_children();
    CHECK(std::find(live.begin(), live.end(), a.pid()) != live.end());
    check_terminate_then_kill(a, spawned());
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: a target that throws prints it and exits with 1; std::cout works") {
    std::fflush(nullptr);
    int err[2], out[2];
    REQUIRE(::pipe(err) == 0);
    REQUIRE(::pipe(out) == 0);
    int saved_err = ::dup(2), saved_out = ::dup(1);
    ::dup2(err[1], 2);
    ::dup2(out[1], 1);
    ::close(err[1]);
    ::close(out[1]);
    mpx::Process t(spawned(), &throw_runtime_error);
    mpx::Process c(spawned(), &print_to_cout, std::string("through std::cout"));
    t.start();
    c.start();
    ::dup2(saved_err, 2);
    ::dup2(saved_out, 1);
    ::close(saved_err);
    ::close(saved_out);
    REQUIRE(t.join(30s));
    REQUIRE(c.join(30s));
    CHECK(t.exitcode() == 1);
    CHECK(c.exitcode() == 0);
    auto drain = [](int fd) {
      std::string text;
      char buf[1024];
      ssize_t n;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
      ::close(fd);
      return text;
    };
    std::string errors = drain(err[0]);
    CHECK(errors.find("Process " + t.name() + ":") != std::string::npos);
    CHECK(errors.find("from the forkserver child") != std::string::npos);
    CHECK(drain(out[0]) == "through std::cout");
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: the child sees the program's globals as built, not as its starter left them") {
    g_changed_by_starter = 2;
    mpx::Value<int> seen(0);
    mpx::Process p(spawned(), &report_global, seen);
    p.start();
    REQUIRE(p.join(30s));
    g_changed_by_starter = 1;
    CHECK(p.exitcode() == 0);
    CHECK(seen.load() == 1);
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: the program's static initializers have run when the target starts") {
    mpx::Value<int> seen(0);
    mpx::Process p(spawned(), &report_built_global, seen);
    p.start();
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(seen.load() == 1);
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: the child knows its name, daemon flag, starter and start method") {
    mpx::Value<int> ppid(0);
    mpx::Array<int> flags(std::vector<int>{-1, -1, -1});
    mpx::Queue<std::string> out;
    mpx::Process p(spawned(true, "Reporter"), &report_spawned_identity, ppid, flags, out);
    p.start();
    CHECK(out.get(30s) == "Reporter|MainProcess");
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(ppid.load() == ::getpid());  // a child of the starter itself
    CHECK(flags[0] == 1);
    CHECK(flags[1] == ::getpid());
    CHECK(flags[2] == 0);  // the starter's default method (fork) is the child's
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: Lock, Event, Value, Array and queues made after choosing spawn reach the child") {
    mpx::Event ev;
    mpx::Value<int> v(41);
    mpx::Lock lock;
    mpx::Process p(spawned(), &count_and_signal, ev, v, lock);
    p.start();
    CHECK(ev.wait(30s));
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 0);
    CHECK(v.load() == 42);

    lock.acquire();
    mpx::Process held(spawned(), &try_held_lock, lock);
    held.start();
    REQUIRE(held.join(30s));
    CHECK(held.exitcode() == 0);  // the child saw the lock held
    lock.release();

    mpx::Queue<int> in;
    mpx::JoinableQueue<std::string> out;
    mpx::Process q(spawned(), &echo_doubled, in, out);
    q.start();
    for (int i = 0; i < 100; ++i) in.put(i);
    in.put(-1);
    for (int i = 0; i < 100; ++i) {
      CHECK(out.get(30s) == std::to_string(2 * i));
      out.task_done();
    }
    CHECK(out.join(1s));
    REQUIRE(q.join(30s));
    CHECK(q.exitcode() == 0);

    check_every_other_handle(spawned());
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: what cannot cross makes start() throw ValueError naming spawn") {
    int captured = 1;
    mpx::Process capturing(spawned(), [captured] { (void)captured; });
    try {
      capturing.start();
      FAIL("a capturing lambda started under spawn");
    } catch (const mpx::ValueError& e) {
      CHECK(std::string(e.what()).find("spawn") != std::string::npos);
    }
    CHECK(capturing.pid() == 0);

    struct Sub : mpx::Process {
      Sub() : mpx::Process(spawned()) {}
      void run() override {}
    } sub;
    CHECK_THROWS_AS(sub.start(), mpx::ValueError);

    // An object made before the program chose spawn: in a spawn child, whose program (this
    // one, afresh) has not chosen it yet.
    mpx::Process early(spawned(), &refuse_early_object);
    early.start();
    REQUIRE(early.join(60s));
    CHECK(early.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: a target in a library the fresh image has not loaded: exit 1, said why") {
    // A library this program does not link: dlopen'd here, absent from the child's image.
    using Version = const char* (*)();
    void* lib = nullptr;
    Version version = nullptr;
    for (auto [name, symbol] :
         {std::pair{"libz.so.1", "zlibVersion"}, std::pair{"libbz2.so.1.0", "BZ2_bzlibVersion"}}) {
      if ((lib = ::dlopen(name, RTLD_NOW | RTLD_LOCAL)) &&
          (version = reinterpret_cast<Version>(::dlsym(lib, symbol))))
        break;
      if (lib) ::dlclose(lib);
      lib = nullptr;
    }
    if (!version) {
      MESSAGE("no libz or libbz2 to dlopen: skipped");
      return;
    }
    std::fflush(nullptr);
    int err[2];
    REQUIRE(::pipe(err) == 0);
    int saved = ::dup(2);
    ::dup2(err[1], 2);
    ::close(err[1]);
    mpx::Process p(spawned(), version);
    p.start();
    ::dup2(saved, 2);
    ::close(saved);
    REQUIRE(p.join(30s));
    CHECK(p.exitcode() == 1);
    std::string text;
    char buf[1024];
    ssize_t n;
    while ((n = ::read(err[0], buf, sizeof buf)) > 0) text.append(buf, static_cast<std::size_t>(n));
    ::close(err[0]);
    CHECK(text.find("Process " + p.name() + ":") != std::string::npos);
    CHECK(text.find("ValueError") != std::string::npos);
    CHECK(text.find("not in a module loaded") != std::string::npos);
    ::dlclose(lib);
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: the marker is not inherited; the child starts forked and spawned children") {
    mpx::Queue<std::string> out;
    mpx::Process p(spawned(false, "Middle"), &start_grandchildren, out);
    p.start();
    CHECK(out.get(30s) == "no marker");
    auto named = [](const std::string& got, const std::string& prefix, const std::string& suffix) {
      return got.rfind(prefix, 0) == 0 && got.size() > suffix.size() &&
             got.compare(got.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    CHECK(named(out.get(30s), "forked grandchild Process-", ":1"));
    CHECK(named(out.get(30s), "spawned grandchild Process-", ":2"));
    CHECK(out.get(30s) == "exit codes 0 0 5");
    REQUIRE(p.join(60s));
    CHECK(p.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: a parent full of threads churning a mutex starts children without deadlock") {
    mpx::test::TempDir dir;
    std::atomic<bool> stop{false};
    std::vector<std::thread> churn;
    for (int i = 0; i < 8; ++i)
      churn.emplace_back([&] {
        while (!stop.load()) {
          std::lock_guard lock(g_churned);
          std::this_thread::yield();
        }
      });
    int ok = 0;
    for (int i = 0; i < 20; ++i) {
      mpx::Process p(spawned(i % 2 == 0), &lock_churned_mutex, dir / ("m" + std::to_string(i)));
      p.start();
      if (p.join(10s) && p.exitcode() == 0)
        ++ok;
      else
        p.kill();
    }
    stop = true;
    for (auto& t : churn) t.join();
    CHECK(ok == 20);
    CHECK(read_file(dir / "m0") == std::to_string(::getpid()));
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: children started from several threads at once") {
    std::vector<std::thread> threads;
    std::atomic<int> ok{0};
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < 5; ++i) {
          mpx::Process p(spawned(t % 2 == 0), &exit_with, t * 10 + i);
          p.start();
          if (p.join(30s) && p.exitcode() == t * 10 + i) ++ok;
        }
      });
    for (auto& t : threads) t.join();
    CHECK(ok == 20);
    CHECK(mpx::active_children().empty());
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: ~Process terminates a daemon child; daemon children die with their starter") {
    pid_t daemon_pid = 0;
    {
      mpx::Process d(spawned(true), &sleeper);
      d.start();
      daemon_pid = d.pid();
    }
    CHECK(::kill(daemon_pid, 0) != 0);  // terminated and reaped

    // A starter (forked: objects it inherited can go to its spawn children too) starts a
    // daemon and a non-daemon spawn child, then is killed.
    mpx::test::Subreaper adopt;
    mpx::Value<int> daemon_child(0), independent(0);
    auto starter = mpx::detail::fork_child(helper("starter"), [daemon_child, independent] {
      mpx::Process d(spawned(true), &report_pid_and_sleep, daemon_child);
      d.start();
      mpx::Process n(spawned(false), &report_pid_and_sleep, independent);
      n.start();
      sleep_forever();
      return 0;
    });
    REQUIRE(eventually([&] { return daemon_child.load() > 0 && independent.load() > 0; }, 30000ms));
    starter->signal(SIGKILL);
    REQUIRE(starter->wait(10s));
    int s = mpx::test::reap_adopted(daemon_child.load());
    CHECK((s != -1 && WIFSIGNALED(s) && WTERMSIG(s) == SIGKILL));
    CHECK(::kill(independent.load(), 0) == 0);  // independent, as under fork
    ::kill(independent.load(), SIGKILL);
    CHECK(mpx::test::reap_adopted(independent.load()) != -1);
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: starting children leaks no descriptors") {
    {
      mpx::Process warm(spawned(), &exit_with, 0);
      warm.start();
      REQUIRE(warm.join(30s));
    }
    mpx::Value<int> v(0);
    auto before = mpx::test::open_fd_set();
    for (int i = 0; i < 5; ++i) {
      mpx::Process p(spawned(), &report_global, v);
      p.start();
      REQUIRE(p.join(30s));
      CHECK(p.exitcode() == 0);
    }
    {
      mpx::Process k(spawned(), &sleeper);
      k.start();
      k.kill();
    }  // ~Process joins it
    CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: a target may use a Pool") {
    mpx::Value<long> total(0);
    mpx::Process p(spawned(), &use_a_pool, total);
    p.start();
    REQUIRE(p.join(60s));
    CHECK(p.exitcode() == 0);
    CHECK(total.load() == 30);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "forkserver: a Condition (over a Lock) and a Barrier with an action cross") {
    check_condition_and_barrier(forkserver(), mpx::Condition(mpx::Lock()));
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: a Condition (over an RLock) and a Barrier with an action cross") {
    check_condition_and_barrier(spawned(), mpx::Condition());
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "forkserver: a Pool's workers, initializer and replacements never see a held mutex") {
    mpx::Process first(forkserver(), &exit_with, 0);  // the server starts while nothing is held
    first.start();
    REQUIRE(first.join(30s));
    check_pool_started_by(mpx::StartMethod::forkserver);
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: a Pool's workers, initializer and replacements never see a held mutex") {
    check_pool_started_by(mpx::StartMethod::spawn);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "forkserver: at most 64 shared mappings per child, else start() throws ValueError") {
    check_shared_mapping_limit(mpx::StartMethod::forkserver);
  }

  TEST_CASE_FIXTURE(SpawnChosen,
                    "spawn: at most 64 shared mappings per child, else start() throws ValueError") {
    check_shared_mapping_limit(mpx::StartMethod::spawn);
  }

  TEST_CASE_FIXTURE(PlainSignals, "forkserver: at most 4 passed descriptors, else ValueError") {
    check_passed_fd_limit(mpx::StartMethod::forkserver);
  }

  TEST_CASE_FIXTURE(SpawnChosen, "spawn: at most 4 passed descriptors, else ValueError") {
    check_passed_fd_limit(mpx::StartMethod::spawn);
  }
}
