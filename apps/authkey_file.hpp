// Reading an authkey file, as mpxd and the programs that talk to it do: the key is the
// file's bytes with one trailing newline stripped, and the file must be private (a key that
// others can read is no secret, so a group- or world-accessible file is refused).
#pragma once

#include <fcntl.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mpx::apps {

struct AuthkeyFileError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline std::string read_authkey_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  if (fd < 0) throw AuthkeyFileError("cannot open authkey file " + path + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw AuthkeyFileError("authkey file " + path + " is not a regular file");
  }
  if (st.st_mode & 077) {
    ::close(fd);
    throw AuthkeyFileError("authkey file " + path + " is accessible by group or others (mode " +
                           fmt::format("{:04o}", st.st_mode & 07777) + "); run: chmod 600 " + path);
  }
  std::string key;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      throw AuthkeyFileError("cannot read authkey file " + path + ": " + std::strerror(err));
    }
    if (n == 0) break;
    key.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  if (!key.empty() && key.back() == '\n') key.pop_back();
  if (key.empty()) throw AuthkeyFileError("authkey file " + path + " is empty");
  return key;
}

}  // namespace mpx::apps
