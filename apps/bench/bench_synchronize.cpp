// Process-shared synchronization against raw baselines measured in the same run:
// - ping-pong round trip between two processes: mpx Event pair and Condition, each with the
//   adaptive spin on and off, next to a pipe ping-pong between two processes and a
//   std::mutex + std::condition_variable ping-pong between two threads;
// - a contended Lock (two processes incrementing one counter), spin on and off, next to a
//   std::mutex between two threads; the uncontended acquire/release cost next to std::mutex.
#include <mpx/detail/futex.hpp>
#include <mpx/process.hpp>
#include <mpx/sharedctypes.hpp>
#include <mpx/synchronize.hpp>

#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "bench.hpp"

namespace {

using mpx::bench::Clock;
using namespace std::chrono_literals;

// Sets the process-wide spin budget for a scope (children forked inside inherit it).
class SpinSetting {
 public:
  explicit SpinSetting(bool on) : saved_(mpx::detail::spin_limit_ns().load()) {
    if (!on) mpx::detail::spin_limit_ns().store(0);
  }
  ~SpinSetting() { mpx::detail::spin_limit_ns().store(saved_); }
  SpinSetting(const SpinSetting&) = delete;
  SpinSetting& operator=(const SpinSetting&) = delete;

 private:
  std::uint32_t saved_;
};

const mpx::Process::Options kDaemon{"", true};

// Round trips in microseconds; the first tenth warms up and is dropped.
template <class Ping>
std::vector<double> time_round_trips(long n, Ping&& ping) {
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(n));
  for (long i = -n / 10; i < n; ++i) {
    auto t0 = Clock::now();
    ping();
    if (i >= 0) us.push_back(mpx::bench::seconds(Clock::now() - t0) * 1e6);
  }
  return us;
}

void write_byte(int fd) {
  char c = 'x';
  while (::write(fd, &c, 1) != 1) {
    if (errno != EINTR) throw std::runtime_error("pipe write");
  }
}
bool read_byte(int fd) {
  char c;
  for (;;) {
    ssize_t r = ::read(fd, &c, 1);
    if (r == 1) return true;
    if (r == 0) return false;
    if (errno != EINTR) throw std::runtime_error("pipe read");
  }
}

std::vector<double> pingpong_pipe(long n) {
  int to_child[2], to_parent[2];
  if (::pipe(to_child) != 0 || ::pipe(to_parent) != 0) throw std::runtime_error("pipe");
  mpx::Process peer(kDaemon, [=] {
    ::close(to_child[1]);
    ::close(to_parent[0]);
    while (read_byte(to_child[0])) write_byte(to_parent[1]);
  });
  peer.start();
  ::close(to_child[0]);
  ::close(to_parent[1]);
  auto us = time_round_trips(n, [&] {
    write_byte(to_child[1]);
    read_byte(to_parent[0]);
  });
  ::close(to_child[1]);  // EOF ends the peer
  peer.join(10s);
  ::close(to_parent[0]);
  return us;
}

std::vector<double> pingpong_threads(long n) {
  std::mutex m;
  std::condition_variable cv;
  int turn = 0;  // 1: the peer's move, 0: ours, -1: stop
  std::thread peer([&] {
    std::unique_lock lock(m);
    for (;;) {
      cv.wait(lock, [&] { return turn != 0; });
      if (turn < 0) return;
      turn = 0;
      cv.notify_all();
    }
  });
  auto us = time_round_trips(n, [&] {
    std::unique_lock lock(m);
    turn = 1;
    cv.notify_all();
    cv.wait(lock, [&] { return turn == 0; });
  });
  {
    std::lock_guard lock(m);
    turn = -1;
  }
  cv.notify_all();
  peer.join();
  return us;
}

std::vector<double> pingpong_events(long n, bool spin) {
  SpinSetting setting(spin);
  mpx::Event ping, pong;
  mpx::Value<int> stop(0);
  mpx::Process peer(kDaemon, [=]() mutable {
    for (;;) {
      ping.wait();
      ping.clear();
      if (stop.load()) return;
      pong.set();
    }
  });
  peer.start();
  auto us = time_round_trips(n, [&] {
    ping.set();
    pong.wait();
    pong.clear();
  });
  stop.store(1);
  ping.set();
  peer.join(10s);
  return us;
}

std::vector<double> pingpong_condition(long n, bool spin) {
  SpinSetting setting(spin);
  mpx::Condition cond(mpx::Lock{});
  mpx::Value<int> turn(0);  // as in pingpong_threads
  mpx::Process peer(kDaemon, [=]() mutable {
    std::unique_lock lock(cond);
    for (;;) {
      cond.wait_for([&] { return turn.load() != 0; });
      if (turn.load() < 0) return;
      turn.store(0);
      cond.notify();
    }
  });
  peer.start();
  auto us = time_round_trips(n, [&] {
    std::unique_lock lock(cond);
    turn.store(1);
    cond.notify();
    cond.wait_for([&] { return turn.load() == 0; });
  });
  {
    std::lock_guard lock(cond);
    turn.store(-1);
    cond.notify();
  }
  peer.join(10s);
  return us;
}

