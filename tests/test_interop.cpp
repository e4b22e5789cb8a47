// mpx and Python's multiprocessing.connection talking to each other, both directions:
// the stock module of the machine's python3 (3.11: the legacy HMAC-MD5 handshake on its side)
// and tests/python/modern_peer.py, which speaks Python 3.12's {sha256} form.
#include <mpx/connection.hpp>

#include <doctest/doctest.h>
#include <support.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

using namespace std::chrono_literals;
using mpx::Address;
using mpx::Bytes;

namespace {

const std::string kSource = MPX_SOURCE_DIR;
const std::string kEchoServer = kSource + "/apps/python/echo_server.py";
const std::string kEchoClient = kSource + "/apps/python/echo_client.py";
const std::string kModern = kSource + "/tests/python/modern_peer.py";
const std::vector<std::size_t> kSizes{0, 1, 20000, 6 << 20};
const std::string kSizesArg = "0,1,20000,6291456";

// A child process (python3 -u ..., or one of the example programs); its stdout comes back
// through a pipe, stderr is shared.
class PyChild {
 public:
  PyChild(const std::string& python, std::vector<std::string> args, bool is_python = true) {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    if (is_python)
      args.insert(args.begin(), {python, "-u"});
    else
      args.insert(args.begin(), python);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    int rc = ::posix_spawn(&pid_, python.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(p[1]);
    out_ = p[0];
    REQUIRE(rc == 0);
  }
  PyChild(const PyChild&) = delete;
  PyChild& operator=(const PyChild&) = delete;
  ~PyChild() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }

  // The next line of output, or nullopt at EOF / timeout.
  std::optional<std::string> read_line(std::chrono::milliseconds timeout = 20s) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        auto line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd pfd{out_, POLLIN, 0};
      if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) continue;
      char chunk[4096];
      auto n = ::read(out_, chunk, sizeof chunk);
      if (n <= 0) return std::nullopt;
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  // All remaining output, then the exit status (-1 if it did not end in time).
  int finish(std::string* output = nullptr, std::chrono::milliseconds timeout = 30s) {
    std::string all;
    while (auto line = read_line(timeout)) all += *line + "\n";
    if (output) *output = all;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) return -1;
      std::this_thread::sleep_for(5ms);
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buf_;
};

struct TempDir : mpx::test::TempDir {
  TempDir() : mpx::test::TempDir("mpx-interop") {}
};

Bytes pattern(std::size_t n) {  // what echo_client.py sends: (i * 131 + 7) & 0xff, period 65536
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>(((i % 65536) * 131 + 7) & 0xff);
  return b;
}

// Serves one accepted connection: echoes until the peer leaves; returns messages echoed.
int echo_until_closed(mpx::Connection& c) {
  int n = 0;
  try {
    for (;;) {
      auto m = c.recv_bytes();
      c.send_bytes(m);
      ++n;
    }
  } catch (const mpx::ConnectionClosed&) {
  }
  return n;
}

// Talks to an echo server as a client: every size, checked.
void exchange(mpx::Connection& c) {
  for (auto n : kSizes) {
    CAPTURE(n);
    auto m = pattern(n);
    c.send_bytes(m);
    auto echo = c.recv_bytes();
    CHECK(echo.size() == n);
    CHECK(echo == m);
  }
}

std::vector<std::string> client_args(bool modern, const Address& a, std::optional<std::string> key) {
  std::vector<std::string> args;
  if (modern) args = {kModern, "--strict"};
  args.insert(args.end(), {kEchoClient, "--address", a.str(), "--sizes", kSizesArg});
  if (key) args.insert(args.end(), {"--authkey", *key});
  return args;
}

std::vector<std::string> server_args(bool modern, const std::string& digest, const std::string& address,
                                     std::optional<std::string> key, int connections) {
  std::vector<std::string> args;
  if (modern) args = {kModern, "--strict", "--digest", digest};
  args.insert(args.end(), {kEchoServer, "--address", address, "--connections", std::to_string(connections)});
  if (key) args.insert(args.end(), {"--authkey", *key});
  return args;
}

}  // namespace

TEST_CASE("Python clients against an mpx Listener") {
  MPX_REQUIRE_PYTHON(python);
  TempDir dir;
  for (bool modern : {false, true}) {
    for (auto address : {Address::unix_path(dir.path().string() + "/l.sock"), Address::tcp("127.0.0.1", 0),
                         Address::abstract("mpx-interop-" + std::to_string(::getpid()))}) {
      for (std::optional<std::string> key :
           {std::optional<std::string>{}, std::optional<std::string>{"sekrit"}}) {
        CAPTURE(modern);
        CAPTURE(address.str());
        CAPTURE(key.value_or("<none>"));
        mpx::Listener listener(address, 8, key);
        PyChild py(*python, client_args(modern, listener.address(), key));
        auto conn = listener.accept(20s);
        CHECK(echo_until_closed(conn) == static_cast<int>(kSizes.size()));
        std::string out;
        CHECK(py.finish(&out) == 0);
        CHECK(out.find("ok 4") != std::string::npos);
      }
    }
  }
}

TEST_CASE("a Python client with the wrong key is refused; the mpx Listener keeps serving") {
  MPX_REQUIRE_PYTHON(python);
  TempDir dir;
  for (bool modern : {false, true}) {
    CAPTURE(modern);
    mpx::Listener listener(Address::unix_path(dir.path().string() + "/k.sock"), 8, "right");
    {
      PyChild bad(*python, client_args(modern, listener.address(), "wrong"));
      CHECK_THROWS_AS(listener.accept(20s), mpx::AuthenticationError);
      std::string out;
      CHECK(bad.finish(&out) == 3);
      CHECK(out.find("auth-failed") != std::string::npos);
    }
    {
      PyChild good(*python, client_args(modern, listener.address(), "right"));
      auto conn = listener.accept(20s);
      CHECK(echo_until_closed(conn) == 4);
      CHECK(good.finish() == 0);
    }
  }
}

