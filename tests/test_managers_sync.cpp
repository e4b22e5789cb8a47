// Managers, part 2: queues and the synchronization kinds through proxies — blocking and
// timeouts, ownership per thread, release when a holder dies, many clients at once.
#include <mpx/managers.hpp>
#include <mpx/process.hpp>

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

template <class F>
int run_child(F&& f) {
  mpx::Process p([f = std::forward<F>(f)]() mutable {
    if (!f()) throw std::runtime_error("child check failed");
  });
  p.start();
  REQUIRE(p.join(120s));
  return *p.exitcode();
}

// A child that takes something, says so through a pipe, and waits to be killed.
template <class F>
mpx::Process holder(F take) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  mpx::Process p([take, fds]() mutable {
    ::close(fds[0]);
    take();
    (void)!::write(fds[1], "x", 1);
    for (;;) ::pause();
  });
  p.start();
  ::close(fds[1]);
  char c = 0;
  REQUIRE(::read(fds[0], &c, 1) == 1);
  ::close(fds[0]);
  return p;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

TEST_CASE("queue proxy: FIFO, Empty/Full with and without timeouts, close") {
  mpx::Manager m;
  auto q = m.queue<std::string>();
  CHECK(q.empty());
  q.put("a");
  q.put("b", 1s);
  q.put_nowait("c");
  CHECK(q.qsize() == 3);
  CHECK_FALSE(q.full());
  CHECK(q.get() == "a");
  CHECK(q.get(1s) == "b");
  CHECK(q.get_nowait() == "c");
  CHECK_THROWS_AS(q.get_nowait(), mpx::Empty);
  CHECK_THROWS_AS(q.get(false), mpx::Empty);
  auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(q.get(150ms), mpx::Empty);
  CHECK(seconds_since(t0) >= 0.14);

  auto b = m.queue<int>(2);
  b.put(1);
  b.put(2);
  CHECK(b.full());
  CHECK_THROWS_AS(b.put_nowait(3), mpx::Full);
  t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(b.put(3, 100ms), mpx::Full);
  CHECK(seconds_since(t0) >= 0.09);
  CHECK(b.get() == 1);
  b.put(3);
  CHECK(b.get() == 2);
  CHECK(b.get() == 3);

  auto copy = q;
  q.close();
  CHECK_THROWS_AS(q.put("x"), mpx::StateError);
  copy.put("still open");  // close() is per handle
  CHECK(copy.get() == "still open");
}

TEST_CASE("queue proxy: blocking get woken by a put from another process; put_many/get_many") {
  mpx::Manager m;
  auto q = m.queue<int>();
  mpx::Process producer([q]() mutable {
    std::this_thread::sleep_for(100ms);
    q.put(42);
    q.put_many({1, 2, 3, 4, 5});
  });
  producer.start();
  CHECK(q.get(30s) == 42);
  std::vector<int> got;
  while (got.size() < 5) {
    auto part = q.get_many(3, true, 30s);
    CHECK(!part.empty());
    CHECK(part.size() <= 3);
    got.insert(got.end(), part.begin(), part.end());
  }
  CHECK(got == std::vector<int>{1, 2, 3, 4, 5});
  REQUIRE(producer.join(30s));
  CHECK(producer.exitcode() == 0);

  SUBCASE("bounded put_many waits for room") {
    auto b = m.queue<int>(2);
    std::thread consumer([b]() mutable {
      for (int i = 0; i < 6; ++i) CHECK(b.get(30s) == i);
    });
    b.put_many({0, 1, 2, 3, 4, 5}, true, 30s);
    consumer.join();
    CHECK(b.empty());
    b.put(9);
    b.put(9);
    CHECK_THROWS_AS(b.put_many({1, 2}, true, 50ms), mpx::Full);
  }
}

TEST_CASE("a client blocked on the server does not stall the others") {
  mpx::Manager m;
  auto q = m.queue<int>();
  auto d = m.dict<int, int>();
  std::thread blocked([q]() mutable { CHECK(q.get(30s) == 7); });
  std::this_thread::sleep_for(50ms);
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 200; ++i) d.set(i, i);
  CHECK(d.size() == 200);
  CHECK(seconds_since(t0) < 20);
  q.put(7);
  blocked.join();
}

