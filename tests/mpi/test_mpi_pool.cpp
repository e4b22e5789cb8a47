// mpx::mpi::Pool under mpirun (ctest runs it on 3 ranks: a root and two workers). Every rank runs
// every test case in the same order, because run_pool is collective; the assertions run on the
// root, inside the pool's main.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <mpx/mpi.hpp>

#include <boost/mpi/collectives.hpp>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>
#include <boost/mpi/operations.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <map>
#include <numeric>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace {

boost::mpi::communicator& world() {
  static boost::mpi::communicator w;
  return w;
}

long square(long x) { return x * x; }
long add(long a, long b) { return a + b; }
int host_rank(int) { return boost::mpi::communicator().rank(); }
long fails_on_7(long x) {
  if (x == 7) throw std::invalid_argument("seven is not allowed");
  return x;
}
int slow(int x) {
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  return x;
}
std::vector<std::uint64_t> big(std::size_t n) {
  std::vector<std::uint64_t> v(n);
  std::iota(v.begin(), v.end(), std::uint64_t{1});
  return v;
}
std::uint64_t draw(int) { return mpx::task_rng(42)(); }

int initialised = 0;
int read_initialised(int) { return initialised; }

struct Scale {  // a transferable function object: its state travels with every task
  double factor = 1;
  double operator()(double x) const { return factor * x; }
  template <class A>
  void serialize(A& a) {
    a(factor);
  }
};

struct Point {
  int x = 0, y = 0;
  template <class A>
  void serialize(A& a) {
    a(x, y);
  }
};
int manhattan(Point p) { return std::abs(p.x) + std::abs(p.y); }

// Runs body on the root with the pool; returns its value there, 0 elsewhere.
int with_pool(const std::function<int(mpx::mpi::Pool&)>& body, mpx::mpi::Options options = {}) {
  return mpx::mpi::run_pool(world(), body, std::move(options));
}

}  // namespace

TEST_CASE("map, starmap and apply give the values the functions compute, on the worker ranks") {
  with_pool([](mpx::mpi::Pool& pool) {
    CHECK(pool.processes() == static_cast<unsigned>(world().size() - 1));
    auto ys = pool.map(square, std::views::iota(0L, 10000L));
    REQUIRE(ys.size() == 10000);
    for (long i = 0; i < 10000; ++i) CHECK_EQ(ys[static_cast<std::size_t>(i)], i * i);

    std::vector<std::tuple<long, long>> pairs{{1, 2}, {30, 40}, {-5, 5}};
    CHECK(pool.starmap(add, pairs) == std::vector<long>{3, 70, 0});
    CHECK(pool.apply(add, 20L, 22L) == 42);

    // Tasks run on the workers, not on the root, and every worker takes part.
    auto ranks = pool.map(host_rank, std::views::iota(0, 64), 1);
    std::set<int> seen(ranks.begin(), ranks.end());
    CHECK(seen.count(world().rank()) == 0);
    CHECK(seen.size() == pool.processes());
    return 0;
  });
}

TEST_CASE("apply_async: thousands of results, callbacks on the pool's thread, get with timeout") {
  with_pool([](mpx::mpi::Pool& pool) {
    std::atomic<long> sum{0};
    std::atomic<int> called{0};
    std::vector<mpx::AsyncResult<long>> rs;
    for (long i = 0; i < 5000; ++i)
      rs.push_back(pool.apply_async(square, i).then([&](const long& v) {
        sum += v;
        ++called;
      }));
    long expect = 0;
    for (long i = 0; i < 5000; ++i) {
      CHECK_EQ(rs[static_cast<std::size_t>(i)].get(std::chrono::seconds(60)), i * i);
      expect += i * i;
    }
    CHECK(called.load() == 5000);  // settled results have run their callbacks
    CHECK(sum.load() == expect);

    auto r = pool.apply_async(slow, 5);
    CHECK_THROWS_AS(r.get(std::chrono::milliseconds(1)), mpx::TimeoutError);
    CHECK(r.get(std::chrono::seconds(30)) == 5);
    CHECK(r.successful());
    return 0;
  });
}

