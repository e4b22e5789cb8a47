// libFuzzer target for everything that parses bytes from an unauthenticated peer: the frame
// header decoder, the streaming FrameDecoder under arbitrary chunking, and the handshake's
// challenge/response parsers.
//   fuzz_frame -max_total_time=60 corpus/
#include <mpx/proto/errors.hpp>
#include <mpx/proto/frame.hpp>
#include <mpx/proto/handshake.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

namespace {

[[noreturn]] void fail() { std::abort(); }

void fuzz_decoder(std::span<const std::byte> data) {
  if (data.empty()) return;
  // The first byte picks the chunk size and the limit; the rest is the stream.
  const std::size_t chunk = std::to_integer<std::size_t>(data[0]) % 17 + 1;
  const std::uint64_t limit = std::to_integer<std::uint64_t>(data[0]) * 97;
  auto stream = data.subspan(1);
  mpx::proto::FrameDecoder decoder(limit);
  std::size_t pos = 0;
  try {
    while (pos < stream.size()) {
      auto piece = stream.subspan(pos, std::min(chunk, stream.size() - pos));
      std::size_t used = decoder.feed(piece);
      if (used > piece.size()) fail();
      pos += used;
      if (decoder.ready()) {
        auto length = decoder.length();
        auto frame = decoder.take();
        if (!length || frame.size() != *length || frame.size() > limit) fail();
      } else if (used == 0) {
        fail();  // not ready, yet refusing input
      }
      // Never more memory than the frame allows, nor more than the upfront allowance beyond
      // what arrived.
      if (auto length = decoder.length()) {
        auto room = decoder.prepare();
        if (room.size() > *length || room.size() > mpx::proto::kMaxUpfrontAllocation) fail();
      }
    }
  } catch (const mpx::proto::ProtocolError&) {
  }
}

void fuzz_header(std::span<const std::byte> data) {
  try {
    if (auto h = mpx::proto::decode_header(data)) {
      if (h->header_size > data.size()) fail();
      // Re-encoding gives the canonical form, which decodes to the same length.
      auto again = mpx::proto::decode_header(mpx::proto::FrameHeader(h->length).bytes());
      if (!again || again->length != h->length) fail();
    }
  } catch (const mpx::proto::ProtocolError&) {
  }
}

void fuzz_handshake(std::span<const std::byte> data) {
  // As a challenge we must answer.
  try {
    auto response = mpx::proto::create_response("key", data);
    if (response.empty() || response.size() > mpx::proto::kMaxHandshakeMessage) fail();
    // Our own answer must satisfy our own verifier.
    mpx::proto::verify_response("key", data, response);
  } catch (const mpx::proto::AuthenticationError&) {
  }
  // As a response to a challenge of ours.
  static const auto challenge = mpx::proto::make_challenge();
  try {
    mpx::proto::verify_response("key", challenge, data);
  } catch (const mpx::proto::AuthenticationError&) {
  }
  try {
    (void)mpx::proto::split_digest_prefix(data);
  } catch (const mpx::proto::AuthenticationError&) {
  }
  (void)mpx::proto::is_welcome(data);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* bytes, std::size_t size) {
  std::span<const std::byte> data(reinterpret_cast<const std::byte*>(bytes), size);
  fuzz_header(data);
  fuzz_decoder(data);
  fuzz_handshake(data);
  return 0;
}
