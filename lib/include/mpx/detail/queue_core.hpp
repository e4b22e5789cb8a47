// The untyped engine under mpx's queues: length-prefixed records in a chain of fixed-size
// chunks carved from one anonymous shared mapping, with its own robust locking and futex waiting.
//
// Producers serialise among themselves on a put lock and consumers on a get lock; the two
// sides meet only through published counters, so one producer and one consumer never contend
// for a lock, and a put or get costs no system call unless somebody sleeps. The locks are
// robust process-shared mutexes and each side commits with a single store of its published
// item count: a process killed inside put() or get() leaves the queue as if the call either
// completed or never started, and the next user of that lock puts its bookkeeping right.
#pragma once

#include <mpx/timeout.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>

namespace mpx {

// Default byte budget of a queue: address space reserved up front and committed only as
// items occupy it, so an idle or lightly used queue costs a few pages.
inline constexpr std::size_t default_queue_max_bytes = std::size_t{1} << 30;  // 1 GiB

struct QueueOptions {
  std::size_t maxsize = 0;  // item limit; 0 = none (put() never waits for a consumer)
  // Byte budget (at least 4096). An item occupies its encoded size + 8, rounded up to 8.
  // put() on an unbounded queue throws Full once the budget cannot take the item.
  std::size_t max_bytes = default_queue_max_bytes;
};

namespace detail {

struct QueueShared;  // lives in shared memory; defined in queues.cpp

class QueueCore {
 public:
  // Receives an item's bytes in one or more consecutive pieces (`total` is the item's size).
  // May throw: the item then stays in the queue.
  using Sink = void (*)(void* ctx, const std::byte* piece, std::size_t len, std::size_t total);

  explicit QueueCore(const QueueOptions& options);

  // Throws Full when there is no room by the deadline (an unbounded queue never waits for
  // room: it throws as soon as the byte budget cannot take the item).
  void put(const std::byte* item, std::size_t n, bool block, const Timeout& timeout) const;
  // Throws Empty when there is no item by the deadline.
  void get(Sink sink, void* ctx, bool block, const Timeout& timeout) const;

  std::size_t qsize() const;
  bool empty() const;
  bool full() const;
  void task_done() const;
  bool join(const Timeout& timeout) const;

  std::size_t maxsize() const;
  std::size_t max_bytes() const;       // the budget, rounded down to whole chunks
  std::size_t max_item_bytes() const;  // largest encoded item that always fits an empty queue

  // For handing the queue to a forkserver child (<mpx/detail/process_handle.hpp>): the address
  // of its shared state, and a core on state the child was given.
  const void* state() const noexcept { return s_.get(); }
  static QueueCore adopt(void* state) {
    return QueueCore(std::shared_ptr<QueueShared>(static_cast<QueueShared*>(state), [](QueueShared*) {}));
  }

 private:
  explicit QueueCore(std::shared_ptr<QueueShared> s) : s_(std::move(s)) {}
  std::shared_ptr<QueueShared> s_;
};

}  // namespace detail
}  // namespace mpx
