// Managers, part 1: the private server, dict/list/value/namespace proxies, sharing across
// processes and threads, names and types, transfer, pipelining, cleanup.
#include <mpx/managers.hpp>
#include <mpx/pool.hpp>
#include <mpx/process.hpp>

#include <dirent.h>
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

// A Pool task that gets a proxy as an argument: the worker reaches the manager by itself.
int record_square(mpx::DictProxy<int, int> squares, int k) {
  squares.set(k, k * k);
  return static_cast<int>(::getpid());
}

int count_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

// A child reports failure through its exit code: CHECKs in a child are lost.
template <class F>
int run_child(F&& f) {
  mpx::Process p([f = std::forward<F>(f)]() mutable {
    if (!f()) throw std::runtime_error("child check failed");
  });
  p.start();
  REQUIRE(p.join(60s));
  return *p.exitcode();
}

struct Point {
  int x = 0, y = 0;
  template <class A>
  void serialize(A& a) {
    a(x, y);
  }
  bool operator==(const Point&) const = default;
};

}  // namespace

TEST_CASE("private manager: address, authkey, socket directory 0700, cleanup on shutdown") {
  std::string dir;
  {
    mpx::Manager m;
    CHECK(m.address().kind() == mpx::Address::Kind::unix_path);
    CHECK(m.authkey().size() == 32);
    dir = std::filesystem::path(m.address().path()).parent_path();
    struct stat st {};
    REQUIRE(::stat(dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    REQUIRE(::stat(m.address().path().c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);
    auto d = m.dict<int, int>();
    d.set(1, 2);
    m.shutdown();
    CHECK_FALSE(std::filesystem::exists(dir));
    CHECK_THROWS_AS(d.set(1, 3), mpx::ConnectionError);
    m.shutdown();  // twice is harmless
  }
  {
    mpx::Manager m;
    dir = std::filesystem::path(m.address().path()).parent_path();
  }  // the last handle stops it
  CHECK_FALSE(std::filesystem::exists(dir));
}

TEST_CASE("dict proxy: every operation, insertion order, KeyError") {
  mpx::Manager m;
  auto d = m.dict<std::string, int>();
  CHECK(d.size() == 0);
  d.set("b", 2);
  d.set("a", 1);
  d.set("c", 3);
  d.set("b", 20);  // keeps its place, like Python
  CHECK(d.size() == 3);
  CHECK(d.at("b") == 20);
  CHECK_THROWS_AS(d.at("zz"), mpx::KeyError);
  CHECK(d.get("zz") == std::nullopt);
  CHECK(d.get("a") == 1);
  CHECK(d.get("zz", 7) == 7);
  CHECK(d.contains("c"));
  CHECK_FALSE(d.contains("zz"));
  CHECK(d.keys() == std::vector<std::string>{"b", "a", "c"});
  CHECK(d.values() == std::vector<int>{20, 1, 3});
  CHECK(d.items() == std::vector<std::pair<std::string, int>>{{"b", 20}, {"a", 1}, {"c", 3}});
  CHECK(d.erase("a"));
  CHECK_FALSE(d.erase("a"));
  CHECK(d.pop("b") == 20);
  CHECK(d.pop("b") == std::nullopt);
  d.update({{"x", 10}, {"y", 11}, {"c", 30}});
  CHECK(d.items() == std::vector<std::pair<std::string, int>>{{"c", 30}, {"x", 10}, {"y", 11}});
  d.clear();
  CHECK(d.size() == 0);
  CHECK(d.keys().empty());

  SUBCASE("structured keys and values compare by their encoding") {
    auto pd = m.dict<Point, std::vector<std::string>>();
    pd.set({1, 2}, {"one", "two"});
    pd.set({2, 1}, {});
    CHECK(pd.at({1, 2}) == std::vector<std::string>{"one", "two"});
    CHECK(pd.at({2, 1}).empty());
    CHECK(pd.size() == 2);
  }
  SUBCASE("large values") {
    auto big = m.dict<int, std::string>();
    std::string payload(8 << 20, 'x');
    payload[12345] = 'y';
    big.set(1, payload);
    CHECK(big.at(1) == payload);
  }
}

TEST_CASE("list proxy: every operation, Python indexing, IndexError") {
  mpx::Manager m;
  auto l = m.list<int>();
  CHECK(l.size() == 0);
  CHECK_THROWS_AS(l.pop(), mpx::IndexError);
  CHECK_THROWS_AS(l.at(0), mpx::IndexError);
  l.append(1);
  l.extend({2, 3, 4});
  CHECK(l.snapshot() == std::vector<int>{1, 2, 3, 4});
  CHECK(l.at(0) == 1);
  CHECK(l.at(-1) == 4);
  CHECK_THROWS_AS(l.at(4), mpx::IndexError);
  CHECK_THROWS_AS(l.at(-5), mpx::IndexError);
  l.set(1, 20);
  l.set(-1, 40);
  CHECK_THROWS_AS(l.set(9, 0), mpx::IndexError);
  l.insert(0, 0);
  l.insert(100, 99);   // clamps to the end
  l.insert(-100, -1);  // clamps to the front
  l.insert(-1, 50);    // before the last
  CHECK(l.snapshot() == std::vector<int>{-1, 0, 1, 20, 3, 40, 50, 99});
  CHECK(l.pop() == 99);
  CHECK(l.pop(0) == -1);
  l.erase(1);
  CHECK(l.snapshot() == std::vector<int>{0, 20, 3, 40, 50});
  CHECK_THROWS_AS(l.erase(5), mpx::IndexError);
  CHECK(l.size() == 5);
  l.clear();
  CHECK(l.snapshot().empty());
}

TEST_CASE("dict and list proxies: the rest of Python's dict and list, and Manager().Array") {
  mpx::Manager m;
  auto d = m.dict<std::string, int>();
  CHECK(d.setdefault("a", 1) == 1);
  CHECK(d.setdefault("a", 5) == 1);  // present: unchanged
  CHECK(d.at("a") == 1);
  d.update(std::map<std::string, int>{{"b", 2}, {"c", 3}});
  d.update({{"d", 4}});
  CHECK(d.copy() == std::map<std::string, int>{{"a", 1}, {"b", 2}, {"c", 3}, {"d", 4}});
  CHECK(d.values() == std::vector<int>{1, 2, 3, 4});
  CHECK(d.items().back() == std::pair<std::string, int>{"d", 4});
  CHECK(d.popitem() == std::pair<std::string, int>{"d", 4});  // the last inserted, as Python
  CHECK(d.popitem() == std::pair<std::string, int>{"c", 3});
  d.clear();
  CHECK_THROWS_AS(d.popitem(), mpx::KeyError);

  auto l = m.list<int>();
  l.extend({5, -3, 12, 5, 0, 100});
  CHECK(l.index(5) == 0);
  CHECK(l.index(12) == 2);
  CHECK(l.count(5) == 2);
  CHECK(l.count(7) == 0);
  CHECK_THROWS_AS(l.index(7), mpx::ValueError);
  l.remove(5);  // the first one
  CHECK(l.snapshot() == std::vector<int>{-3, 12, 5, 0, 100});
  CHECK_THROWS_AS(l.remove(7), mpx::ValueError);
  l.reverse();
  CHECK(l.snapshot() == std::vector<int>{100, 0, 5, 12, -3});
  l.sort();  // by value: -3 < 0 even though their encodings do not sort that way
  CHECK(l.snapshot() == std::vector<int>{-3, 0, 5, 12, 100});
  l.sort(std::greater<>{});
  CHECK(l.snapshot() == std::vector<int>{100, 12, 5, 0, -3});

  // sort() of a list others change meanwhile still sorts (it retries on a changed list).
  auto shared = m.list<int>("sort-race");
  for (int i = 0; i < 200; ++i) shared.append((i * 7919) % 200);
  mpx::Process writer([m]() mutable {
    auto w = m.list<int>("sort-race");
    for (int i = 0; i < 200; ++i) w.set(i % 10, 1000 + i);
  });
  writer.start();
  shared.sort();
  writer.join();
  CHECK(writer.exitcode() == 0);
  shared.sort();
  auto snap = shared.snapshot();
  CHECK(snap.size() == 200);
  CHECK(std::is_sorted(snap.begin(), snap.end()));
  CHECK(snap.back() == 1199);  // the writer's last value made it in

  auto a = m.array<double>(3);
  CHECK(a.size() == 3);
  CHECK(a.snapshot() == std::vector<double>{0.0, 0.0, 0.0});
  a.set(-1, 2.5);
  CHECK(a.get(2) == 2.5);
  CHECK_THROWS_AS(a.get(3), mpx::IndexError);
  auto named = m.array<int>({1, 2, 3}, "arr");
  CHECK(m.array<int>(0, "arr").snapshot() == std::vector<int>{1, 2, 3});  // opened, not remade
  CHECK_THROWS_AS(m.list<int>("arr"), mpx::TypeMismatch);
  CHECK_THROWS_AS(m.array<double>(1, "arr"), mpx::TypeMismatch);
}

TEST_CASE("value and namespace proxies") {
  mpx::Manager m;
  auto v = m.value<double>(1.5);
  CHECK(v.get() == 1.5);
  v.set(-2.25);
  CHECK(v.get() == -2.25);
  auto s = m.value<std::string>();
  CHECK(s.get().empty());
  auto named = m.value<int>(7, "counter");
  CHECK(m.value<int>(100, "counter").get() == 7);  // an existing name ignores the initial value
  named.set(8);
  CHECK(m.value<int>(0, "counter").get() == 8);

  auto ns = m.namespace_();
  ns.set("x", 42);
  ns.set("name", std::string("mpx"));
  ns.set("pt", Point{3, 4});
  CHECK(ns.get<int>("x") == 42);
  CHECK(ns.get<std::string>("name") == "mpx");
  CHECK(ns.get<Point>("pt") == Point{3, 4});
  CHECK_THROWS_AS(ns.get<int>("missing"), mpx::KeyError);
  CHECK_THROWS_AS(ns.get<double>("x"), mpx::TypeMismatch);
  CHECK(ns.contains("x"));
  CHECK(ns.erase("x"));
  CHECK_FALSE(ns.erase("x"));
  CHECK_FALSE(ns.contains("x"));
}

TEST_CASE("named objects: shared by name, TypeMismatch for another type or kind, erase") {
  mpx::Manager m;
  auto d = m.dict<std::string, int>("shared");
  d.set("k", 1);
  CHECK(m.dict<std::string, int>("shared").at("k") == 1);
  CHECK_THROWS_AS((m.dict<std::string, long>("shared")), mpx::TypeMismatch);
  CHECK_THROWS_AS((m.dict<int, int>("shared")), mpx::TypeMismatch);
  CHECK_THROWS_AS(m.list<int>("shared"), mpx::TypeMismatch);
  CHECK_THROWS_AS(m.lock("shared"), mpx::TypeMismatch);
  m.erase("shared");
  CHECK_THROWS_AS(d.set("k", 2), mpx::StateError);  // the old proxy's object is gone
  auto again = m.list<int>("shared");               // the name is free again
  again.append(1);
  CHECK(again.size() == 1);
}

TEST_CASE("proxies in forked children: own connection, both sides keep working") {
  mpx::Manager m;
  auto d = m.dict<int, int>();
  auto named = m.list<std::string>("log");
  d.set(0, 0);
  for (int i = 1; i <= 3; ++i) {
    CHECK(run_child([d, named, i]() mutable {
            d.set(i, i * i);
            named.append("child " + std::to_string(i));
            return d.at(0) == 0;
          }) == 0);
    d.set(0, 0);  // the parent's connection is untouched by the child's use
  }
  CHECK(d.size() == 4);
  CHECK(d.at(3) == 9);
  CHECK(named.snapshot() == std::vector<std::string>{"child 1", "child 2", "child 3"});

  SUBCASE("a Manager copy in a child makes objects and cannot stop the server") {
    CHECK(run_child([m]() mutable {
            auto l = m.list<int>("from-child");
            l.append(5);
            try {
              m.shutdown();
              return false;
            } catch (const mpx::StateError&) {
            }
            return l.size() == 1;
          }) == 0);
    CHECK(m.list<int>("from-child").snapshot() == std::vector<int>{5});
  }
}

TEST_CASE("unrelated clients share objects by name") {
  mpx::Manager m;
  mpx::Address addr = m.address();
  std::string key = m.authkey();
  // Two processes that only know the address and the key.
  CHECK(run_child([addr, key] {
          auto c = mpx::Manager::connect(addr, key);
          auto d = c.dict<std::string, std::string>("registry");
          d.set("writer", "was here");
          auto q = c.queue<int>(0, "jobs");
          for (int i = 0; i < 10; ++i) q.put(i);
          return true;
        }) == 0);
  CHECK(run_child([addr, key] {
          auto c = mpx::Manager::connect(addr, key);
          auto q = c.queue<int>(0, "jobs");
          int sum = 0;
          for (int i = 0; i < 10; ++i) sum += q.get(5s);
          return c.dict<std::string, std::string>("registry").at("writer") == "was here" && sum == 45;
        }) == 0);
}

TEST_CASE("connect: wrong authkey is an AuthenticationError, no server is a ConnectionError") {
  mpx::Manager m;
  CHECK_THROWS_AS(mpx::Manager::connect(m.address(), "not the key"), mpx::AuthenticationError);
  CHECK_THROWS_AS(mpx::Manager::connect(mpx::Address::unix_path("/nonexistent/mpx.sock"), "k"),
                  mpx::ConnectionError);
  auto c = mpx::Manager::connect(m.address(), m.authkey());
  CHECK_THROWS_AS(c.shutdown(), mpx::StateError);
  c.dict<int, int>("x").set(1, 1);
  CHECK(m.dict<int, int>("x").at(1) == 1);
}

TEST_CASE("threads: one proxy used from many threads") {
  mpx::Manager m;
  auto d = m.dict<int, int>();
  auto l = m.list<int>();
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([d, l, t]() mutable {
      for (int i = 0; i < 100; ++i) {
        d.set(t * 1000 + i, i);
        l.append(t);
      }
    });
  for (auto& t : threads) t.join();
  CHECK(d.size() == 800);
  CHECK(l.size() == 800);
  // Objects made by a thread that has ended stay (they belong to the process).
  mpx::ListProxy<int> made;
  std::thread([&] {
    made = m.list<int>();
    made.append(1);
  }).join();
  CHECK(made.snapshot() == std::vector<int>{1});
}

TEST_CASE("anonymous objects end with the process that made them; named ones stay") {
  mpx::Manager m;
  auto inbox = m.queue<mpx::ListProxy<int>>(0, "inbox");
  CHECK(run_child([m, inbox]() mutable {
          auto anon = m.list<int>();
          anon.append(1);
          auto named = m.list<int>("kept");
          named.append(2);
          inbox.put(anon);
          inbox.put(named);
          return true;
        }) == 0);
  auto anon = inbox.get(5s);
  auto named = inbox.get(5s);
  CHECK(named.snapshot() == std::vector<int>{2});
  // The child has exited: its session, and with it the anonymous list, is gone.
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    try {
      anon.size();
      std::this_thread::sleep_for(20ms);
    } catch (const mpx::StateError&) {
      gone = true;
    }
  }
  CHECK(gone);
}

TEST_CASE("proxies are transferable: encode/decode, type checked") {
  mpx::Manager m;
  auto d = m.dict<std::string, int>("t");
  d.set("a", 1);
  mpx::Bytes wire = mpx::encode(d);
  auto back = mpx::decode<mpx::DictProxy<std::string, int>>(wire);
  CHECK(back.at("a") == 1);
  // A proxy received as the wrong type is a TypeMismatch, not a generic decode failure.
  CHECK_THROWS_WITH_AS((mpx::decode<mpx::DictProxy<std::string, double>>(wire)),
                       doctest::Contains("as a dict<str|f64>"), mpx::TypeMismatch);
  CHECK_THROWS_WITH_AS(mpx::decode<mpx::ListProxy<int>>(wire), doctest::Contains("as a list<i32>"),
                       mpx::TypeMismatch);
  // ... also when the proxy is inside a larger value.
  CHECK_THROWS_AS((mpx::decode<std::vector<mpx::ListProxy<int>>>(mpx::encode(std::vector{d}))),
                  mpx::TypeMismatch);
  // Garbage is still a ProtocolError.
  mpx::Bytes cut(wire.begin(), wire.begin() + 3);
  CHECK_THROWS_AS((mpx::decode<mpx::DictProxy<std::string, int>>(cut)), mpx::ProtocolError);
  static_assert(mpx::transferable<mpx::DictProxy<int, int>>);
  static_assert(mpx::transferable<mpx::QueueProxy<int>>);
  static_assert(mpx::transferable<mpx::LockProxy>);
}

TEST_CASE("proxies as Pool task arguments: each worker opens its own connection") {
  mpx::Manager m;
  auto squares = m.dict<int, int>();
  {
    mpx::Pool pool(2);
    std::vector<mpx::AsyncResult<int>> results;
    for (int k = 0; k < 20; ++k) results.push_back(pool.apply_async(record_square, squares, k));
    for (auto& r : results) CHECK(r.get(60s) != ::getpid());
  }
  CHECK(squares.size() == 20);
  CHECK(squares.at(7) == 49);
  CHECK(squares.at(19) == 361);
}

TEST_CASE("pipelined calls: Deferred results, flush, errors") {
  mpx::Manager m;
  auto d = m.dict<int, int>();
  std::vector<mpx::Deferred<void>> sets;
  for (int i = 0; i < 1000; ++i) sets.push_back(d.set_async(i, i * 2));
  auto got = d.get_async(999);
  auto missing = d.get_async(5000);
  CHECK(got.get() == 1998);
  CHECK(missing.get() == std::nullopt);
  for (auto& s : sets) CHECK(s.ready());
  for (int i = 0; i < 5000; ++i) (void)d.set_async(i, -i);
  m.flush();
  CHECK(d.size() == 5000);
  CHECK(d.at(4999) == -4999);

  // An error nobody waits for surfaces at the next call on this thread.
  auto q = m.queue<int>(1);
  q.put(1);
  auto full = q.put_async(2, false);
  CHECK_THROWS_AS(full.get(), mpx::Full);
  (void)q.put_async(3, false);
  CHECK_THROWS_AS(m.flush(), mpx::Full);
  CHECK_NOTHROW(m.flush());

  // Pipelined calls that return nothing go quiet (no reply unless they fail): a failure still
  // reaches its Deferred, or else the next call on this thread.
  auto l = m.lock();
  auto unheld = l.release_async();
  CHECK_THROWS_AS(unheld.get(), mpx::StateError);
  (void)l.release_async();
  CHECK_THROWS_AS(d.size(), mpx::StateError);
  CHECK(d.size() == 5000);
  (void)l.release_async();
  auto after = d.get_async(3);
  CHECK(after.get() == -3);
  CHECK_THROWS_AS(m.flush(), mpx::StateError);
  // A quiet call that waits on the server: timed out, and completed by another thread.
  auto q1 = m.queue<int>(1);
  q1.put(1);
  CHECK_THROWS_AS(q1.put_async(2, true, std::chrono::milliseconds(20)).get(), mpx::Full);
  auto blocked = q1.put_async(2);
  auto behind = d.get_async(4);
  std::thread taker([q1]() mutable {
    CHECK(q1.get() == 1);
    CHECK(q1.get() == 2);
  });
  CHECK(behind.get() == -4);
  CHECK(blocked.ready());
  CHECK_NOTHROW(blocked.get());
  taker.join();

  // Another thread may not complete this thread's Deferred.
  auto late = d.get_async(1);
  std::thread([&] { CHECK_THROWS_AS(late.get(), mpx::StateError); }).join();
  CHECK(late.get() == -1);
}

TEST_CASE("no leaks: fds, socket directories, server processes") {
  { mpx::Manager warm; }  // first use sets up process-wide state
  int before = count_fds();
  std::vector<std::string> dirs;
  for (int i = 0; i < 3; ++i) {
    mpx::Manager m;
    dirs.push_back(std::filesystem::path(m.address().path()).parent_path());
    auto d = m.dict<int, int>();
    d.set(1, 1);
    std::thread([&] { d.set(2, 2); }).join();
    CHECK(run_child([d]() mutable { return d.at(1) == 1; }) == 0);
  }
  CHECK(count_fds() == before);
  for (auto& dir : dirs) CHECK_FALSE(std::filesystem::exists(dir));
  CHECK(::waitpid(-1, nullptr, WNOHANG) == -1);  // no child left, reaped or not
}

TEST_CASE("the server dies with its owner, even when the owner is SIGKILLed") {
  int pipefd[2];
  REQUIRE(::pipe(pipefd) == 0);
  mpx::Process owner([&] {
    ::close(pipefd[0]);
    mpx::Manager m;
    std::string report = m.address().path() + "\n";
    (void)!::write(pipefd[1], report.data(), report.size());
    for (;;) ::pause();
  });
  owner.start();
  ::close(pipefd[1]);
  std::string path;
  char c;
  while (::read(pipefd[0], &c, 1) == 1 && c != '\n') path += c;
  ::close(pipefd[0]);
  REQUIRE_FALSE(path.empty());
  CHECK(std::filesystem::exists(path));
  owner.kill();
  REQUIRE(owner.join(10s));
  CHECK(*owner.exitcode() == -SIGKILL);
  // The server gets SIGTERM from the kernel, drains and removes its socket and directory.
  bool gone = false;
  for (int i = 0; i < 250 && !gone; ++i) {
    gone = !std::filesystem::exists(std::filesystem::path(path).parent_path());
    if (!gone) std::this_thread::sleep_for(20ms);
  }
  CHECK(gone);
}
