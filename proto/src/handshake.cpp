#include <mpx/proto/handshake.hpp>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mpx::proto {

namespace {

struct DigestInfo {
  Digest digest;
  std::string_view name;
  const EVP_MD* (*md)();
};

constexpr std::array<DigestInfo, 9> kDigests{{
    {Digest::md5, "md5", EVP_md5},
    {Digest::sha256, "sha256", EVP_sha256},
    {Digest::sha384, "sha384", EVP_sha384},
    {Digest::sha512, "sha512", EVP_sha512},
    {Digest::sha3_256, "sha3_256", EVP_sha3_256},
    {Digest::sha3_384, "sha3_384", EVP_sha3_384},
    {Digest::sha3_512, "sha3_512", EVP_sha3_512},
    {Digest::blake2b, "blake2b", EVP_blake2b512},
    {Digest::blake2s, "blake2s", EVP_blake2s256},
}};

// A "{name}" prefix is only looked for this far into a message, as CPython does.
constexpr std::size_t kMaxDigestNameLength = 8;

const DigestInfo& info(Digest d) {
  for (const auto& i : kDigests)
    if (i.digest == d) return i;
  throw std::invalid_argument("mpx: unknown digest");
}

std::string_view as_chars(std::span<const std::byte> b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

bool starts_with(std::span<const std::byte> message, std::string_view prefix) {
  return as_chars(message).starts_with(prefix);
}

}  // namespace

std::span<const std::byte> as_bytes(std::string_view s) noexcept {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string_view digest_name(Digest d) { return info(d).name; }

std::optional<Digest> digest_from_name(std::string_view name) {
  for (const auto& i : kDigests)
    if (i.name == name) return i.digest;
  return std::nullopt;
}

std::vector<std::byte> hmac(Digest digest, std::string_view key, std::span<const std::byte> message) {
  static const unsigned char kEmpty = 0;  // HMAC() wants a non-null key even when it is empty
  std::vector<std::byte> out(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  const auto* k = key.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(key.data());
  const auto* m = message.empty() ? &kEmpty : reinterpret_cast<const unsigned char*>(message.data());
  if (!HMAC(info(digest).md(), k, static_cast<int>(key.size()), m, message.size(),
            reinterpret_cast<unsigned char*>(out.data()), &len))
    throw AuthenticationError("mpx: HMAC-" + std::string(digest_name(digest)) + " is unavailable");
  out.resize(len);
  return out;
}

std::vector<std::byte> make_challenge(Digest digest) {
  const auto name = digest_name(digest);
  std::vector<std::byte> out;
  out.reserve(kChallenge.size() + name.size() + 2 + kNonceLength);
  auto append = [&](std::string_view s) {
    auto b = as_bytes(s);
    out.insert(out.end(), b.begin(), b.end());
  };
  append(kChallenge);
  append("{");
  append(name);
  append("}");
  const auto at = out.size();
  out.resize(at + kNonceLength);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data() + at), static_cast<int>(kNonceLength)) != 1)
    throw AuthenticationError("mpx: no randomness for the authkey challenge (RAND_bytes failed)");
  return out;
}

std::span<const std::byte> challenge_body(std::span<const std::byte> challenge) {
  if (!starts_with(challenge, kChallenge))
    throw AuthenticationError("mpx: authkey handshake: protocol error, expected a challenge");
  auto body = challenge.subspan(kChallenge.size());
  if (body.size() < kLegacyMessageLength)
    throw AuthenticationError("mpx: authkey handshake: challenge too short (" + std::to_string(body.size()) +
                              " bytes)");
  return body;
}

DigestAndPayload split_digest_prefix(std::span<const std::byte> message) {
  if (message.size() == kLegacyMessageLength || message.size() == kMd5DigestLength)
    return {std::nullopt, message};
  const auto text = as_chars(message);
  if (text.starts_with('{')) {
    const auto curly = text.substr(0, kMaxDigestNameLength + 2).find('}', 1);
    if (curly != std::string_view::npos) {
      if (auto d = digest_from_name(text.substr(1, curly - 1))) return {d, message.subspan(curly + 1)};
    }
  }
  throw AuthenticationError(
      "mpx: authkey handshake: unsupported message length, missing digest prefix, or unsupported digest");
}

std::vector<std::byte> create_response(std::string_view authkey, std::span<const std::byte> challenge) {
  const auto body = challenge_body(challenge);
  const auto digest = split_digest_prefix(body).digest;
  if (!digest) return hmac(Digest::md5, authkey, body);
  const auto mac = hmac(*digest, authkey, body);
  const auto name = digest_name(*digest);
  std::vector<std::byte> out;
  out.reserve(name.size() + 2 + mac.size());
  out.push_back(std::byte{'{'});
  auto n = as_bytes(name);
  out.insert(out.end(), n.begin(), n.end());
  out.push_back(std::byte{'}'});
  out.insert(out.end(), mac.begin(), mac.end());
  return out;
}

void verify_response(std::string_view authkey, std::span<const std::byte> challenge,
                     std::span<const std::byte> response) {
  const auto body = challenge_body(challenge);
  const auto [digest, mac] = split_digest_prefix(response);
  const auto d = digest.value_or(Digest::md5);
  const auto expected = hmac(d, authkey, body);
  if (expected.size() != mac.size())
    throw AuthenticationError("mpx: authkey handshake: expected a " + std::string(digest_name(d)) +
                              " digest of " + std::to_string(expected.size()) + " bytes, got " +
                              std::to_string(mac.size()));
  if (CRYPTO_memcmp(expected.data(), mac.data(), mac.size()) != 0)
    throw AuthenticationError("mpx: authkey handshake: digest received was wrong");
}

bool is_welcome(std::span<const std::byte> message) noexcept { return as_chars(message) == kWelcome; }

}  // namespace mpx::proto
