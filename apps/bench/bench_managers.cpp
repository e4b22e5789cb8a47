// mpx::Manager (a private server process, proxies over a Unix socket) against a raw socketpair
// ping-pong in the same run and, when python3 is on PATH, against Python's
// multiprocessing.Manager (apps/bench/python/manager_bench.py):
//   - dict set and get, one round trip per call: median latency next to the raw round trip,
//     with a blocking echo and with an epoll-driven one (the least any event loop spends);
//   - dict ops per second: one call per op as Python does it, and pipelined (set_async);
//   - queue items per second from a producer process to this one: one put/get per item, and
//     batched (put_many / get_many);
//   - Value increments under a manager Lock from two processes at once: acquire, get, set,
//     release per increment, plainly and pipelined (one round trip per increment), next to
//     the floor of any such hand-off: a token passed between two processes through a relay.
// mpx's client and server poll briefly before they sleep (MPX_SPIN_NS), so the floors are also
// measured with polling reads, and the dict call also with polling off.
// Raw and manager rounds alternate so both see the same machine load.
#include <mpx/detail/futex.hpp>
#include <mpx/managers.hpp>

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <initializer_list>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bench.hpp"
#include "mpx_measures.hpp"

namespace {

using mpx::bench::Clock;
using mpx::bench::report;
using mpx::bench::report_ratio;

// ---- the floor: 16 bytes each way over a socketpair between two processes

// Floors are measured with blocking reads and with polling ones (mpx::bench::recv_some).
bool g_polling = false;

bool transfer(int fd, char* b, std::size_t n, bool out) {
  for (std::size_t done = 0; done < n;) {
    ssize_t r = out ? ::send(fd, b + done, n - done, MSG_NOSIGNAL)
                    : mpx::bench::recv_some(fd, b + done, n - done, g_polling);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    done += static_cast<std::size_t>(r);
  }
  return true;
}

// The client side of both floors: n timed 16-byte round trips (after n/10 untimed ones) with the
// echo process on sv[1], which it then closes and reaps.
std::vector<double> time_echo(int sv[2], pid_t echo, long n) {
  ::close(sv[1]);
  char b[16] = {};
  std::vector<double> us;
  for (long i = -n / 10; i < n; ++i) {
    auto t0 = Clock::now();
    if (!transfer(sv[0], b, sizeof b, true) || !transfer(sv[0], b, sizeof b, false))
      throw std::runtime_error("socketpair echo ended early");
    if (i >= 0) us.push_back(mpx::bench::seconds(Clock::now() - t0) * 1e6);
  }
  ::close(sv[0]);
  mpx::bench::join_child(echo);
  return us;
}

std::vector<double> socketpair_rtt_us(long n) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
  pid_t echo = mpx::bench::fork_child([&] {
    ::close(sv[0]);
    char b[16];
    while (transfer(sv[1], b, sizeof b, false) && transfer(sv[1], b, sizeof b, true)) {
    }
  });
  return time_echo(sv, echo, n);
}

// The same round trip with the echo side written as an event-driven server is: after each
// reply a recv that finds nothing, then epoll_wait, then the recv that gets the request. That
// is the least an epoll-based server (Asio's reactor included) spends per request, so the
// manager's call is compared with it too.
std::vector<double> socketpair_epoll_rtt_us(long n) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
  pid_t echo = mpx::bench::fork_child([&] {
    ::close(sv[0]);
    int ep = ::epoll_create1(EPOLL_CLOEXEC);
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLET;
    if (ep < 0 || ::epoll_ctl(ep, EPOLL_CTL_ADD, sv[1], &ev) != 0) throw std::runtime_error("epoll");
    char b[16];
    std::size_t have = 0;
    for (;;) {
      ssize_t r = ::recv(sv[1], b + have, sizeof b - have, MSG_DONTWAIT);
      if (r == 0) break;
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) break;
        epoll_event got{};
        if (::epoll_wait(ep, &got, 1, -1) < 0 && errno != EINTR) break;
        continue;
      }
      have += static_cast<std::size_t>(r);
      if (have == sizeof b) {
        if (!transfer(sv[1], b, sizeof b, true)) break;
        have = 0;
      }
    }
    ::close(ep);
  });
  return time_echo(sv, echo, n);
}

