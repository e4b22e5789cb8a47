// libFuzzer target for the manager server's request decoding: every input is a stream of
// requests sent on one authenticated connection (after a valid hello) to a live server core.
// The server must answer each complete request with one well-formed response (or close the
// connection after an oversized frame), never crash, and keep its state consistent.
//   fuzz_manager_request -max_total_time=60 corpus/
// Input layout: a mode byte (odd: a Python client, speaking Python's manager protocol), then
// repeated [u16 little-endian length][that many bytes]; a short tail is sent as raw stream
// bytes (a truncated frame). An mpx client's chunks are request payloads. A Python client's
// chunks become requests built from their bytes (an ident the server handed out, None or a
// bogus one; a method name the proxies use; arguments of assorted kinds), or, when the
// chunk's first byte says so, its raw bytes as the frame; every reply must be a pickled
// 2-tuple with one of Python's reply kinds.
#include "server/object_server.hpp"

#include <mpx/pickle.hpp>
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
#include <string>
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

namespace py = mpx::py;

// A Python reply: ('#RETURN' | '#ERROR' | '#TRACEBACK', value), or a #PROXY (its Token is a
// class the codec does not read). Idents the server hands out are kept for later requests.
void check_python_reply(std::span<const std::byte> frame, std::vector<py::Object>& idents) {
  py::Object reply;
  try {
    reply = py::loads(frame);
  } catch (const mpx::ProtocolError&) {
    static const std::string proxy = "#PROXY";
    if (frame.size() < 8 || std::memcmp(frame.data() + 7, proxy.data(), proxy.size()) != 0) fail();
    return;
  }
  const auto* t = reply.kind() == py::Kind::tuple ? reply.get_if<py::List>() : nullptr;
  if (!t || t->size() != 2) fail();
  const auto* kind = (*t)[0].get_if<std::string>();
  if (!kind || (*kind != "#RETURN" && *kind != "#ERROR" && *kind != "#TRACEBACK")) fail();
  if (*kind == "#RETURN")
    if (const auto* made = (*t)[1].get_if<py::List>();
        made && made->size() == 2 && (*made)[0].get_if<std::string>())
      if (idents.size() < 64) idents.push_back((*made)[0]);
}

// A request made from a chunk's bytes.
mpx::Bytes python_request(std::span<const std::byte> chunk, const std::vector<py::Object>& idents) {
  static const char* const kMethods[] = {"dummy",
                                         "create",
                                         "incref",
                                         "decref",
                                         "accept_connection",
                                         "number_of_objects",
                                         "debug_info",
                                         "shutdown",
                                         "__getitem__",
                                         "__setitem__",
                                         "__delitem__",
                                         "__contains__",
                                         "__len__",
                                         "__iter__",
                                         "__next__",
                                         "get",
                                         "pop",
                                         "keys",
                                         "items",
                                         "values",
                                         "update",
                                         "setdefault",
                                         "popitem",
                                         "copy",
                                         "clear",
                                         "append",
                                         "extend",
                                         "insert",
                                         "remove",
                                         "index",
                                         "count",
                                         "sort",
                                         "reverse",
                                         "__add__",
                                         "__mul__",
                                         "__imul__",
                                         "put",
                                         "put_nowait",
                                         "get_nowait",
                                         "qsize",
                                         "empty",
                                         "full",
                                         "task_done",
                                         "join",
                                         "acquire",
                                         "release",
                                         "wait",
                                         "notify",
                                         "notify_all",
                                         "is_set",
                                         "set",
                                         "abort",
                                         "reset",
                                         "__getattribute__",
                                         "__setattr__",
                                         "__delattr__",
                                         "bogus"};
  static const char* const kTypeids[] = {"dict",      "list",      "Queue",     "JoinableQueue",
                                         "Lock",      "RLock",     "Semaphore", "BoundedSemaphore",
                                         "Condition", "Event",     "Barrier",   "Namespace",
                                         "Value",     "Array",     "get_dict",  "get_list",
                                         "get_queue", "get_value", "get_lock",  "get_namespace",
                                         "Nope"};
  std::size_t i = 0;
  auto next = [&]() -> unsigned { return i < chunk.size() ? std::to_integer<unsigned>(chunk[i++]) : 0u; };
  auto value = [&](auto& self, int depth) -> py::Object {
    unsigned k = next();
    switch (k % 9) {
      case 0:
        return py::none;
      case 1:
        return py::Object(static_cast<std::int64_t>(static_cast<std::int8_t>(next())) *
                          (k > 128 ? 1000003 : 1));
      case 2:
        return py::Object(static_cast<double>(next()) / 4);
      case 3:
        return py::Object(std::string(next() % 4, 'a' + static_cast<char>(k % 3)));
      case 4:
        return py::Object(k % 2 == 0);
      case 5:
      case 6: {
        py::List items;
        if (depth < 4)
          for (unsigned n = next() % 4; n > 0; --n) items.push_back(self(self, depth + 1));
        return k % 9 == 5 ? py::Object(std::move(items)) : py::Object::tuple(std::move(items));
      }
      case 7: {
        py::Dict d;
        if (depth < 4)
          for (unsigned n = next() % 3; n > 0; --n)
            d.set(py::Object(std::string(1, 'k' + static_cast<char>(n))), self(self, depth + 1));
        return d;
      }
      default:
        return py::Object(std::string(kTypeids[next() % std::size(kTypeids)]));
    }
  };
  unsigned head = next();
  py::Object ident = head % 4 == 0 || idents.empty() ? py::Object() : idents[next() % idents.size()];
  if (head % 16 == 5) ident = py::Object("bogus");
  py::Object method{std::string(kMethods[next() % std::size(kMethods)])};
  py::List args;
  if (head % 3 == 0) args.push_back(py::Object(std::string(kTypeids[next() % std::size(kTypeids)])));
  for (unsigned n = next() % 4; n > 0; --n) args.push_back(value(value, 0));
  py::Dict kwds;
  if (head % 7 == 0) kwds.set(py::Object(head % 2 ? "timeout" : "block"), value(value, 0));
  return py::dumps(
      py::Object::tuple({ident, method, py::Object::tuple(std::move(args)), py::Object(std::move(kwds))}),
      2 + static_cast<int>(head % 4));
}

