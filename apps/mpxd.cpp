// mpxd: the mpx manager daemon. Serves shared objects (dicts, lists, queues, locks ...) and
// named task queues to any client that knows the address and the authkey, until SIGTERM or
// SIGINT. A thin program over mpx::Server.
#include <mpx/managers.hpp>
#include <mpx/proto/manager.hpp>

#include "authkey_file.hpp"
#include "cli.hpp"

#include <fcntl.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

#ifndef MPX_VERSION
#define MPX_VERSION "unknown"
#endif

namespace {

// Exit statuses (also listed by --help).
enum Exit : int {
  kOk = 0,        // stopped by SIGTERM/SIGINT after a clean shutdown
  kInternal = 1,  // an unexpected error while serving
  kUsage = 2,     // bad command line or address
  kAuthkey = 3,   // the authkey file is missing, unreadable, empty or readable by others
  kAddress = 4,   // cannot listen on the address (in use, no permission ...)
};

constexpr const char* kExitHelp =
    "Exit status:\n"
    "  0  stopped by SIGTERM or SIGINT after a clean shutdown (socket file removed)\n"
    "  1  an unexpected error while serving\n"
    "  2  bad command line or address\n"
    "  3  the authkey file is missing, unreadable, empty, or accessible by group or others\n"
    "  4  cannot listen on the address (in use by a live server, no permission ...)\n";

constexpr const char* kSecurityHelp =
    "Security: the authkey proves a client knows the key before it may use any object; the\n"
    "key itself never crosses the socket, but nothing is encrypted. A unix:/path socket file is\n"
    "also guarded by file permissions (mpxd makes it 0600); a unix:@abstract\n"
    "address has none, so any local user can connect (and spend handshake slots, bounded by\n"
    "--max-handshakes). Over tcp: anyone who can reach the port can.\n\n";

// Lets this process open as many connections as the system allows it.
void raise_fd_limit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// A socket file left by a server that died without cleaning up: nobody accepts on it.
bool stale_socket(const mpx::Address& address) {
  if (address.kind() != mpx::Address::Kind::unix_path) return false;
  struct stat st {};
  if (::lstat(address.path().c_str(), &st) != 0 || !S_ISSOCK(st.st_mode)) return false;
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::strncpy(sa.sun_path, address.path().c_str(), sizeof sa.sun_path - 1);
  bool refused = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0 && errno == ECONNREFUSED;
  ::close(fd);
  return refused;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mpxd: the mpx manager daemon. Serves shared objects and named task queues to clients\n"
      "that know its address and authkey (mpx::Manager::connect, or the wire protocol in proto/).",
      "mpxd"};
  std::string address_text, keyfile, level = "info";
  app.add_option("--address", address_text, "where to listen: unix:/path, unix:@abstract, tcp:host:port")
      ->required();
  app.add_option("--authkey-file", keyfile,
                 "file holding the authkey (its bytes, one trailing newline stripped); mode 0600 or stricter")
      ->required();
  std::size_t queue_max_bytes = std::size_t{1} << 30;
  app.add_option("--queue-max-bytes", queue_max_bytes,
                 "the most bytes of items one queue may hold; past it an unbounded queue's put fails "
                 "with Full")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  mpx::Server::Limits limits;
  std::size_t pending_timeout_s = 30, handshake_timeout_s = 30;
  app.add_option("--max-pending-bytes", limits.max_pending_bytes,
                 "replies one client may leave unread; past it its requests wait until it reads")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--pending-timeout", pending_timeout_s,
                 "seconds a client may stay over --max-pending-bytes before it is disconnected")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--max-connections", limits.max_connections,
                 "open connections at most; past it new ones are closed at once (default: the "
                 "descriptor limit, raised to its hard limit at start, less 64)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-handshakes", limits.max_handshakes,
                 "connections still in the authkey handshake; a newcomer past it drops the oldest")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--handshake-timeout", handshake_timeout_s,
                 "seconds a connection may take to finish the handshake")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("--log-level", level, "trace, debug, info, warn, error, critical or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.set_version_flag("--version", std::string("mpxd ") + MPX_VERSION + " (manager protocol " +
                                        std::to_string(mpx::proto::kManagerVersion) + ")");
  app.footer(std::string(kSecurityHelp) + kExitHelp);
  static_assert(kUsage == mpx::apps::kUsageError);
  MPX_APP_PARSE(app, argc, argv);

  // The library logs through its own logger, which reads MPX_LOG_LEVEL on first use.
  ::setenv("MPX_LOG_LEVEL", level.c_str(), 1);
  auto log = std::make_shared<spdlog::logger>("mpxd", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  log->set_pattern("[%Y-%m-%d %H:%M:%S.%e] [mpxd] [%l] %v");
  log->set_level(spdlog::level::from_str(level));
  ::signal(SIGPIPE, SIG_IGN);

  std::optional<mpx::Address> address;
  try {
    address = mpx::Address::parse(address_text);
  } catch (const mpx::Error& e) {
    log->error("bad --address: {}", e.what());
    return kUsage;
  }
  raise_fd_limit();
  std::string key;
  try {
    key = mpx::apps::read_authkey_file(keyfile);
  } catch (const mpx::apps::AuthkeyFileError& e) {
    log->error("{}", e.what());
    return kAuthkey;
  }

  std::optional<mpx::Server> server;
  try {
    try {
      server.emplace(*address, key);
    } catch (const mpx::ConnectionError&) {
      if (!stale_socket(*address)) throw;
      log->warn("removing the stale socket file {} (no server answers on it)", address->path());
      ::unlink(address->path().c_str());
      server.emplace(*address, key);
    }
  } catch (const mpx::Error& e) {
    log->error("{}", e.what());
    return kAddress;
  }

  limits.queue_max_bytes = queue_max_bytes;
  limits.pending_timeout = std::chrono::seconds(pending_timeout_s);
  limits.handshake_timeout = std::chrono::seconds(handshake_timeout_s);
  server->set_limits(limits);
  if (address->kind() == mpx::Address::Kind::abstract)
    log->warn(
        "{} is an abstract socket: it has no file permissions, so any local user can connect "
        "(the authkey still guards every object)",
        address->str());
  try {
    log->info("mpxd {} serving on {} (pid {})", MPX_VERSION, server->address().str(), ::getpid());
    server->serve_forever();
    log->info("mpxd stopped");
  } catch (const std::exception& e) {
    log->critical("{}", e.what());
    return kInternal;
  }
  return kOk;
}
