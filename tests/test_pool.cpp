// mpx::Pool: the API, results, errors, callbacks, lazy imap, task identity and random streams.
#include <doctest/doctest.h>
#include <mpx/pool.hpp>
#include <mpx/process.hpp>
#include <support.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <list>
#include <map>
#include <numeric>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;

namespace {

constexpr auto kLong = std::chrono::seconds(60);  // bound for anything that should be quick

long pow10(long x) {
  long r = 1;
  for (int i = 0; i < 10; ++i) r *= x;
  return r;
}
int square(int x) { return x * x; }
int add3(int a, int b, int c) { return a + b + c; }
std::string greet(const std::string& who, int times) {
  std::string s;
  for (int i = 0; i < times; ++i) s += "hi " + who + ";";
  return s;
}
std::string sleepy(double seconds) {
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  return "I just woke up!";
}
void nothing(int) {}
int fail_on(int x) {
  if (x == 3) throw std::invalid_argument("three is bad");
  return x;
}
struct CustomError {
  int code;
};
int throw_custom(int) { throw CustomError{7}; }
int throw_int(int) { throw 42; }

struct Multiplier {  // default-constructible and empty: nothing travels
  int operator()(int x) const { return x * 3; }
};
struct Scaler {  // transferable: its factor travels with every task
  int factor = 1;
  int operator()(int x) const { return x * factor; }
  template <class A>
  void serialize(A& a) {
    a(factor);
  }
};

struct Unencodable {  // a result whose encoding fails at run time
  int v = 0;
  template <class A>
  void save(A&) const {
    throw std::runtime_error("cannot encode this");
  }
  template <class A>
  void load(A&) {}
};
Unencodable make_unencodable(int x) { return {x}; }

int g_initialized = 0;
int read_initialized(int) { return g_initialized; }

}  // namespace

static_assert(mpx::detail::fn_kind<decltype(&square)>() == mpx::detail::FnKind::pointer);
static_assert(mpx::detail::fn_kind<Multiplier>() == mpx::detail::FnKind::stateless);
static_assert(mpx::detail::fn_kind<Scaler>() == mpx::detail::FnKind::stateful);
static_assert(mpx::detail::fn_kind<decltype([](int x) { return x; })>() == mpx::detail::FnKind::stateless);
static_assert(mpx::detail::fn_kind<std::function<int(int)>>() == mpx::detail::FnKind::invalid);
inline auto g_capturing = [n = 1](int x) { return x + n; };
static_assert(mpx::detail::fn_kind<decltype(g_capturing)>() == mpx::detail::FnKind::invalid);

TEST_CASE("mp2: apply, map, apply_async, map_async as in the tutorial") {
  mpx::Pool pool(2);
  CHECK(pool.processes() == 2);
  CHECK(pool.apply(pow10, 10L) == 10000000000L);
  std::vector<long> xs(10);
  std::iota(xs.begin(), xs.end(), 0L);
  CHECK(pool.map(pow10, xs) ==
        std::vector<long>{0, 1, 1024, 59049, 1048576, 9765625, 60466176, 282475249, 1073741824, 3486784401});
  auto r = pool.apply_async(sleepy, 0.3);
  CHECK_FALSE(r.ready());
  CHECK(r.get(5s) == "I just woke up!");
  CHECK(r.ready());
  CHECK(r.successful());
  auto m = pool.map_async(pow10, xs);
  CHECK(m.wait(kLong));
  CHECK(m.successful());
  CHECK(m.get()[9] == 3486784401L);
  pool.close();
  pool.join();
}

TEST_CASE("default pool size is cpu_count()") {
  mpx::Pool pool;
  CHECK(pool.processes() == mpx::cpu_count());
  mpx::Pool::Options three;
  three.processes = 3;
  mpx::Pool pool3(three);
  CHECK(pool3.processes() == 3);
  std::set<int> pids;
  for (auto& r : [&] {
         std::vector<mpx::AsyncResult<int>> v;
         for (int i = 0; i < 30; ++i)
           v.push_back(pool3.apply_async(
               [](int ms) {
                 std::this_thread::sleep_for(std::chrono::milliseconds(ms));
                 return static_cast<int>(::getpid());
               },
               20));
         return v;
       }())
    pids.insert(r.get(kLong));
  CHECK(pids.size() == 3);
  CHECK(pids.count(static_cast<int>(::getpid())) == 0);
}

