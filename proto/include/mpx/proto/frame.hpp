// Message framing, byte-compatible with Python's multiprocessing.connection:
//   payload length n <= 0x7fffffff:  4-byte big-endian signed n, then the payload
//   longer payloads:                 4-byte -1 (ff ff ff ff), 8-byte big-endian unsigned n, payload
// Pure functions and a push-style decoder, so blocking code, Boost.Asio code and other
// layers (pool, manager) frame their messages the same way. proto/README.md is the spec.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <vector>

namespace mpx::proto {

inline constexpr std::uint64_t kMaxShortLength = 0x7fffffff;  // longest payload with a 4-byte header
inline constexpr std::size_t kShortHeaderSize = 4;
inline constexpr std::size_t kLongHeaderSize = 12;  // the -1 marker + 8-byte length
inline constexpr std::size_t kMaxHeaderSize = kLongHeaderSize;
inline constexpr std::uint64_t kNoLimit = std::numeric_limits<std::uint64_t>::max();

// A receiver may allocate this much on a peer's word alone; beyond it, buffers grow only as
// bytes actually arrive, so announcing a huge length costs the peer as much as it costs us.
inline constexpr std::size_t kMaxUpfrontAllocation = std::size_t{4} << 20;

// The next size for a payload buffer holding `filled` of `length` bytes (full when equal).
constexpr std::size_t grow_payload_buffer(std::uint64_t length, std::size_t filled) {
  std::uint64_t want = filled < kMaxUpfrontAllocation / 2 ? kMaxUpfrontAllocation : std::uint64_t{filled} * 2;
  return static_cast<std::size_t>(want < length ? want : length);
}

// An encoded header; bytes() is what goes on the wire before the payload.
class FrameHeader {
 public:
  explicit FrameHeader(std::uint64_t payload_length) noexcept;
  std::span<const std::byte> bytes() const noexcept { return {bytes_.data(), size_}; }
  std::size_t size() const noexcept { return size_; }

 private:
  std::array<std::byte, kMaxHeaderSize> bytes_{};
  std::size_t size_ = 0;
};

inline FrameHeader encode_header(std::uint64_t payload_length) noexcept {
  return FrameHeader(payload_length);
}
constexpr std::size_t header_size(std::uint64_t payload_length) noexcept {
  return payload_length > kMaxShortLength ? kLongHeaderSize : kShortHeaderSize;
}

struct DecodedHeader {
  std::uint64_t length;     // payload bytes that follow
  std::size_t header_size;  // 4 or 12
  bool operator==(const DecodedHeader&) const = default;
};

// Parses the header at the start of `buffer`. std::nullopt: not enough bytes yet (call again
// with more). Throws ProtocolError for a negative length other than the -1 marker.
std::optional<DecodedHeader> decode_header(std::span<const std::byte> buffer);

// The frame at the front of a buffer, as far as it has arrived.
struct FramePrefix {
  DecodedHeader header;
  std::span<const std::byte> payload;  // what has arrived of the payload: all of it once complete()
  bool complete() const noexcept { return payload.size() == header.length; }
  std::uint64_t size() const noexcept { return header.header_size + header.length; }  // on the wire
  std::uint64_t missing() const noexcept { return header.length - payload.size(); }
};
// std::nullopt: the header is not complete yet. Throws as decode_header() does.
std::optional<FramePrefix> peek_frame(std::span<const std::byte> buffer);

// The complete frames at the front of a buffer, in place (payloads are views into it):
//   FrameReader frames(buffer);
//   while (auto payload = frames.next()) handle(*payload);
//   drop the first frames.consumed() bytes of buffer
// What follows the last complete frame stays for the next read to complete.
class FrameReader {
 public:
  explicit FrameReader(std::span<const std::byte> buffer) noexcept : buffer_(buffer) {}
  std::optional<std::span<const std::byte>> next() {
    auto f = peek_frame(buffer_.subspan(consumed_));
    if (!f || !f->complete()) return std::nullopt;
    consumed_ += static_cast<std::size_t>(f->size());
    return f->payload;
  }
  std::size_t consumed() const noexcept { return consumed_; }

 private:
  std::span<const std::byte> buffer_;
  std::size_t consumed_ = 0;
};

// Frames written header last, for messages encoded straight into the output buffer (their
// length is known only at the end): begin_frame() reserves the 4-byte header and returns where
// the frame starts, the payload is appended from payload_start(), end_frame() fills the header
// in (moving the payload up for the 12-byte form, above 2 GiB).
std::size_t begin_frame(std::vector<std::byte>& out);
constexpr std::size_t payload_start(std::size_t frame) noexcept { return frame + kShortHeaderSize; }
void end_frame(std::vector<std::byte>& out, std::size_t frame);

// Header + payload in one buffer; append_frame() lets a sender batch several messages.
void append_frame(std::vector<std::byte>& out, std::span<const std::byte> payload);
std::vector<std::byte> make_frame(std::span<const std::byte> payload);

// Reassembles frames from a byte stream, whatever the chunking. Two ways to drive it:
//  * feed(bytes): copy from your own buffer; returns how much it used (it stops at the end
//    of a frame, so the rest belongs to the next one);
//  * prepare() + commit(n): read straight into the decoder (e.g. async_read_some on the
//    buffer prepare() returns); it never asks for bytes past the current frame, and large
//    payloads land in their final buffer without a copy.
// When ready(), take() hands out the payload and starts the next frame. Lengths above
// max_length throw ProtocolError before anything is allocated for them.
class FrameDecoder {
 public:
  explicit FrameDecoder(std::uint64_t max_length = kNoLimit) : max_length_(max_length) {}

  std::size_t feed(std::span<const std::byte> data);
  std::span<std::byte> prepare();
  void commit(std::size_t n);

  bool ready() const noexcept { return state_ == State::ready; }
  std::vector<std::byte> take();  // precondition: ready()
  // The announced length of the frame being read, once its header is complete.
  std::optional<std::uint64_t> length() const noexcept;

  std::uint64_t max_length() const noexcept { return max_length_; }
  void set_max_length(std::uint64_t max_length) noexcept { max_length_ = max_length; }
  void reset() noexcept;

 private:
  enum class State { header, payload, ready };
  void header_complete();
  void grow_payload();

  State state_ = State::header;
  std::array<std::byte, kMaxHeaderSize> header_{};
  std::size_t header_have_ = 0;
  std::size_t header_need_ = kShortHeaderSize;
  std::uint64_t length_ = 0;
  std::size_t filled_ = 0;
  std::vector<std::byte> payload_;
  std::uint64_t max_length_;
};

}  // namespace mpx::proto
