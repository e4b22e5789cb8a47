// Managers, part 3: mpx::Server hosted in a program, registered types, and what the server
// does with malformed, oversized and unauthenticated requests (answers, keeps serving).
#include <mpx/connection.hpp>
#include <mpx/managers.hpp>
#include <mpx/process.hpp>
#include <mpx/proto/frame.hpp>
#include <mpx/proto/manager.hpp>

#include <doctest/doctest.h>
#include <raw_manager.hpp>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

class Counter {
 public:
  Counter() = default;
  explicit Counter(int start) : n_(start) {}
  Counter(std::string label, int start) : n_(start), label_(std::move(label)) {}
  int inc(int by) { return n_ += by; }
  int get() const { return n_; }
  std::string label() const { return label_; }
  void reset() noexcept { n_ = 0; }
  int fail(int) { throw std::out_of_range("counter says no"); }

 private:
  int n_ = 0;
  std::string label_;
};

class Other {
 public:
  int get() const { return 1; }
};

std::string temp_socket(const char* name) {
  return (fs::temp_directory_path() /
          (std::string("mpx-test-") + name + "-" + std::to_string(::getpid()) + ".sock"))
      .string();
}

void register_counter(mpx::detail::TypeRegistration<Counter> r) {
  r.constructor<int>()
      .constructor<std::string, int>()
      .method("inc", &Counter::inc)
      .method("get", &Counter::get)
      .method("label", &Counter::label)
      .method("reset", &Counter::reset)
      .method("fail", &Counter::fail);
}

// A Server serving on a thread of this process, stopped at scope exit.
struct Hosted {
  mpx::Server server;
  std::thread thread;
  explicit Hosted(const mpx::Address& a, std::string key = "server-key") : server(a, std::move(key)) {
    register_counter(server.register_type<Counter>("Counter"));
    thread = std::thread([this] { server.serve_forever(); });
  }
  ~Hosted() {
    server.shutdown();
    thread.join();
  }
};

// Raw requests; the status and error code of their replies.
mpx::Connection raw_session(const mpx::Address& a, const std::string& key, std::uint32_t version = 1) {
  return mpx::test::send_hello(a, key, mpx::test::session_token(1), version);
}
std::pair<int, int> roundtrip(mpx::Connection& c, std::span<const std::byte> request) {
  return mpx::test::roundtrip(c, request).sc();
}
using request_fn = std::function<void(mpx::proto::Writer&)>;
mpx::Bytes request(mpx::proto::Op op, std::uint64_t oid, const request_fn& body = {}) {
  return mpx::test::manager_request(op, oid, body);
}

constexpr int kProtocol = static_cast<int>(mpx::proto::ErrorCode::protocol);
constexpr int kState = static_cast<int>(mpx::proto::ErrorCode::state);

}  // namespace

