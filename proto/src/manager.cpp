#include <mpx/proto/manager.hpp>

namespace mpx::proto {

std::string_view kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::dict:
      return "dict";
    case Kind::list:
      return "list";
    case Kind::value:
      return "value";
    case Kind::namespace_:
      return "namespace";
    case Kind::queue:
      return "queue";
    case Kind::joinable_queue:
      return "joinable_queue";
    case Kind::lock:
      return "lock";
    case Kind::rlock:
      return "rlock";
    case Kind::semaphore:
      return "semaphore";
    case Kind::bounded_semaphore:
      return "bounded_semaphore";
    case Kind::condition:
      return "condition";
    case Kind::event:
      return "event";
    case Kind::barrier:
      return "barrier";
    case Kind::object:
      return "object";
    case Kind::task_queue:
      return "task_queue";
  }
  return "?";
}

void Reader::fail(const char* what) { throw ProtocolError(std::string("mpx manager protocol: ") + what); }

void write_error(Writer& w, const ErrorInfo& e) {
  w.u8(static_cast<std::uint8_t>(e.code));
  w.str(e.type_name);
  w.str(e.message);
  w.i32(e.exitcode);
}

ErrorInfo read_error(Reader& r) {
  ErrorInfo e;
  e.code = static_cast<ErrorCode>(r.u8());
  e.type_name = std::string(r.str());
  e.message = std::string(r.str());
  e.exitcode = r.i32();
  return e;
}

ErrorInfo error_from_exception(const std::exception& e) {
  ErrorInfo info;
  info.message = e.what();
  // Most derived first: ConnectionClosed before ConnectionError.
  if (auto* rem = dynamic_cast<const RemoteError*>(&e)) {
    info.code = ErrorCode::remote;
    info.type_name = rem->type_name();
    info.message = rem->message();
  } else if (auto* wl = dynamic_cast<const WorkerLost*>(&e)) {
    info.code = ErrorCode::worker_lost;
    info.exitcode = wl->exitcode();
  } else if (dynamic_cast<const TimeoutError*>(&e)) {
    info.code = ErrorCode::timeout;
  } else if (dynamic_cast<const Empty*>(&e)) {
    info.code = ErrorCode::empty;
  } else if (dynamic_cast<const Full*>(&e)) {
    info.code = ErrorCode::full;
  } else if (dynamic_cast<const KeyError*>(&e)) {
    info.code = ErrorCode::key;
  } else if (dynamic_cast<const ValueError*>(&e)) {
    info.code = ErrorCode::value;
  } else if (dynamic_cast<const StateError*>(&e)) {
    info.code = ErrorCode::state;
  } else if (dynamic_cast<const IndexError*>(&e)) {
    info.code = ErrorCode::index;
  } else if (dynamic_cast<const ConnectionClosed*>(&e)) {
    info.code = ErrorCode::connection_closed;
  } else if (dynamic_cast<const ConnectionError*>(&e)) {
    info.code = ErrorCode::connection;
  } else if (dynamic_cast<const AuthenticationError*>(&e)) {
    info.code = ErrorCode::authentication;
  } else if (dynamic_cast<const ProtocolError*>(&e)) {
    info.code = ErrorCode::protocol;
  } else if (dynamic_cast<const TypeMismatch*>(&e)) {
    info.code = ErrorCode::type_mismatch;
  } else if (dynamic_cast<const BrokenBarrierError*>(&e)) {
    info.code = ErrorCode::broken_barrier;
  } else {
    info.code = ErrorCode::error;
  }
  return info;
}

void throw_error(const ErrorInfo& e) {
  const std::string& m = e.message;
  switch (e.code) {
    case ErrorCode::timeout:
      throw TimeoutError(m);
    case ErrorCode::empty:
      throw Empty(m);
    case ErrorCode::full:
      throw Full(m);
    case ErrorCode::key:
      throw KeyError(m);
    case ErrorCode::value:
      throw ValueError(m);
    case ErrorCode::state:
      throw StateError(m);
    case ErrorCode::index:
      throw IndexError(m);
    case ErrorCode::connection:
      throw ConnectionError(m);
    case ErrorCode::connection_closed:
      throw ConnectionClosed(m);
    case ErrorCode::authentication:
      throw AuthenticationError(m);
    case ErrorCode::protocol:
      throw ProtocolError(m);
    case ErrorCode::type_mismatch:
      throw TypeMismatch(m);
    case ErrorCode::broken_barrier:
      throw BrokenBarrierError(m);
    case ErrorCode::remote:
      throw RemoteError(e.type_name, m);
    case ErrorCode::worker_lost:
      throw WorkerLost(m, e.exitcode);
    case ErrorCode::error:
      break;
  }
  throw Error(m);
}

void write_hello(Writer& w, std::span<const std::byte, kSessionTokenSize> token) {
  w.raw(kManagerMagic.data(), kManagerMagic.size());
  w.u32(kManagerVersion);
  w.raw(token.data(), token.size());
}

}  // namespace mpx::proto
