// Process-shared FIFO queues: Queue<T>, JoinableQueue<T>, SimpleQueue<T>.
//
//   mpx::JoinableQueue<int> tasks;                 // create before forking
//   mpx::Process worker([tasks]() mutable { for (;;) { int n = tasks.get(); ...; tasks.task_done(); } });
//   tasks.put(42);  tasks.join();
//
// Semantics follow Python's multiprocessing queues, minus their traps:
//  - put() encodes the item on the caller's thread before touching the queue, so an encoding
//    error is thrown by that put(), and the item is in the queue when put() returns. There is
//    no feeder thread: a process that put items can always be joined, drained or not.
//  - An unbounded queue's put() never waits for a consumer. Its storage is a byte budget
//    reserved up front (QueueOptions::max_bytes, default 1 GiB of address space committed only
//    as items occupy it); put() throws Full when the budget cannot take the item, and an item
//    may use at most half the budget (max_item_bytes()). A bounded queue (maxsize > 0) waits
//    for room in both items and bytes.
//  - Items are never lost or duplicated with any number of producers and consumers, whatever
//    their size. A process killed inside put() leaves its item either wholly in the queue or
//    absent; one killed inside get() before it returned leaves the item for the next get().
//  - Locks are only held to copy bytes in or out; `block = false` means "do not wait for
//    items or room", not "do not wait for another process's copy to finish".
//  - Arithmetic and enum items, std::array / std::complex / std::pair / std::tuple of them,
//    and std::vector / std::basic_string of arithmetic or enum values are copied straight
//    between the caller's memory and the queue; everything else goes through mpx::encode /
//    mpx::decode, so user serialization code runs.
//  - close() stops put() through this handle (StateError after); get() still works, so a
//    consumer can drain what is left. Copies of a handle share the queue, not the closed flag.
//  - The shared memory is an anonymous mapping: the kernel frees it when the last process
//    holding a handle exits, however it exits. No file descriptors are used.
#pragma once

#include <mpx/detail/process_handle.hpp>
#include <mpx/detail/queue_core.hpp>
#include <mpx/errors.hpp>
#include <mpx/serialize.hpp>
#include <mpx/timeout.hpp>

#include <array>
#include <complex>
#include <cstddef>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx {

namespace detail {

// Fixed-size items with no serialization code of their own: arithmetic and enum values, and
// std::array, std::complex, std::pair, std::tuple of them. Their members' bytes, in order, are
// their format; no encoder runs and nothing is allocated. (A user type with serialize()/save()
// always goes through mpx::encode, so its code runs.)
template <class T>
struct QueueFixed {
  static constexpr bool value = false;
  static constexpr bool bitwise = false;
};

template <class T>
struct QueueFixedMemcpy {  // the object representation is the format
  static constexpr bool value = true;
  static constexpr bool bitwise = true;
  static constexpr std::size_t size = sizeof(T);
  static void store(const T& v, std::byte* p) { std::memcpy(p, &v, sizeof(T)); }
  static void load(T& v, const std::byte* p) { std::memcpy(&v, p, sizeof(T)); }
};

template <class T>
requires(std::is_arithmetic_v<T> || std::is_enum_v<T>) struct QueueFixed<T> : QueueFixedMemcpy<T> {
};
template <class E, std::size_t N>
requires(QueueFixed<E>::bitwise) struct QueueFixed<std::array<E, N>> : QueueFixedMemcpy<std::array<E, N>> {
};
template <class E>
requires(QueueFixed<E>::bitwise) struct QueueFixed<std::complex<E>> : QueueFixedMemcpy<std::complex<E>> {
};

template <class... Ts>
struct QueueFixedMembers {  // members one after another
  static constexpr bool value = true;
  static constexpr bool bitwise = false;
  static constexpr std::size_t size = (QueueFixed<Ts>::size + ... + 0);
  template <class Tuple>
  static void store(const Tuple& v, std::byte* p) {
    std::apply([&](const Ts&... m) { ((QueueFixed<Ts>::store(m, p), p += QueueFixed<Ts>::size), ...); }, v);
  }
  template <class Tuple>
  static void load(Tuple& v, const std::byte* p) {
    std::apply([&](Ts&... m) { ((QueueFixed<Ts>::load(m, p), p += QueueFixed<Ts>::size), ...); }, v);
  }
};
template <class A, class B>
requires(QueueFixed<A>::value&& QueueFixed<B>::value) struct QueueFixed<std::pair<A, B>>
    : QueueFixedMembers<A, B> {
};
template <class... Ts>
requires((QueueFixed<Ts>::value && ...)) struct QueueFixed<std::tuple<Ts...>> : QueueFixedMembers<Ts...> {
};

// Contiguous containers of bitwise values: the queue copies their elements' bytes. Pieces handed
// to a Sink are multiples of 8 bytes except the last, so elements of 1, 2, 4 or 8 bytes never
// straddle two pieces and can be appended without zero-filling the container first.
template <class T>
struct QueueContiguous : std::false_type {};
template <class E>
struct QueueContiguous<std::vector<E>>
    : std::bool_constant<QueueFixed<E>::bitwise && !std::is_same_v<E, bool>> {
  using element = E;
};
template <class C, class Traits>
struct QueueContiguous<std::basic_string<C, Traits>> : std::bool_constant<QueueFixed<C>::bitwise> {
  using element = C;
};

template <class T>
struct QueueSinkFixed {
  std::byte buf[QueueFixed<T>::size];
  std::size_t filled = 0;

