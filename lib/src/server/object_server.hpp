// server/ — the one object server (mpx::Server, the private Manager() process, mpxd): connections
// with bounded input and output, the object table and kinds (objects.cpp), named task queues
// (task_queue.cpp), the serve loop (serve.hpp). May include: ipc, process, serialize, common;
// never manager/ or pool/.
//
// The object server: one Boost.Asio server hosting shared objects and named task
// queues, for the private Manager() process, mpx::Server and mpxd alike.
#pragma once

#include "server/asio.hpp"

#include <mpx/detail/server_types.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

namespace mpx::detail {

namespace server {
class ObjectServerImpl;
}

struct ServerOptions {
  std::string authkey;                 // empty: no handshake (as Python's Listener without authkey)
  bool allow_remote_shutdown = false;  // may a client's shutdown request stop the server?
  std::size_t max_message = std::size_t{1} << 30;  // largest request after the handshake
  // The most encoded bytes one queue may hold, so that no client can fill the server's memory.
  std::size_t queue_max_bytes = std::size_t{1} << 30;
  std::chrono::nanoseconds handshake_timeout = std::chrono::seconds(30);
  // Replies a connection has not read yet: past this many bytes the server stops reading its
  // requests until it drains, and closes it if it stays over for pending_timeout.
  std::size_t max_pending_bytes = std::size_t{4} << 20;
  std::chrono::nanoseconds pending_timeout = std::chrono::seconds(30);
  // Open connections (0: the descriptor limit less a reserve), and those still in the
  // handshake; when the handshake slots are full the oldest one is dropped for a newcomer.
  std::size_t max_connections = 0;
  std::size_t max_handshakes = 64;
  std::shared_ptr<TypeRegistry> types;  // registered types; nullptr = none
  std::string description = "mpx manager";
  std::function<void()> on_shutdown_request;  // run (on the server thread) for an allowed shutdown request
};

class ObjectServer {
 public:
  ObjectServer(boost::asio::io_context& io, ServerOptions options);
  ~ObjectServer();
  ObjectServer(const ObjectServer&) = delete;
  ObjectServer& operator=(const ObjectServer&) = delete;

  // Serves connections accepted on a listening socket; takes ownership of the descriptor.
  void accept_on(int listen_fd);
  // Serves one already-connected stream socket (takes the descriptor). `authenticated`
  // skips the authkey handshake: for tests and fuzzing, where the peer is this process.
  void adopt(int fd, bool authenticated);
  // Closes the listener and every connection and drops every object. Server thread only.
  void stop();
  // Graceful stop: no new connections; each one gets its replies out (a parked request
  // fails with ConnectionClosed) and closes; after `grace` the stragglers are cut off.
  // on_drained runs (on the server thread) when no connection is left.
  void drain(std::chrono::milliseconds grace, std::function<void()> on_drained);

 private:
  std::unique_ptr<server::ObjectServerImpl> server_;
};

}  // namespace mpx::detail