// ---- dict

std::vector<double> dict_call_us(mpx::DictProxy<int, long>& d, long n) {
  std::vector<double> us;
  for (long i = -n / 10; i < n; ++i) {
    auto t0 = Clock::now();
    d.set(7, i);
    auto t1 = Clock::now();
    long back = d.get(7).value_or(-1);
    auto t2 = Clock::now();
    if (back != i) throw std::runtime_error("dict: wrong value back");
    if (i >= 0) {
      us.push_back(mpx::bench::seconds(t1 - t0) * 1e6);
      us.push_back(mpx::bench::seconds(t2 - t1) * 1e6);
    }
  }
  return us;
}

double dict_sequential_ops_per_s(mpx::DictProxy<int, long>& d, long n) {
  double s = mpx::bench::time_seconds([&] {
    for (long i = 0; i < n; ++i) d.set(static_cast<int>(i & 1023), i);
  });
  return static_cast<double>(n) / s;
}

// ---- queue: a producer process puts 0..n-1, this process takes them

// A pipe the children wait on, so that connecting is not part of the timed span.
struct StartGate {
  int fd[2];
  StartGate() {
    if (::pipe(fd) != 0) throw std::runtime_error("pipe");
  }
  ~StartGate() {
    ::close(fd[0]);
    ::close(fd[1]);
  }
  void wait() {
    char c;
    while (::read(fd[0], &c, 1) < 0 && errno == EINTR) {
    }
  }
  void open(int parties) {
    std::string go(static_cast<std::size_t>(parties), 'g');
    if (::write(fd[1], go.data(), go.size()) != static_cast<ssize_t>(go.size()))
      throw std::runtime_error("start gate");
  }
};

double queue_items_per_s(mpx::Manager& m, long n, bool batched) {
  auto q = m.queue<long>();
  StartGate gate;
  pid_t producer = mpx::bench::fork_child([&] {
    q.qsize();  // this process's own connection, made before the clock starts
    gate.wait();
    if (batched) {
      std::vector<long> batch;
      for (long i = 0; i < n; ++i) {
        batch.push_back(i);
        if (batch.size() == 512 || i == n - 1) {
          q.put_many(batch);
          batch.clear();
        }
      }
    } else {
      for (long i = 0; i < n; ++i) q.put(i);
    }
  });
  auto t0 = Clock::now();
  gate.open(1);
  long expect = 0;
  while (expect < n) {
    if (batched) {
      for (long v : q.get_many(4096))
        if (v != expect++) throw std::runtime_error("queue: items out of order");
    } else if (q.get() != expect++) {
      throw std::runtime_error("queue: items out of order");
    }
  }
  double s = mpx::bench::seconds(Clock::now() - t0);
  if (!mpx::bench::join_child(producer)) throw std::runtime_error("queue: the producer failed");
  return static_cast<double>(n) / s;
}

// ---- the floor of a lock hand-off between two processes through a third: a token passed
// A -> S -> B -> S -> A over socketpairs, S relaying as a server does. Each pass is what one
// pipelined increment needs at the least: the holder's message reaches the server, the
// server's reply wakes the other process.

double token_pass_per_s(long per_process) {
  StartGate gate;
  int a[2], b[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, a) != 0 ||
      ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, b) != 0)
    throw std::runtime_error("socketpair");
  pid_t relay = mpx::bench::fork_child([&] {
    ::close(a[1]);
    ::close(b[1]);
    char t[16];
    while (transfer(a[0], t, sizeof t, false) && transfer(b[0], t, sizeof t, true) &&
           transfer(b[0], t, sizeof t, false) && transfer(a[0], t, sizeof t, true)) {
    }
  });
  ::close(a[0]);
  ::close(b[0]);
  auto party = [&](int fd, int other, bool first) {
    return mpx::bench::fork_child([&, fd, other, first] {
      ::close(other);
      gate.wait();
      char t[16] = {};
      for (long i = 0; i < per_process; ++i)
        if (first ? !transfer(fd, t, sizeof t, true) || !transfer(fd, t, sizeof t, false)
                  : !transfer(fd, t, sizeof t, false) || !transfer(fd, t, sizeof t, true))
          throw std::runtime_error("token pass: the relay ended early");
    });
  };
  pid_t pa = party(a[1], b[1], true), pb = party(b[1], a[1], false);
  ::close(a[1]);
  ::close(b[1]);
  auto t0 = Clock::now();
  gate.open(2);
  bool ok = mpx::bench::join_child(pa);
  ok = mpx::bench::join_child(pb) && ok;
  double s = mpx::bench::seconds(Clock::now() - t0);
  ok = mpx::bench::join_child(relay) && ok;
  if (!ok) throw std::runtime_error("token pass: a process failed");
  return static_cast<double>(2 * per_process) / s;
}

