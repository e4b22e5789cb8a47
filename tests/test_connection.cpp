// Message-oriented sockets: Address, Connection, Pipe, poll/wait, caps, Listener/Client with
// and without an authkey, bad input from raw sockets, and the Boost.Asio operations.
#include <mpx/connection.hpp>
#include <mpx/proto/frame.hpp>
#include <mpx/proto/handshake.hpp>

#include <doctest/doctest.h>
#include <support.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <numeric>
#include <string>
#include <thread>
#include <type_traits>

using namespace std::chrono_literals;
using mpx::Address;
using mpx::Bytes;
using mpx::Connection;

namespace {

// A private directory for socket files, removed with everything in it.
struct TempDir : mpx::test::TempDir {
  TempDir() : mpx::test::TempDir("mpx-conn") {}
};

Bytes pattern(std::size_t n, unsigned seed = 1) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 131 + seed * 7 + (i >> 13)) & 0xff);
  return b;
}

std::span<const std::byte> as_span(std::string_view s) { return mpx::proto::as_bytes(s); }

bool fd_is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

// A raw client socket, for speaking bytes no well-behaved peer would send.
struct RawClient {
  int fd = -1;
  explicit RawClient(const Address& a) {
    REQUIRE(a.kind() == Address::Kind::unix_path);
    fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un u{};
    u.sun_family = AF_UNIX;
    std::strncpy(u.sun_path, a.path().c_str(), sizeof u.sun_path - 1);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&u), sizeof u) == 0);
    timeval tv{10, 0};  // bounds every read below
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
  void read_exact(void* p, std::size_t n) const {
    auto* c = static_cast<char*>(p);
    while (n) {
      ssize_t r = ::read(fd, c, n);
      REQUIRE(r > 0);
      c += r;
      n -= static_cast<std::size_t>(r);
    }
  }
  // One frame from the peer (the listener's challenge, typically).
  Bytes read_frame() const {
    std::byte h[4];
    read_exact(h, 4);
    auto len = mpx::proto::decode_header(h);
    REQUIRE(len);
    Bytes b(len->length);
    read_exact(b.data(), b.size());
    return b;
  }
  ~RawClient() { close(); }
  void write(std::span<const std::byte> b) const {
    REQUIRE(::send(fd, b.data(), b.size(), MSG_NOSIGNAL) == ssize_t(b.size()));
  }
  void write(std::string_view s) const { write(as_span(s)); }
  void close() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

// Runs `fn` on a thread and joins it at scope exit.
struct Background {
  std::thread t;
  std::exception_ptr error;
  template <class F>
  explicit Background(F fn)
      : t([this, fn = std::move(fn)]() mutable {
          try {
            fn();
          } catch (...) {
            error = std::current_exception();
          }
        }) {}
  void join() {
    if (t.joinable()) t.join();
    if (error) std::rethrow_exception(std::exchange(error, nullptr));
  }
  ~Background() {
    if (t.joinable()) t.join();
  }
};

struct Point {
  int x = 0, y = 0;
  std::string label;
  template <class A>
  void serialize(A& a) {
    a(x, y, label);
  }
  bool operator==(const Point&) const = default;
};

}  // namespace