TEST_CASE("a process count of any integer type: in range it is taken, else ValueError, never wrapped") {
  mpx::Pool two(std::int64_t{2});
  CHECK(two.processes() == 2);
  CHECK_THROWS_WITH_AS(mpx::Pool(-1), doctest::Contains("not -1"), mpx::ValueError);
  CHECK_THROWS_AS(mpx::Pool(std::int64_t{1} << 32), mpx::ValueError);
  CHECK_THROWS_AS(mpx::Pool(std::numeric_limits<long long>::min()), mpx::ValueError);
}

TEST_CASE("task functions: pointers, lambdas, function objects, transferable state") {
  mpx::Pool pool(2);
  CHECK(pool.apply(add3, 1, 2, 3) == 6);
  CHECK(pool.apply([](int a, int b) { return a * b; }, 6, 7) == 42);
  CHECK(pool.apply(Multiplier{}, 5) == 15);
  CHECK(pool.apply(Scaler{10}, 5) == 50);  // default-constructible, yet its state travels
  CHECK(pool.map(Scaler{-2}, std::vector<int>{1, 2, 3}) == std::vector<int>{-2, -4, -6});
  CHECK(pool.apply(greet, std::string("bob"), 2) == "hi bob;hi bob;");
  pool.apply(nothing, 1);  // void result
  auto v = pool.apply_async(nothing, 2);
  v.get(kLong);
  CHECK(v.successful());
  auto big = pool.apply([](std::vector<std::string> s,
                           std::map<int, double> m) { return std::make_tuple(s.size(), m.at(2), s.back()); },
                        std::vector<std::string>{"a", "b", "c"}, std::map<int, double>{{2, 2.5}});
  CHECK(std::get<0>(big) == 3);
  CHECK(std::get<1>(big) == 2.5);
  CHECK(std::get<2>(big) == "c");
}

TEST_CASE("map: chunk sizes, empty and unsized inputs, order") {
  mpx::Pool pool(3);
  std::vector<int> xs(1000);
  std::iota(xs.begin(), xs.end(), 0);
  std::vector<int> want;
  for (int x : xs) want.push_back(x * x);
  CHECK(pool.map(square, xs) == want);
  for (std::size_t cs : {1u, 7u, 1000u, 5000u}) CHECK(pool.map(square, xs, cs) == want);
  CHECK(pool.map(square, std::vector<int>{}).empty());
  std::list<int> l(xs.begin(), xs.end());
  CHECK(pool.map(square, l) == want);
  auto evens = xs | std::views::filter([](int x) { return x % 2 == 0; });
  auto r = pool.map(square, evens);
  REQUIRE(r.size() == 500);
  CHECK(r[10] == 400);
  CHECK(pool.map(square, std::views::iota(0, 1000)) == want);
  auto strs = pool.map([](const std::string& s) { return s + "!"; }, std::vector<std::string>{"a", "bb"});
  CHECK(strs == std::vector<std::string>{"a!", "bb!"});
  auto bools = pool.map([](int x) { return x % 2 == 0; }, std::vector<int>{1, 2, 3});
  CHECK(bools == std::vector<bool>{false, true, false});
}

TEST_CASE("starmap takes tuples and pairs") {
  mpx::Pool pool(2);
  std::vector<std::tuple<int, int, int>> t{{1, 2, 3}, {4, 5, 6}};
  CHECK(pool.starmap(add3, t) == std::vector<int>{6, 15});
  std::vector<std::pair<std::string, int>> p{{"x", 1}, {"y", 2}};
  CHECK(pool.starmap(greet, p) == std::vector<std::string>{"hi x;", "hi y;hi y;"});
  auto a = pool.starmap_async([](int x, int y) { return x - y; },
                              std::vector<std::pair<int, int>>{{5, 3}, {1, 1}}, 1);
  CHECK(a.get(kLong) == std::vector<int>{2, 0});
}

