// Managers: a server process that owns shared objects, and proxies that reach them over a
// socket — Python's multiprocessing.managers.
//
//   mpx::Manager mgr;                                  // forks a private server
//   auto d = mgr.dict<std::string, int>("scores");     // named: other clients open it by name
//   d.set("alice", 3);
//   auto q = mgr.queue<std::string>();                 // anonymous: lives while this process does
//   mpx::Process p([q]() mutable { q.put("hi"); });    // proxies work in forked children ...
//
//   auto remote = mpx::Manager::connect(mpx::Address::parse("unix:/run/mpxd.sock"), key);  // ... and mpxd
//
// Every proxy call is one request/response round trip on the calling thread's own connection.
// The *_async forms pipeline: they queue the request and return a Deferred whose get() reads
// the reply later, so many operations share one write and one read. A Deferred must be
// completed by the thread that made it; an error of one nobody waits for is thrown by the
// next call (or Manager::flush()) on that thread.
//
// A thread waiting for a reply, and the server between requests, poll the socket briefly before
// they sleep, as the synchronize primitives spin: when the other side answers within a wake-up's
// time (tens of microseconds on a small VM) that wake-up is saved. The poll adapts to how long
// replies take and stops paying off on a busy machine; MPX_SPIN_NS bounds it, 0 turns it off.
#pragma once

#include <mpx/address.hpp>
#include <mpx/context.hpp>
#include <mpx/detail/async_result.hpp>
#include <mpx/detail/process_count.hpp>
#include <mpx/detail/proxy_core.hpp>
#include <mpx/detail/proxy_tags.hpp>
#include <mpx/detail/server_types.hpp>
#include <mpx/detail/task.hpp>
#include <mpx/errors.hpp>
#include <mpx/serialize.hpp>
#include <mpx/timeout.hpp>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <ranges>
#include <string>
#include <string_view>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx {

// The result of a pipelined proxy call.
template <class T>
class Deferred {
 public:
  Deferred() = default;
  explicit Deferred(std::shared_ptr<detail::TypedSlot<T>> slot) : slot_(std::move(slot)) {}
  // The value (reading replies on this thread's connection as needed), or the call's error.
  T get() {
    wait();
    if (slot_->error) std::rethrow_exception(slot_->error);
    if constexpr (!std::is_void_v<T>) return std::move(*slot_->value);
  }
  void wait() {
    if (!slot_) throw StateError("mpx: empty Deferred");
    if (slot_->done) return;
    if (!slot_->conn || slot_->conn->owner() != std::this_thread::get_id())
      throw StateError("mpx: a Deferred must be completed by the thread that made the call");
    slot_->conn->wait(*slot_);
  }
  bool ready() const noexcept { return slot_ && slot_->done; }

 private:
  std::shared_ptr<detail::TypedSlot<T>> slot_;
};

namespace detail {

template <class T>
T decode_value(proto::Reader& r) {
  return get_value<T>(r);
}
template <class T>
std::optional<T> decode_optional(proto::Reader& r) {
  if (!r.boolean()) return std::nullopt;
  return get_value<T>(r);
}
inline bool decode_bool(proto::Reader& r) { return r.boolean(); }
inline void decode_void(proto::Reader&) {}

template <class T>
Deferred<T> send_async(Request& req, T (*decode)(proto::Reader&)) {
  auto slot = std::make_shared<TypedSlot<T>>(decode);
  req.call_async(slot, std::is_void_v<T>);  // a reply without a body need not come at all
  return Deferred<T>(std::move(slot));
}

// Opens (or creates) an object on the server; returns the proxy core.
ProxyCore open_object(const std::shared_ptr<Session>& session, const std::shared_ptr<void>& keepalive,
                      proto::Kind kind, std::string_view name, const std::string& tag,
                      const std::function<void(proto::Writer&)>& init);

struct ManagerState;

}  // namespace detail

namespace detail {

// What every proxy is made of: the core (which object on which server), its transfer (the
// receiver opens its own connection) and, on arrival, the check that the object is of the
// proxy's type (Derived::check throws TypeMismatch otherwise).
template <class Derived>
class ProxyBase {
 public:
  ProxyBase() = default;
  explicit ProxyBase(ProxyCore core) : core_(std::move(core)) {}

  const ProxyCore& core() const noexcept { return core_; }
  template <class Archive>
  void save(Archive& ar) const {
    ar(core_);
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(core_);
    Derived::check(core_);
  }

