// The client side of the manager protocol: per-thread connections, request building,
// pipelined replies, and what every proxy holds.
//
// A Session is this process's link to one server (address + authkey). Each thread that uses
// it gets its own connection (so a lock taken through a proxy belongs to that thread), and
// a process forked after the session was made gets a fresh session with fresh connections:
// it never reads or writes its parent's sockets (a fork handler closes them in the child).
#pragma once

#include <mpx/address.hpp>
#include <mpx/detail/async_result.hpp>
#include <mpx/detail/futex.hpp>
#include <mpx/detail/proxy_tags.hpp>
#include <mpx/errors.hpp>
#include <mpx/proto/manager.hpp>
#include <mpx/serialize.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mpx::detail {

class ClientConn;
class Session;

using proto::kQuietBit;  // quiet requests: answered only if they fail
using proto::kQuietError;

// Where a pipelined request's reply goes once it has been read.
class ReplySlot {
 public:
  virtual ~ReplySlot() = default;
  virtual void on_reply(proto::Reader& body) = 0;
  bool done = false;
  bool quiet = false;  // sent quiet: done once a later reply (or its own error) arrives
  std::exception_ptr error;
  ClientConn* conn = nullptr;  // until done; only the issuing thread may wait on it
};

template <class T>
class TypedSlot final : public ReplySlot {
 public:
  explicit TypedSlot(T (*decode)(proto::Reader&)) : decode_(decode) {}
  void on_reply(proto::Reader& body) override { value.emplace(decode_(body)); }
  std::optional<T> value;

 private:
  T (*decode_)(proto::Reader&);
};

template <>
class TypedSlot<void> final : public ReplySlot {
 public:
  TypedSlot() = default;
  explicit TypedSlot(void (*)(proto::Reader&)) {}
  void on_reply(proto::Reader&) override {}
};

// One connection to the server, used by one thread.
class ClientConn {
 public:
  ClientConn(const Address& address, const std::string& authkey, std::span<const std::byte> token);
  ~ClientConn();
  ClientConn(const ClientConn&) = delete;
  ClientConn& operator=(const ClientConn&) = delete;

  // Starts a request (op + object id); the caller appends the body with the Writer.
  proto::Writer begin(proto::Op op, std::uint64_t oid);
  // Drops a request begun but not finished (its body failed to encode).
  void abandon() noexcept;
  // Finishes the request, sends everything queued and reads replies up to its own. Returns
  // the ok body (valid until the next request on this connection) or throws the error.
  proto::Reader call();
  // Finishes the request and queues it; its reply goes to `slot` (nullptr: nobody waits,
  // an error then surfaces at the next call or flush on this connection). A quiet request
  // (one whose reply has no body) gets a reply from the server only if it fails.
  void call_async(std::shared_ptr<ReplySlot> slot, bool quiet = false);
  // Sends what is queued and reads every outstanding reply.
  void flush();
  // Reads replies until `slot` has its own.
  void wait(ReplySlot& slot);

  // Best effort, for a connection about to close: sends what is queued, reads nothing.
  void send_queued_noexcept() noexcept;
  // After a fork, in the child: the socket belongs to the parent. Close it, send nothing.
  void abandon_after_fork() noexcept;
  bool broken() const noexcept { return fd_ < 0; }
  int fileno() const noexcept { return fd_; }
  std::thread::id owner() const noexcept { return owner_; }

 private:
  void end_frame();
  void send_all();
  std::span<const std::byte> read_frame();
  void deliver(const std::shared_ptr<ReplySlot>& slot, std::span<const std::byte> frame);
  // Settles the oldest outstanding requests with one reply frame; false when the frame
  // answers none of them (it is the reply of the call sent after them).
  bool consume(std::span<const std::byte> frame);
  // Queues a ping behind trailing quiet requests, so that some reply is sure to follow them.
  void cap_quiet_tail();
  void read_pending(std::size_t keep);  // until at most `keep` requests are outstanding
  [[noreturn]] void fail(const Error& e);
  // Closes the socket, drops what is queued and settles every outstanding call with `why`.
  void close_and_fail_pending(const char* why) noexcept;
  void throw_unobserved();

  int fd_ = -1;
  std::thread::id owner_;
  SpinStats reply_spin_;  // how long replies take, to decide whether to spin for the next
  Bytes out_;
  std::size_t frame_start_ = 0;
  bool in_request_ = false;
  Bytes in_;
  std::size_t in_pos_ = 0, in_end_ = 0;
  struct Pending {
    std::shared_ptr<ReplySlot> slot;
    bool quiet;
  };
  std::deque<Pending> pending_;
  std::exception_ptr unobserved_;
};

// Collects the results of named tasks a session submitted (lib/src/manager/tasks.cpp).
class TaskCollector;
using TaskCompleter = void (*)(ResultStateBase& state, std::span<const std::byte> result);

// Incremented in every child right after fork; sessions made before are stale there.
extern std::atomic<std::uint64_t> manager_fork_generation;

class Session : public std::enable_shared_from_this<Session> {
 public:
  // This process's session for (address, authkey): shared by every handle that reaches it.
  static std::shared_ptr<Session> get(const Address& address, const std::string& authkey);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // This session, or after a fork the one that replaces it in this process.
  Session& current() {
    if (generation_ == manager_fork_generation.load(std::memory_order_relaxed)) return *this;
    return successor();
  }
  // The calling thread's connection (made on first use). Call through current().
  ClientConn& conn() {
    thread_local Cache cache;
    if (cache.serial == serial_) return *cache.conn;
    return conn_slow(cache);
  }

