#include <mpx/process.hpp>
#include <mpx/sharedctypes.hpp>

#include <children.hpp>
#include <doctest/doctest.h>
#include <signal.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <mutex>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {


struct PlainSignals {
  PlainSignals() { ::signal(SIGTERM, SIG_DFL); }
};

struct Big {  // too large for a lock-free atomic: load/store go through the RLock
  std::int64_t a, b, c;
  bool operator==(const Big&) const = default;
};

struct Pair {
  std::int32_t x, y;
  bool operator==(const Pair&) const = default;
};

using mpx::test::join_all;
using mpx::test::start_children;

// Shared anonymous mappings (what mpx objects live in) show up as "/dev/zero (deleted)".
std::size_t count_maps() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);) n += line.find("/dev/zero") != std::string::npos;
  return n;
}

}  // namespace

TEST_SUITE("sharedctypes") {
  TEST_CASE("Value: initial value, load/store, copies share one value") {
    mpx::Value<int> zero;
    CHECK(zero.load() == 0);
    mpx::Value<double> d(2.5);
    CHECK(d.load() == 2.5);
    d.store(-1.25);
    CHECK(d.load() == -1.25);
    mpx::Value<double> copy = d;
    copy.store(7.0);
    CHECK(d.load() == 7.0);
    mpx::Value<Pair> p(Pair{1, 2});
    CHECK(p.load() == Pair{1, 2});
    static_assert(std::is_copy_constructible_v<mpx::Value<int>>);
  }

  TEST_CASE("Value: load/store stay legal while holding get_lock(), for lock-free and locked sizes") {
    mpx::Value<long> n(5);
    {
      std::lock_guard g(n.get_lock());
      n.store(n.load() * 2);
    }
    CHECK(n.load() == 10);
    mpx::Value<Big> big(Big{1, 2, 3});
    {
      std::lock_guard g(big.get_lock());
      Big v = big.load();
      v.c += 10;
      big.store(v);
      CHECK(big.get_lock().depth() == 1);
    }
    CHECK(big.load() == Big{1, 2, 13});
    CHECK_FALSE(big.get_lock().held());
  }

  TEST_CASE_FIXTURE(PlainSignals, "Value: 4 processes x N increments under get_lock() give the exact total") {
    mpx::Value<long> counter(0);
    mpx::Value<Big> big(Big{0, 0, 0});
    constexpr int kRounds = 2000;
    auto kids = start_children(4, [=](int) mutable {
      for (int i = 0; i < kRounds; ++i) {
        {
          std::lock_guard g(counter.get_lock());
          counter.store(counter.load() + 1);
        }
        std::lock_guard g(big.get_lock());
        Big v = big.load();
        ++v.a;
        v.b += 2;
        v.c = v.a + v.b;
        big.store(v);
      }
    });
    CHECK(join_all(kids));
    CHECK(counter.load() == 4 * kRounds);
    CHECK(big.load() == Big{4 * kRounds, 8 * kRounds, 12 * kRounds});
  }

  TEST_CASE_FIXTURE(PlainSignals, "Value: a store is never torn, even without the lock") {
    mpx::Value<Big> big(Big{0, 0, 0});
    mpx::Value<int> done(0);
    auto writer = start_children(1, [=](int) mutable {
      for (std::int64_t i = 1; i <= 20000; ++i) big.store(Big{i, -i, 2 * i});
      done.store(1);
    });
    long torn = 0, reads = 0;
    while (done.load() == 0) {
      Big v = big.load();
      torn += (v.b != -v.a || v.c != 2 * v.a);
      ++reads;
    }
    CHECK(join_all(writer));
    CHECK(torn == 0);
    CHECK(reads > 0);
  }

  TEST_CASE("Array: construction, size, indexing, span, bounds") {
    mpx::Array<int> a(5, 7);
    CHECK(a.size() == 5);
    CHECK(std::accumulate(a.begin(), a.end(), 0) == 35);
    a[2] = 1;
    CHECK(a.at(2) == 1);
    CHECK_THROWS_AS(a.at(5), mpx::IndexError);
    std::vector<double> init{1.5, 2.5, 3.5};
    mpx::Array<double> b(init);
    CHECK(std::vector<double>(b.span().begin(), b.span().end()) == init);
    const mpx::Array<double>& cb = b;
    CHECK(cb[1] == 2.5);
    CHECK(cb.span().size() == 3);
    mpx::Array<Pair> pairs(2, Pair{3, 4});
    CHECK(pairs[1] == Pair{3, 4});
    mpx::Array<char> empty(0);
    CHECK(empty.size() == 0);
    CHECK(empty.span().empty());
    mpx::Array<int> zeros(1000);
    CHECK(std::all_of(zeros.begin(), zeros.end(), [](int v) { return v == 0; }));
    mpx::Array<int> alias = a;
    alias[0] = 99;
    CHECK(a[0] == 99);
    CHECK(reinterpret_cast<std::uintptr_t>(b.span().data()) % alignof(double) == 0);
  }

  TEST_CASE_FIXTURE(PlainSignals, "Array: children write their slots; increments under the lock are exact") {
    mpx::Array<long> slots(4, -1);
    mpx::Array<long> shared_total(1, 0);
    constexpr int kRounds = 2000;
    auto kids = start_children(4, [=](int i) mutable {
      slots[static_cast<std::size_t>(i)] = i * 100;
      for (int r = 0; r < kRounds; ++r) {
        std::lock_guard g(shared_total.get_lock());
        shared_total[0] = shared_total[0] + 1;
      }
    });
    CHECK(join_all(kids));
    CHECK(std::vector<long>(slots.begin(), slots.end()) == std::vector<long>{0, 100, 200, 300});
    CHECK(shared_total[0] == 4 * kRounds);
  }

  TEST_CASE("no leaked mappings") {
    std::size_t before = count_maps();
    {
      mpx::Array<int> probe(10);  // the count sees our mappings
      CHECK(count_maps() == before + 1);
    }
    for (int i = 0; i < 50; ++i) {
      mpx::Value<int> v(i);
      mpx::Value<Big> big;
      mpx::Array<double> a(1000, 1.0);
      std::lock_guard g(a.get_lock());
      v.store(v.load() + 1);
    }
    CHECK(count_maps() == before);
  }
}
