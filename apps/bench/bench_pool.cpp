// mpx::Pool(2) against Python 3's multiprocessing.Pool(2) (apps/bench/python/pool_bench.py, run
// when python3 is on PATH) and, for the round trip, against a raw socketpair ping-pong between
// two processes in the same run (with blocking reads, and with reads that poll up to 100 µs
// before blocking, as the pool does by default):
//   map of x*x over 1,000,000 ints (default chunksize), apply_async x 20,000 tiny tasks then
//   get all (and the first such map of a new pool, against a warm one), sequential apply round trip (median),
//   imap_unordered over 200,000 items (chunksize 1), Pool(2) start + shutdown.
#include "bench.hpp"

#include <mpx/pool.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <ranges>
#include <string>

namespace {

using mpx::bench::Clock;

// x*x wrapping like unsigned arithmetic (no signed-overflow UB for large x).
int square(int x) { return static_cast<int>(static_cast<unsigned>(x) * static_cast<unsigned>(x)); }

// ---- raw socketpair ping-pong, 8 bytes each way: the floor for one cross-process round trip,
// with blocking reads and with polling ones (mpx::bench::recv_some), as the pool's waits poll.

bool rw(int fd, char* b, bool write, bool polling) {
  std::size_t n = 0;
  while (n < 8) {
    ssize_t r =
        write ? ::send(fd, b + n, 8 - n, MSG_NOSIGNAL) : mpx::bench::recv_some(fd, b + n, 8 - n, polling);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    n += static_cast<std::size_t>(r);
  }
  return true;
}

std::vector<double> raw_pingpong_us(long n, bool polling) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
  pid_t pid = mpx::bench::fork_child([&] {
    ::close(sv[0]);
    char b[8];
    while (rw(sv[1], b, false, polling) && rw(sv[1], b, true, polling)) {
    }
  });
  ::close(sv[1]);
  char b[8] = {};
  std::vector<double> us;
  for (long i = -n / 10; i < n; ++i) {
    auto t0 = Clock::now();
    rw(sv[0], b, true, polling);
    rw(sv[0], b, false, polling);
    if (i >= 0) us.push_back(mpx::bench::seconds(Clock::now() - t0) * 1e6);
  }
  ::close(sv[0]);
  mpx::bench::join_child(pid);
  return us;
}

std::vector<double> apply_rtt_us(mpx::Pool& pool, long n) {
  std::vector<double> us;
  for (long i = -n / 10; i < n; ++i) {
    auto t0 = Clock::now();
    pool.apply(square, static_cast<int>(i));
    if (i >= 0) us.push_back(mpx::bench::seconds(Clock::now() - t0) * 1e6);
  }
  return us;
}

// The kernel's part of Pool(2) start + shutdown: fork two children that exit at once, reap both.
double fork_floor_us() {
  auto t0 = Clock::now();
  pid_t pids[2];
  for (pid_t& p : pids) {
    p = ::fork();
    if (p == 0) ::_exit(0);
    if (p < 0) throw std::runtime_error("fork");
  }
  for (pid_t p : pids) mpx::bench::join_child(p);
  return mpx::bench::seconds(Clock::now() - t0) * 1e6;
}

void append(std::vector<double>& to, const std::vector<double>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

}  // namespace

