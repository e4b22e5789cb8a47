// libFuzzer target for the manager server's request decoding: every input is a stream of
// requests sent on one authenticated connection (after a valid hello) to a live server core.
// The server must answer each complete request with one well-formed response (or close the
// connection after an oversized frame), never crash, and keep its state consistent.
//   fuzz_manager_request -max_total_time=60 corpus/
// Input layout: repeated [u16 little-endian length][that many bytes of request payload];
// a short tail is sent as raw stream bytes (a truncated frame).
#include "server/object_server.hpp"

#include <mpx/proto/frame.hpp>
#include <mpx/proto/manager.hpp>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

namespace {

[[noreturn]] void fail() { std::abort(); }

struct Harness {
  boost::asio::io_context io;
  mpx::detail::ObjectServer core;
  Harness() : core(io, options()) {}
  static mpx::detail::ServerOptions options() {
    mpx::detail::ServerOptions o;
    o.max_message = 1 << 16;      // small, so oversized frames are reachable
    o.queue_max_bytes = 1 << 12;  // and so are full queue budgets
    o.types = std::make_shared<mpx::detail::TypeRegistry>();
    return o;
  }
};

// Reads whatever responses are there and checks each one's shape.
void drain(int fd, mpx::proto::FrameDecoder& decoder, std::size_t& responses) {
  std::byte buf[65536];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n <= 0) return;
    std::span<const std::byte> data(buf, static_cast<std::size_t>(n));
    while (!data.empty()) {
      std::size_t used = decoder.feed(data);  // the server never sends a malformed frame
      data = data.subspan(used);
      if (!decoder.ready()) continue;
      auto frame = decoder.take();
      mpx::proto::Reader r(frame);
      auto status = r.u8();
      if (status == 1 || status == mpx::proto::kQuietError) {  // a quiet request's error: same body
        auto e = mpx::proto::read_error(r);
        if (static_cast<int>(e.code) < 1 || static_cast<int>(e.code) > 16) fail();
      } else if (status != 0) {
        fail();
      }
      ++responses;
    }
  }
}

void pump(Harness& h) {
  h.io.restart();
  h.io.poll();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static Harness* h = new Harness;  // objects made by one input stay for the next ones
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return 0;
  ::fcntl(sv[1], F_SETFL, O_NONBLOCK);
  h->core.adopt(sv[0], true);

  std::vector<std::byte> stream;
  {
    std::vector<std::byte> hello;
    mpx::proto::Writer w(hello);
    w.u8(static_cast<std::uint8_t>(mpx::proto::Op::hello));
    w.u64(0);
    std::byte token[mpx::proto::kSessionTokenSize] = {};
    mpx::proto::write_hello(w, std::span<const std::byte, mpx::proto::kSessionTokenSize>(token));
    mpx::proto::append_frame(stream, hello);
  }
  std::size_t requests = 1;
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  while (in.size() >= 2) {
    std::size_t len = std::to_integer<std::size_t>(in[0]) | (std::to_integer<std::size_t>(in[1]) << 8);
    in = in.subspan(2);
    if (len > in.size()) break;
    mpx::proto::append_frame(stream, in.subspan(0, len));
    in = in.subspan(len);
    ++requests;
  }
  stream.insert(stream.end(), in.begin(), in.end());
  requests += in.size() / 4 + 1;  // the raw tail may hold frames of its own, or a bad header

  mpx::proto::FrameDecoder decoder;
  std::size_t responses = 0, sent = 0;
  while (sent < stream.size()) {
    ssize_t n = ::send(sv[1], stream.data() + sent, stream.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0)
      sent += static_cast<std::size_t>(n);
    else if (n < 0 && errno != EAGAIN)
      break;
    pump(*h);
    drain(sv[1], decoder, responses);
  }
  for (int i = 0; i < 8; ++i) {
    pump(*h);
    drain(sv[1], decoder, responses);
  }
  if (responses > requests) fail();
  ::close(sv[1]);  // the server sees EOF and forgets the connection
  pump(*h);
  return 0;
}
