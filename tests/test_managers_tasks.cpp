// Managers, part 4: named task queues — register_task, serve_tasks workers, submit from
// other processes, errors, workers that die, and stopping.
#include <mpx/futures.hpp>
#include <mpx/managers.hpp>
#include <mpx/process.hpp>

#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>
#include <boost/asio/use_future.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

int square(int x) { return x * x; }

int g_mark = 0;  // set by serve_tasks' process before it starts workers; 0 in a fresh image

void register_tasks() {
  mpx::register_task("square", square);
  mpx::register_task("concat", [](std::string a, std::vector<std::string> rest) {
    for (auto& s : rest) a += s;
    return a;
  });
  mpx::register_task("boom", [](int) -> int { throw std::invalid_argument("no good"); });
  mpx::register_task("exit", [](int code) -> int { ::_exit(code); });
  mpx::register_task("kill", [](int) -> int {
    ::raise(SIGKILL);
    return 0;
  });
  mpx::register_task("pid", []() { return static_cast<int>(::getpid()); });
  mpx::register_task("nothing", [](int) {});
  mpx::register_task("ppid", []() { return static_cast<int>(::getppid()); });
  mpx::register_task("mark", []() { return g_mark; });
}

// serve_tasks in a process of its own (a daemon child: terminated if a test fails early).
struct Workers {
  mpx::Process p;
  Workers(const mpx::Address& a, const std::string& key, unsigned n,
          mpx::StartMethod method = mpx::StartMethod::fork)
      : p(mpx::Process::Options{"", true}, [a, key, n, method] {
          g_mark = 5;
          mpx::serve_tasks(a, key, "work", n, mpx::get_context(method));
        }) {
    p.start();
  }
  int stop() {
    p.terminate();
    REQUIRE(p.join(60s));
    return *p.exitcode();
  }
};

}  // namespace

TEST_CASE("task queue: submit by name, results, errors, callbacks") {
  register_tasks();
  mpx::Manager m;
  auto tq = m.task_queue("work");
  auto early = tq.submit<int>("square", 12);  // before any worker: it waits, it is not dropped
  CHECK_FALSE(early.wait(50ms));
  Workers w(m.address(), m.authkey(), 2);
  CHECK(early.get(60s) == 144);

  std::vector<mpx::AsyncResult<int>> rs;
  for (int i = 0; i < 100; ++i) rs.push_back(tq.submit<int>("square", i));
  for (int i = 0; i < 100; ++i) CHECK(rs[static_cast<std::size_t>(i)].get(60s) == i * i);
  CHECK(tq.submit<std::string>("concat", std::string("a"), std::vector<std::string>{"b", "c"}).get(60s) ==
        "abc");
  tq.submit<void>("nothing", 1).get(60s);

  std::atomic<int> seen{0};
  auto cb = tq.submit<int>("square", 3);
  cb.then([&](const int& v) { seen = v; });
  cb.wait(60s);
  CHECK(seen == 9);

  try {
    tq.submit<int>("boom", 1).get(60s);
    FAIL("no exception");
  } catch (const mpx::RemoteError& e) {
    CHECK(e.type_name() == "std::invalid_argument");
    CHECK(e.message() == "no good");
  }
  CHECK_THROWS_AS(tq.submit<int>("no-such-task", 1).get(60s), mpx::ValueError);
  CHECK_THROWS_AS(tq.submit<long>("square", 1).get(60s), mpx::TypeMismatch);
  std::atomic<bool> failed{false};
  tq.submit<int>("boom", 2).on_error([&](std::exception_ptr) { failed = true; }).wait(60s);
  CHECK(failed);

  // The futures helpers take task queue results as they take the pool's.
  std::vector<mpx::AsyncResult<int>> batch{tq.submit<int>("square", 5), tq.submit<int>("boom", 0),
                                           tq.submit<int>("square", 6)};
  auto r = mpx::wait(batch, mpx::ReturnWhen::all_completed, 60s);
  CHECK(r.done == std::vector<std::size_t>{0, 1, 2});
  int sum = 0, errors = 0;
  for (const auto& done : mpx::as_completed(batch, 60s)) {
    if (done.successful())
      sum += done.get();
    else
      ++errors;
  }
  CHECK(sum == 61);
  CHECK(errors == 1);
  std::future<int> f = tq.submit<int>("square", 8).async_get(boost::asio::use_future);
  REQUIRE(f.wait_for(60s) == std::future_status::ready);
  CHECK(f.get() == 64);

  CHECK(w.stop() == 0);
}

