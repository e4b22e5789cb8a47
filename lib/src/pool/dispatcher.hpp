// Which worker gets the next task: the per-worker task accounting (Lane) and the adaptive window
// that bounds it (Dispatcher). No sockets and no locks of its own, so it is testable alone.
#pragma once

#include <mpx/detail/pool.hpp>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <memory>
#include <span>
#include <vector>

namespace mpx::detail {

struct TaskRec {
  std::uint64_t seq = 0;
  Bytes frame;  // kTaskPrefix area (frame header at `off`), then type, seq, body
  std::size_t off = 0;
  std::shared_ptr<TaskSink> sink;
  std::uint64_t tag = 0;
  std::span<const std::byte> wire() const { return {frame.data() + off, frame.size() - off}; }

  // Fills in the frame header and message type of a submitted frame (the seq comes later).
  static std::shared_ptr<TaskRec> make(TaskSubmission& t);
};
using TaskPtr = std::shared_ptr<TaskRec>;

// Settles every task in `recs` with `e` and empties it. Call with no pool lock held.
void fail_all(std::vector<TaskPtr>& recs, const std::exception_ptr& e);

// One worker's tasks as the dispatcher sees them. Guarded by the pool mutex.
struct Lane {
  std::deque<TaskPtr> inflight;  // sent or about to be, unanswered, in send order
  std::vector<TaskPtr> queued;   // dispatched, not yet handed to a write (a suffix of inflight)
  std::size_t inflight_bytes = 0;
  std::uint64_t sent = 0, answered = 0;
  bool usable = true;            // may be given tasks
  bool write_scheduled = false;  // someone will call start_write for `queued`

  // The oldest task, if `seq` answers it (else it was failed or requeued meanwhile: null).
  TaskPtr take_answer(std::uint64_t seq);
  // Moves every unanswered task to `out` (in send order) and forgets the queue.
  void drop_all(std::vector<TaskPtr>& out);
};

class Dispatcher {
 public:
  static constexpr std::size_t kMaxInflightBytes = std::size_t{8} << 20;  // per worker, beyond its first task
  static constexpr double kTargetQueueNs = 1e6;                           // measured work queued per worker
  static constexpr double kLongTaskNs = 20e6;                             // from here on: one task at a time
  static constexpr unsigned kMaxWindow = 1024;
  static constexpr unsigned kStartWindow = 2;
  static constexpr std::size_t npos = std::numeric_limits<std::size_t>::max();

  explicit Dispatcher(unsigned maxtasksperchild) noexcept : maxtasksperchild_(maxtasksperchild) {}

  // How many tasks a worker may have unanswered. Read without the pool mutex by lazy feeding.
  unsigned window() const noexcept { return window_.load(std::memory_order_relaxed); }
  // Feeds a task's measured run time into the window (about kTargetQueueNs of work per worker).
  void record(std::uint64_t ns) noexcept;

  bool has_room(const Lane& l, unsigned window) const noexcept {
    if (!l.usable || l.inflight.size() >= window) return false;
    if (maxtasksperchild_ && l.sent >= maxtasksperchild_) return false;
    return l.inflight.empty() || l.inflight_bytes < kMaxInflightBytes;
  }
  // The worker has answered all it may (maxtasksperchild) and exits by itself.
  bool used_up(const Lane& l) const noexcept { return maxtasksperchild_ && l.answered >= maxtasksperchild_; }

  // The least-loaded lane with room (the first of equals), or npos. `lanes`: a range of
  // pointers to Lane (or to types derived from it); null entries are skipped.
  template <class Lanes>
  std::size_t pick(const Lanes& lanes, unsigned window) const {
    std::size_t best = npos, best_load = 0, i = 0;
    for (const auto& p : lanes) {
      const Lane* l = p ? &static_cast<const Lane&>(*p) : nullptr;
      if (l && has_room(*l, window) && (best == npos || l->inflight.size() < best_load)) {
        best = i;
        best_load = l->inflight.size();
      }
      ++i;
    }
    return best;
  }

  // Hands tasks from the front of `pending` to lanes with room until none has any; calls
  // `schedule_write(i)` for each lane i that got tasks and had no write scheduled yet.
  template <class Lanes, class F>
  void dispatch(std::deque<TaskPtr>& pending, const Lanes& lanes, F&& schedule_write) const {
    unsigned w = window();
    while (!pending.empty()) {
      std::size_t i = pick(lanes, w);
      if (i == npos) break;
      Lane& l = static_cast<Lane&>(*lanes[i]);
      TaskPtr rec = std::move(pending.front());
      pending.pop_front();
      l.inflight_bytes += rec->frame.size();
      l.queued.push_back(rec);
      l.inflight.push_back(std::move(rec));
      ++l.sent;
      if (!l.write_scheduled) {
        l.write_scheduled = true;
        schedule_write(i);
      }
    }
  }

 private:
  const unsigned maxtasksperchild_;
  double avg_ns_ = 0;  // under the pool mutex (record's callers hold it)
  bool have_avg_ = false;
  std::atomic<unsigned> window_{kStartWindow};
};

}  // namespace mpx::detail
