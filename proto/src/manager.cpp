#include <mpx/proto/manager.hpp>

namespace mpx::proto {

std::string_view kind_name(Kind k) noexcept {
  switch (k) {
    case Kind::dict:
      return "dict";
    case Kind::list:
      return "list";
    case Kind::value:
      return "value";
    case Kind::namespace_:
      return "namespace";
    case Kind::queue:
      return "queue";
    case Kind::joinable_queue:
      return "joinable_queue";
    case Kind::lock:
      return "lock";
    case Kind::rlock:
      return "rlock";
    case Kind::semaphore:
      return "semaphore";
    case Kind::bounded_semaphore:
      return "bounded_semaphore";
    case Kind::condition:
      return "condition";
    case Kind::event:
      return "event";
    case Kind::barrier:
      return "barrier";
    case Kind::object:
      return "object";
    case Kind::array:
      return "array";
    case Kind::task_queue:
      return "task_queue";
  }
  return "?";
}

void write_error(Writer& w, const ErrorInfo& e) {
  w.u8(static_cast<std::uint8_t>(e.code));
  w.str(e.type_name);
  w.str(e.message);
  w.i32(e.exitcode);
}

ErrorInfo read_error(Reader& r) {
  ErrorInfo e;
  e.code = static_cast<ErrorCode>(r.u8());
  e.type_name = std::string(r.str());
  e.message = std::string(r.str());
  e.exitcode = r.i32();
  return e;
}

void write_hello(Writer& w, std::span<const std::byte, kSessionTokenSize> token) {
  w.raw(kManagerMagic.data(), kManagerMagic.size());
  w.u32(kManagerVersion);
  w.raw(token.data(), token.size());
}

}  // namespace mpx::proto