 protected:
  ProxyCore core_;
};

// What a managed list and a managed array share: length, item access, a copy of the items.
// Indices count from the end when negative, as in Python; out of range: IndexError.
template <class Derived, class T>
class SequenceProxy : public ProxyBase<Derived> {
 public:
  using ProxyBase<Derived>::ProxyBase;
  static std::string tag() { return wire_type_tag<T>(); }

  std::size_t size() const {
    Request req(this->core_, proto::Op::list_size);
    return static_cast<std::size_t>(req.call().u64());
  }
  void set(std::ptrdiff_t i, const T& v) {
    Request req(this->core_, proto::Op::list_set);
    req.w().i64(i);
    put_value(req.w(), v);
    req.call();
  }
  std::vector<T> snapshot() const {
    Request req(this->core_, proto::Op::list_snapshot);
    auto r = req.call();
    return get_values<T>(r);
  }

 protected:
  T item(std::ptrdiff_t i) const {
    Request req(this->core_, proto::Op::list_at);
    req.w().i64(i);
    auto r = req.call();
    return get_value<T>(r);
  }
};

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Proxies. Copyable handles; default-constructed ones are empty (for decoding into).

template <class K, class V>
class DictProxy : public detail::ProxyBase<DictProxy<K, V>> {
 public:
  using detail::ProxyBase<DictProxy<K, V>>::ProxyBase;
  static std::string tag() { return detail::wire_type_tag<K>() + "|" + detail::wire_type_tag<V>(); }

  void set(const K& key, const V& value) {
    detail::Request req(this->core_, proto::Op::dict_set);
    detail::put_value(req.w(), key);
    detail::put_value(req.w(), value);
    req.call();
  }
  V at(const K& key) const {
    auto v = get(key);
    if (!v) throw KeyError("mpx: key not found in the managed dict");
    return std::move(*v);
  }
  std::optional<V> get(const K& key) const {
    detail::Request req(this->core_, proto::Op::dict_get);
    detail::put_value(req.w(), key);
    auto r = req.call();
    return detail::decode_optional<V>(r);
  }
  V get(const K& key, V dflt) const {
    auto v = get(key);
    return v ? std::move(*v) : std::move(dflt);
  }
  bool contains(const K& key) const { return key_op(proto::Op::dict_contains, key); }
  bool erase(const K& key) { return key_op(proto::Op::dict_erase, key); }
  // Removes and returns the value (nullopt when absent).
  std::optional<V> pop(const K& key) {
    detail::Request req(this->core_, proto::Op::dict_pop);
    detail::put_value(req.w(), key);
    auto r = req.call();
    return detail::decode_optional<V>(r);
  }
  std::size_t size() const {
    detail::Request req(this->core_, proto::Op::dict_size);
    return static_cast<std::size_t>(req.call().u64());
  }
  std::vector<K> keys() const {
    detail::Request req(this->core_, proto::Op::dict_keys);
    auto r = req.call();
    return detail::get_values<K>(r);
  }
  std::vector<V> values() const {
    detail::Request req(this->core_, proto::Op::dict_values);
    auto r = req.call();
    return detail::get_values<V>(r);
  }
  std::vector<std::pair<K, V>> items() const {
    detail::Request req(this->core_, proto::Op::dict_items);
    auto r = req.call();
    std::vector<std::pair<K, V>> out(static_cast<std::size_t>(r.count(16)));
    for (auto& [k, v] : out) {
      k = detail::get_value<K>(r);
      v = detail::get_value<V>(r);
    }
    return out;
  }
  void clear() {
    detail::Request req(this->core_, proto::Op::dict_clear);
    req.call();
  }
  void update(const std::vector<std::pair<K, V>>& items) { update<>(items); }
  // Any map-like range (std::map, std::unordered_map, a range of pairs): one round trip.
  template <std::ranges::input_range R>
  requires requires(std::ranges::range_reference_t<R> kv) {
    K(std::get<0>(kv));
    V(std::get<1>(kv));
  }
  void update(const R& items) {
    detail::Request req(this->core_, proto::Op::dict_update);
    auto count_at = req.w().buffer().size();
    req.w().u64(0);
    std::uint64_t n = 0;
    for (auto&& kv : items) {
      detail::put_value(req.w(), static_cast<const K&>(std::get<0>(kv)));
      detail::put_value(req.w(), static_cast<const V&>(std::get<1>(kv)));
      ++n;
    }
    req.w().patch(count_at, n);  // ranges need not know their size
    req.call();
  }
  // Python's dict.setdefault: the value under `key`, which is set to `dflt` first if absent.
  V setdefault(const K& key, const V& dflt = V{}) {
    detail::Request req(this->core_, proto::Op::dict_setdefault);
    detail::put_value(req.w(), key);
    detail::put_value(req.w(), dflt);
    auto r = req.call();
    return detail::get_value<V>(r);
  }
  // Removes and returns the item inserted last (Python's order); KeyError when empty.
  std::pair<K, V> popitem() {
    detail::Request req(this->core_, proto::Op::dict_popitem);
    auto r = req.call();
    K k = detail::get_value<K>(r);
    return {std::move(k), detail::get_value<V>(r)};
  }
  // A snapshot as a std::map (Python's dict.copy()).
  std::map<K, V> copy() const requires std::totally_ordered<K> {
    std::map<K, V> out;
    for (auto& [k, v] : items()) out.emplace(std::move(k), std::move(v));
    return out;
  }

