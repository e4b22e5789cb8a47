// Queue<T>, JoinableQueue<T>, SimpleQueue<T>: Python's semantics, across processes, with
// huge items, exhausted budgets, encoding errors and processes killed in the middle of a call.
#include <doctest/doctest.h>
#include <support.hpp>

#include <mpx/process.hpp>
#include <mpx/queues.hpp>

#include <mpx/detail/shm.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using mpx::Queue;
using mpx::QueueOptions;

namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kLong = 60s;  // bound for waits that should succeed: a hang fails, never blocks

struct Point {
  int x = 0;
  std::string label;
  bool operator==(const Point&) const = default;
  template <class A>
  void serialize(A& a) {
    a(x, label);
  }
};

// Saving always fails: put() must throw it, on the caller's thread, leaving the queue alone.
struct Unsavable {
  int v = 0;
  template <class A>
  void save(A&) const {
    throw std::runtime_error("cannot encode Unsavable");
  }
  template <class A>
  void load(A& a) {
    a(v);
  }
};

using mpx::test::open_fds;

// Anonymous shared mappings show in /proc/self/maps as "/dev/zero (deleted)".
std::size_t shared_mappings() {
  std::ifstream maps("/proc/self/maps");
  std::size_t n = 0;
  for (std::string line; std::getline(maps, line);)
    if (line.find("/dev/zero") != std::string::npos) ++n;
  return n;
}

bool no_children_left() {
  errno = 0;
  return ::waitpid(-1, nullptr, WNOHANG) == -1 && errno == ECHILD;
}

// An item whose every word says who made it: any torn or mixed-up copy shows.
std::vector<std::uint64_t> pattern(std::uint64_t seed, std::size_t words) {
  std::vector<std::uint64_t> v(words);
  for (std::size_t i = 0; i < words; ++i) v[i] = seed * 0x9E3779B97F4A7C15ull + i;
  return v;
}
bool is_pattern(const std::vector<std::uint64_t>& v, std::uint64_t seed) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (v[i] != seed * 0x9E3779B97F4A7C15ull + i) return false;
  return true;
}

void require(bool ok, const char* what) {
  if (!ok) throw std::runtime_error(what);
}

