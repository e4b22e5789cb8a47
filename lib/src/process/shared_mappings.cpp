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
#include <vector>

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
std::atomic<bool> g_for_spawn{false};

// A spawned child's mappings: where the starter had each one, and where it is here. Written
// before the target is decoded, while the child is single-threaded, and never again.
struct Received {
  std::uintptr_t starter_base;
  std::size_t bytes;
  std::uintptr_t here;
};
std::vector<Received>* g_received = nullptr;
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

void share_mappings_for_spawn() noexcept {
  g_for_spawn.store(true, std::memory_order_relaxed);
  g_by_fd.store(true, std::memory_order_relaxed);
}

void shared_mappings_after_fork() noexcept {
  // The registry's mutex may be held by a thread that is not here. What this child inherited
  // is in the snapshot of any fork server it starts, so for that it needs none of the entries.
  // Under spawn, mappings stay fd-backed, and the inherited entries (their descriptors came
  // along) are kept so what the parent made can go on to this child's spawn children, unless
  // the registry was in use when the parent forked: then start() refuses those objects.
  bool for_spawn = g_for_spawn.load(std::memory_order_relaxed);
  g_by_fd.store(for_spawn, std::memory_order_relaxed);
  if (Registry* r = g_registry.load(std::memory_order_acquire); for_spawn && r && r->m.try_lock()) {
    r->m.unlock();
    return;
  }
  if (Registry* old = g_registry.exchange(nullptr, std::memory_order_acq_rel)) {
    old->abandoned = g_abandoned_registry;
    g_abandoned_registry = old;
  }
}

void encode_shared_pointer(Bytes& out, std::vector<SharedMappingRef>& maps, const void* p) {
  auto a = reinterpret_cast<std::uintptr_t>(p);
  proto::Writer(out).u64(a);
  // Not made by fd: in a fork server's snapshot, but out of a spawn child's reach. The entry
  // with no descriptor says so; the start method decides what it means.
  auto without_fd = [&] { maps.push_back({a, 0, -1}); };
  if (!shared_mappings_by_fd()) return without_fd();
  Registry& r = registry();
  std::lock_guard lock(r.m);
  auto it = r.by_base.upper_bound(a);
  if (it == r.by_base.begin()) return without_fd();
  --it;
  if (a >= it->first + it->second.bytes) return without_fd();
  for (auto& m : maps)
    if (m.base == it->first) return;
  maps.push_back({it->first, it->second.bytes, it->second.fd});
}

void adopt_received_mapping(const SharedMappingRef& m, void* here) {
  if (!g_received) g_received = new std::vector<Received>;
  g_received->push_back({m.base, m.bytes, reinterpret_cast<std::uintptr_t>(here)});
  Registry& r = registry();
  std::lock_guard lock(r.m);
  r.by_base[reinterpret_cast<std::uintptr_t>(here)] = Mapping{m.bytes, m.fd};
}

void* shared_state_here(std::uint64_t starter_address) noexcept {
  auto a = static_cast<std::uintptr_t>(starter_address);
  if (g_received)
    for (const Received& m : *g_received)
      if (a >= m.starter_base && a - m.starter_base < m.bytes)
        return reinterpret_cast<void*>(m.here + (a - m.starter_base));
  return reinterpret_cast<void*>(a);  // a forkserver child has every mapping where its starter has it
}

}  // namespace mpx::detail
