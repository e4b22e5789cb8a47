// A client for an echo server over mpx::Client: sends each message, prints the echo.
// Works against mpx's echo_server and against apps/python/echo_server.py.
//
//   echo_client --address unix:/tmp/mpx-echo.sock --authkey secret hello world
//   printf 'one\ntwo\n' | echo_client --address tcp:127.0.0.1:6000
#include <mpx/connection.hpp>

#include <fmt/core.h>

#include "cli.hpp"

#include <iostream>
#include <optional>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  CLI::App app{"Echo client over mpx::Client (speaks Python's multiprocessing.connection protocol)"};
  std::string address = "unix:/tmp/mpx-echo.sock";
  std::string key;
  std::vector<std::string> messages;
  app.add_option("--address", address, "unix:/path, unix:@name, tcp:host:port or tcp:[v6]:port")
      ->capture_default_str();
  auto* key_option = app.add_option("--authkey", key, "shared secret; without it, no handshake");
  app.add_option("messages", messages, "messages to send (default: one per line of standard input)");
  MPX_APP_PARSE(app, argc, argv);

  try {
    std::optional<std::string> authkey;
    if (*key_option) authkey = key;
    auto conn = mpx::Client(mpx::Address::parse(address), authkey);
    auto echo = [&](const std::string& m) {
      conn.send_bytes(m);
      auto reply = conn.recv_bytes();
      std::string text(reinterpret_cast<const char*>(reply.data()), reply.size());
      if (text != m) {
        fmt::print(stderr, "echo_client: the echo differs from what was sent\n");
        return false;
      }
      fmt::print("echo: {}\n", text);
      return true;
    };
    if (messages.empty()) {
      for (std::string line; std::getline(std::cin, line);)
        if (!echo(line)) return 1;
    } else {
      for (const auto& m : messages)
        if (!echo(m)) return 1;
    }
  } catch (const mpx::AuthenticationError& e) {
    fmt::print(stderr, "echo_client: {}\n", e.what());
    return 3;
  } catch (const mpx::Error& e) {
    fmt::print(stderr, "echo_client: {}\n", e.what());
    return 1;
  }
  return 0;
}
