// Progress of a long run on stderr: one line redrawn in place on a terminal, a line per tenth
// otherwise (so logs stay short).
#pragma once

#include <fmt/core.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace mpx::workloads {

class Progress {
 public:
  explicit Progress(std::string what, bool enabled = true)
      : what_(std::move(what)), enabled_(enabled), tty_(::isatty(STDERR_FILENO) == 1) {}
  ~Progress() { finish(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void operator()(std::size_t done, std::size_t total) {
    if (!enabled_ || total == 0) return;
    const auto now = std::chrono::steady_clock::now();
    const std::size_t tenth = done * 10 / total;
    if (tty_) {
      if (done != total && now - last_ < std::chrono::milliseconds(100)) return;
      last_ = now;
      fmt::print(stderr, "\r{}: {}/{} ({}%) {:.1f} s ", what_, done, total, done * 100 / total, elapsed(now));
      drawn_ = true;
    } else if (tenth != last_tenth_) {
      last_tenth_ = tenth;
      fmt::print(stderr, "{}: {}/{} ({}%) {:.1f} s\n", what_, done, total, done * 100 / total, elapsed(now));
    }
    std::fflush(stderr);
  }

  void finish() {
    if (drawn_) fmt::print(stderr, "\r\033[K");
    drawn_ = false;
  }

 private:
  double elapsed(std::chrono::steady_clock::time_point now) const {
    return std::chrono::duration<double>(now - start_).count();
  }
  std::string what_;
  bool enabled_;
  bool tty_;
  bool drawn_ = false;
  std::size_t last_tenth_ = 0;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

// Seconds taken by f().
template <class F>
double time_seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  std::forward<F>(f)();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The median of `runs` timings of f() (one stray preemption does not make the figure).
template <class F>
double median_seconds(int runs, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < std::max(1, runs); ++i) t.push_back(time_seconds(f));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace mpx::workloads