MPX_BENCH_GROUP(pool, "pool",
                "mpx::Pool(2) vs Python's multiprocessing.Pool(2) and a raw socketpair round trip: map, "
                "apply_async, apply latency, imap_unordered, start + shutdown") {
  using mpx::bench::median;
  using mpx::bench::report;
  using mpx::bench::report_ratio;
  const int runs = ctx.runs(7);
  const long map_n = ctx.quick ? 100000 : 1000000;
  const long async_n = ctx.iterations(20000);
  const long rtt_n = ctx.iterations(20000);
  const long imap_n = ctx.quick ? 20000 : 200000;
  std::uint64_t imap_sum = 0;
  for (long i = 0; i < imap_n; ++i) imap_sum += static_cast<unsigned>(square(static_cast<int>(i)));

  // Start + shutdown first, before this group's large buffers make every fork dearer (a fork
  // copies the page tables of everything the process has touched), alternating with the fork
  // floor in the same process, so the ratio holds whatever the process's size.
  std::vector<double> start_ms, floor_us;
  for (int i = 0; i < runs * 5; ++i) {
    start_ms.push_back(1e3 * mpx::bench::time_seconds([] { mpx::Pool p(2); }));
    floor_us.push_back(fork_floor_us());
  }

  std::vector<double> first_map_s, map_s, async_rate, imap_rate, rtt, raw, raw_polling;
  std::vector<int> xs(static_cast<std::size_t>(map_n));
  std::iota(xs.begin(), xs.end(), 0);
  // The first large map of a new pool (after a small one has started its workers) pays for
  // every buffer's first touch; a warm pool has them.
  for (int r = 0; r < runs; ++r) {
    mpx::Pool pool(2);
    pool.map(square, std::vector<int>(1000, 3));
    first_map_s.push_back(mpx::bench::time_seconds([&] {
      if (pool.map(square, xs).back() != square(static_cast<int>(map_n - 1)))
        throw std::runtime_error("map: wrong result");
    }));
  }
  {
    mpx::Pool pool(2);
    pool.map(square, xs);  // warm-up: pages, windows
    for (int r = 0; r < runs; ++r) {
      map_s.push_back(mpx::bench::time_seconds([&] {
        auto v = pool.map(square, xs);
        if (v.back() != square(static_cast<int>(map_n - 1))) throw std::runtime_error("map: wrong result");
      }));
      double s = mpx::bench::time_seconds([&] {
        std::vector<mpx::AsyncResult<int>> rs;
        rs.reserve(static_cast<std::size_t>(async_n));
        for (long i = 0; i < async_n; ++i) rs.push_back(pool.apply_async(square, static_cast<int>(i)));
        for (auto& x : rs) x.get();
      });
      async_rate.push_back(static_cast<double>(async_n) / s);
      s = mpx::bench::time_seconds([&] {
        long count = 0;
        std::uint64_t sum = 0;  // of the results as unsigned: squares past 46340 wrap negative
        for (int v : pool.imap_unordered(square, std::views::iota(0, static_cast<int>(imap_n)), 1)) {
          ++count;
          sum += static_cast<unsigned>(v);
        }
        if (count != imap_n || sum != imap_sum) throw std::runtime_error("imap_unordered: wrong results");
      });
      imap_rate.push_back(static_cast<double>(imap_n) / s);
      // round trips, alternating with the raw baselines so all see the same machine load
      append(rtt, apply_rtt_us(pool, rtt_n / runs + 1));
      append(raw, raw_pingpong_us(rtt_n / runs + 1, false));
      append(raw_polling, raw_pingpong_us(rtt_n / runs + 1, true));
    }
  }

  const double m_map = median(map_s), m_async = median(async_rate), m_imap = median(imap_rate);
  const double m_rtt = median(rtt), m_raw = median(raw), m_start = median(start_ms);
  report("pool.map_x2_1M.seconds", m_map, "s");
  report("pool.map_x2_1M.first_seconds", median(first_map_s), "s");
  report_ratio("pool.map_x2_1M.first_vs_warm", median(first_map_s), m_map);
  report("pool.apply_async_20k.tasks_per_s", m_async, "tasks/s");
  report("pool.apply.rtt_median", m_rtt, "us");
  report("raw.socketpair_pingpong.rtt_median", m_raw, "us");
  report_ratio("pool.apply.rtt_ratio_vs_raw", m_rtt, m_raw);
  report("raw.socketpair_pingpong_polling.rtt_median", median(raw_polling), "us");
  report_ratio("pool.apply.rtt_ratio_vs_polling_raw", m_rtt, median(raw_polling));
  report("pool.imap_unordered_200k.items_per_s", m_imap, "items/s");
  report("pool.start_shutdown.median", m_start, "ms");
  report("pool_start_floor", median(floor_us), "us");
  report_ratio("pool.start_shutdown.ratio_vs_floor", m_start * 1e3, median(floor_us));

  auto py = mpx::bench::python_figures("pool_bench.py", ctx.quick, ctx.quick ? 1 : 3);
  auto has = [&](const char* k) { return py.count(k) > 0; };
  if (has("python.pool.map_x2_1M.seconds")) {
    report("python.pool.map_x2_1M.seconds", py["python.pool.map_x2_1M.seconds"], "s");
    report_ratio("pool.map_x2_1M.speedup_vs_python", py["python.pool.map_x2_1M.seconds"], m_map);
  }
  if (has("python.pool.apply_async_20k.tasks_per_s")) {
    report("python.pool.apply_async_20k.tasks_per_s", py["python.pool.apply_async_20k.tasks_per_s"],
           "tasks/s");
    report_ratio("pool.apply_async_20k.speedup_vs_python", m_async,
                 py["python.pool.apply_async_20k.tasks_per_s"]);
  }
  if (has("python.pool.apply.rtt_median")) {
    report("python.pool.apply.rtt_median", py["python.pool.apply.rtt_median"], "us");
    report_ratio("pool.apply.speedup_vs_python", py["python.pool.apply.rtt_median"], m_rtt);
  }
  if (has("python.pool.imap_unordered_200k.items_per_s")) {
    report("python.pool.imap_unordered_200k.items_per_s", py["python.pool.imap_unordered_200k.items_per_s"],
           "items/s");
    report_ratio("pool.imap_unordered_200k.speedup_vs_python", m_imap,
                 py["python.pool.imap_unordered_200k.items_per_s"]);
  }
  if (has("python.pool.start_shutdown.median")) {
    report("python.pool.start_shutdown.median", py["python.pool.start_shutdown.median"], "ms");
    report_ratio("pool.start_shutdown.speedup_vs_python", py["python.pool.start_shutdown.median"], m_start);
  }
}
