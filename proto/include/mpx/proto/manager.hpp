// The manager's request/response catalogue (proto/manager.md is the spec).
//
// After the authkey handshake every message is one frame (frame.hpp). A request is
//   u8 op | u64 object id | op-specific body
// and each request gets exactly one response, in request order:
//   u8 status (0 ok, 1 error) | body
// Scalars and blobs (u64 length + bytes) are codec.hpp's.
// Values are stored by the server as opaque blobs: the mpx::encode<T> bytes of the value.
#pragma once

#include <mpx/proto/codec.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace mpx::proto {

inline constexpr std::string_view kManagerMagic = "MPXM";
inline constexpr std::uint32_t kManagerVersion = 1;
inline constexpr std::size_t kSessionTokenSize = 16;

enum class Op : std::uint8_t {
  // session
  hello = 0x01,
  open = 0x02,
  erase_name = 0x03,
  ping = 0x04,
  shutdown = 0x05,
  // dict
  dict_set = 0x10,
  dict_get = 0x11,
  dict_contains = 0x12,
  dict_erase = 0x13,
  dict_size = 0x14,
  dict_keys = 0x15,
  dict_values = 0x16,
  dict_items = 0x17,
  dict_clear = 0x18,
  dict_update = 0x19,
  dict_pop = 0x1a,
  dict_setdefault = 0x1b,
  dict_popitem = 0x1c,
  // list
  list_append = 0x20,
  list_extend = 0x21,
  list_at = 0x22,
  list_set = 0x23,
  list_insert = 0x24,
  list_pop = 0x25,
  list_erase = 0x26,
  list_size = 0x27,
  list_clear = 0x28,
  list_snapshot = 0x29,
  list_index = 0x2a,
  list_count = 0x2b,
  list_remove = 0x2c,
  list_reverse = 0x2d,
  list_snapshot_versioned = 0x2e,
  list_permute = 0x2f,
  list_replace = 0x34,  // list, continued
  // value
  value_get = 0x30,
  value_set = 0x31,
  // namespace
  ns_set = 0x38,
  ns_get = 0x39,
  ns_contains = 0x3a,
  ns_erase = 0x3b,
  // queue, joinable queue
  queue_put = 0x40,
  queue_get = 0x41,
  queue_size = 0x42,
  queue_empty = 0x43,
  queue_full = 0x44,
  queue_task_done = 0x45,
  queue_join = 0x46,
  queue_put_many = 0x47,
  queue_get_many = 0x48,
  // lock, rlock, semaphore, bounded semaphore, condition
  acquire = 0x50,
  release = 0x51,
  sem_value = 0x52,
  cond_wait = 0x58,
  cond_notify = 0x59,
  cond_notify_all = 0x5a,
  // event
  event_is_set = 0x60,
  event_set = 0x61,
  event_clear = 0x62,
  event_wait = 0x63,
  // barrier
  barrier_wait = 0x68,
  barrier_reset = 0x69,
  barrier_abort = 0x6a,
  barrier_parties = 0x6b,
  barrier_n_waiting = 0x6c,
  barrier_broken = 0x6d,
  // registered types
  object_call = 0x70,
  // named task queues
  task_submit = 0x80,
  task_wait = 0x81,
  task_serve = 0x82,
  task_next = 0x83,
  task_result = 0x84,
  task_worker_exit = 0x85,
  task_catalog = 0x86,
};

enum class Kind : std::uint8_t {
  dict = 1,
  list = 2,
  value = 3,
  namespace_ = 4,
  queue = 5,
  joinable_queue = 6,
  lock = 7,
  rlock = 8,
  semaphore = 9,
  bounded_semaphore = 10,
  condition = 11,
  event = 12,
  barrier = 13,
  object = 14,
  task_queue = 15,
  array = 16,
};
std::string_view kind_name(Kind) noexcept;  // "dict", "list" ... ("?" for an unknown value)

enum class Status : std::uint8_t { ok = 0, error = 1 };

// A request whose object id carries this bit is quiet: the server sends no reply when it
// succeeds, and a reply with status kQuietError (an error body) when it fails. Pipelined calls
// that return nothing are quiet, so that a client waiting for a later reply is not woken by
// replies nobody reads (manager.md, "Quiet requests").
inline constexpr std::uint64_t kQuietBit = std::uint64_t{1} << 63;
inline constexpr std::uint8_t kQuietError = 2;

// Which mpx error a failed request raises on the client.
enum class ErrorCode : std::uint8_t {
  error = 1,
  timeout = 2,
  empty = 3,
  full = 4,
  key = 5,
  value = 6,
  state = 7,
  index = 8,
  connection = 9,
  connection_closed = 10,
  authentication = 11,
  protocol = 12,
  type_mismatch = 13,
  broken_barrier = 14,
  remote = 15,
  worker_lost = 16,
};

// Timeouts on the wire: nanoseconds, 0 = do not block, -1 = forever.
inline constexpr std::int64_t kForever = -1;

// Error responses: u8 code | str type_name | str message | i32 exitcode.
// type_name is the original exception's type for `remote` (empty otherwise); exitcode is
// meaningful for `worker_lost` only.
struct ErrorInfo {
  ErrorCode code = ErrorCode::error;
  std::string type_name;
  std::string message;
  std::int32_t exitcode = 0;
};
void write_error(Writer& w, const ErrorInfo& e);
ErrorInfo read_error(Reader& r);
// Which exception an ErrorInfo stands for, and back, is the library's to say: the codes name
// its exception types (lib/src/wire_errors.hpp).

// hello request body: "MPXM" | u32 version | 16-byte session token.
// hello response body (ok): "MPXM" | u32 version | str server description.
// A server that does not speak the client's version answers with a protocol error and closes.
void write_hello(Writer& w, std::span<const std::byte, kSessionTokenSize> token);

}  // namespace mpx::proto
