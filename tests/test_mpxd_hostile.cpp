// mpxd under hostile local clients: one that never reads its replies, a thousand idle sockets
// under a small descriptor limit, a flood of wrong keys, more connections than the cap, and a
// crowd of clients killed mid-call. Each time the daemon stays small, keeps serving the others
// and logs summaries rather than a line per peer.
#include <mpx/connection.hpp>
#include <mpx/managers.hpp>
#include <mpx/process.hpp>
#include <mpx/proto/manager.hpp>

#include <doctest/doctest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <raw_manager.hpp>
#include <support.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using mpx::test::ChildProcess;

namespace {

const std::string kMpxd = std::string(MPX_BINARY_DIR) + "/apps/mpxd";
const std::string kKey = "hostile-test-key";

// mpxd on a fresh socket in a scratch directory, stopped at scope exit.
struct Daemon {
  mpx::test::TempDir dir{"mpx-hostile"};
  std::string sock = dir / "d.sock";
  mpx::Address address = mpx::Address::unix_path(sock);
  std::string log = dir / "mpxd.log";
  std::optional<ChildProcess> proc;

  // `fd_limit`: run under `ulimit -n` (soft and hard), as an operator might.
  explicit Daemon(std::vector<std::string> extra = {}, int fd_limit = 0) {
    const std::string hint = "build the mpxd target first: " + kMpxd;
    REQUIRE_MESSAGE(fs::exists(kMpxd), hint);
    std::string key = mpx::test::write_file(dir / "key", kKey, 0600);
    std::vector<std::string> args{kMpxd, "--address",   "unix:" + sock, "--authkey-file",
                                  key,   "--log-level", "info"};
    args.insert(args.end(), extra.begin(), extra.end());
    if (fd_limit > 0) {
      std::string cmd = "ulimit -n " + std::to_string(fd_limit) + " && exec";
      for (auto& a : args) cmd += " '" + a + "'";
      args = {"/bin/sh", "-c", cmd};
    }
    proc.emplace(args, log);
    for (int i = 0; i < 500 && !mpx::test::unix_socket_listening(sock); ++i) {
      REQUIRE_FALSE(proc->wait(10ms).has_value());
    }
    REQUIRE(mpx::test::unix_socket_listening(sock));
  }
  ~Daemon() {
    if (std::getenv("MPX_TEST_SHOW_LOG")) MESSAGE(proc->output());  // for debugging a failure
    proc->signal(SIGTERM);
    auto rc = proc->wait(10s);
    if (!rc) proc->signal(SIGKILL);
    INFO(proc->output());
    CHECK(rc == 0);  // a clean shutdown, whatever the clients did (and, under ASan, no leaks)
  }
  std::size_t lines_with(const std::string& text) const {
    auto out = proc->output();
    std::size_t n = 0, at = 0;
    while ((at = out.find(text, at)) != std::string::npos) ++n, at += text.size();
    return n;
  }
};

using mpx::test::manager_request;

// A request whose reply is ok; returns the reply's body.
mpx::Bytes call_ok(mpx::Connection& c, const mpx::Bytes& req) {
  auto reply = mpx::test::roundtrip(c, req);
  REQUIRE(reply.status == 0);
  return reply.body;
}

std::span<const std::byte> as_bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

// A unix socket connected to `path` that sends nothing (non-blocking connect: a full backlog
// is retried, bounded).
int idle_socket(const std::string& path) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  for (int attempt = 0; attempt < 2000; ++attempt) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    REQUIRE(fd >= 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) return fd;
    int e = errno;
    ::close(fd);
    REQUIRE_MESSAGE(e == EAGAIN, std::strerror(e));
    std::this_thread::sleep_for(1ms);
  }
  FAIL("the daemon's backlog stayed full");
  return -1;
}

// True once the peer has closed `fd` (what it sent before is read and dropped).
bool closed_by_peer(int fd) {
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) continue;
    return n == 0 || (errno != EAGAIN && errno != EINTR);
  }
}

void raise_own_fd_limit(rlim_t want) {
  rlimit rl{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
  if (rl.rlim_cur < want) {
    rl.rlim_cur = std::min(want, rl.rlim_max);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &rl) == 0);
  }
  REQUIRE(rl.rlim_cur >= want);
}

}  // namespace