TEST_CASE("Address: parse and str round-trip") {
  for (std::string text : {"unix:/tmp/x.sock", "unix:relative/s", "unix:@mpx-abstract", "tcp:127.0.0.1:5000",
                           "tcp:localhost:0", "tcp:[::1]:80", "tcp:example.org:65535"}) {
    CAPTURE(text);
    CHECK(Address::parse(text).str() == text);
    CHECK(Address::parse(Address::parse(text).str()) == Address::parse(text));
  }
  CHECK(Address::tcp("::1", 5).str() == "tcp:[::1]:5");
  CHECK(Address::parse("tcp:[::1]:5") == Address::tcp("::1", 5));
  CHECK(Address::parse("unix:@n") == Address::abstract("n"));
  CHECK(Address::parse("unix:/p") == Address::unix_path("/p"));
  CHECK(Address::parse("/tmp/x.sock") ==
        Address::unix_path("/tmp/x.sock"));  // as Python's Listener('/tmp/x.sock')
  CHECK(Address::parse("/tmp/x.sock").str() == "unix:/tmp/x.sock");
  CHECK_FALSE(Address::unix_path("/p") == Address::abstract("/p"));
  CHECK(Address::parse("tcp:h:1").kind() == Address::Kind::tcp);
  CHECK(Address::parse("tcp:h:1").host() == "h");
  CHECK(Address::parse("tcp:h:1").port() == 1);

  for (std::string bad : {"", "foo", "unix:", "unix:@", "tcp:host", "tcp:host:", "tcp:host:65536",
                          "tcp:host:12a", "tcp:host:-1", "tcp:::1:80", "tcp:[::1:80", "tcp::80", "tcp:[]:80",
                          "tcp:[host]:80", "udp:h:1", "UNIX:/x", "x.sock", "./x.sock"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(Address::parse(bad), mpx::ValueError);
  }
  CHECK_THROWS_AS(Address::unix_path(std::string(200, 'a')), mpx::ValueError);
  CHECK_THROWS_AS(Address::abstract(std::string(200, 'a')), mpx::ValueError);
  CHECK_THROWS_AS(Address::unix_path(std::string("a\0b", 3)), mpx::ValueError);
}

TEST_CASE("Connection is movable, not copyable, close-on-exec, closed on destruction") {
  static_assert(!std::is_copy_constructible_v<Connection>);
  static_assert(!std::is_copy_assignable_v<Connection>);
  static_assert(std::is_nothrow_move_constructible_v<Connection>);
  static_assert(std::is_nothrow_move_assignable_v<Connection>);
  int fd;
  {
    auto [a, b] = mpx::Pipe();
    fd = a.fileno();
    CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
    Connection moved = std::move(a);
    CHECK(a.closed());  // NOLINT(bugprone-use-after-move): moved-from is closed
    CHECK_THROWS_AS(a.send_bytes("x"), mpx::StateError);
    CHECK(moved.fileno() == fd);
    moved.send_bytes("hi");
    CHECK(b.recv_bytes() == Bytes(as_span("hi").begin(), as_span("hi").end()));
    CHECK(fd_is_open(fd));
  }
  CHECK_FALSE(fd_is_open(fd));

  Connection empty;
  CHECK(empty.closed());
  CHECK_THROWS_AS(empty.fileno(), mpx::StateError);
  CHECK_THROWS_AS(empty.poll(), mpx::StateError);
  empty.close();  // harmless
}

TEST_CASE("Pipe: messages of every size both ways, in order") {
  auto [a, b] = mpx::Pipe();
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{100}, std::size_t{40000},
                        std::size_t{100000}, std::size_t{5} << 20}) {
    CAPTURE(n);
    auto msg = pattern(n, static_cast<unsigned>(n));
    Background writer([&] { a.send_bytes(msg); });
    CHECK(b.recv_bytes() == msg);
    writer.join();
    Background back([&] { b.send_bytes(msg); });
    Bytes into(3);
    CHECK(a.recv_bytes_into(into) == n);
    CHECK(into == msg);
    back.join();
  }
  // Many small messages: several arrive per read and are handed out one by one.
  Background many([&] {
    for (int i = 0; i < 1000; ++i) a.send_bytes(std::to_string(i));
  });
  for (int i = 0; i < 1000; ++i) {
    auto m = b.recv_bytes();
    REQUIRE(std::string(reinterpret_cast<const char*>(m.data()), m.size()) == std::to_string(i));
  }
  many.join();
  CHECK_FALSE(b.poll());
}

TEST_CASE("send/recv of transferable values") {
  auto [a, b] = mpx::Pipe();
  a.send(std::vector<int>{1, 2, 3});
  a.send(std::string("text"));
  a.send(Point{3, 4, "p"});
  std::map<std::string, double> big;
  for (int i = 0; i < 20000; ++i) big["k" + std::to_string(i)] = i * 0.5;
  Background w([&] { a.send(big); });
  CHECK(b.recv<std::vector<int>>() == std::vector<int>{1, 2, 3});
  CHECK(b.recv<std::string>() == "text");
  CHECK(b.recv<Point>() == Point{3, 4, "p"});
  CHECK(b.recv<decltype(big)>() == big);
  w.join();
  a.send(std::string("not an int vector"));
  CHECK_THROWS_AS(b.recv<std::vector<double>>(), mpx::ProtocolError);
}