TEST_CASE("joinable queue proxy: task_done and join") {
  mpx::Manager m;
  auto q = m.joinable_queue<int>();
  CHECK(q.join(0ms));
  CHECK_THROWS_AS(q.task_done(), mpx::StateError);
  for (int i = 0; i < 5; ++i) q.put(i);
  CHECK_FALSE(q.join(50ms));
  mpx::Process worker([q]() mutable {
    for (int i = 0; i < 5; ++i) {
      q.get(30s);
      q.task_done();
    }
  });
  worker.start();
  CHECK(q.join(30s));
  REQUIRE(worker.join(30s));
  CHECK(worker.exitcode() == 0);
  mpx::QueueProxy<int>& plain = q;  // a joinable queue used as a queue still counts its puts
  plain.put(1);
  CHECK_FALSE(q.join(10ms));
  q.get();
  q.task_done();
  CHECK(q.join(1s));
}

TEST_CASE("200 concurrent clients on one queue: nothing lost, nothing duplicated") {
  mpx::Manager m;
  auto q = m.queue<int>(64, "hammer");
  auto results = m.list<std::vector<int>>("hammer-results");
  constexpr int kProcs = 4, kThreads = 25, kItems = 100;  // 100 producer and 100 consumer clients
  constexpr int kTotal = kProcs * kThreads * kItems;
  std::vector<mpx::Process> procs;
  for (int p = 0; p < kProcs; ++p) {
    procs.emplace_back([q, p]() mutable {
      std::vector<std::thread> ts;
      for (int t = 0; t < kThreads; ++t)
        ts.emplace_back([q, p, t]() mutable {
          for (int i = 0; i < kItems; ++i) q.put(((p * kThreads) + t) * kItems + i, true, 60s);
        });
      for (auto& t : ts) t.join();
    });
    procs.emplace_back([q, results]() mutable {
      std::vector<std::thread> ts;
      std::mutex mu;
      std::vector<int> mine;
      for (int t = 0; t < kThreads; ++t)
        ts.emplace_back([&, q]() mutable {
          std::vector<int> got;
          for (;;) {
            int v = q.get(true, 60s);
            if (v < 0) break;
            got.push_back(v);
          }
          std::lock_guard lock(mu);
          mine.insert(mine.end(), got.begin(), got.end());
        });
      for (auto& t : ts) t.join();
      results.append(mine);
    });
  }
  for (auto& p : procs) p.start();
  for (std::size_t i = 0; i < procs.size(); i += 2) {
    REQUIRE(procs[i].join(120s));
    CHECK(procs[i].exitcode() == 0);
  }
  for (int i = 0; i < kProcs * kThreads; ++i) q.put(-1, true, 60s);  // one stop per consumer
  for (std::size_t i = 1; i < procs.size(); i += 2) {
    REQUIRE(procs[i].join(120s));
    CHECK(procs[i].exitcode() == 0);
  }
  std::vector<int> all;
  for (auto& part : results.snapshot()) all.insert(all.end(), part.begin(), part.end());
  CHECK(all.size() == kTotal);
  std::sort(all.begin(), all.end());
  CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
  CHECK(all.front() == 0);
  CHECK(all.back() == kTotal - 1);
  CHECK(q.empty());
}

