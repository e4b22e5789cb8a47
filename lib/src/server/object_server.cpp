#include "server/object_server.hpp"

#include "common/log.hpp"
#include "ipc/wire_errors.hpp"
#include "server/internals.hpp"

#include <mpx/proto/handshake.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace mpx::detail {

ObjectServer::ObjectServer(boost::asio::io_context& io, ServerOptions options)
    : server_(std::make_unique<server::ObjectServerImpl>(io, std::move(options))) {}
ObjectServer::~ObjectServer() {
  if (server_) server_->stop();
}
void ObjectServer::accept_on(int listen_fd) { server_->accept_on(listen_fd); }
void ObjectServer::adopt(int fd, bool authenticated) { server_->adopt(fd, authenticated); }
void ObjectServer::stop() { server_->stop(); }
void ObjectServer::drain(std::chrono::milliseconds grace, std::function<void()> on_drained) {
  server_->drain(grace, std::move(on_drained));
}

namespace server {

namespace {

constexpr std::size_t kReadBuffer = 64 * 1024;
// A connection parked on a blocking call stops reading once this much has piled up behind it.
constexpr std::size_t kMaxBacklogBytes = std::size_t{64} << 20;

ErrorInfo make_error(proto::ErrorCode code, std::string message) { return {code, {}, std::move(message), 0}; }

}  // namespace

// ---------------------------------------------------------------------------------------
// Conn

Conn::Conn(ObjectServerImpl& owner, Socket socket, std::uint64_t id)
    : server_(owner),
      socket_(std::move(socket)),
      id_(id),
      decoder_(proto::kMaxHandshakeMessage),
      rbuf_(kReadBuffer),
      timer_(owner.io()),
      pending_timer_(owner.io()) {}

Conn::~Conn() = default;

void Conn::start(bool authenticated) {
  if (authenticated || server_.options().authkey.empty()) {
    phase_ = Phase::await_hello;
  } else {
    challenge_ = proto::make_challenge();
    send_frame(challenge_);
    phase_ = Phase::challenge_sent;
  }
  start_handshake_timer();
  flush();
  read_more();
}

void Conn::start_handshake_timer() {
  timer_.expires_after(server_.options().handshake_timeout);
  timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
    if (ec || self->closed_ || self->phase_ == Phase::ready) return;
    self->server_.note(ObjectServerImpl::Event::handshake_stalled, self->peer_description());
    self->close_now();
  });
}

void Conn::read_more() {
  if (reading_ || closed_ || closing_ || stalled_ || backlog_bytes_ > kMaxBacklogBytes) return;
  reading_ = true;
  // Asio tries a recv before waiting for readiness, which right after a reply nearly always
  // finds nothing. Every way to skip that try (async_wait, or a pending wait_error, which
  // turns speculation off) makes Asio re-arm the descriptor with an epoll_ctl per read
  // instead, which measured no faster, so the read stays the plain one.
  socket_.async_read_some(boost::asio::buffer(rbuf_),
                          [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                            self->reading_ = false;
                            if (self->closed_) return;
                            if (ec) {
                              self->close_now();
                              return;
                            }
                            {
                              // Connections whose waits this input ended are served (and
                              // their replies sent) before this one reads again.
                              ObjectServerImpl::Batch batch(self->server_);
                              self->on_read(n);
                              self->serve_backlog();
                              self->flush();
                            }
                            self->read_more();
                          });
}

void Conn::on_read(std::size_t n) {
  std::span<const std::byte> data(rbuf_.data(), n);
  while (!data.empty() && !closed_ && !closing_) {
    std::size_t used = 0;
    try {
      used = decoder_.feed(data);
    } catch (const proto::ProtocolError& e) {
      // A frame over the cap: the stream cannot be resynchronised, so answer and close.
      send_error_and_close(make_error(proto::ErrorCode::protocol, e.what()));
      return;
    }
    data = data.subspan(used);
    if (decoder_.ready()) on_frame(decoder_.take());
  }
}

