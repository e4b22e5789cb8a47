// Reading an authkey file, as mpxd and the programs that talk to it do: the key is the
// file's bytes with one trailing newline stripped, and the file must be private (a key that
// others can read is no secret, so a group- or world-accessible file is refused). Only a
// regular file is read: a symlink, FIFO, device, socket or directory is refused, at once.
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

// What a non-regular file is, for the message that refuses it.
inline const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "of an unknown kind";
}

inline std::string read_authkey_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, and a daemon
  // must not hang at start on a misplaced key path; fstat below refuses it before any read.
  // O_NOFOLLOW: whoever may replace a symlink may choose the key, whatever the target's mode.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
  if (fd < 0) {
    int err = errno;
    if (err == ELOOP)
      throw AuthkeyFileError("authkey file " + path + " is a symbolic link; give the path of the key itself");
    // A socket file cannot be opened at all (ENXIO): name what is there rather than the errno.
    struct stat lst {};
    if (::lstat(path.c_str(), &lst) == 0 && !S_ISREG(lst.st_mode))
      throw AuthkeyFileError("authkey file " + path + " is " + file_kind(lst.st_mode) +
                             ", not a regular file");
    throw AuthkeyFileError("cannot open authkey file " + path + ": " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw AuthkeyFileError("cannot stat authkey file " + path + ": " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw AuthkeyFileError("authkey file " + path + " is " + file_kind(st.st_mode) + ", not a regular file");
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