  // Pipelined forms.
  Deferred<void> set_async(const K& key, const V& value) {
    detail::Request req(this->core_, proto::Op::dict_set);
    detail::put_value(req.w(), key);
    detail::put_value(req.w(), value);
    return detail::send_async<void>(req, &detail::decode_void);
  }
  Deferred<std::optional<V>> get_async(const K& key) const {
    detail::Request req(this->core_, proto::Op::dict_get);
    detail::put_value(req.w(), key);
    return detail::send_async<std::optional<V>>(req, &detail::decode_optional<V>);
  }

  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::dict, tag()); }

 private:
  bool key_op(proto::Op op, const K& key) const {
    detail::Request req(this->core_, op);
    detail::put_value(req.w(), key);
    return req.call().boolean();
  }
};

template <class T>
class ListProxy : public detail::SequenceProxy<ListProxy<T>, T> {
 public:
  using detail::SequenceProxy<ListProxy<T>, T>::SequenceProxy;

  void append(const T& v) {
    detail::Request req(this->core_, proto::Op::list_append);
    detail::put_value(req.w(), v);
    req.call();
  }
  void extend(const std::vector<T>& vs) {
    detail::Request req(this->core_, proto::Op::list_extend);
    req.w().u64(vs.size());
    for (auto& v : vs) detail::put_value(req.w(), v);
    req.call();
  }
  T at(std::ptrdiff_t i) const { return this->item(i); }
  void insert(std::ptrdiff_t i, const T& v) {  // clamps like Python
    detail::Request req(this->core_, proto::Op::list_insert);
    req.w().i64(i);
    detail::put_value(req.w(), v);
    req.call();
  }
  T pop(std::ptrdiff_t i = -1) {
    detail::Request req(this->core_, proto::Op::list_pop);
    req.w().i64(i);
    auto r = req.call();
    return detail::get_value<T>(r);
  }
  void erase(std::ptrdiff_t i) {
    detail::Request req(this->core_, proto::Op::list_erase);
    req.w().i64(i);
    req.call();
  }
  void clear() {
    detail::Request req(this->core_, proto::Op::list_clear);
    req.call();
  }
  // Items compare by their encoded bytes, as dict keys do. ValueError when absent (Python).
  std::size_t index(const T& v) const { return static_cast<std::size_t>(value_op(proto::Op::list_index, v)); }
  std::size_t count(const T& v) const { return static_cast<std::size_t>(value_op(proto::Op::list_count, v)); }
  void remove(const T& v) { value_op(proto::Op::list_remove, v); }
  void reverse() {
    detail::Request req(this->core_, proto::Op::list_reverse);
    req.call();
  }
  // Sorts by value (operator< or `less`), stably, as Python's list.sort: the values are
  // compared here, and the new order applies only if nobody changed the list meanwhile.
  template <class Less = std::less<>>
  void sort(Less less = {}) {
    for (;;) {
      std::uint64_t version;
      std::vector<T> items;
      {
        detail::Request req(this->core_, proto::Op::list_snapshot_versioned);
        auto r = req.call();
        version = r.u64();
        items = detail::get_values<T>(r);
      }
      std::vector<std::uint64_t> order(items.size());
      for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](auto a, auto b) { return less(items[a], items[b]); });
      detail::Request req(this->core_, proto::Op::list_permute);
      req.w().u64(version);
      req.w().u64(order.size());
      for (auto i : order) req.w().u64(i);
      if (req.call().boolean()) return;
    }
  }
  Deferred<void> append_async(const T& v) {
    detail::Request req(this->core_, proto::Op::list_append);
    detail::put_value(req.w(), v);
    return detail::send_async<void>(req, &detail::decode_void);
  }

  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::list, ListProxy::tag()); }

 private:
  std::uint64_t value_op(proto::Op op, const T& v) const {
    detail::Request req(this->core_, op);
    detail::put_value(req.w(), v);
    auto r = req.call();
    return op == proto::Op::list_remove ? 0 : r.u64();
  }
};

