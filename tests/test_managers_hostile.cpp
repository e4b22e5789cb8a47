// Managers, part 5: values a client may send that the server must not take at face value —
// counts that do not fit the wire's u32, negative timeouts other than -1, and reports of a
// task worker's exit from a connection that did not start that worker. Each is checked
// through the library's client (which refuses before sending) and over raw frames (the
// server refuses too, whatever a client sends).
#include <mpx/connection.hpp>
#include <mpx/managers.hpp>
#include <mpx/proto/manager.hpp>

#include <doctest/doctest.h>
#include <raw_manager.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <utility>

using namespace std::chrono_literals;
using mpx::proto::Op;

namespace {

constexpr std::uint64_t kU32Max = std::numeric_limits<std::uint32_t>::max();
constexpr int kValue = static_cast<int>(mpx::proto::ErrorCode::value);
constexpr int kState = static_cast<int>(mpx::proto::ErrorCode::state);
constexpr int kProtocol = static_cast<int>(mpx::proto::ErrorCode::protocol);
constexpr int kWorkerLost = static_cast<int>(mpx::proto::ErrorCode::worker_lost);

using Token = mpx::test::SessionToken;
using mpx::test::recv_bounded;
using mpx::test::Reply;
Token token(std::uint8_t n) { return mpx::test::session_token(n); }
mpx::Connection raw_session(const mpx::Manager& m, const Token& tok) {
  return mpx::test::raw_manager_session(m.address(), m.authkey(), tok);
}
mpx::Bytes request(Op op, std::uint64_t oid, const std::function<void(mpx::proto::Writer&)>& body = {}) {
  return mpx::test::manager_request(op, oid, body);
}
Reply roundtrip(mpx::Connection& c, const mpx::Bytes& req) { return mpx::test::roundtrip(c, req); }
using mpx::test::kReplyBound;
using mpx::test::open_raw;

}  // namespace

TEST_CASE("semaphore counts that do not fit a u32 are refused, never truncated") {
  mpx::Manager m;
  auto s = m.semaphore(1);
  // 2^32 used to arrive as 0: "released", value still 1, and the next two acquires told apart.
  CHECK_THROWS_AS(s.release(kU32Max + 1), mpx::ValueError);
  CHECK_THROWS_AS(s.release(0), mpx::ValueError);
  CHECK(s.get_value() == 1);
  CHECK(s.acquire(false));
  CHECK_FALSE(s.acquire(false));
  s.release();
  CHECK(s.get_value() == 1);

  CHECK_THROWS_AS(m.semaphore(kU32Max + 1), mpx::ValueError);
  CHECK_THROWS_AS(m.bounded_semaphore(kU32Max + 1), mpx::ValueError);
  CHECK_THROWS_AS(m.barrier(kU32Max + 1), mpx::ValueError);
  CHECK_THROWS_AS(m.barrier(0), mpx::ValueError);
  auto cond = m.condition();
  cond.acquire();
  CHECK_THROWS_AS(cond.notify(kU32Max + 1), mpx::ValueError);
  cond.notify(kU32Max);  // the largest that fits; no waiter, nothing happens
  cond.release();

  // The total the server reports (a u32) can never be exceeded by releases.
  auto top = m.semaphore(kU32Max - 1);
  top.release();
  CHECK(top.get_value() == kU32Max);
  CHECK_THROWS_WITH_AS(top.release(), doctest::Contains("4294967295"), mpx::ValueError);
  CHECK(top.get_value() == kU32Max);

  // Nor by a holder's slot coming back when its connection closes: a release that would leave
  // no room for it is refused now.
  auto full = m.semaphore(kU32Max);
  auto holder = raw_session(m, token(3));
  auto took = roundtrip(holder, request(Op::acquire, full.core().oid(), [](auto& w) { w.i64(0); }));
  REQUIRE(took.status == 0);
  CHECK(mpx::proto::Reader(took.body).boolean());
  CHECK(full.get_value() == kU32Max - 1);
  CHECK_THROWS_AS(full.release(), mpx::ValueError);
  CHECK(full.get_value() == kU32Max - 1);
  holder.close();  // its slot comes back
  for (int i = 0; i < 500 && full.get_value() != kU32Max; ++i) std::this_thread::sleep_for(10ms);
  CHECK(full.get_value() == kU32Max);
}

