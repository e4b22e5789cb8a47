#include <mpx/detail/futex.hpp>
#include <mpx/detail/shm.hpp>
#include <mpx/process.hpp>
#include <mpx/synchronize.hpp>

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>
#include <children.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

using namespace std::chrono_literals;

namespace {

// Children report through plain shared memory: a CHECK inside a child would be lost.
struct Board {
  std::atomic<int> ints[32];
  long plain_counter;  // deliberately not atomic: only a lock makes the total exact
};

std::shared_ptr<Board> board() { return mpx::detail::make_shared_object<Board>(); }

const mpx::Process::Options kDaemon{"", true};

// Children these tests kill should just die, not run the framework's crash reporter.
struct PlainSignals {
  PlainSignals() {
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGABRT, SIG_DFL);
  }
};

using mpx::test::join_all;
using mpx::test::start_children;

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = 10000ms) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return pred();
}

// Shared anonymous mappings (what mpx objects live in) show up as "/dev/zero (deleted)".
std::size_t count_maps() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find("/dev/zero") != std::string::npos;
  return n;
}

template <class Lk>
void counting_stress(Lk lock, int processes, int rounds) {
  auto b = board();
  auto kids = start_children(processes, [=](int) mutable {
    for (int i = 0; i < rounds; ++i) {
      std::lock_guard guard(lock);
      long v = b->plain_counter;
      if (i % 64 == 0) std::this_thread::yield();  // widen the window a lost update would need
      b->plain_counter = v + 1;
    }
  });
  CHECK(join_all(kids));
  CHECK(b->plain_counter == static_cast<long>(processes) * rounds);
}

}  // namespace