// Python's Manager().Array: a managed list of fixed length.
template <class T>
class ArrayProxy : public detail::SequenceProxy<ArrayProxy<T>, T> {
 public:
  using detail::SequenceProxy<ArrayProxy<T>, T>::SequenceProxy;

  T get(std::ptrdiff_t i) const { return this->item(i); }

  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::array, ArrayProxy::tag()); }
};

template <class T>
class ValueProxy : public detail::ProxyBase<ValueProxy<T>> {
 public:
  using detail::ProxyBase<ValueProxy<T>>::ProxyBase;
  static std::string tag() { return detail::wire_type_tag<T>(); }

  T get() const {
    detail::Request req(this->core_, proto::Op::value_get);
    auto r = req.call();
    return detail::get_value<T>(r);
  }
  void set(const T& v) {
    detail::Request req(this->core_, proto::Op::value_set);
    detail::put_value(req.w(), v);
    req.call();
  }
  Deferred<T> get_async() const {
    detail::Request req(this->core_, proto::Op::value_get);
    return detail::send_async<T>(req, &detail::decode_value<T>);
  }
  Deferred<void> set_async(const T& v) {
    detail::Request req(this->core_, proto::Op::value_set);
    detail::put_value(req.w(), v);
    return detail::send_async<void>(req, &detail::decode_void);
  }

  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::value, tag()); }
};

class NamespaceProxy : public detail::ProxyBase<NamespaceProxy> {
 public:
  using detail::ProxyBase<NamespaceProxy>::ProxyBase;

  template <class T>
  void set(std::string_view name, const T& value) {
    detail::Request req(core_, proto::Op::ns_set);
    req.w().str(name);
    req.w().str(detail::wire_type_tag<T>());
    detail::put_value(req.w(), value);
    req.call();
  }
  // KeyError when absent; TypeMismatch when stored as another type.
  template <class T>
  T get(std::string_view name) const {
    detail::Request req(core_, proto::Op::ns_get);
    req.w().str(name);
    req.w().str(detail::wire_type_tag<T>());
    auto r = req.call();
    return detail::get_value<T>(r);
  }
  bool contains(std::string_view name) const;
  bool erase(std::string_view name);

  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::namespace_, ""); }
};

template <class T>
class QueueProxy : public detail::ProxyBase<QueueProxy<T>> {
 public:
  using detail::ProxyBase<QueueProxy<T>>::ProxyBase;
  static std::string tag() { return detail::wire_type_tag<T>(); }

  void put(const T& item, bool block = true, Timeout timeout = forever) {
    check_open();
    detail::Request req(this->core_, proto::Op::queue_put);
    detail::put_value(req.w(), item);
    req.w().i64(detail::wire_timeout(block, timeout));
    req.call();
  }
  void put(const T& item, Timeout timeout) { put(item, true, timeout); }
  T get(bool block = true, Timeout timeout = forever) {
    detail::Request req(this->core_, proto::Op::queue_get);
    req.w().i64(detail::wire_timeout(block, timeout));
    auto r = req.call();
    return detail::get_value<T>(r);
  }
  T get(Timeout timeout) { return get(true, timeout); }
  void put_nowait(const T& item) { put(item, false); }
  T get_nowait() { return get(false); }
  std::size_t qsize() const {
    detail::Request req(this->core_, proto::Op::queue_size);
    return static_cast<std::size_t>(req.call().u64());
  }
  bool empty() const { return flag(proto::Op::queue_empty); }
  bool full() const { return flag(proto::Op::queue_full); }
  // No more put() through this handle (and its copies made afterwards): StateError after.
  void close() { closed_ = true; }