void Conn::on_frame(Bytes frame) {
  if (phase_ != Phase::ready) {
    on_handshake_frame(frame);
    return;
  }
  // Requests wait behind a parked one, and while the replies already owed are over the bound:
  // a client that pipelines requests and never reads cannot make the server buffer more.
  if (park_ || !backlog_.empty() || over_pending()) {
    backlog_bytes_ += frame.size();
    backlog_.push_back(std::move(frame));
    return;
  }
  handle_request(frame);
}

void Conn::on_handshake_frame(Bytes& frame) {
  const std::string& key = server_.options().authkey;
  try {
    switch (phase_) {
      case Phase::challenge_sent:
        try {
          proto::verify_response(key, challenge_, frame);
        } catch (const proto::AuthenticationError&) {
          send_frame(proto::as_bytes(proto::kFailure));
          closing_ = true;
          server_.note(ObjectServerImpl::Event::handshake_failed, peer_description());
          return;
        }
        send_frame(proto::as_bytes(proto::kWelcome));
        phase_ = Phase::await_peer_challenge;
        return;
      case Phase::await_peer_challenge: {
        auto response = proto::create_response(key, frame);
        send_frame(response);
        phase_ = Phase::await_verdict;
        return;
      }
      case Phase::await_verdict:
        if (!proto::is_welcome(frame)) {
          closing_ = true;
          return;
        }
        phase_ = Phase::await_hello;
        // Authenticated: the first request may be a Python client's, of any size.
        decoder_.set_max_length(server_.options().max_message);
        return;
      case Phase::await_hello: {
        if (py::looks_like_pickle(frame)) {
          // Python's manager protocol: no hello, every frame a pickled request.
          python_ = true;
          phase_ = Phase::ready;
          decoder_.set_max_length(server_.options().max_message);
          timer_.cancel();
          server_.handshake_done(*this);
          handle_request(frame);
          return;
        }
        Reader r(frame);
        if (static_cast<Op>(r.u8()) != Op::hello) throw ProtocolError("mpx manager protocol: expected hello");
        r.u64();
        auto magic = r.take(proto::kManagerMagic.size());
        if (std::memcmp(magic.data(), proto::kManagerMagic.data(), magic.size()) != 0)
          throw ProtocolError("mpx manager protocol: not an mpx manager client");
        std::uint32_t version = r.u32();
        if (version != proto::kManagerVersion)
          throw ProtocolError("mpx manager protocol: version mismatch: client speaks " +
                              std::to_string(version) + ", server speaks " +
                              std::to_string(proto::kManagerVersion));
        auto token = r.take(proto::kSessionTokenSize);
        r.expect_end();
        session_ =
            server_.join_session(std::string(reinterpret_cast<const char*>(token.data()), token.size()));
        std::size_t start = begin_frame();
        Writer w(out_);
        w.u8(static_cast<std::uint8_t>(proto::Status::ok));
        w.raw(proto::kManagerMagic.data(), proto::kManagerMagic.size());
        w.u32(proto::kManagerVersion);
        w.str(server_.options().description);
        end_frame(start);
        phase_ = Phase::ready;
        decoder_.set_max_length(server_.options().max_message);
        timer_.cancel();
        server_.handshake_done(*this);
        return;
      }
      case Phase::ready:
        return;
    }
  } catch (const std::exception& e) {
    // Anything wrong before the session starts ends the connection.
    send_error_and_close(detail::error_from_exception(e));
  }
}

