// mpxd, the built daemon: command line, authkey file checks, serving C++ and Python
// clients, SIGTERM/SIGINT shutdown, socket file handling, exit codes; and the example
// programs that use it (manager_client, task_worker) run as real processes.
#include <mpx/managers.hpp>
#include <mpx/process.hpp>

#include <doctest/doctest.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <support.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const std::string kMpxd = std::string(MPX_BINARY_DIR) + "/apps/mpxd";
const std::string kPythonClient = std::string(MPX_SOURCE_DIR) + "/apps/python/manager_dict.py";
const std::string kClient = std::string(MPX_BINARY_DIR) + "/apps/manager_client";
const std::string kWorker = std::string(MPX_BINARY_DIR) + "/apps/task_worker";
const std::string kCustom = std::string(MPX_BINARY_DIR) + "/apps/custom_server";

// A scratch directory for one test (the daemon must be built).
struct TempDir : mpx::test::TempDir {
  TempDir() : mpx::test::TempDir("mpx-mpxd-test") {
    const std::string hint = "build the mpxd target first: " + kMpxd;
    REQUIRE_MESSAGE(fs::exists(kMpxd), hint);
  }
};

std::string write_key(const TempDir& dir, const std::string& content, mode_t mode,
                      const std::string& name = "key") {
  return mpx::test::write_file(dir / name, content, mode);
}

using mpx::test::run;
using mpx::test::slurp;
using Proc = mpx::test::ChildProcess;

// Waits (bounded) until the daemon accepts clients.
std::optional<mpx::Manager> connect_when_ready(const mpx::Address& a, const std::string& key, Proc& p) {
  for (int i = 0; i < 500; ++i) {
    try {
      return mpx::Manager::connect(a, key);
    } catch (const mpx::ConnectionError&) {
    }
    if (p.wait(10ms)) return std::nullopt;  // it exited instead
  }
  return std::nullopt;
}

std::uint16_t free_tcp_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  ::close(fd);
  return ntohs(sa.sin_port);
}

std::pair<int, std::string> shell(const std::string& cmd) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  char buf[512];
  while (std::fgets(buf, sizeof buf, f)) out += buf;
  int st = ::pclose(f);
  return {WIFEXITED(st) ? WEXITSTATUS(st) : -1, out};
}

}  // namespace

TEST_CASE("mpxd: --help documents the exit codes, --version, usage errors") {
  TempDir dir;
  Proc help({kMpxd, "--help"}, dir / "help.log");
  CHECK(help.wait(30s) == 0);
  auto text = help.output();
  CHECK(text.find("--address") != std::string::npos);
  CHECK(text.find("--authkey-file") != std::string::npos);
  CHECK(text.find("Exit status") != std::string::npos);
  Proc version({kMpxd, "--version"}, dir / "version.log");
  CHECK(version.wait(30s) == 0);
  CHECK(version.output().find("mpxd ") == 0);
  CHECK(run({kMpxd}, dir / "none.log") == 2);
  CHECK(run({kMpxd, "--address", "unix:/x", "--authkey-file", "/x", "--bogus"}, dir / "bogus.log") == 2);
  auto key = write_key(dir, "k", 0600);
  CHECK(run({kMpxd, "--address", "carrier-pigeon:/x", "--authkey-file", key}, dir / "addr.log") == 2);
}

TEST_CASE("mpxd: refuses authkey files that are missing, empty or readable by others") {
  TempDir dir;
  std::string sock = dir / "d.sock";
  CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", dir / "missing"}, dir / "1.log") == 3);
  auto open_key = write_key(dir, "secret", 0644, "open");
  CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", open_key}, dir / "2.log") == 3);
  CHECK(slurp(dir / "2.log").find("chmod 600") != std::string::npos);
  auto group_key = write_key(dir, "secret", 0640, "group");
  CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", group_key}, dir / "3.log") == 3);
  auto empty_key = write_key(dir, "\n", 0600, "empty");
  CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", empty_key}, dir / "4.log") == 3);
  CHECK_FALSE(fs::exists(sock));
}