  const Address& address() const noexcept { return address_; }
  const std::string& authkey() const noexcept { return authkey_; }
  // What the server knows this session by; serve_tasks' workers serve under their
  // supervisor's token so that the supervisor may report how they end.
  std::span<const std::byte> token() const noexcept { return token_; }

  // Hands task `id`'s result, when it comes, to `complete` (on the session's result thread,
  // which reads results on a connection of its own and runs the callbacks).
  void track_task(std::uint64_t id, std::shared_ptr<ResultStateBase> state, TaskCompleter complete);

  // Internal: the fork and thread-exit hooks.
  void abandon_after_fork() noexcept;
  void thread_exited(std::thread::id id) noexcept;

  struct Private;
  Session(const Private&, Address address, std::string authkey);

 private:
  struct Cache {
    std::uint64_t serial = 0;
    ClientConn* conn = nullptr;
  };
  ClientConn& conn_slow(Cache& cache);
  Session& successor();

  Address address_;
  std::string authkey_;
  std::array<std::byte, proto::kSessionTokenSize> token_{};
  std::uint64_t serial_;
  std::uint64_t generation_;
  std::mutex m_;
  std::unordered_map<std::thread::id, std::unique_ptr<ClientConn>> conns_;
  // A connection whose thread ended: kept so the session (and its anonymous objects) lives on.
  std::unique_ptr<ClientConn> anchor_;
  std::shared_ptr<Session> successor_;
  std::shared_ptr<TaskCollector> tasks_;  // started by the first submit
};

// What every proxy holds: which object, on which server, and what keeps that server up.
class ProxyCore {
 public:
  ProxyCore() = default;
  ProxyCore(std::shared_ptr<Session> session, std::shared_ptr<void> keepalive, std::uint64_t oid,
            proto::Kind kind, std::string tag, std::string name)
      : session_(std::move(session)),
        keepalive_(std::move(keepalive)),
        oid_(oid),
        kind_(kind),
        tag_(std::move(tag)),
        name_(std::move(name)) {}

  ClientConn& conn() const {
    if (!session_) throw StateError("mpx: this proxy is empty (default-constructed)");
    return session_->current().conn();
  }
  std::uint64_t oid() const noexcept { return oid_; }
  proto::Kind kind() const noexcept { return kind_; }
  const std::string& tag() const noexcept { return tag_; }
  const std::string& name() const noexcept { return name_; }
  bool valid() const noexcept { return session_ != nullptr; }
  Session* session() const noexcept { return session_.get(); }

  // Transfer: address, authkey and object identity; the receiver opens its own connection.
  template <class Archive>
  void save(Archive& ar) const {
    if (!session_) throw StateError("mpx: cannot send an empty proxy");
    ar(session_->address().str(), session_->authkey(), oid_, static_cast<std::uint8_t>(kind_), tag_, name_);
  }
  template <class Archive>
  void load(Archive& ar) {
    std::string address, authkey;
    std::uint8_t kind = 0;
    ar(address, authkey, oid_, kind, tag_, name_);
    kind_ = static_cast<proto::Kind>(kind);
    session_ = Session::get(Address::parse(address), authkey);
  }
  // A received proxy must be of the type it was sent as.
  void expect(proto::Kind kind, const std::string& tag) const;

 private:
  std::shared_ptr<Session> session_;
  std::shared_ptr<void> keepalive_;
  std::uint64_t oid_ = 0;
  proto::Kind kind_ = proto::Kind::dict;
  std::string tag_;
  std::string name_;
};

// A request under construction; abandoned unless sent.
class Request {
 public:
  Request(const ProxyCore& core, proto::Op op) : c_(core.conn()), w_(c_.begin(op, core.oid())) {}
  Request(ClientConn& c, proto::Op op, std::uint64_t oid) : c_(c), w_(c_.begin(op, oid)) {}
  ~Request() {
    if (!sent_) c_.abandon();
  }
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;

  proto::Writer& w() noexcept { return w_; }
  proto::Reader call() {
    sent_ = true;
    return c_.call();
  }
  void call_async(std::shared_ptr<ReplySlot> slot, bool quiet = false) {
    sent_ = true;
    c_.call_async(std::move(slot), quiet);
  }
  ClientConn& conn() noexcept { return c_; }

 private:
  ClientConn& c_;
  proto::Writer w_;
  bool sent_ = false;
};

// A value as a blob: u64 length, then its mpx::encode bytes (written in place, no copy).
template <class T>
void put_value(proto::Writer& w, const T& value) {
  Bytes& out = w.buffer();
  std::size_t at = out.size();
  out.resize(at + sizeof(std::uint64_t));
  encode_append(out, value);
  std::uint64_t n = out.size() - at - sizeof(std::uint64_t);
  std::memcpy(out.data() + at, &n, sizeof n);
}

template <class T>
T get_value(proto::Reader& r) {
  return decode<T>(r.blob());
}

// A u64 count, then that many values; the count is checked against the bytes left first.
template <class T>
std::vector<T> get_values(proto::Reader& r) {
  std::vector<T> out(static_cast<std::size_t>(r.count(sizeof(std::uint64_t))));
  for (auto& v : out) v = get_value<T>(r);
  return out;
}

std::int64_t wire_timeout(bool block, Timeout timeout) noexcept;
// A count that travels as a u32: ValueError naming `what` when it does not fit.
std::uint32_t wire_u32(std::uint64_t value, const char* what);

}  // namespace mpx::detail
