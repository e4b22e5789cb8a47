// Memory shared with every process forked after it was made.
//
// mpx's process-shared objects reach other processes only by fork inheritance, so they live in
// anonymous MAP_SHARED mappings: nothing has a name in /dev/shm, and the kernel frees the pages
// when the last process holding the mapping unmaps it or dies — crashes cannot leak them.
#pragma once

#include <sys/mman.h>

#include <cerrno>
#include <cstddef>
#include <memory>
#include <new>
#include <system_error>
#include <type_traits>
#include <utility>

namespace mpx::detail {

// Once this process runs a fork server, its children are not forks of this process, so a
// mapping made afterwards cannot reach them by inheritance: from then on mappings are made from
// a memfd, kept open (one descriptor per mapping) and registered, so Process::start can give it
// to a forkserver child at the same address. Mappings made before were in the server's snapshot.
// (lib/src/process/shared_mappings.cpp)
bool shared_mappings_by_fd() noexcept;
void* map_shared_by_fd(std::size_t bytes);
void forget_shared_mapping(void* p) noexcept;

// Maps `bytes` of zeroed shared memory. With `lazy`, pages are committed only when touched
// (MAP_NORESERVE), so a large byte budget costs nothing until used.
inline void* map_shared(std::size_t bytes, bool lazy = false) {
  if (shared_mappings_by_fd()) return map_shared_by_fd(bytes);  // memfd pages are lazy anyway
  int flags = MAP_SHARED | MAP_ANONYMOUS | (lazy ? MAP_NORESERVE : 0);
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap(MAP_SHARED)");
  return p;
}

inline void unmap_shared(void* p, std::size_t bytes) noexcept {
  ::munmap(p, bytes);
  if (shared_mappings_by_fd()) forget_shared_mapping(p);
}

// Constructs a T in its own shared mapping (plus `extra` trailing bytes). When this process's
// last copy of the handle goes, `release(T*, bytes)` gives up this process's view; ~T never
// runs, because other processes may still be using the object — so T must not own
// process-local resources.
template <class T, class Release, class... Args>
std::shared_ptr<T> make_shared_object_releasing(std::size_t extra, Release release, Args&&... args) {
  static_assert(std::is_trivially_destructible_v<T>,
                "objects in shared memory outlive any one process: keep them trivially destructible");
  std::size_t bytes = sizeof(T) + extra;
  void* p = map_shared(bytes, extra > (std::size_t{1} << 20));
  try {
    T* obj = ::new (p) T(std::forward<Args>(args)...);
    return std::shared_ptr<T>(obj, [bytes, release](T* o) { release(o, bytes); });
  } catch (...) {
    unmap_shared(p, bytes);
    throw;
  }
}

// The same, unmapping this process's view at the end.
template <class T, class... Args>
std::shared_ptr<T> make_shared_object_with_extra(std::size_t extra, Args&&... args) {
  return make_shared_object_releasing<T>(
      extra, [](T* o, std::size_t bytes) { unmap_shared(o, bytes); }, std::forward<Args>(args)...);
}

template <class T, class... Args>
std::shared_ptr<T> make_shared_object(Args&&... args) {
  return make_shared_object_with_extra<T>(0, std::forward<Args>(args)...);
}

}  // namespace mpx::detail