// ---- Value increments under a Lock, two processes

double locked_increments_per_s(mpx::Manager& m, long per_process, bool pipelined) {
  auto lock = m.lock();
  auto v = m.value<long>(0);
  StartGate gate;
  std::vector<pid_t> workers;
  for (int w = 0; w < 2; ++w)
    workers.push_back(mpx::bench::fork_child([&] {
      v.get();  // connect before the clock starts
      gate.wait();
      if (pipelined) {
        for (long i = 0; i < per_process; ++i) {
          lock.acquire_async();
          auto now = v.get_async();
          v.set_async(now.get() + 1);  // the get sends the acquire with it and waits for both
          lock.release_async();        // goes out with the next acquire
        }
        m.flush();
      } else {
        for (long i = 0; i < per_process; ++i) {
          lock.acquire();
          v.set(v.get() + 1);
          lock.release();
        }
      }
    }));
  auto t0 = Clock::now();
  gate.open(2);
  bool ok = true;
  for (pid_t w : workers) ok = mpx::bench::join_child(w) && ok;
  double s = mpx::bench::seconds(Clock::now() - t0);
  if (!ok) throw std::runtime_error("lock: a worker failed");
  if (v.get() != 2 * per_process) throw std::runtime_error("lock: increments were lost");
  return static_cast<double>(2 * per_process) / s;
}

}  // namespace

