// mpx::Pool under stress: dying workers, huge messages, lifecycle orders, several pools, threads
// at fork time, signals, and nothing left behind.
#include <doctest/doctest.h>
#include <mpx/connection.hpp>
#include <mpx/pool.hpp>
#include <mpx/process.hpp>
#include <support.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr auto kLong = std::chrono::seconds(60);

int square(int x) { return x * x; }
int pid_of(int) { return static_cast<int>(::getpid()); }
int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
// Crashes, with the signal's default action even under sanitizers.
int crash(int how) {
  switch (how) {
    case 1:
      ::signal(SIGSEGV, SIG_DFL);
      ::raise(SIGSEGV);
      break;
    case 2:
      ::signal(SIGABRT, SIG_DFL);
      std::abort();
    case 3:
      ::kill(::getpid(), SIGKILL);
      ::pause();
      break;
    case 4:
      ::_exit(3);
  }
  return how;
}
int crash_on(int x) { return x == 13 ? crash(3) : x; }
int g_stamp = 0;  // what the program looked like when a pool was built
int stamp(int) { return g_stamp; }

std::vector<char> big_result(int mib) {
  std::vector<char> v(static_cast<std::size_t>(mib) << 20);
  for (std::size_t i = 0; i < v.size(); i += 4096) v[i] = static_cast<char>(i / 4096);
  return v;
}
std::size_t checksum(const std::string& s) {
  std::size_t h = s.size();
  for (std::size_t i = 0; i < s.size(); i += 4096) h = h * 31 + static_cast<unsigned char>(s[i]);
  return h;
}

using mpx::test::gone;

using mpx::test::parent_of;

}  // namespace

TEST_CASE("a dying worker fails only its task, with WorkerLost, and is replaced") {
  mpx::Pool pool(2);
  struct Case {
    int how, code;
  };
  for (Case c : {Case{1, -SIGSEGV}, Case{2, -SIGABRT}, Case{3, -SIGKILL}, Case{4, 3}}) {
    CAPTURE(c.how);
    std::vector<mpx::AsyncResult<int>> others;
    for (int i = 0; i < 20; ++i) others.push_back(pool.apply_async(square, i));
    auto bad = pool.apply_async(crash, c.how);
    for (int i = 20; i < 40; ++i) others.push_back(pool.apply_async(square, i));
    try {
      bad.get(kLong);
      FAIL("no exception");
    } catch (const mpx::WorkerLost& e) {
      CHECK(e.exitcode() == c.code);
      CHECK(std::string(e.what()).find("died while running this task") != std::string::npos);
    }
    for (int i = 0; i < 40; ++i) CHECK(others[i].get(kLong) == i * i);
  }
  std::set<int> pids;
  for (int p : pool.map(pid_of, std::vector<int>(40, 0), 1)) pids.insert(p);
  CHECK(pids.size() <= 2);
  CHECK(pool.apply(square, 12) == 144);
}

TEST_CASE("tasks queued behind the one that killed its worker run elsewhere") {
  mpx::Pool pool(1);
  auto bad = pool.apply_async(crash, 3);
  std::vector<mpx::AsyncResult<int>> queued;
  for (int i = 0; i < 10; ++i) queued.push_back(pool.apply_async(square, i));
  CHECK_THROWS_AS(bad.get(kLong), mpx::WorkerLost);
  for (int i = 0; i < 10; ++i) CHECK(queued[i].get(kLong) == i * i);
}

TEST_CASE("a crash in a chunk: map fails with WorkerLost; imap fails the whole chunk only") {
  mpx::Pool pool(2);
  std::vector<int> xs(40);
  std::iota(xs.begin(), xs.end(), 0);
  CHECK_THROWS_AS(pool.map(crash_on, xs, 4), mpx::WorkerLost);
  int ok = 0, lost = 0;
  auto range = pool.imap(crash_on, xs, 4);
  int expect = 0;
  for (auto it = range.begin(); it != range.end(); ++it, ++expect) {
    try {
      int v = *it;
      CHECK(v == expect);
      ++ok;
    } catch (const mpx::WorkerLost& e) {
      CHECK(expect / 4 == 13 / 4);  // chunk-mates of 13 only
      CHECK(e.exitcode() == -SIGKILL);
      ++lost;
    }
  }
  CHECK(ok == 36);
  CHECK(lost == 4);
  CHECK(pool.map(square, std::vector<int>{2, 3}) == std::vector<int>{4, 9});
}