void Conn::handle_request(Bytes& frame) {
  if (python_) {
    server_.serve_python(*this, frame);
    return;
  }
  std::size_t start = begin_frame();
  bool parked = false, quiet = false, failed = false;
  {
    Writer w(out_);
    w.u8(static_cast<std::uint8_t>(proto::Status::ok));
    try {
      Reader r(frame);
      auto op = static_cast<Op>(r.u8());
      std::uint64_t oid = r.u64();
      quiet = (oid & kQuietBit) != 0;
      server_.dispatch(*this, op, oid & ~kQuietBit, r, w, parked);
      if (parked && park_) park_->quiet = quiet;
    } catch (const std::exception& e) {
      parked = false;
      failed = true;
      out_.resize(proto::payload_start(start));
      w.u8(quiet ? kQuietError : static_cast<std::uint8_t>(proto::Status::error));
      proto::write_error(w, detail::error_from_exception(e));
    }
  }
  if (parked || (quiet && !failed))
    out_.resize(start);
  else
    end_frame(start);
}

void Conn::resume() {
  resume_queued_ = false;
  if (closed_) return;
  serve_backlog();
  flush();
  read_more();
}

void Conn::serve_backlog() {
  while (!park_ && !backlog_.empty() && !closed_ && !closing_ && !over_pending()) {
    Bytes frame = std::move(backlog_.front());
    backlog_.pop_front();
    backlog_bytes_ -= frame.size();
    handle_request(frame);
  }
}

bool Conn::over_pending() const noexcept { return pending_bytes() > server_.options().max_pending_bytes; }

// Called after every flush: entering the over-the-bound state stops reading and starts the
// clock on the peer; leaving it lets the requests that waited run.
void Conn::note_output() {
  if (closed_) return;
  bool over = over_pending();
  if (over == stalled_) return;
  stalled_ = over;
  ++pending_gen_;
  if (over) {
    pending_timer_.expires_after(server_.options().pending_timeout);
    pending_timer_.async_wait([self = shared_from_this(), gen = pending_gen_](boost::system::error_code ec) {
      if (ec || self->closed_ || !self->stalled_ || self->pending_gen_ != gen) return;
      self->server_.note(ObjectServerImpl::Event::slow_reader_closed,
                         fmt::format("{}, {} bytes unread", self->peer_description(), self->pending_bytes()));
      self->close_now();
    });
    return;
  }
  pending_timer_.cancel();
  if (!resume_queued_) {
    resume_queued_ = true;
    server_.queue_resume(shared_from_this());
  }
}

std::string Conn::peer_description() {
  int fd = socket_.native_handle();
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "peer gone";
  if (ss.ss_family == AF_UNIX) {
    ucred cred{};
    socklen_t clen = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
      return fmt::format("unix peer uid {} pid {}", cred.uid, cred.pid);
    return "unix peer";
  }
  boost::system::error_code ec;
  auto ep = socket_.remote_endpoint(ec);
  if (ec) return "tcp peer";
  char host[INET6_ADDRSTRLEN] = "?";
  const auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
  if (sa->sa_family == AF_INET)
    ::inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, host, sizeof host);
  else if (sa->sa_family == AF_INET6)
    ::inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, host, sizeof host);
  return fmt::format("tcp peer {}", host);
}

Park& Conn::park(Obj& obj, Op op, std::int64_t timeout_ns) {
  park_.emplace();
  park_->obj = &obj;
  park_->op = op;
  rearm(timeout_ns);
  return *park_;
}

void Conn::rearm(std::int64_t timeout_ns) {
  ++park_gen_;
  timer_.cancel();
  if (timeout_ns < 0) return;
  timer_.expires_after(std::chrono::nanoseconds(timeout_ns));
  timer_.async_wait([self = shared_from_this(), gen = park_gen_](boost::system::error_code ec) {
    if (ec || self->closed_ || !self->park_ || self->park_gen_ != gen) return;
    self->park_->obj->on_timeout(*self);
  });
}

void Conn::complete_ok(const std::function<void(Writer&)>& body) { complete(proto::Status::ok, body); }

void Conn::complete_error(const ErrorInfo& e) {
  complete(proto::Status::error, [&](Writer& w) { proto::write_error(w, e); });
}