TEST_CASE("Server: hosted in a thread, registered types, shutdown removes the socket") {
  auto path = temp_socket("server");
  auto addr = mpx::Address::unix_path(path);
  {
    Hosted h(addr);
    CHECK(h.server.address() == addr);
    auto m = mpx::Manager::connect(addr, "server-key");
    auto c = m.make<Counter>("Counter", "c1", 5);
    CHECK(c.call<int>("inc", 2) == 7);
    CHECK(c.call<int>("get") == 7);
    c.call<void>("reset");
    CHECK(c.call<int>("get") == 0);
    // An existing name opens that object; constructor arguments are then ignored.
    auto same = m.make<Counter>("Counter", "c1", 100);
    CHECK(same.call<int>("inc", 1) == 1);
    auto labelled = m.make<Counter>("Counter", "c2", std::string("apples"), 3);
    CHECK(labelled.call<std::string>("label") == "apples");
    auto fresh = m.make<Counter>("Counter", "");  // default constructor, anonymous
    CHECK(fresh.call<int>("get") == 0);

    CHECK_THROWS_AS(c.call<int>("nope"), mpx::TypeMismatch);
    CHECK_THROWS_AS(c.call<int>("inc", 2L), mpx::TypeMismatch);                 // long is not int
    CHECK_THROWS_AS(c.call<long>("inc", 2), mpx::TypeMismatch);                 // nor as a result
    CHECK_THROWS_AS(c.call<int>("inc", 1, 2), mpx::TypeMismatch);               // arity
    CHECK_THROWS_AS(m.make<Counter>("Counter", "c3", 1.5), mpx::TypeMismatch);  // no such constructor
    CHECK_THROWS_AS(m.make<Counter>("Unregistered", "c4"), mpx::ValueError);
    CHECK_THROWS_AS(m.make<Other>("Counter", "c5"), mpx::TypeMismatch);  // another C++ type
    CHECK_THROWS_AS((m.dict<int, int>("c1")), mpx::TypeMismatch);        // one namespace of names
    try {
      c.call<int>("fail", 1);
      FAIL("no exception");
    } catch (const mpx::RemoteError& e) {
      CHECK(e.type_name() == "std::out_of_range");
      CHECK(e.message() == "counter says no");
    }
    CHECK(c.call<int>("get") == 1);  // the object survives its method's exception

    // Built-in kinds are served too, and to other processes.
    m.dict<std::string, int>("d").set("x", 1);
    mpx::Process p([addr] {
      auto m2 = mpx::Manager::connect(addr, "server-key");
      if (m2.dict<std::string, int>("d").at("x") != 1) throw std::runtime_error("dict");
      if (m2.make<Counter>("Counter", "c1").call<int>("inc", 10) != 11) throw std::runtime_error("counter");
    });
    p.start();
    REQUIRE(p.join(60s));
    CHECK(p.exitcode() == 0);
    CHECK(c.call<int>("get") == 11);
    CHECK_THROWS_AS(m.shutdown(), mpx::StateError);  // a connect()ed handle cannot stop it
  }
  CHECK_FALSE(fs::exists(path));
}

TEST_CASE("Server: tcp port 0 reports the bound port; shutdown before serve_forever") {
  mpx::Server s(mpx::Address::tcp("127.0.0.1", 0), "k");
  CHECK(s.address().port() != 0);
  s.shutdown();
  s.serve_forever();  // returns at once
  CHECK_THROWS_AS(s.serve_forever(), mpx::StateError);
}

TEST_CASE("register_type for the private Manager() server") {
  register_counter(mpx::register_type<Counter>("Counter"));
  mpx::Manager m;
  auto c = m.make<Counter>("Counter", "", 40);
  CHECK(c.call<int>("inc", 2) == 42);
  auto q = m.queue<mpx::ObjectProxy<Counter>>();
  q.put(c);  // proxies to registered objects travel too
  mpx::Process p([q]() mutable {
    if (q.get(30s).call<int>("inc", 1) != 43) throw std::runtime_error("counter");
  });
  p.start();
  REQUIRE(p.join(60s));
  CHECK(p.exitcode() == 0);
  CHECK(c.call<int>("get") == 43);
}