// Reads whatever responses are there and checks each one's shape.
void drain(int fd, mpx::proto::FrameDecoder& decoder, std::size_t& responses, bool python,
           std::vector<py::Object>& idents) {
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
      ++responses;
      if (python) {
        check_python_reply(frame, idents);
        continue;
      }
      mpx::proto::Reader r(frame);
      auto status = r.u8();
      if (status == 1 || status == mpx::proto::kQuietError) {  // a quiet request's error: same body
        auto e = mpx::proto::read_error(r);
        if (static_cast<int>(e.code) < 1 || static_cast<int>(e.code) > 16) fail();
      } else if (status != 0) {
        fail();
      }
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

  bool python = size > 0 && (data[0] & 1) != 0;
  if (size > 0) {
    ++data;
    --size;
  }
  std::vector<py::Object> idents;
  std::vector<std::byte> stream;
  if (python) {
    mpx::proto::append_frame(
        stream,
        py::dumps(py::Object::tuple({py::none, py::Object("dummy"), py::Object::tuple({}), py::Dict{}})));
  } else {
    std::vector<std::byte> hello;
    mpx::proto::Writer w(hello);
    w.u8(static_cast<std::uint8_t>(mpx::proto::Op::hello));
    w.u64(0);
    std::byte token[mpx::proto::kSessionTokenSize] = {};
    mpx::proto::write_hello(w, std::span<const std::byte, mpx::proto::kSessionTokenSize>(token));
    mpx::proto::append_frame(stream, hello);
  }
  mpx::proto::FrameDecoder decoder;
  std::size_t requests = 1, responses = 0;
  // Sends what `stream` holds, serving and reading replies as it goes.
  auto send_all = [&] {
    std::size_t sent = 0;
    while (sent < stream.size()) {
      ssize_t n = ::send(sv[1], stream.data() + sent, stream.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0)
        sent += static_cast<std::size_t>(n);
      else if (n < 0 && errno != EAGAIN)
        break;
      pump(*h);
      drain(sv[1], decoder, responses, python, idents);
    }
    stream.clear();
  };
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  while (in.size() >= 2) {
    std::size_t len = std::to_integer<std::size_t>(in[0]) | (std::to_integer<std::size_t>(in[1]) << 8);
    in = in.subspan(2);
    if (len > in.size()) break;
    auto chunk = in.subspan(0, len);
    in = in.subspan(len);
    ++requests;
    if (python && (chunk.empty() || std::to_integer<unsigned>(chunk[0]) % 8 != 0)) {
      // Built once the replies so far are read, so that it can use the idents they handed out.
      send_all();
      pump(*h);
      drain(sv[1], decoder, responses, python, idents);
      mpx::proto::append_frame(stream, python_request(chunk, idents));
      continue;
    }
    mpx::proto::append_frame(stream, chunk);
  }
  stream.insert(stream.end(), in.begin(), in.end());
  requests += in.size() / 4 + 1;  // the raw tail may hold frames of its own, or a bad header
  send_all();
  for (int i = 0; i < 8; ++i) {
    pump(*h);
    drain(sv[1], decoder, responses, python, idents);
  }
  if (responses > requests) fail();
  ::close(sv[1]);  // the server sees EOF and forgets the connection
  pump(*h);
  return 0;
}