  // Several items in one round trip, in order (a bounded queue takes them as room appears;
  // Full if the timeout runs out first, with the ones already in left there).
  void put_many(const std::vector<T>& items, bool block = true, Timeout timeout = forever) {
    check_open();
    detail::Request req(this->core_, proto::Op::queue_put_many);
    req.w().u64(items.size());
    for (auto& item : items) detail::put_value(req.w(), item);
    req.w().i64(detail::wire_timeout(block, timeout));
    req.call();
  }
  // Waits like get() for the first item, then takes up to `most` that are there.
  std::vector<T> get_many(std::size_t most, bool block = true, Timeout timeout = forever) {
    detail::Request req(this->core_, proto::Op::queue_get_many);
    req.w().u64(most);
    req.w().i64(detail::wire_timeout(block, timeout));
    auto r = req.call();
    return detail::get_values<T>(r);
  }
  Deferred<void> put_async(const T& item, bool block = true, Timeout timeout = forever) {
    check_open();
    detail::Request req(this->core_, proto::Op::queue_put);
    detail::put_value(req.w(), item);
    req.w().i64(detail::wire_timeout(block, timeout));
    return detail::send_async<void>(req, &detail::decode_void);
  }
  Deferred<T> get_async(bool block = true, Timeout timeout = forever) {
    detail::Request req(this->core_, proto::Op::queue_get);
    req.w().i64(detail::wire_timeout(block, timeout));
    return detail::send_async<T>(req, &detail::decode_value<T>);
  }

  // A plain queue proxy also takes a joinable queue (it has every plain queue operation).
  static void check(const detail::ProxyCore& c) {
    c.expect(c.kind() == proto::Kind::joinable_queue ? c.kind() : proto::Kind::queue, tag());
  }

 protected:
  bool flag(proto::Op op) const {
    detail::Request req(this->core_, op);
    return req.call().boolean();
  }
  void check_open() const {
    if (closed_) throw StateError("mpx: put() on a closed queue handle");
  }
  bool closed_ = false;
};

template <class T>
class JoinableQueueProxy : public QueueProxy<T> {
 public:
  using QueueProxy<T>::QueueProxy;
  void task_done() {
    detail::Request req(this->core_, proto::Op::queue_task_done);
    req.call();
  }
  // Until every item put has been task_done(); false on timeout.
  bool join(Timeout timeout = forever) {
    detail::Request req(this->core_, proto::Op::queue_join);
    req.w().i64(detail::wire_timeout(true, timeout));
    return req.call().boolean();
  }
  template <class Archive>
  void load(Archive& ar) {
    ar(this->core_);
    this->core_.expect(proto::Kind::joinable_queue, QueueProxy<T>::tag());
  }
};

namespace detail {

// Shared by the lock-like proxies: acquire/release and the Lockable spellings.
class LockableProxy : public ProxyBase<LockableProxy> {
 public:
  using ProxyBase::ProxyBase;

  bool acquire(bool block = true, Timeout timeout = forever);
  bool acquire(Timeout timeout) { return acquire(true, timeout); }
  void lock() { acquire(); }
  void unlock() { release(); }
  bool try_lock() { return acquire(false); }
  template <class Rep, class Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) {
    return acquire(true, std::chrono::ceil<std::chrono::nanoseconds>(d));
  }
  template <class Clock, class Duration>
  bool try_lock_until(const std::chrono::time_point<Clock, Duration>& t) {
    return try_lock_for(t - Clock::now());
  }
  void release();
  // Pipelined forms: e.g. acquire_async(), then the guarded calls' *_async forms, then
  // release_async() — a whole critical section in one round trip (the server runs a
  // connection's requests in order, so the calls after the acquire wait for the lock; a
  // timed acquire that fails lets them run unguarded, so check its result before using theirs).
  // An increment of a shared counter from several processes, one round trip each:
  //
  //   lock.acquire_async();              // queued, not sent yet
  //   auto now = counter.get_async();    // runs once the lock is granted
  //   counter.set_async(now.get() + 1);  // get() sends both and waits for the value
  //   lock.release_async();              // leaves with the next request (or Manager::flush())
  //
  // The set and the release get no reply unless they fail (their error then surfaces at the
  // next call or flush on this thread), and the server hands the lock straight to the next
  // waiter, whose queued requests run at once.
  Deferred<bool> acquire_async(bool block = true, Timeout timeout = forever);
  Deferred<void> release_async();

