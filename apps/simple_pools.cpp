// The tutorial's SimpleThreadPool and SimpleProcessPool, without their races, and the
// tutorial's measurement: the per-item overhead of map() over an empty function (1000 items,
// pool size 2), for both pools side by side in one run.
//
// Both follow the tutorial's shape: map() puts every argument on an in-queue, starts `size`
// workers that take arguments, put f(arg) on an out-queue and call task_done(), then joins
// the in-queue and drains the out-queue. The tutorial's version had two races: a worker
// ending on a non-blocking get() that found the queue momentarily empty, and a drain that
// stopped at the first empty() while results were still on their way. Here a worker blocks
// in get() until it is handed a stop item, and a worker puts its result before task_done(),
// so once join() returns every result is already in the out-queue; map() then takes exactly
// one result per argument and orders them by the argument's position.
#include <mpx/process.hpp>
#include <mpx/queues.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <fmt/core.h>

#include "cli.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

// Python's queue.Queue: a thread-safe FIFO with task_done()/join().
template <class T>
class ThreadQueue {
 public:
  void put(T item) {
    {
      std::lock_guard lock(m_);
      items_.push_back(std::move(item));
      ++unfinished_;
    }
    not_empty_.notify_one();
  }
  T get() {
    std::unique_lock lock(m_);
    not_empty_.wait(lock, [&] { return !items_.empty(); });
    T item = std::move(items_.front());
    items_.pop_front();
    return item;
  }
  void task_done() {
    std::lock_guard lock(m_);
    if (unfinished_ == 0) throw std::logic_error("task_done() called too many times");
    if (--unfinished_ == 0) all_done_.notify_all();
  }
  void join() {
    std::unique_lock lock(m_);
    all_done_.wait(lock, [&] { return unfinished_ == 0; });
  }

 private:
  std::mutex m_;
  std::condition_variable not_empty_, all_done_;
  std::deque<T> items_;
  std::size_t unfinished_ = 0;
};

// Position -1 tells a worker to stop.
constexpr std::int64_t kStop = -1;

template <class F, class T>
using MapResult = std::decay_t<std::invoke_result_t<F&, const T&>>;

// Results arrive in any order, each with its argument's position.
template <class R>
std::vector<R> in_input_order(std::vector<std::pair<std::int64_t, R>> results) {
  std::vector<R> out(results.size());
  for (auto& [pos, r] : results) out[static_cast<std::size_t>(pos)] = std::move(r);
  return out;
}

class SimpleThreadPool {
 public:
  explicit SimpleThreadPool(int size) : size_(size) {}

  template <class F, class T>
  std::vector<MapResult<F, T>> map(F f, const std::vector<T>& seq) {
    using R = MapResult<F, T>;
    ThreadQueue<std::pair<std::int64_t, T>> inqueue;
    ThreadQueue<std::pair<std::int64_t, R>> outqueue;
    for (std::size_t i = 0; i < seq.size(); ++i) inqueue.put({static_cast<std::int64_t>(i), seq[i]});
    auto worker = [&] {
      for (;;) {
        auto [pos, x] = inqueue.get();
        if (pos == kStop) return;
        outqueue.put({pos, f(x)});  // before task_done: join() implies the result is there
        inqueue.task_done();
      }
    };
    std::vector<std::thread> threads;
    for (int i = 0; i < size_; ++i) threads.emplace_back(worker);
    inqueue.join();
    for (int i = 0; i < size_; ++i) inqueue.put({kStop, T{}});
    for (auto& t : threads) t.join();
    std::vector<std::pair<std::int64_t, R>> results;
    for (std::size_t i = 0; i < seq.size(); ++i) results.push_back(outqueue.get());
    return in_input_order(std::move(results));
  }

 private:
  int size_;
};

// How SimpleProcessPool runs its workers: mpx::Process, as the tutorial has it.
class MpxWorkers {
 public:
  template <class Worker>
  void start(Worker worker) {
    procs_.emplace_back(std::move(worker));
    procs_.back().start();
  }
  void join_all() {
    for (auto& p : procs_) {
      p.join();
      if (p.exitcode() != 0) throw std::runtime_error("a SimpleProcessPool worker failed");
    }
  }

 private:
  std::vector<mpx::Process> procs_;
};

// Not a way to run anything: bare fork()/_exit()/waitpid(), for ForkFloorPool below.
class BareForkWorkers {
 public:
  template <class Worker>
  void start(Worker worker) {
    pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      worker();
      ::_exit(0);
    }
    pids_.push_back(pid);
  }
  void join_all() {
    for (pid_t pid : pids_) {
      int status = 0;
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        throw std::runtime_error("a fork-floor worker failed");
    }
  }

 private:
  std::vector<pid_t> pids_;
};

template <class Workers>
class ProcessPool {
 public:
  explicit ProcessPool(int size) : size_(size) {}