TEST_CASE("a worker killed from outside while idle is replaced") {
  mpx::Pool pool(2);
  std::set<int> before;
  for (int p : pool.map(pid_of, std::vector<int>(20, 0), 1)) before.insert(p);
  REQUIRE(!before.empty());
  pid_t victim = *before.begin();
  ::kill(victim, SIGKILL);
  CHECK(gone(victim, 5s));
  std::vector<int> xs(50);
  std::iota(xs.begin(), xs.end(), 0);
  auto r = pool.map(square, xs, 1);
  CHECK(r[49] == 49 * 49);
  std::set<int> after;
  for (int p : pool.map(pid_of, std::vector<int>(20, 0), 1)) after.insert(p);
  CHECK(after.count(victim) == 0);
}

TEST_CASE("64 MiB results and arguments") {
  mpx::Pool pool(2);
  auto v = pool.apply(big_result, 64);
  REQUIRE(v.size() == (std::size_t{64} << 20));
  bool ok = true;
  for (std::size_t i = 0; i < v.size(); i += 4096) ok = ok && v[i] == static_cast<char>(i / 4096);
  CHECK(ok);
  std::string arg(std::size_t{64} << 20, 'x');
  for (std::size_t i = 0; i < arg.size(); i += 4096) arg[i] = static_cast<char>('a' + (i / 4096) % 26);
  CHECK(pool.apply(checksum, arg) == checksum(arg));
  auto two = pool.map(big_result, std::vector<int>{8, 8, 8}, 1);
  CHECK(two.size() == 3);
  CHECK(two[2].size() == (std::size_t{8} << 20));
  CHECK(pool.apply(square, 5) == 25);
}

TEST_CASE("lifecycle: close, terminate and join in every order") {
  {
    mpx::Pool p(1);
    CHECK_THROWS_AS(p.join(), mpx::StateError);
    p.close();
    CHECK_THROWS_AS(p.apply(square, 1), mpx::StateError);
    CHECK_THROWS_AS(p.apply_async(square, 1), mpx::StateError);
    CHECK_THROWS_AS(p.map(square, std::vector<int>{1}), mpx::StateError);
    CHECK_THROWS_AS(p.map_async(square, std::vector<int>{}), mpx::StateError);
    p.join();
    p.join();
  }
  {  // close waits for submitted work
    mpx::Pool p(2);
    auto r = p.apply_async(sleep_ms, 200);
    p.close();
    p.join();
    CHECK(r.ready());
    CHECK(r.get() == 200);
  }
  {  // terminate fails pending work at once, including what had not started
    mpx::Pool p(1);
    auto running = p.apply_async(sleep_ms, 30000);
    auto queued = p.apply_async(sleep_ms, 30000);
    auto m = p.map_async(sleep_ms, std::vector<int>(10, 30000), 1);
    std::this_thread::sleep_for(50ms);
    auto t0 = std::chrono::steady_clock::now();
    p.terminate();
    CHECK(std::chrono::steady_clock::now() - t0 < 10s);
    CHECK_THROWS_AS(running.get(1s), mpx::StateError);
    CHECK_THROWS_AS(queued.get(1s), mpx::StateError);
    CHECK_THROWS_AS(m.get(1s), mpx::StateError);
    CHECK_THROWS_AS(p.apply(square, 1), mpx::StateError);
    p.terminate();
    p.close();
    p.join();
  }
  {  // close, then terminate, then join
    mpx::Pool p(2);
    auto r = p.apply_async(sleep_ms, 30000);
    p.close();
    p.terminate();
    p.join();
    CHECK_THROWS_AS(r.get(1s), mpx::StateError);
  }
  {  // terminate then the destructor
    mpx::Pool p(2);
    (void)p.apply_async(sleep_ms, 30000);
    p.terminate();
  }
  {  // the destructor alone: close + join
    std::atomic<int> done{0};
    {
      mpx::Pool p(2);
      for (int i = 0; i < 4; ++i) (void)p.apply_async(sleep_ms, 50).then([&](const int&) { ++done; });
    }
    CHECK(done == 4);
  }
  {  // a thread blocked in get() when another one terminates
    mpx::Pool p(1);
    auto r = p.apply_async(sleep_ms, 30000);
    std::atomic<bool> got_state_error{false};
    std::thread waiter([&] {
      try {
        r.get(kLong);
      } catch (const mpx::StateError&) {
        got_state_error = true;
      }
    });
    std::this_thread::sleep_for(100ms);
    p.terminate();
    waiter.join();
    CHECK(got_state_error);
  }
  {  // terminate while imap is being iterated
    mpx::Pool p(1);
    auto range = p.imap(sleep_ms, std::vector<int>(20, 20000));
    std::thread killer([&] {
      std::this_thread::sleep_for(100ms);
      p.terminate();
    });
    int failed = 0;
    for (auto it = range.begin(); it != range.end(); ++it) {
      try {
        (void)*it;
      } catch (const mpx::StateError&) {
        ++failed;
      }
    }
    killer.join();
    CHECK(failed >= 1);
  }
}

