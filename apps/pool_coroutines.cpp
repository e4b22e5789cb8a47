// Pool results in Asio coroutines, and concurrent.futures' as_completed.
//
// Three coroutines share one io_context thread and await mpx::Pool results with
// async_get(asio::use_awaitable): one awaits a task at a time (a sum of squares), one awaits a
// whole map_async (the longest Collatz chain below a bound), one awaits a task that throws and
// catches the RemoteError. Then mpx::as_completed hands back sleeping tasks in the order they
// finish. Every answer is checked against a known value; exit 1 if one is wrong.
#include <mpx/futures.hpp>
#include <mpx/pool.hpp>

#include <fmt/core.h>
#include <fmt/ranges.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "cli.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <exception>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;

namespace {

std::int64_t square(std::int64_t x) { return x * x; }

// Steps of the Collatz map from n down to 1.
int collatz_steps(std::int64_t n) {
  int steps = 0;
  for (; n != 1; ++steps) n = n % 2 ? 3 * n + 1 : n / 2;
  return steps;
}

int sleep_then(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}

int fail(int x) { throw std::invalid_argument("no answer for " + std::to_string(x)); }

struct Checks {
  bool ok = true;
  void operator()(bool good, const std::string& what) {
    fmt::print("{} {}\n", good ? "ok    " : "FAILED", what);
    ok = ok && good;
  }
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Asio coroutines awaiting mpx::Pool results (async_get with use_awaitable), then mpx::as_completed; "
      "checks every answer.",
      "pool_coroutines"};
  unsigned processes = 2;
  std::int64_t squares = 100;
  std::int64_t collatz_below = 1000;
  app.add_option("-p,--processes", processes, "Worker processes")
      ->check(CLI::Range(1U, 64U))
      ->capture_default_str();
  app.add_option("--squares", squares, "Sum the squares of 1..N, one awaited task each")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000}))
      ->capture_default_str();
  app.add_option("--collatz-below", collatz_below, "Longest Collatz chain below N, one awaited map_async")
      ->check(CLI::Range(std::int64_t{2}, std::int64_t{10000000}))
      ->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  Checks check;
  try {
    mpx::Pool pool(processes);
    asio::io_context io;
    std::vector<std::string> finished;  // the coroutines, in the order they finished
    std::exception_ptr failure;
    auto on_done = [&](std::string name) {
      return [&, name](std::exception_ptr e) {
        if (e && !failure) failure = e;
        finished.push_back(name);
      };
    };

    std::int64_t sum = 0;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          for (std::int64_t i = 1; i <= squares; ++i)
            sum += co_await pool.submit(square, i).async_get(asio::use_awaitable);
        },
        on_done("squares"));

    std::int64_t longest_n = 0;
    int longest_steps = -1;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          std::vector<std::int64_t> ns(static_cast<std::size_t>(collatz_below - 1));
          std::iota(ns.begin(), ns.end(), std::int64_t{1});
          std::vector<int> steps = co_await pool.map_async(collatz_steps, ns).async_get(asio::use_awaitable);
          auto it = std::max_element(steps.begin(), steps.end());  // the first of the longest
          longest_n = ns[static_cast<std::size_t>(it - steps.begin())];
          longest_steps = *it;
        },
        on_done("collatz"));

    std::string error;
    asio::co_spawn(
        io,
        [&]() -> asio::awaitable<void> {
          try {
            co_await pool.submit(fail, 42).async_get(asio::use_awaitable);
          } catch (const mpx::RemoteError& e) {
            error = e.what();
          }
        },
        on_done("error"));

    io.run();  // until all three are done: a pending async_get counts as work
    if (failure) std::rethrow_exception(failure);

    fmt::print("coroutines on one thread, in the order they finished: {}\n", fmt::join(finished, ", "));
    const std::int64_t n = squares;
    check(sum == n * (n + 1) * (2 * n + 1) / 6, fmt::format("sum of squares 1..{} = {}", n, sum));
    int serial_steps = -1;
    std::int64_t serial_n = 0;
    for (std::int64_t k = 1; k < collatz_below; ++k)
      if (int s = collatz_steps(k); s > serial_steps) serial_steps = s, serial_n = k;
    check(longest_n == serial_n && longest_steps == serial_steps,
          fmt::format("longest Collatz chain below {}: {} takes {} steps", collatz_below, longest_n,
                      longest_steps));
    check(error.find("no answer for 42") != std::string::npos,
          fmt::format("a failing task's RemoteError caught in the coroutine: {}", error));

    // concurrent.futures' as_completed: the results as they finish, whatever the submission order.
    const std::vector<int> naps{300, 50, 150, 0};
    std::vector<mpx::AsyncResult<int>> rs;
    for (int ms : naps) rs.push_back(pool.submit(sleep_then, ms));
    std::vector<int> order;
    for (const auto& r : mpx::as_completed(rs, std::chrono::seconds(30))) order.push_back(r.get());
    std::vector<int> sorted_order = order, sorted_naps = naps;
    std::sort(sorted_order.begin(), sorted_order.end());
    std::sort(sorted_naps.begin(), sorted_naps.end());
    check(sorted_order == sorted_naps, fmt::format("as_completed over naps of {} ms: finished as {}",
                                                   fmt::join(naps, ", "), fmt::join(order, ", ")));
    pool.close();
    pool.join();
  } catch (const std::exception& e) {
    fmt::print(stderr, "pool_coroutines: {}\n", e.what());
    return 1;
  }
  if (!check.ok) {
    fmt::print(stderr, "pool_coroutines: a check failed\n");
    return 1;
  }
  fmt::print("all checks passed\n");
  return 0;
}
