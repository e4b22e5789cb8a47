// Task encoding support: code identity across processes, running an encoded task, errors.
#include <mpx/detail/async_result.hpp>
#include <mpx/detail/task.hpp>
#include <mpx/pool.hpp>

#include <cxxabi.h>
#include <elf.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace mpx {
namespace detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Module table: which code ranges belong to which module, and each module's identity.
// ---------------------------------------------------------------------------------------------
struct Range {
  std::uintptr_t lo, hi;  // [lo, hi) of an executable segment
  std::size_t module;     // index into modules
};
struct Module {
  std::uint64_t id;
  std::uintptr_t base;
};
struct ModuleTable {
  std::vector<Module> modules;
  std::vector<Range> ranges;  // sorted by lo
};

std::uint64_t fnv_bytes(const void* p, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

std::uint64_t build_id_of(const dl_phdr_info* info) {
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_NOTE) continue;
    auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
    auto* end = p + ph.p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      auto* nh = reinterpret_cast<const ElfW(Nhdr)*>(p);
      std::size_t name_len = (nh->n_namesz + 3u) & ~3u, desc_len = (nh->n_descsz + 3u) & ~3u;
      auto* name = p + sizeof(ElfW(Nhdr));
      auto* desc = name + name_len;
      if (desc + nh->n_descsz > end) break;
      if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0)
        return fnv_bytes(desc, nh->n_descsz);
      p = desc + desc_len;
    }
  }
  return 0;
}

// Without a build-id: the file's path and size, which still tells one binary from another.
std::uint64_t path_id_of(const dl_phdr_info* info) {
  std::string path = info->dlpi_name ? info->dlpi_name : "";
  if (path.empty()) {
    char buf[PATH_MAX];
    ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf);
    if (n > 0) path.assign(buf, static_cast<std::size_t>(n));
  }
  struct stat st {};
  std::uint64_t size = ::stat(path.c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
  std::uint64_t h = fnv_bytes(path.data(), path.size());
  return fnv_bytes(&size, sizeof size, h);
}

int collect(dl_phdr_info* info, std::size_t, void* data) {
  auto* t = static_cast<ModuleTable*>(data);
  std::size_t index = t->modules.size();
  bool any = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD || !(ph.p_flags & PF_X)) continue;
    std::uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
    t->ranges.push_back({lo, lo + ph.p_memsz, index});
    any = true;
  }
  if (!any) return 0;
  std::uint64_t id = build_id_of(info);
  if (id == 0) id = path_id_of(info);
  t->modules.push_back({id, info->dlpi_addr});
  return 0;
}

// Tables are immutable once published; a rescan publishes a new one (the old stays, as a
// reader may still hold it — rescans happen only on a miss).
std::atomic<const ModuleTable*> g_table{nullptr};
std::mutex g_table_mutex;
std::atomic<bool> g_rescan_allowed{true};

const ModuleTable* scan() {
  std::lock_guard lk(g_table_mutex);
  static auto* all = new std::vector<const ModuleTable*>;  // every table stays reachable
  auto* t = new ModuleTable;
  all->push_back(t);
  ::dl_iterate_phdr(collect, t);
  std::sort(t->ranges.begin(), t->ranges.end(), [](const Range& a, const Range& b) { return a.lo < b.lo; });
  g_table.store(t, std::memory_order_release);
  return t;
}

const ModuleTable* table() {
  const ModuleTable* t = g_table.load(std::memory_order_acquire);
  return t ? t : scan();
}

const Range* find_range(const ModuleTable* t, std::uintptr_t a) {
  auto it = std::upper_bound(t->ranges.begin(), t->ranges.end(), a,
                             [](std::uintptr_t x, const Range& r) { return x < r.lo; });
  if (it == t->ranges.begin()) return nullptr;
  --it;
  return a < it->hi ? &*it : nullptr;
}

std::uintptr_t address_in(const ModuleTable* t, CodeRef ref) {
  for (std::size_t i = 0; i < t->modules.size(); ++i) {
    if (t->modules[i].id != ref.module) continue;
    std::uintptr_t a = t->modules[i].base + static_cast<std::uintptr_t>(ref.offset);
    const Range* r = find_range(t, a);
    if (r && r->module == i) return a;
  }
  return 0;
}

std::string demangle(const char* mangled) {
  int status = 0;
  char* out = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string r = (status == 0 && out) ? out : mangled;
  std::free(out);
  return r;
}