TEST_CASE("send_bytes_batch and send_batch: one call, the same frames as one send each") {
  auto [a, b] = mpx::Pipe();
  // Copied and by-reference messages mixed, empty ones included, and more than one sendmsg's
  // worth of iovecs (every message above the copy limit needs one of its own).
  std::vector<Bytes> messages;
  for (std::size_t i = 0; i < 1500; ++i)
    messages.push_back(pattern(i % 3 == 0 ? 4097 + i : i % 5 == 0 ? 0 : i % 200, static_cast<unsigned>(i)));
  messages.push_back(pattern(std::size_t{3} << 20, 9));
  std::vector<std::span<const std::byte>> views(messages.begin(), messages.end());
  Background writer([&] { a.send_bytes_batch(views); });
  for (std::size_t i = 0; i < messages.size(); ++i) {
    CAPTURE(i);
    REQUIRE(b.recv_bytes() == messages[i]);
  }
  writer.join();

  a.send_bytes_batch({});  // nothing to send: nothing sent
  CHECK_FALSE(b.poll());

  std::vector<std::string> words{"alpha", "", "gamma", std::string(70000, 'd')};
  Background typed([&] { a.send_batch(words); });
  for (const auto& w : words) CHECK(b.recv<std::string>() == w);
  typed.join();
  a.send_batch(std::vector<int>{1, 2, 3});
  CHECK(b.recv<int>() == 1);
  CHECK(b.recv<int>() == 2);
  CHECK(b.recv<int>() == 3);
  CHECK_FALSE(b.poll());

  b.close();
  std::vector<std::span<const std::byte>> one{views[1]};
  CHECK_THROWS_AS(b.send_bytes_batch(one), mpx::StateError);
}

TEST_CASE("Pipe(duplex=false): first reads, second writes") {
  auto [r, w] = mpx::Pipe(false);
  CHECK(r.readable());
  CHECK_FALSE(r.writable());
  CHECK(w.writable());
  CHECK_FALSE(w.readable());
  w.send_bytes("one way");
  CHECK(r.recv_bytes().size() == 7);
  CHECK_THROWS_AS(r.send_bytes("x"), mpx::StateError);
  CHECK_THROWS_AS(w.recv_bytes(), mpx::StateError);
  CHECK_THROWS_AS(w.poll(), mpx::StateError);
}

TEST_CASE("poll: timeouts, data, EOF") {
  auto [a, b] = mpx::Pipe();
  CHECK_FALSE(b.poll());
  auto t0 = std::chrono::steady_clock::now();
  CHECK_FALSE(b.poll(50ms));
  CHECK(std::chrono::steady_clock::now() - t0 >= 45ms);
  a.send_bytes("x");
  CHECK(b.poll(mpx::forever));
  CHECK(b.poll());
  b.recv_bytes();
  CHECK_FALSE(b.poll());
  a.close();
  CHECK(a.closed());
  CHECK(b.poll(1s));  // EOF is "ready": recv tells what happened
  CHECK_THROWS_AS(b.recv_bytes(), mpx::ConnectionClosed);
  CHECK_THROWS_AS(b.recv_bytes(), mpx::ConnectionClosed);
}

TEST_CASE("wait over several connections") {
  auto [a1, b1] = mpx::Pipe();
  auto [a2, b2] = mpx::Pipe();
  auto [a3, b3] = mpx::Pipe();
  CHECK(mpx::wait({&b1, &b2, &b3}, 20ms).empty());
  a2.send_bytes("two");
  CHECK(mpx::wait({&b1, &b2, &b3}, 1s) == std::vector<std::size_t>{1});
  a3.send_bytes("three");
  CHECK(mpx::wait({&b1, &b2, &b3}) == std::vector<std::size_t>{1, 2});
  b2.recv_bytes();
  b3.recv_bytes();
  // A message already read ahead counts as ready though the kernel has nothing left.
  a1.send_bytes("first");
  a1.send_bytes("second");
  CHECK(b1.poll(1s));
  while (!(b1.recv_bytes().size() == 5)) {
  }
  std::vector<Connection*> all{&b1, &b2, &b3};
  CHECK(mpx::wait(all, 0ms) == std::vector<std::size_t>{0});
  CHECK(b1.recv_bytes().size() == 6);
  // Another thread's message wakes an infinite wait.
  Background later([&] {
    std::this_thread::sleep_for(20ms);
    a3.send_bytes("late");
  });
  CHECK(mpx::wait(all) == std::vector<std::size_t>{2});
  later.join();
  b1.close();
  CHECK_THROWS_AS(mpx::wait(all, 0ms), mpx::StateError);
}

