// One worker's socket as the pool's I/O sees it: batching task frames into writes, reading and
// decoding what the worker answers. Knows nothing of locks, lanes or the worker's process.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <vector>

// GCC's -Wnull-dereference flags code inlined from Asio's scheduler (the pragma takes effect
// where those headers are first included).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#pragma GCC diagnostic pop

#include <mpx/proto/codec.hpp>
#include <mpx/proto/frame.hpp>

#include "pool/dispatcher.hpp"
#include "pool/wire.hpp"

namespace mpx::detail {

// A message that is only its type (kExit to a worker, kQuit to the spawner).
inline Bytes type_only_frame(std::uint8_t type) {
  Bytes f;
  std::size_t at = proto::begin_frame(f);
  proto::Writer(f).u8(type);
  proto::end_frame(f, at);
  return f;
}

using Socket = boost::asio::local::stream_protocol::socket;

// Only the thread driving the pool's I/O (the leader, or whoever holds the worker in
// direct_wait or handle_exit) touches a channel's buffers; `sock` is opened and closed by the
// supervisor.
class Channel {
 public:
  static constexpr std::size_t kLargeFrame = std::size_t{64} << 10;  // written from its own buffer

  struct Answer {
    std::uint64_t seq, ns;
    std::span<const std::byte> result;  // into the read buffer, until consume()
  };
  struct Decoded {
    std::span<const Answer> answers;
    std::exception_ptr init_error;  // the worker's initializer threw
    std::size_t consumed = 0;       // bytes to consume() once the answers are handled
    bool bad = false;               // a malformed message: the worker must be stopped
  };
  enum class Write { done, blocked, failed };
  enum class Read { data, empty, closed, garbage };

  explicit Channel(boost::asio::io_context& io) : sock(io) {}

  Socket sock;

  bool writing() const noexcept { return writing_; }
  // Lays out `batch` for writing: small frames copied into one buffer, large ones written from
  // their own (kept alive here until end_write()).
  void stage(const std::vector<TaskPtr>& batch);
  // Writes as much as the socket takes now (one sendmsg for many frames).
  Write write_some();
  void end_write() noexcept {
    writing_ = false;
    wkeep_.clear();
  }

  // One recv into the read buffer. `short_read`: it did not fill the room it had.
  Read recv_some(bool& short_read);
  // Every complete frame in the read buffer; `pid` names the worker in log lines.
  Decoded decode(pid_t pid);
  void consume(std::size_t n) { rbuf_.consume(n); }

 private:
  bool writing_ = false;
  Bytes wsmall_;
  std::vector<iovec> wbufs_;
  std::size_t wnext_ = 0;
  std::vector<TaskPtr> wkeep_;
  poolwire::ReadBuffer rbuf_;
  std::vector<Answer> answers_;
};

}  // namespace mpx::detail