TEST_CASE("mpx Clients against a Python Listener") {
  MPX_REQUIRE_PYTHON(python);
  TempDir dir;
  struct Case {
    bool modern;
    std::string digest;
    std::string address;
  };
  for (const auto& c :
       {Case{false, "", "tcp:127.0.0.1:0"}, Case{false, "", "unix:" + dir.path().string() + "/py.sock"},
        Case{true, "sha256", "tcp:127.0.0.1:0"},
        Case{true, "sha512", "unix:" + dir.path().string() + "/py.sock"},
        Case{true, "sha3_256", "unix:@mpx-py-" + std::to_string(::getpid())}}) {
    for (std::optional<std::string> key :
         {std::optional<std::string>{}, std::optional<std::string>{"py key"}}) {
      CAPTURE(c.modern);
      CAPTURE(c.digest);
      CAPTURE(c.address);
      CAPTURE(key.value_or("<none>"));
      // With a key: a wrong-key client first, then a good one; without: one client.
      int connections = key ? 2 : 1;
      PyChild py(*python, server_args(c.modern, c.digest, c.address, key, connections));
      auto ready = py.read_line();
      REQUIRE(ready);
      REQUIRE(ready->starts_with("ready "));
      auto address = Address::parse(ready->substr(6));
      if (key) {
        CHECK_THROWS_AS(mpx::Client(address, "not the key"), mpx::AuthenticationError);
        auto line = py.read_line();
        REQUIRE(line);
        CHECK(line->starts_with("auth-failed"));
      }
      {
        auto conn = mpx::Client(address, key);
        exchange(conn);
      }
      std::string out;
      CHECK(py.finish(&out) == 0);
      CHECK(out.find("served 4") != std::string::npos);
    }
  }
}

TEST_CASE("the example programs talk to their Python counterparts") {
  MPX_REQUIRE_PYTHON(python);
  const std::string bin = MPX_BINARY_DIR;
  const std::string server = bin + "/apps/echo_server", client = bin + "/apps/echo_client";
  if (::access(server.c_str(), X_OK) != 0 || ::access(client.c_str(), X_OK) != 0) {
    MESSAGE("echo_server/echo_client not built (MPX_BUILD_APPS=OFF?): skipped");
    return;
  }
  TempDir dir;
  {
    PyChild cpp(
        server,
        {"--address", "unix:" + dir.path().string() + "/echo.sock", "--authkey", "k", "--clients", "1"},
        false);
    auto line = cpp.read_line();
    REQUIRE(line);
    REQUIRE(line->starts_with("listening on "));
    auto address = Address::parse(line->substr(13));
    PyChild py(*python,
               {kEchoClient, "--address", address.str(), "--authkey", "k", "--sizes", kSizesArg, "hi"});
    std::string out;
    CHECK(py.finish(&out) == 0);
    CHECK(out.find("echo: hi") != std::string::npos);
    CHECK(out.find("ok 5") != std::string::npos);
    CHECK(cpp.finish(&out) == 0);
    CHECK(out.find("5 messages echoed") != std::string::npos);
  }
  {
    PyChild py(*python,
               {kEchoServer, "--address", "tcp:127.0.0.1:0", "--authkey", "k", "--connections", "1"});
    auto line = py.read_line();
    REQUIRE(line);
    REQUIRE(line->starts_with("ready "));
    PyChild cpp(client, {"--address", line->substr(6), "--authkey", "k", "hello", "world"}, false);
    std::string out;
    CHECK(cpp.finish(&out) == 0);
    CHECK(out == "echo: hello\necho: world\n");
    CHECK(py.finish(&out) == 0);
    CHECK(out.find("served 2") != std::string::npos);
  }
  {  // a wrong key: exit status 3 from the C++ client, and the Python server says why
    PyChild py(*python,
               {kEchoServer, "--address", "tcp:127.0.0.1:0", "--authkey", "k", "--connections", "1"});
    auto line = py.read_line();
    REQUIRE(line);
    PyChild cpp(client, {"--address", line->substr(6), "--authkey", "not k", "hello"}, false);
    CHECK(cpp.finish() == 3);
    std::string out;
    CHECK(py.finish(&out) == 0);
    CHECK(out.find("auth-failed") != std::string::npos);
  }
}

TEST_CASE("send_bytes_batch reaches a Python peer as separate messages, in order") {
  MPX_REQUIRE_PYTHON(python);
  TempDir dir;
  PyChild py(*python, server_args(false, "", "unix:" + dir.path().string() + "/batch.sock", "k", 1));
  auto ready = py.read_line();
  REQUIRE(ready);
  REQUIRE(ready->starts_with("ready "));
  std::vector<mpx::Bytes> messages;
  for (std::size_t i = 0; i < 64; ++i) messages.push_back(pattern(i == 7 ? 10000 : (i * 37) % 3000));
  std::vector<std::span<const std::byte>> views(messages.begin(), messages.end());
  {
    auto conn = mpx::Client(Address::parse(ready->substr(6)), std::string("k"));
    conn.send_bytes_batch(views);
    for (std::size_t i = 0; i < messages.size(); ++i) {
      CAPTURE(i);
      CHECK(conn.recv_bytes() == messages[i]);
    }
  }
  std::string out;
  CHECK(py.finish(&out) == 0);
  CHECK(out.find("served 64") != std::string::npos);
}
