// mpx::Server: the manager server hosted in the calling thread, and the serve loop that the
// private Manager() process and mpxd share.
#include "server/serve.hpp"

#include "common/log.hpp"
#include "server/object_server.hpp"

#include <mpx/detail/futex.hpp>
#include <mpx/managers.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <csignal>

namespace mpx {
namespace detail {

void serve_listener(Listener& listener, ServerOptions options, const std::vector<int>& signals,
                    const std::function<void()>& ready, ServeControl* control) {
  boost::asio::io_context io(1);
  bool stopping = false;
  std::unique_ptr<ObjectServer> server;
  boost::asio::signal_set sigs(io);
  auto stop_all = [&] {
    if (stopping) return;
    stopping = true;
    boost::system::error_code ignored;
    sigs.cancel(ignored);
    server->drain(std::chrono::seconds(2), [] {});
  };
  auto user_shutdown = std::move(options.on_shutdown_request);
  options.on_shutdown_request = [&] {
    if (user_shutdown) user_shutdown();
    stop_all();
  };
  server = std::make_unique<ObjectServer>(io, std::move(options));
  int fd = ::fcntl(listener.fileno(), F_DUPFD_CLOEXEC, 0);
  if (fd < 0) throw ConnectionError("mpx: cannot serve on " + listener.address().str());
  server->accept_on(fd);
  for (int s : signals) sigs.add(s);
  if (!signals.empty())
    sigs.async_wait([&](boost::system::error_code ec, int sig) {
      if (ec) return;
      logger().info("manager at {}: signal {}, shutting down", listener.address().str(), sig);
      stop_all();
    });
  if (control) {
    std::lock_guard lock(control->m);
    control->stop = [&io, &stop_all] { boost::asio::post(io, [&stop_all] { stop_all(); }); };
    if (control->stop_requested) control->stop();
  }
  if (ready) ready();
  // Clients that make call after call send the next request within a wake-up's time of the
  // last reply: polling that long before sleeping in epoll saves the server a wake-up per
  // call. The budget adapts (AdaptiveSpin); an idle server sleeps.
  SpinStats request_spin;
  while (!io.stopped()) {
    AdaptiveSpin spin(request_spin);
    if (!spin.spin_polling([&] { return io.poll() > 0 || io.stopped(); }, Deadline::never())) io.run_one();
  }
  if (control) {
    std::lock_guard lock(control->m);
    control->stop = nullptr;
  }
  server.reset();
}

}  // namespace detail

struct Server::State {
  Listener listener;
  std::string authkey;
  detail::ServeControl control;
  std::atomic<bool> served{false};  // set_queue_max_bytes() may come from another thread
  Server::Limits limits;
  State(const Address& a, std::string key) : listener(a), authkey(std::move(key)) {}
};

Server::Server(const Address& address, std::string authkey)
    : s_(std::make_unique<State>(address, std::move(authkey))),
      types_(std::make_shared<detail::TypeRegistry>()) {}

Server::~Server() = default;

const Address& Server::address() const { return s_->listener.address(); }

void Server::serve_forever() {
  if (s_->served.exchange(true)) throw StateError("mpx: Server::serve_forever() has already run");
  detail::ServerOptions options;
  options.authkey = s_->authkey;
  options.types = types_;
  const Limits& l = s_->limits;
  options.queue_max_bytes = l.queue_max_bytes;
  options.max_pending_bytes = l.max_pending_bytes;
  options.pending_timeout = l.pending_timeout;
  options.max_connections = l.max_connections;
  options.max_handshakes = l.max_handshakes;
  options.handshake_timeout = l.handshake_timeout;
  options.description = "mpx server at " + address().str();
  detail::serve_listener(s_->listener, std::move(options), {SIGTERM, SIGINT}, {}, &s_->control);
  s_->listener.close();
}

void Server::set_queue_max_bytes(std::size_t bytes) {
  Limits l = s_->limits;
  l.queue_max_bytes = bytes;
  set_limits(l);
}

void Server::set_limits(const Limits& limits) {
  if (s_->served) throw StateError("mpx: Server limits set after serve_forever()");
  if (limits.queue_max_bytes == 0) throw ValueError("mpx: a queue's byte budget must be positive");
  if (limits.max_pending_bytes == 0) throw ValueError("mpx: max_pending_bytes must be positive");
  if (limits.max_handshakes == 0) throw ValueError("mpx: max_handshakes must be positive");
  if (limits.pending_timeout <= std::chrono::milliseconds::zero() ||
      limits.handshake_timeout <= std::chrono::milliseconds::zero())
    throw ValueError("mpx: Server timeouts must be positive");
  s_->limits = limits;
}

Server::Limits Server::limits() const { return s_->limits; }

void Server::shutdown() {
  std::lock_guard lock(s_->control.m);
  if (s_->control.stop)
    s_->control.stop();
  else
    s_->control.stop_requested = true;
}

}  // namespace mpx
