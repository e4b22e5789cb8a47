// The pool's worker loop (the spawner that forks workers is in spawner.cpp). Nothing here
// touches locks, threads or io_contexts inherited from the pool's process: the loop uses plain
// system calls on its own fds.
#include <mpx/detail/task.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <exception>

#include "common/log.hpp"
#include "pool/wire.hpp"

namespace mpx::detail::poolwire {
namespace {

using Clock = std::chrono::steady_clock;

// Results wait in the worker's buffer at most this long (or this many bytes) while it works on
// more tasks of the same batch.
constexpr auto kMaxResultDelay = std::chrono::microseconds(200);
constexpr std::size_t kMaxResultBuffer = std::size_t{1} << 20;

// Runs the pool's initializer, if any. If it throws, its INIT_ERROR message is left in `out` for
// the pool, and the worker must exit: false.
bool run_initializer(const SpawnerConfig& config, Bytes& out) {
  if (!config.initializer || !*config.initializer) return true;
  try {
    (*config.initializer)();
    return true;
  } catch (...) {
    std::size_t at = proto::begin_frame(out);
    proto::Writer(out).u8(kInitError);
    encode_raised_fields(out, std::current_exception());
    proto::end_frame(out, at);
    return false;
  }
}

// Reads whatever the pool has sent into `in` (at least what the frame being read lacks fits):
// recv's result, its errno in `err`.
ssize_t receive(int fd, ReadBuffer& in, SpinStats& spin_stats, int& err) {
  std::size_t need = kReadChunk / 4;
  if (auto f = proto::peek_frame(in.data())) need = std::max<std::size_t>(need, f->missing());
  auto room = in.prepare(need);
  // The next batch often follows within a cross-CPU wake-up's time of the last results (an
  // apply() loop): polling that long first saves this worker the wake-up. The budget adapts
  // per worker, and polling stops paying (and mostly stops) while tasks come seldom.
  ssize_t n = -1;
  err = EAGAIN;
  {
    AdaptiveSpin spin(spin_stats);
    spin.spin_polling(
        [&] {
          n = ::recv(fd, room.data(), room.size(), MSG_DONTWAIT);
          err = errno;
          return n >= 0 || (err != EAGAIN && err != EWOULDBLOCK);
        },
        Deadline::never());
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK)) {
      n = ::recv(fd, room.data(), room.size(), 0);
      err = errno;
    }
  }
  if (n > 0) in.commit(static_cast<std::size_t>(n));
  return n;
}

}  // namespace

bool write_all(int fd, const std::byte* p, std::size_t n) {
  while (n) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        pollfd pf{fd, POLLOUT, 0};
        ::poll(&pf, 1, -1);
        continue;
      }
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

int worker_main(int fd, Slot* slot, const SpawnerConfig& config) {
  ::signal(SIGINT, SIG_IGN);  // Ctrl-C is for the pool's process; it stops us
  ::signal(SIGPIPE, SIG_IGN);
  // A worker allocates and frees the same large buffers task after task: keep them in the heap
  // instead of handing them back to the kernel and faulting fresh pages in every time.
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 128 << 20);
  disable_module_rescan();
  Bytes out;
  out.reserve(kReadChunk);
  auto flush = [&] {
    if (out.empty()) return true;
    bool ok = write_all(fd, out.data(), out.size());
    out.clear();
    if (out.capacity() > 4 * kMaxResultBuffer) Bytes().swap(out);
    return ok;
  };

  if (!run_initializer(config, out)) {
    flush();
    return 1;
  }

  ReadBuffer in;
  SpinStats read_spin;
  std::uint64_t done = 0;
  Clock::time_point first_unflushed{};
  for (;;) {
    Clock::time_point last = Clock::now();
    // Every complete frame in the buffer, then flush, then read: a read takes whatever the pool
    // has sent meanwhile, so tasks and results travel in batches.
    proto::FrameReader frames(in.data());
    while (auto frame = frames.next()) {
      auto msg = *frame;
      if (msg.empty()) return 2;
      auto type = static_cast<std::uint8_t>(msg[0]);
      if (type == kExit) return flush() ? 0 : 1;
      if (type != kTask || msg.size() < 9) {
        logger().error("pool worker: unexpected message type {} from the pool", type);
        return 2;
      }
      std::uint64_t seq = task_reader(msg.subspan(1, 8)).u64();
      slot->running.store(seq, std::memory_order_release);
      if (out.empty()) first_unflushed = last;
      std::size_t at = proto::begin_frame(out);
      proto::Writer w(out);
      w.u8(kResult);
      w.u64(seq);
      std::size_t time_at = out.size();
      w.u64(0);
      run_task(msg.subspan(9), out);
      auto now = Clock::now();
      w.patch(time_at, static_cast<std::uint64_t>(
                           std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count()));
      last = now;
      proto::end_frame(out, at);
      slot->running.store(0, std::memory_order_release);
      ++done;
      if (config.maxtasksperchild && done >= config.maxtasksperchild) return flush() ? 0 : 1;
      if (out.size() >= kMaxResultBuffer || now - first_unflushed >= kMaxResultDelay) {
        if (!flush()) return 1;
      }
    }
    in.consume(frames.consumed());
    if (!flush()) return 1;
    int err = 0;
    ssize_t n = receive(fd, in, read_spin, err);
    if (n < 0 && err == EINTR) continue;
    if (n <= 0) return 0;  // the pool is gone
  }
}

}  // namespace mpx::detail::poolwire
