// shared_memory/ — named blocks (this file), ShareableList (shareable_list.cpp) and the resource
// tracker that unlinks what a killed process tree left (tracker.cpp). Python's
// multiprocessing.shared_memory, byte for byte. May include: process, common.
#include <mpx/shared_memory.hpp>

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <utility>

#include "shared_memory/tracker.hpp"

namespace mpx {
namespace {

constexpr std::size_t kMaxName = 255;  // NAME_MAX: the name is a file under /dev/shm

std::string errno_text(int e) { return std::strerror(e); }

// Python's names for fresh blocks: "psm_" and 8 hex digits (14 characters with the '/', the
// most FreeBSD allows).
std::string fresh_name() {
  unsigned char r[4];
  if (RAND_bytes(r, sizeof r) != 1) throw Error("mpx::SharedMemory: no random bytes for a name");
  char s[16];
  std::snprintf(s, sizeof s, "psm_%02x%02x%02x%02x", r[0], r[1], r[2], r[3]);
  return s;
}

void check_name(const std::string& name) {
  if (name.empty() || name.size() > kMaxName || name.find('/') != std::string::npos || name == "." ||
      name == "..")
    throw ValueError("mpx::SharedMemory: '" + name +
                     "' is not a block name (1 to 255 characters, no '/', not '.' or '..')");
}

[[noreturn]] void throw_open_error(const std::string& name, int e) {
  if (e == EEXIST) throw FileExistsError("mpx::SharedMemory: a block named '" + name + "' exists already");
  if (e == ENOENT) throw FileNotFoundError("mpx::SharedMemory: no block named '" + name + "'");
  if (e == EINVAL || e == ENAMETOOLONG)
    throw ValueError("mpx::SharedMemory: '" + name + "' is not a valid block name: " + errno_text(e));
  throw Error("mpx::SharedMemory: cannot open '" + name + "': " + errno_text(e));
}

[[noreturn]] void throw_create_error(const std::string& name, std::size_t size, const char* step, int e) {
  throw Error("mpx::SharedMemory: cannot create '" + name + "' of " + std::to_string(size) +
              " bytes: " + step + ": " + errno_text(e));
}

std::byte* map_block(int fd, std::size_t size) {
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  return p == MAP_FAILED ? nullptr : static_cast<std::byte*>(p);
}

}  // namespace

SharedMemory SharedMemory::create(std::size_t size, std::string name) {
  if (size == 0) throw ValueError("mpx::SharedMemory: size must be greater than 0");
  const bool fresh = name.empty();
  int fd;
  for (;;) {
    if (fresh)
      name = fresh_name();
    else
      check_name(name);
    fd = ::shm_open(("/" + name).c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0) break;
    if (fresh && errno == EEXIST) continue;
    throw_open_error(name, errno);
  }
  // From here on, a failure removes the half-made block before it throws.
  std::byte* data = nullptr;
  try {
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) throw_create_error(name, size, "ftruncate", errno);
    data = map_block(fd, size);
    if (!data) throw_create_error(name, size, "mmap", errno);
    ::close(fd);
    fd = -1;
    detail::shm_tracker::track(name);
  } catch (...) {
    if (fd >= 0) ::close(fd);
    if (data) ::munmap(data, size);
    ::shm_unlink(("/" + name).c_str());
    throw;
  }
  return SharedMemory(std::move(name), data, size);
}

SharedMemory SharedMemory::attach(std::string name) {
  check_name(name);
  int fd = ::shm_open(("/" + name).c_str(), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0) throw_open_error(name, errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    throw Error("mpx::SharedMemory: cannot stat '" + name + "': " + errno_text(e));
  }
  auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    throw ValueError("mpx::SharedMemory: the block '" + name + "' is empty");
  }
  std::byte* data = map_block(fd, size);
  int e = errno;
  ::close(fd);
  if (!data) throw Error("mpx::SharedMemory: cannot map '" + name + "': " + errno_text(e));
  return SharedMemory(std::move(name), data, size);
}

SharedMemory::SharedMemory(SharedMemory&& other) noexcept
    : name_(std::move(other.name_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)) {}

SharedMemory& SharedMemory::operator=(SharedMemory&& other) noexcept {
  if (this != &other) {
    close();
    name_ = std::move(other.name_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedMemory::~SharedMemory() { close(); }

std::span<std::byte> SharedMemory::buf() {
  if (!data_) throw StateError("mpx::SharedMemory: the handle of '" + name_ + "' is closed");
  return {data_, size_};
}

std::span<const std::byte> SharedMemory::buf() const { return const_cast<SharedMemory*>(this)->buf(); }

void SharedMemory::check_fits(std::size_t item) const {
  if (size_ % item != 0)
    throw ValueError("mpx::SharedMemory: the block '" + name_ + "' of " + std::to_string(size_) +
                     " bytes is not a whole number of " + std::to_string(item) + "-byte items");
}

void SharedMemory::close() noexcept {
  if (data_) ::munmap(data_, size_);
  data_ = nullptr;
}

void SharedMemory::unlink() {
  if (name_.empty()) throw StateError("mpx::SharedMemory: unlink() of a moved-from handle");
  if (::shm_unlink(("/" + name_).c_str()) != 0) throw_open_error(name_, errno);
  detail::shm_tracker::untrack(name_);
}

// ---------------------------------------------------------------------------------------------

SharedMemoryManager::SharedMemoryManager() : owner_(::getpid()) {}

SharedMemoryManager::SharedMemoryManager(SharedMemoryManager&& other) noexcept
    : names_(std::move(other.names_)), owner_(other.owner_) {
  other.names_.clear();
}

SharedMemoryManager& SharedMemoryManager::operator=(SharedMemoryManager&& other) noexcept {
  if (this != &other) {
    shutdown();
    names_ = std::move(other.names_);
    other.names_.clear();
    owner_ = other.owner_;
  }
  return *this;
}

SharedMemoryManager::~SharedMemoryManager() { shutdown(); }

SharedMemory SharedMemoryManager::shared_memory(std::size_t size) {
  auto shm = SharedMemory::create(size);
  names_.push_back(shm.name());
  return shm;
}

ShareableList SharedMemoryManager::shareable_list(std::vector<ShareableList::Item> items) {
  auto list = ShareableList::create(std::move(items));
  names_.push_back(list.shm().name());
  return list;
}

void SharedMemoryManager::shutdown() noexcept {
  if (::getpid() != owner_) return;  // a forked copy: the blocks are the maker's to remove
  for (auto& name : names_)
    if (::shm_unlink(("/" + name).c_str()) == 0) detail::shm_tracker::untrack(name);
  names_.clear();
}

}  // namespace mpx