// Two processes each add `n` to one counter under a Lock; nanoseconds per increment.
double contended_lock(long n, bool spin) {
  SpinSetting setting(spin);
  mpx::Lock lock;
  mpx::Array<long> counter(1, 0);
  mpx::Barrier start(2);
  auto work = [=]() mutable {
    start.wait();
    for (long i = 0; i < n; ++i) {
      std::lock_guard g(lock);
      counter[0] = counter[0] + 1;
    }
  };
  mpx::Process peer(kDaemon, work);
  peer.start();
  auto t0 = Clock::now();
  work();
  peer.join(60s);
  double s = mpx::bench::seconds(Clock::now() - t0);
  if (counter[0] != 2 * n) throw std::runtime_error("contended lock: lost increments");
  return s * 1e9 / static_cast<double>(2 * n);
}

double contended_std_mutex(long n) {
  std::mutex m;
  long counter = 0;
  auto work = [&] {
    for (long i = 0; i < n; ++i) {
      std::lock_guard g(m);
      ++counter;
    }
  };
  auto t0 = Clock::now();
  std::thread peer(work);
  work();
  peer.join();
  return mpx::bench::seconds(Clock::now() - t0) * 1e9 / static_cast<double>(2 * n);
}

template <class Lk>
double uncontended(long n, Lk& lk) {
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) {
    lk.lock();
    lk.unlock();
  }
  return mpx::bench::seconds(Clock::now() - t0) * 1e9 / static_cast<double>(n);
}

}  // namespace

MPX_BENCH_GROUP(synchronize_pingpong, "synchronize.pingpong",
                "round trip between two processes: Event pair and Condition (spin on/off) vs pipe and "
                "std::condition_variable") {
  const long n = ctx.iterations(20000);
  double pipe_us = mpx::bench::median(pingpong_pipe(n));
  double threads_us = mpx::bench::median(pingpong_threads(n));
  double event_spin = mpx::bench::median(pingpong_events(n, true));
  double event_nospin = mpx::bench::median(pingpong_events(n, false));
  double cond_spin = mpx::bench::median(pingpong_condition(n, true));
  double cond_nospin = mpx::bench::median(pingpong_condition(n, false));
  mpx::bench::report("synchronize.pingpong.raw_pipe_processes.median", pipe_us, "us");
  mpx::bench::report("synchronize.pingpong.std_condvar_threads.median", threads_us, "us");
  mpx::bench::report("synchronize.pingpong.event.spin.median", event_spin, "us");
  mpx::bench::report("synchronize.pingpong.event.nospin.median", event_nospin, "us");
  mpx::bench::report("synchronize.pingpong.condition.spin.median", cond_spin, "us");
  mpx::bench::report("synchronize.pingpong.condition.nospin.median", cond_nospin, "us");
  mpx::bench::report_ratio("synchronize.pingpong.event_spin_vs_raw_pipe", event_spin, pipe_us);
  mpx::bench::report_ratio("synchronize.pingpong.condition_spin_vs_raw_pipe", cond_spin, pipe_us);
  mpx::bench::report_ratio("synchronize.pingpong.event_nospin_vs_raw_pipe", event_nospin, pipe_us);
  mpx::bench::report_ratio("synchronize.pingpong.event_spin_vs_nospin", event_spin, event_nospin);
  mpx::bench::report_ratio("synchronize.pingpong.condition_spin_vs_nospin", cond_spin, cond_nospin);
}

MPX_BENCH_GROUP(
    synchronize_lock, "synchronize.lock",
    "Lock: uncontended acquire/release and two contending processes (spin on/off) vs std::mutex") {
  const long n = ctx.iterations(2'000'000);
  mpx::Lock lock;
  mpx::RLock rlock;
  std::mutex m;
  double lock_ns = uncontended(n, lock);
  double rlock_ns = uncontended(n, rlock);
  double mutex_ns = uncontended(n, m);
  mpx::bench::report("synchronize.lock.uncontended.mpx_lock", lock_ns, "ns");
  mpx::bench::report("synchronize.lock.uncontended.mpx_rlock", rlock_ns, "ns");
  mpx::bench::report("synchronize.lock.uncontended.std_mutex", mutex_ns, "ns");
  mpx::bench::report_ratio("synchronize.lock.uncontended.mpx_lock_vs_std_mutex", lock_ns, mutex_ns);

  const long c = ctx.iterations(200'000);
  const int runs = ctx.runs(3);
  double spin = mpx::bench::median_of(runs, [&] { return contended_lock(c, true); });
  double nospin = mpx::bench::median_of(runs, [&] { return contended_lock(c, false); });
  double baseline = mpx::bench::median_of(runs, [&] { return contended_std_mutex(c); });
  mpx::bench::report("synchronize.lock.contended_2proc.spin", spin, "ns/increment");
  mpx::bench::report("synchronize.lock.contended_2proc.nospin", nospin, "ns/increment");
  mpx::bench::report("synchronize.lock.contended_2threads.std_mutex", baseline, "ns/increment");
  mpx::bench::report_ratio("synchronize.lock.contended.spin_vs_nospin", spin, nospin);
  mpx::bench::report_ratio("synchronize.lock.contended.spin_vs_std_mutex", spin, baseline);
}