TEST_SUITE("synchronize") {
  TEST_CASE("handles are copyable and satisfy the standard lock requirements") {
    static_assert(std::is_copy_constructible_v<mpx::Lock> && std::is_copy_assignable_v<mpx::Lock>);
    static_assert(std::is_copy_constructible_v<mpx::Condition> && std::is_copy_constructible_v<mpx::Barrier>);
    static_assert(std::is_copy_constructible_v<mpx::Event> &&
                  std::is_copy_constructible_v<mpx::BoundedSemaphore>);
    mpx::Lock lock;
    mpx::RLock rlock;
    {
      std::lock_guard g(lock);
      CHECK(lock.held());
    }
    CHECK_FALSE(lock.held());
    {
      std::unique_lock u(rlock, 100ms);  // try_lock_for
      CHECK(u.owns_lock());
      std::unique_lock again(rlock,
                             std::chrono::system_clock::now() + 100ms);  // try_lock_until, another clock
      CHECK(again.owns_lock());
      CHECK(rlock.depth() == 2);
    }
    {
      std::scoped_lock both(lock, rlock);
      CHECK(lock.held());
      CHECK(rlock.held());
    }
    CHECK_FALSE(rlock.held());
    mpx::Lock copy = lock;
    CHECK(copy.acquire(0ms));  // the Timeout-only overload
    CHECK(lock.held());        // one primitive behind both handles
    copy.release();
  }

  TEST_CASE("Lock: ownership rules") {
    mpx::Lock lock;
    CHECK_THROWS_AS(lock.release(), mpx::StateError);
    CHECK(lock.acquire());
    CHECK_FALSE(lock.acquire(false));  // not recursive
    auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(lock.acquire(30ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
    CHECK_THROWS_AS(lock.acquire(), mpx::StateError);  // would wait for itself forever
    bool other_thread_refused = false;
    std::thread([&] {
      try {
        lock.release();
      } catch (const mpx::StateError&) {
        other_thread_refused = true;
      }
      other_thread_refused = other_thread_refused && !lock.try_lock();
    }).join();
    CHECK(other_thread_refused);
    lock.release();
    CHECK(lock.try_lock());
    lock.unlock();
  }

  TEST_CASE_FIXTURE(PlainSignals, "Lock: held in one process, refused and then granted in another") {
    mpx::Lock lock;
    mpx::Event held, go;
    auto b = board();
    mpx::Process holder(kDaemon, [=]() mutable {
      lock.acquire();
      held.set();
      go.wait(20s);
      lock.release();
    });
    holder.start();
    REQUIRE(held.wait(20s));
    CHECK_FALSE(lock.try_lock());
    CHECK_FALSE(lock.acquire(20ms));
    CHECK_THROWS_AS(lock.release(), mpx::StateError);  // held by another process
    go.set();
    CHECK(lock.acquire(20s));
    lock.release();
    CHECK(holder.join(20s));
    CHECK(holder.exitcode() == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "a lock held at fork is not held by the child") {
    mpx::RLock rlock;
    auto b = board();
    rlock.acquire();
    mpx::Process child(kDaemon, [=]() mutable {
      b->ints[0] = rlock.held() ? 1 : 2;
      try {
        rlock.release();
      } catch (const mpx::StateError&) {
        b->ints[1] = 1;
      }
      b->ints[2] = rlock.acquire(false) ? 1 : 2;
    });
    child.start();
    CHECK(child.join(20s));
    CHECK(b->ints[0] == 2);
    CHECK(b->ints[1] == 1);
    CHECK(b->ints[2] == 2);
    rlock.release();
  }

  TEST_CASE("RLock: recursion, depth, and release only by the holder") {
    mpx::RLock r;
    CHECK(r.depth() == 0);
    CHECK_THROWS_AS(r.release(), mpx::StateError);
    CHECK(r.acquire());
    CHECK(r.acquire(false));
    CHECK(r.acquire(10ms));
    CHECK(r.depth() == 3);
    bool refused = false;
    std::thread([&] { refused = !r.acquire(false) && r.depth() == 0; }).join();
    CHECK(refused);
    r.release();
    r.release();
    CHECK(r.held());
    r.release();
    CHECK_FALSE(r.held());
    bool taken = false;
    std::thread([&] {
      taken = r.acquire(false);
      if (taken) r.release();
    }).join();
    CHECK(taken);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "stress: 4 processes x N increments under each lock kind give the exact total") {
    counting_stress(mpx::Lock(), 4, 3000);
    counting_stress(mpx::RLock(), 4, 3000);
    counting_stress(mpx::Semaphore(1), 4, 3000);
    // Threads inside processes too: ownership is per thread of a process.
    mpx::Lock lock;
    auto b = board();
    auto kids = start_children(2, [=](int) mutable {
      std::vector<std::thread> threads;
      for (int t = 0; t < 2; ++t)
        threads.emplace_back([&] {
          for (int i = 0; i < 2000; ++i) {
            std::lock_guard g(lock);
            b->plain_counter = b->plain_counter + 1;
          }
        });
      for (auto& th : threads) th.join();
    });
    for (int i = 0; i < 2000; ++i) {
      std::lock_guard g(lock);
      b->plain_counter = b->plain_counter + 1;
    }
    CHECK(join_all(kids));
    CHECK(b->plain_counter == 2 * 2 * 2000 + 2000);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "crash: a Lock or RLock whose holder is SIGKILLed is taken by the next acquirer") {
    for (bool recursive : {false, true}) {
      CAPTURE(recursive);
      mpx::Lock lock;
      mpx::RLock rlock;
      mpx::Event held;
      mpx::Process holder(kDaemon, [=]() mutable {
        if (recursive) {
          rlock.acquire();
          rlock.acquire();
        } else {
          lock.acquire();
        }
        held.set();
        for (;;) ::pause();
      });
      holder.start();
      REQUIRE(held.wait(20s));
      if (recursive) {
        CHECK_FALSE(rlock.acquire(false));
      } else {
        CHECK_FALSE(lock.acquire(false));
      }
      holder.kill();
      REQUIRE(holder.join(20s));
      if (recursive) {
        REQUIRE(rlock.acquire(10s));
        CHECK(rlock.depth() == 1);
        rlock.release();
        CHECK_FALSE(rlock.held());
      } else {
        REQUIRE(lock.acquire(10s));
        lock.release();
      }
    }
  }

  TEST_CASE_FIXTURE(PlainSignals, "crash: a waiter already asleep gets the lock when the holder dies") {
    mpx::Lock lock;
    mpx::Event held;
    mpx::Process holder(kDaemon, [=]() mutable {
      lock.acquire();
      held.set();
      for (;;) ::pause();
    });
    holder.start();
    REQUIRE(held.wait(20s));
    std::atomic<int> result{0};
    std::thread waiter([&] {
      bool got = lock.acquire(20s);
      result = got ? 1 : 2;
      if (got) lock.release();
    });
    std::this_thread::sleep_for(50ms);  // let it fall asleep (the outcome must not depend on it)
    holder.kill();
    waiter.join();
    CHECK(result == 1);
    CHECK(holder.join(20s));
  }

  TEST_CASE("crash: a thread that exits holding a lock does not leave it locked") {
    mpx::Lock lock;
    std::thread([&] { lock.acquire(); }).join();
    CHECK(lock.acquire(10s));
    lock.release();
  }

  TEST_CASE("dropping the last handle of a held lock is safe") {
    for (int i = 0; i < 3; ++i) {
      mpx::Lock lock;
      lock.acquire();
    }  // the mapping stays (its robust-list entry must stay valid); other locks keep working
    mpx::Lock other;
    for (int i = 0; i < 100; ++i) {
      other.acquire();
      other.release();
    }
    std::thread([] {
      mpx::RLock r;
      r.acquire();
    }).join();  // the thread's exit walks its robust list
    CHECK(other.try_lock());
    other.unlock();
  }

  TEST_CASE_FIXTURE(PlainSignals, "Semaphore: values, timeouts, release(n) wakes n processes") {
    mpx::Semaphore s(2);
    CHECK(s.get_value() == 2);
    CHECK(s.acquire());
    CHECK(s.acquire(false));
    CHECK(s.get_value() == 0);
    CHECK_FALSE(s.acquire(false));
    auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(s.acquire(30ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
    s.release(2);
    CHECK(s.get_value() == 2);
    CHECK(s.acquire());
    CHECK(s.acquire());

    auto b = board();
    mpx::Semaphore ready(0);
    auto kids = start_children(3, [=](int i) mutable {
      ready.release();
      b->ints[i] = s.acquire(20s) ? 1 : 2;
    });
    for (int i = 0; i < 3; ++i) REQUIRE(ready.acquire(20s));
    s.release(2);
    CHECK(eventually([&] { return b->ints[0] + b->ints[1] + b->ints[2] == 2; }));
    s.release();
    CHECK(join_all(kids));
    CHECK(b->ints[0] + b->ints[1] + b->ints[2] == 3);
    CHECK(s.get_value() == 0);

    mpx::Semaphore big(0);
    big.release(UINT32_MAX);
    CHECK_THROWS_AS(big.release(), mpx::ValueError);
    CHECK(big.get_value() == UINT32_MAX);
  }

  TEST_CASE("BoundedSemaphore: a refused release leaves the value unchanged") {
    mpx::BoundedSemaphore s(2);
    CHECK_THROWS_AS(s.release(), mpx::StateError);
    CHECK(s.get_value() == 2);
    CHECK(s.acquire());
    CHECK_THROWS_AS(s.release(2), mpx::StateError);
    CHECK(s.get_value() == 1);
    s.release();
    CHECK(s.get_value() == 2);
    mpx::Semaphore& base = s;  // still bounded through the base
    CHECK_THROWS_AS(base.release(), mpx::StateError);
    CHECK(s.get_value() == 2);
    mpx::BoundedSemaphore zero(0);
    CHECK_THROWS_AS(zero.release(), mpx::StateError);
    CHECK_FALSE(zero.acquire(false));
  }

  TEST_CASE("counts that do not fit 32 bits are refused with ValueError, never truncated") {
    constexpr std::uint64_t kMax = UINT32_MAX;
    // The spellings callers use compile as before (int, unsigned, size_t, defaults).
    static_assert(std::is_constructible_v<mpx::Semaphore, int>);
    static_assert(!std::is_convertible_v<int, mpx::Semaphore>);  // still explicit
    static_assert(std::is_constructible_v<mpx::BoundedSemaphore, unsigned>);
    static_assert(std::is_constructible_v<mpx::Barrier, std::size_t>);

    // release(2^32) used to arrive as release(0): "released", value unchanged.
    mpx::Semaphore s(1);
    CHECK_THROWS_WITH_AS(s.release(kMax + 1), doctest::Contains("4294967296"), mpx::ValueError);
    CHECK_THROWS_AS(s.release(kMax + 2), mpx::ValueError);  // would have been release(1)
    CHECK_THROWS_AS(s.release(std::numeric_limits<std::uint64_t>::max()), mpx::ValueError);
    CHECK(s.get_value() == 1);
    CHECK(s.acquire(false));
    CHECK_FALSE(s.acquire(false));
    s.release(std::size_t{2});
    CHECK(s.get_value() == 2);
    s.release(0);  // nothing, as before
    CHECK(s.get_value() == 2);

    // Construction: Semaphore(2^32 + 1) used to be a Semaphore(1).
    CHECK_THROWS_AS(mpx::Semaphore(kMax + 1), mpx::ValueError);
    CHECK_THROWS_AS(mpx::BoundedSemaphore(kMax + 2), mpx::ValueError);
    mpx::Semaphore top(kMax);
    CHECK(top.get_value() == UINT32_MAX);
    CHECK_THROWS_AS(top.release(), mpx::ValueError);
    CHECK(top.get_value() == UINT32_MAX);

    // Bounded: a huge count is a bad argument (ValueError), not a release above the bound.
    mpx::BoundedSemaphore bs(3);
    REQUIRE(bs.acquire(false));
    REQUIRE(bs.acquire(false));
    CHECK_THROWS_AS(bs.release(kMax + 1), mpx::ValueError);
    CHECK_THROWS_AS(bs.release(kMax + 2), mpx::ValueError);
    CHECK(bs.get_value() == 1);
    bs.release(2);
    CHECK(bs.get_value() == 3);
    CHECK_THROWS_AS(bs.release(), mpx::StateError);

    // Barrier(2^32 + 2) used to be a Barrier(2).
    CHECK_THROWS_AS(mpx::Barrier(kMax + 2), mpx::ValueError);
    CHECK_THROWS_AS(mpx::Barrier(kMax + 1), mpx::ValueError);
    CHECK(mpx::Barrier(kMax).parties() == UINT32_MAX);
  }

  TEST_CASE("Condition: notify(2^32 + 1) is refused and wakes nobody; it used to act as notify(1)") {
    constexpr std::uint64_t kMax = UINT32_MAX;
    mpx::Condition c;
    CHECK_THROWS_AS(c.notify(kMax + 1), mpx::StateError);  // not holding the lock comes first
    std::atomic<int> state{0};                             // 1: waiting, 2: woken, 3: timed out
    std::jthread waiter([&] {                              // joins on the way out even if a REQUIRE fails
      std::unique_lock g(c);
      state = 1;
      state = c.wait(20s) ? 2 : 3;
    });
    REQUIRE(eventually([&] { return state.load() == 1; }));
    {
      std::unique_lock g(c);  // the waiter is inside wait() once its lock is free again
      // 2^32 + 1: cut to 32 bits it is notify(1), which would wake the waiter.
      CHECK_THROWS_WITH_AS(c.notify(kMax + 2), doctest::Contains("4294967297"), mpx::ValueError);
      CHECK_THROWS_AS(c.notify(kMax + 1), mpx::ValueError);
      CHECK_THROWS_AS(c.notify(std::numeric_limits<std::uint64_t>::max()), mpx::ValueError);
    }
    std::this_thread::sleep_for(100ms);
    CHECK(state.load() == 1);  // still asleep: nothing was notified
    {
      std::unique_lock g(c);
      c.notify(kMax);  // the largest count: wakes the one waiter
    }
    waiter.join();
    CHECK(state.load() == 2);
  }

  TEST_CASE("Condition: needs its lock, times out, restores the lock") {
    mpx::Condition c;
    CHECK_THROWS_AS(c.wait(1ms), mpx::StateError);
    CHECK_THROWS_AS(c.notify(), mpx::StateError);
    CHECK_THROWS_AS(c.notify_all(), mpx::StateError);
    CHECK_THROWS_AS(c.release(), mpx::StateError);
    std::unique_lock guard(c);
    auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(c.wait(30ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
    c.notify();  // nobody waiting: nothing happens
    c.notify_all();
    CHECK_FALSE(c.wait_for([] { return false; }, 10ms));
    CHECK(c.wait_for([] { return true; }, 0ms));
    guard.unlock();
    CHECK_THROWS_AS(c.wait(), mpx::StateError);
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "Condition: notify(1) wakes exactly one of three waiting processes, notify_all all") {
    for (bool all : {false, true}) {
      CAPTURE(all);
      mpx::Condition c(mpx::Lock{});
      mpx::Semaphore ready(0);
      auto b = board();
      auto kids = start_children(3, [=](int i) mutable {
        std::unique_lock g(c);
        ready.release();  // still holding the lock: it is released only inside wait()
        b->ints[i] = c.wait(all ? 20s : 1500ms) ? 1 : 2;
      });
      for (int i = 0; i < 3; ++i) REQUIRE(ready.acquire(20s));
      {
        std::lock_guard g(c);  // every child is inside wait() now
        if (all)
          c.notify_all();
        else
          c.notify(1);
      }
      CHECK(join_all(kids));
      int woken = 0, timed_out = 0;
      for (int i = 0; i < 3; ++i) (b->ints[i] == 1 ? woken : timed_out)++;
      CHECK(woken == (all ? 3 : 1));
      CHECK(timed_out == (all ? 0 : 2));
    }
  }

  TEST_CASE_FIXTURE(PlainSignals,
                    "Condition over an RLock held three times releases every level and restores them") {
    mpx::RLock r;
    mpx::Condition c(r);
    mpx::Event waiting;
    auto b = board();
    mpx::Process waiter(kDaemon, [=]() mutable {
      r.acquire();
      r.acquire();
      r.acquire();
      waiting.set();
      bool woke = c.wait(20s);
      b->ints[0] = woke ? 1 : 2;
      b->ints[1] = static_cast<int>(r.depth());
      r.release();
      r.release();
      r.release();
      b->ints[2] = r.held() ? 2 : 1;
    });
    waiter.start();
    REQUIRE(waiting.wait(20s));
    REQUIRE(r.acquire(20s));  // possible only if wait() dropped all three levels
    c.notify();
    r.release();
    CHECK(waiter.join(20s));
    CHECK(waiter.exitcode() == 0);
    CHECK(b->ints[0] == 1);
    CHECK(b->ints[1] == 3);
    CHECK(b->ints[2] == 1);
  }

  TEST_CASE_FIXTURE(PlainSignals, "Condition: producer/consumer across processes with wait_for") {
    mpx::Condition c;
    auto b = board();  // ints[0] = items available, ints[1] = consumed total
    constexpr int kItems = 500;
    auto consumers = start_children(2, [=](int) mutable {
      for (;;) {
        std::unique_lock g(c);
        if (!c.wait_for([&] { return b->ints[0] > 0 || b->ints[2] == 1; }, 20s)) return;
        if (b->ints[0] == 0) return;  // done
        --b->ints[0];
        ++b->ints[1];
        c.notify_all();  // the producer may be waiting for the total
      }
    });
    for (int i = 0; i < kItems; ++i) {
      std::lock_guard g(c);
      ++b->ints[0];
      c.notify();
    }
    {
      std::unique_lock g(c);
      CHECK(c.wait_for([&] { return b->ints[1] == kItems; }, 20s));
      b->ints[2] = 1;
      c.notify_all();
    }
    CHECK(join_all(consumers));
    CHECK(b->ints[1] == kItems);
    CHECK(b->ints[0] == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "Event: set, clear, wait with timeout, wakes every process") {
    mpx::Event e;
    CHECK_FALSE(e.is_set());
    auto t0 = std::chrono::steady_clock::now();
    CHECK_FALSE(e.wait(30ms));
    CHECK(std::chrono::steady_clock::now() - t0 >= 30ms);
    e.set();
    CHECK(e.is_set());
    CHECK(e.wait());
    CHECK(e.wait(0ms));
    e.set();
    e.clear();
    CHECK_FALSE(e.is_set());

    auto b = board();
    mpx::Semaphore ready(0);
    auto kids = start_children(3, [=](int i) mutable {
      ready.release();
      b->ints[i] = e.wait(20s) ? 1 : 2;
    });
    for (int i = 0; i < 3; ++i) REQUIRE(ready.acquire(20s));
    e.set();
    CHECK(join_all(kids));
    CHECK(b->ints[0] + b->ints[1] + b->ints[2] == 3);
  }

  TEST_CASE_FIXTURE(PlainSignals, "Event: a set() that is cleared at once still releases the waiters") {
    mpx::Event e, ready;
    auto b = board();
    mpx::Process waiter(kDaemon, [=]() mutable {
      ready.set();
      b->ints[0] = e.wait(20s) ? 1 : 2;
    });
    waiter.start();
    REQUIRE(ready.wait(20s));
    std::this_thread::sleep_for(20ms);  // most likely asleep by now; either way it must wake
    e.set();
    e.clear();
    CHECK(waiter.join(20s));
    CHECK(b->ints[0] == 1);
  }

  TEST_CASE_FIXTURE(PlainSignals, "Barrier: distinct indices, many rounds, the action runs once per round") {
    auto b = board();
    mpx::Barrier barrier(4, [b] { b->ints[10]++; });
    CHECK(barrier.parties() == 4);
    CHECK(barrier.n_waiting() == 0);
    CHECK_FALSE(barrier.broken());
    constexpr int kRounds = 20;
    auto kids = start_children(3, [=](int i) mutable {
      for (int r = 0; r < kRounds; ++r) b->ints[i] |= 1 << barrier.wait(20s);
    });
    int mine = 0;
    for (int r = 0; r < kRounds; ++r) mine |= 1 << barrier.wait(20s);
    CHECK(join_all(kids));
    CHECK(b->ints[10] == kRounds);
    CHECK((mine | b->ints[0] | b->ints[1] | b->ints[2]) == 0b1111);
    CHECK_FALSE(barrier.broken());
  }

  TEST_CASE_FIXTURE(PlainSignals, "Barrier: a throwing action fails its party and breaks the others") {
    mpx::Barrier barrier(2, [] {
      if (mpx::current_process().name == "last") throw std::runtime_error("action failed");
    });
    auto b = board();
    mpx::Process first(kDaemon, [=]() mutable {
      try {
        barrier.wait(20s);
        b->ints[0] = 1;
      } catch (const mpx::BrokenBarrierError&) {
        b->ints[0] = 2;
      }
    });
    first.start();
    REQUIRE(eventually([&] { return barrier.n_waiting() == 1; }));
    mpx::Process last({"last", true}, [=]() mutable {
      try {
        barrier.wait(20s);
        b->ints[1] = 1;
      } catch (const std::runtime_error& e) {
        b->ints[1] = std::string(e.what()) == "action failed" ? 3 : 4;
      }
    });
    last.start();
    CHECK(first.join(20s));
    CHECK(last.join(20s));
    CHECK(b->ints[0] == 2);
    CHECK(b->ints[1] == 3);
    CHECK(barrier.broken());
    CHECK_THROWS_AS(barrier.wait(1s), mpx::BrokenBarrierError);
    barrier.reset();
    CHECK_FALSE(barrier.broken());
  }

  TEST_CASE_FIXTURE(PlainSignals, "Barrier: a timed-out wait breaks it; reset and abort") {
    mpx::Barrier barrier(2);
    auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_AS(barrier.wait(50ms), mpx::BrokenBarrierError);
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
    CHECK(barrier.broken());
    CHECK_THROWS_AS(barrier.wait(), mpx::BrokenBarrierError);
    barrier.reset();
    CHECK_FALSE(barrier.broken());

    mpx::Barrier with_default(2, {}, 40ms);  // wait(forever) means the constructor's timeout
    CHECK_THROWS_AS(with_default.wait(), mpx::BrokenBarrierError);

    // abort and reset wake a waiting process with BrokenBarrierError
    for (bool use_abort : {true, false}) {
      CAPTURE(use_abort);
      mpx::Barrier bar(3);
      auto b = board();
      mpx::Process waiter(kDaemon, [=]() mutable {
        try {
          bar.wait(20s);
          b->ints[0] = 1;
        } catch (const mpx::BrokenBarrierError&) {
          b->ints[0] = 2;
        }
      });
      waiter.start();
      REQUIRE(eventually([&] { return bar.n_waiting() == 1; }));
      if (use_abort)
        bar.abort();
      else
        bar.reset();
      CHECK(waiter.join(20s));
      CHECK(b->ints[0] == 2);
      CHECK(bar.broken() == use_abort);
      if (!use_abort) {  // usable again after a reset, once the waiter has left
        mpx::Process p1(kDaemon, [=]() mutable { (void)bar.wait(20s); });
        mpx::Process p2(kDaemon, [=]() mutable { (void)bar.wait(20s); });
        p1.start();
        p2.start();
        CHECK_NOTHROW(bar.wait(20s));
        CHECK(p1.join(20s));
        CHECK(p2.join(20s));
        CHECK(p1.exitcode() == 0);
      }
    }
    CHECK_THROWS_AS(mpx::Barrier(0), mpx::ValueError);
  }

  TEST_CASE("spinning can be switched off; everything still works") {
    auto& limit = mpx::detail::spin_limit_ns();
    auto saved = limit.load();
    limit = 0;
    counting_stress(mpx::Lock(), 2, 1000);
    mpx::Event e;
    std::thread t([&] { e.set(); });
    CHECK(e.wait(20s));
    t.join();
    limit = saved;
  }

  TEST_CASE("no leaked mappings or fds") {
    std::size_t maps_before = count_maps();
    {
      mpx::Lock probe;  // the count sees our mappings
      CHECK(count_maps() == maps_before + 1);
    }
    std::size_t fds_before = 0;
    for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++fds_before;
    for (int i = 0; i < 50; ++i) {
      mpx::Lock l;
      mpx::RLock r;
      mpx::Semaphore s;
      mpx::BoundedSemaphore bs;
      mpx::Condition c;
      mpx::Event e;
      mpx::Barrier bar(2, [] {});
      l.acquire();
      l.release();
      std::lock_guard g(c);
      c.notify();
    }
    std::size_t fds_after = 0;
    for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++fds_after;
    CHECK(count_maps() == maps_before);
    CHECK(fds_after == fds_before);
  }
}