void Conn::complete(proto::Status status, const std::function<void(Writer&)>& body) {
  bool quiet = park_ && park_->quiet;
  park_.reset();
  ++park_gen_;
  timer_.cancel();
  if (closed_) return;
  if (python_) {
    Bytes scratch;
    Writer w(scratch);
    body(w);
    Reader r(scratch);
    send_python(python_reply(status, r, std::exchange(py_answer_, {})));
  } else if (!quiet || status != proto::Status::ok) {
    std::size_t start = begin_frame();
    Writer w(out_);
    w.u8(quiet ? kQuietError : static_cast<std::uint8_t>(status));
    body(w);
    end_frame(start);
  }
  // The requests that queued up behind the parked one run next, outside the object's handler.
  if (!resume_queued_) {
    resume_queued_ = true;
    server_.queue_resume(shared_from_this());
  }
}

void Conn::send_python(const py::Object& reply) {
  std::size_t start = begin_frame();
  py::dumps_append(out_, reply);
  end_frame(start);
}

void Conn::send_python_pickle(std::span<const std::byte> pickle) { send_frame(pickle); }

void Conn::send_error_and_close(const ErrorInfo& e) {
  if (closed_ || closing_) return;
  if (python_) {
    send_python(py::Object::tuple({py::Object("#TRACEBACK"), py::Object("mpx server: " + e.message + "\n")}));
    closing_ = true;
    flush();
    return;
  }
  std::size_t start = begin_frame();
  Writer w(out_);
  w.u8(static_cast<std::uint8_t>(proto::Status::error));
  proto::write_error(w, e);
  end_frame(start);
  closing_ = true;
  flush();
}

void Conn::close_now() {
  if (closed_) return;
  closed_ = true;
  timer_.cancel();
  pending_timer_.cancel();
  if (park_ && park_->obj) park_->obj->drop_waiter(*this);
  park_.reset();
  backlog_.clear();
  for (std::uint64_t oid : holdings_)
    if (Obj* o = server_.find(oid)) o->release_held(*this);
  holdings_.clear();
  boost::system::error_code ignored;
  socket_.shutdown(Socket::shutdown_both, ignored);
  socket_.close(ignored);
  server_.conn_closed(*this);
}

void Conn::drain() {
  if (closed_ || closing_) return;
  if (phase_ != Phase::ready) {
    close_now();
    return;
  }
  if (park_ && park_->obj) {
    park_->obj->drop_waiter(*this);
    complete_error(make_error(proto::ErrorCode::connection_closed, "mpx: the manager is shutting down"));
  }
  backlog_.clear();
  backlog_bytes_ = 0;
  closing_ = true;
  flush();
}

void Conn::send_frame(std::span<const std::byte> payload) { proto::append_frame(out_, payload); }

std::size_t Conn::begin_frame() { return proto::begin_frame(out_); }

void Conn::end_frame(std::size_t start) { proto::end_frame(out_, start); }

void Conn::flush() {
  if (closed_) return;
  if (write_in_flight_) {
    note_output();
    return;
  }
  // Replies almost always fit the socket buffer: send them now, which spares the asynchronous
  // write's completion and the scheduler round it costs on every request. Only what the
  // socket does not take waits for it to become writable.
  std::size_t sent = 0;
  while (sent < out_.size()) {
    ssize_t n =
        ::send(socket_.native_handle(), out_.data() + sent, out_.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    } else {
      close_now();
      return;
    }
  }
  if (sent == out_.size()) {
    out_.clear();
    // One huge reply should not pin its buffer for the connection's lifetime.
    if (out_.capacity() > server_.options().max_pending_bytes) Bytes().swap(out_);
    if (closing_) {
      close_now();
      return;
    }
    note_output();
    return;
  }
  out_.erase(out_.begin(), out_.begin() + static_cast<std::ptrdiff_t>(sent));
  std::swap(out_, writing_);
  out_.clear();
  write_in_flight_ = true;
  note_output();
  boost::asio::async_write(socket_, boost::asio::buffer(writing_),
                           [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                             self->write_in_flight_ = false;
                             self->writing_.clear();
                             if (self->writing_.capacity() > self->server_.options().max_pending_bytes)
                               Bytes().swap(self->writing_);
                             if (self->closed_) return;
                             if (ec) {
                               self->close_now();
                               return;
                             }
                             self->flush();
                           });
}

