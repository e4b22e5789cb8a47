// The pool's dispatcher alone (lib/src/pool/dispatcher.hpp): which worker gets the next task,
// and how the adaptive window, the byte cap and maxtasksperchild bound it. No processes.
#include <doctest/doctest.h>

#include <deque>
#include <memory>
#include <vector>

#include "pool/dispatcher.hpp"

using mpx::detail::Dispatcher;
using mpx::detail::Lane;
using mpx::detail::TaskPtr;
using mpx::detail::TaskRec;

namespace {

TaskPtr task(std::uint64_t seq, std::size_t bytes = 64) {
  auto t = std::make_shared<TaskRec>();
  t->seq = seq;
  t->frame.resize(bytes);
  return t;
}

std::deque<TaskPtr> tasks(std::size_t n, std::size_t bytes = 64) {
  std::deque<TaskPtr> q;
  for (std::size_t i = 0; i < n; ++i) q.push_back(task(i + 1, bytes));
  return q;
}

struct Lanes {
  explicit Lanes(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) owned.push_back(std::make_unique<Lane>());
    for (auto& l : owned) ptrs.push_back(l.get());
  }
  Lane& operator[](std::size_t i) { return *owned[i]; }
  std::vector<std::unique_ptr<Lane>> owned;
  std::vector<Lane*> ptrs;
};

// Runs a dispatch and returns the lanes whose writes it scheduled.
std::vector<std::size_t> dispatch(const Dispatcher& d, std::deque<TaskPtr>& pending, Lanes& lanes) {
  std::vector<std::size_t> scheduled;
  d.dispatch(pending, lanes.ptrs, [&](std::size_t i) { scheduled.push_back(i); });
  return scheduled;
}

void answer_all(Lane& l) {
  while (!l.inflight.empty()) REQUIRE(l.take_answer(l.inflight.front()->seq));
  l.queued.clear();
  l.write_scheduled = false;
}

}  // namespace

TEST_CASE("the least-loaded worker gets the next task, the first of equals first") {
  Dispatcher d(0);
  Lanes lanes(3);
  lanes[0].inflight.push_back(task(100));
  lanes[1].inflight.push_back(task(101));
  lanes[1].inflight.push_back(task(102));
  CHECK(d.pick(lanes.ptrs, 2) == 2);  // empty
  lanes[2].inflight.push_back(task(103));
  CHECK(d.pick(lanes.ptrs, 2) == 0);                 // 1, 2, 1: the first of the two least loaded
  CHECK(d.pick(lanes.ptrs, 1) == Dispatcher::npos);  // nobody below a window of 1

  // Null entries (an index never spawned) are skipped.
  std::vector<Lane*> with_hole{nullptr, lanes.ptrs[1], lanes.ptrs[2]};
  CHECK(d.pick(with_hole, 2) == 2);
}

TEST_CASE("dispatch spreads tasks evenly, fills every window and schedules each write once") {
  Dispatcher d(0);
  REQUIRE(d.window() == Dispatcher::kStartWindow);
  Lanes lanes(3);
  auto pending = tasks(10);
  auto scheduled = dispatch(d, pending, lanes);
  CHECK(scheduled == std::vector<std::size_t>{0, 1, 2});
  CHECK(pending.size() == 10 - 3 * Dispatcher::kStartWindow);
  for (std::size_t i = 0; i < 3; ++i) {
    CHECK(lanes[i].inflight.size() == Dispatcher::kStartWindow);
    CHECK(lanes[i].queued.size() == Dispatcher::kStartWindow);
    CHECK(lanes[i].sent == Dispatcher::kStartWindow);
    CHECK(lanes[i].write_scheduled);
    CHECK(lanes[i].inflight_bytes == Dispatcher::kStartWindow * 64);
  }
  // Round robin in submission order: tasks 1, 4 to lane 0; 2, 5 to lane 1; 3, 6 to lane 2.
  CHECK(lanes[0].inflight[0]->seq == 1);
  CHECK(lanes[1].inflight[0]->seq == 2);
  CHECK(lanes[0].inflight[1]->seq == 4);

  // Room again: the waiting tasks go out, and a lane whose write is still scheduled is not
  // scheduled twice.
  REQUIRE(lanes[1].take_answer(2));
  REQUIRE(lanes[1].take_answer(5));
  CHECK(lanes[1].answered == 2);
  CHECK(lanes[1].inflight_bytes == 0);
  scheduled = dispatch(d, pending, lanes);
  CHECK(scheduled.empty());  // lane 1's write was still scheduled
  CHECK(lanes[1].inflight.size() == 2);
  CHECK(pending.size() == 2);
}

