// The manager server's insides: connections, the object table and the object kinds.
// Everything here runs on one io_context thread, so nothing is locked. A request that has
// to wait (queue get, lock acquire ...) parks its connection: the connection stops taking
// requests until the object completes the parked one (or its timer runs out), while every
// other connection is served as usual.
#pragma once

#include "server/object_server.hpp"

#include <mpx/pickle.hpp>
#include <mpx/proto/frame.hpp>
#include <mpx/proto/manager.hpp>

#include <array>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace mpx::detail::server {

using proto::ErrorInfo;
using proto::Kind;
using proto::Op;
using proto::Reader;
using proto::Writer;

class ObjectServerImpl;
class Obj;
struct SessionRec;

// What a parked request needs to finish later.
struct Park {
  Obj* obj = nullptr;
  Op op{};
  Bytes item;                // queue_put
  std::vector<Bytes> items;  // queue_put_many: the items not yet in the queue
  std::uint64_t n = 0;       // queue_get_many: the most to hand out; task id for task ops
  std::uint32_t saved = 0;   // condition_wait: the rlock depth to restore
  bool result = true;        // condition_wait: false once it timed out
  bool reacquiring = false;  // condition_wait: notified (or timed out), now waits for the lock
  bool quiet = false;        // answered only if it fails
};

// How the answer to a Python client's call becomes its reply (python_protocol.cpp): the ok
// body as the value returned, and a failure as the exception raised (exception_for's mapping
// when `error` is empty). Kept by a connection while the call is parked.
struct PyAnswer {
  std::function<py::Object(Reader&)> ok;
  std::function<py::Object(const ErrorInfo&)> error;
};
// ('#RETURN', value) or ('#ERROR', exception) for a finished call.
py::Object python_reply(proto::Status status, Reader& body, const PyAnswer& answer);

class PythonClients;
struct PythonClientsDeleter {
  void operator()(PythonClients* p) const;
};

using proto::kQuietBit;  // quiet requests: answered only if they fail
using proto::kQuietError;

class Conn : public std::enable_shared_from_this<Conn> {
 public:
  using Socket = boost::asio::generic::stream_protocol::socket;
  Conn(ObjectServerImpl& owner, Socket socket, std::uint64_t id);
  ~Conn();

  void start(bool authenticated = false);
  std::uint64_t id() const noexcept { return id_; }
  bool closed() const noexcept { return closed_; }
  SessionRec* session() const noexcept { return session_; }
  int peer_pid() const noexcept { return peer_pid_; }
  // Who is on the other end, for the log: "unix peer uid U pid P" or "tcp peer ADDR".
  std::string peer_description();

  // Parking, from an object's handler: the request waits (timeout_ns: 0 = not at all,
  // < 0 = forever). The handler returns true after calling this.
  Park& park(Obj& obj, Op op, std::int64_t timeout_ns);
  Park* parked() noexcept { return park_ ? &*park_ : nullptr; }
  // The parked request of a connection an object has in a wait list (always there).
  Park& waiting() { return *park_; }
  // Finishing the parked request, from the object that held it.
  void complete_ok(const std::function<void(Writer&)>& body);
  void complete_error(const ErrorInfo& e);
  // Restarts (or stops) the park's timer, for a parked request that changes phase.
  void rearm(std::int64_t timeout_ns);

  // Objects this connection holds something in (lock, semaphore slot ...), released on close.
  void hold(std::uint64_t oid) { holdings_.insert(oid); }

  // Closes at once: objects forget this connection, nothing more is sent.
  void close_now();
  // Server shutdown: a parked request fails with ConnectionClosed, queued replies go out,
  // then the connection closes.
  void drain();

  // Replies that have not gone out yet, and a way to send an unsolicited final error.
  void send_error_and_close(const ErrorInfo& e);

  // A connection speaking Python's manager protocol (its first request was a pickle).
  bool python() const noexcept { return python_; }
  void expect_python_reply(PyAnswer answer) { py_answer_ = std::move(answer); }
  void send_python(const py::Object& reply);
  void send_python_pickle(std::span<const std::byte> pickle);