TEST_CASE("exceptions fail their task only, as RemoteError") {
  mpx::Pool pool(2);
  try {
    pool.apply(fail_on, 3);
    FAIL("no exception");
  } catch (const mpx::RemoteError& e) {
    CHECK(e.type_name() == "std::invalid_argument");
    CHECK(e.message() == "three is bad");
  }
  try {
    pool.apply(throw_custom, 1);
    FAIL("no exception");
  } catch (const mpx::RemoteError& e) {
    CHECK(e.type_name().find("CustomError") != std::string::npos);
  }
  CHECK_THROWS_AS(pool.apply(throw_int, 1), mpx::RemoteError);
  // A mpx error raised by user code is user code's exception too.
  try {
    pool.apply([](int) -> int { throw mpx::KeyError("k"); }, 0);
  } catch (const mpx::RemoteError& e) {
    CHECK(e.type_name() == "mpx::KeyError");
  }
  auto r = pool.apply_async(fail_on, 3);
  CHECK(r.wait(kLong));
  CHECK_FALSE(r.successful());
  CHECK_THROWS_AS(r.get(), mpx::RemoteError);
  CHECK(pool.apply(fail_on, 4) == 4);
  // map fails as a whole with the item's error; the pool goes on
  CHECK_THROWS_AS(pool.map(fail_on, std::vector<int>{1, 2, 3, 4}), mpx::RemoteError);
  CHECK(pool.map(fail_on, std::vector<int>{1, 2}) == std::vector<int>{1, 2});
  // a result that cannot be encoded fails its task, not the pool
  CHECK_THROWS_AS(pool.apply(make_unencodable, 1), mpx::RemoteError);
  CHECK_THROWS_AS(pool.map(make_unencodable, std::vector<int>{1, 2}), mpx::RemoteError);
  CHECK(pool.apply(square, 9) == 81);
}

TEST_CASE("timeouts: get and wait on a slow task") {
  mpx::Pool pool(1);
  auto r = pool.apply_async(sleepy, 0.5);
  auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(r.get(50ms), mpx::TimeoutError);
  CHECK_FALSE(r.wait(10ms));
  CHECK(std::chrono::steady_clock::now() - t0 < 450ms);
  CHECK_THROWS_AS(r.successful(), mpx::StateError);
  CHECK(r.get(kLong) == "I just woke up!");
  CHECK(r.wait(0ms));
}

TEST_CASE("callbacks: order, thread, before get returns, errors in callbacks") {
  mpx::Pool pool(2);
  std::atomic<int> seen{0};
  std::vector<int> order;
  std::mutex m;
  std::thread::id cb_thread;
  auto r = pool.apply_async(sleepy, 0.2);
  r.then([&](const std::string& s) {
     std::lock_guard lk(m);
     cb_thread = std::this_thread::get_id();
     order.push_back(1);
     seen += s.size() > 0;
   })
      .then([&](const std::string&) { throw std::runtime_error("callback error, reported and ignored"); })
      .then([&](const std::string&) {
        std::lock_guard lk(m);
        order.push_back(2);
      })
      .on_error([&](std::exception_ptr) { order.push_back(-1); });
  r.get(kLong);
  {
    std::lock_guard lk(m);
    CHECK(order == std::vector<int>{1, 2});  // ran before get() returned, in order
    CHECK(cb_thread != std::this_thread::get_id());
  }
  // registered after completion: at once, here
  bool now = false;
  auto me = std::this_thread::get_id();
  r.then([&](const std::string&) { now = std::this_thread::get_id() == me; });
  CHECK(now);

  std::exception_ptr err;
  auto f = pool.apply_async(fail_on, 3).on_error([&](std::exception_ptr e) { err = e; });
  CHECK(f.wait(kLong));
  REQUIRE(err);
  CHECK_THROWS_AS(std::rethrow_exception(err), mpx::RemoteError);

  int done = 0;
  auto v = pool.apply_async(nothing, 0).then([&] { ++done; });
  v.get(kLong);
  CHECK(done == 1);

  auto ma = pool.map_async(square, std::vector<int>{1, 2, 3});
  std::vector<int> got;
  ma.then([&](const std::vector<int>& x) { got = x; });
  ma.wait(kLong);
  CHECK(got == std::vector<int>{1, 4, 9});

  // Blocking on the pool inside a callback would deadlock: it is refused instead.
  std::atomic<bool> refused{false};
  auto slow = pool.apply_async(sleepy, 0.3);
  auto outer = pool.apply_async(sleepy, 0.1).then([&](const std::string&) {
    try {
      slow.get();
    } catch (const mpx::StateError&) {
      refused = true;
    }
  });
  outer.get(kLong);
  CHECK(refused);
  slow.get(kLong);
}

