// The pool's private wire: message types on the worker channels and on the control channel to
// the pool's spawner process, and the per-worker slot in shared memory. proto/pool.md is the spec.
#pragma once

#include <mpx/detail/futex.hpp>
#include <mpx/detail/task.hpp>
#include <mpx/proto/frame.hpp>
#include <mpx/serialize.hpp>

#include <sched.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <span>

namespace mpx::detail::poolwire {

// Worker channel: pool -> worker.
inline constexpr std::uint8_t kTask = 1;  // u64 seq, task body (detail/task.hpp)
inline constexpr std::uint8_t kExit = 2;  // finish what was sent before, then exit
// Worker channel: worker -> pool.
inline constexpr std::uint8_t kResult = 16;     // u64 seq, u64 run time in ns, result encoding
inline constexpr std::uint8_t kInitError = 17;  // str type, str message: the initializer threw
// Control channel: pool -> spawner.
inline constexpr std::uint8_t kSpawn = 32;   // the worker's channel fd travels in SCM_RIGHTS
inline constexpr std::uint8_t kSignal = 33;  // index kAllWorkers: every worker; value: the signal
inline constexpr std::uint32_t kAllWorkers = 0xffffffff;
inline constexpr std::uint8_t kQuit = 34;  // exit once every worker has exited
// Control channel: spawner -> pool.
inline constexpr std::uint8_t kSpawned = 48;      // value: the pid
inline constexpr std::uint8_t kExited = 49;       // value: the exit code (-N: killed by signal N)
inline constexpr std::uint8_t kSpawnFailed = 50;  // value: errno

// Every control message, either way, has the same fields; those its type does not use are 0.
struct ControlMessage {
  std::uint8_t type = 0;
  std::uint32_t index = 0;  // the worker's slot
  std::uint32_t gen = 0;    // tells a worker from its replacements at the same index
  std::int32_t value = 0;
};

inline Bytes control_frame(const ControlMessage& m) {
  Bytes f;
  std::size_t at = proto::begin_frame(f);
  proto::Writer w(f);
  w.u8(m.type);
  w.u32(m.index);
  w.u32(m.gen);
  w.i32(m.value);
  proto::end_frame(f, at);
  return f;
}

// A short frame throws mpx::ProtocolError.
inline ControlMessage read_control(std::span<const std::byte> frame) {
  proto::Reader r = task_reader(frame);
  ControlMessage m;
  m.type = r.u8();
  m.index = r.u32();
  m.gen = r.u32();
  m.value = r.i32();
  return m;
}

// What a worker is running, readable by the pool after the worker died: the sequence number of
// the task in progress, 0 between tasks. One cache line per worker index.
struct alignas(64) Slot {
  std::atomic<std::uint64_t> running{0};
};

inline constexpr std::size_t kReadChunk = std::size_t{256} << 10;

// A growable read buffer without zero-filling (large results arrive straight into it). Memory
// comes with the first read: a pool that never hears from a channel never maps a buffer for it.
class ReadBuffer {
 public:
  std::span<const std::byte> data() const { return {buf_.get() + beg_, end_ - beg_}; }
  void consume(std::size_t n) {
    beg_ += n;
    if (beg_ == end_) {
      beg_ = end_ = 0;
      if (cap_ > 4 * kReadChunk) reset(kReadChunk);
    }
  }
  // Room for at least `need` more bytes of the current frame.
  std::span<std::byte> prepare(std::size_t need) {
    if (!buf_) reset(need > kReadChunk ? need : kReadChunk);
    std::size_t have = end_ - beg_;
    if (beg_ > 0 && (cap_ - end_ < need || beg_ > cap_ / 2)) {
      std::memmove(buf_.get(), buf_.get() + beg_, have);
      beg_ = 0;
      end_ = have;
    }
    if (cap_ - end_ < need) {
      std::size_t cap = cap_ * 2 > have + need ? cap_ * 2 : have + need;
      auto nb = std::make_unique_for_overwrite<std::byte[]>(cap);
      std::memcpy(nb.get(), buf_.get() + beg_, have);
      buf_ = std::move(nb);
      cap_ = cap;
      beg_ = 0;
      end_ = have;
    }
    return {buf_.get() + end_, cap_ - end_};
  }
  void commit(std::size_t n) { end_ += n; }

 private:
  void reset(std::size_t cap) {
    buf_ = std::make_unique_for_overwrite<std::byte[]>(cap);
    cap_ = cap;
    beg_ = end_ = 0;
  }
  std::unique_ptr<std::byte[]> buf_;
  std::size_t cap_ = 0, beg_ = 0, end_ = 0;
};

struct SpawnerConfig {
  Slot* slots = nullptr;
  const std::function<void()>* initializer = nullptr;
  unsigned maxtasksperchild = 0;
  unsigned spawned = 0;  // workers the pool's process forked itself before the spawner (for names)
};

// The spawner's main loop: forks workers on request, reports their exits.
int spawner_main(int ctl, const SpawnerConfig& config);
// The spawner as the target of a forkserver or spawn child: its control socket is passed_fd(0),
// the slots are at `slots` in its starter, the initializer (module 0: none) is a function.
void spawner_child_main(std::uint64_t slots, std::uint64_t init_module, std::uint64_t init_offset,
                        unsigned maxtasksperchild, unsigned spawned);
// A worker's loop on its channel to the pool; returns its exit status.
int worker_main(int fd, Slot* slot, const SpawnerConfig& config);
// Writes all n bytes to the stream socket fd, waiting while it is full (non-blocking or not);
// false once the peer is gone. For the worker's and the spawner's plain poll loops.
bool write_all(int fd, const std::byte* p, std::size_t n);

}  // namespace mpx::detail::poolwire