// ---------------------------------------------------------------------------------------
// ObjectServerImpl

namespace {
// The default connection cap leaves descriptors for the listener, logging and the objects'
// own needs, so the cap is met before accept() runs out of descriptors.
// What each ObjectServerImpl::Event says in the log, in the enum's order.
constexpr const char* kNoteText[] = {
    "failed authkey handshake",
    "handshake stalled past the timeout, closed",
    "handshake dropped from the full handshake queue for a newer connection",
    "connection refused at the connection cap",
    "accept() failed",
    "closed with too many replies unread for too long",
    "refused a Python client's request",
};

std::size_t default_max_connections() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 960;
  rlim_t soft = rl.rlim_cur == RLIM_INFINITY ? rlim_t{1} << 20 : rl.rlim_cur;
  return soft > 256 ? static_cast<std::size_t>(soft - 64) : static_cast<std::size_t>(soft * 3 / 4);
}
}  // namespace

ObjectServerImpl::ObjectServerImpl(boost::asio::io_context& io, ServerOptions options)
    : io_(io),
      options_(std::move(options)),
      max_connections_(options_.max_connections ? options_.max_connections : default_max_connections()) {
  if (options_.max_handshakes == 0) options_.max_handshakes = 1;
}

ObjectServerImpl::~ObjectServerImpl() {
  stop();
  *alive_ = false;
  if (reserve_fd_ >= 0) ::close(reserve_fd_);
}

void ObjectServerImpl::note(Event e, std::string detail) {
  auto& n = notes_[static_cast<std::size_t>(e)];
  auto now = std::chrono::steady_clock::now();
  if (n.suppressed == 0 && now - n.last_line >= std::chrono::seconds(1)) {
    n.last_line = now;
    logger().warn("manager: {} ({})", kNoteText[static_cast<std::size_t>(e)], detail);
    return;
  }
  ++n.suppressed;
  n.detail = std::move(detail);
  if (notes_armed_) return;
  notes_armed_ = true;
  if (!notes_timer_) notes_timer_ = std::make_unique<boost::asio::steady_timer>(io_);
  notes_timer_->expires_at(n.last_line + std::chrono::seconds(1));
  notes_timer_->async_wait([this, alive = alive_](boost::system::error_code ec) {
    if (ec || !*alive) return;
    notes_armed_ = false;
    flush_notes();
  });
}

// One summary line per kind of event that happened since its last line.
void ObjectServerImpl::flush_notes() {
  auto now = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < notes_.size(); ++i) {
    auto& n = notes_[i];
    if (n.suppressed == 0) continue;
    auto secs = std::chrono::duration<double>(now - n.last_line).count();
    logger().warn("manager: {}: {} more in the last {:.1f} s (last: {})", kNoteText[i], n.suppressed, secs,
                  n.detail);
    n.suppressed = 0;
    n.last_line = now;
  }
}

void ObjectServerImpl::accept_on(int listen_fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(listen_fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    ::close(listen_fd);
    throw ConnectionError("mpx: the manager's listening socket is unusable");
  }
  tcp_ = ss.ss_family == AF_INET || ss.ss_family == AF_INET6;
  boost::asio::generic::stream_protocol protocol(ss.ss_family, tcp_ ? IPPROTO_TCP : 0);
  acceptor_ =
      std::make_unique<boost::asio::basic_socket_acceptor<boost::asio::generic::stream_protocol>>(io_);
  acceptor_->assign(protocol, listen_fd);
  // shed_waiting_connections() accepts directly and must not block.
  ::fcntl(listen_fd, F_SETFL, ::fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
  reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  do_accept();
}

void ObjectServerImpl::adopt(int fd, bool authenticated) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    ::close(fd);
    throw ConnectionError("mpx: cannot serve this descriptor");
  }
  boost::asio::generic::stream_protocol protocol(ss.ss_family, 0);
  Conn::Socket socket(io_);
  socket.assign(protocol, fd);
  std::uint64_t id = next_conn_++;
  auto c = std::make_shared<Conn>(*this, std::move(socket), id);
  conns_[id] = c;
  c->start(authenticated);
}