TEST_CASE("the server refuses counts a hostile client sends, and keeps the object as it was") {
  mpx::Manager m;
  auto c = raw_session(m, token(1));
  auto sem = open_raw(c, mpx::proto::Kind::semaphore, "", [](auto& w) { w.u32(1); });
  // A u64 where the u32 goes: malformed (trailing bytes), not read as its low half.
  CHECK(roundtrip(c, request(Op::release, sem, [](auto& w) { w.u64(kU32Max + 1); })).sc() ==
        std::pair{1, kProtocol});
  CHECK(roundtrip(c, request(Op::release, sem, [](auto& w) { w.u32(0); })).sc() == std::pair{1, kValue});
  auto value = roundtrip(c, request(Op::sem_value, sem));
  REQUIRE(value.status == 0);
  CHECK(mpx::proto::Reader(value.body).u32() == 1);

  auto top = open_raw(c, mpx::proto::Kind::semaphore, "", [](auto& w) { w.u32(kU32Max - 5); });
  CHECK(roundtrip(c, request(Op::release, top, [](auto& w) { w.u32(6); })).sc() == std::pair{1, kValue});
  CHECK(roundtrip(c, request(Op::release, top, [](auto& w) { w.u32(5); })).sc() == std::pair{0, 0});
  CHECK(roundtrip(c, request(Op::release, top, [](auto& w) { w.u32(1); })).sc() == std::pair{1, kValue});
  value = roundtrip(c, request(Op::sem_value, top));
  CHECK(mpx::proto::Reader(value.body).u32() == kU32Max);

  // A barrier of 0 parties cannot exist; one of 2^32-1 can, and counts its waiters exactly.
  CHECK(roundtrip(c, request(Op::open, 0, [](auto& w) {
                    w.u8(static_cast<std::uint8_t>(mpx::proto::Kind::barrier));
                    w.str("");
                    w.str("");
                    w.u32(0);
                  })).sc() == std::pair{1, kValue});
  auto bar = open_raw(c, mpx::proto::Kind::barrier, "", [](auto& w) { w.u32(kU32Max); });
  auto parties = roundtrip(c, request(Op::barrier_parties, bar));
  CHECK(mpx::proto::Reader(parties.body).u32() == kU32Max);
  CHECK(roundtrip(c, request(Op::ping, 0)).sc() == std::pair{0, 0});
}

TEST_CASE("timeouts: -1 is forever, any other negative is a ValueError at once") {
  mpx::Manager m;
  auto q = m.queue<int>();
  auto jq = m.joinable_queue<int>();
  auto full = m.queue<int>(1);
  full.put(1);
  auto lock = m.lock();
  auto ev = m.event();
  auto bar = m.barrier(2);
  auto cond = m.condition();
  auto tq = m.task_queue("hostile-timeouts");
  jq.put(1);  // unfinished: a join would wait
  REQUIRE(lock.acquire(false));  // held by this thread's connection: the raw one would wait

  auto c = raw_session(m, token(2));
  auto tq_oid = tq.core().oid();
  REQUIRE(roundtrip(c, request(Op::task_serve, tq_oid, [](auto& w) { w.i32(424242); })).status == 0);
  REQUIRE(roundtrip(c, request(Op::acquire, cond.core().oid(), [](auto& w) { w.i64(0); })).status == 0);

  for (std::int64_t bad : {std::int64_t{-2}, std::numeric_limits<std::int64_t>::min()}) {
    CAPTURE(bad);
    auto t = [bad](mpx::proto::Writer& w) { w.i64(bad); };
    // Each of these would park on the server; each now answers at once.
    CHECK(roundtrip(c, request(Op::queue_get, q.core().oid(), t)).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::queue_get_many, q.core().oid(), [bad](auto& w) {
                      w.u64(4);
                      w.i64(bad);
                    })).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::queue_put, full.core().oid(), [bad](auto& w) {
                      mpx::detail::put_value(w, 2);
                      w.i64(bad);
                    })).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::queue_join, jq.core().oid(), t)).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::acquire, lock.core().oid(), t)).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::event_wait, ev.core().oid(), t)).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::barrier_wait, bar.core().oid(), t)).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::cond_wait, cond.core().oid(), t)).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::task_next, tq_oid, t)).sc() == std::pair{1, kValue});
    CHECK(roundtrip(c, request(Op::task_wait, 0, [bad](auto& w) {
                      w.u64(1);
                      w.i64(bad);
                    })).sc() == std::pair{1, kValue});
  }
  // Refused before anything changed: the barrier is whole, the condition's lock still held by
  // the raw connection (a refused wait did not release it), the queues as they were.
  CHECK_FALSE(bar.broken());
  CHECK(bar.n_waiting() == 0);
  CHECK_FALSE(cond.acquire(true, 50ms));
  CHECK(full.qsize() == 1);
  CHECK(q.empty());
  // -1 is still forever: a get parked with it is answered by a later put.
  c.send_bytes(request(Op::queue_get, q.core().oid(), [](auto& w) { w.i64(-1); }));
  CHECK_FALSE(c.poll(100ms));
  q.put(7);
  auto reply = recv_bounded(c);
  mpx::proto::Reader got(reply);
  CHECK(got.u8() == 0);
  CHECK(mpx::decode<int>(got.blob()) == 7);
  lock.release();
}

TEST_CASE("timeouts: a negative duration from C++ does not wait (a time already past)") {
  mpx::Manager m;
  auto q = m.queue<int>();
  auto lock = m.lock();
  REQUIRE(lock.acquire());
  auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(q.get(-5s), mpx::Empty);
  CHECK_THROWS_AS(q.get(std::chrono::nanoseconds::min()), mpx::Empty);
  bool acquired = true, until = true;
  std::thread other([lock, &acquired, &until]() mutable {
    acquired = lock.acquire(true, -1ns);  // not "forever", though -1 is forever on the wire
    until = lock.try_lock_until(std::chrono::steady_clock::now() - 1h);
  });
  other.join();
  CHECK_FALSE(acquired);
  CHECK_FALSE(until);
  CHECK(std::chrono::steady_clock::now() - t0 < 2s);
  lock.release();
}

