// Shared mappings a forkserver child can be given (see <mpx/detail/shm.hpp>).
#include "process/shared_mappings.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <map>
#include <mutex>
#include <system_error>

#include <mpx/detail/shm.hpp>
#include <mpx/proto/codec.hpp>

namespace mpx::detail {
namespace {

struct Mapping {
  std::size_t bytes;
  int fd;
};

struct Registry {
  std::mutex m;
  std::map<std::uintptr_t, Mapping> by_base;
  Registry* abandoned = nullptr;
};

std::atomic<bool> g_by_fd{false};
std::atomic<Registry*> g_registry{nullptr};
Registry* g_abandoned_registry = nullptr;  // kept reachable after fork, for leak checkers

Registry& registry() {
  Registry* r = g_registry.load(std::memory_order_acquire);
  if (r) return *r;
  auto* fresh = new Registry;
  if (g_registry.compare_exchange_strong(r, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;
  return *r;
}

}  // namespace

bool shared_mappings_by_fd() noexcept { return g_by_fd.load(std::memory_order_relaxed); }

void* map_shared_by_fd(std::size_t bytes) {
  int fd = ::memfd_create("mpx", MFD_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "memfd_create");
  if (::ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
    int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(), "ftruncate(memfd)");
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    ::close(fd);
    throw std::system_error(err, std::generic_category(), "mmap(MAP_SHARED)");
  }
  try {
    Registry& r = registry();
    std::lock_guard lock(r.m);
    r.by_base[reinterpret_cast<std::uintptr_t>(p)] = Mapping{bytes, fd};
  } catch (...) {
    ::munmap(p, bytes);
    ::close(fd);
    throw;
  }
  return p;
}

void forget_shared_mapping(void* p) noexcept {
  Registry& r = registry();
  std::lock_guard lock(r.m);
  auto it = r.by_base.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == r.by_base.end()) return;
  ::close(it->second.fd);
  r.by_base.erase(it);
}

void share_mappings_by_fd() noexcept { g_by_fd.store(true, std::memory_order_relaxed); }

void shared_mappings_after_fork() noexcept {
  // The registry's mutex may be held by a thread that is not here. What this child inherited
  // is in the snapshot of any fork server it starts, so it needs none of the entries.
  g_by_fd.store(false, std::memory_order_relaxed);
  if (Registry* old = g_registry.exchange(nullptr, std::memory_order_acq_rel)) {
    old->abandoned = g_abandoned_registry;
    g_abandoned_registry = old;
  }
}

void encode_shared_pointer(Bytes& out, std::vector<SharedMappingRef>& maps, const void* p) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  proto::Writer(out).u64(a);
  if (!shared_mappings_by_fd()) return;
  Registry& r = registry();
  std::lock_guard lock(r.m);
  auto it = r.by_base.upper_bound(a);
  if (it == r.by_base.begin()) return;
  --it;
  if (a >= it->first + it->second.bytes) return;  // made before the server: in its snapshot
  for (auto& m : maps)
    if (m.base == it->first) return;
  maps.push_back({it->first, it->second.bytes, it->second.fd});
}

}  // namespace mpx::detail