TEST_CASE("close, terminate and join: every order of every subset, with a task running") {
  // What each order must do, worked out from the rules: join() before close()/terminate() is a
  // StateError; a terminate() before a successful join() fails the task; otherwise it finishes
  // (the destructor closes and joins when neither was asked for).
  enum Op { kClose, kTerminate, kJoin };
  std::vector<std::vector<Op>> orders;
  std::vector<Op> ops{kClose, kTerminate, kJoin};
  for (unsigned mask = 0; mask < 8; ++mask) {
    std::vector<Op> sub;
    for (unsigned i = 0; i < 3; ++i)
      if (mask & (1u << i)) sub.push_back(ops[i]);
    std::sort(sub.begin(), sub.end());
    do orders.push_back(sub);
    while (std::next_permutation(sub.begin(), sub.end()));
  }
  orders.push_back({kClose, kClose, kJoin, kJoin, kTerminate, kTerminate});
  orders.push_back({kTerminate, kTerminate, kJoin, kClose, kJoin});
  for (const auto& order : orders) {
    bool closed = false, terminated = false, joined = false, terminate_first = false;
    std::vector<bool> join_throws;
    for (Op op : order) {
      if (op == kClose) closed = true;
      if (op == kTerminate && !joined) terminated = terminate_first = true;
      if (op == kJoin) {
        join_throws.push_back(!closed && !terminated);
        if (closed || terminated) joined = true;
      }
    }
    std::string name;
    for (Op op : order) name += op == kClose ? "close " : op == kTerminate ? "terminate " : "join ";
    CAPTURE(name);
    mpx::AsyncResult<int> r;
    auto t0 = std::chrono::steady_clock::now();
    {
      mpx::Pool p(2);
      r = p.apply_async(sleep_ms, terminate_first ? 30000 : 100);
      auto other = p.apply_async(square, 5);
      CHECK(other.get(kLong) == 25);
      std::size_t j = 0;
      for (Op op : order) {
        if (op == kClose) p.close();
        if (op == kTerminate) p.terminate();
        if (op == kJoin) {
          if (join_throws[j++])
            CHECK_THROWS_AS(p.join(), mpx::StateError);
          else
            p.join();
        }
      }
      if (closed || terminated) CHECK_THROWS_AS(p.apply(square, 1), mpx::StateError);
    }
    CHECK(std::chrono::steady_clock::now() - t0 < 20s);  // a terminated 30 s task is not waited for
    REQUIRE(r.wait(kLong));
    if (terminate_first)
      CHECK_THROWS_AS(r.get(), mpx::StateError);
    else
      CHECK(r.get() == 100);
  }
}