MPX_BENCH_GROUP(managers, "managers",
                "mpx::Manager vs Python's multiprocessing.Manager and a raw socketpair round trip: dict "
                "call latency, dict ops/s (plain and pipelined), queue items/s between two processes "
                "(plain and batched), Value increments under a Lock from two processes") {
  using mpx::bench::median;
  const int runs = ctx.runs(5);
  const long calls = ctx.iterations(20000);
  const long ops = ctx.iterations(400000);
  const long queue_plain = ctx.iterations(40000), queue_batched = ctx.iterations(1000000);
  const long increments = ctx.iterations(20000);

  std::vector<double> call_us, raw_us, epoll_us, seq_rate, pipe_rate, q_plain, q_batched, inc_plain, inc_pipe,
      floor_pass, call_nospin_us, raw_spin_us, floor_pass_spin;
  {
    // The same calls with polling before reads turned off in client and server (MPX_SPIN_NS=0):
    // what the manager adds to a plain blocking round trip.
    auto& spin_limit = mpx::detail::spin_limit_ns();
    const std::uint32_t spin_default = spin_limit.load();
    spin_limit.store(0);
    mpx::Manager m_nospin;  // its server is forked now, with polling off for good
    auto d_nospin = m_nospin.dict<int, long>();
    spin_limit.store(spin_default);
    auto call_without_spin = [&](long n) {
      spin_limit.store(0);
      auto c = dict_call_us(d_nospin, n);
      spin_limit.store(spin_default);
      return c;
    };
    mpx::Manager m;
    auto d = m.dict<int, long>();
    dict_call_us(d, 1000);  // warm-up
    call_without_spin(1000);
    for (int r = 0; r < runs; ++r) {
      auto c = dict_call_us(d, calls / runs + 1);
      call_us.insert(call_us.end(), c.begin(), c.end());
      auto raw = socketpair_rtt_us(calls / runs + 1);
      raw_us.insert(raw_us.end(), raw.begin(), raw.end());
      auto ep = socketpair_epoll_rtt_us(calls / runs + 1);
      epoll_us.insert(epoll_us.end(), ep.begin(), ep.end());
      auto c0 = call_without_spin(calls / runs + 1);
      call_nospin_us.insert(call_nospin_us.end(), c0.begin(), c0.end());
      g_polling = true;
      auto raw_spin = socketpair_rtt_us(calls / runs + 1);
      raw_spin_us.insert(raw_spin_us.end(), raw_spin.begin(), raw_spin.end());
      floor_pass_spin.push_back(token_pass_per_s(increments));
      g_polling = false;
      seq_rate.push_back(dict_sequential_ops_per_s(d, calls));
      pipe_rate.push_back(mpx::bench::dict_pipelined_ops_per_s(m, d, ops));
      q_plain.push_back(queue_items_per_s(m, queue_plain, false));
      q_batched.push_back(queue_items_per_s(m, queue_batched, true));
      inc_plain.push_back(locked_increments_per_s(m, increments / 2, false));
      inc_pipe.push_back(locked_increments_per_s(m, increments, true));
      floor_pass.push_back(token_pass_per_s(increments));
    }
  }
  const double m_call = median(call_us), m_raw = median(raw_us);
  report("managers.dict.call_median", m_call, "us");
  report("raw.socketpair_pingpong16.rtt_median", m_raw, "us");
  report_ratio("managers.dict.call_ratio_vs_raw", m_call, m_raw);
  report("raw.socketpair_pingpong16_epoll_server.rtt_median", median(epoll_us), "us");
  report_ratio("managers.dict.call_ratio_vs_epoll_server", m_call, median(epoll_us));
  report("raw.socketpair_pingpong16_polling.rtt_median", median(raw_spin_us), "us");
  report_ratio("managers.dict.call_ratio_vs_polling_raw", m_call, median(raw_spin_us));
  report("managers.dict.call_without_polling_median", median(call_nospin_us), "us");
  report_ratio("managers.dict.call_without_polling_ratio_vs_raw", median(call_nospin_us), m_raw);
  report("managers.dict.sequential.ops_per_s", median(seq_rate), "ops/s");
  report("managers.dict.pipelined.ops_per_s", median(pipe_rate), "ops/s");
  report("managers.queue.plain.items_per_s", median(q_plain), "items/s");
  report("managers.queue.batched.items_per_s", median(q_batched), "items/s");
  report("managers.lock_value.plain.increments_per_s", median(inc_plain), "increments/s");
  report("managers.lock_value.pipelined.increments_per_s", median(inc_pipe), "increments/s");
  // The ceiling for any lock hand-off between two processes through a server on this machine.
  report("raw.token_pass3.passes_per_s", median(floor_pass), "passes/s");
  report_ratio("managers.lock_value.pipelined.share_of_token_pass", median(inc_pipe), median(floor_pass));
  report("raw.token_pass3_polling.passes_per_s", median(floor_pass_spin), "passes/s");
  report_ratio("managers.lock_value.pipelined.share_of_polling_token_pass", median(inc_pipe),
               median(floor_pass_spin));

  auto py = mpx::bench::python_figures("manager_bench.py", ctx.quick, ctx.quick ? 1 : 3);
  // Python's figure once, then each of ours against it (a ratio > 1: mpx is faster).
  auto compare = [&](const char* py_name, const char* unit,
                     std::initializer_list<std::pair<const char*, double>> ours, bool lower_is_better) {
    auto it = py.find(py_name);
    if (it == py.end()) return;
    report(py_name, it->second, unit);
    for (auto [ratio_name, value] : ours)
      if (lower_is_better)
        report_ratio(ratio_name, it->second, value);
      else
        report_ratio(ratio_name, value, it->second);
  };
  compare("python.managers.dict.call_median", "us", {{"managers.dict.call.speedup_vs_python", m_call}}, true);
  compare("python.managers.dict.ops_per_s", "ops/s",
          {{"managers.dict.sequential.speedup_vs_python", median(seq_rate)},
           {"managers.dict.pipelined.speedup_vs_python", median(pipe_rate)}},
          false);
  compare("python.managers.queue.items_per_s", "items/s",
          {{"managers.queue.plain.speedup_vs_python", median(q_plain)},
           {"managers.queue.batched.speedup_vs_python", median(q_batched)}},
          false);
  compare("python.managers.lock_value.increments_per_s", "increments/s",
          {{"managers.lock_value.plain.speedup_vs_python", median(inc_plain)},
           {"managers.lock_value.pipelined.speedup_vs_python", median(inc_pipe)}},
          false);
}
