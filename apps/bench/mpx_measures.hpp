// Measurements of mpx that more than one group prints (mpx_bench peers puts them next to other
// libraries; the groups of their own subsystems next to raw system calls and Python).
#pragma once

#include <mpx/connection.hpp>
#include <mpx/managers.hpp>
#include <mpx/queues.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <vector>

#include "bench.hpp"

namespace mpx::bench {

inline constexpr std::size_t kMiB = std::size_t{1} << 20;

// 8-byte messages bounced off a child over a Pipe: one round trip per element, in µs.
inline std::vector<double> connection_pingpong_us(long n) {
  auto [a, b] = mpx::Pipe();
  pid_t pid = fork_child([&] {
    a.close();
    try {
      for (;;) b.send_bytes(b.recv_bytes());
    } catch (const mpx::ConnectionClosed&) {
    }
  });
  b.close();
  Bytes msg(8, std::byte{1});
  std::vector<double> us;
  us.reserve(static_cast<std::size_t>(n));
  for (long i = -n / 10; i < n; ++i) {
    auto t0 = Clock::now();
    a.send_bytes(msg);
    msg = a.recv_bytes();
    if (i >= 0) us.push_back(seconds(Clock::now() - t0) * 1e6);
  }
  a.close();
  join_child(pid);
  return us;
}

// Messages of `size` bytes streamed to a child over a Pipe, which acknowledges the last one:
// messages/s. batch 0 sends each with send_bytes, else `batch` per send_bytes_batch call; the
// child receives each with recv_bytes_into (a reused buffer) or recv_bytes (a new one).
inline double connection_stream_msgs_per_s(long n, std::size_t size, std::size_t batch, bool recv_into) {
  auto [a, b] = mpx::Pipe();
  pid_t pid = fork_child([&] {
    a.close();
    Bytes into;
    for (long i = 0; i < n; ++i)
      if ((recv_into ? b.recv_bytes_into(into) : b.recv_bytes().size()) != size)
        throw std::runtime_error("connection: a message of the wrong size");
    b.send_bytes("k");
  });
  b.close();
  Bytes msg(size, std::byte{'x'});
  std::vector<std::span<const std::byte>> views(std::max<std::size_t>(batch, 1),
                                                std::span<const std::byte>(msg));
  auto t0 = Clock::now();
  if (batch == 0) {
    for (long i = 0; i < n; ++i) a.send_bytes(msg);
  } else {
    for (long sent = 0; sent < n;) {
      auto k = static_cast<std::size_t>(std::min<long>(static_cast<long>(batch), n - sent));
      a.send_bytes_batch(std::span(views.data(), k));
      sent += static_cast<long>(k);
    }
  }
  a.recv_bytes();
  double s = seconds(Clock::now() - t0);
  a.close();
  if (!join_child(pid)) throw std::runtime_error("connection: the receiver failed");
  return static_cast<double>(n) / s;
}

// 8-byte items from a producer process through a Queue of `maxsize` (0: unbounded): items/s
// from the fork to the last get.
inline double queue_items_per_s(long n, std::size_t maxsize) {
  mpx::Queue<std::uint64_t> q(maxsize);
  auto t0 = Clock::now();
  pid_t pid = fork_child([&] {
    for (long i = 0; i < n; ++i) q.put(static_cast<std::uint64_t>(i));
  });
  std::uint64_t sum = 0;
  for (long i = 0; i < n; ++i) sum += q.get();
  double s = seconds(Clock::now() - t0);
  if (!join_child(pid)) throw std::runtime_error("queue: the producer failed");
  auto un = static_cast<std::uint64_t>(n);
  if (sum != un * (un - 1) / 2) throw std::runtime_error("queue: lost or changed items");
  return static_cast<double>(n) / s;
}

// 1 MiB items from a producer process through a Queue of 8, each got as a new vector, as a user
// would have it: MiB/s.
inline double queue_1mib_mib_per_s(long n) {
  mpx::Queue<std::vector<std::byte>> q(8);
  auto t0 = Clock::now();
  pid_t pid = fork_child([&] {
    std::vector<std::byte> item(kMiB, std::byte{0x5a});
    for (long i = 0; i < n; ++i) q.put(item);
  });
  std::size_t bytes = 0;
  for (long i = 0; i < n; ++i) bytes += q.get().size();
  double s = seconds(Clock::now() - t0);
  if (!join_child(pid)) throw std::runtime_error("queue: the producer failed");
  if (bytes != static_cast<std::size_t>(n) * kMiB) throw std::runtime_error("queue: lost bytes");
  return static_cast<double>(n) / s;
}

// n set_async on a dict, then one flush: ops/s.
inline double dict_pipelined_ops_per_s(mpx::Manager& m, mpx::DictProxy<int, long>& d, long n) {
  double s = time_seconds([&] {
    for (long i = 0; i < n; ++i) d.set_async(static_cast<int>(i & 1023), i);
    m.flush();
  });
  if (d.get(static_cast<int>((n - 1) & 1023)) != n - 1)
    throw std::runtime_error("dict: lost a pipelined set");
  return static_cast<double>(n) / s;
}

}  // namespace mpx::bench