TEST_CASE("two pools at once, used from two threads") {
  mpx::Pool a(2), b(2);
  std::atomic<long> sum_b{0};
  std::thread t([&] {
    for (int i = 0; i < 200; ++i) sum_b += b.apply(square, i);
  });
  long sum_a = 0;
  for (int i = 0; i < 200; ++i) sum_a += a.apply(square, i);
  t.join();
  long want = 0;
  for (int i = 0; i < 200; ++i) want += i * i;
  CHECK(sum_a == want);
  CHECK(sum_b == want);
  auto ra = a.map_async(square, std::vector<int>(1000, 3));
  auto rb = b.map_async(square, std::vector<int>(1000, 4));
  CHECK(ra.get(kLong)[999] == 9);
  CHECK(rb.get(kLong)[999] == 16);
}

TEST_CASE("pools built while other threads allocate, lock, print and run pools") {
  // Where a child forked mid-allocation cannot allocate (AddressSanitizer's runtime, see
  // kForkWhileThreadsAllocateIsSafe), the other threads only lock and print. Allocating there,
  // they hung this case about once in 50 runs under ASan: a pool's spawner, forked while another
  // pool's thread held the allocator's large-allocation lock, forked workers that spun in
  // LargeMmapAllocator::Allocate on their first 256 KiB buffer, and map() waited for them.
  constexpr bool allocate = mpx::test::kForkWhileThreadsAllocateIsSafe;
  std::atomic<bool> stop{false};
  std::mutex shared;
  std::vector<std::thread> noise;
  FILE* devnull = std::fopen("/dev/null", "w");
  REQUIRE(devnull != nullptr);
  std::fprintf(devnull, "start\n");  // its buffer is allocated here, before any thread runs
  std::atomic<int> running{0};
  for (int k = 0; k < 2; ++k)
    noise.emplace_back([&] {
      ++running;
      while (!stop) {
        std::lock_guard lk(shared);
        if (allocate) {
          std::vector<std::string> v(64, std::string(100, 'x'));
          std::fprintf(devnull, "%zu\n", v.size());
        } else {
          std::fprintf(devnull, "%d\n", 64);
        }
      }
    });
  std::atomic<int> rounds{0};
  for (int k = 0; k < 2 && allocate; ++k)
    noise.emplace_back([&] {
      for (int i = 0; i < 5; ++i) {
        mpx::Pool p(2);
        auto r = p.map([](int x) { return std::to_string(x) + std::string(50, 'y'); },
                       std::vector<int>(200, 1), 10);
        if (r.size() == 200) ++rounds;
      }
    });
  while (running < 2) std::this_thread::yield();  // past their start, which allocates
  for (int i = 0; i < 5; ++i) {
    mpx::Pool p(2);
    std::vector<std::string> big(100, std::string(1000, 'z'));
    auto r = p.map([](const std::string& s) { return s.size(); }, big, 7);
    CHECK(r.size() == 100);
    CHECK(p.apply(square, i) == i * i);
  }
  for (std::size_t k = 2; k < noise.size(); ++k) noise[k].join();
  stop = true;
  noise[0].join();
  noise[1].join();
  std::fclose(devnull);
  CHECK(rounds == (allocate ? 10 : 0));
}

TEST_CASE("a pool made by a thread that has exited keeps its workers") {
  std::unique_ptr<mpx::Pool> p;
  std::thread([&] { p = std::make_unique<mpx::Pool>(2); }).join();
  std::this_thread::sleep_for(50ms);
  CHECK(p->apply(square, 7) == 49);
  CHECK(p->map(square, std::vector<int>(100, 2), 1)[99] == 4);
  p.reset();
}

