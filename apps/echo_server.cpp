// An echo server over mpx::Listener: every message a client sends comes straight back.
// Python's multiprocessing.connection.Client talks to it too (apps/python/echo_client.py).
//
//   echo_server --address unix:/tmp/mpx-echo.sock --authkey secret
#include <mpx/connection.hpp>

#include <fmt/core.h>

#include "cli.hpp"

#include <csignal>
#include <optional>
#include <string>

namespace {

volatile std::sig_atomic_t stop_requested = 0;
void request_stop(int) { stop_requested = 1; }

// Echoes until the client leaves or we are asked to stop; returns messages echoed.
long serve(mpx::Connection& conn) {
  long count = 0;
  try {
    while (!stop_requested) {
      if (!conn.poll(std::chrono::milliseconds(200))) continue;
      conn.send_bytes(conn.recv_bytes());
      ++count;
    }
  } catch (const mpx::ConnectionClosed&) {
  } catch (const mpx::Error& e) {
    fmt::print(stderr, "echo_server: client dropped: {}\n", e.what());
  }
  return count;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Echo server over mpx::Listener (speaks Python's multiprocessing.connection protocol)"};
  std::string address = "unix:/tmp/mpx-echo.sock";
  std::string key;
  long clients = 0;
  app.add_option("--address", address, "unix:/path, unix:@name, tcp:host:port or tcp:[v6]:port")
      ->capture_default_str();
  auto* key_option = app.add_option("--authkey", key, "shared secret; without it, no handshake");
  app.add_option("--clients", clients, "exit after this many clients (0: until SIGINT/SIGTERM)")
      ->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  struct sigaction sa {};
  sa.sa_handler = request_stop;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  try {
    std::optional<std::string> authkey;
    if (*key_option) authkey = key;
    mpx::Listener listener(mpx::Address::parse(address), 128, authkey);
    fmt::print("listening on {}\n", listener.address().str());
    std::fflush(stdout);
    for (long served = 0; !stop_requested && (clients == 0 || served < clients);) {
      mpx::Connection conn;
      try {
        conn = listener.accept(std::chrono::milliseconds(200));
      } catch (const mpx::TimeoutError&) {
        continue;
      } catch (const mpx::Error& e) {  // a peer that failed the handshake; keep serving
        fmt::print(stderr, "echo_server: refused a client: {}\n", e.what());
        ++served;
        continue;
      }
      ++served;
      fmt::print("client {}: {} messages echoed\n", served, serve(conn));
      std::fflush(stdout);
    }
  } catch (const mpx::Error& e) {
    fmt::print(stderr, "echo_server: {}\n", e.what());
    return 1;
  }
  return 0;
}