TEST_CASE("many small tasks, and results outliving the pool") {
  std::vector<mpx::AsyncResult<int>> rs;
  {
    mpx::Pool pool(2);
    for (int i = 0; i < 20000; ++i) rs.push_back(pool.apply_async(square, i % 1000));
    long sum = 0;
    for (auto& r : rs) sum += r.get(kLong);
    long want = 0;
    for (int i = 0; i < 20000; ++i) want += (i % 1000) * (i % 1000);
    CHECK(sum == want);
    std::atomic<int> callbacks{0};
    std::vector<mpx::AsyncResult<int>> more;
    for (int i = 0; i < 5000; ++i)
      more.push_back(pool.apply_async(square, i).then([&](const int&) { ++callbacks; }));
    pool.close();
    pool.join();
    CHECK(callbacks == 5000);
  }
  CHECK(rs[999].get() == 999 * 999);  // still readable after ~Pool
}

TEST_CASE("imap and imap_unordered") {
  mpx::Pool pool(2);
  std::vector<int> got;
  for (int v : pool.imap(square, std::vector<int>{1, 2, 3, 4, 5})) got.push_back(v);  // rvalue kept alive
  CHECK(got == std::vector<int>{1, 4, 9, 16, 25});
  std::vector<int> xs(500);
  std::iota(xs.begin(), xs.end(), 0);
  got.clear();
  for (int v : pool.imap(square, xs, 7)) got.push_back(v);
  REQUIRE(got.size() == 500);
  CHECK(got[499] == 499 * 499);
  std::multiset<int> un;
  for (int v : pool.imap_unordered(square, xs, 3)) un.insert(v);
  CHECK(un.size() == 500);
  CHECK(un.count(499 * 499) == 1);
  static_assert(std::ranges::input_range<decltype(pool.imap(square, xs))>);

  // A failed item throws from operator* and iteration goes on; chunk-mates are unaffected.
  for (std::size_t cs : {1u, 4u}) {
    int ok = 0, failed = 0;
    auto range = pool.imap(fail_on, std::vector<int>{0, 1, 2, 3, 4, 5, 6}, cs);
    for (auto it = range.begin(); it != range.end(); ++it) {
      try {
        int v = *it;
        CHECK(v != 3);
        ++ok;
      } catch (const mpx::RemoteError& e) {
        CHECK(e.message() == "three is bad");
        ++failed;
      }
    }
    CHECK(ok == 6);
    CHECK(failed == 1);
  }
  int failures = 0;
  auto both = pool.imap_unordered(fail_on, std::vector<int>{3, 3}, 2);
  for (auto it = both.begin(); it != both.end(); ++it) {
    CHECK_THROWS_AS((void)*it, mpx::RemoteError);
    ++failures;
  }
  CHECK(failures == 2);
}

TEST_CASE("imap consumes a huge lazy input lazily") {
  mpx::Pool pool(2);
  std::atomic<long> pulled{0};
  auto input = std::views::iota(0, 100000000) | std::views::transform([&](int x) {
                 ++pulled;
                 return x;
               });
  long sum = 0;
  int seen = 0;
  {
    auto range = pool.imap(square, input, 4);
    for (int v : range) {
      sum += v;
      if (++seen == 3000) break;
    }
  }  // dropped with tasks in flight
  CHECK(seen == 3000);
  // In flight at most processes * (window + 1) chunks: 2 * 1025 * 4 items.
  CHECK(pulled.load() <= 3000 + 2 * 1025 * 4 + 4);
  long want = 0;
  for (long i = 0; i < 3000; ++i) want += i * i;
  CHECK(sum == want);
  seen = 0;
  pulled = 0;
  for (int v : pool.imap_unordered(square, input)) {
    (void)v;
    if (++seen == 2000) break;
  }
  CHECK(pulled.load() <= 2000 + 2 * 1025 + 1);
  CHECK(pool.apply(square, 3) == 9);  // the pool is fine afterwards
}