TEST_CASE("malformed, oversized and unauthenticated requests: an error, and the server keeps serving") {
  mpx::Manager m;
  auto d = m.dict<int, int>("probe");
  d.set(1, 1);
  const auto& a = m.address();

  SUBCASE("malformed requests on an authenticated connection") {
    auto c = raw_session(a, m.authkey());
    auto hello = c.recv_bytes();
    CHECK(static_cast<int>(hello[0]) == 0);
    std::byte nothing[1] = {std::byte{0x7f}};
    CHECK(roundtrip(c, std::span<const std::byte>(nothing, 0)) == std::pair{1, kProtocol});  // empty
    CHECK(roundtrip(c, request(mpx::proto::Op{0xee}, 0)) == std::pair{1, kState});           // no object 0
    CHECK(roundtrip(c, request(mpx::proto::Op{0xee}, d.core().oid())) == std::pair{1, kProtocol});
    CHECK(roundtrip(c, request(mpx::proto::Op::dict_set, d.core().oid(), [](auto& w) { w.u64(1000); })) ==
          std::pair{1, kProtocol});  // a blob longer than the message
    CHECK(roundtrip(c, request(mpx::proto::Op::dict_size, d.core().oid(), [](auto& w) { w.u8(1); })) ==
          std::pair{1, kProtocol});  // trailing bytes
    CHECK(roundtrip(c, request(mpx::proto::Op::queue_get, d.core().oid(), [](auto& w) { w.i64(0); })) ==
          std::pair{1, kProtocol});  // not a dict operation
    CHECK(roundtrip(c, request(mpx::proto::Op::open, 0, [](auto& w) {
                      w.u8(99);
                      w.str("x");
                      w.str("");
                    })) == std::pair{1, kProtocol});  // unknown kind
    CHECK(roundtrip(c, request(mpx::proto::Op::hello, 0)) == std::pair{1, kProtocol});
    CHECK(roundtrip(c, request(mpx::proto::Op::dict_size, 12345)) == std::pair{1, kState});
    // The same connection still works.
    CHECK(roundtrip(c, request(mpx::proto::Op::ping, 0)) == std::pair{0, 0});
    CHECK(roundtrip(c, request(mpx::proto::Op::dict_size, d.core().oid())) == std::pair{0, 0});
  }
  SUBCASE("quiet requests: no reply when they succeed, status 2 when they fail") {
    auto lock = m.lock();
    auto c = raw_session(a, m.authkey());
    c.recv_bytes();
    constexpr std::uint64_t quiet = std::uint64_t{1} << 63;
    c.send_bytes(request(mpx::proto::Op::dict_size, d.core().oid() | quiet));  // succeeds: no reply
    c.send_bytes(request(mpx::proto::Op::release, lock.core().oid() | quiet,
                         [](auto& w) { w.u32(1); }));  // a lock it does not hold
    auto failed = c.recv_bytes();
    CHECK(static_cast<int>(failed[0]) == 2);
    CHECK(static_cast<int>(failed[1]) == kState);
    c.send_bytes(request(mpx::proto::Op::dict_set, d.core().oid() | quiet, [](auto& w) {
      mpx::detail::put_value(w, 3);
      mpx::detail::put_value(w, 3);
    }));
    CHECK(roundtrip(c, request(mpx::proto::Op::ping, 0)) == std::pair{0, 0});  // the next reply is the ping's
    CHECK(d.pop(3) == 3);
  }
  SUBCASE("a frame over the limit is refused before it is read, and that connection closes") {
    auto c = raw_session(a, m.authkey());
    c.recv_bytes();
    auto header = mpx::proto::encode_header(std::uint64_t{3} << 30);  // 3 GiB announced, never sent
    REQUIRE(::send(c.fileno(), header.bytes().data(), header.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(header.size()));
    auto reply = c.recv_bytes();
    CHECK(static_cast<int>(reply[0]) == 1);
    CHECK(static_cast<int>(reply[1]) == kProtocol);
    CHECK_THROWS_AS(c.recv_bytes(), mpx::ConnectionClosed);
  }
  SUBCASE("a wrong protocol version is refused") {
    auto c = raw_session(a, m.authkey(), 99);
    auto reply = c.recv_bytes();
    CHECK(static_cast<int>(reply[0]) == 1);
    CHECK(static_cast<int>(reply[1]) == kProtocol);
    CHECK_THROWS_AS(c.recv_bytes(), mpx::ConnectionClosed);
  }
  SUBCASE("requests before the handshake") {
    CHECK_THROWS_AS(mpx::Client(a, std::string("wrong key")), mpx::AuthenticationError);
    // A peer that sends a request instead of answering the challenge.
    mpx::Connection c = mpx::Client(a);  // no authkey: no handshake on our side
    auto challenge = c.recv_bytes();
    CHECK(std::string(reinterpret_cast<const char*>(challenge.data()), 11) == "#CHALLENGE#");
    c.send_bytes(request(mpx::proto::Op::dict_size, d.core().oid()));
    auto verdict = c.recv_bytes();
    CHECK(std::string(reinterpret_cast<const char*>(verdict.data()), verdict.size()) == "#FAILURE#");
    CHECK_THROWS_AS(c.recv_bytes(), mpx::ConnectionClosed);
    // One that sends more than a handshake message may hold.
    mpx::Connection big = mpx::Client(a);
    big.recv_bytes();
    big.send_bytes(std::string(4096, 'x'));
    auto refusal = big.recv_bytes();
    CHECK(static_cast<int>(refusal[0]) == 1);
    CHECK_THROWS_AS(big.recv_bytes(), mpx::ConnectionClosed);
  }
  // Everyone else was served throughout.
  CHECK(d.at(1) == 1);
  d.set(2, 2);
  CHECK(m.dict<int, int>("probe").size() == 2);
}

TEST_CASE(
    "queue byte budget: an unbounded queue refuses with Full, a bounded one waits, a huge item is a "
    "ValueError") {
  auto a = mpx::Address::unix_path(temp_socket("budget"));
  mpx::Server server(a, "budget-key");
  server.set_queue_max_bytes(1000);
  std::thread thread([&] { server.serve_forever(); });
  struct Stop {
    mpx::Server& s;
    std::thread& t;
    ~Stop() {
      s.shutdown();
      t.join();
    }
  } stop{server, thread};

  auto m = mpx::Manager::connect(a, "budget-key");
  const std::string item(100, 'x');
  const long fits = 1000 / static_cast<long>(mpx::encode(item).size());
  REQUIRE(fits >= 2);

  auto q = m.queue<std::string>();
  for (long i = 0; i < fits; ++i) q.put(item);
  CHECK_THROWS_WITH_AS(q.put(item), doctest::Contains("byte budget is 1000"), mpx::Full);
  CHECK(q.qsize() == static_cast<std::size_t>(fits));
  CHECK(q.get() == item);
  q.put(item);  // room again once an item is out
  CHECK_THROWS_AS(q.put(std::string(2000, 'y')), mpx::ValueError);
  // put_many keeps the items that fitted and says how many did.
  for (long i = 0; i < fits; ++i) q.get();
  const std::string how_many = std::to_string(fits) + " of " + std::to_string(fits + 2);
  CHECK_THROWS_WITH_AS(q.put_many(std::vector<std::string>(static_cast<std::size_t>(fits) + 2, item)),
                       doctest::Contains(how_many.c_str()), mpx::Full);
  CHECK(q.qsize() == static_cast<std::size_t>(fits));

  // A bounded queue (maxsize far away) waits for bytes as it waits for items.
  auto b = m.queue<std::string>(100);
  for (long i = 0; i < fits; ++i) b.put(item);
  CHECK_THROWS_AS(b.put(item, 50ms), mpx::Full);
  std::thread producer([b, &item]() mutable { b.put(item + "!", 30s); });
  CHECK(b.get(30s) == item);
  producer.join();
  CHECK(b.qsize() == static_cast<std::size_t>(fits));
  std::string last;
  for (long i = 0; i < fits; ++i) last = b.get(30s);
  CHECK(last == item + "!");
  CHECK(b.empty());
}

TEST_CASE("Server: limits are validated, read back, and fixed once serving") {
  auto addr = mpx::Address::unix_path(temp_socket("limits"));
  mpx::Server server(addr, "k");
  mpx::Server::Limits l = server.limits();
  CHECK(l.max_pending_bytes == std::size_t{4} << 20);
  CHECK(l.max_handshakes == 64);
  l.max_pending_bytes = 0;
  CHECK_THROWS_AS(server.set_limits(l), mpx::ValueError);
  l = server.limits();
  l.pending_timeout = std::chrono::milliseconds(-1);
  CHECK_THROWS_AS(server.set_limits(l), mpx::ValueError);
  l = server.limits();
  l.max_connections = 3;
  l.max_pending_bytes = 1 << 16;
  server.set_limits(l);
  server.set_queue_max_bytes(1 << 20);
  CHECK(server.limits().max_connections == 3);
  CHECK(server.limits().max_pending_bytes == 1 << 16);
  CHECK(server.limits().queue_max_bytes == 1 << 20);
  std::thread t([&] { server.serve_forever(); });
  // Three connections fit; a fourth is closed at once.
  std::vector<mpx::Connection> held;
  for (int i = 0; i < 3; ++i) held.push_back(mpx::Client(addr, std::string("k")));
  CHECK_THROWS_AS(mpx::Client(addr, std::string("k")), mpx::ConnectionError);
  server.shutdown();
  t.join();
  CHECK_THROWS_AS(server.set_limits(l), mpx::StateError);
}
