// Threads and processes: why a program with threads wants forkserver (or spawn) rather than fork.
//
// Busy threads take one global std::mutex over and over and hold it while they work. Children are
// started under each start method while one of those threads holds the mutex; each child tries
// that same mutex (try_lock, for a bounded time, so nothing hangs). A fork child is a copy of the
// process at that instant: the mutex is locked by a thread that does not exist in the child, so
// it stays locked forever (a lock() there would hang). A forkserver child is forked by a server
// started at the top of main, before any thread, so its copy of the mutex is unlocked; a spawn
// child is a fresh image of the program, where the mutex is new. The program checks exactly
// that, prints a table and exits 1 if a check fails.
#include <mpx/context.hpp>
#include <mpx/process.hpp>

#include <fmt/core.h>
#include <unistd.h>

#include "cli.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;

// The mutex the threads hold while they work, and the children try.
std::mutex g_mutex;

// A child's exit code when the mutex stayed locked for the whole probe.
constexpr int kSawLocked = 3;

// The child's target: takes the mutex if it can within probe_ms (exit code 0), else exits with
// kSawLocked. A function pointer with an int: transferable, so every start method can run it.
void probe_mutex(int probe_ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(probe_ms);
  do {
    if (g_mutex.try_lock()) {
      g_mutex.unlock();
      return;
    }
    std::this_thread::sleep_for(1ms);
  } while (std::chrono::steady_clock::now() < end);
  std::fflush(nullptr);
  ::_exit(kSawLocked);
}

// Threads that take g_mutex and hold it while they work. hold() makes the next thread to take it
// keep it until the returned guard goes, so a child can be started while another thread holds it.
class BusyThreads {
 public:
  explicit BusyThreads(unsigned n) {
    for (unsigned i = 0; i < n; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~BusyThreads() {
    stop_ = true;
    for (auto& t : threads_) t.join();
  }
  BusyThreads(const BusyThreads&) = delete;
  BusyThreads& operator=(const BusyThreads&) = delete;

  class Hold {
   public:
    explicit Hold(BusyThreads& b) : b_(b) {
      b_.want_hold_ = true;
      b_.holding_.wait(false);  // until a thread holds the mutex for us
    }
    ~Hold() {
      b_.release_ = true;
      b_.release_.notify_all();
      b_.holding_.wait(true);  // until it has let go
    }
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;

   private:
    BusyThreads& b_;
  };

  long rounds() const { return rounds_.load(); }

 private:
  void loop() {
    unsigned long x = 1;
    while (!stop_.load(std::memory_order_relaxed)) {
      std::lock_guard lock(g_mutex);
      for (int i = 0; i < 2000; ++i) x = x * 6364136223846793005UL + 1442695040888963407UL;  // the "work"
      sink_.store(x, std::memory_order_relaxed);
      rounds_.fetch_add(1, std::memory_order_relaxed);
      if (want_hold_.exchange(false)) {
        holding_ = true;
        holding_.notify_all();
        release_.wait(false);
        release_ = false;
        holding_ = false;
        holding_.notify_all();
      }
    }
  }

  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false}, want_hold_{false}, holding_{false}, release_{false};
  std::atomic<long> rounds_{0};
  std::atomic<unsigned long> sink_{0};
};

struct Row {
  mpx::StartMethod method;
  std::string seen;      // "locked 3/3", "unlocked 3/3", ...
  std::string expected;  // "locked" or "unlocked"
  bool ok = false;
};

// Starts `children` probes under `method`, each while a busy thread holds the mutex.
Row run_method(mpx::StartMethod method, BusyThreads& busy, int children, int probe_ms) {
  Row row{method, "", method == mpx::StartMethod::fork ? "locked" : "unlocked"};
  int locked = 0, unlocked = 0, failed = 0;
  for (int i = 0; i < children; ++i) {
    mpx::Process p({.name = fmt::format("probe-{}-{}", mpx::to_string(method), i),
                    .daemon = false,
                    .context = mpx::get_context(method)},
                   &probe_mutex, probe_ms);
    {
      BusyThreads::Hold held(busy);
      p.start();
    }
    if (!p.join(10s)) {  // a probe is bounded; this is a safety net
      p.kill();
      p.join();
    }
    const auto code = p.exitcode();
    if (code == kSawLocked)
      ++locked;
    else if (code == 0)
      ++unlocked;
    else
      ++failed;
  }
  if (failed)
    row.seen = fmt::format("{} failed", failed);
  else if (locked == children)
    row.seen = fmt::format("locked {}/{}", locked, children);
  else if (unlocked == children)
    row.seen = fmt::format("unlocked {}/{}", unlocked, children);
  else
    row.seen = fmt::format("mixed ({} locked, {} unlocked)", locked, unlocked);
  row.ok = failed == 0 && (row.expected == "locked" ? locked : unlocked) == children;
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Busy threads hold a global std::mutex; children started under fork, forkserver and spawn try it. "
      "A fork child inherits it locked, a forkserver or spawn child gets it unlocked. Exits 1 if that does "
      "not hold.",
      "threads_and_processes"};
  unsigned threads = 8;
  int children = 3;
  int probe_ms = 100;
  app.add_option("-t,--threads", threads, "Busy threads taking the mutex")
      ->check(CLI::Range(1U, 256U))
      ->capture_default_str();
  app.add_option("-c,--children", children, "Children started under each start method")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  app.add_option("--probe-ms", probe_ms, "How long a child keeps trying the mutex before it calls it locked")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  // First, while this process has one thread: the fork server is a snapshot of it as it is now,
  // with g_mutex unlocked. Processes without a context of their own now default to forkserver.
  mpx::set_start_method(mpx::StartMethod::forkserver);

  std::vector<Row> rows;
  long rounds = 0;
  try {
    BusyThreads busy(threads);
    for (auto method : {mpx::StartMethod::fork, mpx::StartMethod::forkserver, mpx::StartMethod::spawn})
      rows.push_back(run_method(method, busy, children, probe_ms));
    rounds = busy.rounds();
  } catch (const std::exception& e) {
    fmt::print(stderr, "threads_and_processes: {}\n", e.what());
    return 1;
  }

  fmt::print("{} threads held the mutex {} times in turn; every child started while one of them held it.\n",
             threads, rounds);
  fmt::print("{:<11} {:<18} {:<9} {}\n", "method", "mutex in child", "expected", "check");
  bool all_ok = true;
  for (const Row& r : rows) {
    fmt::print("{:<11} {:<18} {:<9} {}\n", mpx::to_string(r.method), r.seen, r.expected,
               r.ok ? "ok" : "FAILED");
    all_ok = all_ok && r.ok;
  }
  fmt::print(
      "fork copies a mutex some other thread holds, and nothing in the child will ever unlock it;\n"
      "forkserver and spawn children do not inherit the parent's threads' locks.\n");
  if (!all_ok) {
    fmt::print(stderr, "threads_and_processes: a check failed\n");
    return 1;
  }
  fmt::print("all checks passed\n");
  return 0;
}
