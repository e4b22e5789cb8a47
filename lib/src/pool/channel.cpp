// The worker channel's byte work: batched writes of task frames, reads and decoding of answers.
#include "pool/channel.hpp"

#include <mpx/proto/frame.hpp>

#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <string>

#include "common/log.hpp"
#include "ipc/wire_errors.hpp"

namespace mpx::detail {

using namespace poolwire;

void Channel::stage(const std::vector<TaskPtr>& batch) {
  std::size_t small = 0;
  for (auto& r : batch)
    if (r->wire().size() < kLargeFrame) small += r->wire().size();
  wsmall_.clear();
  wsmall_.reserve(small);  // no reallocation below: the iovecs point into it
  wbufs_.clear();
  wkeep_.clear();
  bool last_small = false;
  for (auto& r : batch) {
    auto b = r->wire();
    if (b.size() < kLargeFrame) {
      std::size_t at = wsmall_.size();
      wsmall_.insert(wsmall_.end(), b.begin(), b.end());
      if (last_small)
        wbufs_.back().iov_len += b.size();
      else
        wbufs_.push_back({wsmall_.data() + at, b.size()});
      last_small = true;
    } else {
      wbufs_.push_back({const_cast<std::byte*>(b.data()), b.size()});
      wkeep_.push_back(r);
      last_small = false;
    }
  }
  wnext_ = 0;
  writing_ = true;
}

Channel::Write Channel::write_some() {
  int fd = sock.native_handle();
  while (wnext_ < wbufs_.size()) {
    msghdr mh{};
    mh.msg_iov = wbufs_.data() + wnext_;
    mh.msg_iovlen = std::min<std::size_t>(wbufs_.size() - wnext_, IOV_MAX);
    ssize_t n = ::sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return Write::blocked;
      return Write::failed;
    }
    auto left = static_cast<std::size_t>(n);
    while (left && wnext_ < wbufs_.size()) {
      auto& b = wbufs_[wnext_];
      if (left >= b.iov_len) {
        left -= b.iov_len;
        ++wnext_;
      } else {
        b.iov_base = static_cast<std::byte*>(b.iov_base) + left;
        b.iov_len -= left;
        left = 0;
      }
    }
  }
  return Write::done;
}

Channel::Read Channel::recv_some(bool& short_read) {
  int fd = sock.native_handle();
  for (;;) {
    // At least the rest of the frame in progress fits, so a large result arrives in one piece.
    std::size_t need = kReadChunk / 4;
    auto avail = rbuf_.data();
    try {
      if (auto f = proto::peek_frame(avail)) need = std::max<std::size_t>(need, f->missing());
    } catch (const proto::ProtocolError&) {
      return Read::garbage;
    }
    auto room = rbuf_.prepare(need);
    ssize_t n = ::recv(fd, room.data(), room.size(), MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Read::empty;
    if (n <= 0) return Read::closed;
    rbuf_.commit(static_cast<std::size_t>(n));
    short_read = static_cast<std::size_t>(n) < room.size();
    return Read::data;
  }
}

Channel::Decoded Channel::decode(pid_t pid) {
  answers_.clear();
  Decoded d;
  proto::FrameReader frames(rbuf_.data());
  try {
    while (auto frame = with_mpx_errors([&] { return frames.next(); })) {
      auto msg = *frame;
      if (msg.empty()) throw ProtocolError("empty message");
      auto in = task_reader(msg.subspan(1));
      auto type = static_cast<std::uint8_t>(msg[0]);
      if (type == kResult) {
        std::uint64_t seq = in.u64(), ns = in.u64();
        answers_.push_back({seq, ns, in.rest()});
      } else if (type == kInitError) {
        d.init_error = read_raised_fields(in);
      } else {
        throw ProtocolError("unknown message type " + std::to_string(type));
      }
    }
  } catch (const ProtocolError& e) {
    logger().error("mpx::Pool: bad message from worker {}: {}", pid, e.what());
    d.bad = true;
  }
  d.answers = answers_;
  d.consumed = frames.consumed();
  return d;
}

}  // namespace mpx::detail