TEST_CASE("mpxd: a client that pipelines 1,500 gets of 1 MiB and never reads is held to the pending bound") {
  Daemon d({"--pending-timeout", "2"});
  auto c = mpx::test::raw_manager_session(d.address, kKey);
  std::uint64_t oid = mpx::test::open_raw(c, mpx::proto::Kind::dict, "big");
  std::string value(1 << 20, 'v');
  call_ok(c, manager_request(mpx::proto::Op::dict_set, oid, [&](mpx::proto::Writer& w) {
            w.blob(as_bytes("k"));
            w.blob(as_bytes(value));
          }));
  std::size_t rss_before = mpx::test::resident_bytes(d.proc->pid());
  auto get =
      manager_request(mpx::proto::Op::dict_get, oid, [](mpx::proto::Writer& w) { w.blob(as_bytes("k")); });
  // Once the daemon stops reading it, the socket fills and sends block: they go from a thread,
  // which stops when the daemon hangs up.
  int sent = 0;
  std::thread sender([&] {
    try {
      for (; sent < 1500; ++sent) c.send_bytes(std::span<const std::byte>(get));
    } catch (const mpx::ConnectionError&) {
    }
  });

  // Another client is served as usual meanwhile.
  auto t0 = std::chrono::steady_clock::now();
  auto m = mpx::Manager::connect(d.address, kKey);
  auto other = m.dict<std::string, int>("other");
  other.set("x", 42);
  CHECK(other.get("x") == 42);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);

  std::this_thread::sleep_for(500ms);
  std::size_t rss = mpx::test::resident_bytes(d.proc->pid());
  INFO("mpxd RSS before " << rss_before << " bytes, under the unread replies " << rss);
  CHECK(rss < rss_before + (48u << 20));  // unbounded, it grew by 1.5 GB

  // It stays behind past --pending-timeout: the daemon closes it. Everything it is sent
  // before the end is a few MiB, not 1,500 of them.
  std::size_t received = 0;
  auto deadline = std::chrono::steady_clock::now() + 20s;
  bool eof = false;
  std::this_thread::sleep_for(3s);
  while (std::chrono::steady_clock::now() < deadline) {
    try {
      if (!c.poll(1s)) continue;
      received += c.recv_bytes().size();
    } catch (const mpx::ConnectionError&) {
      eof = true;
      break;
    }
  }
  CHECK(eof);
  sender.join();
  INFO("requests sent before the daemon hung up: " << sent);
  CHECK(received < (std::size_t{24} << 20));
  CHECK(d.lines_with("too many replies unread") == 1);
  CHECK(other.get("x") == 42);  // and the daemon still serves
}

TEST_CASE("mpxd: 1,100 idle connections under ulimit -n 1024 do not keep a real client out") {
  raise_own_fd_limit(1400);
  Daemon d({}, 1024);
  std::vector<int> idle;
  for (int i = 0; i < 1100; ++i) idle.push_back(idle_socket(d.sock));

  auto t0 = std::chrono::steady_clock::now();
  {
    auto m = mpx::Manager::connect(d.address, kKey);
    auto dict = m.dict<std::string, int>("served");
    dict.set("n", 1);
    CHECK(dict.get("n") == 1);
  }
  auto took = std::chrono::steady_clock::now() - t0;
  INFO("a real client behind 1,100 idle sockets took "
       << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took < 5s);

  // The daemon kept at most --max-handshakes of them (64) and closed the rest.
  std::this_thread::sleep_for(300ms);
  std::size_t closed = 0;
  for (int fd : idle) closed += closed_by_peer(fd) ? 1 : 0;
  CHECK(closed >= 1100 - 64);
  for (int fd : idle) ::close(fd);
  // Summaries, not a line per socket.
  CHECK(d.lines_with("handshake dropped") < 20);
  CHECK(d.lines_with("accept() failed") < 20);
}

TEST_CASE("mpxd: 2,000 wrong-key handshakes are refused and logged as summaries") {
  Daemon d;
  auto t0 = std::chrono::steady_clock::now();
  int refused = 0;
  for (int i = 0; i < 2000; ++i) {
    try {
      mpx::Client(d.address, std::string("wrong key"));
    } catch (const mpx::AuthenticationError&) {
      ++refused;
    }
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(refused == 2000);
  std::this_thread::sleep_for(1500ms);  // the last summary comes a second after the last failure

  // The counts in the lines add up to every failure, in at most a line a second (plus one).
  auto out = d.proc->output();
  long total = 0, lines = 0;
  const std::string first = "failed authkey handshake (", more = "failed authkey handshake: ";
  for (std::size_t at = 0; (at = out.find(first, at)) != std::string::npos; at += first.size())
    ++total, ++lines;
  for (std::size_t at = 0; (at = out.find(more, at)) != std::string::npos; at += more.size())
    total += std::stol(out.substr(at + more.size(), 12)), ++lines;  // "N more in the last ..."
  INFO(out);
  CHECK(total == 2000);
  CHECK(lines <= static_cast<long>(seconds) + 3);
  CHECK(out.find("unix peer uid") != std::string::npos);

  auto m = mpx::Manager::connect(d.address, kKey);  // the right key still works
  CHECK(m.dict<std::string, int>("ok").size() == 0);
}

TEST_CASE("mpxd: past --max-connections new connections are closed at once; room comes back") {
  Daemon d({"--max-connections", "20"});
  std::vector<mpx::Connection> held;
  for (int i = 0; i < 20; ++i) held.push_back(mpx::Client(d.address, kKey));
  auto t0 = std::chrono::steady_clock::now();
  CHECK_THROWS_AS(mpx::Client(d.address, kKey), mpx::ConnectionError);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);  // closed, not left waiting in the backlog
  CHECK(d.lines_with("connection refused at the connection cap") >= 1);
  held.pop_back();
  std::this_thread::sleep_for(200ms);
  auto m = mpx::Manager::connect(d.address, kKey);
  CHECK(m.dict<std::string, int>("ok").size() == 0);
}