TEST_CASE("imap keeps feeding after close() and stops at join()") {
  mpx::Pool pool(2);
  auto range = pool.imap(square, std::views::iota(0, 100));
  pool.close();
  CHECK_THROWS_AS(pool.apply(square, 1), mpx::StateError);
  int count = 0;
  for (int v : range) {
    CHECK(v == count * count);
    ++count;
  }
  CHECK(count == 100);
  CHECK_THROWS_AS(pool.imap(square, std::views::iota(0, 10)), mpx::StateError);
  pool.join();
}

TEST_CASE("imap after the pool stops taking tasks: the next item says so") {
  mpx::Pool pool(1);
  auto range = pool.imap(square, std::views::iota(0, 100000000), 1);
  auto it = range.begin();
  CHECK(*it == 0);
  pool.close();
  pool.join();  // stops feeding
  bool stopped = false;
  for (int i = 0; i < 100000 && it != range.end(); ++i, ++it) {
    try {
      (void)*it;
    } catch (const mpx::StateError&) {
      stopped = true;
    }
  }
  CHECK(stopped);
  CHECK(it == range.end());
}

TEST_CASE("initializer runs once in every worker; a failing one fails tasks instead of hanging") {
  {
    mpx::Pool pool(
        mpx::Pool::Options{.processes = 2, .initializer = [] { g_initialized = 42; }, .maxtasksperchild = 0});
    auto r = pool.map(read_initialized, std::vector<int>(20, 0), 1);
    CHECK(std::all_of(r.begin(), r.end(), [](int v) { return v == 42; }));
    CHECK(g_initialized == 0);  // not in this process
  }
  mpx::Pool bad(mpx::Pool::Options{
      .processes = 2, .initializer = [] { throw std::runtime_error("no init"); }, .maxtasksperchild = 0});
  try {
    bad.apply(square, 2);
    FAIL("no exception");
  } catch (const mpx::RemoteError& e) {
    CHECK(e.message() == "no init");
  }
  CHECK_THROWS_AS(bad.map(square, std::vector<int>{1, 2}), mpx::RemoteError);
}

TEST_CASE("maxtasksperchild replaces workers") {
  mpx::Pool::Options o;
  o.processes = 2;
  o.maxtasksperchild = 2;
  mpx::Pool pool(o);
  std::vector<int> xs(20, 0);
  auto pids = pool.map([](int) { return static_cast<int>(::getpid()); }, xs, 1);
  std::set<int> distinct(pids.begin(), pids.end());
  CHECK(distinct.size() >= 10);
  std::map<int, int> per;
  for (int p : pids) ++per[p];
  for (auto& [p, n] : per) CHECK(n <= 2);
  CHECK(pool.map(square, std::vector<int>{1, 2, 3}, 1) == std::vector<int>{1, 4, 9});
  // Every result stays right while workers keep being replaced underneath.
  std::vector<int> ys(200);
  std::iota(ys.begin(), ys.end(), 0);
  std::vector<int> want;
  for (int y : ys) want.push_back(y * y);
  CHECK(pool.map(square, ys, 1) == want);
  CHECK(pool.map(square, ys, 3) == want);
  std::vector<int> got;
  for (int v : pool.imap(square, ys)) got.push_back(v);
  CHECK(got == want);
  std::vector<mpx::AsyncResult<int>> rs;
  for (int y : ys) rs.push_back(pool.apply_async(square, y));
  for (int y : ys) CHECK(rs[static_cast<std::size_t>(y)].get(kLong) == y * y);
}