 private:
  enum class Phase { challenge_sent, await_peer_challenge, await_verdict, await_hello, ready };
  void read_more();
  void on_read(std::size_t n);
  void on_frame(Bytes frame);
  void on_handshake_frame(Bytes& frame);
  void handle_request(Bytes& frame);
  void resume();
  void flush();
  void complete(proto::Status status, const std::function<void(Writer&)>& body);
  void send_frame(std::span<const std::byte> payload);
  std::size_t begin_frame();
  void end_frame(std::size_t start);
  void start_handshake_timer();
  void serve_backlog();
  // Replies queued or being written: the bound on them is the server's output backpressure.
  std::size_t pending_bytes() const noexcept { return out_.size() + writing_.size(); }
  bool over_pending() const noexcept;
  void note_output();

  ObjectServerImpl& server_;
  Socket socket_;
  std::uint64_t id_;
  Phase phase_ = Phase::challenge_sent;
  Bytes challenge_;
  proto::FrameDecoder decoder_;
  std::vector<std::byte> rbuf_;
  Bytes out_, writing_;
  bool write_in_flight_ = false;
  bool reading_ = false;
  bool closed_ = false;
  bool closing_ = false;  // flush what is queued, then close
  std::optional<Park> park_;
  std::uint64_t park_gen_ = 0;
  std::deque<Bytes> backlog_;  // requests that arrived while parked
  std::size_t backlog_bytes_ = 0;
  bool resume_queued_ = false;
  bool stalled_ = false;  // over the pending bound: reads stop until the replies drain
  std::uint64_t pending_gen_ = 0;
  boost::asio::steady_timer timer_;
  boost::asio::steady_timer pending_timer_;
  std::unordered_set<std::uint64_t> holdings_;
  SessionRec* session_ = nullptr;
  int peer_pid_ = 0;
  bool python_ = false;
  PyAnswer py_answer_;

  friend class ObjectServerImpl;
};

// Waiters in arrival order, with removal of any one of them.
class WaitList {
 public:
  void push(Conn* c) { q_.push_back(c); }
  bool empty() const noexcept { return q_.empty(); }
  std::size_t size() const noexcept { return q_.size(); }
  Conn* front() const { return q_.front(); }
  Conn* pop() {
    Conn* c = q_.front();
    q_.pop_front();
    return c;
  }
  bool remove(Conn* c) {
    for (auto it = q_.begin(); it != q_.end(); ++it)
      if (*it == c) {
        q_.erase(it);
        return true;
      }
    return false;
  }
  void fail_all(const ErrorInfo& e) {
    auto q = std::move(q_);
    q_.clear();
    for (Conn* c : q) c->complete_error(e);
  }
  auto begin() { return q_.begin(); }
  auto end() { return q_.end(); }

 private:
  std::deque<Conn*> q_;
};

// The base of every object kind.
class Obj {
 public:
  Obj(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag, std::string name)
      : server_(owner), id_(id), kind_(kind), tag_(std::move(tag)), name_(std::move(name)) {}
  virtual ~Obj() = default;
  Obj(const Obj&) = delete;
  Obj& operator=(const Obj&) = delete;

  std::uint64_t id() const noexcept { return id_; }
  Kind kind() const noexcept { return kind_; }
  const std::string& tag() const noexcept { return tag_; }
  const std::string& name() const noexcept { return name_; }

  // Serves one request: writes the ok body to `w`, or parks `c` and returns true.
  virtual bool handle(Conn& c, Op op, Reader& r, Writer& w) = 0;
  // The hooks for parked requests; kinds that never park keep the defaults.
  // c's parked request ran out of time.
  virtual void on_timeout(Conn& c) { c.complete_error({proto::ErrorCode::timeout, {}, "mpx: timed out", 0}); }
  // c is closing while parked here: forget it (no reply).
  virtual void drop_waiter(Conn&) {}
  // c is closing: give back whatever it holds.
  virtual void release_held(Conn&) {}
  // The object is going away: fail every parked request.
  virtual void fail_waiters(const ErrorInfo&) {}

