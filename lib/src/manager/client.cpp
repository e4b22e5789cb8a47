// The client side of the manager protocol: sessions, per-thread connections, proxies'
// non-template members.
#include <mpx/connection.hpp>
#include <mpx/managers.hpp>

#include "common/log.hpp"
#include "ipc/wire_errors.hpp"
#include "manager/tasks.hpp"

#include <mpx/proto/frame.hpp>

#include <fcntl.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <map>
#include <unordered_set>

namespace mpx::detail {

std::atomic<std::uint64_t> manager_fork_generation{0};

struct Session::Private {};

std::exception_ptr error_to_exception(const proto::ErrorInfo& e) {
  try {
    throw_error(e);
  } catch (...) {
    return std::current_exception();
  }
}

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// ---------------------------------------------------------------------------------------
// The process-wide table of sessions, and the fork handlers that keep a child off its
// parent's sockets.

struct Registry {
  std::mutex m;
  std::map<std::pair<std::string, std::string>, std::weak_ptr<Session>> by_key;
  std::unordered_set<Session*> all;
};

Registry& registry() {
  static auto* r = new Registry;  // never destroyed: sessions may outlive static destruction
  return *r;
}

void fork_prepare() { registry().m.lock(); }
void fork_parent() { registry().m.unlock(); }
void fork_child() {
  auto& r = registry();
  manager_fork_generation.fetch_add(1, std::memory_order_relaxed);
  for (Session* s : r.all) s->abandon_after_fork();
  r.by_key.clear();
  r.m.unlock();
}

void install_fork_handlers() {
  static std::once_flag once;
  std::call_once(once, [] { ::pthread_atfork(fork_prepare, fork_parent, fork_child); });
}

std::atomic<std::uint64_t> next_serial{1};

// Lets each session know when a thread that used it ends.
struct ThreadHook {
  std::vector<std::weak_ptr<Session>> sessions;
  ~ThreadHook() {
    auto me = std::this_thread::get_id();
    for (auto& w : sessions)
      if (auto s = w.lock()) s->thread_exited(me);
  }
};

std::shared_ptr<Session> get_locked(const Address& address, const std::string& authkey) {
  auto& r = registry();
  auto key = std::make_pair(address.str(), authkey);
  auto it = r.by_key.find(key);
  if (it != r.by_key.end())
    if (auto s = it->second.lock()) return s;
  auto s = std::make_shared<Session>(Session::Private{}, address, authkey);
  r.by_key[key] = s;
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// ClientConn

ClientConn::ClientConn(const Address& address, const std::string& authkey, std::span<const std::byte> token)
    : owner_(std::this_thread::get_id()), in_(64 * 1024) {
  {
    Connection c = Client(address, authkey.empty() ? std::nullopt : std::optional<std::string>(authkey));
    fd_ = ::fcntl(c.fileno(), F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) throw ConnectionError("mpx: cannot keep the manager connection: " + errno_text(errno));
  }
  try {
    proto::Writer w = begin(proto::Op::hello, 0);
    proto::write_hello(w, std::span<const std::byte, proto::kSessionTokenSize>(token.data(), token.size()));
    auto r = call();
    auto magic = r.take(proto::kManagerMagic.size());
    std::uint32_t version = r.u32();
    if (std::memcmp(magic.data(), proto::kManagerMagic.data(), magic.size()) != 0 ||
        version != proto::kManagerVersion)
      throw ProtocolError("mpx: the server at " + address.str() +
                          " does not speak manager protocol version " +
                          std::to_string(proto::kManagerVersion));
  } catch (...) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    throw;
  }
}

ClientConn::~ClientConn() {
  send_queued_noexcept();
  close_and_fail_pending("mpx: the manager connection was closed");
}

void ClientConn::send_queued_noexcept() noexcept {
  if (in_request_) abandon();
  std::size_t off = 0;
  while (fd_ >= 0 && off < out_.size()) {
    ssize_t n = ::send(fd_, out_.data() + off, out_.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  out_.clear();
}

void ClientConn::abandon_after_fork() noexcept {
  close_and_fail_pending("mpx: a pipelined call made before fork() cannot complete");
}

void ClientConn::close_and_fail_pending(const char* why) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  out_.clear();
  in_request_ = false;
  std::exception_ptr error;
  try {
    error = std::make_exception_ptr(ConnectionClosed(why));
  } catch (...) {
    error = std::current_exception();  // out of memory: that is the error then
  }
  for (auto& p : pending_)
    if (p.slot) {
      p.slot->error = error;
      p.slot->done = true;
      p.slot->conn = nullptr;
    }
  pending_.clear();
}

proto::Writer ClientConn::begin(proto::Op op, std::uint64_t oid) {
  if (fd_ < 0) throw ConnectionClosed("mpx: the connection to the manager is lost");
  if (in_request_) abandon();
  frame_start_ = proto::begin_frame(out_);
  proto::Writer w(out_);
  w.u8(static_cast<std::uint8_t>(op));
  w.u64(oid);
  in_request_ = true;
  return w;
}

void ClientConn::abandon() noexcept {
  if (!in_request_) return;
  out_.resize(frame_start_);
  in_request_ = false;
}

void ClientConn::end_frame() {
  proto::end_frame(out_, frame_start_);
  in_request_ = false;
}

void ClientConn::fail(const Error& e) {
  close_and_fail_pending(e.what());
  throw ConnectionClosed(e.what());
}

void ClientConn::send_all() {
  std::size_t off = 0;
  while (off < out_.size()) {
    ssize_t n = ::send(fd_, out_.data() + off, out_.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(ConnectionClosed("mpx: lost the connection to the manager: " + errno_text(errno)));
    }
    off += static_cast<std::size_t>(n);
  }
  out_.clear();
}

std::span<const std::byte> ClientConn::read_frame() {
  for (;;) {
    std::span<const std::byte> avail(in_.data() + in_pos_, in_end_ - in_pos_);
    std::size_t need;
    if (auto f = with_mpx_errors([&] { return proto::peek_frame(avail); })) {
      if (f->complete()) {
        in_pos_ += static_cast<std::size_t>(f->size());
        if (in_pos_ == in_end_) in_pos_ = in_end_ = 0;  // the next read starts at the front
        return f->payload;
      }
      need = static_cast<std::size_t>(f->size());
    } else {
      need = proto::kMaxHeaderSize;
    }
    if (in_.size() - in_pos_ < need) {
      if (in_pos_ > 0) {
        std::memmove(in_.data(), in_.data() + in_pos_, in_end_ - in_pos_);
        in_end_ -= in_pos_;
        in_pos_ = 0;
      }
      if (in_.size() < need) in_.resize(std::max(need, in_.size() * 2));
    }
    // A reply usually comes back within a cross-CPU wake-up's time: polling for it that long
    // saves this thread the wake-up, as the synchronize primitives' waits do.
    AdaptiveSpin spin(reply_spin_);
    std::byte* to = in_.data() + in_end_;
    const std::size_t room = in_.size() - in_end_;
    ssize_t n = -1;
    int err = EAGAIN;  // spin() may decide not to poll at all
    spin.spin_polling(
        [&] {
          n = ::recv(fd_, to, room, MSG_DONTWAIT);
          err = errno;
          return n >= 0 || (err != EAGAIN && err != EWOULDBLOCK);
        },
        Deadline::never());
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
      n = ::recv(fd_, to, room, 0);
      err = errno;
    }
    if (n < 0) {
      if (err == EINTR) continue;
      fail(ConnectionClosed("mpx: lost the connection to the manager: " + errno_text(err)));
    }
    if (n == 0) fail(ConnectionClosed("mpx: the manager closed the connection"));
    in_end_ += static_cast<std::size_t>(n);
  }
}

void ClientConn::deliver(const std::shared_ptr<ReplySlot>& slot, std::span<const std::byte> frame) {
  proto::Reader r(frame, &manager_reply_error);
  auto status = static_cast<proto::Status>(r.u8());
  std::exception_ptr error;
  if (status != proto::Status::ok) {
    error = error_to_exception(proto::read_error(r));
  } else if (slot) {
    try {
      slot->on_reply(r);
    } catch (...) {
      error = std::current_exception();
    }
  }
  if (slot) {
    slot->error = error;
    slot->done = true;
    slot->conn = nullptr;
  }
  // Nobody holds the Deferred: its error must not vanish.
  if (error && (!slot || slot.use_count() == 1) && !unobserved_) unobserved_ = error;
}

bool ClientConn::consume(std::span<const std::byte> frame) {
  bool quiet_error = !frame.empty() && static_cast<std::uint8_t>(frame[0]) == kQuietError;
  while (!pending_.empty()) {
    Pending p = std::move(pending_.front());
    pending_.pop_front();
    if (p.quiet && !quiet_error) {
      // A reply to a later request: this quiet one succeeded.
      if (p.slot) {
        p.slot->done = true;
        p.slot->conn = nullptr;
      }
      continue;
    }
    if (!p.quiet && quiet_error) fail(ProtocolError("mpx: the manager answered a request out of order"));
    deliver(p.slot, frame);
    return true;
  }
  if (quiet_error) fail(ProtocolError("mpx: the manager reported an error for no request"));
  return false;
}

void ClientConn::cap_quiet_tail() {
  if (pending_.empty() || !pending_.back().quiet) return;
  begin(proto::Op::ping, 0);
  end_frame();
  pending_.push_back({nullptr, false});
}

void ClientConn::read_pending(std::size_t keep) {
  while (pending_.size() > keep)
    if (!consume(read_frame())) fail(ProtocolError("mpx: the manager sent a reply nobody asked for"));
}

void ClientConn::throw_unobserved() {
  if (!unobserved_) return;
  auto e = std::exchange(unobserved_, nullptr);
  std::rethrow_exception(e);
}

proto::Reader ClientConn::call() {
  end_frame();
  send_all();
  std::span<const std::byte> frame;
  do frame = read_frame();
  while (consume(frame));
  proto::Reader r(frame, &manager_reply_error);
  auto status = static_cast<proto::Status>(r.u8());
  if (status != proto::Status::ok) throw_error(proto::read_error(r));
  throw_unobserved();
  return r;
}

void ClientConn::call_async(std::shared_ptr<ReplySlot> slot, bool quiet) {
  if (quiet) {
    // The id's top byte is the last of its 8 little-endian bytes, after the op byte.
    out_[proto::payload_start(frame_start_) + 8] |= std::byte{0x80};
  }
  end_frame();
  if (slot) {
    slot->conn = this;
    slot->quiet = quiet;
  }
  pending_.push_back({std::move(slot), quiet});
  // Bound what piles up on both sides: send in large writes, and collect replies now and
  // then so neither this process nor the server buffers without limit.
  if (out_.size() >= 256 * 1024) send_all();
  if (pending_.size() >= 8192) {
    cap_quiet_tail();
    send_all();
    read_pending(pending_.size() / 2);
  }
}

void ClientConn::flush() {
  cap_quiet_tail();
  send_all();
  read_pending(0);
  throw_unobserved();
}

void ClientConn::wait(ReplySlot& slot) {
  if (slot.done) return;
  if (slot.quiet) cap_quiet_tail();
  send_all();
  while (!slot.done)
    if (!consume(read_frame())) fail(ProtocolError("mpx: the manager sent a reply nobody asked for"));
}

// ---------------------------------------------------------------------------------------
// Session

Session::Session(const Private&, Address address, std::string authkey)
    : address_(std::move(address)),
      authkey_(std::move(authkey)),
      serial_(next_serial.fetch_add(1)),
      generation_(manager_fork_generation.load()) {
  if (RAND_bytes(reinterpret_cast<unsigned char*>(token_.data()), static_cast<int>(token_.size())) != 1)
    throw Error("mpx: no randomness for a session token");
  registry().all.insert(this);
}

Session::~Session() {
  {
    std::lock_guard lock(registry().m);
    registry().all.erase(this);
  }
  if (tasks_) tasks_->stop();
  conns_.clear();
  anchor_.reset();
}

std::shared_ptr<Session> Session::get(const Address& address, const std::string& authkey) {
  install_fork_handlers();
  std::lock_guard lock(registry().m);
  return get_locked(address, authkey);
}

Session& Session::successor() {
  std::shared_ptr<Session> next;
  {
    std::lock_guard lock(registry().m);
    if (!successor_ || successor_->generation_ != manager_fork_generation.load())
      successor_ = get_locked(address_, authkey_);
    next = successor_;
  }
  return *next;  // kept alive by successor_ while this session lives
}

ClientConn& Session::conn_slow(Cache& cache) {
  auto me = std::this_thread::get_id();
  ClientConn* c = nullptr;
  {
    std::lock_guard lock(m_);
    auto it = conns_.find(me);
    if (it != conns_.end()) c = it->second.get();
  }
  if (!c) {
    auto fresh = std::make_unique<ClientConn>(address_, authkey_, token_);
    std::lock_guard lock(m_);
    c = conns_.emplace(me, std::move(fresh)).first->second.get();
    thread_local ThreadHook hook;
    hook.sessions.push_back(weak_from_this());
  }
  cache.serial = serial_;
  cache.conn = c;
  return *c;
}

void Session::thread_exited(std::thread::id id) noexcept {
  std::unique_ptr<ClientConn> c;
  std::lock_guard lock(m_);
  auto it = conns_.find(id);
  if (it == conns_.end()) return;
  c = std::move(it->second);
  conns_.erase(it);
  c->send_queued_noexcept();
  if (!anchor_ && !c->broken()) anchor_ = std::move(c);
}

void Session::abandon_after_fork() noexcept {
  // Another thread of the parent may have held the mutex at fork time; in the child no one does.
  new (&m_) std::mutex;
  for (auto& [id, c] : conns_) c->abandon_after_fork();
  if (anchor_) anchor_->abandon_after_fork();
  if (tasks_) tasks_->abandon_after_fork();
}

// ---------------------------------------------------------------------------------------
// Proxies

void ProxyCore::expect(proto::Kind kind, const std::string& tag) const {
  if (kind_ != kind || tag_ != tag)
    throw TypeMismatch("mpx: received a proxy to a " + std::string(proto::kind_name(kind_)) + "<" + tag_ +
                       "> as a " + std::string(proto::kind_name(kind)) + "<" + tag + ">");
}

// A negative duration is a time already past (as for std::chrono waits, and so that
// try_lock_until with a past time point answers at once): it does not wait. It never goes out
// negative: on the wire -1 means forever and other negatives are refused.
std::int64_t wire_timeout(bool block, Timeout timeout) noexcept {
  if (!block) return 0;
  if (!timeout) return proto::kForever;
  return std::max<std::int64_t>(0, timeout->count());
}

std::uint32_t wire_u32(std::uint64_t value, const char* what) {
  if (value > std::numeric_limits<std::uint32_t>::max())
    throw ValueError("mpx: " + std::string(what) + " must be at most " +
                     std::to_string(std::numeric_limits<std::uint32_t>::max()) + ", not " +
                     std::to_string(value) + " (a negative number converts to a huge one)");
  return static_cast<std::uint32_t>(value);
}

ProxyCore open_object(const std::shared_ptr<Session>& session, const std::shared_ptr<void>& keepalive,
                      proto::Kind kind, std::string_view name, const std::string& tag,
                      const std::function<void(proto::Writer&)>& init) {
  Request req(session->current().conn(), proto::Op::open, 0);
  req.w().u8(static_cast<std::uint8_t>(kind));
  req.w().str(name);
  req.w().str(tag);
  if (init) init(req.w());
  auto r = req.call();
  std::uint64_t oid = r.u64();
  return ProxyCore(session, keepalive, oid, kind, tag, std::string(name));
}

}  // namespace mpx::detail