TEST_CASE("Options takes designated initialisers without warnings (this file builds with -Wextra)") {
  mpx::Pool pool(mpx::Pool::Options{.processes = 2});
  CHECK(pool.processes() == 2);
  mpx::Pool one(mpx::Pool::Options{.maxtasksperchild = 1});
  CHECK(one.processes() == mpx::cpu_count());
  CHECK(one.map(square, std::vector<int>{1, 2, 3, 4}, 1) == std::vector<int>{1, 4, 9, 16});
}

namespace {
double rng_task(int) {
  auto g = mpx::task_rng(12345);
  std::normal_distribution<double> z;
  double s = 0;
  for (int i = 0; i < 100; ++i) s += z(g);
  return s;
}
std::uint64_t index_task(int) { return mpx::task_index(); }
}  // namespace

TEST_CASE("task_index and task_rng do not depend on workers or chunking") {
  std::vector<int> xs(40, 0);
  std::vector<double> base;
  {
    mpx::Pool one(1);
    base = one.map(rng_task, xs, 1);
    auto idx = one.map(index_task, xs, 7);
    for (std::size_t i = 0; i < idx.size(); ++i) CHECK(idx[i] == i);
  }
  mpx::Pool three(3);
  CHECK(three.map(rng_task, xs, 5) == base);
  CHECK(three.map(rng_task, xs) == base);
  std::vector<double> im;
  for (double v : three.imap(rng_task, xs, 3)) im.push_back(v);
  CHECK(im == base);
  std::set<double> distinct(base.begin(), base.end());
  CHECK(distinct.size() == base.size());  // independent streams
  CHECK(mpx::task_index() == 0);
}

TEST_CASE("code identity survives the wire; a wrong module or name is a clear error") {
  auto ref = mpx::detail::code_ref(reinterpret_cast<std::uintptr_t>(&square));
  CHECK(mpx::detail::code_address(ref) == reinterpret_cast<std::uintptr_t>(&square));
  // run a task in this process through the same encoding the workers use
  mpx::Bytes body;
  mpx::detail::encode_call_task(body, &add3, 0, 1, 2, 3);
  mpx::Bytes out;
  mpx::detail::run_task(body, out);
  CHECK(mpx::detail::decode_call_result<int>(out) == 6);
  // another module id: ValueError, not a crash
  mpx::Bytes bad = body;
  bad[1] = static_cast<std::byte>(static_cast<unsigned>(bad[1]) ^ 0xff);
  out.clear();
  mpx::detail::run_task(bad, out);
  CHECK_THROWS_AS(mpx::detail::decode_call_result<int>(out), mpx::ValueError);
  // by name
  mpx::detail::register_named_task("test.add3", mpx::detail::make_named_task(&add3));
  mpx::detail::register_named_task("test.mul",
                                   mpx::detail::make_named_task([k = 5](int x) { return x * k; }));
  body.clear();
  mpx::detail::encode_named_task<int>(body, "test.mul", 0, 4);
  out.clear();
  mpx::detail::run_task(body, out);
  CHECK(mpx::detail::decode_call_result<int>(out) == 20);
  body.clear();
  mpx::detail::encode_named_task<int>(body, "test.none", 0, 4);
  out.clear();
  mpx::detail::run_task(body, out);
  CHECK_THROWS_AS(mpx::detail::decode_call_result<int>(out), mpx::ValueError);
  body.clear();
  mpx::detail::encode_named_task<double>(body, "test.add3", 0, 1, 2, 3);  // wrong result type
  out.clear();
  mpx::detail::run_task(body, out);
  CHECK_THROWS_AS(mpx::detail::decode_call_result<double>(out), mpx::TypeMismatch);
  // garbage never crashes the runner
  std::vector<std::byte> junk(40, std::byte{0x55});
  out.clear();
  mpx::detail::run_task(junk, out);
  CHECK_THROWS_AS(mpx::detail::decode_call_result<int>(out), mpx::ProtocolError);
}

namespace {
struct BoostPoint {  // speaks Boost.Serialization only
  int x = 0, y = 0;
  template <class A>
  void serialize(A& a, unsigned) {
    a& x;
    a& y;
  }
};
BoostPoint flip(BoostPoint p) { return {p.y, p.x}; }
}  // namespace
template <>
struct mpx::use_boost_serialization<BoostPoint> : std::true_type {};