  // Re-encodes every value held (and every dict key) and takes a new tag: a named object a
  // Python client made, opened by a C++ client as its own type (python_protocol.cpp). A
  // rewrite that throws leaves the object as it was.
  using Rewrite = std::function<Bytes(std::span<const std::byte>)>;
  virtual void rewrite_values(const Rewrite& /*key*/, const Rewrite& /*value*/) {}
  void retag(std::string tag) { tag_ = std::move(tag); }

 protected:
  // Parks c's request at the back of `list` (a handler returns this: true, parked).
  bool wait_in(WaitList& list, Conn& c, Op op, std::int64_t timeout_ns) {
    c.park(*this, op, timeout_ns);
    list.push(&c);
    return true;
  }

  ObjectServerImpl& server_;

 private:
  std::uint64_t id_;
  Kind kind_;
  std::string tag_;
  std::string name_;
};

struct SessionRec {
  std::string token;
  int connections = 0;
  std::vector<std::uint64_t> anonymous;  // objects that end with the session
  std::unique_ptr<Obj> mailbox;          // finished tasks waiting to be collected (task_wait)
};

// A finished task on its way back to the session that submitted it.
struct TaskOutcome {
  std::uint64_t task_id = 0;
  bool failed = false;  // true: `error` (from the server); false: `result` (from the worker)
  Bytes result;
  ErrorInfo error;
};

// Helpers for the object kinds: a request that `op` is not for, a body that ends with a
// timeout, a parked request answered with a bool.
[[noreturn]] void bad_op(Op op, Kind kind);
std::int64_t read_timeout(Reader& r);
void reply_bool(Conn& c, bool value);

// Makes a built-in object: OPEN's body after kind/name/tag is the kind's init data.
std::unique_ptr<Obj> make_builtin(ObjectServerImpl& owner, std::uint64_t id, Kind kind, std::string tag,
                                  std::string name, Reader& init);
std::unique_ptr<Obj> make_registered(ObjectServerImpl& owner, std::uint64_t id, std::string tag,
                                     std::string name, Reader& init, const TypeRegistry* types);
std::unique_ptr<Obj> make_task_queue(ObjectServerImpl& owner, std::uint64_t id, std::string tag,
                                     std::string name);
std::unique_ptr<Obj> make_mailbox(ObjectServerImpl& owner);
// A task as its workers registered it (task_catalog): the signature tag the task body carries,
// and the type tags of its arguments (a tuple) and result.
struct TaskSignature {
  std::uint64_t tag = 0;
  std::string args_tag, result_tag;
};
// The tasks a task queue's workers said they run; nullptr if `queue` is not a task queue.
const std::map<std::string, TaskSignature, std::less<>>* task_catalog(const Obj& queue);
void deliver_to_mailbox(Obj& mailbox, TaskOutcome outcome);

class ObjectServerImpl {
 public:
  ObjectServerImpl(boost::asio::io_context& io, ServerOptions options);
  ~ObjectServerImpl();

  boost::asio::io_context& io() noexcept { return io_; }
  const ServerOptions& options() const noexcept { return options_; }
  void accept_on(int listen_fd);
  void adopt(int fd, bool authenticated);
  // Stops accepting and lets every connection send what it owes, closing each; after
  // `grace` the rest are closed. on_drained runs once no connection is left.
  void drain(std::chrono::milliseconds grace, std::function<void()> on_drained);
  void stop();
  bool stopping() const noexcept { return stopping_; }

  // Marks a handler that serves connections: parked requests completed inside it resume their
  // connections when it ends.
  class Batch {
   public:
    explicit Batch(ObjectServerImpl& owner) : server_(owner) { ++server_.batch_depth_; }
    ~Batch() {
      if (server_.batch_depth_ == 1) server_.run_resumes();
      --server_.batch_depth_;
    }
    Batch(const Batch&) = delete;
    Batch& operator=(const Batch&) = delete;