void ObjectServerImpl::do_accept() {
  if (stopping_ || !acceptor_) return;
  acceptor_->async_accept([this, alive = alive_](boost::system::error_code ec, Conn::Socket socket) {
    if (!*alive || stopping_ || ec == boost::asio::error::operation_aborted) return;
    if (ec) {
      on_accept_error(ec);
      return;
    }
    admit(std::move(socket));
    do_accept();
  });
}

// Out of descriptors (or kernel memory): the peers waiting in the backlog are accepted and
// closed at once, so they hear "no" instead of hanging, and accepting backs off rather than
// spinning on the same error.
void ObjectServerImpl::on_accept_error(const boost::system::error_code& ec) {
  note(Event::accept_failed, ec.message());
  int e = ec.value();
  if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) shed_waiting_connections();
  auto t = std::make_shared<boost::asio::steady_timer>(io_, std::chrono::milliseconds(20));
  t->async_wait([this, t, alive = alive_](boost::system::error_code) {
    if (*alive) do_accept();
  });
}

void ObjectServerImpl::shed_waiting_connections() {
  if (!acceptor_) return;
  if (reserve_fd_ >= 0) {
    ::close(reserve_fd_);
    reserve_fd_ = -1;
  }
  for (int i = 0; i < 256; ++i) {
    int fd = ::accept4(acceptor_->native_handle(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) break;
    ::close(fd);
  }
  reserve_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

void ObjectServerImpl::admit(Conn::Socket socket) {
  if (conns_.size() >= max_connections_) {
    note(Event::refused_at_cap, fmt::format("{} open", conns_.size()));
    boost::system::error_code ignored;
    socket.close(ignored);
    return;
  }
  // A full handshake queue gives up its oldest member: idle sockets cannot keep a real
  // client out, since a client that answers finishes long before its turn to be dropped.
  if (handshaking_.size() >= options_.max_handshakes) {
    std::uint64_t oldest = *handshaking_.begin();
    handshaking_.erase(handshaking_.begin());
    auto it = conns_.find(oldest);
    if (it != conns_.end())
      if (auto c = it->second.lock()) {
        note(Event::handshake_evicted, c->peer_description());
        c->close_now();
      }
  }
  if (tcp_) {
    int one = 1;
    ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  std::uint64_t id = next_conn_++;
  auto c = std::make_shared<Conn>(*this, std::move(socket), id);
  conns_[id] = c;
  handshaking_.insert(id);
  c->start();
}

void ObjectServerImpl::handshake_done(Conn& c) { handshaking_.erase(c.id()); }

void ObjectServerImpl::drain(std::chrono::milliseconds grace, std::function<void()> on_drained) {
  if (stopping_) return;
  stopping_ = true;
  on_drained_ = std::move(on_drained);
  if (acceptor_) {
    boost::system::error_code ignored;
    acceptor_->close(ignored);
  }
  drain_timer_ = std::make_unique<boost::asio::steady_timer>(io_, grace);
  drain_timer_->async_wait([this, alive = alive_](boost::system::error_code ec) {
    if (ec || !*alive) return;
    stop();
  });
  std::vector<std::shared_ptr<Conn>> conns;
  for (auto& [id, weak] : conns_)
    if (auto c = weak.lock()) conns.push_back(c);
  for (auto& c : conns) c->drain();
  if (conns_.empty()) stop();
}

void ObjectServerImpl::stop() {
  if (stopped_) return;
  stopped_ = true;
  stopping_ = true;
  if (drain_timer_) drain_timer_->cancel();
  if (acceptor_) {
    boost::system::error_code ignored;
    acceptor_->close(ignored);
  }
  resumes_.clear();
  handshaking_.clear();
  auto conns = std::move(conns_);
  conns_.clear();
  for (auto& [id, weak] : conns)
    if (auto c = weak.lock()) c->close_now();
  objects_.clear();
  names_.clear();
  sessions_.clear();
  if (notes_timer_) notes_timer_->cancel();
  flush_notes();
  if (auto f = std::exchange(on_drained_, nullptr)) f();
}

void ObjectServerImpl::request_shutdown() {
  if (options_.on_shutdown_request) boost::asio::post(io_, [f = options_.on_shutdown_request] { f(); });
}

// A completed parked request's connection resumes at the end of the current handler, not in a
// posted one: that spares a scheduler round (and its epoll_wait) on every lock hand-off, and
// the waiter's reply goes out before the server waits again.
void ObjectServerImpl::queue_resume(std::shared_ptr<Conn> c) {
  resumes_.push_back(std::move(c));
  if (batch_depth_ > 0 || resume_posted_) return;
  resume_posted_ = true;
  boost::asio::post(io_, [this, alive = alive_] {
    if (!*alive) return;
    resume_posted_ = false;
    Batch batch(*this);
  });
}

void ObjectServerImpl::run_resumes() {
  while (!resumes_.empty()) {
    std::vector<std::shared_ptr<Conn>> now;
    now.swap(resumes_);
    for (auto& c : now) c->resume();
  }
}

Obj* ObjectServerImpl::find(std::uint64_t oid) {
  auto it = objects_.find(oid);
  return it == objects_.end() ? nullptr : it->second.get();
}

Obj* ObjectServerImpl::find_named(std::string_view name) {
  auto it = names_.find(std::string(name));
  return it == names_.end() ? nullptr : find(it->second);
}

SessionRec* ObjectServerImpl::join_session(std::string token) {
  auto& s = sessions_[token];
  if (!s) {
    s = std::make_unique<SessionRec>();
    s->token = std::move(token);
  }
  ++s->connections;
  return s.get();
}

SessionRec* ObjectServerImpl::own_session(Conn& c) {
  if (!c.session_) c.session_ = join_session(fmt::format("python-connection-{}", c.id()));
  return c.session_;
}

void ObjectServerImpl::leave_session(SessionRec* s) {
  if (!s || --s->connections > 0) return;
  auto anonymous = std::move(s->anonymous);
  std::string token = s->token;
  sessions_.erase(token);
  for (std::uint64_t oid : anonymous) destroy(oid, "its creator disconnected");
}

void ObjectServerImpl::conn_closed(Conn& c) {
  if (stopped_) return;
  conns_.erase(c.id());
  handshaking_.erase(c.id());
  SessionRec* s = c.session_;
  c.session_ = nullptr;
  leave_session(s);
  if (stopping_ && conns_.empty()) stop();
}

void ObjectServerImpl::deliver_task(const std::string& token, TaskOutcome outcome) {
  auto it = sessions_.find(token);
  if (it == sessions_.end()) return;  // nobody left to tell
  auto& s = *it->second;
  if (!s.mailbox) s.mailbox = make_mailbox(*this);
  deliver_to_mailbox(*s.mailbox, std::move(outcome));
}

void ObjectServerImpl::destroy(std::uint64_t oid, const char* why) {
  auto it = objects_.find(oid);
  if (it == objects_.end()) return;
  std::unique_ptr<Obj> o = std::move(it->second);
  objects_.erase(it);
  if (!o->name().empty()) names_.erase(o->name());
  o->fail_waiters(
      make_error(proto::ErrorCode::state, std::string("mpx: the managed object is gone: ") + why));
}

namespace {
// Requests that carry no body: anything after the header is malformed.
bool takes_no_body(Op op) {
  switch (op) {
    case Op::dict_size:
    case Op::dict_keys:
    case Op::dict_values:
    case Op::dict_items:
    case Op::dict_clear:
    case Op::list_size:
    case Op::list_clear:
    case Op::list_snapshot:
    case Op::value_get:
    case Op::queue_size:
    case Op::queue_empty:
    case Op::queue_full:
    case Op::queue_task_done:
    case Op::sem_value:
    case Op::cond_notify_all:
    case Op::event_is_set:
    case Op::event_set:
    case Op::event_clear:
    case Op::barrier_reset:
    case Op::barrier_abort:
    case Op::barrier_parties:
    case Op::barrier_n_waiting:
    case Op::barrier_broken:
    case Op::shutdown:
      return true;
    default:
      return false;
  }
}
}  // namespace

void ObjectServerImpl::dispatch(Conn& c, Op op, std::uint64_t oid, Reader& r, Writer& w, bool& parked) {
  if (takes_no_body(op)) r.expect_end();
  switch (op) {
    case Op::hello:
      throw ProtocolError("mpx manager protocol: hello sent twice");
    case Op::open:
      open(c, r, w);
      return;
    case Op::erase_name: {
      std::string name(r.str());
      r.expect_end();
      bool existed = names_.count(name) != 0;
      if (existed) destroy(names_[name], "erased");
      w.boolean(existed);
      return;
    }
    case Op::ping:
      return;
    case Op::task_wait: {
      SessionRec* s = c.session();
      if (!s) throw StateError("mpx: no session");
      if (!s->mailbox) s->mailbox = make_mailbox(*this);
      parked = s->mailbox->handle(c, op, r, w);
      return;
    }
    case Op::shutdown:
      if (!options_.allow_remote_shutdown)
        throw StateError("mpx: this server does not take shutdown requests");
      request_shutdown();
      return;
    default:
      break;
  }
  Obj* o = find(oid);
  if (!o)
    throw StateError("mpx: no managed object #" + std::to_string(oid) +
                     " (it was erased, or its creator disconnected)");
  parked = o->handle(c, op, r, w);
}

void ObjectServerImpl::open(Conn& c, Reader& r, Writer& w) {
  auto kind = static_cast<Kind>(r.u8());
  std::string name(r.str());
  std::string tag(r.str());
  if (proto::kind_name(kind) == "?") throw ProtocolError("mpx manager protocol: unknown object kind");
  if (!name.empty()) {
    auto it = names_.find(name);
    if (it != names_.end()) {
      Obj* o = find(it->second);
      if (o->kind() != kind || (o->tag() != tag && !adopt_python_values(*o, tag)))
        throw TypeMismatch("mpx: managed object '" + name + "' is a " +
                           std::string(proto::kind_name(o->kind())) + "<" + o->tag() + ">, not a " +
                           std::string(proto::kind_name(kind)) + "<" + tag + ">");
      w.u64(o->id());
      w.boolean(false);
      return;
    }
  }
  std::uint64_t id = next_oid_;
  std::unique_ptr<Obj> obj;
  if (kind == Kind::object) {
    obj = make_registered(*this, id, tag, name, r, options_.types.get());
  } else if (kind == Kind::task_queue) {
    if (name.empty()) throw ValueError("mpx: a task queue needs a name");
    r.expect_end();
    obj = make_task_queue(*this, id, tag, name);
  } else {
    obj = make_builtin(*this, id, kind, tag, name, r);
  }
  ++next_oid_;
  objects_[id] = std::move(obj);
  if (!name.empty())
    names_[name] = id;
  else if (c.session())
    c.session()->anonymous.push_back(id);
  w.u64(id);
  w.boolean(true);
}

}  // namespace server
}  // namespace mpx::detail
