// Handing 64 MiB of doubles to another process that sums them, three ways in the same run:
// - a named SharedMemory block the child attaches to (no copy: attach and first touch only);
// - the same bytes as one std::vector<double> item through an mpx::Queue;
// - the same bytes as one message over an mpx::Pipe (Connection).
// Each child is forked first and waits for a start byte; the clock runs from the start byte to
// the sum arriving back, and a sum of the same memory in this process is the floor. Rounds
// alternate the three so they see the same machine load.
#include <mpx/connection.hpp>
#include <mpx/queues.hpp>
#include <mpx/shared_memory.hpp>

#include <unistd.h>

#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench.hpp"

namespace {

using mpx::bench::Clock;
using mpx::bench::read_all;
using mpx::bench::report;
using mpx::bench::report_ratio;
using mpx::bench::write_all;

constexpr std::size_t kDoubles = std::size_t{8} << 20;  // 64 MiB

double sum(std::span<const double> xs) { return std::accumulate(xs.begin(), xs.end(), 0.0); }

// Forks `child(result_fd)` waiting for a start byte; times from the start byte to the double the
// child writes back, which must equal `expected`.
template <class Start, class Child>
double timed_handover(double expected, Start&& start, Child&& child) {
  int go[2], back[2];
  if (::pipe(go) != 0 || ::pipe(back) != 0) throw std::runtime_error("pipe");
  pid_t pid = mpx::bench::fork_child([&] {
    ::close(go[1]);
    ::close(back[0]);
    char c;
    if (!read_all(go[0], &c, 1)) return;
    double s = child();
    write_all(back[1], &s, sizeof s);
  });
  ::close(go[0]);
  ::close(back[1]);
  auto t0 = Clock::now();
  write_all(go[1], "g", 1);
  start();
  double s = 0;
  if (!read_all(back[0], &s, sizeof s)) throw std::runtime_error("the summing child failed");
  double seconds = mpx::bench::seconds(Clock::now() - t0);
  ::close(go[1]);
  ::close(back[0]);
  if (!mpx::bench::join_child(pid) || s != expected) throw std::runtime_error("wrong sum from the child");
  return seconds;
}

}  // namespace

MPX_BENCH_GROUP(shared_memory_handover, "shared_memory",
                "64 MiB to a child: SharedMemory vs Queue vs Connection") {
  std::vector<double> data(kDoubles);
  std::iota(data.begin(), data.end(), 0.0);
  const double expected = sum(data);
  auto block = mpx::SharedMemory::create(kDoubles * sizeof(double));
  auto xs = block.as<double>();
  std::copy(data.begin(), data.end(), xs.begin());
  const std::string name = block.name();
  mpx::Queue<std::vector<double>> queue;
  auto [near, far] = mpx::Pipe();

  std::vector<double> shm_s, queue_s, conn_s, floor_s;
  for (int round = 0; round < ctx.runs(5); ++round) {
    floor_s.push_back(mpx::bench::time_seconds([&] {
      if (sum(xs) != expected) throw std::runtime_error("wrong sum");
    }));
    shm_s.push_back(timed_handover(
        expected, [] {}, [&] { return sum(mpx::SharedMemory::attach(name).as<double>()); }));
    queue_s.push_back(timed_handover(
        expected, [&] { queue.put(data); }, [&] { return sum(queue.get()); }));
    conn_s.push_back(timed_handover(
        expected, [&] { near.send_bytes(std::as_bytes(std::span(data))); },
        [&] {
          auto bytes = far.recv_bytes();
          return sum({reinterpret_cast<const double*>(bytes.data()), bytes.size() / sizeof(double)});
        }));
  }
  block.unlink();
  double floor = mpx::bench::median(floor_s), shm = mpx::bench::median(shm_s);
  double q = mpx::bench::median(queue_s), conn = mpx::bench::median(conn_s);
  report("shared_memory.handover_64MiB.sum_in_process", floor * 1e3, "ms");
  report("shared_memory.handover_64MiB.shared_memory", shm * 1e3, "ms");
  report("shared_memory.handover_64MiB.queue", q * 1e3, "ms");
  report("shared_memory.handover_64MiB.connection", conn * 1e3, "ms");
  report_ratio("shared_memory.handover_64MiB.queue_over_shared_memory", q, shm);
  report_ratio("shared_memory.handover_64MiB.connection_over_shared_memory", conn, shm);
  report_ratio("shared_memory.handover_64MiB.shared_memory_over_in_process_sum", shm, floor);
}
