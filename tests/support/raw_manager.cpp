#include "raw_manager.hpp"

#include <doctest/doctest.h>

namespace mpx::test {

SessionToken session_token(std::uint8_t n) {
  SessionToken t{};
  t[0] = std::byte{n};
  t[15] = std::byte{0x5a};
  return t;
}

Bytes recv_bounded(Connection& c) {
  REQUIRE_MESSAGE(c.poll(kReplyBound), "no reply from the server within 5 s");
  return c.recv_bytes();
}

Bytes manager_request(proto::Op op, std::uint64_t oid, const std::function<void(proto::Writer&)>& body) {
  Bytes out;
  proto::Writer w(out);
  w.u8(static_cast<std::uint8_t>(op));
  w.u64(oid);
  if (body) body(w);
  return out;
}

Connection send_hello(const Address& a, const std::string& key, const SessionToken& token,
                      std::uint32_t version) {
  Connection c = Client(a, key);
  c.send_bytes(manager_request(proto::Op::hello, 0, [&](proto::Writer& w) {
    w.raw("MPXM", 4);
    w.u32(version);
    w.raw(token.data(), token.size());
  }));
  return c;
}

Connection raw_manager_session(const Address& a, const std::string& key, const SessionToken& token) {
  Connection c = send_hello(a, key, token);
  auto reply = recv_bounded(c);
  REQUIRE(static_cast<int>(reply.at(0)) == 0);
  return c;
}

Reply roundtrip(Connection& c, std::span<const std::byte> request) {
  c.send_bytes(request);
  auto bytes = recv_bounded(c);
  Reply out;
  out.status = static_cast<int>(bytes.at(0));
  std::size_t skip = 1;
  if (out.status != 0) {
    out.code = static_cast<int>(bytes.at(1));
    skip = 2;
  }
  out.body.assign(bytes.begin() + static_cast<std::ptrdiff_t>(skip), bytes.end());
  return out;
}

std::uint64_t open_raw(Connection& c, proto::Kind kind, const std::string& name,
                       const std::function<void(proto::Writer&)>& init, const std::string& tag) {
  auto r = roundtrip(c, manager_request(proto::Op::open, 0, [&](proto::Writer& w) {
                       w.u8(static_cast<std::uint8_t>(kind));
                       w.str(name);
                       w.str(tag);
                       if (init) init(w);
                     }));
  REQUIRE(r.status == 0);
  proto::Reader rd(r.body);
  return rd.u64();
}

}  // namespace mpx::test
