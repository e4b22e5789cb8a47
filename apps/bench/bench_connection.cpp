// mpx::Connection against a raw socketpair, each between two processes (fork):
// 8-byte ping-pong round trip, 64-byte one-way message rate, 1 MiB one-way bandwidth.
// Rounds alternate raw and mpx so both see the same machine load.
#include "bench.hpp"
#include "mpx_measures.hpp"

#include <mpx/connection.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <stdexcept>

namespace {

using mpx::Bytes;
using mpx::bench::Clock;
using mpx::bench::read_all;
using mpx::bench::write_all;

struct RawPair {
  int parent = -1, child = -1;
  RawPair() {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair");
    parent = sv[0];
    child = sv[1];
  }
};

// ---- 8-byte ping-pong: per round trip, in microseconds

std::vector<double> pingpong_raw(long n) {
  RawPair p;
  pid_t pid = mpx::bench::fork_child([&] {
    ::close(p.parent);
    char b[8];
    while (read_all(p.child, b, 8)) write_all(p.child, b, 8);
  });
  ::close(p.child);
  char b[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(n));
  for (long i = -n / 10; i < n; ++i) {  // the first tenth warms up
    auto t0 = Clock::now();
    write_all(p.parent, b, 8);
    if (!read_all(p.parent, b, 8)) throw std::runtime_error("read: the echo peer went away");
    if (i >= 0) us.push_back(mpx::bench::seconds(Clock::now() - t0) * 1e6);
  }
  ::close(p.parent);
  mpx::bench::join_child(pid);
  return us;
}

// ---- one-way streams: the receiver acknowledges the last message; rate = n / elapsed

double stream_raw(long n, std::size_t size) {
  RawPair p;
  pid_t pid = mpx::bench::fork_child([&] {
    ::close(p.parent);
    auto buf = std::make_unique<char[]>(std::max<std::size_t>(size, 65536));
    std::size_t want = static_cast<std::size_t>(n) * size;
    while (want) {
      ssize_t r = ::read(p.child, buf.get(), std::min(want, std::max<std::size_t>(size, 65536)));
      if (r <= 0) throw std::runtime_error("raw stream: short read");
      want -= static_cast<std::size_t>(r);
    }
    write_all(p.child, "k", 1);
  });
  ::close(p.child);
  std::vector<char> msg(size, 'x');
  auto t0 = Clock::now();
  for (long i = 0; i < n; ++i) write_all(p.parent, msg.data(), size);
  char ack;
  if (!read_all(p.parent, &ack, 1)) throw std::runtime_error("read: the peer went away");
  double s = mpx::bench::seconds(Clock::now() - t0);
  ::close(p.parent);
  mpx::bench::join_child(pid);
  return static_cast<double>(n) / s;
}

void append(std::vector<double>& to, const std::vector<double>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

}  // namespace

MPX_BENCH_GROUP(
    connection, "connection",
    "mpx::Connection vs a raw socketpair between two processes: ping-pong, message rate, bandwidth") {
  using mpx::bench::median;
  using mpx::bench::report;
  using mpx::bench::report_ratio;
  const int rounds = ctx.runs(5);

  {
    const long n = ctx.iterations(20000);
    std::vector<double> raw, conn;
    for (int r = 0; r < rounds; ++r) {
      append(raw, pingpong_raw(n));
      append(conn, mpx::bench::connection_pingpong_us(n));
    }
    const double m_raw = median(raw), m_conn = median(conn);
    report("raw.pingpong_8B.rtt_median", m_raw, "us");
    report("connection.pingpong_8B.rtt_median", m_conn, "us");
    report("raw.pingpong_8B.rtt_p99", mpx::bench::percentile(raw, 0.99), "us");
    report("connection.pingpong_8B.rtt_p99", mpx::bench::percentile(conn, 0.99), "us");
    report_ratio("connection.pingpong.ratio_vs_raw", m_conn, m_raw);
  }
  {
    const long n = ctx.iterations(200000);
    std::vector<double> raw, conn;
    for (int r = 0; r < rounds; ++r) {
      raw.push_back(stream_raw(n, 64));
      conn.push_back(mpx::bench::connection_stream_msgs_per_s(n, 64, 0, false));
    }
    const double m_raw = median(raw), m_conn = median(conn);
    report("raw.msgrate_64B", m_raw, "msgs/s");
    report("connection.msgrate_64B", m_conn, "msgs/s");
    report_ratio("connection.msgrate.ratio_vs_raw", m_conn, m_raw);
  }
  {
    // 8-byte messages: one send per message, then send_bytes_batch of 64 (the best path).
    const long n = ctx.iterations(400000);
    std::vector<double> plain, best;
    for (int r = 0; r < rounds; ++r) {
      plain.push_back(mpx::bench::connection_stream_msgs_per_s(n, 8, 0, true));
      best.push_back(mpx::bench::connection_stream_msgs_per_s(n, 8, 64, true));
    }
    const double m_plain = median(plain), m_best = median(best);
    report("connection.msgrate_8B", m_plain, "msgs/s");
    report("connection.msgrate_8B_best", m_best, "msgs/s");
    report_ratio("connection.msgrate_8B_best.ratio_vs_plain", m_best, m_plain);
  }
  {
    const long n = ctx.iterations(512);
    constexpr std::size_t kMiB = std::size_t{1} << 20;
    std::vector<double> raw, conn, conn_into;
    for (int r = 0; r < rounds; ++r) {
      raw.push_back(stream_raw(n, kMiB));
      conn.push_back(mpx::bench::connection_stream_msgs_per_s(n, kMiB, 0, false));
      conn_into.push_back(mpx::bench::connection_stream_msgs_per_s(n, kMiB, 0, true));
    }
    const double m_raw = median(raw), m_conn = median(conn), m_into = median(conn_into);
    report("raw.bandwidth_1MiB", m_raw, "MiB/s");
    report("connection.bandwidth_1MiB", m_conn, "MiB/s");
    report("connection.bandwidth_1MiB_recv_into", m_into, "MiB/s");
    report_ratio("connection.bandwidth.ratio_vs_raw", m_conn, m_raw);
    report_ratio("connection.bandwidth_recv_into.ratio_vs_raw", m_into, m_raw);
  }
}
