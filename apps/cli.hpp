// What every program in apps/ does with its command line: CLI11 parses it; --help (and
// --version where offered) print and exit 0; a usage error prints CLI11's message and exits 2,
// as Unix programs do (not CLI11's own codes 104-109). Output files named on the command line
// are opened before any work, so a path that cannot be written fails at once, not after the run.
#pragma once

#include <fcntl.h>
#include <fmt/core.h>
#include <sys/stat.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <cerrno>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace mpx::apps {

inline constexpr int kUsageError = 2;

// Parses argv into `app`. nullopt: go on; otherwise the exit code to return at once (0 after
// --help or --version, kUsageError after a usage error, its message already on stderr).
inline std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kUsageError;
  }
  return std::nullopt;
}

// For main(): parse, and return from it if the program should not go on.
#define MPX_APP_PARSE(app, argc, argv)                                                           \
  do {                                                                                           \
    if (const auto mpx_app_rc_ = ::mpx::apps::parse((app), (argc), (argv))) return *mpx_app_rc_; \
  } while (false)

// An output file opened (created if need be, not truncated) when the program starts, written in
// one go at the end. A path that cannot be opened for writing throws at construction, with the
// reason; a file this object created and never wrote is removed again, so a failed run leaves
// neither an empty new file nor a clobbered old one.
class OutputFile {
 public:
  struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
  };

  explicit OutputFile(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0 && errno == ENOENT) {
      fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
      created_ = fd_ >= 0;
    }
    if (fd_ < 0) fail("cannot write");
    struct stat st {};
    if (::fstat(fd_, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISCHR(st.st_mode) && !S_ISFIFO(st.st_mode)) {
      ::close(fd_);
      fd_ = -1;
      throw Error(fmt::format("cannot write {}: not a regular file", path_));
    }
    regular_ = S_ISREG(st.st_mode);
  }
  ~OutputFile() {
    if (fd_ >= 0) ::close(fd_);
    if (created_ && !written_) ::unlink(path_.c_str());
  }
  OutputFile(const OutputFile&) = delete;
  OutputFile& operator=(const OutputFile&) = delete;

  const std::string& path() const noexcept { return path_; }

  // Replaces the file's content with `text`; throws Error if it cannot.
  void write(std::string_view text) {
    if (regular_ && ::ftruncate(fd_, 0) != 0) fail("cannot write");
    while (!text.empty()) {
      const ssize_t n = ::write(fd_, text.data(), text.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("cannot write");
      text.remove_prefix(static_cast<std::size_t>(n));
    }
    if (::close(std::exchange(fd_, -1)) != 0) fail("cannot write");
    written_ = true;
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw Error(fmt::format("{} {}: {}", what, path_, std::strerror(errno)));
  }
  std::string path_;
  int fd_ = -1;
  bool created_ = false;
  bool regular_ = false;
  bool written_ = false;
};

}  // namespace mpx::apps
