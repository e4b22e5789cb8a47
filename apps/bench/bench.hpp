// The tiny framework behind mpx_bench: groups register themselves, results print as
// `name: value unit` lines, and helpers cover what every benchmark needs (timing, medians,
// a forked peer process).
//
//   MPX_BENCH_GROUP(pool_map, "pool", "Pool.map throughput") {
//     double s = mpx::bench::median_of(ctx.runs(5), [&] { return mpx::bench::time_seconds([&] { ... }); });
//     mpx::bench::report("pool.map.tasks_per_s", n / s, "tasks/s");
//   }
#pragma once

#include <fmt/core.h>

#include <linux/futex.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mpx::bench {

using Clock = std::chrono::steady_clock;

// What a group is told about the run.
struct Context {
  bool quick = false;  // --quick: a smoke run, a fraction of the iterations
  // Scales an iteration count down in quick mode (never below 1).
  long iterations(long full) const { return quick ? std::max(1L, full / 20) : full; }
  int runs(int full) const { return quick ? std::max(1, std::min(full, 2)) : full; }
};

using GroupFn = void (*)(Context&);
struct Group {
  std::string name;
  std::string description;
  GroupFn run;
};

inline std::vector<Group>& registry() {
  static std::vector<Group> groups;
  return groups;
}

struct Registration {
  Registration(std::string name, std::string description, GroupFn fn) {
    registry().push_back({std::move(name), std::move(description), fn});
  }
};

// Defines and registers a group: MPX_BENCH_GROUP(identifier, "name", "description") { body using ctx }
#define MPX_BENCH_GROUP(ident, name, description)                                             \
  static void mpx_bench_##ident(::mpx::bench::Context& ctx);                                  \
  static const ::mpx::bench::Registration mpx_bench_registration_##ident{name, description,   \
                                                                         &mpx_bench_##ident}; \
  static void mpx_bench_##ident([[maybe_unused]] ::mpx::bench::Context& ctx)

// `name: value unit`, with as many decimals as the magnitude deserves.
inline void report(std::string_view name, double value, std::string_view unit) {
  const double a = value < 0 ? -value : value;
  if (a >= 1000)
    fmt::print("{}: {:.0f} {}\n", name, value, unit);
  else if (a >= 10)
    fmt::print("{}: {:.1f} {}\n", name, value, unit);
  else
    fmt::print("{}: {:.3f} {}\n", name, value, unit);
  std::fflush(stdout);
}

// A candidate against its baseline: `name: 1.05 x`.
inline void report_ratio(std::string_view name, double candidate, double baseline) {
  fmt::print("{}: {:.2f} x\n", name, baseline == 0 ? 0.0 : candidate / baseline);
  std::fflush(stdout);
}

// apps/bench/python/<script_name> in the source tree. (Not found through __FILE__: a build through
// ccache with a base_dir compiles with relative paths, and the scripts then vanish silently.)
inline std::filesystem::path python_script(const std::string& script_name) {
  return std::filesystem::path(MPX_SOURCE_DIR) / "apps" / "bench" / "python" / script_name;
}

// A Python baseline's figures: the `name: value unit` lines printed by apps/bench/python/<script>
// (empty when the script or python3 is missing). `extra` is appended to its command line as is.
inline std::map<std::string, double> python_figures(const std::string& script_name, bool quick, int runs,
                                                    const std::string& extra = {}) {
  std::map<std::string, double> out;
  auto script = python_script(script_name);
  if (!std::filesystem::exists(script)) return out;
  std::string cmd = "python3 '" + script.string() + "' " + std::to_string(runs) + (quick ? " --quick" : "") +
                    " " + extra + " 2>/dev/null";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char line[512];
  while (std::fgets(line, sizeof line, p)) {
    char name[256];
    double value;
    if (std::sscanf(line, "%255[^:]: %lf", name, &value) == 2) out[name] = value;
  }
  ::pclose(p);
  return out;
}

inline double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

template <class F>
double time_seconds(F&& f) {
  auto t0 = Clock::now();
  std::forward<F>(f)();
  return seconds(Clock::now() - t0);
}

inline double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  auto k = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}
inline double median(std::vector<double> v) { return percentile(std::move(v), 0.5); }

// Runs f (returning a double) `runs` times; the median result.
template <class F>
double median_of(int runs, F&& f) {
  std::vector<double> v;
  for (int i = 0; i < runs; ++i) v.push_back(f());
  return median(std::move(v));
}

// Runs `fn` in a forked child that exits with 0 (1 if fn threw). Fork before starting threads.
template <class F>
pid_t fork_child(F&& fn) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("fork");
    std::exit(2);
  }
  if (pid == 0) {
    int code = 0;
    try {
      fn();
    } catch (const std::exception& e) {
      fmt::print(stderr, "benchmark child: {}\n", e.what());
      code = 1;
    }
    std::fflush(nullptr);
    ::_exit(code);
  }
  return pid;
}