TEST_CASE("mpxd: 200 connections of producers, consumers and lock holders, some SIGKILLed mid-call") {
  Daemon d;
  constexpr int kProducers = 4, kItems = 500, kConsumers = 4, kLockers = 6, kNoise = 20, kNoiseConns = 9;
  {
    auto m = mpx::Manager::connect(d.address, kKey);
    m.queue<std::int64_t>(64, "jobs");
    m.queue<std::vector<std::int64_t>>(0, "got");
    m.lock("L");
    m.value<std::int64_t>(0, "counter");
    m.queue<int>(0, "never");
  }
  const mpx::Address a = d.address;
  std::vector<mpx::Process> keep, victims;
  for (int p = 0; p < kProducers; ++p)
    keep.emplace_back([a, p] {
      auto m = mpx::Manager::connect(a, kKey);
      auto q = m.queue<std::int64_t>(64, "jobs");
      for (int i = 0; i < kItems; ++i) q.put(std::int64_t{p} * 1'000'000 + i);
    });
  for (int c = 0; c < kConsumers; ++c)
    keep.emplace_back([a] {
      auto m = mpx::Manager::connect(a, kKey);
      auto q = m.queue<std::int64_t>(64, "jobs");
      std::vector<std::int64_t> mine;
      for (;;) {
        auto v = q.get();
        if (v < 0) break;
        mine.push_back(v);
      }
      m.queue<std::vector<std::int64_t>>(0, "got").put(mine);
    });
  // Lock holders: each increment happens under the lock; victims are killed while holding it.
  for (int l = 0; l < kLockers; ++l)
    victims.emplace_back([a] {
      auto m = mpx::Manager::connect(a, kKey);
      auto lock = m.lock("L");
      auto counter = m.value<std::int64_t>(0, "counter");
      for (;;) {
        lock.acquire();
        counter.set(counter.get() + 1);
        std::this_thread::sleep_for(1ms);
        lock.release();
      }
    });
  // Noise: processes with several connections each, parked in gets that never finish.
  for (int n = 0; n < kNoise; ++n)
    victims.emplace_back([a] {
      std::vector<mpx::Manager> ms;
      std::vector<std::thread> waits;
      for (int i = 0; i < kNoiseConns; ++i) ms.push_back(mpx::Manager::connect(a, kKey));
      for (auto& m : ms)
        waits.emplace_back([&m] {
          try {
            m.queue<int>(0, "never").get();
          } catch (const mpx::Error&) {
          }
        });
      for (auto& t : waits) t.join();
    });
  for (auto& p : keep) p.start();
  for (auto& p : victims) p.start();

  // Kill the victims one by one over about two seconds, each mid-call.
  std::mt19937 rng(12345);
  std::shuffle(victims.begin(), victims.end(), rng);
  for (auto& v : victims) {
    std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 150));
    v.kill();
  }
  for (auto& v : victims) v.join(10s);

  auto m = mpx::Manager::connect(a, kKey);
  auto jobs = m.queue<std::int64_t>(64, "jobs");
  for (int p = 0; p < kProducers; ++p) keep[p].join(30s);
  for (int c = 0; c < kConsumers; ++c) jobs.put(-1);
  for (auto& p : keep) {
    p.join(30s);
    CHECK(p.exitcode() == 0);
  }
  // Every item reached exactly one consumer.
  std::map<std::int64_t, int> seen;
  auto got = m.queue<std::vector<std::int64_t>>(0, "got");
  for (int c = 0; c < kConsumers; ++c)
    for (auto v : got.get(mpx::Timeout(10s))) ++seen[v];
  CHECK(seen.size() == static_cast<std::size_t>(kProducers * kItems));
  CHECK(std::all_of(seen.begin(), seen.end(), [](auto& kv) { return kv.second == 1; }));
  // No lock stays held by the dead, and the count moved.
  auto lock = m.lock("L");
  CHECK(lock.acquire(mpx::Timeout(5s)));
  CHECK(m.value<std::int64_t>(0, "counter").get() > 0);
  lock.release();
}