TEST_CASE("an answer that does not match the oldest task in flight is ignored") {
  Lane l;
  l.inflight.push_back(task(7));
  l.inflight_bytes = 64;
  CHECK(!l.take_answer(8));
  CHECK(l.inflight.size() == 1);
  CHECK(l.take_answer(7));
  CHECK(l.answered == 1);
}

TEST_CASE("nothing is dispatched to an unusable worker") {
  Dispatcher d(0);
  Lanes lanes(2);
  lanes[0].usable = false;
  auto pending = tasks(3);
  auto scheduled = dispatch(d, pending, lanes);
  CHECK(scheduled == std::vector<std::size_t>{1});
  CHECK(lanes[0].inflight.empty());
  CHECK(lanes[1].inflight.size() == Dispatcher::kStartWindow);
  lanes[1].usable = false;
  answer_all(lanes[1]);
  dispatch(d, pending, lanes);
  CHECK(lanes[1].inflight.empty());
  CHECK(pending.size() == 1);  // waits for a usable worker
}

TEST_CASE("the window grows for short tasks and drops to 1 for long ones") {
  Dispatcher d(0);
  d.record(10'000);  // 10 us: ~1 ms of work is 100 tasks
  CHECK(d.window() == 100);
  d.record(10'000);
  CHECK(d.window() == 100);
  d.record(100);  // far below: capped
  for (int i = 0; i < 100; ++i) d.record(100);
  CHECK(d.window() == Dispatcher::kMaxWindow);
  for (int i = 0; i < 100; ++i) d.record(400'000);  // 0.4 ms: never below 2
  CHECK(d.window() == 2);
  for (int i = 0; i < 100; ++i) d.record(25'000'000);  // 25 ms: one at a time
  CHECK(d.window() == 1);
  Dispatcher e(0);
  e.record(20'000'000);  // exactly the threshold: long
  CHECK(e.window() == 1);

  // The window bounds dispatch.
  Lanes lanes(1);
  auto pending = tasks(5);
  dispatch(e, pending, lanes);
  CHECK(lanes[0].inflight.size() == 1);
  CHECK(pending.size() == 4);

  e.record(19'000'000);  // the average dips below the threshold: back to the smallest batch
  CHECK(e.window() == 2);
}

TEST_CASE("the byte cap: no more tasks past kMaxInflightBytes, but always at least one") {
  Dispatcher d(0);
  d.record(1000);  // a wide window: only bytes limit
  REQUIRE(d.window() > 100);
  Lanes lanes(1);
  const std::size_t big = Dispatcher::kMaxInflightBytes / 2;
  auto pending = tasks(4, big);
  dispatch(d, pending, lanes);
  CHECK(lanes[0].inflight.size() == 2);  // 2 x half the cap reaches it
  CHECK(lanes[0].inflight_bytes == 2 * big);
  CHECK(pending.size() == 2);

  // A single task larger than the cap still goes to an idle worker.
  Lanes idle(1);
  auto huge = tasks(2, Dispatcher::kMaxInflightBytes * 2);
  dispatch(d, huge, idle);
  CHECK(idle[0].inflight.size() == 1);
  CHECK(huge.size() == 1);
}

TEST_CASE("maxtasksperchild caps what a worker is sent and marks it used up") {
  Dispatcher d(3);
  d.record(1000);
  Lanes lanes(2);
  auto pending = tasks(10);
  dispatch(d, pending, lanes);
  CHECK(lanes[0].sent == 3);
  CHECK(lanes[1].sent == 3);
  CHECK(pending.size() == 4);
  CHECK(!d.used_up(lanes[0]));
  answer_all(lanes[0]);
  CHECK(lanes[0].answered == 3);
  CHECK(d.used_up(lanes[0]));
  dispatch(d, pending, lanes);
  CHECK(lanes[0].inflight.empty());  // it exits by itself; a fresh worker takes its place
  CHECK(pending.size() == 4);

  Dispatcher unlimited(0);
  CHECK(!unlimited.used_up(lanes[0]));
}

TEST_CASE("drop_all hands back every unanswered task in send order and empties the lane") {
  Dispatcher d(0);
  Lanes lanes(1);
  auto pending = tasks(2);
  dispatch(d, pending, lanes);
  std::vector<TaskPtr> out{task(99)};
  lanes[0].drop_all(out);
  REQUIRE(out.size() == 3);
  CHECK(out[1]->seq == 1);
  CHECK(out[2]->seq == 2);
  CHECK(lanes[0].inflight.empty());
  CHECK(lanes[0].queued.empty());
  CHECK(lanes[0].inflight_bytes == 0);
}