  template <class F, class T>
  std::vector<MapResult<F, T>> map(F f, const std::vector<T>& seq) {
    using R = MapResult<F, T>;
    mpx::JoinableQueue<std::pair<std::int64_t, T>> inqueue;
    mpx::Queue<std::pair<std::int64_t, R>> outqueue;
    for (std::size_t i = 0; i < seq.size(); ++i) inqueue.put({static_cast<std::int64_t>(i), seq[i]});
    Workers workers;
    for (int i = 0; i < size_; ++i)
      workers.start([f, inqueue, outqueue]() mutable {
        for (;;) {
          auto [pos, x] = inqueue.get();
          if (pos == kStop) return;
          outqueue.put({pos, f(x)});  // before task_done: join() implies the result is there
          inqueue.task_done();
        }
      });
    inqueue.join();
    for (int i = 0; i < size_; ++i) inqueue.put({kStop, T{}});
    workers.join_all();
    std::vector<std::pair<std::int64_t, R>> results;
    for (std::size_t i = 0; i < seq.size(); ++i) results.push_back(outqueue.get());
    return in_input_order(std::move(results));
  }

 private:
  int size_;
};

using SimpleProcessPool = ProcessPool<MpxWorkers>;
// Not a pool to use: SimpleProcessPool with bare fork/_exit/waitpid in place of mpx::Process,
// over the same queues. It measures what the kernel charges for starting, running and reaping
// `size` processes on this machine, so the report can tell mpx's share of the process pool's
// overhead from fork's.
using ForkFloorPool = ProcessPool<BareForkWorkers>;

int empty_function(int x) { return x; }

template <class Pool>
double map_seconds(Pool& pool, const std::vector<int>& seq) {
  auto t0 = std::chrono::steady_clock::now();
  auto out = pool.map(empty_function, seq);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (out != seq) throw std::runtime_error("map returned wrong results");
  return s;
}

double median(std::vector<double> v) {
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "The tutorial's SimpleThreadPool and SimpleProcessPool (race-free): map() results, then each "
      "pool's per-item overhead on an empty function, side by side"};
  int items = 1000, size = 2, repeat = 21;
  app.add_option("--items", items, "arguments per map()")->check(CLI::PositiveNumber);
  app.add_option("--size", size, "workers per pool")->check(CLI::PositiveNumber);
  app.add_option("--repeat", repeat, "map() calls per pool; the median is reported")
      ->check(CLI::PositiveNumber);
  MPX_APP_PARSE(app, argc, argv);

  SimpleThreadPool threads(size);
  SimpleProcessPool processes(size);
  ForkFloorPool floor(size);

  auto square = [](long x) { return x * x; };
  std::vector<long> small{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  auto show = [](const std::vector<long>& v) {
    std::string s;
    for (long x : v) s += (s.empty() ? "" : ", ") + std::to_string(x);
    return "[" + s + "]";
  };
  fmt::print("SimpleThreadPool({}).map(x*x, 0..9): {}\n", size, show(threads.map(square, small)));
  fmt::print("SimpleProcessPool({}).map(x*x, 0..9): {}\n", size, show(processes.map(square, small)));

  std::vector<int> seq(static_cast<std::size_t>(items));
  for (int i = 0; i < items; ++i) seq[static_cast<std::size_t>(i)] = i;
  const std::vector<int> none;
  // Whole map() calls, and map() over nothing (starting and stopping the workers), alternating
  // pools so both see the same machine load.
  std::vector<double> thread_full, thread_empty, process_full, process_empty, floor_full, floor_empty;
  for (int r = 0; r < repeat; ++r) {
    thread_full.push_back(map_seconds(threads, seq));
    process_full.push_back(map_seconds(processes, seq));
    floor_full.push_back(map_seconds(floor, seq));
    thread_empty.push_back(map_seconds(threads, none));
    process_empty.push_back(map_seconds(processes, none));
    floor_empty.push_back(map_seconds(floor, none));
  }
  const double n = items;
  const double t_full = median(thread_full) * 1e6, p_full = median(process_full) * 1e6;
  const double t_start = median(thread_empty) * 1e6, p_start = median(process_empty) * 1e6;
  // Per item, as the tutorial measured it: the whole map() over the items.
  fmt::print("simple_thread_pool.per_item_overhead: {:.3f} us\n", t_full / n);
  fmt::print("simple_process_pool.per_item_overhead: {:.3f} us\n", p_full / n);
  fmt::print("process_vs_thread.per_item_overhead_ratio: {:.2f} x\n", p_full / t_full);
  // The same split into starting/stopping `size` workers and moving the items.
  fmt::print("simple_thread_pool.worker_start_stop: {:.1f} us\n", t_start);
  fmt::print("simple_process_pool.worker_start_stop: {:.1f} us\n", p_start);
  const double t_item = std::max(0.0, t_full - t_start) / n, p_item = std::max(0.0, p_full - p_start) / n;
  fmt::print("simple_thread_pool.per_item_communication: {:.3f} us\n", t_item);
  fmt::print("simple_process_pool.per_item_communication: {:.3f} us\n", p_item);
  fmt::print("process_vs_thread.per_item_communication_ratio: {:.2f} x\n",
             t_item > 0 ? p_item / t_item : 0.0);
  // The floor: what bare fork/_exit/waitpid cost in the same design, and what mpx adds on top.
  const double f_full = median(floor_full) * 1e6, f_start = median(floor_empty) * 1e6;
  fmt::print("fork_floor.per_item_overhead: {:.3f} us\n", f_full / n);
  fmt::print("fork_floor.worker_start_stop: {:.1f} us\n", f_start);
  fmt::print("fork_floor_vs_thread.per_item_overhead_ratio: {:.2f} x\n", f_full / t_full);
  fmt::print("process_vs_fork_floor.per_item_overhead_ratio: {:.2f} x\n", p_full / f_full);
  return 0;
}
