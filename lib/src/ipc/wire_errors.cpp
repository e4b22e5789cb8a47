#include "ipc/wire_errors.hpp"

#include <string>

namespace mpx::detail {

void throw_as_mpx_error(const proto::WireError& e) {
  if (dynamic_cast<const proto::AuthenticationError*>(&e)) throw AuthenticationError(e.what());
  throw ProtocolError(e.what());
}

void manager_reply_error(const char* what) {
  throw ProtocolError(std::string("mpx manager protocol: ") + what);
}

proto::ErrorInfo error_from_exception(const std::exception& e) {
  proto::ErrorInfo info;
  info.message = e.what();
  // Most derived first: ConnectionClosed before ConnectionError.
  if (auto* rem = dynamic_cast<const RemoteError*>(&e)) {
    info.code = proto::ErrorCode::remote;
    info.type_name = rem->type_name();
    info.message = rem->message();
  } else if (auto* wl = dynamic_cast<const WorkerLost*>(&e)) {
    info.code = proto::ErrorCode::worker_lost;
    info.exitcode = wl->exitcode();
  } else if (dynamic_cast<const TimeoutError*>(&e)) {
    info.code = proto::ErrorCode::timeout;
  } else if (dynamic_cast<const Empty*>(&e)) {
    info.code = proto::ErrorCode::empty;
  } else if (dynamic_cast<const Full*>(&e)) {
    info.code = proto::ErrorCode::full;
  } else if (dynamic_cast<const KeyError*>(&e)) {
    info.code = proto::ErrorCode::key;
  } else if (dynamic_cast<const ValueError*>(&e)) {
    info.code = proto::ErrorCode::value;
  } else if (dynamic_cast<const StateError*>(&e)) {
    info.code = proto::ErrorCode::state;
  } else if (dynamic_cast<const IndexError*>(&e)) {
    info.code = proto::ErrorCode::index;
  } else if (dynamic_cast<const ConnectionClosed*>(&e)) {
    info.code = proto::ErrorCode::connection_closed;
  } else if (dynamic_cast<const ConnectionError*>(&e)) {
    info.code = proto::ErrorCode::connection;
  } else if (dynamic_cast<const AuthenticationError*>(&e) ||
             dynamic_cast<const proto::AuthenticationError*>(&e)) {
    info.code = proto::ErrorCode::authentication;
  } else if (dynamic_cast<const ProtocolError*>(&e) || dynamic_cast<const proto::WireError*>(&e)) {
    info.code = proto::ErrorCode::protocol;
  } else if (dynamic_cast<const TypeMismatch*>(&e)) {
    info.code = proto::ErrorCode::type_mismatch;
  } else if (dynamic_cast<const BrokenBarrierError*>(&e)) {
    info.code = proto::ErrorCode::broken_barrier;
  } else {
    info.code = proto::ErrorCode::error;
  }
  return info;
}

void throw_error(const proto::ErrorInfo& e) {
  const std::string& m = e.message;
  switch (e.code) {
    case proto::ErrorCode::timeout:
      throw TimeoutError(m);
    case proto::ErrorCode::empty:
      throw Empty(m);
    case proto::ErrorCode::full:
      throw Full(m);
    case proto::ErrorCode::key:
      throw KeyError(m);
    case proto::ErrorCode::value:
      throw ValueError(m);
    case proto::ErrorCode::state:
      throw StateError(m);
    case proto::ErrorCode::index:
      throw IndexError(m);
    case proto::ErrorCode::connection:
      throw ConnectionError(m);
    case proto::ErrorCode::connection_closed:
      throw ConnectionClosed(m);
    case proto::ErrorCode::authentication:
      throw AuthenticationError(m);
    case proto::ErrorCode::protocol:
      throw ProtocolError(m);
    case proto::ErrorCode::type_mismatch:
      throw TypeMismatch(m);
    case proto::ErrorCode::broken_barrier:
      throw BrokenBarrierError(m);
    case proto::ErrorCode::remote:
      throw RemoteError(e.type_name, m);
    case proto::ErrorCode::worker_lost:
      throw WorkerLost(m, e.exitcode);
    case proto::ErrorCode::error:
      break;
  }
  throw Error(m);
}

}  // namespace mpx::detail