template <class F>
double seconds_of(F&& f) {
  auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

static_assert(!mpx::transferable<Queue<int>>, "queue handles reach other processes by fork only");
static_assert(!mpx::transferable<mpx::JoinableQueue<int>>);
static_assert(!mpx::transferable<mpx::SimpleQueue<int>>);

TEST_CASE("FIFO for raw, contiguous and encoded item types") {
  Queue<int> ints;
  for (int i = 0; i < 1000; ++i) ints.put(i);
  CHECK(ints.qsize() == 1000);
  for (int i = 0; i < 1000; ++i) REQUIRE(ints.get() == i);
  CHECK(ints.empty());

  Queue<std::pair<std::int64_t, double>> pairs;
  pairs.put({-7, 0.5});
  CHECK(pairs.get() == std::pair<std::int64_t, double>{-7, 0.5});
  enum class Colour : std::uint8_t { red = 1, green = 2 };
  Queue<std::tuple<int, char, Colour, std::array<short, 3>>> tuples;
  tuples.put({1, 'c', Colour::green, {4, 5, 6}});
  CHECK(tuples.get() ==
        std::tuple<int, char, Colour, std::array<short, 3>>{1, 'c', Colour::green, {4, 5, 6}});

  Queue<std::string> strings;
  strings.put("");
  strings.put("hello");
  strings.put(std::string(100000, 'x'));
  CHECK(strings.get() == "");
  CHECK(strings.get() == "hello");
  CHECK(strings.get() == std::string(100000, 'x'));

  Queue<std::vector<double>> doubles;
  doubles.put({});
  doubles.put({1.5, -2.25, 1e300});
  CHECK(doubles.get().empty());
  CHECK(doubles.get() == std::vector<double>{1.5, -2.25, 1e300});

  // 12-byte elements straddle the 8-byte pieces the queue hands out (1 KiB chunks here).
  using Odd = std::array<std::int32_t, 3>;
  Queue<std::vector<Odd>> odd({.max_bytes = 4096});
  std::vector<Odd> many;
  for (int i = 0; i < 200; ++i) many.push_back({i, -i, i * i});
  odd.put(many);
  CHECK(odd.get() == many);

  Queue<Point> points;
  points.put({1, "one"});
  points.put({2, std::string(5000, 'p')});
  CHECK(points.get() == Point{1, "one"});
  CHECK(points.get() == Point{2, std::string(5000, 'p')});

  Queue<std::map<std::string, std::vector<int>>> maps;
  maps.put({{"a", {1, 2}}, {"b", {}}});
  CHECK(maps.get() == std::map<std::string, std::vector<int>>{{"a", {1, 2}}, {"b", {}}});
}

TEST_CASE("non-blocking and timed calls: Empty, Full, and the Timeout-only overloads") {
  Queue<int> q(2);
  CHECK(q.maxsize() == 2);
  CHECK_THROWS_AS(q.get_nowait(), mpx::Empty);
  CHECK_THROWS_AS(q.get(false), mpx::Empty);
  double waited = seconds_of([&] { CHECK_THROWS_AS(q.get(100ms), mpx::Empty); });
  CHECK(waited >= 0.099);
  CHECK(waited < 10);
  CHECK_THROWS_AS(q.get(true, 0ms), mpx::Empty);

  q.put_nowait(1);
  q.put(2, 50ms);
  CHECK(q.full());
  CHECK(q.qsize() == 2);
  CHECK_THROWS_AS(q.put_nowait(3), mpx::Full);
  CHECK_THROWS_AS(q.put(3, false), mpx::Full);
  waited = seconds_of([&] { CHECK_THROWS_AS(q.put(3, 100ms), mpx::Full); });
  CHECK(waited >= 0.099);
  CHECK(waited < 10);
  CHECK(q.get(1s) == 1);
  CHECK_FALSE(q.full());
  q.put(3, true, 1s);
  CHECK(q.get_nowait() == 2);
  CHECK(q.get(mpx::forever) == 3);
  CHECK(q.empty());
  CHECK(q.qsize() == 0);
}

TEST_CASE("a bounded queue's put waits for a consumer in another process") {
  Queue<int> q(3);
  for (int i = 0; i < 3; ++i) q.put(i);
  CHECK_THROWS_AS(q.put(3, 50ms), mpx::Full);  // nobody consumes yet
  Queue<int> go;
  mpx::Process consumer([q, go]() mutable {
    require(go.get(kLong) == 1, "go");
    for (int i = 0; i < 4; ++i) require(q.get(kLong) == i, "order");
  });
  consumer.start();
  go.put(1);
  q.put(3, kLong);  // returns once the consumer has made room
  CHECK(consumer.join(kLong));
  CHECK(consumer.exitcode() == 0);
  CHECK(q.empty());
}

TEST_CASE("byte budget: Full once exhausted, never waiting for a consumer; room again after get") {
  Queue<std::int64_t> q(QueueOptions{.max_bytes = 4096});  // 16 bytes per item
  CHECK(q.max_bytes() == 4096);
  std::size_t n = 0;
  double took = seconds_of([&] {
    try {
      for (;;) {
        q.put(static_cast<std::int64_t>(n));  // blocking put: must still throw, not wait
        ++n;
      }
    } catch (const mpx::Full&) {
    }
  });
  CHECK(took < 10);
  CHECK(n >= 4096 / 16 - 64);  // at most a chunk's worth lost to the partly used tail chunk
  CHECK(n <= 4096 / 16);
  CHECK(q.qsize() == n);
  // Moving past a whole chunk (1 KiB = 64 items) makes room again.
  for (std::int64_t i = 0; i < 65; ++i) REQUIRE(q.get_nowait() == i);
  q.put_nowait(-1);
  for (std::int64_t i = 65; i < static_cast<std::int64_t>(n); ++i) REQUIRE(q.get_nowait() == i);
  CHECK(q.get_nowait() == -1);

  // An item that could never fit is refused at once, by every kind of queue.
  Queue<std::string> small(QueueOptions{.max_bytes = 4096});
  CHECK(small.max_item_bytes() < 4096);
  CHECK_THROWS_AS(small.put(std::string(4096, 'x')), mpx::Full);
  Queue<std::string> bounded_small(QueueOptions{.maxsize = 10, .max_bytes = 4096});
  CHECK_THROWS_AS(bounded_small.put(std::string(4096, 'x'), kLong), mpx::Full);
  small.put(std::string(small.max_item_bytes(), 'y'));
  CHECK(small.get_nowait().size() == small.max_item_bytes());
  CHECK_THROWS_AS(Queue<int>(QueueOptions{.max_bytes = 100}), mpx::ValueError);
}

TEST_CASE("a bounded queue with a small budget waits for bytes, not only for items") {
  Queue<std::vector<std::uint64_t>> q(QueueOptions{.maxsize = 100, .max_bytes = 64 * 1024});
  mpx::Process consumer([q]() mutable {
    for (std::uint64_t i = 0; i < 200; ++i) require(is_pattern(q.get(kLong), i), "content");
  });
  consumer.start();
  for (std::uint64_t i = 0; i < 200; ++i) q.put(pattern(i, 1000), kLong);  // 8 KB each: ~7 fit at once
  CHECK(consumer.join(kLong));
  CHECK(consumer.exitcode() == 0);
}

// Python's pitfall: a child whose feeder thread still holds unflushed items cannot be joined
// until someone drains the queue. Here put() has finished copying when it returns.
TEST_CASE("a producer that put more than any pipe holds can be joined before anything is drained") {
  Queue<std::vector<std::uint64_t>> q;
  constexpr std::uint64_t kItems = 64;
  constexpr std::size_t kWords = 64 * 1024;  // 512 KiB each, 32 MiB in all: no consumer yet
  mpx::Process producer([q]() mutable {
    for (std::uint64_t i = 0; i < kItems; ++i) q.put(pattern(i, kWords));  // unbounded: never waits
  });
  producer.start();
  REQUIRE(producer.join(kLong));
  CHECK(producer.exitcode() == 0);
  CHECK(q.qsize() == kItems);
  for (std::uint64_t i = 0; i < kItems; ++i) {
    auto item = q.get_nowait();
    REQUIRE(item.size() == kWords);
    REQUIRE(is_pattern(item, i));
  }
  CHECK(q.empty());
}

TEST_CASE("JoinableQueue: task_done/join, also when used through Queue&") {
  mpx::JoinableQueue<int> jq;
  Queue<int>& plain = jq;
  auto put_through_base = [](Queue<int>& q) {
    for (int i = 0; i < 5; ++i) q.put(i);
  };
  put_through_base(plain);
  Queue<int> copy = jq;  // a copy of the base part shares the counter too
  copy.put(5);
  CHECK_FALSE(jq.join(50ms));
  mpx::Process worker([jq]() mutable {
    for (int i = 0; i < 6; ++i) {
      require(jq.get(kLong) == i, "order");
      jq.task_done();
    }
  });
  worker.start();
  CHECK(jq.join(kLong));
  CHECK(worker.join(kLong));
  CHECK(worker.exitcode() == 0);
  CHECK(jq.join(0ms));
  CHECK_THROWS_AS(jq.task_done(), mpx::StateError);

  mpx::JoinableQueue<std::string> js(1);
  js.put("a");
  CHECK(js.get() == "a");
  js.task_done();
  CHECK_THROWS_AS(js.task_done(), mpx::StateError);
  CHECK(js.join());
}

TEST_CASE("close: no more put from this handle, get still drains") {
  Queue<int> q;
  Queue<int> other = q;
  q.put(1);
  q.close();
  CHECK(q.closed());
  CHECK_THROWS_AS(q.put(2), mpx::StateError);
  CHECK_THROWS_AS(q.put_nowait(2), mpx::StateError);
  other.put(3);  // another handle is not closed
  CHECK(q.get() == 1);
  CHECK(q.get() == 3);

  mpx::SimpleQueue<std::string> sq;
  sq.put("x");
  sq.close();
  CHECK_THROWS_AS(sq.put("y"), mpx::StateError);
  CHECK(sq.get() == "x");
  CHECK(sq.empty());
}

TEST_CASE("an encoding error is thrown by put() itself and leaves the queue untouched") {
  Queue<Unsavable> q;
  CHECK_THROWS_WITH_AS(q.put(Unsavable{1}), "cannot encode Unsavable", std::runtime_error);
  CHECK(q.empty());
  CHECK_THROWS_AS(q.get_nowait(), mpx::Empty);
}

TEST_CASE("SimpleQueue between processes") {
  mpx::SimpleQueue<std::string> in, out;
  CHECK_THROWS_AS(mpx::SimpleQueue<int>(QueueOptions{.maxsize = 1}), mpx::ValueError);
  mpx::Process echo([in, out]() mutable {
    for (;;) {
      std::string s = in.get();
      if (s == "stop") return;
      out.put(s + "!");
    }
  });
  echo.start();
  in.put("a");
  in.put(std::string(300000, 'b'));
  in.put("stop");
  CHECK(out.get() == "a!");
  CHECK(out.get() == std::string(300000, 'b') + "!");
  CHECK(echo.join(kLong));
  CHECK(echo.exitcode() == 0);
  CHECK(out.empty());
}

TEST_CASE("many producers and consumers across processes: every item exactly once") {
  constexpr int kProducers = 4, kConsumers = 3;
  constexpr std::uint64_t kPerProducer = 20000;
  Queue<std::uint64_t> q(QueueOptions{.maxsize = 500});
  Queue<std::vector<std::uint64_t>> results;
  std::vector<mpx::Process> procs;
  for (int c = 0; c < kConsumers; ++c)
    procs.emplace_back([q, results]() mutable {
      std::vector<std::uint64_t> got;
      std::vector<std::uint64_t> last(kProducers, 0);
      for (;;) {
        std::uint64_t v = q.get(kLong);
        if (v == ~0ull) break;
        std::uint64_t producer = v >> 32, seq = v & 0xffffffff;
        require(producer < kProducers, "bad producer id");
        require(seq + 1 > last[producer], "items of one producer out of order");
        last[producer] = seq + 1;
        got.push_back(v);
      }
      results.put(got);
    });
  for (std::uint64_t p = 0; p < kProducers; ++p)
    procs.emplace_back([q, p]() mutable {
      for (std::uint64_t i = 0; i < kPerProducer; ++i) q.put(p << 32 | i, kLong);
    });
  for (auto& p : procs) p.start();
  for (int i = kConsumers; i < kConsumers + kProducers; ++i) {
    CHECK(procs[static_cast<std::size_t>(i)].join(kLong));
    CHECK(procs[static_cast<std::size_t>(i)].exitcode() == 0);
  }
  for (int c = 0; c < kConsumers; ++c) q.put(~0ull);
  std::vector<std::uint64_t> all;
  for (int c = 0; c < kConsumers; ++c) {
    auto part = results.get(kLong);
    all.insert(all.end(), part.begin(), part.end());
  }
  for (auto& p : procs) {
    CHECK(p.join(kLong));
    CHECK(p.exitcode() == 0);
  }
  std::sort(all.begin(), all.end());
  std::vector<std::uint64_t> expected;
  for (std::uint64_t p = 0; p < kProducers; ++p)
    for (std::uint64_t i = 0; i < kPerProducer; ++i) expected.push_back(p << 32 | i);
  CHECK(all.size() == expected.size());
  CHECK(all == expected);
  CHECK(q.empty());
}

TEST_CASE("huge items (8 MiB) and mixed sizes with several producers and consumers") {
  Queue<std::vector<std::uint64_t>> q(QueueOptions{.maxsize = 8, .max_bytes = 128 << 20});
  Queue<std::uint64_t> sums;
  constexpr std::uint64_t kEach = 12;
  auto words_for = [](std::uint64_t seed) -> std::size_t {
    switch (seed % 4) {
      case 0:
        return (8u << 20) / 8;  // 8 MiB
      case 1:
        return 0;  // empty
      case 2:
        return 3;  // a few bytes
      default:
        return 100000 + seed % 7;  // ~800 KB, odd lengths
    }
  };
  std::vector<mpx::Process> procs;
  for (std::uint64_t p = 0; p < 2; ++p)
    procs.emplace_back([q, p, words_for]() mutable {
      for (std::uint64_t i = 0; i < kEach; ++i) {
        std::uint64_t seed = p * 1000 + i;
        auto v = pattern(seed, words_for(seed));
        v.push_back(seed);  // the last word names the item
        q.put(v, kLong);
      }
    });
  for (int c = 0; c < 2; ++c)
    procs.emplace_back([q, sums, words_for]() mutable {
      for (;;) {
        auto v = q.get(kLong);
        require(!v.empty(), "lost the naming word");
        std::uint64_t seed = v.back();
        if (seed == ~0ull) return;
        v.pop_back();
        require(v.size() == words_for(seed) && is_pattern(v, seed), "item damaged");
        sums.put(seed);
      }
    });
  for (auto& p : procs) p.start();
  std::vector<std::uint64_t> seen;
  for (std::uint64_t i = 0; i < 2 * kEach; ++i) seen.push_back(sums.get(kLong));
  q.put({~0ull});
  q.put({~0ull});
  for (auto& p : procs) {
    CHECK(p.join(kLong));
    CHECK(p.exitcode() == 0);
  }
  std::sort(seen.begin(), seen.end());
  std::vector<std::uint64_t> expected;
  for (std::uint64_t p = 0; p < 2; ++p)
    for (std::uint64_t i = 0; i < kEach; ++i) expected.push_back(p * 1000 + i);
  CHECK(seen == expected);
}

TEST_CASE("threads of one process share a queue too") {
  Queue<std::string> q(16);
  std::atomic<long> total{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t)
    threads.emplace_back([&] {
      for (;;) {
        std::string s = q.get(kLong);
        if (s.empty()) return;
        total += std::stol(s);
      }
    });
  for (int t = 0; t < 2; ++t)
    threads.emplace_back([&, t] {
      for (int i = 1; i <= 2000; ++i) q.put(std::to_string(i * (t + 1)), kLong);
    });
  threads[3].join();
  threads[4].join();
  for (int t = 0; t < 3; ++t) q.put("");
  for (int t = 0; t < 3; ++t) threads[static_cast<std::size_t>(t)].join();
  CHECK(total == 2000L * 2001 / 2 * 3);
}

TEST_CASE("a producer SIGKILLed mid-put leaves its item whole or absent, and the queue usable") {
  Queue<std::vector<std::uint64_t>> q;
  constexpr std::size_t kHugeWords = (192u << 20) / 8;  // long enough a copy to land the kill in
  for (int round = 0; round < 3; ++round) {
    Queue<int> ready;
    mpx::Process producer([q, ready]() mutable {
      auto huge = pattern(7, kHugeWords);
      ready.put(1);
      q.put(huge);
      ::pause();
    });
    producer.start();
    CHECK(ready.get(kLong) == 1);
    std::this_thread::sleep_for(std::chrono::milliseconds(1 + 10 * round));
    producer.kill();
    CHECK(producer.join(kLong));
    CHECK(producer.exitcode() == -SIGKILL);
    q.put({42}, 10s);  // takes the put lock: repairs it if the producer died holding it
    auto first = q.get(10s);
    if (first.size() == kHugeWords) {  // the copy had finished: the item must be whole
      CHECK(is_pattern(first, 7));
      CHECK(q.get(10s) == std::vector<std::uint64_t>{42});
    } else {
      CHECK(first == std::vector<std::uint64_t>{42});
    }
    CHECK(q.empty());
  }
}

TEST_CASE("a stream survives producers killed at random points") {
  Queue<std::vector<std::uint64_t>> q(QueueOptions{.maxsize = 4});
  std::uint64_t next_seed = 1;
  std::vector<std::uint64_t> got;
  for (int round = 0; round < 4; ++round) {
    const std::uint64_t base = next_seed;
    mpx::Process producer([q, base]() mutable {
      for (std::uint64_t s = base;; ++s) {
        auto v = pattern(s, 20000 + s % 50000);
        v.push_back(s);
        q.put(v);
      }
    });
    producer.start();
    for (int i = 0; i < 30; ++i) {  // drain while it produces, then kill it mid-flight
      auto v = q.get(kLong);
      std::uint64_t s = v.back();
      v.pop_back();
      REQUIRE(is_pattern(v, s));
      got.push_back(s);
    }
    producer.kill();
    CHECK(producer.join(kLong));
    for (;;) {  // whatever it managed to put is whole
      std::vector<std::uint64_t> v;
      try {
        v = q.get(200ms);
      } catch (const mpx::Empty&) {
        break;
      }
      std::uint64_t s = v.back();
      v.pop_back();
      REQUIRE(is_pattern(v, s));
      got.push_back(s);
    }
    next_seed = got.back() + 1000;
  }
  // Each producer's items arrive in order, none twice.
  for (std::size_t i = 1; i < got.size(); ++i) CHECK(got[i] > got[i - 1]);
  q.put({9, 9});
  CHECK(q.get(kLong) == std::vector<std::uint64_t>{9, 9});
}

TEST_CASE("a consumer SIGKILLed mid-get does not lose the item") {
  Queue<std::vector<std::uint64_t>> q;
  auto last = mpx::detail::make_shared_object<std::atomic<std::int64_t>>(-1);
  constexpr std::size_t kWords = (64u << 20) / 8;
  constexpr std::int64_t kItems = 6;
  for (std::int64_t s = 0; s < kItems; ++s) {
    auto v = pattern(static_cast<std::uint64_t>(s), kWords);
    v.push_back(static_cast<std::uint64_t>(s));
    q.put(v);
  }
  Queue<int> ready;
  mpx::Process consumer([q, last, ready]() mutable {
    ready.put(1);
    for (;;) last->store(static_cast<std::int64_t>(q.get().back()));
  });
  consumer.start();
  CHECK(ready.get(kLong) == 1);
  std::this_thread::sleep_for(30ms);  // each get() copies 64 MiB: the kill lands in one
  consumer.kill();
  CHECK(consumer.join(kLong));
  const std::int64_t consumed = last->load();
  // Next comes the item after the last get() that returned, or, if the kill fell between a
  // get() returning and the store above, the one after that; never a damaged one.
  if (consumed < kItems - 1) {
    try {
      auto v = q.get(2s);
      auto s = static_cast<std::int64_t>(v.back());
      v.pop_back();
      CHECK(v.size() == kWords);
      CHECK(is_pattern(v, static_cast<std::uint64_t>(s)));
      CHECK((s == consumed + 1 || s == consumed + 2));
      for (std::int64_t t = s + 1; t < kItems; ++t)
        CHECK(q.get(kLong).back() == static_cast<std::uint64_t>(t));
    } catch (const mpx::Empty&) {
      CHECK(consumed == kItems - 2);  // the last item was taken just before the kill
    }
  }
  CHECK(q.empty());
  q.put({1});
  CHECK(q.get(kLong) == std::vector<std::uint64_t>{1});
}

TEST_CASE("no fds, mappings or children left behind") {
  std::size_t fds = open_fds();
  std::size_t maps = shared_mappings();
  {
    std::vector<Queue<int>> queues(20);
    mpx::JoinableQueue<std::string> jq;
    mpx::SimpleQueue<int> sq;
    mpx::Process p([queues, jq, sq]() mutable {
      for (auto& q : queues) q.put(1);
      jq.put("x");
      sq.put(2);
    });
    p.start();
    CHECK(p.join(kLong));
    for (auto& q : queues) CHECK(q.get(kLong) == 1);
    CHECK(jq.get(kLong) == "x");
    jq.task_done();
    CHECK(jq.join(kLong));
    CHECK(sq.get() == 2);
  }
  CHECK(open_fds() == fds);
  CHECK(shared_mappings() == maps);
  CHECK(no_children_left());
}