TEST_CASE("mpxd: refuses an authkey path that is not a regular file, at once") {
  TempDir dir;
  std::string sock = dir / "d.sock";
  // A FIFO with a private mode: opening it for reading used to wait for a writer forever.
  std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  Proc on_fifo({kMpxd, "--address", "unix:" + sock, "--authkey-file", fifo}, dir / "fifo.log");
  CHECK(on_fifo.wait(10s) == 3);
  CHECK(on_fifo.output().find("is a FIFO") != std::string::npos);

  // A symlink to a good private key: the link is refused, not followed.
  auto key = write_key(dir, "secret", 0600);
  std::string link = dir / "link";
  REQUIRE(::symlink(key.c_str(), link.c_str()) == 0);
  CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", link}, dir / "link.log") == 3);
  CHECK(slurp(dir / "link.log").find("is a symbolic link") != std::string::npos);

  std::string sub = dir / "subdir";
  REQUIRE(::mkdir(sub.c_str(), 0700) == 0);
  CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", sub}, dir / "dir.log") == 3);
  CHECK(slurp(dir / "dir.log").find("is a directory") != std::string::npos);

  // A socket file cannot even be opened; the message still says what it is.
  std::string sock_file = dir / "s";
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, sock_file.c_str(), sizeof sa.sun_path - 1);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  ::chmod(sock_file.c_str(), 0600);
  CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", sock_file}, dir / "sock.log") == 3);
  CHECK(slurp(dir / "sock.log").find("is a socket") != std::string::npos);
  ::close(fd);

  // The same checks guard the client programs, which share the reader.
  CHECK(run({kClient, "--address", "unix:" + sock, "--authkey-file", fifo, "show"}, dir / "c.log") != 0);
  CHECK(slurp(dir / "c.log").find("is a FIFO") != std::string::npos);
  CHECK_FALSE(fs::exists(sock));
}

