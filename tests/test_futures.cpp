// Futures: Pool::submit, mpx::wait and mpx::as_completed (concurrent.futures), and
// AsyncResult::async_get with Asio completion tokens.
#include <doctest/doctest.h>
#include <mpx/futures.hpp>
#include <mpx/pool.hpp>
#include <support.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <future>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
namespace asio = boost::asio;

namespace {

constexpr auto kLong = std::chrono::seconds(60);  // bound for anything that should be quick

int square(int x) { return x * x; }
int sleep_then(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
int fail_after(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  throw std::runtime_error("failed after " + std::to_string(ms) + " ms");
}
void nothing() {}

}  // namespace

TEST_CASE("Pool::submit is apply_async; wait(all_completed) returns every index as done") {
  mpx::Pool pool(2);
  std::vector<mpx::AsyncResult<int>> rs;
  for (int i = 0; i < 20; ++i) rs.push_back(pool.submit(square, i));
  auto [done, not_done] = mpx::wait(rs, mpx::ReturnWhen::all_completed, kLong);
  CHECK(not_done.empty());
  REQUIRE(done.size() == 20);
  for (std::size_t i = 0; i < 20; ++i) {
    CHECK(done[i] == i);
    CHECK(rs[i].ready());
    CHECK(rs[i].get() == static_cast<int>(i * i));
  }
}

TEST_CASE("wait(first_completed) returns with the quick one done and the slow one not") {
  mpx::Pool pool(2);
  std::vector<mpx::AsyncResult<int>> rs{pool.submit(sleep_then, 20000), pool.submit(sleep_then, 1)};
  auto r = mpx::wait(rs, mpx::ReturnWhen::first_completed, kLong);
  CHECK(r.done == std::vector<std::size_t>{1});
  CHECK(r.not_done == std::vector<std::size_t>{0});
  CHECK(rs[1].get() == 1);
  pool.terminate();
}

TEST_CASE("wait(first_exception) returns at the first failure; a timeout leaves the rest not done") {
  mpx::Pool pool(2);
  std::vector<mpx::AsyncResult<int>> rs{pool.submit(sleep_then, 20000), pool.submit(fail_after, 10)};
  auto r = mpx::wait(rs, mpx::ReturnWhen::first_exception, kLong);
  CHECK(r.done == std::vector<std::size_t>{1});
  CHECK_FALSE(rs[1].successful());
  CHECK_THROWS_AS(rs[1].get(), mpx::RemoteError);

  auto t = mpx::wait(rs, mpx::ReturnWhen::all_completed, 50ms);  // no exception on timeout
  CHECK(t.not_done == std::vector<std::size_t>{0});
  CHECK(t.done == std::vector<std::size_t>{1});
  pool.terminate();
}

TEST_CASE("wait(first_exception) with no failure waits for all; empty handles are never done") {
  mpx::Pool pool(2);
  std::vector<mpx::AsyncResult<int>> rs{pool.submit(square, 3), mpx::AsyncResult<int>{},
                                        pool.submit(square, 4)};
  auto r = mpx::wait(rs, mpx::ReturnWhen::first_exception, kLong);
  CHECK(r.done == std::vector<std::size_t>{0, 2});
  CHECK(r.not_done == std::vector<std::size_t>{1});
}

TEST_CASE("as_completed yields results in the order they finish, and times out") {
  mpx::Pool pool(3);
  std::vector<mpx::AsyncResult<int>> rs{pool.submit(sleep_then, 1600), pool.submit(sleep_then, 0),
                                        pool.submit(sleep_then, 800)};
  std::vector<int> order;
  for (const mpx::AsyncResult<int>& r : mpx::as_completed(rs, kLong)) order.push_back(r.get());
  CHECK(order == std::vector<int>{0, 800, 1600});

  std::vector<mpx::AsyncResult<int>> slow{pool.submit(sleep_then, 0), pool.submit(sleep_then, 20000)};
  std::vector<int> seen;
  CHECK_THROWS_AS(
      [&] {
        for (const auto& r : mpx::as_completed(slow, 300ms)) seen.push_back(r.get());
      }(),
      mpx::TimeoutError);
  CHECK(seen == std::vector<int>{0});
  pool.terminate();
}

TEST_CASE("async_get completes a callback, use_future and use_awaitable with the value or the error") {
  mpx::Pool pool(2);

  std::promise<int> got;
  pool.submit(square, 9).async_get([&](std::exception_ptr e, int v) {
    if (e)
      got.set_exception(e);
    else
      got.set_value(v);
  });
  auto f = got.get_future();
  REQUIRE(f.wait_for(kLong) == std::future_status::ready);
  CHECK(f.get() == 81);

  std::future<int> fut = pool.submit(square, 12).async_get(asio::use_future);
  REQUIRE(fut.wait_for(kLong) == std::future_status::ready);
  CHECK(fut.get() == 144);

  std::future<int> bad = pool.submit(fail_after, 0).async_get(asio::use_future);
  REQUIRE(bad.wait_for(kLong) == std::future_status::ready);
  CHECK_THROWS_AS(bad.get(), mpx::RemoteError);

  std::future<void> done = pool.submit(nothing).async_get(asio::use_future);
  REQUIRE(done.wait_for(kLong) == std::future_status::ready);
  CHECK_NOTHROW(done.get());

  // Inside a coroutine: resumed on the io_context's thread, which stays busy (outstanding work)
  // until the result arrives.
  asio::io_context io;
  int value = 0;
  std::string error;
  std::thread::id resumed_on;
  asio::co_spawn(
      io,
      [&]() -> asio::awaitable<void> {
        value = co_await pool.submit(sleep_then, 200).async_get(asio::use_awaitable);
        resumed_on = std::this_thread::get_id();
        try {
          co_await pool.submit(fail_after, 0).async_get(asio::use_awaitable);
        } catch (const mpx::RemoteError& e) {
          error = e.what();
        }
      },
      asio::detached);
  io.run_for(kLong);
  CHECK(value == 200);
  CHECK(resumed_on == std::this_thread::get_id());
  CHECK(error.find("failed after 0 ms") != std::string::npos);
}

TEST_CASE("async_get on an empty handle throws StateError") {
  mpx::AsyncResult<int> empty;
  CHECK_THROWS_AS(empty.async_get(asio::use_future), mpx::StateError);
}
