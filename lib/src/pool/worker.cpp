// The pool's processes: the spawner (forked once per pool, single-threaded, forks the
// workers) and the worker loop. Nothing here touches locks, threads or io_contexts inherited from
// the pool's process: both loops use plain system calls on their own fds.
#include <mpx/detail/task.hpp>
#include <mpx/process.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "common/log.hpp"
#include "pool/wire.hpp"

namespace mpx::detail::poolwire {
namespace {

using Clock = std::chrono::steady_clock;

// Results wait in the worker's buffer at most this long (or this many bytes) while it works on
// more tasks of the same batch.
constexpr auto kMaxResultDelay = std::chrono::microseconds(200);
constexpr std::size_t kMaxResultBuffer = std::size_t{1} << 20;

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

}  // namespace

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

  if (config.initializer && *config.initializer) {
    try {
      (*config.initializer)();
    } catch (...) {
      std::size_t at = proto::begin_frame(out);
      proto::Writer(out).u8(kInitError);
      encode_raised_fields(out, std::current_exception());
      proto::end_frame(out, at);
      flush();
      return 1;
    }
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
    std::size_t need = kReadChunk / 4;
    if (auto f = proto::peek_frame(in.data())) need = std::max<std::size_t>(need, f->missing());
    auto room = in.prepare(need);
    // The next batch often follows within a cross-CPU wake-up's time of the last results (an
    // apply() loop): polling that long first saves this worker the wake-up. The budget adapts
    // per worker, and polling stops paying (and mostly stops) while tasks come seldom.
    ssize_t n = -1;
    int err = EAGAIN;
    {
      AdaptiveSpin spin(read_spin);
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
    if (n < 0 && err == EINTR) continue;
    if (n <= 0) return 0;  // the pool is gone
    in.commit(static_cast<std::size_t>(n));
  }
}

namespace {

struct Child {
  std::uint32_t index, gen;
  std::shared_ptr<ChildProcess> proc;
};

void send_report(int ctl, std::uint8_t type, std::uint32_t index, std::uint32_t gen, std::int32_t value) {
  Bytes f;
  std::size_t at = proto::begin_frame(f);
  proto::Writer w(f);
  w.u8(type);
  w.u32(index);
  w.u32(gen);
  w.i32(value);
  proto::end_frame(f, at);
  write_all(ctl, f.data(), f.size());
}

}  // namespace

int spawner_main(int ctl, const SpawnerConfig& config) {
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  std::vector<Child> children;
  std::deque<int> fds;  // channel fds received, in order, each for the next kSpawn
  Bytes in;
  bool quitting = false, ctl_open = true;
  unsigned spawned = config.spawned;
  std::vector<pollfd> pfds;

  auto kill_all = [&](int sig) {
    for (auto& c : children) c.proc->signal(sig);
  };

  for (;;) {
    if ((quitting || !ctl_open) && children.empty()) return 0;
    pfds.clear();
    if (ctl_open) pfds.push_back({ctl, POLLIN, 0});
    for (auto& c : children) pfds.push_back({c.proc->sentinel(), POLLIN, 0});
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      return 1;
    }
    std::size_t p = 0;
    const std::size_t polled = children.size();  // spawns below append to children, not to pfds
    if (ctl_open && pfds[p++].revents) {
      std::byte buf[4096];
      alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 32)];
      iovec iov{buf, sizeof buf};
      msghdr mh{};
      mh.msg_iov = &iov;
      mh.msg_iovlen = 1;
      mh.msg_control = cbuf;
      mh.msg_controllen = sizeof cbuf;
      ssize_t n = ::recvmsg(ctl, &mh, MSG_CMSG_CLOEXEC);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t i = 0; i < k; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
          fds.push_back(fd);
        }
      }
      if (n <= 0) {
        // The pool's process is gone (or closed the channel without asking): nobody will read
        // results any more, so the workers go now.
        ctl_open = false;
        kill_all(SIGKILL);
      } else {
        in.insert(in.end(), buf, buf + n);
      }
      proto::FrameReader frames(in);
      while (auto frame = frames.next()) {
        auto msg = task_reader(*frame);
        auto type = msg.u8();
        if (type == kSpawn) {
          std::uint32_t index = msg.u32(), gen = msg.u32();
          if (fds.empty()) {
            send_report(ctl, kSpawnFailed, index, gen, EBADF);
            continue;
          }
          int fd = fds.front();
          fds.pop_front();
          try {
            ForkOptions opts;
            opts.name = "PoolWorker-" + std::to_string(++spawned);
            opts.daemon = true;
            opts.die_with_parent = true;
            auto proc = fork_child(opts, [&]() -> int {
              ::close(ctl);
              for (int other : fds) ::close(other);
              for (auto& c : children)
                if (c.proc->sentinel() >= 0) ::close(c.proc->sentinel());
              return worker_main(fd, &config.slots[index], config);
            });
            children.push_back({index, gen, proc});
            send_report(ctl, kSpawned, index, gen, proc->pid());
          } catch (const std::exception& e) {
            logger().error("pool spawner: cannot start a worker: {}", e.what());
            send_report(ctl, kSpawnFailed, index, gen, errno ? errno : EAGAIN);
          }
          ::close(fd);
        } else if (type == kSignal) {
          std::uint32_t index = msg.u32();
          int sig = static_cast<int>(msg.i32());
          for (auto& c : children)
            if (index == kAllWorkers || c.index == index) c.proc->signal(sig);
        } else if (type == kQuit) {
          quitting = true;
        }
      }
      in.erase(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(frames.consumed()));
    }
    std::vector<std::size_t> ended;
    for (std::size_t i = 0; i < polled; ++i, ++p)
      if (pfds[p].revents && children[i].proc->poll()) ended.push_back(i);
    for (auto it = ended.rbegin(); it != ended.rend(); ++it) {
      Child& c = children[*it];
      int code = c.proc->exitcode().value_or(-SIGKILL);
      if (ctl_open) send_report(ctl, kExited, c.index, c.gen, code);
      children.erase(children.begin() + static_cast<std::ptrdiff_t>(*it));
    }
  }
}

}  // namespace mpx::detail::poolwire