std::pair<std::string, std::string> describe(std::exception_ptr e) {
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    return {demangle(typeid(ex).name()), ex.what()};
  } catch (...) {
    const std::type_info* t = abi::__cxa_current_exception_type();
    return {t ? demangle(t->name()) : std::string("unknown exception"), std::string()};
  }
}

// The invokers verified in this thread: (module, offset) -> invoker.
struct InvokerCacheEntry {
  std::uint64_t module, offset, tag;
  Invoker inv;
};
thread_local std::vector<InvokerCacheEntry> t_invokers;

Invoker resolve_invoker(std::uint64_t module, std::uint64_t offset, std::uint64_t tag) {
  for (auto& e : t_invokers)
    if (e.module == module && e.offset == offset && e.tag == tag) return e.inv;
  std::uintptr_t a = code_address({module, offset});
  if (!a)
    throw_setup_error(SetupErrorKind::value,
                      "mpx: the task's function is in a module that is not loaded in this process (module "
                      "id " +
                          std::to_string(module) +
                          "): workers must run the same binary, and the function's library must stay loaded");
  auto inv = reinterpret_cast<Invoker>(a);
  if (inv(nullptr) != tag)
    throw_setup_error(SetupErrorKind::type_mismatch,
                      "mpx: the task's function does not have the signature the submitter encoded");
  if (t_invokers.size() >= 64) t_invokers.erase(t_invokers.begin());
  t_invokers.push_back({module, offset, tag, inv});
  return inv;
}

std::mutex g_registry_mutex;
std::map<std::string, NamedTask, std::less<>>& registry() {
  static auto* r = new std::map<std::string, NamedTask, std::less<>>;
  return *r;
}

thread_local const std::uint64_t* t_task_index = nullptr;

}  // namespace

CodeRef code_ref(std::uintptr_t address) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    const ModuleTable* t = attempt == 0 ? table() : scan();
    if (const Range* r = find_range(t, address))
      return {t->modules[r->module].id, address - t->modules[r->module].base};
  }
  throw Error("mpx: a task function's code is in no loaded module");
}

std::uintptr_t loaded_code_address(CodeRef ref, std::string_view what, std::string_view hint) {
  std::uintptr_t a = code_address(ref);
  if (!a)
    throw ValueError(std::string(what) + " is in no module loaded here" +
                     (hint.empty() ? std::string() : " (" + std::string(hint) + ")"));
  return a;
}

std::uintptr_t code_address(CodeRef ref) {
  if (std::uintptr_t a = address_in(table(), ref)) return a;
  if (!g_rescan_allowed.load(std::memory_order_relaxed)) return 0;
  return address_in(scan(), ref);
}

void prepare_code_refs() { (void)table(); }
void disable_module_rescan() noexcept { g_rescan_allowed.store(false, std::memory_order_relaxed); }

std::uint64_t fnv1a(std::string_view s) noexcept { return fnv_bytes(s.data(), s.size()); }

TaskIndexScope::TaskIndexScope(const std::uint64_t* index) noexcept : previous_(t_task_index) {
  t_task_index = index;
}
TaskIndexScope::~TaskIndexScope() { t_task_index = previous_; }

void encode_raised_fields(Bytes& out, std::exception_ptr e) {
  auto [type, message] = describe(std::move(e));
  proto::Writer w(out);
  w.str32(type);
  w.str32(message);
}

void encode_raised(Bytes& out, std::exception_ptr e) {
  proto::Writer(out).u8(kResultRaised);
  encode_raised_fields(out, std::move(e));
}

// Whatever proto found wrong, a task message that does not parse has always reached users as
// this one error: only take() can fail on the fields the library reads.
void truncated_task_message(const char*) { throw ProtocolError("mpx: truncated task message"); }

std::exception_ptr read_raised_fields(proto::Reader& in) {
  std::string type(in.str32());
  std::string message(in.str32());
  return std::make_exception_ptr(RemoteError(std::move(type), std::move(message)));
}

void throw_setup_error(SetupErrorKind kind, std::string message) {
  switch (kind) {
    case SetupErrorKind::value:
      throw ValueError(message);
    case SetupErrorKind::type_mismatch:
      throw TypeMismatch(message);
    case SetupErrorKind::protocol:
      throw ProtocolError(message);
    default:
      throw Error(message);
  }
}

void throw_result_error(std::uint8_t status, proto::Reader& in) {
  if (status == kResultRaised) std::rethrow_exception(read_raised_fields(in));
  if (status == kResultSetupErr) {
    auto kind = static_cast<SetupErrorKind>(in.u8());
    throw_setup_error(kind, std::string(in.str32()));
  }
  throw ProtocolError("mpx: unknown task result status " + std::to_string(status));
}