  // Any of the lock family (each handles acquire and release).
  static void check(const ProxyCore& c);

 protected:
  void release_n(std::uint64_t n);
};

}  // namespace detail

class LockProxy : public detail::LockableProxy {
 public:
  using LockableProxy::LockableProxy;
};
class RLockProxy : public detail::LockableProxy {
 public:
  using LockableProxy::LockableProxy;
};

class SemaphoreProxy : public detail::LockableProxy {
 public:
  using LockableProxy::LockableProxy;
  // n from 1 to 2^32-1 (the wire's u32), else ValueError; taken wide so that a larger count
  // is refused rather than cut down to its low 32 bits on the way in.
  void release(std::uint64_t n = 1);
  void unlock() { release(); }
  unsigned get_value() const;
};
class BoundedSemaphoreProxy : public SemaphoreProxy {
 public:
  using SemaphoreProxy::SemaphoreProxy;
};

class ConditionProxy : public detail::LockableProxy {
 public:
  using LockableProxy::LockableProxy;
  // Releases the lock (every level), waits for a notify or the timeout, takes the lock back.
  bool wait(Timeout timeout = forever);
  template <class Pred>
  bool wait_for(Pred pred, Timeout timeout = forever) {
    return detail::wait_for_predicate([this](Timeout left) { return wait(left); }, pred, timeout);
  }
  void notify(std::uint64_t n = 1);  // n up to 2^32-1, else ValueError
  void notify_all();
};

class EventProxy : public detail::ProxyBase<EventProxy> {
 public:
  using detail::ProxyBase<EventProxy>::ProxyBase;
  bool is_set() const;
  void set();
  void clear();
  bool wait(Timeout timeout = forever);
  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::event, ""); }
};

class BarrierProxy : public detail::ProxyBase<BarrierProxy> {
 public:
  using detail::ProxyBase<BarrierProxy>::ProxyBase;
  // 0..parties-1 in order of arrival; a wait that times out breaks the barrier (BrokenBarrierError).
  unsigned wait(Timeout timeout = forever);
  void reset();
  void abort();
  unsigned parties() const;
  unsigned n_waiting() const;
  bool broken() const;
  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::barrier, ""); }
};

// An object of a registered type (Server::register_type / mpx::register_type).
template <class T>
class ObjectProxy : public detail::ProxyBase<ObjectProxy<T>> {
 public:
  using detail::ProxyBase<ObjectProxy<T>>::ProxyBase;

  // Calls a registered method; TypeMismatch if no method of that name takes exactly these
  // (decayed) argument types and returns R. An exception in the method: RemoteError.
  template <class R, class... Args>
  R call(std::string_view method, Args&&... args) {
    detail::Request req(this->core_, proto::Op::object_call);
    req.w().str(method);
    req.w().str(detail::wire_type_tags<std::decay_t<Args>...>());
    req.w().str(detail::wire_type_tag<R>());
    detail::put_value(req.w(), std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...));
    auto r = req.call();
    if constexpr (std::is_void_v<R>) {
      r.blob();
    } else {
      return detail::get_value<R>(r);
    }
  }

  // The tag is "<registered name>|<C++ type>"; the registered name is not known here.
  static void check(const detail::ProxyCore& c) {
    const std::string cpp = "|" + detail::wire_type_tag<T>();
    const std::string& tag = c.tag();
    bool same = tag.size() > cpp.size() && tag.compare(tag.size() - cpp.size(), cpp.size(), cpp) == 0;
    c.expect(proto::Kind::object, same ? tag : "<registered type>" + cpp);
  }
};

namespace detail {
template <class R>
void complete_task(ResultStateBase& state, std::span<const std::byte> result) {
  static_cast<ResultState<R>&>(state).set_from_bytes(
      result, [](std::span<const std::byte> b) { return decode_call_result<R>(b); });
}
}  // namespace detail

// A named task queue on a manager: tasks go in by name, processes running serve_tasks()
// (in this binary or another one that registered the same names) run them.
class TaskQueueProxy : public detail::ProxyBase<TaskQueueProxy> {
 public:
  using detail::ProxyBase<TaskQueueProxy>::ProxyBase;