TEST_CASE("serve_tasks: a process count out of range is a ValueError before anything starts") {
  const mpx::Address nowhere = mpx::Address::parse("unix:/nonexistent/mpx-test.sock");
  CHECK_THROWS_WITH_AS(mpx::serve_tasks(nowhere, "key", "work", -2), doctest::Contains("not -2"),
                       mpx::ValueError);
  CHECK_THROWS_AS(mpx::serve_tasks(nowhere, "key", "work", std::uint64_t{1} << 40), mpx::ValueError);
}

TEST_CASE("task queue: a worker that dies fails its task with WorkerLost and is replaced") {
  register_tasks();
  mpx::Manager m;
  auto tq = m.task_queue("work");
  Workers w(m.address(), m.authkey(), 1);
  try {
    tq.submit<int>("exit", 3).get(60s);
    FAIL("no exception");
  } catch (const mpx::WorkerLost& e) {
    CHECK(e.exitcode() == 3);
  }
  try {
    tq.submit<int>("kill", 0).get(60s);
    FAIL("no exception");
  } catch (const mpx::WorkerLost& e) {
    CHECK(e.exitcode() == -SIGKILL);
  }
  CHECK(tq.submit<int>("square", 5).get(60s) == 25);  // a new worker took over
  int pid = tq.submit<int>("pid").get(60s);
  CHECK(w.stop() == 0);
  CHECK(::kill(pid, 0) == -1);  // the workers are gone with their supervisor
}

TEST_CASE("task queue: clients in other processes submit by name") {
  register_tasks();
  mpx::Manager m;
  Workers w(m.address(), m.authkey(), 2);
  auto a = m.address();
  auto key = m.authkey();
  std::vector<mpx::Process> clients;
  for (int c = 0; c < 3; ++c)
    clients.emplace_back([a, key, c] {
      auto mm = mpx::Manager::connect(a, key);
      auto tq = mm.task_queue("work");
      std::vector<mpx::AsyncResult<int>> rs;
      for (int i = 0; i < 20; ++i) rs.push_back(tq.submit<int>("square", c * 100 + i));
      for (int i = 0; i < 20; ++i)
        if (rs[static_cast<std::size_t>(i)].get(60s) != (c * 100 + i) * (c * 100 + i))
          throw std::runtime_error("wrong result");
    });
  for (auto& c : clients) c.start();
  for (auto& c : clients) {
    REQUIRE(c.join(120s));
    CHECK(c.exitcode() == 0);
  }
  CHECK(w.stop() == 0);
}

TEST_CASE("serve_tasks returns when the server stops") {
  register_tasks();
  auto m = std::make_unique<mpx::Manager>();
  Workers w(m->address(), m->authkey(), 2);
  auto tq = m->task_queue("work");
  CHECK(tq.submit<int>("square", 4).get(60s) == 16);
  m->shutdown();
  REQUIRE(w.p.join(60s));
  CHECK(w.p.exitcode() == 0);
}

TEST_CASE("serve_tasks under forkserver and spawn: workers register the starter's tasks themselves") {
  register_tasks();
  int base = 10;  // a capturing lambda: only a fork (or the fork server's snapshot) has it
  mpx::register_task("add_base", [base](int x) { return x + base; });
  for (auto method : {mpx::StartMethod::forkserver, mpx::StartMethod::spawn}) {
    CAPTURE(mpx::to_string(method));
    mpx::Manager m;
    auto tq = m.task_queue("work");
    Workers w(m.address(), m.authkey(), 2, method);
    CHECK(tq.submit<int>("square", 12).get(60s) == 144);  // a function pointer
    CHECK(tq.submit<std::string>("concat", std::string("a"), std::vector<std::string>{"b", "c"}).get(60s) ==
          "abc");  // a captureless lambda
    CHECK_THROWS_AS(tq.submit<int>("boom", 1).get(60s), mpx::RemoteError);
    // Not forks of serve_tasks' process: a forkserver worker is the server's child; a spawn
    // worker is a fresh image that never saw the mark its starter set.
    if (method == mpx::StartMethod::forkserver)
      CHECK(tq.submit<int>("ppid").get(60s) != w.p.pid());
    else
      CHECK(tq.submit<int>("mark").get(60s) == 0);
    if (method == mpx::StartMethod::spawn)
      CHECK_THROWS_AS(tq.submit<int>("add_base", 1).get(60s), mpx::ValueError);
    // A worker that dies fails its task and is replaced by the same method.
    CHECK_THROWS_AS(tq.submit<int>("kill", 0).get(60s), mpx::WorkerLost);
    CHECK(tq.submit<int>("square", 7).get(60s) == 49);
    CHECK(w.stop() == 0);
  }
}