TEST_CASE("message caps: ProtocolError closes the connection") {
  SUBCASE("set_max_message") {
    auto [a, b] = mpx::Pipe();
    CHECK(b.max_message() == (std::size_t{1} << 30));
    b.set_max_message(10);
    a.send_bytes(pattern(10));
    CHECK(b.recv_bytes().size() == 10);
    a.send_bytes(pattern(11));
    CHECK_THROWS_WITH_AS(b.recv_bytes(), doctest::Contains("exceeds the limit of 10"), mpx::ProtocolError);
    CHECK(b.closed());
  }
  SUBCASE("maxlength argument overrides the cap") {
    auto [a, b] = mpx::Pipe();
    b.set_max_message(4);
    a.send_bytes("12345");
    CHECK(b.recv_bytes(5).size() == 5);
    a.send_bytes("123456");
    CHECK_THROWS_AS(b.recv_bytes(5), mpx::ProtocolError);
    CHECK(b.closed());
  }
  SUBCASE("typed recv uses the cap") {
    auto [a, b] = mpx::Pipe();
    b.set_max_message(8);
    a.send(std::string(100, 'x'));
    CHECK_THROWS_AS(b.recv<std::string>(), mpx::ProtocolError);
  }
}

TEST_CASE("a peer announcing a huge length does not make us allocate it") {
  // In a child, so its peak memory is its own: the announced 1 GiB - 1 never materialises.
  int fds[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
  int report[2];
  REQUIRE(::pipe2(report, O_CLOEXEC) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    rusage before{};
    ::getrusage(RUSAGE_SELF, &before);
    Connection c(fds[1]);
    long code = 1;
    try {
      c.recv_bytes();
    } catch (const mpx::ConnectionClosed&) {
      rusage after{};
      ::getrusage(RUSAGE_SELF, &after);
      code = after.ru_maxrss - before.ru_maxrss;  // KiB
    } catch (...) {
      code = -1;
    }
    [[maybe_unused]] auto n = ::write(report[1], &code, sizeof code);
    ::_exit(0);
  }
  ::close(fds[1]);
  ::close(report[1]);
  auto header = mpx::proto::FrameHeader((std::uint64_t{1} << 30) - 1);
  REQUIRE(::write(fds[0], header.bytes().data(), header.size()) == 4);
  auto some = pattern(100000);
  REQUIRE(::write(fds[0], some.data(), some.size()) == ssize_t(some.size()));
  ::close(fds[0]);
  long grown_kib = -2;
  REQUIRE(::read(report[0], &grown_kib, sizeof grown_kib) == sizeof grown_kib);
  ::close(report[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(grown_kib >= 0);
  CHECK(grown_kib < 64 * 1024);  // far below the 1 GiB announced
}

TEST_CASE("a peer closing mid-message, and sending to a closed peer") {
  SUBCASE("truncated payload") {
    auto [a, b] = mpx::Pipe();
    auto header = mpx::proto::FrameHeader(1000);
    ::send(a.fileno(), header.bytes().data(), header.size(), 0);
    ::send(a.fileno(), "abc", 3, 0);
    a.close();
    CHECK_THROWS_WITH_AS(b.recv_bytes(), doctest::Contains("middle of a message (3 of 1000"),
                         mpx::ConnectionClosed);
  }
  SUBCASE("truncated large payload") {
    auto [a, b] = mpx::Pipe();
    auto header = mpx::proto::FrameHeader(1 << 20);
    ::send(a.fileno(), header.bytes().data(), header.size(), 0);
    auto part = pattern(50000);
    ::send(a.fileno(), part.data(), part.size(), 0);
    a.close();
    CHECK_THROWS_WITH_AS(b.recv_bytes(), doctest::Contains("50000 of 1048576"), mpx::ConnectionClosed);
  }
  SUBCASE("truncated header") {
    auto [a, b] = mpx::Pipe();
    ::send(a.fileno(), "\0\0", 2, 0);
    a.close();
    CHECK_THROWS_WITH_AS(b.recv_bytes(), doctest::Contains("header"), mpx::ConnectionClosed);
  }
  SUBCASE("negative length") {
    auto [a, b] = mpx::Pipe();
    ::send(a.fileno(), "\xff\xff\xff\xfe", 4, 0);
    CHECK_THROWS_WITH_AS(b.recv_bytes(), doctest::Contains("negative length -2"), mpx::ProtocolError);
    CHECK(b.closed());
  }
  SUBCASE("send to a closed peer: ConnectionClosed, no SIGPIPE") {
    auto [a, b] = mpx::Pipe();
    b.close();
    CHECK_THROWS_AS(a.send_bytes("anyone?"), mpx::ConnectionClosed);
    CHECK_THROWS_AS(a.send_bytes(pattern(1 << 20)), mpx::ConnectionClosed);
  }
}

TEST_CASE("a Connection over an adopted pipe(2): works, and a broken pipe is ConnectionClosed, not SIGPIPE") {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  Connection r(p[0], true, false);
  Connection w(p[1], false, true);
  w.send_bytes("through a pipe");
  CHECK(r.recv_bytes().size() == 14);
  auto big = pattern(1 << 20);
  Background writer([&] { w.send_bytes(big); });
  CHECK(r.recv_bytes() == big);
  writer.join();
  r.close();
  CHECK_THROWS_AS(w.send_bytes("nobody reads"), mpx::ConnectionClosed);
  sigset_t pending;
  sigpending(&pending);
  CHECK_FALSE(sigismember(&pending, SIGPIPE));
}

TEST_CASE("Listener on a filesystem path: mode 0600, removed on close and on destruction") {
  TempDir dir;
  auto path = dir / "l.sock";
  {
    mpx::Listener l(Address::unix_path(path));
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(l.address() == Address::unix_path(path));
    // A second listener on the same path fails cleanly.
    CHECK_THROWS_AS(mpx::Listener(Address::unix_path(path)), mpx::ConnectionError);
    l.close();
    CHECK(l.closed());
    CHECK_FALSE(std::filesystem::exists(path));
    CHECK_THROWS_AS(l.accept(0ms), mpx::StateError);
  }
  {
    mpx::Listener l(Address::unix_path(path));
    CHECK(std::filesystem::exists(path));
  }
  CHECK_FALSE(std::filesystem::exists(path));
  // A forked child's copy does not remove the parent's socket file.
  {
    mpx::Listener l(Address::unix_path(path));
    pid_t pid = ::fork();
    if (pid == 0) {
      { mpx::Listener mine = std::move(l); }
      ::_exit(0);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK(std::filesystem::exists(path));
  }
  CHECK_FALSE(std::filesystem::exists(path));
  CHECK_THROWS_AS(mpx::Listener(Address::unix_path(dir / "no-such-dir/x.sock")), mpx::ConnectionError);
  CHECK_THROWS_AS(mpx::Client(Address::unix_path(dir / "nobody.sock")), mpx::ConnectionError);
}

TEST_CASE("Listener/Client over unix, abstract and tcp, with accept timeouts") {
  TempDir dir;
  auto abstract_name = "mpx-test-" + std::to_string(::getpid());
  for (auto addr : {Address::unix_path(dir / "s"), Address::abstract(abstract_name),
                    Address::tcp("127.0.0.1", 0), Address::tcp("::1", 0)}) {
    CAPTURE(addr.str());
    std::optional<mpx::Listener> l;
    try {
      l.emplace(addr);
    } catch (const mpx::ConnectionError& e) {
      if (addr.host() == "::1") {
        MESSAGE("no IPv6 loopback here: " << e.what());
        continue;
      }
      throw;
    }
    if (addr.kind() == Address::Kind::tcp) CHECK(l->address().port() != 0);
    CHECK_THROWS_AS(l->accept(30ms), mpx::TimeoutError);
    Background client([&] {
      auto c = mpx::Client(l->address());
      c.send_bytes("ping");
      auto r = c.recv_bytes();
      CHECK(std::string(reinterpret_cast<const char*>(r.data()), r.size()) == "pong");
    });
    auto s = l->accept(10s);
    CHECK(s.recv_bytes().size() == 4);
    s.send_bytes("pong");
    client.join();
  }
  CHECK_THROWS_AS(mpx::Client(Address::tcp("127.0.0.1", 1)), mpx::ConnectionError);
  CHECK_THROWS_AS(mpx::Client(Address::tcp("no-such-host.invalid", 1)), mpx::ConnectionError);
}

TEST_CASE("authkey: good key, wrong key, and the listener keeps serving") {
  TempDir dir;
  mpx::Listener l(Address::unix_path(dir / "auth"), 16, "right key");
  auto good_client = [&] {
    auto c = mpx::Client(l.address(), "right key");
    c.send(std::string("hello"));
    CHECK(c.recv<std::string>() == "HELLO");
  };
  auto serve_one = [&] {
    auto s = l.accept(10s);
    auto m = s.recv<std::string>();
    for (auto& ch : m) ch = static_cast<char>(std::toupper(ch));
    s.send(m);
  };
  {
    Background c(good_client);
    serve_one();
    c.join();
  }
  {
    Background c([&] { CHECK_THROWS_AS(mpx::Client(l.address(), "wrong key"), mpx::AuthenticationError); });
    CHECK_THROWS_WITH_AS(l.accept(10s), doctest::Contains("digest received was wrong"),
                         mpx::AuthenticationError);
    c.join();
  }
  {
    Background c(good_client);
    serve_one();
    c.join();
  }
  // A listener without a key, and a client that expects one: the client waits for a challenge
  // that never comes; the listener sees our first message, so use a bounded scenario instead:
  // a keyed client against a keyless listener fails the handshake on the client side.
  mpx::Listener open(Address::unix_path(dir / "open"));
  {
    Background c([&] { CHECK_THROWS_AS(mpx::Client(open.address(), "k"), mpx::AuthenticationError); });
    auto s = open.accept(10s);
    s.send_bytes("not a challenge at all, just data");
    c.join();
  }
}

TEST_CASE("bad input during the handshake: clear errors, the listener keeps serving") {
  TempDir dir;
  mpx::Listener l(Address::unix_path(dir / "hs"), 16, "k");
  l.set_handshake_timeout(300ms);
  CHECK(l.handshake_timeout() == std::chrono::nanoseconds(300ms));
  auto check_still_serving = [&] {
    Background c([&] {
      auto conn = mpx::Client(l.address(), "k");
      conn.send_bytes("ok");
    });
    auto s = l.accept(10s);
    CHECK(s.recv_bytes().size() == 2);
    c.join();
  };

  // Each misbehaving peer reads the challenge first, so what fails is our reading of its reply.
  auto misbehave = [&](std::function<void(RawClient&)> act) {
    return std::make_unique<Background>([&l, act] {
      RawClient raw(l.address());
      CHECK(raw.read_frame().size() == 59);
      act(raw);
      // Stay connected until the listener has judged us (it closes its end).
      char c;
      while (::read(raw.fd, &c, 1) > 0) {
      }
    });
  };
  SUBCASE("truncated header") {
    auto peer = misbehave([](RawClient& raw) {
      raw.write(std::string_view("\0\0", 2));
      raw.close();
    });
    CHECK_THROWS_WITH_AS(l.accept(10s), doctest::Contains("header"), mpx::ConnectionClosed);
  }
  SUBCASE("truncated payload") {
    auto peer = misbehave([](RawClient& raw) {
      raw.write(mpx::proto::FrameHeader(40).bytes());
      raw.write("short");
      raw.close();
    });
    CHECK_THROWS_WITH_AS(l.accept(10s), doctest::Contains("middle of a message"), mpx::ConnectionClosed);
  }
  SUBCASE("negative length") {
    auto peer = misbehave([](RawClient& raw) { raw.write(std::string_view("\xff\xff\xff\x00", 4)); });
    CHECK_THROWS_WITH_AS(l.accept(10s), doctest::Contains("negative length"), mpx::ProtocolError);
  }
  SUBCASE("a frame over 256 bytes before authentication") {
    auto peer = misbehave([](RawClient& raw) { raw.write(mpx::proto::make_frame(pattern(257))); });
    CHECK_THROWS_WITH_AS(l.accept(10s), doctest::Contains("limit of 256"), mpx::ProtocolError);
  }
  SUBCASE("a huge announced length before authentication") {
    auto peer =
        misbehave([](RawClient& raw) { raw.write(mpx::proto::FrameHeader(std::uint64_t{1} << 40).bytes()); });
    CHECK_THROWS_AS(l.accept(10s), mpx::ProtocolError);
  }
  SUBCASE("garbage response") {
    auto peer =
        misbehave([](RawClient& raw) { raw.write(mpx::proto::make_frame(as_span("GET / HTTP/1.1"))); });
    CHECK_THROWS_WITH_AS(l.accept(10s), doctest::Contains("missing digest prefix"), mpx::AuthenticationError);
  }
  SUBCASE("wrong key, computed properly") {
    Background c([&] { CHECK_THROWS_AS(mpx::Client(l.address(), "not k"), mpx::AuthenticationError); });
    CHECK_THROWS_AS(l.accept(10s), mpx::AuthenticationError);
    c.join();
  }
  SUBCASE("a silent peer runs into the handshake timeout") {
    RawClient raw(l.address());
    auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(l.accept(10s), doctest::Contains("in time"), mpx::AuthenticationError);
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  }
  SUBCASE("a connected peer gets the handshake timeout, however short accept's deadline is") {
    l.set_handshake_timeout(300ms);
    RawClient raw(l.address());
    auto t0 = std::chrono::steady_clock::now();
    CHECK_THROWS_WITH_AS(l.accept(20ms), doctest::Contains("in time"), mpx::AuthenticationError);
    CHECK(std::chrono::steady_clock::now() - t0 >= 250ms);
  }
  SUBCASE("the peer closes mid-handshake") {
    RawClient raw(l.address());
    raw.close();
    CHECK_THROWS_AS(l.accept(10s), mpx::ConnectionClosed);
  }
  check_still_serving();
}

TEST_CASE("bad input on established connections: that connection fails, others go on") {
  TempDir dir;
  mpx::Listener l(Address::unix_path(dir / "est"));
  auto good = mpx::Client(l.address());
  auto good_server = l.accept(5s);
  RawClient raw(l.address());
  auto bad_server = l.accept(5s);
  bad_server.set_max_message(1000);

  SUBCASE("over the cap") { raw.write(mpx::proto::FrameHeader(1001).bytes()); }
  SUBCASE("negative length") { raw.write(std::string_view("\x80\0\0\0", 4)); }
  SUBCASE("truncated payload") {
    raw.write(mpx::proto::FrameHeader(10).bytes());
    raw.write("abc");
    raw.close();
  }
  SUBCASE("garbage that decodes as nothing") { raw.write(mpx::proto::make_frame(as_span("\x01\x02"))); }
  good.send_bytes("still here");
  auto ready = mpx::wait({&good_server, &bad_server}, 5s);
  CHECK(!ready.empty());
  bool bad_failed = false;
  for (int round = 0; round < 2 && !bad_failed; ++round) {
    try {
      bad_server.recv<std::vector<std::string>>();
    } catch (const mpx::ProtocolError&) {
      bad_failed = true;
    } catch (const mpx::ConnectionClosed&) {
      bad_failed = true;
    }
  }
  CHECK(bad_failed);
  CHECK(good_server.recv_bytes().size() == 10);
  good_server.send_bytes("reply");
  CHECK(good.recv_bytes().size() == 5);
}

TEST_CASE("async operations with an io_context") {
  boost::asio::io_context io;
  auto [a, b] = mpx::Pipe();
  CHECK_FALSE(a.get_executor());
  CHECK_THROWS_AS(a.async_send_bytes(as_span("x"), [](boost::system::error_code) {}), mpx::StateError);
  CHECK_THROWS_AS(b.async_recv_bytes([](boost::system::error_code, Bytes) {}), mpx::StateError);
  a.rebind(io.get_executor());
  b.rebind(io.get_executor());
  CHECK(a.get_executor() == io.get_executor());

  std::vector<std::size_t> sizes{0, 1, 1000, 40000, 1 << 20, 5 << 20};
  std::vector<Bytes> messages;
  for (auto n : sizes) messages.push_back(pattern(n, static_cast<unsigned>(n)));
  std::vector<Bytes> received;
  std::size_t sent = 0;
  std::function<void()> send_next = [&] {
    if (sent == messages.size()) return;
    a.async_send_bytes(messages[sent], [&](boost::system::error_code ec) {
      REQUIRE_FALSE(ec);
      ++sent;
      send_next();
    });
  };
  std::function<void()> recv_next = [&] {
    b.async_recv_bytes([&](boost::system::error_code ec, Bytes m) {
      REQUIRE_FALSE(ec);
      received.push_back(std::move(m));
      if (received.size() < messages.size()) recv_next();
    });
  };
  send_next();
  recv_next();
  io.run_for(20s);
  CHECK(sent == messages.size());
  CHECK(received == messages);

  SUBCASE("a message already read ahead completes without touching the socket, never inline") {
    a.send_bytes("one");
    a.send_bytes("two");
    CHECK(b.recv_bytes().size() == 3);  // blocking recv reads both; "two" stays buffered
    bool done = false;
    b.async_recv_bytes([&](boost::system::error_code ec, Bytes m) {
      CHECK_FALSE(ec);
      CHECK(m.size() == 3);
      done = true;
    });
    CHECK_FALSE(done);
    io.restart();
    io.run_for(5s);
    CHECK(done);
  }
  SUBCASE("blocking calls still work after asynchronous ones") {
    auto big = pattern(3 << 20);
    Background w([&] { a.send_bytes(big); });
    CHECK(b.recv_bytes() == big);
    w.join();
  }
  SUBCASE("EOF completes with eof") {
    a.close();
    boost::system::error_code got;
    b.async_recv_bytes([&](boost::system::error_code ec, Bytes) { got = ec; });
    io.restart();
    io.run_for(5s);
    CHECK(got == boost::asio::error::eof);
  }
  SUBCASE("over the cap: message_size, and the connection is closed") {
    b.set_max_message(10);
    a.send_bytes(pattern(11));
    boost::system::error_code got;
    b.async_recv_bytes([&](boost::system::error_code ec, Bytes) { got = ec; });
    io.restart();
    io.run_for(5s);
    CHECK(got == boost::asio::error::message_size);
    CHECK(b.closed());
  }
  SUBCASE("closing with an operation pending aborts it") {
    boost::system::error_code got;
    bool called = false;
    b.async_recv_bytes([&](boost::system::error_code ec, Bytes) {
      got = ec;
      called = true;
    });
    io.restart();
    io.poll();
    b.close();
    io.run_for(5s);
    CHECK(called);
    CHECK(got == boost::asio::error::operation_aborted);
  }
  SUBCASE("sending to a closed peer reports an error, no SIGPIPE") {
    b.close();
    boost::system::error_code got;
    a.async_send_bytes(pattern(1 << 20), [&](boost::system::error_code ec) { got = ec; });
    io.restart();
    io.run_for(5s);
    CHECK(got == boost::asio::error::broken_pipe);
  }
}

TEST_CASE("a forked child closing a rebound connection leaves the parent's io_context working") {
  boost::asio::io_context io;
  auto [a, b] = mpx::Pipe();
  b.rebind(io.get_executor());
  std::string got;
  b.async_recv_bytes([&](boost::system::error_code ec, Bytes m) {
    CHECK_FALSE(ec);
    got.assign(reinterpret_cast<const char*>(m.data()), m.size());
  });
  io.poll();  // the read is now waiting in the reactor
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    b.close();
    a.send_bytes("from the child");
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  io.run_for(5s);
  CHECK(got == "from the child");
}

#if defined(BOOST_ASIO_HAS_CO_AWAIT)
TEST_CASE("async operations in a C++20 coroutine with use_awaitable") {
  boost::asio::io_context io;
  TempDir dir;
  mpx::Listener l(Address::unix_path(dir / "co"), 8, "co key");
  // The client is blocking on another thread; the server side is a coroutine.
  Background client([&] {
    auto c = mpx::Client(l.address(), "co key");
    for (std::size_t n : {std::size_t{0}, std::size_t{5}, std::size_t{2} << 20}) {
      auto m = pattern(n, 9);
      c.send_bytes(m);
      CHECK(c.recv_bytes() == m);
    }
  });
  auto conn = l.accept(10s);
  conn.rebind(io.get_executor());
  int echoed = 0;
  std::string ended;
  boost::asio::co_spawn(
      io,
      [&]() -> boost::asio::awaitable<void> {
        try {
          for (;;) {
            Bytes m = co_await conn.async_recv_bytes(boost::asio::use_awaitable);
            co_await conn.async_send_bytes(m, boost::asio::use_awaitable);
            ++echoed;
          }
        } catch (const boost::system::system_error& e) {
          ended = e.code() == boost::asio::error::eof ? "eof" : e.what();
        }
      },
      boost::asio::detached);
  io.run_for(20s);
  client.join();
  CHECK(echoed == 3);
  CHECK(ended == "eof");
}
#endif
