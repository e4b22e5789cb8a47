// The pool's spawner: a single-threaded process, forked once per pool, that forks the workers
// the pool asks for and reports their exits (proto/pool.md §3). Nothing here touches locks,
// threads or io_contexts inherited from the pool's process: the loop uses plain system calls on
// its own fds, and the workers are kept by a WorkerSet.
#include <mpx/detail/task.hpp>
#include <mpx/detail/transfer.hpp>
#include <mpx/errors.hpp>
#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <exception>
#include <string>
#include <vector>

#include "common/log.hpp"
#include "pool/wire.hpp"
#include "process/forkserver.hpp"
#include "process/worker_set.hpp"

namespace mpx::detail::poolwire {
namespace {

class Spawner {
 public:
  Spawner(int ctl, const SpawnerConfig& config) : ctl_(ctl), config_(config), spawned_(config.spawned) {}

  int run() {
    for (;;) {
      if (quitting_ && workers_.running() == 0) return 0;
      std::vector<pollfd> fds{{ctl_, POLLIN, 0}};
      for (int fd : workers_.sentinels()) fds.push_back({fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        return 1;
      }
      if (fds[0].revents && !read_control_channel()) {
        // The pool's process is gone (or closed the channel without asking): nobody will read
        // results any more, so the workers go now.
        workers_.kill_all();
        return 0;
      }
      report_exits();
    }
  }

 private:
  // Reads what the pool sent and acts on every complete message. False at end of file.
  bool read_control_channel() {
    std::byte buf[4096];
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int) * 32)];
    iovec iov{buf, sizeof buf};
    msghdr mh{};
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof cbuf;
    ssize_t n = ::recvmsg(ctl_, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) return true;
    take_fds(mh);
    if (n <= 0) return false;
    in_.insert(in_.end(), buf, buf + n);
    proto::FrameReader frames(in_);
    while (auto frame = frames.next()) handle(*frame);
    in_.erase(in_.begin(), in_.begin() + static_cast<std::ptrdiff_t>(frames.consumed()));
    return true;
  }

  // Channel fds arrive with their SPAWN messages, in order: each is for the next SPAWN.
  void take_fds(msghdr& mh) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      std::size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < k; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        fds_.push_back(fd);
      }
    }
  }

  void handle(std::span<const std::byte> frame) {
    ControlMessage msg = poolwire::read_control(frame);
    if (msg.type == kSpawn) {
      spawn(msg.index, msg.gen);
    } else if (msg.type == kSignal) {
      if (msg.index == kAllWorkers)
        workers_.signal_all(msg.value);
      else
        workers_.signal(msg.index, msg.value);
    } else if (msg.type == kQuit) {
      quitting_ = true;
    }
  }

  void spawn(std::uint32_t index, std::uint32_t gen) {
    if (fds_.empty()) {
      report(kSpawnFailed, index, gen, EBADF);
      return;
    }
    int fd = fds_.front();
    fds_.pop_front();
    try {
      ForkOptions opts;
      opts.name = "PoolWorker-" + std::to_string(++spawned_);
      opts.daemon = true;
      opts.die_with_parent = true;
      // The worker keeps only its own channel (WorkerSet closes its siblings' sentinels).
      auto started = workers_.start(
          index, opts,
          [&]() -> int {
            ::close(ctl_);
            for (int other : fds_) ::close(other);
            return worker_main(fd, &config_.slots[index], config_);
          },
          gen);
      report(kSpawned, index, gen, started.pid);
    } catch (const std::exception& e) {
      int err = errno ? errno : EAGAIN;
      logger().error("pool spawner: cannot start a worker: {}", e.what());
      report(kSpawnFailed, index, gen, err);
    }
    ::close(fd);
  }

  void report_exits() {
    for (const WorkerSet::Exit& e : workers_.reap())
      report(kExited, static_cast<std::uint32_t>(e.slot), e.generation, e.exitcode.value_or(-SIGKILL));
  }

  void report(std::uint8_t type, std::uint32_t index, std::uint32_t gen, std::int32_t value) {
    Bytes f = control_frame({.type = type, .index = index, .gen = gen, .value = value});
    write_all(ctl_, f.data(), f.size());
  }

  const int ctl_;
  const SpawnerConfig& config_;
  unsigned spawned_;  // for the workers' names, counting those the pool forked itself
  WorkerSet workers_;
  std::deque<int> fds_;  // channel fds received and not yet used
  Bytes in_;
  bool quitting_ = false;
};

}  // namespace

void spawner_child_main(std::uint64_t slots, std::uint64_t init_module, std::uint64_t init_offset,
                        unsigned maxtasksperchild, unsigned spawned) {
  int ctl = passed_fd(0);
  if (ctl < 0) throw Error("mpx::Pool: the spawner was started without its control socket");
  std::function<void()> initializer;
  if (init_module != 0) {
    initializer = reinterpret_cast<void (*)()>(
        loaded_code_address({init_module, init_offset}, "mpx::Pool: the initializer"));
  }
  prepare_code_refs();
  SpawnerConfig config{static_cast<Slot*>(shared_state_here(slots)), &initializer, maxtasksperchild, spawned};
  if (int status = spawner_main(ctl, config); status != 0)
    throw Error("mpx::Pool: the spawner's control socket failed (status " + std::to_string(status) + ")");
}

int spawner_main(int ctl, const SpawnerConfig& config) {
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  return Spawner(ctl, config).run();
}

}  // namespace mpx::detail::poolwire