TEST_CASE(
    "callers that block drive the pool themselves: several threads apply at once, callbacks still run") {
  with_pool([](mpx::mpi::Pool& pool) {
    std::atomic<long> callback_sum{0};
    std::vector<mpx::AsyncResult<long>> async;
    for (long i = 0; i < 200; ++i)
      async.push_back(pool.apply_async(square, i).then([&](const long& v) { callback_sum += v; }));
    std::atomic<int> wrong{0};
    std::vector<std::thread> callers;
    for (long t = 0; t < 4; ++t)
      callers.emplace_back([&, t] {
        for (long i = 0; i < 500; ++i)
          if (pool.apply(add, t, i) != t + i) ++wrong;
        if (pool.map(square, std::vector<long>{t, t + 1}) != std::vector<long>{t * t, (t + 1) * (t + 1)})
          ++wrong;
      });
    for (auto& c : callers) c.join();
    CHECK(wrong.load() == 0);
    long expect = 0;
    for (long i = 0; i < 200; ++i) {
      CHECK_EQ(async[static_cast<std::size_t>(i)].get(std::chrono::seconds(60)), i * i);
      expect += i * i;
    }
    CHECK(callback_sum.load() == expect);
    return 0;
  });
}

TEST_CASE("imap keeps input order, imap_unordered gives every item once, both read lazily") {
  with_pool([](mpx::mpi::Pool& pool) {
    std::vector<long> ordered;
    for (long v : pool.imap(square, std::views::iota(0L, 3000L), 7)) ordered.push_back(v);
    REQUIRE(ordered.size() == 3000);
    for (long i = 0; i < 3000; ++i) CHECK_EQ(ordered[static_cast<std::size_t>(i)], i * i);

    std::multiset<long> got;
    for (long v : pool.imap_unordered(square, std::views::iota(0L, 3000L))) got.insert(v);
    std::multiset<long> want;
    for (long i = 0; i < 3000; ++i) want.insert(i * i);
    CHECK(got == want);

    // A 10^8-item input: taking the first few results must not read (or run) all of it.
    int taken = 0;
    for (long v : pool.imap(square, std::views::iota(0L, 100'000'000L))) {
      CHECK_EQ(v, static_cast<long>(taken) * taken);
      if (++taken == 10) break;
    }
    CHECK(taken == 10);
    return 0;
  });
}

TEST_CASE("an exception in a task fails that item only, as RemoteError with its type and message") {
  with_pool([](mpx::mpi::Pool& pool) {
    auto r = pool.apply_async(fails_on_7, 7L);
    try {
      r.get(std::chrono::seconds(30));
      FAIL("expected RemoteError");
    } catch (const mpx::RemoteError& e) {
      CHECK(e.type_name() == "std::invalid_argument");
      CHECK(e.message() == "seven is not allowed");
    }
    CHECK_FALSE(r.successful());
    CHECK_THROWS_AS(pool.map(fails_on_7, std::views::iota(0L, 20L)), mpx::RemoteError);

    int failures = 0, values = 0;
    auto items = pool.imap(fails_on_7, std::views::iota(0L, 20L));
    for (auto it = items.begin(); it != std::default_sentinel; ++it) {
      try {
        long v = *it;
        CHECK(v != 7);
        ++values;
      } catch (const mpx::RemoteError&) {
        ++failures;
      }
    }
    CHECK(failures == 1);
    CHECK(values == 19);
    CHECK(pool.apply(square, 9L) == 81);  // the pool goes on
    return 0;
  });
}

TEST_CASE("transferable function objects, user types, huge results, per-item random streams") {
  with_pool([](mpx::mpi::Pool& pool) {
    CHECK(pool.map(Scale{2.5}, std::vector<double>{1, 2, 4}) == std::vector<double>{2.5, 5, 10});
    CHECK(pool.map(manhattan, std::vector<Point>{{1, -2}, {-3, 4}}) == std::vector<int>{3, 7});

    auto v = pool.apply(big, std::size_t{8} << 20);  // 64 MiB back in one result
    REQUIRE(v.size() == (std::size_t{8} << 20));
    CHECK(v.front() == 1);
    CHECK(v.back() == (std::uint64_t{8} << 20));

    // The stream depends on the item, not on chunking or on which rank ran it.
    auto a = pool.map(draw, std::views::iota(0, 100), 1);
    auto b = pool.map(draw, std::views::iota(0, 100), 33);
    CHECK(a == b);
    CHECK(std::set<std::uint64_t>(a.begin(), a.end()).size() == 100);
    return 0;
  });
}