TEST_CASE("Boost.Serialization types as arguments, items and results") {
  mpx::Pool pool(2);
  auto p = pool.apply(flip, BoostPoint{1, 2});
  CHECK(p.x == 2);
  CHECK(p.y == 1);
  CHECK(pool.apply([](BoostPoint a, int k, std::string s) { return a.x * k + static_cast<int>(s.size()); },
                   BoostPoint{3, 0}, 5, std::string("ab")) == 17);
  std::vector<BoostPoint> pts{{1, 2}, {3, 4}, {5, 6}};
  auto r = pool.map(flip, pts, 2);
  REQUIRE(r.size() == 3);
  CHECK(r[2].x == 6);
  CHECK(r[2].y == 5);
  int n = 0;
  for (const BoostPoint& q : pool.imap(flip, pts)) n += q.x;
  CHECK(n == 2 + 4 + 6);
}

TEST_CASE("AsyncResult completion side is reusable without a pool") {
  auto st = std::make_shared<mpx::detail::ResultState<int>>();
  mpx::AsyncResult<int> r(st);
  CHECK_FALSE(r.ready());
  int cb = 0;
  r.then([&](const int& v) { cb = v; });
  std::thread t([st] {
    st->set_from_bytes(mpx::encode(5), [](std::span<const std::byte> b) { return mpx::decode<int>(b); });
  });
  CHECK(r.get(kLong) == 5);
  t.join();
  CHECK(cb == 5);
  CHECK_FALSE(st->set_value(6));  // first completion wins
  auto e = std::make_shared<mpx::detail::ResultState<void>>();
  mpx::AsyncResult<void> rv(e);
  e->set_exception(std::make_exception_ptr(mpx::WorkerLost("gone", -9)));
  CHECK_THROWS_AS(rv.get(), mpx::WorkerLost);
  CHECK_FALSE(rv.successful());
}

TEST_CASE("no fds or children left behind by a pool, whatever ran before") {
  // Measured around pools of its own, so it means the same run alone, first or after every
  // other case (a count taken when the program started only saw what the cases before it did).
  // A first pool settles anything the library makes once per process; then the set of open
  // descriptors, not just their number, must come back exactly.
  {
    mpx::Pool settle(2);
    CHECK(settle.apply(square, 3) == 9);
  }
  const mpx::test::FdSet before = mpx::test::open_fd_set();
  {  // results, errors, callbacks, a lazy imap dropped half-way, close + join
    mpx::Pool pool(2);
    CHECK(pool.map(square, std::vector<int>(100, 3), 7)[99] == 9);
    std::atomic<int> called{0};
    auto r = pool.apply_async(square, 4).then([&](const int& v) { called = v; });
    CHECK(r.get(kLong) == 16);
    CHECK(called == 16);
    CHECK_THROWS_AS(pool.apply(fail_on, 3), mpx::RemoteError);
    {
      auto range = pool.imap(square, std::views::iota(0, 1000000));
      auto it = range.begin();
      CHECK(*it == 0);
    }
    pool.close();
    pool.join();
  }
  {  // workers replaced by the spawner as they go
    mpx::Pool::Options o;
    o.processes = 2;
    o.maxtasksperchild = 1;
    mpx::Pool pool(o);
    CHECK(pool.map(square, std::vector<int>(10, 2), 1) == std::vector<int>(10, 4));
  }
  {  // terminate with a task running
    mpx::Pool pool(1);
    auto slow = pool.apply_async(sleepy, 30.0);
    pool.terminate();
    CHECK_THROWS(slow.get(kLong));
    pool.join();
  }
  {  // built while another thread runs: the spawner forks the workers
    mpx::test::SleepingThread other;
    mpx::Pool pool(2);
    CHECK(pool.apply(square, 5) == 25);
  }
  CHECK(mpx::test::fd_changes(before, mpx::test::open_fd_set()) == "");
  int status = 0;
  pid_t r = ::waitpid(-1, &status, WNOHANG);
  CHECK(r <= 0);  // no zombie waiting (ECHILD or nothing ready)
  CHECK(mpx::active_children().empty());
}