namespace mpx {

using detail::Request;
using proto::Op;

namespace {

// The calls of the non-template proxies: an op with no body, one u32, or a timeout.
proto::Reader call(const detail::ProxyCore& core, Op op) {
  Request req(core, op);
  return req.call();
}
proto::Reader call_u32(const detail::ProxyCore& core, Op op, std::uint32_t n) {
  Request req(core, op);
  req.w().u32(n);
  return req.call();
}
proto::Reader call_timed(const detail::ProxyCore& core, Op op, Timeout timeout) {
  Request req(core, op);
  req.w().i64(detail::wire_timeout(true, timeout));
  return req.call();
}
proto::Reader call_str(const detail::ProxyCore& core, Op op, std::string_view s) {
  Request req(core, op);
  req.w().str(s);
  return req.call();
}

}  // namespace

bool NamespaceProxy::contains(std::string_view name) const {
  return call_str(core_, Op::ns_contains, name).boolean();
}
bool NamespaceProxy::erase(std::string_view name) { return call_str(core_, Op::ns_erase, name).boolean(); }

namespace detail {

void LockableProxy::check(const ProxyCore& c) {
  switch (c.kind()) {
    case proto::Kind::lock:
    case proto::Kind::rlock:
    case proto::Kind::semaphore:
    case proto::Kind::bounded_semaphore:
    case proto::Kind::condition:
      return;
    default:
      c.expect(proto::Kind::lock, "");  // throws TypeMismatch, naming what it is
  }
}

bool LockableProxy::acquire(bool block, Timeout timeout) {
  Request req(core_, Op::acquire);
  req.w().i64(wire_timeout(block, timeout));
  return req.call().boolean();
}
void LockableProxy::release() { release_n(1); }
void LockableProxy::release_n(std::uint64_t n) {
  if (n == 0) throw ValueError("mpx: a semaphore release count must be at least 1");
  call_u32(core_, Op::release, wire_u32(n, "a semaphore release count"));
}

Deferred<bool> LockableProxy::acquire_async(bool block, Timeout timeout) {
  Request req(core_, Op::acquire);
  req.w().i64(wire_timeout(block, timeout));
  return send_async<bool>(req, &decode_bool);
}
Deferred<void> LockableProxy::release_async() {
  Request req(core_, Op::release);
  req.w().u32(1);
  return send_async<void>(req, &decode_void);
}

}  // namespace detail

void SemaphoreProxy::release(std::uint64_t n) { release_n(n); }

unsigned SemaphoreProxy::get_value() const { return call(core_, Op::sem_value).u32(); }

bool ConditionProxy::wait(Timeout timeout) { return call_timed(core_, Op::cond_wait, timeout).boolean(); }
void ConditionProxy::notify(std::uint64_t n) {
  call_u32(core_, Op::cond_notify, detail::wire_u32(n, "a notify count"));
}
void ConditionProxy::notify_all() { call(core_, Op::cond_notify_all); }

bool EventProxy::is_set() const { return call(core_, Op::event_is_set).boolean(); }
void EventProxy::set() { call(core_, Op::event_set); }
void EventProxy::clear() { call(core_, Op::event_clear); }
bool EventProxy::wait(Timeout timeout) { return call_timed(core_, Op::event_wait, timeout).boolean(); }

unsigned BarrierProxy::wait(Timeout timeout) { return call_timed(core_, Op::barrier_wait, timeout).u32(); }
void BarrierProxy::reset() { call(core_, Op::barrier_reset); }
void BarrierProxy::abort() { call(core_, Op::barrier_abort); }
unsigned BarrierProxy::parties() const { return call(core_, Op::barrier_parties).u32(); }
unsigned BarrierProxy::n_waiting() const { return call(core_, Op::barrier_n_waiting).u32(); }
bool BarrierProxy::broken() const { return call(core_, Op::barrier_broken).boolean(); }

}  // namespace mpx
