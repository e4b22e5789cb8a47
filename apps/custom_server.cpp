// A manager server of your own, with a registered C++ type (Python's BaseManager.register):
// `serve` hosts mpx::Server and registers Counter; `client` creates (or opens) the named
// counter and calls its methods by name. The built-in kinds (dicts, queues ...) are served too.
//
//   custom_server serve  --address unix:/tmp/counter.sock --authkey-file key &
//   custom_server client --address unix:/tmp/counter.sock --authkey-file key --add 5
#include <mpx/managers.hpp>

#include "authkey_file.hpp"

#include <fmt/core.h>

#include "cli.hpp"

#include <string>
#include <utility>

namespace {

// Lives in the server; clients only ever hold a proxy to it.
class Counter {
 public:
  Counter() = default;
  explicit Counter(std::string label) : label_(std::move(label)) {}
  long add(long n) { return total_ += n; }
  long total() const { return total_; }
  std::string label() const { return label_; }

 private:
  long total_ = 0;
  std::string label_;
};

int serve(const mpx::Address& address, const std::string& key) {
  mpx::Server server(address, key);
  server.register_type<Counter>("Counter")
      .constructor<std::string>()
      .method("add", &Counter::add)
      .method("total", &Counter::total)
      .method("label", &Counter::label);
  fmt::print("custom_server: serving Counter on {}\n", server.address().str());
  std::fflush(stdout);
  server.serve_forever();  // until SIGTERM or SIGINT
  fmt::print("custom_server: stopped\n");
  return 0;
}

int client(const mpx::Address& address, const std::string& key, const std::string& name, long add) {
  auto m = mpx::Manager::connect(address, key);
  // Made with its label on first use; later clients open the same object by name.
  auto counter = m.make<Counter>("Counter", name, std::string("visits"));
  long total = counter.call<long>("add", add);
  fmt::print("{} '{}': added {}, total {}\n", counter.call<std::string>("label"), name, add, total);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"A manager server with a registered C++ type, and a client that calls it by name.",
               "custom_server"};
  app.require_subcommand(1);
  app.fallthrough();  // the common options may also follow the subcommand
  std::string address, keyfile, name = "counter";
  long add = 1;
  app.add_option("--address", address, "unix:/path, unix:@name or tcp:host:port")->required();
  app.add_option("--authkey-file", keyfile, "file holding the authkey (mode 0600)")->required();
  auto* serve_cmd = app.add_subcommand("serve", "host the server until SIGTERM/SIGINT");
  auto* client_cmd = app.add_subcommand("client", "add to the named counter and print its total");
  client_cmd->add_option("--name", name, "the counter's name on the server")->capture_default_str();
  client_cmd->add_option("--add", add, "how much to add")->capture_default_str();
  MPX_APP_PARSE(app, argc, argv);

  try {
    auto a = mpx::Address::parse(address);
    auto key = mpx::apps::read_authkey_file(keyfile);
    return *serve_cmd ? serve(a, key) : client(a, key, name, add);
  } catch (const std::exception& e) {
    fmt::print(stderr, "custom_server: {}\n", e.what());
    return 1;
  }
}
