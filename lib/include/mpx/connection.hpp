// Message-oriented sockets, byte-compatible with Python's multiprocessing.connection:
// the same framing for send_bytes/recv_bytes and the same authkey handshake, so a Python
// Client/Listener and an mpx one talk to each other.
//
//   mpx::Listener listener(mpx::Address::parse("unix:/tmp/echo.sock"), 128, "secret");
//   mpx::Connection c = listener.accept();            // handshake done, or AuthenticationError
//   c.send(std::vector<int>{1, 2, 3});                 // any transferable value
//   mpx::Bytes raw = c.recv_bytes();                   // or whole byte messages
//
// Blocking calls suit one connection per thread or wait() over several; rebind() moves a
// connection onto your Boost.Asio executor for async_send_bytes / async_recv_bytes (any
// completion token: callbacks, use_future, use_awaitable ...).
#pragma once

#include <mpx/address.hpp>
#include <mpx/errors.hpp>
#include <mpx/pickle.hpp>
#include <mpx/proto/frame.hpp>
#include <mpx/serialize.hpp>
#include <mpx/timeout.hpp>

// Only the vocabulary of the async members lives here (executor, completion tokens, error
// codes); the socket and composed-operation machinery is compiled once, in connection.cpp,
// so a TU that includes this header does not pay for it.
// GCC's -Wnull-dereference flags code inlined from Asio's scheduler; the pragma keeps
// users' -Werror builds working (it takes effect where those headers are first included).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/error.hpp>
#pragma GCC diagnostic pop

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace mpx {

namespace detail {
struct ConnectionState;
}  // namespace detail

class Connection;
class Listener;

// The indices of the connections that have a message (or EOF) ready, waiting up to `timeout`
// for at least one; empty on timeout.
std::vector<std::size_t> wait(std::span<Connection* const> connections, Timeout timeout = forever);
std::vector<std::size_t> wait(std::initializer_list<Connection*> connections, Timeout timeout = forever);

// One end of a message channel. Movable, not copyable; the descriptor is closed on
// destruction. Not safe for concurrent use from several threads.
class Connection {
 public:
  Connection() noexcept;  // a closed connection, for assigning later
  // Adopts a connected stream socket (made close-on-exec). A half-duplex end passes
  // readable/writable; the other direction then throws StateError.
  explicit Connection(int fd, bool readable = true, bool writable = true);
  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // One message; ConnectionClosed if the peer is gone. StateError on a closed connection.
  void send_bytes(std::span<const std::byte> message);
  void send_bytes(std::string_view message);
  // Several messages in as few system calls as the kernel takes, each framed as send_bytes
  // frames it: a peer (Python's included) receives them one by one. Many small messages per
  // call is how a sender reaches millions of messages a second; the receiver already reads
  // ahead and hands frames out without a system call each.
  void send_bytes_batch(std::span<const std::span<const std::byte>> messages);
  // The next message. ConnectionClosed at EOF (also mid-message); a length above
  // `maxlength` (default: max_message()) or a malformed header throws ProtocolError and
  // closes the connection.
  Bytes recv_bytes(std::optional<std::size_t> maxlength = {});
  // The same into `buffer` (resized to the message, its capacity reused); returns the size.
  std::size_t recv_bytes_into(Bytes& buffer, std::optional<std::size_t> maxlength = {});
  void set_max_message(std::size_t max_length);  // default 1 GiB
  std::size_t max_message() const noexcept;

  template <class T>
  void send(const T& value);  // encode<T> + send_bytes
  // encode<T> of each value, all sent as send_bytes_batch sends them.
  template <class Range>
  void send_batch(const Range& values);
  template <class T>
  T recv();  // recv_bytes + decode<T>; the connection's cap applies (a pickle: see below)

  // Python objects (<mpx/pickle.hpp>), as Python's Connection.send/recv exchange them: a
  // message is one pickle. send_object writes protocol 4 unless told (every Python 3.4+ reads
  // it); recv_object reads protocols 0-5 and throws what py::loads throws. send_py/recv_py
  // go through py::to_object / py::from_object (TypeMismatch for a value of another type).
  void send_object(const py::Object& value, int protocol = 4);
  py::Object recv_object(const py::LoadLimits& limits = {});
  template <class T>
  void send_py(const T& value, int protocol = 4) {
    send_object(py::to_object(value), protocol);
  }
  template <class T>
  T recv_py() {
    return py::from_object<T>(recv_object());
  }
  // recv<T>() of a pickle: a message that starts with 0x80 and a protocol byte 2..5 and ends
  // with STOP ('.') is refused with ProtocolError ("... is a pickle ... use recv_object() or
  // recv_py<T>()") when (a) it does not decode as T, or (b) py::loads reads all of it (a value
  // error such as an int beyond int64 counts as read). The encoding of T can start the same
  // way only when T begins with a number (a length or count starting 80 0N is at least 640
  // and then the message is no pickle); (b) refuses such a value only when all of its bytes
  // also form a complete pickle (e.g. the int32 776864896, which is pickled None). Such a
  // value still crosses with recv_bytes() + decode<T>().

  // Is a message (or EOF) ready to read? Waits up to `timeout`; forever with mpx::forever.
  bool poll(Timeout timeout = std::chrono::nanoseconds{0});

  void close();
  bool closed() const noexcept;
  int fileno() const;  // StateError when closed
  bool readable() const noexcept;
  bool writable() const noexcept;

  // Boost.Asio: one outstanding async operation per direction; the caller's buffer must
  // outlive it. Until rebind() the async operations throw StateError. Blocking and
  // asynchronous calls may be mixed (not concurrently in the same direction). A rebound
  // connection must be closed or destroyed before its io_context is; in a forked child,
  // closing it leaves the parent's io_context untouched.
  using executor_type = boost::asio::any_io_executor;
  executor_type get_executor() const noexcept;
  void rebind(executor_type executor);  // registers the descriptor with the executor's context

  // Completes with (error_code). Errors: boost::asio::error::broken_pipe etc. from the socket.
  template <class Token>
  auto async_send_bytes(std::span<const std::byte> message, Token&& token);
  // Completes with (error_code, Bytes). boost::asio::error::eof at EOF;
  // boost::asio::error::message_size above max_message() and boost::system::errc::protocol_error
  // for a malformed header (both close the connection).
  template <class Token>
  auto async_recv_bytes(Token&& token);

 private:
  std::span<const std::byte> recv_view(std::optional<std::size_t> maxlength);  // valid until the next call
  Bytes& encode_buffer();
  void release_encode_buffer() noexcept;
  void send_framed(std::span<const std::byte> frames);  // already framed: sent as they are
  detail::ConnectionState& live() const;                // StateError when closed
  explicit Connection(std::shared_ptr<detail::ConnectionState> state) noexcept;
  friend class Listener;
  friend std::vector<std::size_t> wait(std::span<Connection* const>, Timeout);

  std::shared_ptr<detail::ConnectionState> s_;
};

// A connected pair. duplex=false: first only receives, second only sends.
std::pair<Connection, Connection> Pipe(bool duplex = true);

class Listener {
 public:
  // Binds and listens; ConnectionError if that fails. A filesystem socket is created with
  // mode 0600 and removed on close/destruction (by the process that created it). With an
  // authkey, accept() runs the handshake and hands out authenticated connections only; an
  // empty authkey means no handshake (as in Python).
  explicit Listener(Address address, int backlog = 128, std::optional<std::string> authkey = {});
  Listener(Listener&&) noexcept;
  Listener& operator=(Listener&&) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  // The next peer. TimeoutError when no peer connects within `timeout` (a peer that has
  // connected gets handshake_timeout(), however short `timeout` is); for a peer that fails the
  // handshake: AuthenticationError (wrong key, garbage, or it stalls past
  // handshake_timeout()), ProtocolError (frame over 256 bytes), ConnectionClosed (it left).
  // The listener keeps working after any of them.
  Connection accept(Timeout timeout = forever);
  const Address& address() const;  // the bound address (tcp port 0 -> the real port)
  void close();
  bool closed() const noexcept;
  int fileno() const;
  // Longest a connected peer may take over the handshake (default 30 s).
  void set_handshake_timeout(Timeout timeout);
  Timeout handshake_timeout() const noexcept;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Connects (ConnectionError on failure) and, with an authkey, runs the handshake
// (AuthenticationError if either side rejects the other).
Connection Client(const Address& address, std::optional<std::string> authkey = {});

// ---------------------------------------------------------------------------------------
// Implementation of the templates.

namespace detail {

// A completion handler behind one virtual call, carrying the executor it must complete on.
// The asynchronous operations are instantiated once in connection.cpp for this type rather
// than in every TU for every token; the handler's own executor is captured here, where its
// type is still known, so completions land where the token expects them.
template <class... Args>
class ErasedHandler {
 public:
  using executor_type = boost::asio::any_io_executor;

  template <class Handler>
  ErasedHandler(Handler&& handler, const executor_type& fallback)
      : executor_(held_executor(handler, fallback)),
        impl_(std::make_unique<Impl<std::decay_t<Handler>>>(std::forward<Handler>(handler))) {}

  executor_type get_executor() const noexcept { return executor_; }

  void operator()(Args... args) {
    auto impl = std::move(impl_);  // a handler runs once; free it even if it throws
    impl->call(std::move(args)...);
  }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual void call(Args&&... args) = 0;
  };
  template <class Handler>
  struct Impl final : Base {
    template <class H>
    explicit Impl(H&& h) : handler(std::forward<H>(h)) {}
    void call(Args&&... args) override { std::move(handler)(std::move(args)...); }
    Handler handler;
  };

  // An executor that is not an I/O executor (use_future's runs the handler inline, wherever
  // the result is set) cannot be held here; the connection's executor is then the context the
  // handler would have run in anyway.
  template <class Handler>
  static executor_type held_executor(const Handler& handler, const executor_type& fallback) {
    auto executor = boost::asio::get_associated_executor(handler, fallback);
    if constexpr (std::is_constructible_v<executor_type, decltype(executor)>)
      return executor_type(std::move(executor));
    else
      return fallback;
  }

  executor_type executor_;
  std::unique_ptr<Base> impl_;
};

using SendHandler = ErasedHandler<boost::system::error_code>;
using RecvHandler = ErasedHandler<boost::system::error_code, Bytes>;

// Defined in connection.cpp. The checks run when the operation is requested (StateError
// unless open and rebound; the send also needs a writable end), as before a deferred token
// such as use_awaitable starts it.
void async_send_prepare(ConnectionState& s, std::span<const std::byte> message);
void async_recv_prepare(ConnectionState& s);
void async_send_start(const std::shared_ptr<ConnectionState>& s, SendHandler handler);
void async_recv_start(const std::shared_ptr<ConnectionState>& s, RecvHandler handler);

}  // namespace detail

template <class T>
void Connection::send(const T& value) {
  Bytes& buffer = encode_buffer();
  encode_append(buffer, value);
  send_bytes(std::span<const std::byte>(buffer));
  release_encode_buffer();
}

template <class Range>
void Connection::send_batch(const Range& values) {
  Bytes& buffer = encode_buffer();
  for (const auto& value : values) {
    std::size_t frame = proto::begin_frame(buffer);
    encode_append(buffer, value);
    proto::end_frame(buffer, frame);
  }
  send_framed(std::span<const std::byte>(buffer));
  release_encode_buffer();
}

namespace detail {
[[noreturn]] void refuse_pickle(std::span<const std::byte> message, const char* why);
bool reads_as_pickle(std::span<const std::byte> message);
}  // namespace detail

template <class T>
T Connection::recv() {
  std::span<const std::byte> message = recv_view({});
  if (!py::looks_like_pickle(message)) return decode<T>(message);
  std::optional<T> value;
  try {
    value.emplace(decode<T>(message));
  } catch (const ProtocolError&) {
    detail::refuse_pickle(message, "does not decode as the type asked for");
  }
  if (detail::reads_as_pickle(message)) detail::refuse_pickle(message, "reads as a whole pickle");
  return std::move(*value);
}

template <class Token>
auto Connection::async_send_bytes(std::span<const std::byte> message, Token&& token) {
  detail::async_send_prepare(live(), message);
  return boost::asio::async_initiate<Token, void(boost::system::error_code)>(
      [state = s_, executor = get_executor()](auto handler) {
        detail::async_send_start(state, detail::SendHandler(std::move(handler), executor));
      },
      token);
}

template <class Token>
auto Connection::async_recv_bytes(Token&& token) {
  detail::async_recv_prepare(live());
  return boost::asio::async_initiate<Token, void(boost::system::error_code, Bytes)>(
      [state = s_, executor = get_executor()](auto handler) {
        detail::async_recv_start(state, detail::RecvHandler(std::move(handler), executor));
      },
      token);
}

}  // namespace mpx