TEST_CASE("lock proxy: ownership per thread, timeouts, Lockable") {
  mpx::Manager m;
  auto l = m.lock();
  CHECK(l.acquire());
  CHECK_FALSE(l.acquire(false));  // not recursive
  CHECK_FALSE(l.acquire(50ms));
  std::thread([l]() mutable {
    CHECK_FALSE(l.try_lock());
    CHECK_THROWS_AS(l.release(), mpx::StateError);  // another thread's lock
  }).join();
  l.release();
  CHECK_THROWS_AS(l.release(), mpx::StateError);
  {
    std::lock_guard guard(l);
    std::thread([l]() mutable { CHECK_FALSE(l.try_lock_for(20ms)); }).join();
  }
  CHECK(l.try_lock());
  l.unlock();

  // Mutual exclusion between processes: increments under the lock are not lost.
  auto v = m.value<int>(0);
  std::vector<mpx::Process> ps;
  for (int p = 0; p < 3; ++p)
    ps.emplace_back([l, v]() mutable {
      for (int i = 0; i < 50; ++i) {
        std::lock_guard g(l);
        v.set(v.get() + 1);
      }
    });
  for (auto& p : ps) p.start();
  for (auto& p : ps) REQUIRE(p.join(60s));
  CHECK(v.get() == 150);

  // Pipelined critical sections (acquire_async ... release_async): still mutually exclusive.
  std::vector<mpx::Process> pipelined;
  for (int p = 0; p < 2; ++p)
    pipelined.emplace_back([l, v, m]() mutable {
      for (int i = 0; i < 100; ++i) {
        auto got = l.acquire_async();
        auto now = v.get_async();
        if (!got.get()) throw std::runtime_error("acquire failed");
        v.set_async(now.get() + 1);
        l.release_async();
      }
      m.flush();
    });
  for (auto& p : pipelined) p.start();
  for (auto& p : pipelined) {
    REQUIRE(p.join(60s));
    CHECK(p.exitcode() == 0);
  }
  CHECK(v.get() == 350);

  // A lock-family proxy arrives as a lock-family proxy only.
  auto wire = mpx::encode(l);
  CHECK_THROWS_AS(mpx::decode<mpx::LockProxy>(mpx::encode(m.event())), mpx::TypeMismatch);
  CHECK_THROWS_AS(mpx::decode<mpx::EventProxy>(wire), mpx::TypeMismatch);
}

TEST_CASE("a lock, semaphore slot or condition held by a SIGKILLed client is released") {
  mpx::Manager m;
  auto l = m.lock("L");
  auto s = m.semaphore(1, "S");
  auto c = m.condition("C");
  auto r = m.rlock("R");
  auto p = holder([l, s, c, r]() mutable {
    l.acquire();
    s.acquire();
    c.acquire();
    r.acquire();
    r.acquire();
  });
  CHECK_FALSE(l.acquire(50ms));
  CHECK_FALSE(s.acquire(false));
  CHECK_FALSE(c.acquire(false));
  CHECK_FALSE(r.acquire(false));
  p.kill();
  REQUIRE(p.join(10s));
  CHECK(l.acquire(10s));
  CHECK(s.acquire(10s));
  CHECK(c.acquire(10s));
  CHECK(r.acquire(10s));
  CHECK(s.get_value() == 0);
}

TEST_CASE("rlock proxy: recursive for its owner") {
  mpx::Manager m;
  auto r = m.rlock();
  CHECK(r.acquire());
  CHECK(r.acquire());
  std::thread([r]() mutable { CHECK_FALSE(r.acquire(20ms)); }).join();
  r.release();
  std::thread([r]() mutable { CHECK_FALSE(r.acquire(false)); }).join();
  r.release();
  std::thread([r]() mutable {
    CHECK(r.acquire(false));
    r.release();
  }).join();
  CHECK_THROWS_AS(r.release(), mpx::StateError);
}

TEST_CASE("semaphore and bounded semaphore proxies") {
  mpx::Manager m;
  auto s = m.semaphore(2);
  CHECK(s.get_value() == 2);
  CHECK(s.acquire());
  CHECK(s.acquire());
  CHECK_FALSE(s.acquire(false));
  CHECK_FALSE(s.acquire(30ms));
  s.release(2);
  CHECK(s.get_value() == 2);
  s.release();  // a plain semaphore may go above its start
  CHECK(s.get_value() == 3);

  auto b = m.bounded_semaphore(1);
  CHECK(b.acquire());
  b.release();
  CHECK_THROWS_AS(b.release(), mpx::StateError);
  CHECK(b.get_value() == 1);  // a refused release leaves the value unchanged

  // A release in another process wakes a waiter.
  CHECK(b.acquire());
  mpx::Process p([b]() mutable {
    std::this_thread::sleep_for(50ms);
    b.release();
  });
  p.start();
  CHECK(b.acquire(30s));
  REQUIRE(p.join(30s));
}