  static void sink(void* ctx, const std::byte* piece, std::size_t len, std::size_t total) {
    auto& self = *static_cast<QueueSinkFixed*>(ctx);
    if (total != sizeof self.buf) throw ProtocolError("mpx queue: item of the wrong size");
    std::memcpy(self.buf + self.filled, piece, len);
    self.filled += len;
  }
};

template <class T>
struct QueueSinkContiguous {
  T& out;
  std::size_t filled = 0;

  static void sink(void* ctx, const std::byte* piece, std::size_t len, std::size_t total) {
    auto& self = *static_cast<QueueSinkContiguous*>(ctx);
    using E = typename QueueContiguous<T>::element;
    if (total % sizeof(E) != 0) throw ProtocolError("mpx queue: item of the wrong size");
    if (self.filled == 0) self.out.reserve(total / sizeof(E));
    if constexpr (8 % sizeof(E) == 0 && alignof(E) <= 8) {
      // The bytes were memcpy'd from E objects (implicit-lifetime) to an 8-aligned place.
      const E* first = reinterpret_cast<const E*>(piece);
      self.out.insert(self.out.end(), first, first + len / sizeof(E));
    } else {
      if (self.filled == 0) self.out.resize(total / sizeof(E));
      std::memcpy(reinterpret_cast<std::byte*>(self.out.data()) + self.filled, piece, len);
    }
    self.filled += len;
  }
};

inline void queue_sink_bytes(void* ctx, const std::byte* piece, std::size_t len, std::size_t total) {
  auto& out = *static_cast<Bytes*>(ctx);
  if (out.empty()) out.reserve(total);
  out.insert(out.end(), piece, piece + len);
}

}  // namespace detail

template <class T>
class Queue {
  static_assert(!std::is_reference_v<T> && !std::is_const_v<T>,
                "mpx::Queue<T>: T must be a plain value type");
  static constexpr void check_transferable() { detail::require_transferable<T>(); }

 public:
  // maxsize 0 = no item limit: put() never waits for a consumer.
  explicit Queue(std::size_t maxsize = 0) : Queue(QueueOptions{.maxsize = maxsize}) {}
  explicit Queue(const QueueOptions& options) : core_(options) { check_transferable(); }
  Queue(const Queue&) = default;  // copies share the queue (moves copy too: no empty handles)
  Queue& operator=(const Queue&) = default;
  ~Queue() = default;

  // Throws Full if there is no room by the timeout (at once with block = false).
  void put(const T& item, bool block = true, Timeout timeout = forever) {
    if (closed_) throw StateError("mpx queue: put() after close()");
    if constexpr (detail::QueueFixed<T>::value) {
      std::byte buf[detail::QueueFixed<T>::size];
      detail::QueueFixed<T>::store(item, buf);
      core_.put(buf, sizeof buf, block, timeout);
    } else if constexpr (detail::QueueContiguous<T>::value) {
      using E = typename detail::QueueContiguous<T>::element;
      core_.put(reinterpret_cast<const std::byte*>(item.data()), item.size() * sizeof(E), block, timeout);
    } else {
      Bytes bytes = encode(item);  // before any lock: encoding errors surface here
      core_.put(bytes.data(), bytes.size(), block, timeout);
    }
  }
  void put(const T& item, Timeout timeout) { put(item, true, timeout); }
  void put_nowait(const T& item) { put(item, false); }

