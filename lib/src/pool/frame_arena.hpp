// Spare large buffers for task frames, shared by the pool (pool.cpp) and the MPI pool: the
// frames of a big map are refilled from those of the last one instead of fresh pages.
#pragma once

#include <mpx/detail/pool.hpp>

#include <cstddef>
#include <mutex>
#include <vector>

namespace mpx::detail {

// Fresh pages cost a page fault each, and big maps come in series: a sent frame of at least
// `keep_min` bytes is kept (up to `keep_max` bytes in all) for the next frame that size.
// Thread-safe: frames are taken by submitting threads and given back by the I/O thread.
class FrameArena {
 public:
  FrameArena(std::size_t keep_min, std::size_t keep_max) noexcept
      : keep_min_(keep_min), keep_max_(keep_max) {}

  // An empty buffer with room for at least `capacity` bytes.
  Bytes take(std::size_t capacity) {
    if (capacity >= keep_min_) {
      std::lock_guard lk(m_);
      for (auto it = spare_.begin(); it != spare_.end(); ++it) {
        if (it->capacity() >= capacity) {
          Bytes b = std::move(*it);
          spare_bytes_ -= b.capacity();
          spare_.erase(it);
          b.clear();
          return b;
        }
      }
    }
    Bytes b;
    b.reserve(capacity);
    return b;
  }

  // A task frame (detail/pool.hpp's layout: the prefix, then room for `reserve` body bytes).
  Bytes take_task_frame(std::size_t reserve) {
    Bytes b = take(kTaskPrefix + reserve);
    b.resize(kTaskPrefix);
    return b;
  }

  // Keeps `b` for reuse if it is big enough and there is room; drops it otherwise.
  void recycle(Bytes&& b) {
    if (b.capacity() < keep_min_) return;
    std::lock_guard lk(m_);
    if (spare_bytes_ + b.capacity() > keep_max_) return;
    spare_bytes_ += b.capacity();
    spare_.push_back(std::move(b));
  }

 private:
  const std::size_t keep_min_, keep_max_;
  std::mutex m_;
  std::vector<Bytes> spare_;
  std::size_t spare_bytes_ = 0;
};

}  // namespace mpx::detail