  // Submits a call of the task registered as `task` with these (transferable) arguments;
  // R must be its result type. The result: the value; RemoteError if the task threw;
  // WorkerLost if its worker died; ValueError if no worker registered `task`; TypeMismatch
  // if it was registered with another signature.
  template <class R, class... Args>
  AsyncResult<R> submit(std::string_view task, Args&&... args) {
    Bytes body;
    detail::encode_named_task<R>(body, task, 0, args...);
    auto state = std::make_shared<detail::ResultState<R>>();
    std::uint64_t id;
    {
      detail::Request req(core_, proto::Op::task_submit);
      req.w().str(task);
      req.w().blob(body);
      id = req.call().u64();
    }
    core_.session()->current().track_task(id, state, &detail::complete_task<R>);
    return AsyncResult<R>(std::move(state));
  }

  const std::string& name() const noexcept { return core_.name(); }
  static void check(const detail::ProxyCore& c) { c.expect(proto::Kind::task_queue, ""); }
};

// Registers `f` as the task `name` in this process (do it in every binary that serves or
// submits it, before serve_tasks). Any callable with a fixed signature; its arguments and
// result must be transferable.
template <class F>
void register_task(std::string name, F f) {
  detail::register_named_task(std::move(name), detail::make_named_task(std::move(f)));
}

// Starts `processes` workers (0 = cpu_count()) that connect to the manager at `address` and
// run the tasks of the named queue; replaces workers that die (their running task fails
// with WorkerLost, exit code as for Process). Blocks until the server stops, or SIGTERM or
// SIGINT reaches this process; then stops the workers and returns.
void serve_tasks(const Address& address, std::string authkey, std::string_view queue, unsigned processes);
// The same with the workers started by `context`'s method (the one above uses get_start_method()).
// Under forkserver and spawn a worker has not run the code that registered the tasks: it
// registers this process's registrations itself, which works for functions, captureless lambdas
// and function objects; a capturing lambda is only seen by forked workers.
void serve_tasks(const Address& address, std::string authkey, std::string_view queue, unsigned processes,
                 Context context);
// Any other integer type: a negative count or one beyond unsigned is a ValueError.
template <detail::other_integer I>
void serve_tasks(const Address& address, std::string authkey, std::string_view queue, I processes) {
  serve_tasks(address, std::move(authkey), queue, detail::process_count(processes, "mpx::serve_tasks"));
}

// ---------------------------------------------------------------------------------------

class Manager {
 public:
  // Forks a private server: a Unix socket in a fresh 0700 directory, a random authkey. It
  // stops with shutdown(), when the last handle in this process goes, or when this process
  // dies; its directory is removed then.
  Manager();
  // Reaches a running server (mpxd, or a Server in another program).
  static Manager connect(const Address& address, std::string authkey);

  const Address& address() const;
  const std::string& authkey() const;
  // Stops the server this Manager() started; StateError on a connect()ed one (and in a
  // process other than the one that started it).
  void shutdown();
  // Drops a named object (its proxies then fail with StateError).
  void erase(std::string_view name);
  // Waits for every pipelined call this thread has outstanding; throws the first error
  // nobody collected.
  void flush();

  template <class K, class V>
  DictProxy<K, V> dict(std::string_view name = {}) {
    return DictProxy<K, V>(open(proto::Kind::dict, name, DictProxy<K, V>::tag(), {}));
  }
  template <class T>
  ListProxy<T> list(std::string_view name = {}) {
    return ListProxy<T>(open(proto::Kind::list, name, ListProxy<T>::tag(), {}));
  }
  // Python's Manager().Array: n default values, or the given ones; the length is fixed.
  template <class T>
  ArrayProxy<T> array(std::size_t n, std::string_view name = {}) {
    return array<T>(std::vector<T>(n), name);
  }
  template <class T>
  ArrayProxy<T> array(const std::vector<T>& values, std::string_view name = {}) {
    return ArrayProxy<T>(open(proto::Kind::array, name, ArrayProxy<T>::tag(), [&](proto::Writer& w) {
      w.u64(values.size());
      for (auto& v : values) detail::put_value(w, v);
    }));
  }
  template <class T>
  ValueProxy<T> value(T initial = T{}, std::string_view name = {}) {
    return ValueProxy<T>(open(proto::Kind::value, name, ValueProxy<T>::tag(),
                              [&](proto::Writer& w) { detail::put_value(w, initial); }));
  }
  NamespaceProxy namespace_(std::string_view name = {});
  template <class T>
  QueueProxy<T> queue(std::size_t maxsize = 0, std::string_view name = {}) {
    return QueueProxy<T>(
        open(proto::Kind::queue, name, QueueProxy<T>::tag(), [&](proto::Writer& w) { w.u64(maxsize); }));
  }
  template <class T>
  JoinableQueueProxy<T> joinable_queue(std::size_t maxsize = 0, std::string_view name = {}) {
    return JoinableQueueProxy<T>(open(proto::Kind::joinable_queue, name, QueueProxy<T>::tag(),
                                      [&](proto::Writer& w) { w.u64(maxsize); }));
  }
  LockProxy lock(std::string_view name = {});
  RLockProxy rlock(std::string_view name = {});
  // Counts and parties travel as u32: a value above 2^32-1 is a ValueError, not truncated.
  SemaphoreProxy semaphore(std::uint64_t value = 1, std::string_view name = {});
  BoundedSemaphoreProxy bounded_semaphore(std::uint64_t value = 1, std::string_view name = {});
  ConditionProxy condition(std::string_view name = {});
  EventProxy event(std::string_view name = {});
  BarrierProxy barrier(std::uint64_t parties, std::string_view name = {});
  // A named task queue served by worker processes (serve_tasks).
  TaskQueueProxy task_queue(std::string_view name);