TEST_CASE("workers ignore SIGINT; the pool's process dying takes every worker with it") {
  {
    mpx::Pool pool(1);
    pid_t w = pool.apply(pid_of, 0);
    ::kill(w, SIGINT);
    std::this_thread::sleep_for(100ms);
    CHECK(::kill(w, 0) == 0);
    CHECK(pool.apply(pid_of, 0) == w);
  }
  // Built with no other thread, the pool forks its workers itself; with one, a spawner
  // forks them. Either way they go with the pool's process.
  for (int sig : {SIGINT, SIGKILL, SIGTERM}) {
    const bool threaded = sig == SIGTERM;
    CAPTURE(sig);
    auto [rd, wr] = mpx::Pipe(false);
    mpx::Process owner([&wr, threaded] {
      ::signal(SIGINT, SIG_DFL);  // the test framework's handlers are not what a program has
      ::signal(SIGTERM, SIG_DFL);
      if (threaded) std::thread([] { std::this_thread::sleep_for(60s); }).detach();
      mpx::Pool pool(2);
      auto pids = pool.map(pid_of, std::vector<int>(20, 0), 1);
      std::set<int> s(pids.begin(), pids.end());
      wr.send(std::vector<int>(s.begin(), s.end()));
      std::this_thread::sleep_for(60s);
    });
    owner.start();
    wr.close();
    REQUIRE(rd.poll(kLong));
    auto workers = rd.recv<std::vector<int>>();
    REQUIRE(!workers.empty());
    pid_t parent = parent_of(workers[0]);
    CHECK((parent != owner.pid()) == threaded);
    ::kill(owner.pid(), sig);
    CHECK(owner.join(10s));
    CHECK(owner.exitcode() == -sig);
    for (int w : workers) CHECK(gone(w, 5s));
    CHECK(gone(parent, 5s));
  }
}

namespace {
// Reports its pid on the inherited pipe, then works for a long time.
int announce_and_sleep(int fd) {
  int pid = static_cast<int>(::getpid());
  if (::write(fd, &pid, sizeof pid) != static_cast<ssize_t>(sizeof pid)) return -1;
  std::this_thread::sleep_for(60s);
  return pid;
}
}  // namespace

TEST_CASE("SIGINT while tasks run: the owner, blocked in map(), stops at once and takes the pool along") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  mpx::Process owner([&fds] {
    ::signal(SIGINT, SIG_DFL);  // what a program has (the test framework installs its own)
    ::close(fds[0]);
    mpx::Pool pool(2);
    auto r = pool.map(announce_and_sleep, std::vector<int>{fds[1], fds[1]}, 1);  // blocks for 60 s
    std::_Exit(r.size() == 2 ? 0 : 1);
  });
  owner.start();
  ::close(fds[1]);
  std::vector<pid_t> workers;
  for (int i = 0; i < 2; ++i) {
    pollfd p{fds[0], POLLIN, 0};
    REQUIRE(::poll(&p, 1, 60000) == 1);
    int pid = 0;
    REQUIRE(::read(fds[0], &pid, sizeof pid) == static_cast<ssize_t>(sizeof pid));
    workers.push_back(pid);
  }
  ::close(fds[0]);
  // Both workers are inside their tasks and the owner's main thread waits on them (the owner
  // had no other thread, so it forked them itself).
  CHECK(parent_of(workers[0]) == owner.pid());
  CHECK(parent_of(workers[1]) == owner.pid());
  ::kill(owner.pid(), SIGINT);
  CHECK(owner.join(10s));
  CHECK(owner.exitcode() == -SIGINT);
  for (pid_t w : workers) CHECK(gone(w, 5s));
}

TEST_CASE("a second pool made while the first one's threads are busy") {
  mpx::Pool first(2);
  std::atomic<int> callbacks{0};
  std::vector<mpx::AsyncResult<int>> busy;
  for (int i = 0; i < 2000; ++i)
    busy.push_back(first.apply_async(square, i).then([&](const int&) { ++callbacks; }));
  std::thread driver([&] {  // another thread leads the first pool's I/O meanwhile
    for (int i = 0; i < 50; ++i) CHECK(first.apply(square, i) == i * i);
  });
  for (int k = 0; k < 3; ++k) {
    mpx::Pool second(2);
    CHECK(second.map(square, std::vector<int>(100, k), 7)[99] == k * k);
  }
  driver.join();
  for (int i = 0; i < 2000; ++i) CHECK(busy[static_cast<std::size_t>(i)].get(kLong) == i * i);
  first.close();
  first.join();
  CHECK(callbacks == 2000);
}