TEST_CASE("the initializer runs on every worker rank before its first task") {
  mpx::mpi::Options options;
  options.initializer = [] { initialised = 1234; };
  with_pool(
      [](mpx::mpi::Pool& pool) {
        CHECK(initialised == 0);  // not on the root
        auto vs = pool.map(read_initialised, std::views::iota(0, 32), 1);
        for (int v : vs) CHECK(v == 1234);
        return 0;
      },
      options);
}

TEST_CASE("close, terminate and join follow the pool's rules") {
  with_pool([](mpx::mpi::Pool& pool) {
    CHECK_THROWS_AS(pool.join(), mpx::StateError);  // not closed yet
    auto done = pool.apply_async(square, 3L);
    pool.close();
    CHECK_THROWS_AS(pool.apply(square, 2L), mpx::StateError);
    pool.join();
    CHECK(done.get(std::chrono::seconds(1)) == 9);  // join waits for queued work
    return 0;
  });
  with_pool([](mpx::mpi::Pool& pool) {
    std::vector<mpx::AsyncResult<int>> rs;
    for (int i = 0; i < 40; ++i) rs.push_back(pool.apply_async(slow, i));
    pool.terminate();
    pool.join();
    int failed = 0;
    for (auto& r : rs) {
      REQUIRE(r.wait(std::chrono::seconds(1)));
      if (!r.successful()) {
        CHECK_THROWS_AS(r.get(), mpx::StateError);
        ++failed;
      }
    }
    CHECK(failed > 30);  // at most the batches already running finished
    return 0;
  });
}

TEST_CASE("run_pool: main's value and exceptions come back on the root; the workers are released") {
  int v = with_pool([](mpx::mpi::Pool& pool) { return static_cast<int>(pool.apply(square, 6L)); });
  if (world().rank() == 0)
    CHECK(v == 36);
  else
    CHECK(v == 0);

  bool threw = false;
  try {
    with_pool([](mpx::mpi::Pool& pool) -> int {
      (void)pool.apply_async(slow, 1);
      throw std::runtime_error("main failed");
    });
  } catch (const std::runtime_error& e) {
    threw = std::string(e.what()) == "main failed";
  }
  CHECK(threw == (world().rank() == 0));
  // Every rank is still in step: another pool works.
  with_pool([](mpx::mpi::Pool& pool) {
    CHECK(pool.apply(add, 1L, 2L) == 3);
    return 0;
  });
}

TEST_CASE("any rank can be the root; the others, rank 0 included, are its workers") {
  mpx::mpi::Options options;
  options.root = world().size() - 1;
  int ran = with_pool(
      [](mpx::mpi::Pool& pool) {
        auto ranks = pool.map(host_rank, std::views::iota(0, 32), 1);
        std::set<int> seen(ranks.begin(), ranks.end());
        CHECK(seen.count(world().size() - 1) == 0);
        CHECK(seen.count(0) == 1);
        return 7;
      },
      options);
  CHECK(ran == (world().rank() == world().size() - 1 ? 7 : 0));
}

TEST_CASE("run_pool rejects a communicator without workers and a root outside it") {
  boost::mpi::communicator alone = world().split(world().rank());
  CHECK_THROWS_AS(mpx::mpi::run_pool(alone, [](mpx::mpi::Pool&) { return 0; }), mpx::ValueError);
  mpx::mpi::Options options;
  options.root = world().size();
  CHECK_THROWS_AS(mpx::mpi::run_pool(
                      world(), [](mpx::mpi::Pool&) { return 0; }, options),
                  mpx::ValueError);
}

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv, boost::mpi::threading::serialized);
  doctest::Context context(argc, argv);
  // Every rank runs the cases (run_pool is collective); only the root reports.
  if (world().rank() != 0) context.setOption("quiet", true);
  int failed = context.run();
  // A failure on any rank fails the job.
  int any = 0;
  boost::mpi::all_reduce(world(), failed ? 1 : 0, any, boost::mpi::maximum<int>());
  return any;
}
