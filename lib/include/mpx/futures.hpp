// Futures, as Python's concurrent.futures and as Asio expects them: AsyncResult<T>::async_get
// with any completion token, and mpx::wait / mpx::as_completed over a set of results.
//
//   mpx::Pool pool(2);
//   auto r = pool.submit([](int x) { return x * x; }, 7);
//   boost::asio::io_context io;
//   boost::asio::co_spawn(io, [&]() -> boost::asio::awaitable<void> {
//     int v = co_await r.async_get(boost::asio::use_awaitable);   // 49, resumed on io's thread
//   }, boost::asio::detached);
//   io.run();
//
// async_get completes the token on its associated executor: an I/O executor gets the
// completion posted (and counts as outstanding work until then, so io.run() does not return
// early); a token without one (a plain callback, use_future) completes on the thread that
// settles the result, as then() callbacks do. mpx::wait and mpx::as_completed live in
// <mpx/detail/async_result.hpp>, so <mpx/pool.hpp> has them without the Asio headers here.
#pragma once

#include <mpx/detail/async_result.hpp>
#include <mpx/errors.hpp>

#include <exception>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/execution.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/system_executor.hpp>

namespace mpx {

namespace detail {

template <class T>
struct async_get_signature {
  using type = void(std::exception_ptr, T);
};
template <>
struct async_get_signature<void> {
  using type = void(std::exception_ptr);
};

// Arranges for the handler to be called with the outcome once the result is done: where the
// result settles when the handler has no executor of its own, else posted to its executor.
template <class T, class Handler>
void start_async_get(const std::shared_ptr<ResultState<T>>& state, Handler handler) {
  auto executor = boost::asio::get_associated_executor(handler);
  // Callbacks are std::function, so copyable; the handler may be move-only (use_future's).
  auto call = std::make_shared<std::function<void()>>();
  auto held = std::make_shared<Handler>(std::move(handler));
  *call = [state, held] {
    std::exception_ptr error = state->failed() ? state->error() : nullptr;
    if constexpr (std::is_void_v<T>) {
      std::move (*held)(error);
    } else if (error) {
      std::move (*held)(error, T{});
    } else {
      std::move (*held)(nullptr, state->value());
    }
  };
  using Executor = decltype(executor);
  // Only an I/O executor gets the completion posted. A handler with none (the system
  // executor) or with one that is not an I/O executor (use_future's, which would hand it to a
  // thread of Asio's system context) completes where the result settles.
  if constexpr (std::is_same_v<Executor, boost::asio::system_executor> ||
                !std::is_constructible_v<boost::asio::any_io_executor, Executor>) {
    state->on_done([call] { (*call)(); });
  } else {
    // Tracked: the executor's io_context does not run out of work while the result is pending.
    auto work = boost::asio::prefer(executor, boost::asio::execution::outstanding_work.tracked);
    state->on_done([work, call] { boost::asio::post(work, [call] { (*call)(); }); });
  }
}

}  // namespace detail

template <class T>
template <class Token>
auto detail::AsyncResultBase<T>::async_get(Token&& token) const {
  using Signature = typename async_get_signature<T>::type;
  std::shared_ptr<ResultState<T>> state = state_;
  if (!state) throw StateError("AsyncResult::async_get(): empty handle");
  return boost::asio::async_initiate<Token, Signature>(
      [state](auto handler) { start_async_get<T>(state, std::move(handler)); }, token);
}

}  // namespace mpx