  // Throws Empty if there is no item by the timeout (at once with block = false).
  T get(bool block = true, Timeout timeout = forever) {
    if constexpr (detail::QueueFixed<T>::value) {
      detail::QueueSinkFixed<T> to;
      core_.get(&detail::QueueSinkFixed<T>::sink, &to, block, timeout);
      T out{};
      detail::QueueFixed<T>::load(out, to.buf);
      return out;
    } else if constexpr (detail::QueueContiguous<T>::value) {
      T out{};
      detail::QueueSinkContiguous<T> to{out};
      core_.get(&detail::QueueSinkContiguous<T>::sink, &to, block, timeout);
      return out;
    } else {
      Bytes bytes;
      core_.get(&detail::queue_sink_bytes, &bytes, block, timeout);
      return decode<T>(bytes);
    }
  }
  T get(Timeout timeout) { return get(true, timeout); }
  T get_nowait() { return get(false); }

  // Approximate, as in Python: other processes may change them at any moment.
  std::size_t qsize() const { return core_.qsize(); }
  bool empty() const { return core_.empty(); }
  bool full() const { return core_.full(); }

  void close() { closed_ = true; }
  bool closed() const { return closed_; }

  std::size_t maxsize() const { return core_.maxsize(); }
  std::size_t max_bytes() const { return core_.max_bytes(); }
  std::size_t max_item_bytes() const { return core_.max_item_bytes(); }  // largest encoded item

 protected:
  template <class>
  friend struct detail::process_handle;
  explicit Queue(detail::QueueCore core) : core_(std::move(core)) {}
  detail::QueueCore core_;
  bool closed_ = false;
};

// Every queue counts its puts in shared memory, so items put through a Queue<T>& (or a
// Queue<T> copy) of a JoinableQueue are counted as well.
template <class T>
class JoinableQueue : public Queue<T> {
 public:
  using Queue<T>::Queue;

 private:
  template <class>
  friend struct detail::process_handle;
  explicit JoinableQueue(detail::QueueCore core) : Queue<T>(std::move(core)) {}

 public:
  // One call per item taken with get(); StateError when called more times than items were put.
  void task_done() { this->core_.task_done(); }
  // Until every item ever put has had its task_done(); false on timeout.
  bool join(Timeout timeout = forever) { return this->core_.join(timeout); }
};

// Python's SimpleQueue: unbounded, blocking get, nothing else.
template <class T>
class SimpleQueue {
 public:
  SimpleQueue() : q_() {}
  explicit SimpleQueue(const QueueOptions& options) : q_(checked(options)) {}

  void put(const T& item) { q_.put(item); }
  T get() { return q_.get(); }
  bool empty() const { return q_.empty(); }
  void close() { q_.close(); }
  bool closed() const { return q_.closed(); }

 private:
  static const QueueOptions& checked(const QueueOptions& options) {
    if (options.maxsize != 0) throw ValueError("mpx::SimpleQueue has no maxsize");
    return options;
  }
  template <class>
  friend struct detail::process_handle;
  explicit SimpleQueue(Queue<T> q) : q_(std::move(q)) {}
  Queue<T> q_;
};

// Queues a forkserver child can be given as Process arguments (<mpx/detail/process_handle.hpp>).
// The child's handle starts open, as a forked child's copy of an open handle would be.
namespace detail {
template <class T>
struct process_handle<Queue<T>> {
  static const void* state(const Queue<T>& q) { return q.core_.state(); }
  static Queue<T> adopt(void* p) { return Queue<T>(QueueCore::adopt(p)); }
};
template <class T>
struct process_handle<JoinableQueue<T>> {
  static const void* state(const JoinableQueue<T>& q) { return q.core_.state(); }
  static JoinableQueue<T> adopt(void* p) { return JoinableQueue<T>(QueueCore::adopt(p)); }
};
template <class T>
struct process_handle<SimpleQueue<T>> {
  static const void* state(const SimpleQueue<T>& q) { return q.q_.core_.state(); }
  static SimpleQueue<T> adopt(void* p) { return SimpleQueue<T>(process_handle<Queue<T>>::adopt(p)); }
};
}  // namespace detail

}  // namespace mpx