// Writes all n bytes to a socket or pipe; throws on error.
inline void write_all(int fd, const void* p, std::size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n) {
    ssize_t r = ::write(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw std::runtime_error(std::string("write: ") + std::strerror(errno));
    c += r;
    n -= static_cast<std::size_t>(r);
  }
}

// Reads exactly n bytes; false when the peer is gone first (end of file or reset), throws on
// any other error.
[[nodiscard]] inline bool read_all(int fd, void* p, std::size_t n) {
  char* c = static_cast<char*>(p);
  while (n) {
    ssize_t r = ::read(fd, c, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == ECONNRESET) return false;
    if (r < 0) throw std::runtime_error(std::string("read: ") + std::strerror(errno));
    if (r == 0) return false;
    c += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

// recv(2) on a socket that, when `polling`, first polls (MSG_DONTWAIT) for up to 100 µs,
// yielding the CPU after the first microsecond, and only then blocks. mpx's waits poll before
// they sleep by default (MPX_SPIN_NS), which saves the reader a wake-up when the peer answers in
// time, so each raw floor is also measured this way.
inline ssize_t recv_some(int fd, void* b, std::size_t n, bool polling) {
  if (polling) {
    auto start = Clock::now();
    for (;;) {
      ssize_t r = ::recv(fd, b, n, MSG_DONTWAIT);
      if (r >= 0 || (errno != EAGAIN && errno != EINTR)) return r;
      auto spent = Clock::now() - start;
      if (spent >= std::chrono::microseconds(100)) break;
      if (spent >= std::chrono::microseconds(1)) ::sched_yield();  // the peer may share this CPU
    }
  }
  return ::recv(fd, b, n, 0);
}

// Waits for a child from fork_child; true if it exited cleanly.
inline bool join_child(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// The floor under any queue of 1 MiB items between two processes: a forked producer copies the
// same 1 MiB item into the next free slot of a ring of `slots` in shared memory and publishes it
// with one counter; this process copies each out into a reused buffer and frees the slot with
// the other. A wait polls for up to 20 us, yielding the CPU, then sleeps on the counter's futex
// (polling alone collapses when the machine is busy). MiB/s from the fork to the last copy out.
inline double copy_in_copy_out_mib_per_s(long n, std::uint32_t slots) {
  constexpr std::size_t kMiB = std::size_t{1} << 20;
  struct alignas(64) Counter {
    std::atomic<std::uint32_t> value{0};
    std::atomic<std::uint32_t> sleeping{0};
  };
  struct Ring {
    Counter produced, consumed;
  };
  const std::size_t bytes = 4096 + slots * kMiB;
  void* map = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) throw std::runtime_error("mmap failed");
  auto* ring = new (map) Ring;
  auto slot = [&](std::uint32_t i) { return static_cast<std::byte*>(map) + 4096 + (i % slots) * kMiB; };
  std::memset(slot(0), 0, slots * kMiB);  // no first-touch faults while timed
  auto wait_until = [](Counter& c, auto ready) {
    if (ready(c.value.load(std::memory_order_acquire))) return;
    for (auto t0 = Clock::now(); Clock::now() - t0 < std::chrono::microseconds(20);) {
      for (int k = 0; k < 32; ++k)
        if (ready(c.value.load(std::memory_order_acquire))) return;
      ::sched_yield();
    }
    for (;;) {
      c.sleeping.store(1);
      std::uint32_t v = c.value.load();
      if (ready(v)) return;
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&c.value), FUTEX_WAIT, v, nullptr, nullptr, 0);
    }
  };
  auto publish = [](Counter& c, std::uint32_t v) {
    c.value.store(v);
    if (c.sleeping.exchange(0))
      ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&c.value), FUTEX_WAKE, INT_MAX, nullptr, nullptr,
                0);
  };
  const auto count = static_cast<std::uint32_t>(n);
  auto t0 = Clock::now();
  pid_t pid = fork_child([&] {
    std::vector<std::byte> item(kMiB, std::byte{0x5a});
    for (std::uint32_t i = 0; i < count; ++i) {
      wait_until(ring->consumed, [&](std::uint32_t freed) { return i - freed < slots; });
      std::memcpy(slot(i), item.data(), kMiB);
      publish(ring->produced, i + 1);
    }
  });
  std::vector<std::byte> out(kMiB);
  std::size_t check = 0;
  for (std::uint32_t i = 0; i < count; ++i) {
    wait_until(ring->produced, [&](std::uint32_t ready) { return ready > i; });
    std::memcpy(out.data(), slot(i), kMiB);
    publish(ring->consumed, i + 1);
    check += static_cast<std::size_t>(out[i % kMiB]);
  }
  double s = seconds(Clock::now() - t0);
  bool ok = join_child(pid);
  ::munmap(map, bytes);
  if (!ok) throw std::runtime_error("copy in, copy out: the producer failed");
  if (check != std::size_t{count} * 0x5a) throw std::runtime_error("copy in, copy out: lost bytes");
  return static_cast<double>(n) / s;  // 1 MiB items: items/s is MiB/s
}

}  // namespace mpx::bench
