// The authkey handshake of Python's multiprocessing.connection: an HMAC challenge/response
// run in both directions. Python 3.12's form is ours by default:
//   challenge  "#CHALLENGE#" + "{sha256}" + 40 random bytes
//   response   "{sha256}" + HMAC-SHA256(authkey, everything after "#CHALLENGE#")
//   verdict    "#WELCOME#" or "#FAILURE#"
// and Python <= 3.11's legacy form (20 random bytes, raw 16-byte HMAC-MD5 response) is
// accepted and answered exactly as CPython 3.12 negotiates it. Every handshake message is
// one frame of at most 256 bytes. proto/README.md is the spec.
#pragma once

#include <mpx/proto/errors.hpp>

#include <cstddef>
#include <exception>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace mpx::proto {

inline constexpr std::string_view kChallenge = "#CHALLENGE#";
inline constexpr std::string_view kWelcome = "#WELCOME#";
inline constexpr std::string_view kFailure = "#FAILURE#";
inline constexpr std::size_t kNonceLength = 40;           // random bytes in a challenge we send
inline constexpr std::size_t kLegacyMessageLength = 20;   // a challenge body from Python <= 3.11
inline constexpr std::size_t kMd5DigestLength = 16;       // a legacy, unprefixed response
inline constexpr std::size_t kMaxHandshakeMessage = 256;  // no handshake frame may be longer

// The digests a "{name}" prefix may select (CPython's set plus sha512, sha3_512, blake2*).
enum class Digest { md5, sha256, sha384, sha512, sha3_256, sha3_384, sha3_512, blake2b, blake2s };
std::string_view digest_name(Digest);  // Python's name: "sha256", "sha3_256" ...
std::optional<Digest> digest_from_name(std::string_view);

std::span<const std::byte> as_bytes(std::string_view) noexcept;

// HMAC(key, message) with `digest` (OpenSSL).
std::vector<std::byte> hmac(Digest digest, std::string_view key, std::span<const std::byte> message);

// "#CHALLENGE#{name}" + 40 random bytes (OpenSSL RAND_bytes).
std::vector<std::byte> make_challenge(Digest digest = Digest::sha256);

// What the MAC covers: the challenge message without "#CHALLENGE#". AuthenticationError if
// the message is not a challenge or the body is shorter than 20 bytes.
std::span<const std::byte> challenge_body(std::span<const std::byte> challenge);

// How a challenge body or a response names its digest: std::nullopt digest = the legacy
// form (exactly 16 or 20 bytes, no prefix, HMAC-MD5); otherwise "{name}" + payload.
// AuthenticationError for anything else (no prefix, unknown digest).
struct DigestAndPayload {
  std::optional<Digest> digest;
  std::span<const std::byte> payload;
};
DigestAndPayload split_digest_prefix(std::span<const std::byte> message);

// The response to a whole challenge message (with "#CHALLENGE#"): raw HMAC-MD5 for a legacy
// challenge, else "{name}" + HMAC-name over the body.
std::vector<std::byte> create_response(std::string_view authkey, std::span<const std::byte> challenge);

// Checks `response` to the whole challenge message we sent; AuthenticationError if it is
// wrong. The peer may answer with any allowed digest (the MAC covers our "{sha256}" prefix,
// so that is no downgrade); an unprefixed 16/20-byte response is checked as HMAC-MD5.
// The comparison is constant-time.
void verify_response(std::string_view authkey, std::span<const std::byte> challenge,
                     std::span<const std::byte> response);

bool is_welcome(std::span<const std::byte> message) noexcept;

// The blocking handshake over anything with send_bytes(std::span<const std::byte>) and
// recv_bytes(std::optional<std::size_t> maxlength). A listener runs deliver_challenge then
// answer_challenge, a client the reverse (as Python does).
template <class Conn>
void deliver_challenge(Conn& conn, std::string_view authkey, Digest digest = Digest::sha256) {
  const auto challenge = make_challenge(digest);
  conn.send_bytes(std::span<const std::byte>(challenge));
  const auto response = conn.recv_bytes(kMaxHandshakeMessage);
  try {
    verify_response(authkey, challenge, response);
  } catch (const AuthenticationError&) {
    try {
      conn.send_bytes(as_bytes(kFailure));
    } catch (const std::exception&) {  // the peer may already be gone; the verdict is the same
    }
    throw;
  }
  conn.send_bytes(as_bytes(kWelcome));
}

template <class Conn>
void answer_challenge(Conn& conn, std::string_view authkey) {
  const auto challenge = conn.recv_bytes(kMaxHandshakeMessage);
  const auto response = create_response(authkey, challenge);
  conn.send_bytes(std::span<const std::byte>(response));
  const auto verdict = conn.recv_bytes(kMaxHandshakeMessage);
  if (!is_welcome(verdict)) throw AuthenticationError("mpx: authkey handshake: digest sent was rejected");
}

}  // namespace mpx::proto