   private:
    ObjectServerImpl& server_;
  };
  void queue_resume(std::shared_ptr<Conn> c);

  // What a hostile or broken peer does is logged as a summary, one line a second at most.
  enum class Event {
    handshake_failed,
    handshake_stalled,
    handshake_evicted,
    refused_at_cap,
    accept_failed,
    slow_reader_closed,
    python_request_refused,
    count_
  };
  void note(Event e, std::string detail);

  // Called by connections.
  void handshake_done(Conn& c);
  void dispatch(Conn& c, Op op, std::uint64_t oid, Reader& r, Writer& w, bool& parked);
  // A request frame from a Python client (python_protocol.cpp): answers it, or parks c.
  void serve_python(Conn& c, Bytes& frame);
  SessionRec* join_session(std::string token);
  void leave_session(SessionRec* s);
  void conn_closed(Conn& c);
  // Gives a connection that has none (a Python client's) a session of its own, for the
  // results of the tasks it submits.
  SessionRec* own_session(Conn& c);
  Obj* find(std::uint64_t oid);
  Obj* find_named(std::string_view name);
  // Lets a C++ client open a named object a Python client made, holding pickles, as its own
  // type (python_protocol.cpp): converts the values and retags it; false if the tags do not
  // allow it, TypeMismatch if a value does not convert.
  bool adopt_python_values(Obj& o, const std::string& tag);
  void request_shutdown();
  std::uint64_t next_task_id() noexcept { return next_task_id_++; }
  // Hands a finished task to its session (dropped if the session has ended).
  void deliver_task(const std::string& token, TaskOutcome outcome);

 private:
  void do_accept();
  void on_accept_error(const boost::system::error_code& ec);
  void shed_waiting_connections();
  void admit(Conn::Socket socket);
  void flush_notes();
  void open(Conn& c, Reader& r, Writer& w);
  void erase_name(std::string_view name);
  void run_resumes();
  void destroy(std::uint64_t oid, const char* why);

  boost::asio::io_context& io_;
  ServerOptions options_;
  std::unique_ptr<boost::asio::basic_socket_acceptor<boost::asio::generic::stream_protocol>> acceptor_;
  bool tcp_ = false;
  bool stopping_ = false;  // no new connections or requests
  bool stopped_ = false;
  std::unique_ptr<boost::asio::steady_timer> drain_timer_;
  std::function<void()> on_drained_;
  std::uint64_t next_oid_ = 1;
  std::uint64_t next_conn_ = 1;
  std::uint64_t next_task_id_ = 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Obj>> objects_;
  std::unordered_map<std::string, std::uint64_t> names_;
  std::unordered_map<std::string, std::unique_ptr<SessionRec>> sessions_;
  std::unordered_map<std::uint64_t, std::weak_ptr<Conn>> conns_;
  std::set<std::uint64_t> handshaking_;  // ids in arrival order: the oldest goes first
  std::size_t max_connections_ = 0;
  int reserve_fd_ = -1;  // given up to accept-and-close when out of descriptors
  struct Noted {
    std::uint64_t suppressed = 0;
    std::string detail;
    std::chrono::steady_clock::time_point last_line{};
  };
  std::array<Noted, static_cast<std::size_t>(Event::count_)> notes_;
  std::unique_ptr<boost::asio::steady_timer> notes_timer_;
  bool notes_armed_ = false;
  std::vector<std::shared_ptr<Conn>> resumes_;  // connections whose parked request completed
  int batch_depth_ = 0;
  bool resume_posted_ = false;
  std::unique_ptr<PythonClients, PythonClientsDeleter> python_;
  friend class PythonClients;
  // Accept handlers may run after the server is gone (when the io_context outlives it).
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace mpx::detail::server
