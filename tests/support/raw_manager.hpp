// Speaking the manager protocol by hand (proto/manager.md), for tests that must send what the
// library's client never would: malformed, hostile or out-of-range requests.
#pragma once

#include <mpx/connection.hpp>
#include <mpx/proto/manager.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>

namespace mpx::test {

using SessionToken = std::array<std::byte, 16>;
SessionToken session_token(std::uint8_t n);  // a distinct token per n

// Every reply a test waits for comes within this, or the test fails instead of hanging.
inline constexpr std::chrono::seconds kReplyBound{5};
Bytes recv_bounded(Connection& c);

// One request: op, object id, then whatever `body` writes.
Bytes manager_request(proto::Op op, std::uint64_t oid, const std::function<void(proto::Writer&)>& body = {});

// An authenticated connection that has sent hello and not read the answer yet.
Connection send_hello(const Address& a, const std::string& key, const SessionToken& token = session_token(1),
                      std::uint32_t version = proto::kManagerVersion);
// The same, with the ok answer read.
Connection raw_manager_session(const Address& a, const std::string& key,
                               const SessionToken& token = session_token(1));

// One request and its reply: status, error code (0 for ok) and the rest of the body.
struct Reply {
  int status = -1;
  int code = 0;
  Bytes body;  // after the status (and for an error, after the code)
  std::pair<int, int> sc() const { return {status, code}; }
};
Reply roundtrip(Connection& c, std::span<const std::byte> request);

// Opens (or creates) an object by kind and name; its id.
std::uint64_t open_raw(Connection& c, proto::Kind kind, const std::string& name,
                       const std::function<void(proto::Writer&)>& init = {}, const std::string& tag = "");

}  // namespace mpx::test