TEST_CASE("a pool built without threads forks its workers itself, and its spawner the replacements") {
  auto [rd, wr] = mpx::Pipe(false);
  mpx::Process owner([&wr] {
    const int me = static_cast<int>(::getpid());
    g_stamp = 1;
    mpx::Pool pool(2);
    g_stamp = 2;  // after the pool was built: no worker sees it, replacements included
    std::set<int> first;
    for (int p : pool.map(pid_of, std::vector<int>(20, 0), 1)) first.insert(p);
    int direct = 1;
    for (int p : first) direct &= parent_of(p) == me;
    int lost = 0;
    try {
      pool.apply(crash, 3);
    } catch (const mpx::WorkerLost& e) {
      lost = e.exitcode() == -SIGKILL;
    }
    int by_server = 0;
    std::set<int> now;
    for (int p : pool.map(pid_of, std::vector<int>(40, 0), 1)) now.insert(p);
    for (int p : now)
      if (!first.count(p) && parent_of(p) != me) ++by_server;
    int works = pool.apply(square, 7) == 49;
    int stamps = 0;
    for (int v : pool.map(stamp, std::vector<int>(40, 0), 1)) stamps += v == 1;
    wr.send(std::vector<int>{direct, lost, by_server, works, stamps});
  });
  owner.start();
  wr.close();
  REQUIRE(rd.poll(kLong));
  auto v = rd.recv<std::vector<int>>();
  REQUIRE(v.size() == 5);
  CHECK(v[0] == 1);  // the first workers are the owner's children
  CHECK(v[1] == 1);  // the killed one failed its task with WorkerLost
  CHECK(v[2] >= 1);  // its replacement is a child of the spawner
  CHECK(v[3] == 1);
  CHECK(v[4] == 40);  // the replacement is a copy of the program as it was when the pool was built
  CHECK(owner.join(kLong));
  CHECK(owner.exitcode() == 0);
}

TEST_CASE("no fds or children left behind by pools that lose workers, whatever ran before") {
  // Measured around pools of its own, so it means the same run alone, first or after every
  // other case (a count taken when the program started only saw what the cases before it did).
  // A first pool settles anything the library makes once per process; then the set of open
  // descriptors, not just their number, must come back exactly.
  {
    mpx::Pool settle(2);
    CHECK(settle.apply(square, 3) == 9);
  }
  const mpx::test::FdSet before = mpx::test::open_fd_set();
  {  // workers killed in a task and while idle, replaced by the spawner
    mpx::Pool pool(2);
    CHECK_THROWS_AS(pool.apply(crash, 3), mpx::WorkerLost);
    CHECK_THROWS_AS(pool.map(crash_on, std::vector<int>{1, 13, 2}, 1), mpx::WorkerLost);
    pid_t idle = pool.apply(pid_of, 0);
    ::kill(idle, SIGKILL);
    CHECK(gone(idle, 5s));
    CHECK(pool.map(square, std::vector<int>(50, 3), 1)[49] == 9);
  }
  {  // terminate with tasks running
    mpx::Pool pool(2);
    auto slow = pool.map_async(sleep_ms, std::vector<int>{30000, 30000}, 1);
    pool.terminate();
    CHECK_THROWS(slow.get(kLong));
    pool.join();
  }
  {  // built while another thread runs (it only sleeps: see kForkWhileThreadsAllocateIsSafe), so
     // a spawner forks the workers; one of them is killed and replaced
    mpx::test::SleepingThread other;
    mpx::Pool pool(2);
    CHECK_THROWS_AS(pool.apply(crash, 3), mpx::WorkerLost);
    CHECK(pool.map(square, std::vector<int>(20, 6), 1)[19] == 36);
  }
  CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
  int status = 0;
  CHECK(::waitpid(-1, &status, WNOHANG) <= 0);
  CHECK(mpx::active_children().empty());
}
