// Addresses of Listeners, Clients, managers and mpxd, in the forms Python's multiprocessing
// takes: a Unix socket path (or a Linux abstract name) or a TCP host and port. Apart from
// <mpx/connection.hpp> so that what only names an address (managers) does not pull in sockets.
//
//   auto a = mpx::Address::parse("unix:/tmp/mpxd.sock");   // also "/tmp/mpxd.sock", "tcp:host:port"
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace mpx {

// Where a Listener listens and a Client connects.
class Address {
 public:
  enum class Kind { unix_path, abstract, tcp };

  static Address unix_path(std::string path);                // filesystem Unix socket
  static Address abstract(std::string name);                 // Linux abstract namespace (no file)
  static Address tcp(std::string host, std::uint16_t port);  // IPv6 host without brackets: tcp("::1", p)
  // "unix:/path", "unix:@name", "tcp:host:port", "tcp:[::1]:port"; ValueError otherwise.
  static Address parse(std::string_view text);

  std::string str() const;  // exactly the forms parse() reads; round-trips
  bool operator==(const Address&) const = default;

  Kind kind() const noexcept { return kind_; }
  const std::string& path() const noexcept { return name_; }  // the path, or the abstract name
  const std::string& host() const noexcept { return name_; }
  std::uint16_t port() const noexcept { return port_; }

 private:
  Address(Kind kind, std::string name, std::uint16_t port);
  Kind kind_;
  std::string name_;
  std::uint16_t port_ = 0;
};

}  // namespace mpx
