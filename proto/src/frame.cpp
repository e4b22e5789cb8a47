#include <mpx/proto/errors.hpp>
#include <mpx/proto/frame.hpp>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mpx::proto {

namespace {

void put_be32(std::byte* p, std::uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}
void put_be64(std::byte* p, std::uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) p[i] = static_cast<std::byte>(v & 0xff);
}
std::uint64_t get_be(const std::byte* p, int n) {
  std::uint64_t v = 0;
  for (int i = 0; i < n; ++i) v = (v << 8) | std::to_integer<std::uint64_t>(p[i]);
  return v;
}

}  // namespace

FrameHeader::FrameHeader(std::uint64_t payload_length) noexcept {
  if (payload_length <= kMaxShortLength) {
    put_be32(bytes_.data(), static_cast<std::uint32_t>(payload_length));
    size_ = kShortHeaderSize;
  } else {
    put_be32(bytes_.data(), 0xffffffffu);
    put_be64(bytes_.data() + 4, payload_length);
    size_ = kLongHeaderSize;
  }
}

std::optional<DecodedHeader> decode_header(std::span<const std::byte> buffer) {
  if (buffer.size() < kShortHeaderSize) return std::nullopt;
  auto n = static_cast<std::int32_t>(static_cast<std::uint32_t>(get_be(buffer.data(), 4)));
  if (n >= 0) return DecodedHeader{static_cast<std::uint64_t>(n), kShortHeaderSize};
  if (n != -1) throw ProtocolError("mpx: malformed frame header (negative length " + std::to_string(n) + ")");
  if (buffer.size() < kLongHeaderSize) return std::nullopt;
  return DecodedHeader{get_be(buffer.data() + 4, 8), kLongHeaderSize};
}

std::optional<FramePrefix> peek_frame(std::span<const std::byte> buffer) {
  auto h = decode_header(buffer);
  if (!h) return std::nullopt;
  auto rest = buffer.subspan(h->header_size);
  return FramePrefix{*h, rest.first(static_cast<std::size_t>(std::min<std::uint64_t>(rest.size(), h->length)))};
}

std::size_t begin_frame(std::vector<std::byte>& out) {
  std::size_t at = out.size();
  out.resize(payload_start(at));
  return at;
}

void end_frame(std::vector<std::byte>& out, std::size_t frame) {
  const std::size_t payload = out.size() - payload_start(frame);
  FrameHeader h(payload);
  if (h.size() > kShortHeaderSize) [[unlikely]] {
    // Grown and moved by hand: GCC's -O3 flow analysis reports false out-of-bounds accesses
    // in vector::insert here.
    out.resize(out.size() + h.size() - kShortHeaderSize);
    std::memmove(out.data() + frame + h.size(), out.data() + payload_start(frame), payload);
  }
  std::memcpy(out.data() + frame, h.bytes().data(), h.size());
}

void append_frame(std::vector<std::byte>& out, std::span<const std::byte> payload) {
  FrameHeader h(payload.size());
  out.reserve(out.size() + h.size() + payload.size());
  out.insert(out.end(), h.bytes().begin(), h.bytes().end());
  out.insert(out.end(), payload.begin(), payload.end());
}

std::vector<std::byte> make_frame(std::span<const std::byte> payload) {
  std::vector<std::byte> out;
  append_frame(out, payload);
  return out;
}

std::optional<std::uint64_t> FrameDecoder::length() const noexcept {
  if (state_ == State::header) return std::nullopt;
  return length_;
}

void FrameDecoder::reset() noexcept {
  state_ = State::header;
  header_have_ = 0;
  header_need_ = kShortHeaderSize;
  length_ = 0;
  filled_ = 0;
  payload_.clear();
}

void FrameDecoder::header_complete() {
  auto h = decode_header({header_.data(), header_have_});
  if (!h) {  // the -1 marker: eight more bytes of length follow
    header_need_ = kLongHeaderSize;
    return;
  }
  if (h->length > max_length_)
    throw ProtocolError("mpx: frame of " + std::to_string(h->length) + " bytes exceeds the limit of " +
                        std::to_string(max_length_));
  length_ = h->length;
  filled_ = 0;
  payload_.clear();
  state_ = length_ == 0 ? State::ready : State::payload;
}

void FrameDecoder::grow_payload() {
  if (filled_ == payload_.size()) payload_.resize(grow_payload_buffer(length_, filled_));
}

std::size_t FrameDecoder::feed(std::span<const std::byte> data) {
  std::size_t used = 0;
  while (used < data.size() && state_ != State::ready) {
    auto dst = prepare();
    std::size_t n = std::min(dst.size(), data.size() - used);
    std::memcpy(dst.data(), data.data() + used, n);
    used += n;
    commit(n);
  }
  return used;
}

std::span<std::byte> FrameDecoder::prepare() {
  switch (state_) {
    case State::header:
      return {header_.data() + header_have_, header_need_ - header_have_};
    case State::payload:
      grow_payload();
      return {payload_.data() + filled_, payload_.size() - filled_};
    case State::ready:
      break;
  }
  return {};
}

void FrameDecoder::commit(std::size_t n) {
  if (state_ == State::header) {
    header_have_ += n;
    if (header_have_ == header_need_) header_complete();
  } else if (state_ == State::payload) {
    filled_ += n;
    if (filled_ == length_) state_ = State::ready;
  }
}

std::vector<std::byte> FrameDecoder::take() {
  if (state_ != State::ready) throw std::logic_error("mpx: FrameDecoder::take() before a frame is complete");
  std::vector<std::byte> out = std::move(payload_);
  out.resize(length_);  // a zero-length frame never allocated
  reset();
  return out;
}

}  // namespace mpx::proto
