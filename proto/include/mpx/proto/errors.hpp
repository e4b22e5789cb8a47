// What the wire layer throws. proto sits below the library and cannot name mpx's exceptions, so
// it has its own; the library turns them into mpx::ProtocolError / mpx::AuthenticationError
// where it calls in (and, for the byte codec, through the Reader's failure hook), which keeps
// the exception types and messages users see independent of where the bytes were parsed.
#pragma once

#include <stdexcept>

namespace mpx::proto {

struct WireError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Bytes that do not follow the protocol: a malformed or oversized frame, a truncated message.
struct ProtocolError : WireError {
  using WireError::WireError;
};
// The authkey handshake failed (wrong key, malformed challenge or response, no HMAC).
struct AuthenticationError : WireError {
  using WireError::WireError;
};

}  // namespace mpx::proto