  // Constructs a registered type in the server from `args` (or opens the existing `name`).
  template <class T, class... Args>
  ObjectProxy<T> make(std::string_view type_name, std::string_view name, Args&&... args) {
    std::string tag = std::string(type_name) + "|" + detail::wire_type_tag<T>();
    return ObjectProxy<T>(open(proto::Kind::object, name, tag, [&](proto::Writer& w) {
      w.str(type_name);
      w.str(detail::wire_type_tags<std::decay_t<Args>...>());
      detail::put_value(w, std::tuple<std::decay_t<Args>...>(std::forward<Args>(args)...));
    }));
  }

 private:
  Manager(std::shared_ptr<detail::Session> session, std::shared_ptr<detail::ManagerState> state);
  detail::ProxyCore open(proto::Kind kind, std::string_view name, const std::string& tag,
                         const std::function<void(proto::Writer&)>& init);

  std::shared_ptr<detail::Session> session_;
  std::shared_ptr<detail::ManagerState> state_;  // only for a Manager() that started a server
};

// Hosts the manager server inside your program (mpxd is this plus a command line).
class Server {
 public:
  // Binds at once (so address() has the real port for tcp:host:0); ConnectionError on failure.
  Server(const Address& address, std::string authkey);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  const Address& address() const;
  // Register before serve_forever().
  template <class T>
  TypeRegistration<T> register_type(std::string name) {
    return TypeRegistration<T>(types_->add(std::move(name), detail::wire_type_tag<T>()));
  }
  // The most bytes (encoded items) any one queue may hold, 1 GiB unless set (before
  // serve_forever()). Past it an unbounded queue's put throws Full at once and a bounded
  // one waits for room; an item larger than the whole budget is a ValueError.
  void set_queue_max_bytes(std::size_t bytes);

  // What any one client may make the server hold, so that a client that misbehaves cannot
  // starve the others. Set before serve_forever(); zero sizes are a ValueError.
  struct Limits {
    std::size_t queue_max_bytes = std::size_t{1} << 30;  // encoded items per queue
    // Unread replies per connection: past it the server reads no more of that client's
    // requests until it catches up, and closes it if it stays behind for pending_timeout.
    std::size_t max_pending_bytes = std::size_t{4} << 20;
    std::chrono::milliseconds pending_timeout{30'000};
    std::size_t max_connections = 0;  // 0: the descriptor limit (RLIMIT_NOFILE) less 64
    // Connections still in the authkey handshake; a newcomer past it drops the oldest.
    std::size_t max_handshakes = 64;
    std::chrono::milliseconds handshake_timeout{30'000};
  };
  void set_limits(const Limits& limits);
  Limits limits() const;
  // Serves until shutdown() (from any thread or a signal handler-free context) or
  // SIGTERM/SIGINT; then closes every connection and removes the socket file.
  void serve_forever();
  void shutdown();

 private:
  struct State;
  std::unique_ptr<State> s_;
  std::shared_ptr<detail::TypeRegistry> types_;
};

// For the private server of Manager(): register in the parent before constructing it.
template <class T>
TypeRegistration<T> register_type(std::string name) {
  return TypeRegistration<T>(
      detail::global_type_registry()->add(std::move(name), detail::wire_type_tag<T>()));
}

}  // namespace mpx