TEST_CASE("mpxd: serves C++ and Python clients; SIGTERM drains and removes the socket") {
  TempDir dir;
  std::string sock = dir / "mpxd.sock";
  auto key_file = write_key(dir, "the key\n", 0600);  // one trailing newline is not part of the key
  auto addr = mpx::Address::unix_path(sock);
  Proc d({kMpxd, "--address", "unix:" + sock, "--authkey-file", key_file, "--log-level", "debug"},
         dir / "d.log");
  auto m = connect_when_ready(addr, "the key", d);
  REQUIRE(m);
  struct stat st {};
  REQUIRE(::stat(sock.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK_THROWS_AS(mpx::Manager::connect(addr, "the key\n"), mpx::AuthenticationError);

  // Two C++ clients in different processes share a dict and a queue by name.
  auto cfg = m->dict<std::string, std::string>("config");
  cfg.set("from", "c++");
  mpx::Process other([addr] {
    auto c = mpx::Manager::connect(addr, "the key");
    auto q = c.queue<int>(0, "numbers");
    for (int i = 0; i < 5; ++i) q.put(i);
    if (c.dict<std::string, std::string>("config").at("from") != "c++") throw std::runtime_error("dict");
  });
  other.start();
  auto q = m->queue<int>(0, "numbers");
  int sum = 0;
  for (int i = 0; i < 5; ++i) sum += q.get(30s);
  CHECK(sum == 10);
  REQUIRE(other.join(30s));
  CHECK(other.exitcode() == 0);

  // The Python client, speaking proto/ with nothing but the standard library.
  std::string py = "python3 " + kPythonClient + " --address unix:" + sock + " --authkey-file " + key_file +
                   " --name config ";
  auto [rc_set, out_set] = shell(py + "set colour blue");
  CHECK(rc_set == 0);
  CHECK(cfg.at("colour") == "blue");
  auto [rc_get, out_get] = shell(py + "get from");
  CHECK(rc_get == 0);
  CHECK(out_get == "c++\n");
  auto [rc_items, out_items] = shell(py + "items");
  CHECK(rc_items == 0);
  CHECK(out_items == "from=c++\ncolour=blue\n");
  CHECK(shell(py + "setdefault colour red") == std::pair<int, std::string>{0, "blue\n"});  // kept
  CHECK(shell(py + "setdefault size M") == std::pair<int, std::string>{0, "M\n"});
  CHECK(cfg.at("size") == "M");
  CHECK(shell(py + "popitem") == std::pair<int, std::string>{0, "size=M\n"});  // the last inserted
  CHECK_FALSE(cfg.contains("size"));
  auto [rc_missing, out_missing] = shell(py + "get nothing 2>/dev/null");
  CHECK(rc_missing == 1);
  m->dict<int, int>("ints");
  auto [rc_type, out_type] = shell("python3 " + kPythonClient + " --address unix:" + sock +
                                   " --authkey-file " + key_file + " --name ints size 2>&1");
  CHECK(rc_type == 2);
  CHECK(out_type.find("TypeMismatch") != std::string::npos);

  // A client blocked on the server when it stops hears about it.
  std::thread blocked([q]() mutable { CHECK_THROWS_AS(q.get(60s), mpx::ConnectionError); });
  std::this_thread::sleep_for(100ms);
  d.signal(SIGTERM);
  CHECK(d.wait(30s) == 0);
  blocked.join();
  CHECK_FALSE(fs::exists(sock));
  auto log = d.output();
  CHECK(log.find("serving on unix:" + sock) != std::string::npos);
  CHECK(log.find("mpxd stopped") != std::string::npos);
}

TEST_CASE("mpxd: SIGINT, TCP, a stale socket file is reclaimed, a live one is not") {
  TempDir dir;
  auto key_file = write_key(dir, "k2", 0600);
  SUBCASE("tcp and SIGINT") {
    auto port = free_tcp_port();
    auto addr = mpx::Address::tcp("127.0.0.1", port);
    Proc d({kMpxd, "--address", addr.str(), "--authkey-file", key_file}, dir / "tcp.log");
    auto m = connect_when_ready(addr, "k2", d);
    REQUIRE(m);
    auto l = m->list<std::string>();
    l.append("over tcp");
    CHECK(l.at(0) == "over tcp");
    d.signal(SIGINT);
    CHECK(d.wait(30s) == 0);
  }
  SUBCASE("socket files") {
    std::string sock = dir / "s.sock";
    {  // a socket file nobody listens on, as a crashed server leaves it
      int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un sa{};
      sa.sun_family = AF_UNIX;
      std::strncpy(sa.sun_path, sock.c_str(), sizeof sa.sun_path - 1);
      REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
      ::close(fd);
    }
    auto addr = mpx::Address::unix_path(sock);
    Proc d({kMpxd, "--address", "unix:" + sock, "--authkey-file", key_file}, dir / "a.log");
    auto m = connect_when_ready(addr, "k2", d);
    REQUIRE(m);
    CHECK(d.output().find("stale socket") != std::string::npos);
    // A second daemon on the same live socket refuses to start and leaves it alone.
    CHECK(run({kMpxd, "--address", "unix:" + sock, "--authkey-file", key_file}, dir / "b.log") == 4);
    m->value<int>(5, "still").set(6);
    CHECK(m->value<int>(0, "still").get() == 6);
    d.signal(SIGTERM);
    CHECK(d.wait(30s) == 0);
    CHECK_FALSE(fs::exists(sock));
  }
}

TEST_CASE(
    "example programs: manager_client instances share a dict and a queue; task_worker runs their tasks") {
  TempDir dir;
  REQUIRE(fs::exists(kClient));
  REQUIRE(fs::exists(kWorker));
  std::string sock = dir / "mpxd.sock";
  auto key_file = write_key(dir, "example key\n", 0600);
  auto addr = mpx::Address::unix_path(sock);
  Proc d({kMpxd, "--address", "unix:" + sock, "--authkey-file", key_file}, dir / "d.log");
  auto m = connect_when_ready(addr, "example key", d);
  REQUIRE(m);
  auto with_server = [&](std::string program, std::vector<std::string> rest) {
    std::vector<std::string> args{std::move(program), "--address", "unix:" + sock, "--authkey-file",
                                  key_file};
    args.insert(args.end(), rest.begin(), rest.end());
    return args;
  };
  Proc worker(with_server(kWorker, {"--processes", "2"}), dir / "worker.log");

  // The consumer starts first and waits on the queue the producer then fills.
  Proc consumer(with_server(kClient, {"consumer"}), dir / "consumer.log");
  Proc producer(with_server(kClient, {"producer", "--count", "1000"}), dir / "producer.log");
  CHECK(producer.wait(60s) == 0);
  CHECK(consumer.wait(60s) == 0);
  CHECK(producer.output() == "producer: put 1000 items on queue 'jobs'\n");
  CHECK(consumer.output() == "consumer: got 1000 items from queue 'jobs', sum 500500\n");

  Proc submit(with_server(kClient, {"submit", "--count", "10"}), dir / "submit.log");
  CHECK(submit.wait(60s) == 0);
  auto out = submit.output();
  CHECK(out.find("submit: square(1..10) = 1 4 9 16 25 36 49 64 81 100\n") != std::string::npos);
  CHECK(out.find("submit: sum of squares = 385\n") != std::string::npos);
  CHECK(out.find("submit: word_count = 9\n") != std::string::npos);
  CHECK(out.find("submit: shout = HELLO FROM MPX!\n") != std::string::npos);
  CHECK(out.find("submit: isqrt(-4) failed: RemoteError(") != std::string::npos);
  CHECK(out.find("submit: no_such_task failed: ValueError\n") != std::string::npos);

  // What the clients left in the shared dict, seen from here, from `show` and from Python.
  auto demo = m->dict<std::string, std::string>("demo");
  CHECK(demo.at("producer.items") == "1000");
  CHECK(demo.at("consumer.items") == "1000");
  CHECK(demo.at("consumer.sum") == "500500");
  CHECK(demo.at("submit.sum_of_squares") == "385");
  Proc show(with_server(kClient, {"show"}), dir / "show.log");
  CHECK(show.wait(60s) == 0);
  CHECK(show.output().find("consumer.sum=500500\n") != std::string::npos);
  auto [rc, py_out] = shell("python3 " + kPythonClient + " --address unix:" + sock + " --authkey-file " +
                            key_file + " --name demo get submit.sum_of_squares");
  CHECK(rc == 0);
  CHECK(py_out == "385\n");

  // A wrong key file is refused before anything is sent.
  auto open_key = write_key(dir, "example key", 0644, "open");
  Proc refused({kClient, "--address", "unix:" + sock, "--authkey-file", open_key, "show"},
               dir / "refused.log");
  CHECK(refused.wait(60s) == 1);
  CHECK(refused.output().find("chmod 600") != std::string::npos);

  // Stopping the daemon stops the workers too.
  m.reset();
  d.signal(SIGTERM);
  CHECK(d.wait(30s) == 0);
  CHECK(worker.wait(30s) == 0);
  CHECK(worker.output().find("task_worker: stopped") != std::string::npos);
}

TEST_CASE("example programs: custom_server hosts a registered type that clients call by name") {
  TempDir dir;
  REQUIRE(fs::exists(kCustom));
  std::string sock = dir / "custom.sock";
  auto key_file = write_key(dir, "custom key", 0600);
  auto addr = mpx::Address::unix_path(sock);
  Proc server({kCustom, "serve", "--address", "unix:" + sock, "--authkey-file", key_file},
              dir / "server.log");
  auto m = connect_when_ready(addr, "custom key", server);
  REQUIRE(m);
  auto client = [&](const std::string& add, const std::string& log) {
    Proc c({kCustom, "client", "--address", "unix:" + sock, "--authkey-file", key_file, "--add", add},
           dir / log);
    REQUIRE(c.wait(60s) == 0);
    return c.output();
  };
  CHECK(client("5", "c1.log") == "visits 'counter': added 5, total 5\n");
  CHECK(client("7", "c2.log") == "visits 'counter': added 7, total 12\n");
  // The built-in kinds are there too, and the counter's name is taken.
  CHECK_THROWS_AS((m->dict<int, int>("counter")), mpx::TypeMismatch);
  m->list<int>("l").append(1);
  m.reset();
  server.signal(SIGTERM);
  CHECK(server.wait(30s) == 0);
  CHECK(server.output().find("custom_server: stopped") != std::string::npos);
  CHECK_FALSE(fs::exists(sock));
}