TEST_CASE("task queues: only the worker's own session may report its exit") {
  mpx::Manager m;
  const auto worker_session = token(10), hostile_session = token(11), client_session = token(12);
  auto client = raw_session(m, client_session);
  auto tq = open_raw(client, mpx::proto::Kind::task_queue, "hostile-tasks");
  auto submit = [&](const std::string& body) {
    auto r = roundtrip(client, request(Op::task_submit, tq, [&](auto& w) {
                         w.str("some_task");
                         w.str(body);
                       }));
    REQUIRE(r.status == 0);
    return mpx::proto::Reader(r.body).u64();
  };
  // A worker connection: serves as `pid`, then takes one task (the next submitted).
  auto serve = [&](const Token& session, std::int32_t pid) {
    auto w = raw_session(m, session);
    REQUIRE(roundtrip(w, request(Op::task_serve, tq, [pid](auto& wr) { wr.i32(pid); })).status == 0);
    w.send_bytes(request(Op::task_next, tq, [](auto& wr) { wr.i64(-1); }));
    return w;
  };
  auto take = [&](mpx::Connection& w) {
    auto bytes = recv_bounded(w);
    mpx::proto::Reader r(bytes);
    REQUIRE(r.u8() == 0);
    return r.u64();
  };
  auto report = [&](mpx::Connection& from, std::int32_t pid, std::int32_t code) {
    return roundtrip(from, request(Op::task_worker_exit, tq, [&](auto& w) {
                       w.i32(pid);
                       w.i32(code);
                     }))
        .sc();
  };
  struct Outcome {
    std::uint64_t id = 0;
    int origin = -1;
    std::string result;
    int code = 0;
    int exitcode = 0;
  };
  auto outcome = [&]() {
    auto r = roundtrip(client, request(Op::task_wait, 0, [](auto& w) {
                         w.u64(1);
                         w.i64(std::chrono::nanoseconds(kReplyBound).count());
                       }));
    REQUIRE(r.status == 0);
    mpx::proto::Reader rd(r.body);
    REQUIRE(rd.u64() == 1);
    Outcome o;
    o.id = rd.u64();
    o.origin = rd.u8();
    if (o.origin == 0) {
      auto b = rd.blob();
      o.result.assign(reinterpret_cast<const char*>(b.data()), b.size());
    } else {
      auto e = mpx::proto::read_error(rd);
      o.code = static_cast<int>(e.code);
      o.exitcode = e.exitcode;
    }
    return o;
  };
  auto hostile = raw_session(m, hostile_session);
  auto supervisor = raw_session(m, worker_session);

  SUBCASE("a report from another session is refused and the running task carries on") {
    auto w = serve(worker_session, 4242);
    auto id = submit("job");
    CHECK(take(w) == id);
    CHECK(report(hostile, 4242, 9) == std::pair{1, kState});
    // Even a hostile worker that claims the same pid only speaks for itself.
    auto fake = raw_session(m, hostile_session);
    REQUIRE(roundtrip(fake, request(Op::task_serve, tq, [](auto& wr) { wr.i32(4242); })).status == 0);
    CHECK(report(hostile, 4242, 9) == std::pair{0, 0});
    // The real worker finishes its task; its result is what the client gets.
    CHECK(roundtrip(w, request(Op::task_result, tq, [id](auto& wr) {
                      wr.u64(id);
                      wr.str("done");
                    })).sc() == std::pair{0, 0});
    auto o = outcome();
    CHECK(o.id == id);
    CHECK(o.origin == 0);
    CHECK(o.result == "done");
  }
  SUBCASE("the worker's session reports its exit, before or after its connection closes") {
    auto w1 = serve(worker_session, 5151);
    auto id1 = submit("one");
    CHECK(take(w1) == id1);
    w1.close();  // the worker died while running the task
    CHECK(report(hostile, 5151, 9) == std::pair{1, kState});
    CHECK(report(supervisor, 5151, 7) == std::pair{0, 0});
    auto o1 = outcome();
    CHECK(o1.id == id1);
    CHECK(o1.origin == 1);
    CHECK(o1.code == kWorkerLost);
    CHECK(o1.exitcode == 7);

    auto w2 = serve(worker_session, 5252);
    auto id2 = submit("two");
    CHECK(take(w2) == id2);
    CHECK(report(hostile, 5252, 9) == std::pair{1, kState});
    CHECK(report(supervisor, 5252, 5) == std::pair{0, 0});  // before the server sees the close
    w2.close();
    auto o2 = outcome();
    CHECK(o2.id == id2);
    CHECK(o2.code == kWorkerLost);
    CHECK(o2.exitcode == 5);

    // A pid no worker of the queue has: nothing to do, nothing refused.
    CHECK(report(hostile, 999999, 1) == std::pair{0, 0});
  }
}