TEST_CASE("condition proxy: wait/notify, timeouts, ownership, rlock depth restored") {
  mpx::Manager m;
  auto c = m.condition();
  auto flag = m.value<int>(0);
  CHECK_THROWS_AS(c.wait(10ms), mpx::StateError);
  CHECK_THROWS_AS(c.notify(), mpx::StateError);

  c.acquire();
  c.acquire();  // depth 2
  auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(c.wait(100ms));
  CHECK(seconds_since(t0) >= 0.09);
  // Still held twice: two releases, the third fails.
  std::thread([c]() mutable { CHECK_FALSE(c.acquire(false)); }).join();
  c.release();
  std::thread([c]() mutable { CHECK_FALSE(c.acquire(false)); }).join();
  c.release();
  CHECK_THROWS_AS(c.release(), mpx::StateError);

  mpx::Process notifier([c, flag]() mutable {
    std::this_thread::sleep_for(100ms);
    std::lock_guard g(c);
    flag.set(1);
    c.notify_all();
  });
  notifier.start();
  {
    std::lock_guard g(c);
    CHECK(c.wait_for([&] { return flag.get() == 1; }, 30s));
  }
  REQUIRE(notifier.join(30s));

  SUBCASE("notify(n) wakes n waiters") {
    std::atomic<int> woken{0};
    std::vector<std::thread> ts;
    for (int i = 0; i < 3; ++i)
      ts.emplace_back([c, &woken]() mutable {
        std::lock_guard g(c);
        if (c.wait(30s)) ++woken;
      });
    std::this_thread::sleep_for(100ms);
    {
      std::lock_guard g(c);
      c.notify(2);
    }
    for (int i = 0; i < 200 && woken < 2; ++i) std::this_thread::sleep_for(10ms);
    CHECK(woken == 2);
    {
      std::lock_guard g(c);
      c.notify();
    }
    for (auto& t : ts) t.join();
    CHECK(woken == 3);
  }
}

TEST_CASE("event proxy") {
  mpx::Manager m;
  auto e = m.event();
  CHECK_FALSE(e.is_set());
  CHECK_FALSE(e.wait(30ms));
  mpx::Process setter([e]() mutable {
    std::this_thread::sleep_for(50ms);
    e.set();
  });
  setter.start();
  CHECK(e.wait(30s));
  CHECK(e.is_set());
  CHECK(e.wait());
  e.clear();
  CHECK_FALSE(e.is_set());
  REQUIRE(setter.join(30s));
}

TEST_CASE("barrier proxy: indices, timeout breaks it, abort, reset") {
  mpx::Manager m;
  auto b = m.barrier(3);
  CHECK(b.parties() == 3);
  std::mutex mu;
  std::set<unsigned> indices;
  std::vector<std::thread> ts;
  for (int i = 0; i < 3; ++i)
    ts.emplace_back([b, &mu, &indices]() mutable {
      unsigned idx = b.wait(30s);
      std::lock_guard g(mu);
      indices.insert(idx);
    });
  for (auto& t : ts) t.join();
  CHECK(indices == std::set<unsigned>{0, 1, 2});
  CHECK(b.n_waiting() == 0);

  std::thread waiter([b]() mutable { CHECK_THROWS_AS(b.wait(30s), mpx::BrokenBarrierError); });
  for (int i = 0; i < 200 && b.n_waiting() < 1; ++i) std::this_thread::sleep_for(5ms);
  CHECK(b.n_waiting() == 1);
  CHECK_THROWS_AS(b.wait(50ms), mpx::BrokenBarrierError);  // times out and breaks it
  waiter.join();
  CHECK(b.broken());
  CHECK_THROWS_AS(b.wait(), mpx::BrokenBarrierError);
  b.reset();
  CHECK_FALSE(b.broken());
  b.abort();
  CHECK(b.broken());
  b.reset();

  // A party that dies while waiting breaks the barrier for the others.
  auto p = holder([b]() mutable {
    std::thread([b]() mutable {
      try {
        b.wait();
      } catch (...) {
      }
    }).detach();
    while (b.n_waiting() < 1) std::this_thread::sleep_for(5ms);
  });
  p.kill();
  REQUIRE(p.join(10s));
  for (int i = 0; i < 500 && !b.broken(); ++i) std::this_thread::sleep_for(10ms);
  CHECK(b.broken());
}
