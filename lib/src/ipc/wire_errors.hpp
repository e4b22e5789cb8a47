// Where the library meets proto's exceptions: proto cannot name mpx's error types (it sits
// below the library), so what it throws is turned into them here, message unchanged. Also the
// manager protocol's error codes, which name mpx's exception types.
#pragma once

#include <mpx/errors.hpp>
#include <mpx/proto/errors.hpp>
#include <mpx/proto/manager.hpp>

#include <exception>
#include <utility>

namespace mpx::detail {

// proto::AuthenticationError -> mpx::AuthenticationError, any other proto error -> mpx::ProtocolError.
[[noreturn]] void throw_as_mpx_error(const proto::WireError& e);

// Calls f() and lets only mpx's own exception types out.
template <class F>
decltype(auto) with_mpx_errors(F&& f) {
  try {
    return std::forward<F>(f)();
  } catch (const proto::WireError& e) {
    throw_as_mpx_error(e);
  }
}

// The failure hook for proto::Reader on the manager protocol's client side: the same message
// as proto's default, as an mpx::ProtocolError.
[[noreturn]] void manager_reply_error(const char* what);

// Classifies an exception caught while serving: mpx's own errors keep their type, proto's
// count as the mpx error they are translated to.
proto::ErrorInfo error_from_exception(const std::exception& e);
// Throws the mpx error an ErrorInfo stands for.
[[noreturn]] void throw_error(const proto::ErrorInfo& e);

}  // namespace mpx::detail