void run_task(std::span<const std::byte> body, Bytes& out) {
  std::size_t mark = out.size();
  auto setup_error = [&](SetupErrorKind kind, const std::string& message) {
    out.resize(mark);
    proto::Writer w(out);
    w.u8(kResultSetupErr);
    w.u8(static_cast<std::uint8_t>(kind));
    w.str32(message);
  };
  try {
    auto in = task_reader(body);
    auto kind = in.u8();
    if (kind == kTaskByCode) {
      std::uint64_t module = in.u64(), offset = in.u64(), tag = in.u64();
      TaskCall call;
      call.index = in.u64();
      call.count = in.u32();
      call.payload = in.rest();
      call.out = &out;
      Invoker inv = resolve_invoker(module, offset, tag);
      inv(&call);
    } else if (kind == kTaskByName) {
      std::string name(in.str32());
      std::uint64_t tag = in.u64();
      TaskCall call;
      call.index = in.u64();
      call.count = in.u32();
      call.payload = in.rest();
      call.out = &out;
      auto task = find_named_task(name);
      if (!task) throw ValueError("mpx: no task named '" + name + "' is registered in this process");
      if (task->tag != tag)
        throw TypeMismatch("mpx: task '" + name +
                           "' was submitted with another signature than it was registered with");
      task->run(call);
    } else {
      throw ProtocolError("mpx: unknown task kind " + std::to_string(kind));
    }
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const ValueError& e) {
    setup_error(SetupErrorKind::value, e.what());
  } catch (const TypeMismatch& e) {
    setup_error(SetupErrorKind::type_mismatch, e.what());
  } catch (const ProtocolError& e) {
    setup_error(SetupErrorKind::protocol, e.what());
  } catch (const std::exception& e) {
    // Setting the call up failed outside user code proper (e.g. a user type's deserializer).
    setup_error(SetupErrorKind::error, describe(std::current_exception()).first + ": " + e.what());
  } catch (...) {
    setup_error(SetupErrorKind::error, "mpx: task setup failed: " + describe(std::current_exception()).first);
  }
}

void register_named_task(std::string name, NamedTask task) {
  std::lock_guard lk(g_registry_mutex);
  registry()[std::move(name)] = std::move(task);
}

Bytes portable_task(const NamedTask& task) {
  Bytes out;
  if (!task.rebuild) return out;
  CodeRef ref = code_ref(reinterpret_cast<std::uintptr_t>(task.rebuild));
  proto::Writer w(out);
  w.u64(ref.module);
  w.u64(ref.offset);
  out.insert(out.end(), task.fn.begin(), task.fn.end());
  return out;
}

void register_portable_task(std::string name, std::span<const std::byte> portable) {
  auto in = task_reader(portable);
  CodeRef ref{in.u64(), in.u64()};
  auto rebuild = reinterpret_cast<decltype(NamedTask::rebuild)>(
      loaded_code_address(ref, "mpx: the code of task '" + name + "'"));
  register_named_task(std::move(name), rebuild(in.rest()));
}

std::optional<NamedTask> find_named_task(std::string_view name) {
  std::lock_guard lk(g_registry_mutex);
  auto& r = registry();
  auto it = r.find(name);
  if (it == r.end()) return std::nullopt;
  return it->second;
}

std::vector<std::pair<std::string, NamedTask>> named_tasks() {
  std::lock_guard lk(g_registry_mutex);
  auto& r = registry();
  return {r.begin(), r.end()};
}

void report_callback_exception(std::exception_ptr e) noexcept {
  try {
    auto [type, message] = describe(std::move(e));
    std::string text = "mpx: exception in an AsyncResult callback (ignored): " + type +
                       (message.empty() ? "" : ": " + message) + "\n";
    std::fputs(text.c_str(), stderr);
    std::fflush(stderr);
  } catch (...) {
  }
}

}  // namespace detail

std::uint64_t task_index() noexcept { return detail::t_task_index ? *detail::t_task_index : 0; }

std::mt19937_64 task_rng(std::uint64_t seed) {
  std::uint64_t index = task_index();
  std::seed_seq s{static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32),
                  static_cast<std::uint32_t>(index), static_cast<std::uint32_t>(index >> 32),
                  std::uint32_t{0x6d707872}};
  return std::mt19937_64(s);
}

}  // namespace mpx
