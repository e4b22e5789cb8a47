// ipc/ — message sockets (<mpx/connection.hpp>: Connection, Listener, Client, Pipe, wait) on
// proto's frames and handshake, and the one place proto's errors become mpx's (wire_errors).
// May include: proto, serialize, pickle, common.
#include <mpx/connection.hpp>
#include <mpx/detail/timespec.hpp>
#include <mpx/proto/handshake.hpp>

#include "common/log.hpp"
#include "ipc/wire_errors.hpp"

// GCC's -Wnull-dereference flags code inlined from Asio's scheduler.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#pragma GCC diagnostic pop

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>

namespace mpx {

namespace {

using detail::Deadline;

constexpr std::size_t kDefaultMaxMessage = std::size_t{1} << 30;
// Small messages and headers are read through this buffer, so one read() usually brings a
// whole message (often several); payloads of half of it or more go straight to their place.
// Kept small: what it over-reads of a large payload is copied once more.
constexpr std::size_t kReadAhead = 16 * 1024;
constexpr std::size_t kDirectReadThreshold = kReadAhead / 2;
// How far ahead of the reads a receive buffer is zero-filled (see ensure_room).
constexpr std::size_t kZeroFillStep = 256 * 1024;
// Messages up to this size (with header) are copied together and sent with one send().
constexpr std::size_t kCoalesceLimit = 1024;
// send_bytes_batch copies messages up to this size next to their headers; larger ones are sent
// from where they are. kMaxIov: the iovecs one sendmsg takes (IOV_MAX on Linux).
constexpr std::size_t kBatchCopyLimit = 4096;
constexpr std::size_t kMaxIov = 1024;
// Scratch buffers bigger than this are given back after use rather than kept.
constexpr std::size_t kKeepScratch = std::size_t{8} << 20;
constexpr auto kDefaultHandshakeTimeout = std::chrono::seconds{30};

std::string errno_text(int err) { return std::strerror(err); }

// poll(2) until one descriptor is ready or the deadline passes; the number ready (0 = timeout).
int poll_until(pollfd* fds, nfds_t n, const Deadline& deadline) {
  for (;;) {
    timespec ts{};
    timespec* tsp = nullptr;
    if (auto left = deadline.remaining()) {
      ts = detail::to_timespec(left->count());
      tsp = &ts;
    }
    int r = ::ppoll(fds, n, tsp, nullptr);
    if (r >= 0) return r;
    if (errno != EINTR) throw ConnectionError("mpx: poll failed: " + errno_text(errno));
  }
}

bool wait_fd(int fd, short events, const Deadline& deadline) {
  pollfd p{fd, events, 0};
  return poll_until(&p, 1, deadline) > 0;
}

void set_cloexec(int fd) {
  int flags = ::fcntl(fd, F_GETFD);
  if (flags >= 0 && !(flags & FD_CLOEXEC)) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
}

// writev() on a pipe, where MSG_NOSIGNAL does not exist: SIGPIPE is blocked in this thread
// for the call, and the one a broken pipe raised is consumed before unblocking.
ssize_t writev_nosignal(int fd, const iovec* iov, int count) {
  sigset_t pipe_only, old;
  sigemptyset(&pipe_only);
  sigaddset(&pipe_only, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_only, &old);
  ssize_t r = ::writev(fd, iov, count);
  int err = errno;
  if (r < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
    timespec zero{};
    while (sigtimedwait(&pipe_only, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  errno = err;
  return r;
}

// Grows `out` (never past `length`) until `need` more bytes fit after `filled`.
// Capacity is reserved geometrically (the first step bounded by kMaxUpfrontAllocation); the
// size, which std::vector must zero-fill, grows a cache-sized step at a time just ahead of
// the reads, so the zeroed bytes are still in cache when the kernel copies into them.
void ensure_room(Bytes& out, std::uint64_t length, std::size_t filled, std::size_t need) {
  const std::size_t want = filled + need;
  if (out.size() >= want) return;
  if (out.capacity() < want) out.reserve(std::max(want, proto::grow_payload_buffer(length, out.capacity())));
  const std::size_t step = std::max(want, out.size() + kZeroFillStep);
  out.resize(std::min({out.capacity(), step, static_cast<std::size_t>(length)}));
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Address

Address::Address(Kind kind, std::string name, std::uint16_t port)
    : kind_(kind), name_(std::move(name)), port_(port) {}

Address Address::unix_path(std::string path) {
  if (path.empty()) throw ValueError("mpx: empty Unix socket path");
  if (path.find('\0') != std::string::npos) throw ValueError("mpx: Unix socket path contains a NUL byte");
  if (path.size() >= sizeof(sockaddr_un::sun_path))
    throw ValueError("mpx: Unix socket path longer than " +
                     std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes: " + path);
  return Address(Kind::unix_path, std::move(path), 0);
}

Address Address::abstract(std::string name) {
  if (name.empty()) throw ValueError("mpx: empty abstract socket name");
  if (name.size() >= sizeof(sockaddr_un::sun_path))
    throw ValueError("mpx: abstract socket name longer than " +
                     std::to_string(sizeof(sockaddr_un::sun_path) - 1) + " bytes");
  return Address(Kind::abstract, std::move(name), 0);
}

Address Address::tcp(std::string host, std::uint16_t port) {
  if (host.empty()) throw ValueError("mpx: empty TCP host");
  if (host.find_first_of("[]/ \t\n") != std::string::npos || host.find('\0') != std::string::npos)
    throw ValueError("mpx: malformed TCP host: " + host);
  return Address(Kind::tcp, std::move(host), port);
}

Address Address::parse(std::string_view text) {
  auto bad = [&](const char* why) {
    return ValueError("mpx: cannot parse address '" + std::string(text) + "': " + why +
                      " (expected unix:/path, /path, unix:@name, tcp:host:port or tcp:[v6]:port)");
  };
  if (text.starts_with('/')) return unix_path(std::string(text));  // as Python's Listener('/tmp/x.sock')
  if (text.starts_with("unix:")) {
    auto rest = text.substr(5);
    if (rest.empty()) throw bad("no path");
    if (rest.front() == '@') return abstract(std::string(rest.substr(1)));
    return unix_path(std::string(rest));
  }
  if (text.starts_with("tcp:")) {
    auto rest = text.substr(4);
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) throw bad("no port");
    auto host = rest.substr(0, colon);
    auto port_text = rest.substr(colon + 1);
    if (host.starts_with('[')) {
      if (!host.ends_with(']') || host.size() < 3) throw bad("unbalanced brackets");
      host = host.substr(1, host.size() - 2);
      if (host.find(':') == std::string_view::npos) throw bad("brackets are for IPv6 hosts");
    } else if (host.find(':') != std::string_view::npos) {
      throw bad("an IPv6 host needs brackets");
    }
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (port_text.empty() || ec != std::errc{} || end != port_text.data() + port_text.size() || port > 65535)
      throw bad("bad port");
    if (host.empty()) throw bad("no host");
    return tcp(std::string(host), static_cast<std::uint16_t>(port));
  }
  throw bad("unknown scheme");
}

std::string Address::str() const {
  switch (kind_) {
    case Kind::unix_path:
      return "unix:" + name_;
    case Kind::abstract:
      return "unix:@" + name_;
    case Kind::tcp:
      if (name_.find(':') != std::string::npos) return "tcp:[" + name_ + "]:" + std::to_string(port_);
      return "tcp:" + name_ + ":" + std::to_string(port_);
  }
  return {};
}

namespace {

struct UnixSockaddr {
  sockaddr_un addr{};
  socklen_t len = 0;
};

UnixSockaddr unix_sockaddr(const Address& a) {
  UnixSockaddr u;
  u.addr.sun_family = AF_UNIX;
  const auto& name = a.path();
  if (a.kind() == Address::Kind::abstract) {
    u.addr.sun_path[0] = '\0';
    std::memcpy(u.addr.sun_path + 1, name.data(), name.size());
    u.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  } else {
    std::memcpy(u.addr.sun_path, name.data(), name.size());
    u.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + name.size() + 1);
  }
  return u;
}

struct AddrInfoList {
  addrinfo* head = nullptr;
  ~AddrInfoList() {
    if (head) ::freeaddrinfo(head);
  }
};

void resolve(const Address& a, bool passive, AddrInfoList& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  auto port = std::to_string(a.port());
  int rc = ::getaddrinfo(a.host().c_str(), port.c_str(), &hints, &out.head);
  if (rc != 0) throw ConnectionError("mpx: cannot resolve " + a.str() + ": " + ::gai_strerror(rc));
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Connection state and blocking I/O

namespace detail {

using AsyncSocket = boost::asio::generic::stream_protocol::socket;

struct ConnectionState {
  int fd = -1;
  bool readable = true;
  bool writable = true;
  std::size_t max_message = kDefaultMaxMessage;
  bool is_socket = true;  // false once send() said ENOTSOCK (an adopted pipe)

  // Read-ahead: bytes [rpos, rend) of rbuf arrived but are not consumed yet.
  std::unique_ptr<std::byte[]> rbuf;
  std::size_t rpos = 0;
  std::size_t rend = 0;
  Bytes scratch;  // recv_view() for messages that did not fit the read-ahead
  Bytes encode;   // send<T>
  Bytes batch;    // send_bytes_batch: headers and small messages, side by side

  boost::asio::any_io_executor executor;
  std::unique_ptr<AsyncSocket> socket;
  pid_t socket_owner = 0;  // the process that registered it with its io_context
  proto::FrameHeader send_header{0};
  std::span<const std::byte> send_message;  // the caller keeps it alive until completion

  // The asynchronous receive in progress.
  bool recv_payload = false;   // past the header
  bool recv_into_rbuf = true;  // where the pending read goes
  std::uint64_t recv_length = 0;
  std::size_t recv_filled = 0;
  Bytes recv_out;

  ~ConnectionState() { close(); }

  void close() noexcept {
    drop_socket();
    close_fd();
  }

  // Unregisters from the io_context. In a forked child the io_context's epoll set is still
  // the parent's, and unregistering would silently stop the parent's operations: the child
  // leaves the Asio object alone (leaks its copy) and just closes its descriptor.
  void drop_socket() noexcept {
    if (!socket) return;
    if (::getpid() != socket_owner) {
      (void)socket.release();
      return;
    }
    boost::system::error_code ec;
    if (socket->is_open()) socket->release(ec);  // the descriptor is ours to close
    socket.reset();
  }

  void close_fd() noexcept {
    if (fd >= 0) {
      ::close(fd);
      fd = -1;
    }
    rpos = rend = 0;
  }

  std::size_t buffered() const noexcept { return rend - rpos; }
  std::span<const std::byte> available() const noexcept { return {rbuf.get() + rpos, rend - rpos}; }

  void check_open() const {
    if (fd < 0) throw StateError("mpx: the connection is closed");
  }
  void check_readable() const {
    check_open();
    if (!readable) throw StateError("mpx: the connection is write-only");
  }
  void check_writable() const {
    check_open();
    if (!writable) throw StateError("mpx: the connection is read-only");
  }

  // Makes the unconsumed bytes start the buffer, so the rest of it is free to read into.
  void compact() noexcept {
    if (!rbuf) rbuf = std::make_unique_for_overwrite<std::byte[]>(kReadAhead);
    if (rpos == 0) return;
    if (rend > rpos) std::memmove(rbuf.get(), rbuf.get() + rpos, rend - rpos);
    rend -= rpos;
    rpos = 0;
  }

  // One read(); 0 at EOF. A descriptor that Asio switched to non-blocking waits in poll.
  std::size_t read_some(std::byte* p, std::size_t n, const Deadline* deadline) {
    for (;;) {
      if (deadline && !wait_fd(fd, POLLIN, *deadline))
        throw TimeoutError("mpx: timed out waiting for the peer");
      ssize_t r = ::read(fd, p, n);
      if (r >= 0) return static_cast<std::size_t>(r);
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (!deadline) wait_fd(fd, POLLIN, Deadline::never());
        continue;
      }
      if (err == ECONNRESET) throw ConnectionClosed("mpx: connection reset by the peer");
      throw ConnectionError("mpx: read failed: " + errno_text(err));
    }
  }

  [[noreturn]] void protocol_error(const std::string& what) {
    close();
    throw ProtocolError(what);
  }

  // Reads until the buffer holds a whole header; returns it decoded (not consumed).
  proto::DecodedHeader read_header(const Deadline* deadline) {
    for (;;) {
      std::optional<proto::DecodedHeader> h;
      try {
        h = proto::decode_header(available());
      } catch (const proto::ProtocolError& e) {
        protocol_error(e.what());
      }
      if (h) return *h;
      compact();
      std::size_t n = read_some(rbuf.get() + rend, kReadAhead - rend, deadline);
      if (n == 0) {
        if (buffered() == 0) throw ConnectionClosed("mpx: connection closed by the peer");
        throw ConnectionClosed("mpx: connection closed by the peer in the middle of a message header");
      }
      rend += n;
    }
  }

  void check_length(std::uint64_t length, std::size_t limit) {
    if (length > limit)
      protocol_error("mpx: message of " + std::to_string(length) + " bytes exceeds the limit of " +
                     std::to_string(limit) + " bytes");
  }

  // The payload (after its header was consumed) into `out`, which ends up exactly `length`
  // long. Memory grows with the bytes that actually arrive.
  void read_payload(Bytes& out, std::uint64_t length, const Deadline* deadline) {
    // A reused buffer keeps the elements it has (they are overwritten, not zeroed again);
    // one too small to be kept is emptied first so growing it copies nothing stale.
    if (out.capacity() < length) out.clear();
    if (out.size() > length) out.resize(static_cast<std::size_t>(length));
    std::size_t filled = std::min<std::size_t>(buffered(), static_cast<std::size_t>(length));
    ensure_room(out, length, 0, std::max<std::size_t>(filled, 1));
    if (filled) std::memcpy(out.data(), rbuf.get() + rpos, filled);
    rpos += filled;
    while (filled < length) {
      std::size_t remaining = static_cast<std::size_t>(length) - filled;
      std::size_t n;
      if (remaining < kDirectReadThreshold) {
        rpos = rend = 0;  // everything buffered was consumed above
        compact();
        n = read_some(rbuf.get(), kReadAhead, deadline);
        if (n) {
          rend = n;
          std::size_t take = std::min(n, remaining);
          ensure_room(out, length, filled, take);
          std::memcpy(out.data() + filled, rbuf.get(), take);
          rpos = take;
          filled += take;
        }
      } else {
        ensure_room(out, length, filled, 1);
        n = read_some(out.data() + filled, out.size() - filled, deadline);
        filled += n;
      }
      if (n == 0)
        throw ConnectionClosed("mpx: connection closed by the peer in the middle of a message (" +
                               std::to_string(filled) + " of " + std::to_string(length) + " bytes)");
    }
    if (rpos == rend) rpos = rend = 0;
  }

  // The next message as a view: into the read-ahead when it is there whole, else into scratch.
  std::span<const std::byte> recv_view(std::optional<std::size_t> maxlength, const Deadline* deadline) {
    check_readable();
    if (scratch.capacity() > kKeepScratch) Bytes().swap(scratch);
    auto h = read_header(deadline);
    check_length(h.length, maxlength.value_or(max_message));
    rpos += h.header_size;
    if (h.length <= buffered()) {
      std::span<const std::byte> view(rbuf.get() + rpos, static_cast<std::size_t>(h.length));
      rpos += view.size();
      return view;
    }
    read_payload(scratch, h.length, deadline);
    return scratch;
  }

  Bytes recv_bytes(std::optional<std::size_t> maxlength, const Deadline* deadline) {
    check_readable();
    auto h = read_header(deadline);
    check_length(h.length, maxlength.value_or(max_message));
    rpos += h.header_size;
    Bytes out;
    if (h.length <= buffered()) {
      auto* p = rbuf.get() + rpos;
      out.assign(p, p + h.length);
      rpos += static_cast<std::size_t>(h.length);
    } else {
      read_payload(out, h.length, deadline);
    }
    return out;
  }

  void send_frame(std::span<const std::byte> message, const Deadline* deadline) {
    check_writable();
    proto::FrameHeader header(message.size());
    // A small message goes out as one contiguous send(): cheaper than sendmsg's iovec
    // import, which matters on the latency path.
    std::array<std::byte, kCoalesceLimit> joined;
    iovec iov[2] = {{const_cast<std::byte*>(header.bytes().data()), header.size()},
                    {const_cast<std::byte*>(message.data()), message.size()}};
    std::size_t count = message.empty() ? 1 : 2;
    if (count == 2 && header.size() + message.size() <= joined.size()) {
      std::memcpy(joined.data(), header.bytes().data(), header.size());
      std::memcpy(joined.data() + header.size(), message.data(), message.size());
      iov[0] = {joined.data(), header.size() + message.size()};
      count = 1;
    }
    send_all(iov, count, deadline);
  }

  // Several frames in as few system calls as the kernel takes: small messages are copied
  // together with their headers, large ones go by reference.
  void send_frames(std::span<const std::span<const std::byte>> messages, const Deadline* deadline) {
    check_writable();
    std::size_t copied = 0;
    for (auto m : messages) copied += proto::kLongHeaderSize + (m.size() <= kBatchCopyLimit ? m.size() : 0);
    Bytes& joined = batch;
    joined.clear();
    joined.reserve(copied);  // no reallocation below: the iovecs point into it
    std::vector<iovec> iov;
    std::size_t uncovered = 0;  // where the part of `joined` no iovec covers yet starts
    auto cover = [&] {
      if (joined.size() > uncovered) iov.push_back({joined.data() + uncovered, joined.size() - uncovered});
      uncovered = joined.size();
    };
    for (auto m : messages) {
      proto::FrameHeader header(m.size());
      joined.insert(joined.end(), header.bytes().begin(), header.bytes().end());
      if (m.size() <= kBatchCopyLimit) {
        joined.insert(joined.end(), m.begin(), m.end());
      } else {
        cover();
        iov.push_back({const_cast<std::byte*>(m.data()), m.size()});
      }
    }
    cover();
    for (std::size_t at = 0; at < iov.size(); at += kMaxIov)
      send_all(iov.data() + at, std::min(kMaxIov, iov.size() - at), deadline);
    if (joined.capacity() > kKeepScratch) Bytes().swap(joined);
  }

  // Writes every byte the iovecs hold (they are advanced in place).
  void send_all(iovec* next, std::size_t count, const Deadline* deadline) {
    for (;;) {
      if (deadline && !wait_fd(fd, POLLOUT, *deadline))
        throw TimeoutError("mpx: timed out sending to the peer");
      ssize_t r;
      if (!is_socket) {
        r = writev_nosignal(fd, next, static_cast<int>(count));
      } else if (count == 1) {
        r = ::send(fd, next->iov_base, next->iov_len, MSG_NOSIGNAL);
      } else {
        msghdr msg{};
        msg.msg_iov = next;
        msg.msg_iovlen = count;
        r = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
      }
      if (r < 0) {
        int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN || err == EWOULDBLOCK) {
          if (!deadline) wait_fd(fd, POLLOUT, Deadline::never());
          continue;
        }
        if (err == ENOTSOCK && is_socket) {  // a pipe or file: no MSG_NOSIGNAL there
          is_socket = false;
          continue;
        }
        if (err == EPIPE || err == ECONNRESET) throw ConnectionClosed("mpx: the peer closed the connection");
        throw ConnectionError("mpx: send failed: " + errno_text(err));
      }
      auto done = static_cast<std::size_t>(r);
      while (count && done >= next->iov_len) {
        done -= next->iov_len;
        ++next;
        --count;
      }
      if (!count) return;
      next->iov_base = static_cast<char*>(next->iov_base) + done;
      next->iov_len -= done;
    }
  }
};

// The handshake's view of a connection: every step bounded by one deadline.
struct TimedChannel {
  ConnectionState& s;
  const Deadline& deadline;
  void send_bytes(std::span<const std::byte> m) { s.send_frame(m, &deadline); }
  Bytes recv_bytes(std::optional<std::size_t> maxlength) { return s.recv_bytes(maxlength, &deadline); }
};

// --- the asynchronous operations behind Connection::async_send_bytes / async_recv_bytes

namespace {

AsyncSocket& async_socket(ConnectionState& s) {
  s.check_open();
  if (!s.socket)
    throw StateError("mpx: rebind() the connection to an executor before asynchronous operations");
  return *s.socket;
}

bool async_usable(const ConnectionState& s) noexcept { return s.fd >= 0 && s.socket != nullptr; }

void async_recv_begin(ConnectionState& s) {
  s.check_readable();
  s.compact();
  s.recv_payload = false;
  s.recv_length = 0;
  s.recv_filled = 0;
  s.recv_out = Bytes();
}

struct AsyncRecvNext {
  boost::asio::mutable_buffer buffer;  // read into this, then async_recv_commit
  boost::system::error_code error;     // the message cannot be received (connection now closed)
  bool done = false;                   // a whole message is ready: async_recv_take
};

AsyncRecvNext async_recv_next(ConnectionState& s) {
  if (!s.recv_payload) {
    std::optional<proto::DecodedHeader> h;
    try {
      h = proto::decode_header(s.available());
    } catch (const proto::ProtocolError& e) {
      logger().warn("{}; closing the connection", e.what());
      s.close();
      return {{}, make_error_code(boost::system::errc::protocol_error), false};
    }
    if (!h) {
      s.compact();
      s.recv_into_rbuf = true;
      return {boost::asio::buffer(s.rbuf.get() + s.rend, kReadAhead - s.rend), {}, false};
    }
    if (h->length > s.max_message) {
      logger().warn("mpx: message of {} bytes exceeds the limit of {} bytes; closing the connection",
                    h->length, s.max_message);
      s.close();
      return {{}, boost::asio::error::message_size, false};
    }
    s.rpos += h->header_size;
    s.recv_payload = true;
    s.recv_length = h->length;
    s.recv_filled = 0;
  }
  std::size_t want = static_cast<std::size_t>(s.recv_length) - s.recv_filled;
  std::size_t take = std::min(want, s.buffered());
  if (take) {
    ensure_room(s.recv_out, s.recv_length, s.recv_filled, take);
    std::memcpy(s.recv_out.data() + s.recv_filled, s.rbuf.get() + s.rpos, take);
    s.rpos += take;
    s.recv_filled += take;
    want -= take;
  }
  if (want == 0) return {{}, {}, true};
  s.rpos = s.rend = 0;  // all buffered bytes were taken
  if (want < kDirectReadThreshold) {
    s.recv_into_rbuf = true;
    return {boost::asio::buffer(s.rbuf.get(), kReadAhead), {}, false};
  }
  ensure_room(s.recv_out, s.recv_length, s.recv_filled, 1);
  s.recv_into_rbuf = false;
  return {
      boost::asio::buffer(s.recv_out.data() + s.recv_filled, s.recv_out.size() - s.recv_filled), {}, false};
}

void async_recv_commit(ConnectionState& s, std::size_t n) {
  if (s.recv_into_rbuf)
    s.rend += n;
  else
    s.recv_filled += n;
}

Bytes async_recv_take(ConnectionState& s) {
  s.recv_out.resize(static_cast<std::size_t>(s.recv_length));
  s.recv_payload = false;
  if (s.rpos == s.rend) s.rpos = s.rend = 0;
  return std::move(s.recv_out);
}

struct AsyncSendOp {
  std::shared_ptr<ConnectionState> state;
  std::array<boost::asio::const_buffer, 2> buffers;
  bool started = false;

  template <class Self>
  void operator()(Self& self, boost::system::error_code ec = {}, std::size_t = 0) {
    if (!started) {
      started = true;
      boost::asio::async_write(async_socket(*state), buffers, std::move(self));
      return;
    }
    self.complete(ec);
  }
};

struct AsyncRecvOp {
  enum class Phase { start, reading, finish };
  std::shared_ptr<ConnectionState> state;
  Phase phase = Phase::start;
  boost::system::error_code result{};

  template <class Self>
  void operator()(Self& self, boost::system::error_code ec = {}, std::size_t n = 0) {
    switch (phase) {
      case Phase::start:
        async_recv_begin(*state);
        break;
      case Phase::reading:
        if (!async_usable(*state)) return self.complete(boost::asio::error::operation_aborted, Bytes{});
        if (ec) return self.complete(ec, Bytes{});
        async_recv_commit(*state, n);
        break;
      case Phase::finish:
        if (result) return self.complete(result, Bytes{});
        return self.complete(result, async_recv_take(*state));
    }
    auto next = async_recv_next(*state);
    if (next.error || next.done) {
      result = next.error;
      if (phase == Phase::start) {  // never complete inside the initiating call
        phase = Phase::finish;
        boost::asio::post(std::move(self));
        return;
      }
      phase = Phase::finish;
      (*this)(self);
      return;
    }
    phase = Phase::reading;
    async_socket(*state).async_read_some(next.buffer, std::move(self));
  }
};

}  // namespace

void async_send_prepare(ConnectionState& s, std::span<const std::byte> message) {
  async_socket(s);
  s.check_writable();
  s.send_header = proto::FrameHeader(message.size());
  s.send_message = message;
}

void async_recv_prepare(ConnectionState& s) { async_socket(s); }

void async_send_start(const std::shared_ptr<ConnectionState>& s, SendHandler handler) {
  auto& socket = async_socket(*s);
  std::array<boost::asio::const_buffer, 2> buffers{
      boost::asio::buffer(s->send_header.bytes().data(), s->send_header.size()),
      boost::asio::buffer(s->send_message.data(), s->send_message.size())};
  boost::asio::async_compose<SendHandler, void(boost::system::error_code)>(AsyncSendOp{s, buffers}, handler,
                                                                           socket);
}

void async_recv_start(const std::shared_ptr<ConnectionState>& s, RecvHandler handler) {
  auto& socket = async_socket(*s);
  boost::asio::async_compose<RecvHandler, void(boost::system::error_code, Bytes)>(
      AsyncRecvOp{s, AsyncRecvOp::Phase::start, {}}, handler, socket);
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Connection

Connection::Connection() noexcept = default;

Connection::Connection(int fd, bool readable, bool writable)
    : s_(std::make_shared<detail::ConnectionState>()) {
  if (fd < 0) throw ValueError("mpx: Connection needs an open descriptor");
  if (!readable && !writable) throw ValueError("mpx: a connection must be readable or writable");
  set_cloexec(fd);
  s_->fd = fd;
  s_->readable = readable;
  s_->writable = writable;
}

Connection::Connection(std::shared_ptr<detail::ConnectionState> state) noexcept : s_(std::move(state)) {}

Connection::Connection(Connection&&) noexcept = default;
Connection& Connection::operator=(Connection&& other) noexcept {
  if (this != &other) {
    if (s_) s_->close();
    s_ = std::move(other.s_);
  }
  return *this;
}
Connection::~Connection() {
  // A pending asynchronous operation may still hold the state: close it now regardless.
  if (s_) s_->close();
}

detail::ConnectionState& Connection::live() const {
  if (!s_) throw StateError("mpx: the connection is closed");
  return *s_;
}

void Connection::send_bytes(std::span<const std::byte> message) { live().send_frame(message, nullptr); }
void Connection::send_bytes(std::string_view message) {
  live().send_frame(proto::as_bytes(message), nullptr);
}
void Connection::send_bytes_batch(std::span<const std::span<const std::byte>> messages) {
  live().send_frames(messages, nullptr);
}
void Connection::send_framed(std::span<const std::byte> frames) {
  auto& s = live();
  s.check_writable();
  iovec iov{const_cast<std::byte*>(frames.data()), frames.size()};
  if (!frames.empty()) s.send_all(&iov, 1, nullptr);
}

Bytes Connection::recv_bytes(std::optional<std::size_t> maxlength) {
  return live().recv_bytes(maxlength, nullptr);
}

std::size_t Connection::recv_bytes_into(Bytes& buffer, std::optional<std::size_t> maxlength) {
  auto& s = live();
  s.check_readable();
  auto h = s.read_header(nullptr);
  s.check_length(h.length, maxlength.value_or(s.max_message));
  s.rpos += h.header_size;
  s.read_payload(buffer, h.length, nullptr);
  return buffer.size();
}

std::span<const std::byte> Connection::recv_view(std::optional<std::size_t> maxlength) {
  return live().recv_view(maxlength, nullptr);
}

void Connection::set_max_message(std::size_t max_length) { live().max_message = max_length; }
std::size_t Connection::max_message() const noexcept { return s_ ? s_->max_message : kDefaultMaxMessage; }

Bytes& Connection::encode_buffer() {
  auto& s = live();
  s.encode.clear();
  return s.encode;
}

void Connection::release_encode_buffer() noexcept {
  if (s_ && s_->encode.capacity() > kKeepScratch) Bytes().swap(s_->encode);
}

bool Connection::poll(Timeout timeout) {
  auto& s = live();
  s.check_readable();
  if (s.buffered()) return true;
  return wait_fd(s.fd, POLLIN, Deadline(timeout));
}

void Connection::close() {
  if (s_) s_->close();
}
bool Connection::closed() const noexcept { return !s_ || s_->fd < 0; }
int Connection::fileno() const {
  auto& s = live();
  s.check_open();
  return s.fd;
}
bool Connection::readable() const noexcept { return s_ && s_->readable; }
bool Connection::writable() const noexcept { return s_ && s_->writable; }

Connection::executor_type Connection::get_executor() const noexcept {
  return s_ ? s_->executor : executor_type{};
}

void Connection::rebind(executor_type executor) {
  auto& s = live();
  s.check_open();
  if (!executor) throw ValueError("mpx: rebind() needs an executor");
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(s.fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0)
    throw StateError("mpx: asynchronous operations need a socket: " + errno_text(errno));
  s.drop_socket();
  int protocol = ss.ss_family == AF_UNIX ? 0 : IPPROTO_TCP;
  s.socket = std::make_unique<detail::AsyncSocket>(executor);
  s.socket_owner = ::getpid();
  boost::system::error_code ec;
  s.socket->assign(boost::asio::generic::stream_protocol(ss.ss_family, protocol), s.fd, ec);
  if (ec) {
    s.socket.reset();
    throw ConnectionError("mpx: cannot register the connection with the executor: " + ec.message());
  }
  s.executor = std::move(executor);
}

std::pair<Connection, Connection> Pipe(bool duplex) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0)
    throw ConnectionError("mpx: socketpair failed: " + errno_text(errno));
  if (duplex) return {Connection(fds[0]), Connection(fds[1])};
  ::shutdown(fds[0], SHUT_WR);
  ::shutdown(fds[1], SHUT_RD);
  return {Connection(fds[0], true, false), Connection(fds[1], false, true)};
}

std::vector<std::size_t> wait(std::span<Connection* const> connections, Timeout timeout) {
  std::vector<pollfd> fds;
  fds.reserve(connections.size());
  // Bytes already read ahead make a connection ready without asking the kernel.
  bool buffered = false;
  for (auto* c : connections) {
    if (!c || c->closed()) throw StateError("mpx: wait() on a closed connection");
    c->s_->check_readable();
    fds.push_back({c->s_->fd, POLLIN, 0});
    buffered = buffered || c->s_->buffered() > 0;
  }
  poll_until(fds.data(), fds.size(), Deadline(buffered ? Timeout(std::chrono::nanoseconds{0}) : timeout));
  std::vector<std::size_t> ready;
  for (std::size_t i = 0; i < connections.size(); ++i)
    if (fds[i].revents || connections[i]->s_->buffered() > 0) ready.push_back(i);
  return ready;
}

std::vector<std::size_t> wait(std::initializer_list<Connection*> connections, Timeout timeout) {
  return wait(std::span<Connection* const>(connections.begin(), connections.size()), timeout);
}

// ---------------------------------------------------------------------------------------
// Listener and Client

struct Listener::State {
  int fd = -1;
  Address address;
  std::optional<std::string> authkey;
  Timeout handshake_timeout = kDefaultHandshakeTimeout;
  // The socket file to remove, recognised by inode so a file someone else put there stays.
  bool owns_file = false;
  dev_t dev = 0;
  ino_t ino = 0;
  pid_t owner = 0;

  explicit State(Address a) : address(std::move(a)) {}
  ~State() { close(); }

  void close() noexcept {
    if (fd < 0) return;
    ::close(fd);
    fd = -1;
    if (owns_file && ::getpid() == owner) {
      struct stat st {};
      if (::lstat(address.path().c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev &&
          st.st_ino == ino)
        ::unlink(address.path().c_str());
    }
    owns_file = false;
  }
};

namespace {

[[noreturn]] void throw_bind_error(const Address& a, int err, const char* what) {
  throw ConnectionError("mpx: cannot " + std::string(what) + " " + a.str() + ": " + errno_text(err));
}

}  // namespace

Listener::Listener(Address address, int backlog, std::optional<std::string> authkey)
    : s_(std::make_unique<State>(std::move(address))) {
  auto& a = s_->address;
  s_->authkey = std::move(authkey);
  if (backlog < 1) backlog = 1;
  if (a.kind() == Address::Kind::tcp) {
    AddrInfoList list;
    resolve(a, true, list);
    int last_err = EADDRNOTAVAIL;
    for (auto* ai = list.head; ai; ai = ai->ai_next) {
      int fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
      if (fd < 0) {
        last_err = errno;
        continue;
      }
      int one = 1;
      ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
      if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, backlog) == 0) {
        s_->fd = fd;
        break;
      }
      last_err = errno;
      ::close(fd);
    }
    if (s_->fd < 0) throw_bind_error(a, last_err, "listen on");
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    ::getsockname(s_->fd, reinterpret_cast<sockaddr*>(&ss), &len);
    std::uint16_t port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6&>(ss).sin6_port)
                                                  : ntohs(reinterpret_cast<sockaddr_in&>(ss).sin_port);
    a = Address::tcp(a.host(), port);
    return;
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw_bind_error(a, errno, "create a socket for");
  auto u = unix_sockaddr(a);
  if (a.kind() == Address::Kind::unix_path) {
    // Linux gives the socket file the socket's own mode: 0600 from the first instant.
    ::fchmod(fd, 0600);
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&u.addr), u.len) != 0) {
    int err = errno;
    ::close(fd);
    throw_bind_error(a, err, "bind");
  }
  s_->fd = fd;
  if (a.kind() == Address::Kind::unix_path) {
    struct stat st {};
    if (::stat(a.path().c_str(), &st) == 0) {
      s_->owns_file = true;
      s_->dev = st.st_dev;
      s_->ino = st.st_ino;
      s_->owner = ::getpid();
      if ((st.st_mode & 0777) != 0600) ::chmod(a.path().c_str(), 0600);
    }
  }
  if (::listen(fd, backlog) != 0) {
    int err = errno;
    s_->close();
    throw_bind_error(a, err, "listen on");
  }
}

Listener::Listener(Listener&&) noexcept = default;
Listener& Listener::operator=(Listener&&) noexcept = default;
Listener::~Listener() = default;

const Address& Listener::address() const {
  if (!s_) throw StateError("mpx: the listener was moved from");
  return s_->address;
}
void Listener::close() {
  if (s_) s_->close();
}
bool Listener::closed() const noexcept { return !s_ || s_->fd < 0; }
int Listener::fileno() const {
  if (closed()) throw StateError("mpx: the listener is closed");
  return s_->fd;
}
void Listener::set_handshake_timeout(Timeout timeout) {
  if (!s_) throw StateError("mpx: the listener was moved from");
  s_->handshake_timeout = timeout;
}
Timeout Listener::handshake_timeout() const noexcept { return s_ ? s_->handshake_timeout : Timeout{}; }

Connection Listener::accept(Timeout timeout) {
  if (closed()) throw StateError("mpx: the listener is closed");
  Deadline deadline(timeout);
  int fd;
  for (;;) {
    if (!wait_fd(s_->fd, POLLIN, deadline))
      throw TimeoutError("mpx: accept() timed out on " + s_->address.str());
    fd = ::accept4(s_->fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) break;
    int err = errno;
    // The peer may have given up between poll and accept; a transient error is not ours.
    if (err == EINTR || err == EAGAIN || err == EWOULDBLOCK || err == ECONNABORTED || err == EPROTO) continue;
    throw ConnectionError("mpx: accept failed on " + s_->address.str() + ": " + errno_text(err));
  }
  if (s_->address.kind() == Address::Kind::tcp) set_nodelay(fd);
  auto state = std::make_shared<detail::ConnectionState>();
  state->fd = fd;
  Connection conn(state);
  if (s_->authkey && !s_->authkey->empty()) {
    // accept()'s timeout bounds the wait for a peer; once one has connected, only the handshake
    // timeout applies, so a server polling accept() with a short timeout never drops a slow peer.
    Deadline handshake_deadline(s_->handshake_timeout);
    detail::TimedChannel channel{*state, handshake_deadline};
    try {
      detail::with_mpx_errors([&] {
        proto::deliver_challenge(channel, *s_->authkey);
        proto::answer_challenge(channel, *s_->authkey);
      });
    } catch (const TimeoutError&) {
      throw AuthenticationError("mpx: the peer did not complete the authkey handshake in time");
    }
  }
  return conn;
}

Connection Client(const Address& address, std::optional<std::string> authkey) {
  int fd = -1;
  int last_err = 0;
  auto connect_fd = [&](int family, int type, int protocol, const sockaddr* sa, socklen_t len) {
    int s = ::socket(family, type | SOCK_CLOEXEC, protocol);
    if (s < 0) {
      last_err = errno;
      return false;
    }
    int r = ::connect(s, sa, len);
    if (r != 0 && errno == EINTR) {  // the connect goes on in the background: wait for its outcome
      wait_fd(s, POLLOUT, Deadline::never());
      int err = 0;
      socklen_t el = sizeof err;
      ::getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el);
      if (err == 0) r = 0;
      errno = err;
    }
    if (r != 0) {
      last_err = errno;
      ::close(s);
      return false;
    }
    fd = s;
    return true;
  };
  if (address.kind() == Address::Kind::tcp) {
    AddrInfoList list;
    resolve(address, false, list);
    for (auto* ai = list.head; ai && fd < 0; ai = ai->ai_next)
      connect_fd(ai->ai_family, ai->ai_socktype, ai->ai_protocol, ai->ai_addr, ai->ai_addrlen);
    if (fd >= 0) set_nodelay(fd);
  } else {
    auto u = unix_sockaddr(address);
    connect_fd(AF_UNIX, SOCK_STREAM, 0, reinterpret_cast<const sockaddr*>(&u.addr), u.len);
  }
  if (fd < 0) throw ConnectionError("mpx: cannot connect to " + address.str() + ": " + errno_text(last_err));
  Connection conn(fd);
  if (authkey) {
    detail::with_mpx_errors([&] {
      proto::answer_challenge(conn, *authkey);
      proto::deliver_challenge(conn, *authkey);
    });
  }
  return conn;
}

}  // namespace mpx
